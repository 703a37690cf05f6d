//! The agent process of each fake VM: launching it, stopping it, knowing when it is gone.
//!
//! # Expected flow
//! An instance reaches RUNNING → [`launch`] starts `<agent_bin> --from-metadata` in its own
//! process group with a cleared environment (PATH, HOME, `WARMPOOL_METADATA_URL`, the
//! configured extras) → a supervising task owns the `Child` and waits for it → a delete or
//! shutdown sends [`AgentHandle::stop`] (SIGTERM to the group, SIGKILL after
//! [`STOP_GRACE`]); a preemption sends [`AgentHandle::kill`] (SIGKILL at once).
//!
//! # Guarantees
//! - Signals go to the whole process group, so an agent's children (a shell script's `sleep`,
//!   a sandboxed execution) go with it. After the leader exits on a stop, the group gets a
//!   SIGKILL sweep before the exit is published.
//! - Only the supervising task reaps the child and it signals only before reaping, so a signal
//!   never reaches a recycled pid.
//! - The `Child` has `kill_on_drop`: if the runtime goes away with the task, the leader dies.
//!
//! # Caveats
//! - The `Child` lives in the supervising task, not in the instance record: it has to be
//!   awaited, and the record sits behind a std mutex that nothing may await under. The record
//!   keeps an [`AgentHandle`] (pid, command channel, exit watch) instead.
//! - An agent that exits by itself leaves its instance RUNNING, as a VM whose agent crashed
//!   would be; its exit is recorded and any children it left are swept by the later stop.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stopping agent has between SIGTERM and SIGKILL (a VM's shutdown gets longer;
/// tests should not wait that long).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

/// What an instance record keeps of its agent.
#[derive(Debug)]
pub(crate) struct AgentHandle {
    pub pid: u32,
    commands: mpsc::UnboundedSender<Command>,
    exited: watch::Receiver<Option<i32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// SIGTERM, then SIGKILL after the grace period.
    Stop,
    /// SIGKILL now (a preemption).
    Kill,
}

impl AgentHandle {
    /// Starts the graceful stop; `wait_exited` tells when it is over. Idempotent.
    pub fn stop(&self) {
        // A closed channel means the supervisor already finished: nothing left to stop.
        let _ = self.commands.send(Command::Stop);
    }

    pub fn kill(&self) {
        let _ = self.commands.send(Command::Kill);
    }

    /// The exit code (128 + signal for a signal death), once the agent has exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exited.borrow()
    }

    /// Resolves once the agent has exited (and, after a stop, its group was swept), or when
    /// its supervisor is gone.
    pub fn wait_exited(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut exited = self.exited.clone();
        async move {
            let _ = exited.wait_for(Option::is_some).await;
        }
    }

    /// The process-group id (the leader's pid, as the agent leads its own group).
    pub fn pgid(&self) -> i32 {
        self.pid as i32
    }
}

/// Everything a launch needs besides the instance's own URL.
pub(crate) struct LaunchSpec<'a> {
    pub bin: &'a Path,
    pub env: &'a [(String, String)],
    pub metadata_url: String,
}

/// Spawns the agent and its supervising task (tracked, so `shutdown` waits for it).
pub(crate) fn launch(
    spec: LaunchSpec<'_>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> std::io::Result<AgentHandle> {
    let mut cmd = tokio::process::Command::new(spec.bin);
    cmd.arg("--from-metadata")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        // Its own group, so signals reach whatever the agent started.
        .process_group(0);
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("WARMPOOL_METADATA_URL", &spec.metadata_url);
    for (key, value) in spec.env {
        cmd.env(key, value);
    }
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the agent exited before its pid was read"))?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (exited_tx, exited) = watch::channel(None);
    tracker.spawn(supervise(
        child,
        pid as i32,
        commands_rx,
        exited_tx,
        cancel.clone(),
    ));
    Ok(AgentHandle {
        pid,
        commands,
        exited,
    })
}

/// Owns the child until it is reaped and the group is swept.
async fn supervise(
    mut child: tokio::process::Child,
    pgid: i32,
    mut commands: mpsc::UnboundedReceiver<Command>,
    exited: watch::Sender<Option<i32>>,
    cancel: CancellationToken,
) {
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    let mut handle_alive = true;
    // Phase 1: the leader is alive.
    let status = loop {
        let stop_requested = tokio::select! {
            status = child.wait() => break status,
            command = commands.recv(), if handle_alive => match command {
                Some(Command::Kill) => {
                    signal_group(pgid, libc::SIGKILL);
                    stopping = true;
                    false
                }
                Some(Command::Stop) => true,
                // The handle was dropped (instance record gone): stop, and stop listening.
                None => {
                    handle_alive = false;
                    true
                }
            },
            _ = cancel.cancelled(), if !stopping => true,
            _ = sleep_until_opt(kill_at) => {
                signal_group(pgid, libc::SIGKILL);
                kill_at = None;
                false
            }
        };
        if stop_requested && !stopping {
            stopping = true;
            signal_group(pgid, libc::SIGTERM);
            kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
        }
    };
    let code = match status {
        Ok(status) => exit_code(status),
        Err(err) => {
            tracing::warn!(pgid, error = %err, "waiting for a fake VM's agent failed");
            -1
        }
    };
    if stopping {
        // The leader is reaped, so the pgid can only still name its leftover children.
        signal_group(pgid, libc::SIGKILL);
    } else {
        tracing::info!(
            pgid,
            code,
            "a fake VM's agent exited by itself; the VM stays up"
        );
    }
    let _ = exited.send(Some(code));
    if stopping {
        return;
    }
    // Phase 2: the agent exited by itself; wait for the stop to sweep what it left behind.
    tokio::select! {
        _ = commands.recv(), if handle_alive => {},
        _ = cancel.cancelled() => {},
    }
    signal_group(pgid, libc::SIGKILL);
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `signal` to a process group; a group that is already gone is not an error.
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return; // never the caller's own group (0) or every process (-1)
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

/// Last-resort stop for when no task can run any more (the fake dropped, its runtime maybe
/// going down with it): SIGTERM every group, wait up to [`STOP_GRACE`] for their live members
/// to go (zombies awaiting a reaper do not count), then SIGKILL what is left. Blocks, which is
/// why `FakeGce::shutdown` is the path to prefer; agents that honour SIGTERM end it in
/// milliseconds.
pub(crate) fn terminate_groups_blocking(pgids: &[i32]) {
    if pgids.is_empty() {
        return;
    }
    for &pgid in pgids {
        signal_group(pgid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + STOP_GRACE;
    while std::time::Instant::now() < deadline {
        if live_group_members(pgids) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pgid in pgids {
        signal_group(pgid, libc::SIGKILL);
    }
}

/// How many processes that are not zombies belong to one of `pgids` (a /proc scan).
pub(crate) fn live_group_members(pgids: &[i32]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| {
            // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let pgrp: i32 = fields.nth(1)?.parse().ok()?;
            Some((state != "Z" && state != "X" && pgids.contains(&pgrp)).then_some(()))
        })
        .flatten()
        .count()
}
