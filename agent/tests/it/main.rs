//! The agent's integration suites, in one test binary. Each module is a suite; `make test`
//! selects them by name (`cargo nextest run -p warmpool-agent --test it -- sandbox::`).
//!
//! Hostile programs run only inside a sandbox that `common::assert_isolated` proved isolated
//! first (non-root uid, no network, a process limit, the seccomp filter).

mod common;

mod bootstrap;
mod deploy;
mod nsjail;
mod sandbox;
mod seccomp;
