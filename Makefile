# Short names for the everyday jobs. Everything installs into ./.venv; nothing else is needed
# beyond a Rust toolchain and Python >= 3.9.

PYTHON ?= python3
VENV   ?= .venv
SHARED ?= ../shared
PY     := $(VENV)/bin/python
ENV    := VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$(PATH)

.PHONY: venv dev bench bench-rust test test-rust test-python conformance valgrind fuzz lint doc clean

$(VENV)/.installed: requirements-dev.txt requirements-extras.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -r requirements-extras.txt
	touch $@

venv: $(VENV)/.installed

## dev: build the extension (release profile) into the virtual environment
dev: venv
	$(ENV) maturin develop --release --quiet

## bench: the benchmark's quick table (sce_rs against every peer installed; see BENCHMARKS.md)
bench: dev
	$(PY) -m sce_rs.bench --quick

## bench-rust: criterion timings of the Rust kernels alone on the same shapes (no Python)
bench-rust:
	cargo bench --bench kernels

## test: the Rust core's tests (no Python, then again under valgrind), then the Python suite
## (conformance included)
test: test-rust valgrind test-python conformance

test-rust:
	cargo test --release --quiet

test-python: dev
	$(ENV) SCE_RS_SHARED=$(abspath $(SHARED)) SCE_RS_REQUIRE_EXTRAS=1 $(PY) -m pytest -q

## valgrind: the Rust tests under memcheck; any invalid access or definite leak fails. math's
## exhaustive exp sweeps are skipped (hours under valgrind; they touch no heap), and so is the
## comparison of CPUID's cache sizes with Linux's (valgrind answers CPUID with its own caches).
valgrind:
	@command -v valgrind >/dev/null || { echo "valgrind is not installed (apt install valgrind)"; exit 1; }
	PROPTEST_CASES=64 valgrind --quiet --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite,indirect \
		--error-exitcode=1 $$(cargo test --release --no-run 2>&1 | grep -o 'target/release/deps/sce_rs-[0-9a-f]*') \
		--test-threads=2 --skip math:: --skip isa::tests::last_level_cache

## fuzz: a long fuzzing run of the Python entry points and the Rust core (FUZZ_EXAMPLES each)
FUZZ_EXAMPLES ?= 20000
fuzz: dev
	PROPTEST_CASES=$(FUZZ_EXAMPLES) cargo test --release --quiet fuzz
	$(ENV) SCE_RS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz.py

## conformance: the shared vectors, and those of conformance/next (log1p accuracy, axis tuples,
## logsumexp's b= and return_sign), which all pass
conformance: dev
	$(PY) $(SHARED)/conformance/run_conformance.py
	$(PY) $(SHARED)/conformance/run_conformance.py $(SHARED)/conformance/next

## lint: rustfmt, clippy -D warnings (with and without the binding), the docs (make doc), ruff
## check and format, mypy
lint: venv doc
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks
	$(VENV)/bin/mypy

## doc: the crate's docs with its private items (the architecture, layer by layer), every
## link resolved
doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --document-private-items --features python

clean:
	rm -rf $(VENV) target

## bench-peers: sce_rs's Rust API against candle-nn and burn (benches/peers: a crate of its own, which
## `cargo test`, `cargo bench` and the wheel never compile), then the cross-language table with
## sce_rs from Python, PyTorch and JAX on the same shapes
.PHONY: bench-peers
bench-peers: dev
	cd benches/peers && cargo bench --bench peers --features burn
	$(PY) benchmarks/rust_peers_table.py
