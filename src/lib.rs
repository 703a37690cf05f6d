//! warmpool keeps a steady, warm pool of VMs that run untrusted player code for online games.
//!
//! # Layout
//! - [`model`]: wire types shared by the orchestrator and the agent.
//! - [`runtimes`]: the language catalog.
//! - [`store`]: Redis: connection, key schema, Lua scripts.
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod executions;
pub mod model;
pub mod pool;
pub mod redis_server;
pub mod routing;
pub mod runtimes;
pub mod server;
pub mod sim;
pub mod store;
pub mod waiters;
