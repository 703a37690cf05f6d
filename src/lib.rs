//! warmpool keeps a steady, warm pool of VMs that run untrusted player code for online games.
//!
//! # Layout
//! - [`model`]: wire types shared by the orchestrator and the agent.
//! - [`runtimes`]: the language catalog.
pub mod model;
pub mod runtimes;
