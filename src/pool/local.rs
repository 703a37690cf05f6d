//! The local provider: each "VM" is one `warmpool-agent` process on this machine, with its VM
//! id on its command line (so `ps` shows which VM each process plays). For `warmpool dev`,
//! the demo and the tests; it makes a cold start visible with `WARMPOOL_LOCAL_BOOT_DELAY_MS`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::{Child, Command};

use super::provider::{BoxFuture, Provider, ProviderError, VmInstance, VmSpec};

/// How the local provider starts agents.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub agent_bin: PathBuf,
    pub redis_url: String,
    pub pool: String,
    pub boot_delay_ms: u64,
    pub sandbox: String,
    pub slots: u32,
}

pub struct LocalProvider {
    settings: LocalSettings,
    // A std Mutex: nothing awaits while holding it.
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> Self {
        LocalProvider {
            settings,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// `warmpool-agent` beside the running binary (target/debug or target/release).
    pub fn default_agent_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("warmpool-agent")))
            .unwrap_or_else(|| PathBuf::from("warmpool-agent"))
    }

    /// Kills every agent this provider started (on shutdown).
    pub async fn shutdown(&self) {
        let children: Vec<(String, Child)> = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (vm_id, mut child) in children {
            terminate(&vm_id, &mut child).await;
        }
    }
}

async fn terminate(vm_id: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM first: the agent finishes nothing new and exits; then make sure.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            tracing::warn!(vm_id, "agent did not stop on SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = children.get_mut(&spec.vm_id) {
                if matches!(child.try_wait(), Ok(None)) {
                    return Ok(());
                }
            }
            let s = &self.settings;
            let child = Command::new(&s.agent_bin)
                .arg("--vm-id")
                .arg(&spec.vm_id)
                .env("WARMPOOL_REDIS_URL", &s.redis_url)
                .env("WARMPOOL_POOL", &s.pool)
                .env("WARMPOOL_VM_CAPACITY", spec.capacity.to_string())
                .env("WARMPOOL_AGENT_BOOT_DELAY_MS", s.boot_delay_ms.to_string())
                .env("WARMPOOL_AGENT_SANDBOX", &s.sandbox)
                .env("WARMPOOL_AGENT_SLOTS", s.slots.to_string())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| ProviderError::Create {
                    vm_id: spec.vm_id.clone(),
                    message: format!("spawning {}: {e}", s.agent_bin.display()),
                })?;
            tracing::info!(vm_id = %spec.vm_id, pid = child.id(), "local VM started");
            children.insert(spec.vm_id.clone(), child);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let child = self
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(vm_id);
            if let Some(mut child) = child {
                terminate(vm_id, &mut child).await;
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        Box::pin(async move {
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            for (vm_id, child) in children.iter_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    out.push(VmInstance {
                        vm_id: vm_id.clone(),
                        detail: format!("pid {}", child.id().unwrap_or(0)),
                    });
                }
            }
            out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
            Ok(out)
        })
    }
}
