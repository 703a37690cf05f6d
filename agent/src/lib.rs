//! warmpool-agent: runs on each VM, pulls executions from Redis and runs each in a fresh sandbox.
//!
//! # Layout
//! - [`worker`]: registration, heartbeats, the pull loop, results.
//! - [`sandbox`]: runs one job in a fresh sandbox (bwrap, or the unsandboxed dev backend).
pub mod sandbox;
pub mod worker;
