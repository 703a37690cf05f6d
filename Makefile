# warmpool: the two commands. `make demo` runs the real thing locally; `make test` runs every test.
.PHONY: demo test build release lint bench deps

CARGO ?= cargo

deps:
	@scripts/ensure-deps.sh

build: deps
	$(CARGO) build --workspace --bins

release: deps
	$(CARGO) build --release --workspace --bins

demo: deps
	$(CARGO) build --release --workspace --bins
	target/release/warmpool-tools demo

# Every test: see scripts/test.sh (the workspace, then the sandbox suites cold and the attack
# suite on each backend, warm and cold).
test: deps
	@scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps
	$(CARGO) build --release --workspace --bins
	target/release/warmpool-tools bench place
	target/release/warmpool-tools bench exec
	target/release/warmpool-tools bench startup
	target/release/warmpool-tools bench sandbox
	WARMPOOL_LOG=error target/release/warmpool-tools bench gce
