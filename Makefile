# The two commands the README opens with: `make bench` and `make test`.
# `make unit` is the fast tier: every test that starts no process (tests/conftest.py says which).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tested pins; pyproject states the compatible ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: bench test unit perf soak lint clean install

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	# The GPU machine's missing wheels (and a cp311 pyzmq for the install-step test); a registry outage only skips that test.
	benchmarks/device/fetch_wheels.sh || echo "GPU wheels not fetched: tests/benchmarks/test_device_install.py will skip"
	touch $@

install: $(VENV)/.installed

bench: install
	$(PY) sweep.py

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=15

unit: install
	$(PY) -m pytest -q -m 'not integration and not soak' --durations=15

perf: install
	$(PY) benchmarks/perf.py

soak: install
	$(PY) -m pytest -q -m soak

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
