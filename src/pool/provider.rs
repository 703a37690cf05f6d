//! The VM provider interface: how the pool creates, deletes and lists VMs. `local` runs agent
//! processes on this machine; Compute Engine lives in `src/gce/`.

pub use async_trait_free::BoxFuture;

/// What a provider needs to create one VM.
#[derive(Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Deterministic id (so a retried create cannot make a second VM).
    pub vm_id: String,
    /// Games the VM's agent will take.
    pub capacity: u32,
    /// A per-VM secret the agent presents when it registers (empty: none). Never printed.
    pub secret: String,
}

impl std::fmt::Debug for VmSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSpec")
            .field("vm_id", &self.vm_id)
            .field("capacity", &self.capacity)
            .field("secret", &if self.secret.is_empty() { "" } else { "<set>" })
            .finish()
    }
}

/// Where a VM is in its life, as the provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Being created or starting.
    Starting,
    Running,
    /// Stopping, stopped, suspended or preempted: it runs no agent and will not come back by
    /// itself (a preempted Spot VM ends here).
    Stopped,
}

/// A VM as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInstance {
    pub vm_id: String,
    pub state: InstanceState,
    /// Provider-specific detail (a pid, a zone and status).
    pub detail: String,
}

/// The class of a provider failure: what the pool should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Passing (rate limit, backend error, no answer in time): retry later.
    Transient,
    /// No zone could take the VM (stockout, quota): retry later, less often.
    Capacity,
    /// The request is wrong (image, machine type, permission): an operator must act; the pool
    /// pauses creates rather than repeat the mistake.
    Config,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Capacity => "capacity",
            FailureKind::Config => "config",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {vm_id}: {message} ({})", kind.as_str())]
pub struct ProviderError {
    pub op: &'static str,
    pub vm_id: String,
    pub kind: FailureKind,
    pub message: String,
}

impl ProviderError {
    pub fn new(
        op: &'static str,
        vm_id: &str,
        kind: FailureKind,
        message: impl Into<String>,
    ) -> Self {
        ProviderError {
            op,
            vm_id: vm_id.to_string(),
            kind,
            message: message.into(),
        }
    }
}

/// Creates, deletes and lists VMs. Implementations are idempotent: creating a VM that exists
/// or deleting one that does not is not an error.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Creates the VM and returns once the provider accepted it (its agent registers later).
    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>>;
    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Every VM of this pool the provider has, whoever created it.
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

/// A provider whose every call is counted in the pool's stats (`provider_calls|OP|RESULT`,
/// RESULT `ok` or the failure's kind), for `/metrics`.
pub struct Counted {
    inner: std::sync::Arc<dyn Provider>,
    store: warmpool_core::store::Store,
}

impl Counted {
    pub fn new(inner: std::sync::Arc<dyn Provider>, store: warmpool_core::store::Store) -> Self {
        Counted { inner, store }
    }

    async fn count<T>(&self, op: &str, result: &Result<T, ProviderError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        let name = format!("provider_calls|{op}|{outcome}");
        if let Err(err) = warmpool_core::store::stats::count(&self.store, &name, 1).await {
            tracing::debug!(error = %err, "counting a provider call failed");
        }
    }
}

impl Provider for Counted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let r = self.inner.create(spec).await;
            self.count("create", &r).await;
            r
        })
    }
    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let r = self.inner.delete(vm_id).await;
            self.count("delete", &r).await;
            r
        })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        Box::pin(async move {
            let r = self.inner.list().await;
            self.count("list", &r).await;
            r
        })
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown()
    }
}
