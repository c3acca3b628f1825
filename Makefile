# Quick start:  make demo   (set up .venv, build, run the demo)
#               make test   (install test extras, run the whole suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.pyx csrc/*.pxd)

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel Cython

# Editable install: the C extension is compiled in place, next to the sources.
$(VENV)/.installed: $(PY) $(SOURCES)
	FASTBP_REQUIRE_EXTENSION=$${FASTBP_REQUIRE_EXTENSION:-1} \
	  $(PIP) install --no-build-isolation -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fastbp demo

test: install
	$(PY) -m pytest tests

bench: install
	$(PIP) install -e '.[bench]'
	cd benchmarks && ../$(VENV)/bin/asv run --python=same --launch-method spawn --show-stderr

clean:
	rm -rf build *.egg-info fastbp/_ckernels*.so csrc/*.c .pytest_cache
