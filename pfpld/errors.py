"""One exception type per area. Each message is one line naming the file (and line) or the graph node, and
what was expected; the CLI prints it in red and exits with code 2, without a traceback."""


class PfpldError(Exception):
    """Base of every user-facing error."""


class DatasetError(PfpldError, ValueError):
    """A dataset file is not what its format promises."""


class CheckpointError(PfpldError, ValueError):
    """A checkpoint file is missing, not ours, or does not fit the model."""


class ContractError(PfpldError, ValueError):
    """A preprocessing contract or a face box is invalid."""


class InputError(PfpldError, ValueError):
    """A command-line input (image, box, option) is invalid."""


class ConversionError(PfpldError, ValueError):
    """A model file cannot be converted exactly (unreadable file, unsupported op or attribute, a shape the
    target would compute differently); the message names the file or the graph node."""
