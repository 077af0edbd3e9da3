.DEFAULT_GOAL := help
PY ?= python
# Ray registers nodes at the machine's interface address: tests, benchmarks and demos that start
# Ray run in a network namespace with loopback only (needs root)
LOOPBACK_NS ?= unshare -n sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: help dev install test test-rust test-py lint fmt bench stubtest clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

dev: ## build the native module in release mode into the current environment (fast rebuilds)
	maturin develop --release -E test

install: ## install as a user would (pip install .)
	$(PY) -m pip install .

test-rust: ## Rust core unit tests (no Python needed)
	cargo test -p tierflow-core --release

test-py: ## Python tests (default run: no benchmarks), in a loopback-only network namespace
	$(LOOPBACK_NS) $(PY) -m pytest

test: test-rust test-py ## all tests

stubtest: ## check _tierflow.pyi against the built module
	$(PY) -m mypy.stubtest tierflow._tierflow --allowlist .ci/stubtest-allowlist

lint: stubtest ## rustfmt, clippy -D warnings, ruff, stubtest
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

clean: ## remove build products
	cargo clean
	rm -rf dist build .pytest_cache .benchmarks
