//! One sandboxed child process from spawn to reap: the supervision every backend shares.
//!
//! # Expected flow
//! 1. Everything is prepared in the parent (command line, memfds, limits) and the child sets
//!    itself up between fork and exec (see `preexec`, which says why that code is apart).
//!    [`spawn`] stops there; [`Spawned::supervise`] does the rest, at once for a cold run, or
//!    once a warm sandbox was handed its job (see `warm`).
//! 2. The parent watches a pidfd for the exit, a millisecond deadline, and stdout and stderr
//!    through capped buffers, while it feeds stdin. A deadline or an overflowing stream kills
//!    the sandbox (see [`Tree`] for how).
//! 3. Once the child exited, the streams get a short grace to drain, then the child is reaped
//!    with `wait4` on its own pid, and its status decoded (see `outcome`). Its resource usage
//!    is that of the sandbox alone, never mixed with concurrent executions as the agent's
//!    `RUSAGE_CHILDREN` would be: under a launcher, the reaper shim's report of its own
//!    `RUSAGE_CHILDREN`; for a bare process, `wait4`'s figures.
//!
//! # Guarantees
//! - The child is reaped exactly once, by us: the pid is never recycled under our feet, so
//!   `kill(-pid)` can only reach our own process group. If the supervising future is dropped
//!   (the agent cancels an execution), [`Reaper`] kills the sandbox and reaps it on a thread.
//! - No process of a launcher's sandbox outlives [`Spawned::supervise`]: the shim exits only
//!   once it has reaped every process of the sandbox.
//!
//! # Caveats
//! - `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the process. [`spawn`]
//!   is called from async code and forks on a Tokio worker thread, which lives as long as the
//!   runtime; never call it from a `spawn_blocking` closure (those threads exit when idle).
//! - When the sandbox is killed, its CPU time and peak memory are lower bounds (often just
//!   the launcher's own): a dying pid-namespace init has the kernel reap the processes it kills
//!   without adding their usage to anyone. The outcome does not depend on them then (the kill
//!   decided it). With per-execution cgroups (see `cgroup`) the caller replaces them with the
//!   cgroup's counters, which are exact.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::time::sleep_until;
use warmpool_core::model::Limits;

use super::error::SandboxError;
use super::host;
use super::outcome::{self, Finished, StatusCoding, Stop};
use super::output::{self, Captured};
use super::preexec::Setup;

/// After killing a launcher's init, how long before the whole process group is killed as well.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(1);
/// After the child exited, how long its output pipes may take to reach end-of-file. Under a
/// launcher they close at once (every writer died with the pid namespace); with the process
/// backend a daemonized grandchild may hold them open forever.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// The shape of the process tree under the agent's child, which decides how it is killed and
/// how its exit status reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    /// A launcher (bwrap or nsjail) under the reaper shim (see `preexec::shim`), then the pid
    /// namespace's init: kill the launcher and its init but not the shim (see
    /// [`kill_sandbox`]), the whole process group only as a fallback. The shim reports the
    /// sandbox's resource usage, and its status is the launcher's: signal N as 128 + N.
    Shimmed,
    /// A bare process (the process backend): kill its process group; its status is a wait
    /// status.
    Bare,
}

impl Tree {
    fn coding(self) -> StatusCoding {
        match self {
            Tree::Shimmed => StatusCoding::SignalAs128PlusN,
            Tree::Bare => StatusCoding::Wait,
        }
    }
}

/// A started child that nobody supervises yet: a cold run supervises it at once, a warm
/// sandbox (see `warm`) once a job was handed over. Dropping it kills and reaps the child.
/// Plain fds, registered with the runtime only in [`Self::supervise`], so that it may wait in
/// a spare for any length of time on any task.
pub(super) struct Spawned {
    reaper: Reaper,
    report_rx: Option<OwnedFd>,
    report_required: bool,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Forks `command` with `setup` applied in the child; the child runs unsupervised until
/// [`Spawned::supervise`]. `usage_from_cgroup`: the caller takes CPU time and peak memory from
/// the execution cgroup's counters, so the reaper shim's report is not needed.
pub(super) fn spawn(
    mut command: Command,
    mut setup: Setup,
    tree: Tree,
    usage_from_cgroup: bool,
) -> Result<Spawned, SandboxError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let report = match tree {
        Tree::Shimmed => {
            Some(
                host::pipe(libc::O_CLOEXEC).map_err(|source| SandboxError::Prepare {
                    context: "creating the resource-usage pipe",
                    source,
                })?,
            )
        }
        Tree::Bare => None,
    };
    setup.report_fd = report.as_ref().map(|(_, write)| write.as_raw_fd());
    // With a cgroup the caller takes CPU and memory from its counters: a shim killed before it
    // could report (the OOM killer may pick it too) is then no failure of ours.
    let report_required = !usage_from_cgroup;
    setup.install(&mut command);

