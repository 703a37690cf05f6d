//! warmpool, the orchestrator: keeps a steady, warm pool of VMs that run untrusted player code
//! for online games. Its contract with the agents (wire types, Redis keys and scripts) is
//! `warmpool_core`; it never links the agent, nor the developer tools (`warmpool-tools`).
//!
//! # Layout
//! - [`api`]: the REST API.
//! - [`routing`]: placement and leases: a game's end, the expiry of idle games.
//! - [`pool`]: sizing formula, pure planner, leader, reconciler, providers.
//! - [`gce`]: the Compute Engine provider.
//! - [`waiters`]: wakes requests waiting for a result (pub/sub).
//! - [`metrics`]: `/metrics`, the pool's figures from Redis and this replica's own.
//! - [`server`]: one replica's composition root; [`config`]: its settings.
//! - [`cli`]: the `warmpool` command (`serve`, `dev`, `exec`, `sim`).
//! - [`sim`]: the trace simulator of the sizing policy.
//! - [`redis_server`]: a private redis-server for `dev` (and the tools and tests).
pub mod api;
pub mod cli;
pub mod config;
pub mod gce;
pub mod metrics;
pub mod pool;
pub mod redis_server;
pub mod routing;
pub mod server;
pub mod sim;
pub mod waiters;
