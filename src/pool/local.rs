//! The local provider: each "VM" is one `warmpool-agent` process on this machine, with its VM
//! id and pool on its command line (so `ps` shows which VM each process plays). For `warmpool
//! dev`, the demo and the tests; it makes a cold start visible with
//! `WARMPOOL_LOCAL_BOOT_DELAY_MS`.
//!
//! Like a cloud provider, it finds VMs by what they are, not by who created them: `list` and
//! `delete` look for agent processes of the pool in `/proc`, so a new leader can delete the
//! VMs a dead replica started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::{Child, Command};

use super::provider::{
    BoxFuture, FailureKind, InstanceState, Provider, ProviderError, VmInstance, VmSpec,
};

/// How the local provider starts agents.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub agent_bin: PathBuf,
    pub redis_url: String,
    pub pool: String,
    pub boot_delay: std::time::Duration,
    pub sandbox: warmpool_core::config::SandboxBackend,
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
            if !find_agents(&s.pool, Some(&spec.vm_id)).is_empty() {
                return Ok(());
            }
            let child = Command::new(&s.agent_bin)
                .arg("--vm-id")
                .arg(&spec.vm_id)
                .arg("--pool")
                .arg(&s.pool)
                .env("WARMPOOL_REDIS_URL", &s.redis_url)
                .env("WARMPOOL_VM_CAPACITY", spec.capacity.to_string())
                .env("WARMPOOL_VM_SECRET", &spec.secret)
                .env(
                    "WARMPOOL_AGENT_BOOT_DELAY_MS",
                    s.boot_delay.as_millis().to_string(),
                )
                .env("WARMPOOL_AGENT_SANDBOX", s.sandbox.as_str())
                .env("WARMPOOL_AGENT_SLOTS", s.slots.to_string())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    ProviderError::new(
                        "create",
                        &spec.vm_id,
                        FailureKind::Config,
                        format!("spawning {}: {e}", s.agent_bin.display()),
                    )
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
            // Started by another replica (or this one before a restart): stop it by pid.
            for pid in find_agents(&self.settings.pool, Some(vm_id)) {
                kill_pid(pid).await;
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        Box::pin(async move {
            let mut out: Vec<VmInstance> = find_agent_vms(&self.settings.pool)
                .into_iter()
                .map(|(vm_id, pid)| VmInstance {
                    vm_id,
                    state: InstanceState::Running,
                    detail: format!("pid {pid}"),
                })
                .collect();
            out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
            Ok(out)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(LocalProvider::shutdown(self))
    }
}

/// Agent processes of `pool` (and of `vm_id`, if given) running on this machine.
fn find_agents(pool: &str, vm_id: Option<&str>) -> Vec<i32> {
    find_agent_vms(pool)
        .into_iter()
        .filter(|(id, _)| vm_id.is_none_or(|v| v == id))
        .map(|(_, pid)| pid)
        .collect()
}

/// (vm_id, pid) of every live `warmpool-agent --vm-id ID --pool POOL` process. The agent's
/// forked helpers (the sandbox reaper) share its command line until they exec, so a VM can
/// show several pids: all are listed (delete kills them all).
fn find_agent_vms(pool: &str) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for p in warmpool_core::procfs::processes() {
        if !p.program().ends_with("warmpool-agent") {
            continue;
        }
        let value = |flag: &str| {
            p.argv
                .windows(2)
                .find(|w| w[0] == flag)
                .map(|w| w[1].clone())
        };
        if value("--pool").as_deref() != Some(pool) {
            continue;
        }
        // A zombie has an empty cmdline, so it never matches.
        if let Some(vm) = value("--vm-id") {
            out.push((vm, p.pid));
        }
    }
    out
}

/// The agent process of each VM of `pool` on this machine: vm_id → pid (the lowest of the
/// pids sharing its command line: the agent, not the helpers it forked).
pub fn agent_processes(pool: &str) -> std::collections::HashMap<String, i32> {
    let mut out = std::collections::HashMap::new();
    for (vm, pid) in find_agent_vms(pool) {
        let e = out.entry(vm).or_insert(pid);
        *e = (*e).min(pid);
    }
    out
}

/// SIGTERM, then SIGKILL if it is still there after 5 s.
async fn kill_pid(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        // Gone, or a zombie (its cmdline is empty) waiting for its parent to reap it.
        let alive = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
        if !alive {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
