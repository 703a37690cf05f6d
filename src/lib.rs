//! warmpool keeps a steady, warm pool of VMs that run untrusted player code for online games.
//!
//! # Layout
//! - [`model`]: wire types shared by the orchestrator and the agent.
//! - [`runtimes`]: the language catalog.
//! - [`store`]: Redis: connection, key schema, Lua scripts.
//! - [`routing`]: placement and game leases.
//! - [`executions`]: accept, read and end executions; the agent's start and finish.
//! - [`waiters`]: wakes requests waiting for a result (pub/sub).
//! - [`pool`]: sizing formula, pure planner, leader, reconciler, VM records, providers.
//! - [`gce`]: the Compute Engine provider.
//! - [`api`]: the REST API; [`server`]: one replica's composition root; [`config`]: its settings.
//! - [`cli`]: the `warmpool` command (`serve`, `dev`, `exec`, `demo`, `bench`, `sim`);
//!   [`demo`], [`bench`], [`sim`] are its bigger commands.
//! - [`redis_server`]: a private redis-server for `dev`, benches and tests.
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod executions;
pub mod gce;
pub mod model;
pub mod pool;
pub mod procfs;
pub mod redis_server;
pub mod routing;
pub mod runtimes;
pub mod server;
pub mod sim;
pub mod store;
pub mod waiters;
