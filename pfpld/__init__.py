__version__ = "0.1.0"

# The model every command builds when no --model is given (pfpld/models/__init__.py holds the registry; kept here so
# that the command line can name it without importing torch).
DEFAULT_MODEL = "pfpld"
