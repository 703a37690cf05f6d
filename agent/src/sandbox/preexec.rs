//! What the forked child does to itself between fork and exec, for every backend: a new
//! session, its cgroup, rlimits, the fds it may inherit, its stdio handed to the slot uid, the
//! privilege drop, the parent-death signal; for nsjail its log on fd 2 and the seccomp
//! architecture lock; for a launcher, the fork into the reaper [`shim`].
//!
//! # Why everything here must be async-signal-safe
//! The agent is multi-threaded (Tokio's workers, the Redis client, tracing). `fork` copies only
//! the calling thread: every lock another thread held at that instant (the allocator's, stdio's,
//! tracing's, glibc's own) stays locked for ever in the child, with nobody left to release it.
//! So between fork and exec the child may make only async-signal-safe calls (POSIX's list,
//! `signal-safety(7)`): raw system calls on memory prepared before the fork. No allocation
//! (`Vec`, `String`, `format!`, `CString::new`), no logging, no `std::env`, no locks, no
//! panics that unwind. Everything this code reads — the paths, the fd lists, the filter — is
//! built by the parent before it forks, and an `io::Error` made from an OS error code does not
//! allocate. A call that is not safe here would not fail every time: it would hang a child
//! once in a while, whenever another thread held the lock it needs, which is why this file
//! holds only such code and nothing else.
//!
//! # Order, and why
//! 1. nsjail only: the program's stderr pipe to its spare fd number and nsjail's log on fd 2
//!    (see `nsjail`); then the architecture lock, which nsjail and everything under it inherit.
//! 2. `setsid`, so that one `kill(-pgid)` reaches the whole process group.
//! 3. Into the execution's cgroup while still root (`cgroup.procs` is root's), before anything
//!    is forked or exec'd.
//! 4. rlimits, while still root, so that even a hard limit below the agent's own can be set.
//! 5. Every inherited fd but the listed ones close-on-exec; the listed ones (job memfds,
//!    configuration) not.
//! 6. The stdio pipes to the slot uid, then groups, gid, uid dropped (and checked for good).
//! 7. `PR_SET_PDEATHSIG` after the uid change (which clears it), then a check that the agent
//!    did not die before it was set.
//! 8. For a launcher: the child becomes the reaper shim, a child subreaper, and forks the
//!    process that goes on to exec the launcher.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::rlimits::Rlimits;

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
    /// nsjail's log goes on fd 2 (see `nsjail`). Then fd 2 is no longer the program's stderr
    /// pipe when the stdio pipes go to the slot uid, and stays root's: the program must not be
    /// able to write into the log.
    pub log_on_stderr: Option<LogOnStderr>,
    /// A seccomp filter to load before anything else (nsjail's architecture lock, see
    /// `seccomp::bpf::arch_lock`), built before the fork.
    pub arch_lock: Option<Vec<libc::sock_filter>>,
    /// Set by `supervise` for a launcher: fork a reaper shim that reports the sandbox's
    /// resource usage on this pipe (see [`shim`]).
    pub report_fd: Option<RawFd>,
}

/// Where nsjail's log and the program's stderr go in the child (see `nsjail`).
#[derive(Debug, Clone, Copy)]
pub(super) struct LogOnStderr {
    /// The fd number that takes the program's stderr pipe (the log pipe's read end, which the
    /// child does not need); nsjail passes it on, and its loader gives it back to the program.
    pub program_stderr: RawFd,
    /// The log pipe's write end, dup'd onto fd 2.
    pub log: RawFd,
}

impl Setup {
    pub fn new(credentials: Option<u32>, rlimits: Rlimits, inherit: Vec<RawFd>) -> Self {
        Self {
            credentials,
            rlimits,
            inherit,
            cgroup_procs: Vec::new(),
            log_on_stderr: None,
            arch_lock: None,
            report_fd: None,
        }
    }

    /// Has `command`'s child apply this set-up between fork and exec. It runs after std has put
    /// the stdio pipes on fds 0-2.
    pub fn install(mut self, command: &mut Command) {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: apply makes only async-signal-safe calls and allocates nothing (see the
        // module docs); everything it reads was moved into the closure before the fork.
        unsafe {
            command.pre_exec(move || self.apply(parent));
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
    /// Runs in the forked child, before exec, in the order of the module docs. Only raw
    /// syscalls: no allocation, no locks.
    fn apply(&mut self, parent: libc::pid_t) -> io::Result<()> {
        // SAFETY (whole function): plain syscalls on values owned by self; all async-signal-safe.
        if let Some(redirect) = self.log_on_stderr {
            // fd 2 (the program's stderr pipe) to the spare number, the log pipe to fd 2. The
            // stderr pipe goes to the slot uid first, as the program's other pipes do below.
            unsafe {
                if let Some(id) = self.credentials {
                    if libc::fchown(2, id, id) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::dup2(2, redirect.program_stderr) == -1 || libc::dup2(redirect.log, 2) == -1
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some(filter) = self.arch_lock.as_mut() {
            load_filter(filter)?;
        }
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
                // Each is this run's alone; nothing the sandbox made is ever chowned. Not fd 2
                // when it holds nsjail's log (its stderr pipe went to the uid above).
                let last = if self.log_on_stderr.is_some() { 1 } else { 2 };
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
                    // The child goes on to exec the launcher; it too dies with its parent.
                    0 => {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1
                        {
                            return Err(io::Error::last_os_error());
                        }
                        if libc::getppid() != shim_pid {
                            return Err(io::Error::from_raw_os_error(libc::ESRCH));
                        }
                    }
                    launcher_pid => shim(launcher_pid, report_fd),
                }
            }
        }
        Ok(())
    }
}

/// Loads `filter` (the architecture lock) on the calling process: raw syscalls only, on memory
/// prepared before the fork.
fn load_filter(filter: &mut [libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with valid arguments; the kernel copies the filter. no_new_privs first:
    // without CAP_SYS_ADMIN (an agent not run as root) the kernel requires it, and nsjail sets
    // it for the jail anyway.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog,
            ) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The reaper shim between the agent and the launcher (bwrap or nsjail).
///
/// Why: bwrap returns as soon as its pid-namespace init reports the program's exit status over
/// an eventfd, without ever waiting for that init. So `wait4` on bwrap sees only bwrap's own
/// few milliseconds, and the init is left an orphan for the host's pid 1 to reap. The shim is
/// a child subreaper: it reaps the launcher *and* the orphaned init (whose counters include the
/// program it waited for), then reports `RUSAGE_CHILDREN` (exactly this sandbox's processes,
/// not the shim's own, which as a fork of the agent has the agent's resident size) and exits
/// with the launcher's status (a signal N as 128 + N, bwrap's own convention: see `outcome`).
///
/// Runs in the forked child: raw syscalls only, and it must never return (returning would
/// exec the launcher a second time).
unsafe fn shim(launcher_pid: libc::pid_t, report_fd: RawFd) -> ! {
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

    let mut code = 125; // the launcher was never seen to exit: an internal error
    loop {
        let mut status: libc::c_int = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == launcher_pid {
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
