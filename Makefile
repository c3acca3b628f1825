# Quick start:  make demo   (set up .venv, build, run the demo)
#               make test   (install test extras, run the whole suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.pyx csrc/*.pxd csrc/*.pxi csrc/*.h)
# asv runs from benchmarks/ against the package installed in .venv (--python=same)
ASV    := cd benchmarks && $(abspath $(PY)) -m asv
# the smoke run fails when one of these backends is missing instead of skipping it
BENCH_REQUIRE ?= numpy,numba,cython

.PHONY: demo test install bench bench-smoke docs clean

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

# The full asv suite against the installed package, then the HTML pages
# (benchmarks/html; `python -m asv preview` serves them).
bench: install
	$(PIP) install -e '.[bench]'
	$(ASV) machine --yes >/dev/null
	$(ASV) run --python=same --set-commit-hash $$(git rev-parse HEAD) $(BENCH_ARGS)
	$(ASV) publish

# Every benchmark once, quickly: a broken benchmark fails here.
bench-smoke: install
	$(ASV) machine --yes >/dev/null
	$(ASV) check --python=same
	cd benchmarks && FASTBP_BENCH_REPEATS=1 FASTBP_BENCH_REQUIRE=$(BENCH_REQUIRE) \
	  $(abspath $(PY)) -m asv run --python=same --quick --durations 5 $(BENCH_ARGS)

# The documentation site (docs/_build/html), warnings as errors.  Installs the
# requirements of the docs extra, read from pyproject.toml, rather than
# `pip install -e '.[docs]'`, which would rebuild the C extension for nothing.
DOCS_REQUIREMENTS := $(shell sed -n 's/^docs *= *\[\(.*\)\]/\1/p' pyproject.toml | tr ',' ' ')
docs: install
	$(if $(DOCS_REQUIREMENTS),,$(error no `docs = [...]` line in pyproject.toml))
	$(PIP) install $(DOCS_REQUIREMENTS)
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf build *.egg-info fastbp/_ckernels*.so csrc/*.c .pytest_cache
