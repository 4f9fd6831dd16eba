# The two commands of the README (`make demo`, `make test`) and the benchmark. Every target sets up .venv
# first when it is missing. torch is installed before everything else: pnnx declares an unpinned torch and
# would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PFPLD  := $(VENV)/bin/pfpld
DEMO_OUT ?= runs/demo
W1_OUT   ?= runs/w1
CPP_BUILD := build/deploy_cpp
CPP_CROSS := arm-linux-gnueabihf aarch64-linux-gnu

.PHONY: venv demo test pytest cpp-test bench model-long model-w1 clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PFPLD) demo --out $(DEMO_OUT)

test: pytest cpp-test

pytest: $(VENV)/.installed
	$(PY) -m pytest -q tests

# deploy_cpp: ncnn's C++ library built once into ~/.cache/pfpld/ncnn (deploy_cpp/tools/build_ncnn.sh), the host
# build with the ncnn backend and its ctest (fixtures written by the Python side), then the core library and its
# tests cross-built for 32- and 64-bit ARM and run under qemu on the host build's fixtures.
cpp-test: $(VENV)/.installed
	deploy_cpp/tools/debian_deps.sh
	ncnn_dir=$$(PYTHON=$(PY) deploy_cpp/tools/build_ncnn.sh) && \
	  cmake -S deploy_cpp -B $(CPP_BUILD)/host -Dncnn_DIR="$$ncnn_dir" -DPFPLD_WITH_NCNN=ON -DPFPLD_PYTHON=$(abspath $(PY))
	cmake --build $(CPP_BUILD)/host -j2
	cd $(CPP_BUILD)/host && ctest --output-on-failure
	for t in $(CPP_CROSS); do \
	  cmake -S deploy_cpp -B $(CPP_BUILD)/$$t -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/$$t.cmake -DPFPLD_WITH_NCNN=OFF \
	    -DPFPLD_FIXTURES=$(abspath $(CPP_BUILD))/host/fixtures && \
	  cmake --build $(CPP_BUILD)/$$t -j2 && (cd $(CPP_BUILD)/$$t && ctest --output-on-failure) || exit 1; \
	done

# One table of every registered format (`pfpld bench`) plus training throughput. Trained checkpoints replace the
# random weights of their width and add the accuracy delta: the demo's (width 0.25) and `make model-w1`'s (width 1.0).
# Held-out faces: W1's test split when present (the demo model never saw it), else the demo's. The int8 formats are
# calibrated on the demo's calibration set when present (else on 32 synthetic crops: the report says which).
bench: $(VENV)/.installed
	if [ -f $(CPP_BUILD)/host/CMakeCache.txt ]; then cmake --build $(CPP_BUILD)/host --target pfpld_bench -j2; fi
	$(PFPLD) bench --training --out bench/results.md \
	  $(if $(wildcard $(DEMO_OUT)/calib/image_list.txt),--calib $(DEMO_OUT)/calib) \
	  $(if $(wildcard $(DEMO_OUT)/run/last.pt),--ckpt $(DEMO_OUT)/run/last.pt) \
	  $(if $(wildcard $(W1_OUT)/run/last.pt),--ckpt $(W1_OUT)/run/last.pt --data $(W1_OUT)/prepared,\
	    $(if $(wildcard $(DEMO_OUT)/run/last.pt),--data $(DEMO_OUT)/prepared))

# Longer recipes than the demo's (same synthetic generator, same recipe, more faces and epochs; like the demo they
# report last.pt, so no training faces are held out for best.pt); what they reach is in the README. model-long: PFPLD width 0.25 on 4,000 faces for 40 epochs (about 20 minutes on 2 cores).
# model-w1: PFPLD width 1.0 on 4,000 faces for 30 epochs, the trained width-1.0 model for the int8 target (speed and
# accuracy on one model; about 1.5 hours on 2 cores).
LONG_OUT ?= runs/long
TRAIN_RECIPE := --batch-size 32 --lr 3e-3 --schedule cosine --warmup-epochs 1 --val-fraction 0

model-long: $(VENV)/.installed
	$(PFPLD) synth --out $(LONG_OUT)/synth --n 4000 --seed 7 --force
	$(PFPLD) prepare-data --force --out $(LONG_OUT)/prepared --wflw $(LONG_OUT)/synth/WFLW \
	  --lapa $(LONG_OUT)/synth/LaPa --300wlp $(LONG_OUT)/synth/300W_LP --aflw2000 $(LONG_OUT)/synth/AFLW2000
	$(PFPLD) train --data $(LONG_OUT)/prepared --out $(LONG_OUT)/run --width 0.25 --epochs 40 $(TRAIN_RECIPE)
	$(PFPLD) eval $(LONG_OUT)/run/last.pt --data $(LONG_OUT)/prepared

model-w1: $(VENV)/.installed
	$(PFPLD) synth --out $(W1_OUT)/synth --n 4000 --seed 7 --force
	$(PFPLD) prepare-data --force --out $(W1_OUT)/prepared --wflw $(W1_OUT)/synth/WFLW --lapa $(W1_OUT)/synth/LaPa \
	  --300wlp $(W1_OUT)/synth/300W_LP --aflw2000 $(W1_OUT)/synth/AFLW2000
	$(PFPLD) train --data $(W1_OUT)/prepared --out $(W1_OUT)/run --width 1.0 --epochs 30 $(TRAIN_RECIPE)
	$(PFPLD) eval $(W1_OUT)/run/last.pt --data $(W1_OUT)/prepared

clean:
	rm -rf $(VENV) runs build *.egg-info
