//! The one interface every backend launches through, and the one path that starts what a
//! backend prepared.
//!
//! A backend ([`Launcher`]: `bwrap::Bwrap`, `nsjail::Nsjail`, `process::Process`) only
//! *prepares* a [`Launch`]: the command, the child's set-up between fork and exec
//! (`preexec::Setup`: uid, rlimits, inherited fds, and whatever else the backend needs there),
//! the shape of its process tree (`supervise::Tree`, which decides how it is killed and how its
//! status reads), and what must stay open until the run is over ([`Held`]). Everything after
//! that is the same for every backend: [`Launch::spawn`] joins the execution's cgroup and
//! forks, [`Started::run`] supervises to the end and lets the backend read what it held; the
//! caller then applies the cgroup's figures and maps the outcome, once (see `Sandbox::execute`
//! for a cold run, `warm` for a spare).

use std::ffi::CString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::process::Command;

use warmpool_core::model::{FileSpec, Limits};

use super::cgroup::CgroupProtections;
use super::error::SandboxError;
use super::outcome::Finished;
use super::preexec::Setup;
use super::rlimits::Rlimits;
use super::stub::STUB_COMMAND;
use super::supervise::{self, Spawned, Tree};

/// One execution, backend-independent: what to run, with what, under which limits.
pub(super) struct Plan<'a> {
    /// `argv[0]` is the absolute path of the program.
    pub argv: Vec<String>,
    pub files: &'a [FileSpec],
    pub stdin: &'a [u8],
    /// The job's limits, as asked.
    pub limits: Limits,
    /// Added to `memory_mb` for `RLIMIT_AS` when no memory cgroup bounds the execution.
    pub address_space_extra_mb: u64,
}

/// Where and under what a cold run runs: its slot's uid, its rlimits, its `/work` size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub uid: u32,
    pub rlimits: Rlimits,
    pub work_dir_mb: u64,
}

/// A warm spare to launch (see `warm`): the sandbox a cold run gets, with the agent binary as
/// its stub in place of a program, reading its job from an inherited pipe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spare {
    pub uid: u32,
    /// The job's limits but CPU time and address space, which the stub lowers.
    pub rlimits: Rlimits,
    pub work_dir_mb: u64,
    /// An `O_PATH` fd on the agent binary.
    pub stub: RawFd,
    /// The read end of the job pipe.
    pub job_fd: RawFd,
    /// A wall-clock backstop fixed at launch, for a backend that has one (nsjail's
    /// `time_limit`, see [`Launcher::wall_backstop`]): the spare's whole life.
    pub time_limit_s: u64,
}

impl Spare {
    /// The stub's arguments after its program: the agent's subcommand, then the job pipe.
    pub fn stub_args(&self) -> [String; 2] {
        [STUB_COMMAND.to_string(), self.job_fd.to_string()]
    }
}

/// A backend: how it prepares a sandbox, and what the start-up checks need of it. Found once
/// at start-up, shared by every run and by the warm pool.
pub(super) trait Launcher: Send + Sync {
    /// The launch of a cold run of `plan`.
    fn cold(&self, plan: &Plan<'_>, run: &Run) -> Result<Launch, SandboxError>;

    /// The launch of a warm spare. Only called when [`Self::isolates`].
    fn spare(&self, spare: &Spare) -> Result<Launch, SandboxError>;

    /// Whether this backend is a sandbox: it must pass the isolation probe before any job, and
    /// can keep warm spares. `false` only for the development `process` backend.
    fn isolates(&self) -> bool;

    /// Whether the sandbox has a wall-clock backstop of its own, fixed at launch (nsjail's
    /// whole-second `time_limit`): a spare's is set before its job is known, so a job longer
    /// than it allows runs cold (see `warm`).
    fn wall_backstop(&self) -> bool {
        false
    }

    /// What the isolation probe must show for this backend beyond what every sandbox must
    /// (`probe::IsolationReport::check`): `Err` says what is missing.
    fn check_probe(&self, probe_stdout: &str) -> Result<(), String>;

    /// Logs what this backend enforces, once the probe passed.
    fn log_protections(&self, _cgroups: Option<CgroupProtections>) {}
}

/// What a backend holds open for one run until it is over (the job's memfds, bwrap's seccomp
/// filter, nsjail's configuration and log, the process backend's work directory). Dropping it
/// closes or removes them.
pub(super) trait Held: Send {
    /// After the run: what the backend learnt that the program's status cannot say (nsjail's
    /// log), recorded in `finished`.
    fn finish(self: Box<Self>, _finished: &mut Finished) {}

    /// Why a sandbox that never got ready failed, as far as the backend can tell so far.
    fn failures_so_far(&self) -> String {
        String::new()
    }
}

/// A sandbox prepared by a backend, not started yet.
pub(super) struct Launch {
    pub command: Command,
    pub setup: Setup,
    pub tree: Tree,
    pub held: Box<dyn Held>,
}

impl Launch {
    /// The rlimits the child will set: the outcome judges CPU time against them.
    pub fn rlimits(&self) -> Rlimits {
        self.setup.rlimits
    }

    /// Forks the sandbox: the child writes itself into `cgroup_procs` (the execution cgroup's
    /// `cgroup.procs` files, none without cgroups) first. `usage_from_cgroup`: the caller takes
    /// CPU time and peak memory from the cgroup, not from the reaper shim's report.
    pub fn spawn(
        self,
        cgroup_procs: Vec<CString>,
        usage_from_cgroup: bool,
    ) -> Result<Started, SandboxError> {
        let Launch {
            command,
            mut setup,
            tree,
            held,
        } = self;
        setup.cgroup_procs = cgroup_procs;
        let spawned = supervise::spawn(command, setup, tree, usage_from_cgroup)?;
        Ok(Started { spawned, held })
    }
}

/// A started sandbox, with what its backend holds for it. Dropping it kills and reaps the
/// sandbox (fields drop in order: the processes first), then closes what was held.
pub(super) struct Started {
    spawned: Spawned,
    held: Box<dyn Held>,
}

impl Started {
    /// Whether the child is still running (see `supervise::Spawned::alive`).
    pub fn alive(&self) -> bool {
        self.spawned.alive()
    }

    /// Waits for the child's first byte on stdout, which must be `expected`.
    pub async fn read_ready(&mut self, expected: u8) -> io::Result<()> {
        self.spawned.read_ready(expected).await
    }

    /// See [`Held::failures_so_far`].
    pub fn failures_so_far(&self) -> String {
        self.held.failures_so_far()
    }

    /// Supervises the sandbox to its end (the wall-clock deadline starts now; `handover`, if
    /// any, is written first: see `supervise::Spawned::supervise`), then lets the backend add
    /// what it held.
    pub async fn run(
        self,
        handover: Option<(OwnedFd, Vec<u8>)>,
        stdin: &[u8],
        limits: &Limits,
    ) -> Result<Finished, SandboxError> {
        let Started { spawned, held } = self;
        let mut finished = spawned.supervise(handover, stdin, limits).await?;
        held.finish(&mut finished);
        Ok(finished)
    }
}
