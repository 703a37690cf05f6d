//! warmpool-core: the one contract between warmpool's orchestrator and its agents. Both
//! depend on it; neither depends on the other.
//!
//! # Layout
//! - [`model`]: wire types: what crosses the REST API and Redis.
//! - [`store`]: Redis: the connection, the key schema, the Lua scripts of `redis/` and one
//!   typed wrapper per script.
//! - [`runtimes`]: the language catalog.
//! - [`rules`]: what a request must follow: limits, file names, game and pool names.
//! - [`config`]: what both configurations share: the error naming a bad setting, duration
//!   parsers, the settings one side passes to the other.
//! - [`agent_env`]: `warmpool-agent-env`, the agent settings a VM's metadata carries.
//! - [`procfs`]: this machine's processes as `/proc` shows them.
//! - [`telemetry`]: logging and the runtime both binaries start with.
pub mod agent_env;
pub mod config;
pub mod model;
pub mod procfs;
pub mod rules;
pub mod runtimes;
pub mod store;
pub mod telemetry;
