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
	target/release/warmpool demo

# The integration tests start the agent binary: build every binary first. Then the sandbox
# suites once more with every run cold (the agent's WARMPOOL_SANDBOX_WARM=off), since the
# whole workspace ran them warm, the agent's default.
COLD_SUITES = -p warmpool-agent --test sandbox --test nsjail --test seccomp
test: deps
	$(CARGO) build --workspace --bins
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast && \
	  WARMPOOL_TEST_SANDBOX_WARM=off $(CARGO) nextest run $(COLD_SUITES) --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast && \
	  WARMPOOL_TEST_SANDBOX_WARM=off $(CARGO) test $(COLD_SUITES) --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps
	$(CARGO) build --release --workspace --bins
	target/release/warmpool bench place
	target/release/warmpool bench exec
	target/release/warmpool bench startup
	target/release/warmpool bench sandbox
	WARMPOOL_LOG=error target/release/warmpool bench gce
