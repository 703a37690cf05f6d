//! warmpool-agent: runs on each VM, pulls executions from Redis and runs each in a fresh sandbox.
//!
//! It depends on `warmpool_core` (the contract with the orchestrator) and never on the
//! orchestrator itself.
//!
//! # Layout
//! - [`config`]: its settings, parsed and validated before anything starts.
//! - [`figures`]: what it measures for the pool's `/metrics`, sent with each heartbeat.
//! - [`metadata`]: boot from Compute Engine instance metadata (`--from-metadata`), before the
//!   runtime starts; the metadata server's token for the self-delete.
//! - [`worker`]: registration, the pull loop, results.
//! - [`lifecycle`]: how the agent ends (signal, retired, orphaned), the heartbeat that is the
//!   dead-man's switch, and what becomes of the VM (delete, power off, nothing).
//! - [`sandbox`]: runs one job in a fresh sandbox (bwrap, nsjail, or the unsandboxed dev
//!   backend).
pub mod config;
pub mod figures;
pub mod lifecycle;
pub mod metadata;
pub mod sandbox;
pub mod worker;
