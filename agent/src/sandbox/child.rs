//! One sandboxed child process from fork to reap.
//!
//! # Expected flow
//! 1. Everything is prepared in the parent (command line, memfds, limits), because between
//!    fork and exec only async-signal-safe calls are allowed: the agent is multi-threaded, and a
//!    lock held by another thread at fork time would never be released in the child.
//! 2. In the child ([`Setup::apply`]): new session (so one `kill(-pgid)` reaches the whole
//!    process group), joining the execution's cgroup (see `cgroup`), rlimits, every inherited fd but the job's memfds marked close-on-exec,
//!    supplementary groups, gid and uid dropped, parent-death signal set; for bwrap, a fork
//!    into the reaper [`shim`] and bwrap; then exec.
//!    [`spawn`] stops here; [`Spawned::supervise`] does the rest, at once for a cold run
//!    ([`run`]), or once a warm sandbox was handed its job (see `warm`).
//! 3. The parent watches a pidfd for the exit, a millisecond deadline, and stdout and stderr
//!    through capped buffers, while it feeds stdin. A deadline or an overflowing stream kills
//!    the sandbox.
//! 4. Once the child exited, the streams get a short grace to drain, then the child is reaped
//!    with `wait4` on its own pid. Its resource usage is that of the sandbox alone, never mixed
//!    with concurrent executions as the agent's `RUSAGE_CHILDREN` would be: for bwrap, the
//!    shim's report of its own `RUSAGE_CHILDREN`; for the process backend, `wait4`'s figures.
//!
//! # Guarantees
//! - The child is reaped exactly once, by us: the pid is never recycled under our feet, so
//!   `kill(-pid)` can only reach our own process group. If the supervising future is dropped
//!   (the agent cancels an execution), [`Reaper`] kills the sandbox and reaps it on a thread.
//! - No process of the sandbox outlives [`run`] with the bwrap backend: the shim exits only
//!   once it has reaped every process of the sandbox.
//!
//! # Caveats
//! - `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the process. [`run`] is
//!   async and forks on a Tokio worker thread, which lives as long as the runtime; never call
//!   it from a `spawn_blocking` closure (those threads exit when idle).
//! - When the sandbox is killed, its CPU time and peak memory are lower bounds (often just
//!   bwrap's own): a dying pid-namespace init has the kernel reap the processes it kills
//!   without adding their usage to anyone. The outcome does not depend on them then (the kill
//!   decided it). With per-execution cgroups (see `cgroup`) the caller replaces them with the
//!   cgroup's counters, which are exact.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::time::sleep_until;
use warmpool_core::model::Limits;

use super::error::SandboxError;
use super::outcome::{Stop, Termination};
use super::output::{self, Captured};
use super::{bwrap, host};

/// Processes (threads count too) per slot uid. Enough for node's worker threads and a shell
/// pipeline; few enough that a fork bomb stalls at once.
pub(super) const NPROC_LIMIT: u64 = 64;
/// `RLIMIT_NPROC` when the pids cgroup already limits each execution (`cgroup::PIDS_MAX`): a
/// per-uid backstop, set above the cgroup's limit so that the per-execution limit is the one a
/// fork bomb meets.
pub(super) const NPROC_BACKSTOP: u64 = 2 * NPROC_LIMIT;
/// Open files per process.
const NOFILE_LIMIT: u64 = 256;
/// After killing bwrap's init, how long before the whole process group is killed as well.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(1);
/// After the child exited, how long its output pipes may take to reach end-of-file. With bwrap
/// they close at once (every writer died with the pid namespace); with the process backend a
/// daemonized grandchild may hold them open forever.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(250);

const MIB: u64 = 1024 * 1024;

/// The rlimits of one execution, applied to bwrap and inherited by everything inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rlimits {
    /// `None` (unlimited) when a memory cgroup bounds the execution: address space is not
    /// memory, and runtimes such as node reserve far more of it than they use.
    pub address_space_bytes: Option<u64>,
    /// SIGXCPU at the soft limit, SIGKILL at the hard one; both whole seconds.
    pub cpu_soft_s: u64,
    pub cpu_hard_s: u64,
    pub nproc: Option<u64>,
    pub file_size_bytes: u64,
    pub nofile: u64,
}

