//! The VM provider interface: how the pool creates, deletes and lists VMs. `local` runs agent
//! processes on this machine; Compute Engine comes with its own module (`src/gce/`).

pub use async_trait_free::BoxFuture;

/// What a provider needs to create one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Deterministic id (so a retried create cannot make a second VM).
    pub vm_id: String,
    /// Games the VM's agent will take.
    pub capacity: u32,
}

/// A VM as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInstance {
    pub vm_id: String,
    /// Provider-specific detail (a pid, an instance URL).
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("creating {vm_id}: {message}")]
    Create { vm_id: String, message: String },
    #[error("deleting {vm_id}: {message}")]
    Delete { vm_id: String, message: String },
}

/// Creates, deletes and lists VMs. Implementations are idempotent: creating a VM that exists
/// or deleting one that does not is not an error.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>>;
    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>>;
    /// Called when the replica stops: release what it holds (not the VMs: they belong to the
    /// pool, and the next leader manages them).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A provider that creates nothing: VMs are started by someone else (tests, another replica).
pub struct NoProvider;

impl Provider for NoProvider {
    fn name(&self) -> &'static str {
        "none"
    }
    fn create<'a>(&'a self, _spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, _vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// `Pin<Box<dyn Future>>`, so the trait stays object-safe without a macro crate.
mod async_trait_free {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}
