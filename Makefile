.DEFAULT_GOAL := help
PY ?= python
# Ray registers nodes at the machine's interface address: tests, benchmarks and demos that start
# Ray run in a network namespace with loopback only (needs root)
LOOPBACK_NS ?= unshare -n sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: help dev install test test-all test-rust test-py lint fmt bench stubtest mypy clean wheel-check

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

dev: ## build the native module in release mode into the current environment (fast rebuilds)
	maturin develop --release -E test

install: ## install as a user would (pip install .)
	$(PY) -m pip install .

test-rust: ## Rust core unit tests (no Python needed)
	cargo test -p tierflow-core --release

test-py: ## Python tests and doctests (default run: no benchmarks, no slow tests), loopback-only network
	$(LOOPBACK_NS) $(PY) -m pytest

test-all: test-rust ## every test: Rust, Python including the slow ones, doctests (no benchmarks)
	$(LOOPBACK_NS) $(PY) -m pytest -m "not bench"

test: test-rust test-py ## all tests

mypy: ## type-check the package (it ships py.typed)
	$(PY) -m mypy python/tierflow

stubtest: ## check _tierflow.pyi against the built module
	$(PY) -m mypy.stubtest tierflow._tierflow --allowlist .ci/stubtest-allowlist

lint: stubtest mypy ## rustfmt, clippy -D warnings, ruff, mypy, stubtest
	cargo fmt --all -- --check
	cargo clippy --workspace --release -- -D warnings
	ruff check python tests benches
	ruff format --check python tests benches

fmt: ## format Rust and Python
	cargo fmt --all
	ruff format python tests benches
	ruff check --fix python tests benches

bench: ## benchmarks (pytest-benchmark; ratios against the anchors in the same run)
	$(LOOPBACK_NS) $(PY) -m pytest benches -m bench -s

# --- wheels: build, install in fresh virtualenvs, test the installed package ---------------
WHEEL_CHECK_ARGS ?=
wheel-check: ## abi3 + cp310 manylinux wheels and sdist, tested installed on Python 3.10-3.13 (WHEEL_CHECK_ARGS="--python 3.10 --no-demo")
	$(PY) scripts/wheel-check $(WHEEL_CHECK_ARGS)
# --- end wheels ----------------------------------------------------------------------------

clean: ## remove build products
	cargo clean
	rm -rf dist build .pytest_cache .benchmarks