    let mut child = command.spawn().map_err(SandboxError::Spawn)?;
    // From here on the child exists: every early return must kill and reap it, which the
    // reaper does on drop.
    let reaper = Reaper {
        pid: child.id() as libc::pid_t,
        tree,
        reaped: false,
    };
    // Only the shim may hold the write end, so that a read after the reap cannot block.
    let report_rx = report.map(|(read, _write)| read);
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    drop(child); // std's Child neither kills nor waits on drop: the reaper owns that now.
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        return Err(SandboxError::Spawn(io::Error::other(
            "a piped stdio stream is missing",
        )));
    };
    Ok(Spawned {
        reaper,
        report_rx,
        report_required,
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
    })
}

impl Spawned {
    /// Whether the child is still running (a spare that died while it waited is no use).
    pub fn alive(&self) -> bool {
        matches!(wait_id_nohang(self.reaper.pid), Ok(true))
    }

    /// Waits for the child's first byte on stdout, which must be `expected` (a warm sandbox's
    /// stub saying it is ready, see `warm`).
    pub async fn read_ready(&mut self, expected: u8) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut rx = pipe::Receiver::from_owned_fd(self.stdout.try_clone()?)?;
        let mut byte = [0u8; 1];
        match rx.read(&mut byte).await? {
            1 if byte[0] == expected => Ok(()),
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the sandbox exited before it was ready",
            )),
            _ => Err(io::Error::other(
                "the sandbox wrote something else than ready",
            )),
        }
    }

    /// Supervises the child from now on: the wall-clock deadline starts here. `handover`, if
    /// any, is written to its pipe first (then closed), before `stdin`.
    pub async fn supervise(
        self,
        handover: Option<(OwnedFd, Vec<u8>)>,
        stdin: &[u8],
        limits: &Limits,
    ) -> Result<Finished, SandboxError> {
        let Spawned {
            mut reaper,
            report_rx,
            report_required,
            stdin: child_stdin,
            stdout: child_stdout,
            stderr: child_stderr,
        } = self;
        let (pid, tree) = (reaper.pid, reaper.tree);
        let started = Instant::now();
        let handover = handover
            .map(|(fd, message)| pipe::Sender::from_owned_fd(fd).map(|tx| (tx, message)))
            .transpose()
            .map_err(SandboxError::Spawn)?;
        let pidfd = host::pidfd_open(pid).map_err(SandboxError::Spawn)?;
        // SAFETY: an OwnedFd stays open and the same file for as long as the AsyncFd owns it.
        let exit = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(|e| SandboxError::Spawn(e.into()))?;
        let stdin_tx = pipe::Sender::from_owned_fd(child_stdin).map_err(SandboxError::Spawn)?;
        let stdout_rx = pipe::Receiver::from_owned_fd(child_stdout).map_err(SandboxError::Spawn)?;
        let stderr_rx = pipe::Receiver::from_owned_fd(child_stderr).map_err(SandboxError::Spawn)?;

        let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
        let deadline =
            tokio::time::Instant::from_std(started + Duration::from_millis(limits.wall_time_ms));
        let mut stdout = Captured::default();
        let mut stderr = Captured::default();
        let mut killer = Killer {
            pid,
            tree,
            stop: None,
            escalate_at: None,
        };
        let mut exited_at: Option<Instant> = None;
        let mut internal_error: Option<String> = None;
        {
            let out = output::capture(stdout_rx, cap, &mut stdout);
            let err = output::capture(stderr_rx, cap, &mut stderr);
            let feed = async {
                if let Some((tx, message)) = handover {
                    hand_over(tx, &message).await;
                }
                feed_stdin(stdin_tx, stdin).await;
            };
            tokio::pin!(out, err, feed);
            let (mut out_done, mut err_done, mut fed) = (false, false, false);
            let mut drain_until: Option<tokio::time::Instant> = None;
            loop {
                if exited_at.is_some() && out_done && err_done {
                    break;
                }
                tokio::select! {
                    r = &mut out, if !out_done => {
                        out_done = true;
                        stream_ended("stdout", r, &mut killer, &mut internal_error);
                    }
                    r = &mut err, if !err_done => {
                        err_done = true;
                        stream_ended("stderr", r, &mut killer, &mut internal_error);
                    }
                    () = &mut feed, if !fed => fed = true,
                    r = exit.readable(), if exited_at.is_none() => {
                        if let Err(e) = r {
                            // Cannot happen with a valid pidfd; reaping below blocks instead.
                            internal_error.get_or_insert(format!("waiting on the pidfd failed: {e}"));
                            killer.kill_group();
                        }
                        exited_at = Some(Instant::now());
                        // Stragglers of the process group (process backend) would hold the pipes.
                        killer.kill_group();
                        drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                    }
                    () = sleep_until(deadline), if exited_at.is_none() && killer.stop.is_none() => {
                        killer.stop(Stop::WallTime);
                    }
                    () = sleep_until(killer.escalate_at.unwrap_or(deadline)),
                        if exited_at.is_none() && killer.escalate_at.is_some() => {
                        tracing::warn!(pid, "sandbox still alive after killing its init: killing its process group");
                        killer.escalate_at = None;
                        killer.kill_group();
                    }
                    () = sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => {
                        tracing::warn!(pid, "output still open after the program exited: dropped the rest");
                        break;
                    }
                }
            }
        }
        let wall = exited_at.unwrap_or_else(Instant::now) - started;
        drop(exit);

        let (status, usage) = match reap(pid, tree).await {
            Ok(reaped) => {
                reaper.reaped = true;
                (Some(reaped.0), Some(reaped.1))
            }
            Err(e) => {
                internal_error.get_or_insert(format!("reaping the sandbox failed: {e}"));
                (None, None)
            }
        };
        if let Some(message) = &internal_error {
            tracing::error!(pid, error = %message, "sandbox supervision failed");
        }
        // With the shim, its report is the sandbox's usage; the shim's own wait4 figures would
        // include its copy of the agent's memory.
        let usage = match report_rx {
            Some(rx) => status.and_then(|_| read_report(rx)).or_else(|| {
                if report_required {
                    internal_error.get_or_insert("the reaper shim sent no resource usage".into());
                }
                None
            }),
            None => usage,
        };
        let (cpu_ms, memory_kb) = usage.map(usage_figures).unwrap_or((0, 0));
        Ok(Finished {
            termination: status.map(|status| outcome::decode_status(status, tree.coding())),
            cpu_ms,
            memory_kb,
            wall,
            stop: killer.stop,
            stdout,
            stderr,
            internal_error,
            oom_killed: false,
        })
    }
}

