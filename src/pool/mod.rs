//! The pool of VMs: how many it wants ([`sizing`]), what to do about it ([`plan`], pure), the
//! leader that does it ([`leader`], [`reconciler`]), the VM records in Redis ([`vms`]) and the
//! providers that create and delete VMs ([`provider`], [`local`]), compared with the records
//! by [`inventory`].

pub mod inventory;
pub mod leader;
pub mod local;
pub mod plan;
pub mod provider;
pub mod reconciler;
pub mod sizing;
pub mod vms;

pub use provider::{Provider, ProviderError, VmSpec};
