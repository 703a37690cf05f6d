//! The pool of VMs: their records in Redis ([`vms`]) and the providers that create and delete
//! them ([`provider`], [`local`]).
//!
//! In this version the pool's size is static: `WARMPOOL_MIN_VMS` VMs are created at start.
//! Creating is idempotent across replicas: a VM is recorded (`add_vm`) before it is created,
//! and only the replica whose record was new creates it.

pub mod local;
pub mod plan;
pub mod provider;
pub mod sizing;
pub mod vms;

pub use provider::{Provider, ProviderError, VmSpec};

use crate::store::{Store, StoreError};

/// Creates the static pool: VMs `POOL-0` .. `POOL-(n-1)`, each once whatever the number of
/// replicas. Returns the ids this call created.
pub async fn ensure_static_pool(
    store: &Store,
    provider: &dyn Provider,
    count: u32,
    capacity: u32,
) -> Result<Vec<String>, PoolError> {
    let mut created = Vec::new();
    for i in 0..count {
        let vm_id = format!("{}-{i}", store.pool_name());
        if vms::add(store, &vm_id, capacity).await? {
            provider
                .create(&VmSpec {
                    vm_id: vm_id.clone(),
                    capacity,
                })
                .await?;
            created.push(vm_id);
        }
    }
    Ok(created)
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}