/// Hands a warm sandbox its job (see `warm`): the whole message, then end-of-file. A stub
/// that died first makes the write fail: the sandbox's exit then tells what happened.
async fn hand_over(mut tx: pipe::Sender, message: &[u8]) {
    if let Err(e) = tx.write_all(message).await {
        tracing::debug!(error = %e, "handing the job to the sandbox stub failed");
    }
}

/// `Ok(true)` while `pid` (our child) has not exited; it is not reaped.
fn wait_id_nohang(pid: libc::pid_t) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain old data that waitid fills; WNOWAIT leaves the child
    // unreaped, so the pid stays ours.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        if libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == -1
        {
            return Err(io::Error::last_os_error());
        }
        Ok(info.si_pid() == 0)
    }
}

fn stream_ended(
    name: &str,
    result: io::Result<bool>,
    killer: &mut Killer,
    internal_error: &mut Option<String>,
) {
    match result {
        Ok(false) => {}
        Ok(true) => killer.stop(Stop::OutputLimit),
        Err(e) => {
            internal_error.get_or_insert(format!("reading {name} failed: {e}"));
            killer.stop(Stop::Internal);
        }
    }
}

/// Writes the job's stdin, then closes the pipe so the program sees end-of-file. A program
/// that exits without reading it all makes the write fail with EPIPE: that is its business.
async fn feed_stdin(mut tx: pipe::Sender, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if let Err(e) = tx.write_all(data).await {
        if e.kind() != io::ErrorKind::BrokenPipe {
            tracing::debug!(error = %e, "writing stdin failed");
        }
    }
}

/// Kills a child at most once per reason, and remembers the first reason.
struct Killer {
    pid: libc::pid_t,
    tree: Tree,
    stop: Option<Stop>,
    escalate_at: Option<tokio::time::Instant>,
}

impl Killer {
    fn stop(&mut self, reason: Stop) {
        if self.stop.is_some() {
            return;
        }
        self.stop = Some(reason);
        kill(self.pid, self.tree);
        if self.tree == Tree::Shimmed {
            self.escalate_at = Some(tokio::time::Instant::now() + KILL_GRACE);
        }
    }

