# The two commands of the README (`make demo`, `make test`) and the benchmark. Every target sets up .venv
# first when it is missing. torch is installed before everything else: pnnx declares an unpinned torch and
# would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PFPLD  := $(VENV)/bin/pfpld
DEMO_OUT ?= runs/demo

.PHONY: venv demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PFPLD) demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m pfpld.bench --out bench/results.md \
	  $(if $(wildcard $(DEMO_OUT)/run/best.pt),--ckpt $(DEMO_OUT)/run/best.pt --data $(DEMO_OUT)/prepared)

clean:
	rm -rf $(VENV) runs build *.egg-info