impl Rlimits {
    /// Worked example: `cpu_time_ms` 1500 gives SIGXCPU at 2 s of CPU and SIGKILL at 3 s; the
    /// measured 1.5 s is checked to the millisecond afterwards (see `outcome`).
    ///
    /// `address_space_mb` is `None` when a memory cgroup bounds the execution, else the job's
    /// `memory_mb` plus its runtime's address-space allowance. `pids_cgroup`: a pids cgroup
    /// bounds the execution, so `RLIMIT_NPROC` is only a backstop.
    pub fn for_limits(
        limits: &Limits,
        work_dir_mb: u64,
        address_space_mb: Option<u64>,
        pids_cgroup: bool,
    ) -> Self {
        let cpu_soft_s = limits.cpu_time_ms.div_ceil(1000).max(1);
        Self {
            address_space_bytes: address_space_mb.map(|mb| mb.saturating_mul(MIB)),
            cpu_soft_s,
            cpu_hard_s: cpu_soft_s + 1,
            nproc: Some(if pids_cgroup {
                NPROC_BACKSTOP
            } else {
                NPROC_LIMIT
            }),
            file_size_bytes: work_dir_mb.saturating_mul(MIB),
            nofile: NOFILE_LIMIT,
        }
    }

    /// A warm sandbox's limits before its job is known (see `warm`): the job's own except CPU
    /// time and address space, unlimited here and lowered by the stub to the job's.
    pub fn for_warm_launch(work_dir_mb: u64, pids_cgroup: bool) -> Self {
        Self {
            address_space_bytes: None,
            cpu_soft_s: u64::MAX, // RLIM_INFINITY
            cpu_hard_s: u64::MAX, // RLIM_INFINITY
            ..Self::for_limits(
                &Limits {
                    wall_time_ms: 0,
                    cpu_time_ms: 0,
                    memory_mb: 0,
                    max_output_bytes: 0,
                },
                work_dir_mb,
                None,
                pids_cgroup,
            )
        }
    }

    pub fn without_nproc(self) -> Self {
        Self {
            nproc: None,
            ..self
        }
    }
}

/// What the forked child does to itself before exec.
pub(super) struct Setup {
    /// Run as this uid and gid, with no supplementary groups. `None` keeps the agent's (the
    /// process backend when the agent is not root).
    pub credentials: Option<u32>,
    pub rlimits: Rlimits,
    /// File descriptors the program must inherit (the job's memfds); everything else is closed
    /// on exec.
    pub inherit: Vec<RawFd>,
    /// The `cgroup.procs` files of the execution's cgroup (one per v1 hierarchy), which the
    /// child writes itself into first. Empty without cgroups.
    pub cgroup_procs: Vec<CString>,
    /// The caller takes CPU time and peak memory from the cgroup's counters, so the reaper
    /// shim's report is not needed.
    pub usage_from_cgroup: bool,
    /// Whether fd 2 is the program's stderr pipe when [`Setup::apply`] runs, and so goes to
    /// the credentials' uid with stdin and stdout. `false` for nsjail, whose pre-exec hook has
    /// put its log there by then (and given the program's stderr pipe to the uid itself): the
    /// log must stay root's, or the program could write into it.
    pub chown_fd2: bool,
    /// Set by [`run`] for [`Kind::Bwrap`]: fork a reaper shim that reports the sandbox's
    /// resource usage on this pipe (see [`shim`]).
    report_fd: Option<RawFd>,
}

impl Setup {
    pub fn new(credentials: Option<u32>, rlimits: Rlimits, inherit: Vec<RawFd>) -> Self {
        Self {
            credentials,
            rlimits,
            inherit,
            cgroup_procs: Vec::new(),
            usage_from_cgroup: false,
            chown_fd2: true,
            report_fd: None,
        }
    }
}

