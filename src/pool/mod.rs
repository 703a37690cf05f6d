//! The pool of VMs: how many it wants, what to do about it, and the leader that does it.
//!
//! # Layout
//! - [`sizing`]: the formula: how many VMs (pure).
//! - [`plan`]: what to do about it, from a snapshot (pure).
//! - [`control`]: the leader's memory between passes and the create-pause policy (pure, kept
//!   in Redis).
//! - [`inventory`]: the provider's VMs against the records (the comparison is pure).
//! - [`reservations`]: counting announced bursts' arrivals.
//! - [`creates`]: creates running in the background.
//! - [`reconciler`]: the pass: observe, plan, act.
//! - [`leader`]: the fenced leader lease this replica runs for.
//! - [`provider`]: the provider interface; [`local`]: agent processes on this machine (the
//!   Compute Engine provider is `crate::gce`).

pub mod control;
pub mod creates;
pub mod inventory;
pub mod leader;
pub mod local;
pub mod plan;
pub mod provider;
pub mod reconciler;
pub mod reservations;
pub mod sizing;

pub use provider::{Provider, ProviderError, VmSpec};