    fn kill_group(&self) {
        kill_group(self.pid);
    }
}

fn kill(pid: libc::pid_t, tree: Tree) {
    match tree {
        Tree::Shimmed => {
            if !kill_sandbox(pid) {
                kill_group(pid);
            }
        }
        Tree::Bare => kill_group(pid),
    }
}

/// Kills the sandbox under the reaper shim `shim`: SIGKILL to the launcher's init (pid 1 of the
/// namespace: the kernel then kills everything inside) and to the launcher itself. Not the
/// process group, which holds the shim: the shim must live to reap them all and report their
/// usage. `false` if neither was found (not started yet, or already gone): then kill the group.
fn kill_sandbox(shim: libc::pid_t) -> bool {
    let Some(outer) = first_child(shim) else {
        return false;
    };
    let killed_init = first_child(outer).is_some_and(|init| kill_child(outer, init));
    kill_child(shim, outer) || killed_init
}

fn first_child(pid: libc::pid_t) -> Option<libc::pid_t> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// SIGKILL to `pid` if it is (still) a child of `parent`, through a pidfd so that a pid that
/// was recycled since it was read is never signalled.
fn kill_child(parent: libc::pid_t, pid: libc::pid_t) -> bool {
    let Ok(pidfd) = host::pidfd_open(pid) else {
        return false;
    };
    // The pid was read before the pidfd was opened: if it is still parent's child now, the
    // pidfd is that process.
    if parent_of(pid) != Some(parent) {
        return false;
    }
    host::pidfd_kill(&pidfd)
}

/// The parent pid from `/proc/PID/stat` (the field after the parenthesised command name).
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILL to the child's process group. Safe from pid reuse as long as the child (the group
/// leader) is not reaped: its zombie keeps the pid and the group id taken.
fn kill_group(pid: libc::pid_t) {
    // SAFETY: plain syscall; ESRCH (nothing left) is fine.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// The shim's rusage, read after it was reaped (so the read never blocks).
fn read_report(rx: OwnedFd) -> Option<libc::rusage> {
    use std::io::Read;
    let mut bytes = [0u8; std::mem::size_of::<libc::rusage>()];
    std::fs::File::from(rx).read_exact(&mut bytes).ok()?;
    // SAFETY: rusage is plain old data and the shim wrote exactly one.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<libc::rusage>()) })
}

/// Reaps the exited child with its resource usage.
async fn reap(pid: libc::pid_t, tree: Tree) -> io::Result<(libc::c_int, libc::rusage)> {
    if let Some(reaped) = wait4(pid, libc::WNOHANG)? {
        return Ok(reaped);
    }
    // Not exited after all (the pidfd wait failed): make sure it will, then block for it.
    kill(pid, tree);
    kill_group(pid);
    tokio::task::spawn_blocking(move || wait4(pid, 0))
        .await
        .map_err(io::Error::other)?
        .and_then(|r| r.ok_or_else(|| io::Error::other("wait4 returned no child")))
}

/// `wait4` on one pid; `None` if `WNOHANG` and it has not exited.
fn wait4(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<(libc::c_int, libc::rusage)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            return Ok(Some((status, usage)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// (user + system CPU ms, peak resident KiB) from a child's rusage.
fn usage_figures(usage: libc::rusage) -> (u64, u64) {
    let ms = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1000 + (t.tv_usec.max(0) as u64) / 1000;
    (
        ms(usage.ru_utime) + ms(usage.ru_stime),
        usage.ru_maxrss.max(0) as u64, // Linux reports KiB
    )
}

/// Kills and reaps a child whose supervision was abandoned (the future was dropped, or set-up
/// failed after the spawn), so that no sandbox outlives its execution and no zombie stays.
struct Reaper {
    pid: libc::pid_t,
    tree: Tree,
    reaped: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let (pid, tree) = (self.pid, self.tree);
        kill(pid, tree);
        // Blocking wait off the async threads. Bounded: after KILL_GRACE the whole group goes.
        let spawned = std::thread::Builder::new()
            .name("sandbox-reaper".into())
            .spawn(move || {
                let give_up = Instant::now() + KILL_GRACE;
                while Instant::now() < give_up {
                    match wait4(pid, libc::WNOHANG) {
                        Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                        _ => return,
                    }
                }
                kill_group(pid);
                let _ = wait4(pid, 0);
            });
        if let Err(e) = spawned {
            tracing::error!(pid, error = %e, "could not start a thread to reap an abandoned sandbox");
        }
    }
}