macro_rules! set_rlimit {
    ($resource:expr, $soft:expr, $hard:expr) => {{
        let limit = libc::rlimit {
            rlim_cur: $soft as libc::rlim_t,
            rlim_max: $hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid rlimit struct; async-signal-safe.
        if unsafe { libc::setrlimit($resource, &limit) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }};
}

impl Setup {
    /// Runs in the forked child, before exec. Only raw syscalls: no allocation, no locks (an
    /// `io::Error` from an OS error code does not allocate).
    fn apply(&self, parent: libc::pid_t) -> io::Result<()> {
        // SAFETY (whole function): plain syscalls on values owned by self; all async-signal-safe.
        if unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        // Into the execution's cgroup while still root (cgroup.procs is root's), and before
        // anything is forked or exec'd, so every process of the sandbox starts inside it.
        // "0" means the writer itself.
        for path in &self.cgroup_procs {
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd == -1 {
                return Err(io::Error::last_os_error());
            }
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let error = (written != 1).then(io::Error::last_os_error);
            unsafe { libc::close(fd) };
            if let Some(e) = error {
                return Err(e);
            }
        }
        // Set while still root, so even a hard limit below the agent's own can be set.
        let r = &self.rlimits;
        if let Some(bytes) = r.address_space_bytes {
            set_rlimit!(libc::RLIMIT_AS, bytes, bytes);
        }
        set_rlimit!(libc::RLIMIT_CPU, r.cpu_soft_s, r.cpu_hard_s);
        if let Some(n) = r.nproc {
            set_rlimit!(libc::RLIMIT_NPROC, n, n);
        }
        set_rlimit!(libc::RLIMIT_FSIZE, r.file_size_bytes, r.file_size_bytes);
        set_rlimit!(libc::RLIMIT_NOFILE, r.nofile, r.nofile);
        set_rlimit!(libc::RLIMIT_CORE, 0, 0);

        // Whatever the agent holds open (Redis sockets, another job's memfds) must not reach
        // the sandbox. std and Tokio open everything close-on-exec already; this makes sure of
        // the rest. Kernels before 5.11 lack close_range: then that is all we rely on.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
        }
        for &fd in &self.inherit {
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }

        if let Some(id) = self.credentials {
            unsafe {
                // The stdio pipes are the agent's (made by root, mode 0600): given to the uid
                // that reads and writes them, so that the program can reopen them by path
                // (`/dev/stdin` is `/proc/self/fd/0`: node's `readFileSync('/dev/stdin')`).
                // Each is this run's alone; nothing the sandbox made is ever chowned.
                let last = if self.chown_fd2 { 2 } else { 1 };
                for fd in 0..=last {
                    if libc::fchown(fd, id, id) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::setgroups(0, std::ptr::null()) == -1
                    || libc::setgid(id) == -1
                    || libc::setuid(id) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // A uid that could become root again is no privilege drop at all.
                if id != 0 && libc::setuid(0) != -1 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
        }

        // After the uid change, which clears it. If the agent dies, the sandbox dies.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // The agent may have died before the line above: then nobody would ever kill us.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if let Some(report_fd) = self.report_fd {
            // SAFETY: getpid, prctl and fork are async-signal-safe; the shim branch only makes
            // raw syscalls and never returns.
            unsafe {
                let shim_pid = libc::getpid();
                if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                match libc::fork() {
                    -1 => return Err(io::Error::last_os_error()),
                    // The child goes on to exec bwrap; it too dies with its parent.
                    0 => {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1
                        {
                            return Err(io::Error::last_os_error());
                        }
                        if libc::getppid() != shim_pid {
                            return Err(io::Error::from_raw_os_error(libc::ESRCH));
                        }
                    }
                    bwrap_pid => shim(bwrap_pid, report_fd),
                }
            }
        }
        Ok(())
    }
}

/// The reaper shim between the agent and bwrap, for the bwrap backend.
///
/// Why: bwrap returns as soon as its pid-namespace init reports the program's exit status over
/// an eventfd, without ever waiting for that init. So `wait4` on bwrap sees only bwrap's own
/// few milliseconds, and the init is left an orphan for the host's pid 1 to reap. The shim is
/// a child subreaper: it reaps bwrap *and* the orphaned init (whose counters include the
/// program it waited for), then reports `RUSAGE_CHILDREN` (exactly this sandbox's processes,
/// not the shim's own, which as a fork of the agent has the agent's resident size) and exits
/// with bwrap's status (a signal N as 128 + N, bwrap's own convention).
///
/// Runs in the forked child: raw syscalls only, and it must never return (returning would
/// exec bwrap a second time).
unsafe fn shim(bwrap_pid: libc::pid_t, report_fd: RawFd) -> ! {
    // Hold nothing but the report pipe: std's spawn waits for its exec-error pipe to close, and
    // the program's output pipes must reach end-of-file once the sandbox is gone.
    let report = report_fd as libc::c_uint;
    if report > 0 {
        libc::syscall(
            libc::SYS_close_range,
            0 as libc::c_uint,
            report - 1,
            0 as libc::c_uint,
        );
    }
    libc::syscall(
        libc::SYS_close_range,
        report + 1,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );
    // Shown by ps instead of a second "warmpool-agent" (it is a fork of the agent).
    libc::prctl(libc::PR_SET_NAME, c"sandbox-reaper".as_ptr());
    // The agent's SIGCHLD handler (if any) would only interrupt the waits below.
    libc::signal(libc::SIGCHLD, libc::SIG_DFL);

    let mut code = 125; // bwrap was never seen to exit: an internal error
    loop {
        let mut status: libc::c_int = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == bwrap_pid {
            code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
        } else if pid == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break; // ECHILD: every process of the sandbox is reaped
        }
    }
    let mut usage: libc::rusage = std::mem::zeroed();
    libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
    libc::write(
        report_fd,
        (&usage as *const libc::rusage).cast(),
        std::mem::size_of::<libc::rusage>(),
    );
    libc::_exit(code)
}

/// How to kill a running child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// bwrap under a reaper shim: kill bwrap and its pid-namespace init but not the shim (see
    /// `bwrap::kill_sandbox`), the whole process group only as a fallback.
    Bwrap,
    /// A bare process: kill its process group.
    Process,
}

