# Short names for the everyday jobs. Everything installs into ./.venv; nothing else is needed
# beyond a Rust toolchain and Python >= 3.9.

PYTHON ?= python3
VENV   ?= .venv
SHARED ?= ../shared
PY     := $(VENV)/bin/python
ENV    := VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$(PATH)

.PHONY: venv dev bench test test-rust test-python conformance lint clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

## dev: build the extension (release profile) into the virtual environment
dev: venv
	$(ENV) maturin develop --release --quiet

## bench: the benchmark's quick table (sce_rs against every peer installed; see BENCHMARKS.md)
bench: dev
	$(PY) -m sce_rs.bench --quick

## test: the Rust core's tests (no Python), then the Python suite (conformance included)
test: test-rust test-python conformance

test-rust:
	cargo test --release --quiet

test-python: dev
	$(ENV) SCE_RS_SHARED=$(abspath $(SHARED)) $(PY) -m pytest -q

conformance: dev
	$(PY) $(SHARED)/conformance/run_conformance.py

lint: venv
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python -- -D warnings
	$(VENV)/bin/ruff check python tests

clean:
	rm -rf $(VENV) target