/// Everything observed about one child.
#[derive(Debug)]
pub(super) struct Finished {
    /// `None` when the child could not be reaped (then `internal_error` says why).
    pub status: Option<libc::c_int>,
    pub cpu_ms: u64,
    pub memory_kb: u64,
    pub wall: Duration,
    /// Why we killed it, if we did.
    pub stop: Option<Stop>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub internal_error: Option<String>,
    /// The memory cgroup OOM-killed a process of the sandbox (set by the caller, which owns
    /// the cgroup).
    pub oom_killed: bool,
}

impl Finished {
    pub fn termination(&self, decode: fn(libc::c_int) -> Termination) -> Option<Termination> {
        self.status.map(decode)
    }
}

/// Spawns `command` with `setup`, feeds `stdin`, enforces the wall-time and output limits and
/// reaps it. `Err` only if it could not be started.
pub(super) async fn run(
    command: Command,
    setup: Setup,
    kind: Kind,
    stdin: &[u8],
    limits: &Limits,
) -> Result<Finished, SandboxError> {
    spawn(command, setup, kind)?
        .supervise(None, stdin, limits)
        .await
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
/// [`Spawned::supervise`].
pub(super) fn spawn(
    mut command: Command,
    mut setup: Setup,
    kind: Kind,
) -> Result<Spawned, SandboxError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let report = match kind {
        Kind::Bwrap => {
            Some(
                host::pipe(libc::O_CLOEXEC).map_err(|source| SandboxError::Prepare {
                    context: "creating the resource-usage pipe",
                    source,
                })?,
            )
        }
        Kind::Process => None,
    };
    setup.report_fd = report.as_ref().map(|(_, write)| write.as_raw_fd());
    // With a cgroup the caller takes CPU and memory from its counters: a shim killed before it
    // could report (the OOM killer may pick it too) is then no failure of ours.
    let report_required = !setup.usage_from_cgroup;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: apply makes only async-signal-safe calls and allocates nothing.
    unsafe {
        command.pre_exec(move || setup.apply(parent));
    }

    let mut child = command.spawn().map_err(SandboxError::Spawn)?;
    // From here on the child exists: every early return must kill and reap it, which the
    // reaper does on drop.
    let reaper = Reaper {
        pid: child.id() as libc::pid_t,
        kind,
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
        let (pid, kind) = (reaper.pid, reaper.kind);
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
            kind,
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

        let (status, usage) = match reap(pid, kind).await {
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
            status,
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
    kind: Kind,
    stop: Option<Stop>,
    escalate_at: Option<tokio::time::Instant>,
}

impl Killer {
    fn stop(&mut self, reason: Stop) {
        if self.stop.is_some() {
            return;
        }
        self.stop = Some(reason);
        kill(self.pid, self.kind);
        if self.kind == Kind::Bwrap {
            self.escalate_at = Some(tokio::time::Instant::now() + KILL_GRACE);
        }
    }

    fn kill_group(&self) {
        kill_group(self.pid);
    }
}

fn kill(pid: libc::pid_t, kind: Kind) {
    match kind {
        Kind::Bwrap => {
            if !bwrap::kill_sandbox(pid) {
                kill_group(pid);
            }
        }
        Kind::Process => kill_group(pid),
    }
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
async fn reap(pid: libc::pid_t, kind: Kind) -> io::Result<(libc::c_int, libc::rusage)> {
    if let Some(reaped) = wait4(pid, libc::WNOHANG)? {
        return Ok(reaped);
    }
    // Not exited after all (the pidfd wait failed): make sure it will, then block for it.
    kill(pid, kind);
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
    kind: Kind,
    reaped: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let (pid, kind) = (self.pid, self.kind);
        kill(pid, kind);
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
