//! Runs one job in a fresh sandbox: the only place where the agent touches untrusted code.
//!
//! # What is isolated, and by what
//!
//! With the [`SandboxBackend::Bwrap`] backend every execution gets:
//!
//! | threat | defence |
//! | --- | --- |
//! | root inside, capabilities | the child drops to uid/gid `uid_base + slot` (no supplementary groups) before it execs `bwrap`; bwrap adds `--cap-drop ALL` and `--disable-userns` (no nested user namespaces) |
//! | network | `--unshare-all`: a fresh network namespace holding only `lo`; there is no option to share the host's |
//! | other processes | a fresh pid namespace (the program sees only itself), ipc, uts (`--hostname sandbox`) and cgroup namespaces |
//! | the host filesystem | a fresh tmpfs root holding read-only `/usr` (and the merged-usr links), `/etc/ld.so.cache`, `/etc/alternatives`, a fresh `/proc` and minimal `/dev`, and two sized tmpfs: `/work` (the job's files) and `/tmp` |
//! | another execution's files | job files go from memory into a memfd and from there straight into this execution's own tmpfs (`--file`); nothing is written to the host disk, and the tmpfs vanishes with the sandbox |
//! | another execution's file descriptors | memfds are created close-on-exec; the flag is cleared only in the forked child, after every other inherited fd was marked close-on-exec, so concurrent spawns never see each other's files |
//! | the agent's environment (secrets) | the child's environment is cleared before `bwrap`, and `--clearenv` plus an allow-list inside |
//! | CPU | `RLIMIT_CPU` (whole seconds, SIGXCPU then SIGKILL) and the measured CPU time checked to the millisecond; with cgroups the measure is the cgroup's (`cpuacct.usage` / `cpu.stat`), exact even for a killed sandbox; and a CPU bandwidth cap per execution (`cpu.max` / `cpu.cfs_quota_us`, `WARMPOOL_SANDBOX_CPUS` cores, 1 by default), so that no execution takes the VM's cores from the others' |
//! | wall clock | a millisecond deadline, then SIGKILL to bwrap and its pid-namespace init: the kernel kills everything in the namespace, daemons included |
//! | memory | a memory cgroup per execution (`memory_mb`, no swap): going over it gets the program OOM-killed and the outcome `memory_limit`, and the peak is the cgroup's. `RLIMIT_AS` is then off (address space is not memory; node reserves ~1 GB of it). Without a memory cgroup, the fallback is `RLIMIT_AS` per process at `memory_mb` + the runtime's `address_space_extra_mb`: crude, and an allocation failure is a `runtime_error` |
//! | the kernel's riskiest system calls | a seccomp filter (see `seccomp`, which tables every call and why): namespace creation (`unshare`, `setns`, `clone` with `CLONE_NEW*`; `clone3` answers `ENOSYS` so libc falls back to `clone`), `ptrace` and cross-process memory, mounts, `bpf`, `perf_event_open`, `userfaultfd`, io_uring, the keyring, open-by-handle, clock, swap and the like answer `EPERM`; loading or replacing the kernel, a foreign syscall ABI (32-bit `int 0x80`, x32) kill the process. Default allow. `WARMPOOL_SANDBOX_SECCOMP=off` drops it (to measure it) |
//! | fork bombs | a pids cgroup per execution (`pids.max` 64 tasks); `RLIMIT_NPROC` per uid (64, or 128 as a backstop when the pids cgroup is in force): it holds because the uid is not root, and one uid per slot keeps one execution from starving another |
//! | disk | the tmpfs sizes and `RLIMIT_FSIZE` |
//! | output floods | stdout and stderr are each read through a buffer capped at `max_output_bytes`; past it the sandbox is killed |
//! | the agent dying | `PR_SET_PDEATHSIG` on the reaper shim and on bwrap, and bwrap's `--die-with-parent` inside |
//! | leftover processes | with cgroups, every task left in the execution's cgroup is killed and the cgroup removed before the execution counts as finished; and always, a reaper shim (a child subreaper between the agent and bwrap) reaps every process of the sandbox, and reports their CPU time and peak memory, before the execution counts as finished |
//!
//! Cgroups (see `cgroup`) are probed at start-up: v2 or v1, and which controllers this agent can
//! use. [`CgroupMode::Auto`] uses what there is and warns about the rest (the fallbacks in the
//! table then apply); [`CgroupMode::Required`] refuses to start without memory and pids.
//!
//! With warm sandboxes ([`SandboxConfig::warm`], the agent's `WARMPOOL_SANDBOX_WARM`, on by
//! default, either backend) every row above holds unchanged (but for nsjail's wall-clock
//! backstop, which a spare must set before its job is known; see `warm`): the sandbox is the same, only
//! launched before its job came, with the agent binary as a stub in place of the program (see `warm`). The stub runs
//! under the same uid, namespaces, capabilities and seccomp filter as the program it then
//! becomes; it writes the job's files (`O_CREAT|O_EXCL|O_NOFOLLOW`) and lowers its CPU (and,
//! without a memory cgroup, address-space) limits to the job's. The job's memory limit is
//! written to the already-existing cgroup at hand-over, the wall-clock deadline starts there,
//! and the preparation's CPU (and on v1 its peak memory) is not charged to the job. Each spare
//! is used once; the next is prepared after the slot's run ended, and the agent's shutdown
//! kills the spares.
//!
//! The [`SandboxBackend::Nsjail`] backend gives the same protections through nsjail instead of bwrap
//! (the same binds, uid, cgroup, rlimits, seccomp policy, supervision and outcome mapping), and
//! adds a read-only `/`, `nosuid`/`nodev` mounts, a `personality` rule and a whole-second
//! wall-clock backstop: see `nsjail` for how, and why a small init script stays pid 1.
//!
//! The [`SandboxBackend::Process`] backend runs the same command with the same rlimits, timeouts and
//! output caps in a fresh temporary directory, and isolates nothing. It exists for development on
//! machines without user namespaces.
//!
//! # Layout
//! One line per file, by layer; a file uses only files of lower-numbered layers (arrows:
//! "uses"), so the graph is a DAG. No file uses this one (`mod.rs`), no backend uses another,
//! and only this file names a backend: everything else reaches one through `launch::Launcher`.
//! A unit test below (`each_file_uses_only_files_of_lower_layers`) holds every file to it.
//!
//! Layer 0, no other sandbox file:
//! - `error`: [`SandboxError`], the one error of the sandbox's boundary, and its stable codes.
//! - `rlimits`: the job's limits as `setrlimit` figures (and the process-count limits).
//! - `output`: reading one stream through a capped buffer.
//! - `probe`: the start-up checks (is the sandbox isolated, which runtimes exist).
//! - `leftovers`: what a dead agent left running as the slot uids, killed at start-up.
//! - `seccomp`: the system-call policy (`seccomp/mod.rs`), and its two renderers beside it:
//!   `seccomp::bpf` (bwrap's filter, nsjail's architecture lock), `seccomp::kafel` (nsjail's
//!   policy text); each renderer uses only the policy.
//!
//! Layer 1:
//! - `host` → error: what both backends take from the host: the one read-only binds list,
//!   the root links, the environment allow-list, PATH lookup, memfd, pipe and pidfd helpers.
//! - `preexec` → rlimits: everything between fork and exec (async-signal-safe only), and the
//!   reaper shim.
//! - `outcome` → output, rlimits: what the supervisor observed ([`Outcome`]'s inputs), the one
//!   status decoding, and the pure mapping to an [`Outcome`].
//! - `stub` → rlimits: the warm sandbox's stub and the job message it reads.
//! - `slots` → error: the concurrency slots, a `deadpool` managed pool (one uid each, and its
//!   spare, kept by a `Keeper`).
//!
//! Layer 2:
//! - `cgroup` → error, host: the per-execution cgroup (v1 or v2): probe, limits, counters,
//!   removal.
//! - `supervise` → error, host, outcome, output, preexec: spawning, then supervising the child
//!   (deadline, output caps, exit), killing its tree, reaping it with its resource usage.
//!
//! Layer 3:
//! - `launch` → cgroup, error, outcome, preexec, rlimits, stub, supervise: the `Launcher`
//!   trait every backend implements, `launch::Plan`, and the one path that starts
//!   and runs what a backend prepared.
//!
//! Layer 4:
//! - `bwrap` → error, host, launch, preexec, probe, seccomp, supervise: the bubblewrap
//!   backend: its command line.
//! - `nsjail` → cgroup, error, host, launch, outcome, preexec, probe, rlimits, seccomp,
//!   supervise: the nsjail backend: its per-run configuration, its init, its log.
//! - `process` → error, host, launch, preexec, supervise: the unsandboxed development backend
//!   and its working directory.
//! - `warm` → cgroup, error, host, launch, outcome, rlimits, slots, stub: the warm spares: one
//!   launched sandbox per slot, the hand-over.
//!
//! Layer 5:
//! - `mod.rs` → all of the above: [`Sandbox`] (configuration, start-up, `execute`), the job
//!   checks.
//!
//! The spine of that graph (every arrow drawn is an edge of the list above; the list has
//! them all):
//! ```text
//! mod.rs ─┬─► bwrap ───┐
//!         ├─► nsjail ──┼─► launch ─┬─► supervise ─┬─► preexec ─► rlimits
//!         ├─► process ─┘     ▲     │              └─► outcome ─► output
//!         └─► warm ──────────┘     ├─► stub ─► rlimits
//!               └─► slots          └─► cgroup ─► host ─► error
//! bwrap, nsjail ─► host, probe, seccomp ◄─ seccomp::bpf, seccomp::kafel
//! ```

mod bwrap;
mod cgroup;
mod error;
mod host;
mod launch;
mod leftovers;
mod nsjail;
mod outcome;
mod output;
mod preexec;
mod probe;
mod process;
mod rlimits;
mod seccomp;
mod slots;
mod stub;
mod supervise;
mod warm;

use std::path::PathBuf;
use std::sync::Arc;

use warmpool_core::model::{ExecutionResult, Job, LanguageInfo, Outcome};
use warmpool_core::runtimes::{self, RuntimeSpec, CATALOG};

use crate::metadata::error_chain;
use launch::{Launcher, Plan};

pub use cgroup::{CgroupMode, CgroupProtections, CgroupVersion};
pub use error::SandboxError;
pub use stub::{stub_main, STUB_COMMAND};
pub use warmpool_core::config::SandboxBackend;

/// How this VM's sandboxes are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub backend: SandboxBackend,
    /// Slot `i` runs as uid and gid `uid_base + i`. One uid per concurrent slot, because
    /// `RLIMIT_NPROC` counts every process of a uid: a fork bomb in one execution then cannot
    /// starve another. The range must belong to no real user of the host.
    pub uid_base: u32,
    /// Most sandboxes running at once on this VM; further runs wait for a free slot.
    pub slots: usize,
    /// Size of each execution's `/work` tmpfs (and of its `/tmp`), and its `RLIMIT_FSIZE`.
    pub work_dir_mb: u64,
    /// Whether each execution runs in its own cgroup (memory and process limits, exact
    /// accounting). Default `Auto`.
    pub cgroups: CgroupMode,
    /// Where the cgroup filesystems are mounted: `/sys/fs/cgroup` (v2 there, or one directory
    /// per v1 controller). Changed by tests, and for hosts that mount them elsewhere.
    pub cgroup_fs: PathBuf,
    /// The CPU bandwidth cap of each execution, in thousandths of a core (its cgroup's
    /// `cpu.max`); 0: none. Needs the cpu controller (`WARMPOOL_SANDBOX_CPUS`, in cores).
    pub cpu_millis: u32,
    /// Whether bwrap or nsjail loads the seccomp filter (see `seccomp`). Default on; off only to measure
    /// what it costs.
    pub seccomp: bool,
    /// The nsjail binary for [`SandboxBackend::Nsjail`]; `None`: `WARMPOOL_SANDBOX_NSJAIL`, else
    /// `nsjail` on PATH.
    pub nsjail: Option<PathBuf>,
    /// Keep a warm spare sandbox per slot (see `warm`; bwrap and nsjail). The agent turns it on
    /// by default (`WARMPOOL_SANDBOX_WARM`); this struct's default is off because on, `stub`
    /// must name the agent binary whenever the caller (a test) is not it.
    pub warm: bool,
    /// The agent binary that serves as the warm sandboxes' stub; `None`: this executable.
    pub stub: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: SandboxBackend::Bwrap,
            uid_base: 60_000,
            slots: 4,
            work_dir_mb: 64,
            cgroups: CgroupMode::Auto,
            cgroup_fs: PathBuf::from("/sys/fs/cgroup"),
            cpu_millis: 1000,
            seccomp: true,
            nsjail: None,
            warm: false,
            stub: None,
        }
    }
}

/// Runs jobs, each in a fresh sandbox, at most `slots` at once. Share it behind an `Arc`.
pub struct Sandbox {
    cfg: SandboxConfig,
    /// The backend, with what it found on the host at start-up: the only place that knows
    /// which one runs (see `launch`).
    launcher: Arc<dyn Launcher>,
    /// Where execution cgroups are made; `None` without cgroups.
    cgroups: Option<cgroup::Cgroups>,
    slots: slots::Slots<warm::Warm>,
    /// The warm spares, when on (see `warm`).
    warm: Option<Arc<warm::Warm>>,
    /// The catalog runtimes this VM can run, with the version each reported at start-up.
    available: Vec<(&'static RuntimeSpec, String)>,
}

impl Sandbox {
    /// Checks the configuration, then probes the host: the backend works (a probe program in a
    /// real sandbox must see a non-root uid, no capabilities, only `lo`, only its own processes
    /// and the process limit), and which catalog runtimes exist and their versions (each asked
    /// inside the sandbox, so a runtime that cannot start there is not offered). Before those,
    /// the cgroups: which version, which controllers this agent can use (see [`CgroupMode`]).
    pub async fn new(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        validate_config(&cfg)?;
        let cgroups = cgroup::probe(cfg.cgroups, &cfg.cgroup_fs, cfg.cpu_millis)?;
        // validate_config checked that uid_base + slots fits in a u32.
        leftovers::kill(cfg.uid_base..cfg.uid_base + cfg.slots as u32);
        let launcher: Arc<dyn Launcher> = match cfg.backend {
            SandboxBackend::Bwrap => Arc::new(bwrap::Bwrap::locate(cfg.seccomp)?),
            SandboxBackend::Nsjail => {
                Arc::new(nsjail::Nsjail::locate(cfg.nsjail.as_deref(), cfg.seccomp)?)
            }
            SandboxBackend::Process => {
                tracing::warn!(
                    "SANDBOX BACKEND `process`: executions run UNSANDBOXED on this host (they can \
                     read its files and reach its network). For development only, never with \
                     untrusted code."
                );
                Arc::new(process::Process)
            }
        };
        let warm = match (launcher.isolates(), cfg.warm) {
            (true, true) => {
                let stub = match &cfg.stub {
                    Some(path) => path.clone(),
                    None => std::env::current_exe().map_err(|source| SandboxError::Prepare {
                        context: "finding the agent binary for the warm sandboxes' stub",
                        source,
                    })?,
                };
                let protections = cgroups.as_ref().map(cgroup::Cgroups::protections);
                let preparer = warm::Preparer {
                    launcher: Arc::clone(&launcher),
                    cgroups: cgroups.clone(),
                    stub: warm::Preparer::open_stub(&stub)?,
                    work_dir_mb: cfg.work_dir_mb,
                    rlimits: rlimits::Rlimits::for_warm_launch(
                        cfg.work_dir_mb,
                        protections.is_some_and(|p| p.pids),
                    ),
                    usage_from_cgroup: protections.is_some_and(|p| p.memory && p.cpu_accounting),
                };
                tracing::info!(stub = %stub.display(), "warm sandboxes: on (one spare per slot)");
                Some(Arc::new(warm::Warm::new(preparer)))
            }
            (_, true) => {
                tracing::info!(
                    backend = %cfg.backend,
                    "warm sandboxes: off (a `process` run has no sandbox to keep warm); every \
                     run starts cold"
                );
                None
            }
            (_, false) => {
                tracing::info!("warm sandboxes: off; every run starts cold");
                None
            }
        };
        let mut sandbox = Sandbox {
            slots: slots::Slots::new(cfg.slots, cfg.uid_base, warm.clone())?,
            cfg,
            launcher,
            cgroups,
            warm,
            available: Vec::new(),
        };
        if sandbox.launcher.isolates() {
            sandbox.probe_isolation().await?;
        }
        for spec in CATALOG {
            if !std::path::Path::new(spec.program).exists() {
                tracing::info!(
                    language = spec.name,
                    program = spec.program,
                    "runtime not installed"
                );
                continue;
            }
            match sandbox.probe_version(spec).await {
                Ok(version) => {
                    tracing::info!(language = spec.name, %version, "runtime available");
                    sandbox.available.push((spec, version));
                }
                Err(reason) => {
                    tracing::warn!(language = spec.name, %reason, "runtime does not run in the sandbox");
                }
            }
        }
        if sandbox.available.is_empty() {
            tracing::warn!("no runtime of the catalog runs on this VM");
        }
        if sandbox.warm.is_some() {
            // Every slot held at once, so each is made (or recycled) once: each gets its spare.
            drop(sandbox.slots.all().await?);
        }
        Ok(sandbox)
    }

    /// Waits until no run and no warm refill holds a slot: then every slot has its spare
    /// (unless its preparation failed). For a benchmark of a job that reaches an idle agent.
    pub async fn settle(&self) {
        // Cannot fail: the pool is never closed, has no timeouts, and a permit always finds a
        // free slot index (see `slots`).
        let _ = self.slots.all().await;
    }

    /// The uids the slots run as (`uid_base`, one per slot).
    pub fn uids(&self) -> std::ops::Range<u32> {
        // validate_config checked that uid_base + slots fits in a u32.
        self.cfg.uid_base..self.cfg.uid_base + self.cfg.slots as u32
    }

    /// Warm spares waiting for a job now (0 when warm sandboxes are off).
    pub fn spares_ready(&self) -> usize {
        self.warm.as_ref().map_or(0, |w| w.ready())
    }

    /// Whether runs start in warm spares (see `warm`).
    pub fn warm(&self) -> bool {
        self.warm.is_some()
    }

    /// Kills the warm spares and stops preparing new ones (the agent's shutdown; tests, before
    /// they check that nothing is left behind). Later runs still work: each prepares its own
    /// sandbox at hand-over. Without warm spares, nothing to do.
    pub async fn shutdown(&self) {
        if let Some(warm) = &self.warm {
            warm.shutdown(&self.slots).await;
        }
    }

    /// What the per-execution cgroups enforce here; `None` when executions run without cgroups
    /// (then memory is bounded by `RLIMIT_AS` and processes by `RLIMIT_NPROC` only).
    pub fn cgroups(&self) -> Option<CgroupProtections> {
        self.cgroups.as_ref().map(cgroup::Cgroups::protections)
    }

    /// The languages this VM can run, with their versions.
    pub fn languages(&self) -> Vec<LanguageInfo> {
        self.available
            .iter()
            .map(|(spec, version)| LanguageInfo {
                name: spec.name.to_string(),
                version: version.clone(),
                aliases: spec.aliases.iter().map(|a| a.to_string()).collect(),
            })
            .collect()
    }

    /// Runs one job in a fresh sandbox, waiting for a free slot first.
    ///
    /// `Ok` whenever the program was started, whatever it then did (time and output limits
    /// included); `Err` only when the system could not run it: a language this VM lacks, a
    /// malformed job, a failure to prepare or spawn the sandbox.
    pub async fn run(&self, job: &Job) -> Result<ExecutionResult, SandboxError> {
        let spec = runtimes::lookup(&job.language)
            .filter(|spec| self.available.iter().any(|(s, _)| s.name == spec.name))
            .ok_or_else(|| SandboxError::LanguageUnavailable(job.language.clone()))?;
        validate_job(job, self.cfg.work_dir_mb)?;
        let plan = Plan {
            argv: command_for(spec, job),
            files: &job.files,
            stdin: job.stdin.as_bytes(),
            limits: job.limits,
            address_space_extra_mb: spec.address_space_extra_mb,
        };
        let result = self.execute(&plan).await;
        match &result {
            Ok(r) => tracing::debug!(
                execution_id = %job.execution_id,
                language = spec.name,
                outcome = ?r.outcome,
                wall_time_ms = r.wall_time_ms,
                cpu_time_ms = r.cpu_time_ms,
                "execution finished"
            ),
            Err(e) => tracing::warn!(
                execution_id = %job.execution_id,
                language = spec.name,
                kind = e.kind(),
                error = %e,
                "execution could not run"
            ),
        }
        result
    }

    /// Takes a slot, then runs the plan in its warm spare if it has one that can take it, else
    /// cold: makes the execution's cgroup, has the backend prepare its launch, starts and
    /// supervises it. One path for every backend (see `launch`); with a cgroup, its counters
    /// replace the rusage figures.
    async fn execute(&self, plan: &Plan<'_>) -> Result<ExecutionResult, SandboxError> {
        let mut slot = self.slots.get().await?;
        let uid = slot.uid;
        let protections = self.cgroups();
        let memory_cgroup = protections.is_some_and(|p| p.memory);
        let address_space_mb = (!memory_cgroup).then(|| {
            plan.limits
                .memory_mb
                .saturating_add(plan.address_space_extra_mb)
        });
        let rlimits = rlimits::Rlimits::for_limits(
            &plan.limits,
            self.cfg.work_dir_mb,
            address_space_mb,
            protections.is_some_and(|p| p.pids),
        );
        let spare = match &self.warm {
            Some(warm) => warm.take(&mut slot, &plan.limits).await,
            None => None,
        };
        if let Some(mut spare) = spare {
            match spare.begin(plan.limits.memory_mb) {
                Ok(()) => {
                    let (finished, cgroup) = spare.run(plan, &rlimits).await?;
                    return Ok(self.conclude(finished, cgroup, slot, plan, &rlimits).await);
                }
                Err(e) => {
                    tracing::debug!(error = %e, memory_mb = plan.limits.memory_mb,
                        "the warm sandbox cannot take the job's memory limit: running it cold");
                    spare.discard().await;
                }
            }
        }
        // Made before the fork and removed (on drop) if anything below fails.
        let cgroup = self
            .cgroups
            .as_ref()
            .map(|c| c.create(uid, plan.limits.memory_mb))
            .transpose()
            .map_err(|source| SandboxError::Prepare {
                context: "creating the execution's cgroup",
                source,
            })?;
        let usage_from_cgroup = protections.is_some_and(|p| p.memory && p.cpu_accounting);
        let cgroup_procs = cgroup
            .as_ref()
            .map(cgroup::ExecCgroup::procs_files)
            .unwrap_or_default();
        let launch = self.launcher.cold(
            plan,
            &launch::Run {
                uid,
                rlimits,
                work_dir_mb: self.cfg.work_dir_mb,
            },
        )?;
        // What the child sets (the process backend may leave RLIMIT_NPROC out).
        let rlimits = launch.rlimits();
        let finished = launch
            .spawn(cgroup_procs, usage_from_cgroup)?
            .run(None, plan.stdin, &plan.limits)
            .await?;
        Ok(self.conclude(finished, cgroup, slot, plan, &rlimits).await)
    }

    /// After a run, warm or cold: the cgroup's figures, the slot back (to its refill, when
    /// warm: only now are the run's sandbox and cgroup gone, so the spare is the uid's only),
    /// and the outcome.
    async fn conclude(
        &self,
        finished: outcome::Finished,
        cgroup: Option<cgroup::ExecCgroup>,
        slot: slots::Slot<warm::Warm>,
        plan: &Plan<'_>,
        rlimits: &rlimits::Rlimits,
    ) -> ExecutionResult {
        let finished = with_cgroup_figures(finished, cgroup).await;
        match &self.warm {
            Some(warm) => warm.refill(slot),
            None => drop(slot),
        }
        outcome::result(finished, &plan.limits, rlimits)
    }

    /// Proves the sandbox isolates before any job runs in it.
    async fn probe_isolation(&self) -> Result<(), SandboxError> {
        let plan = Plan {
            argv: probe::isolation_command(),
            files: &[],
            stdin: b"",
            limits: probe::PROBE_LIMITS,
            address_space_extra_mb: 0,
        };
        let result = self.execute(&plan).await.map_err(|e| {
            SandboxError::ProbeFailed(format!(
                "could not run the probe program: {}",
                error_chain(&e)
            ))
        })?;
        if result.outcome != Outcome::Ok {
            return Err(SandboxError::ProbeFailed(format!(
                "the probe program ended {:?} (exit {:?}, signal {:?}); stderr: {}",
                result.outcome,
                result.exit_code,
                result.signal,
                result.stderr.trim()
            )));
        }
        let report = probe::parse_isolation(&result.stdout);
        let nproc = if self.cgroups().is_some_and(|p| p.pids) {
            rlimits::NPROC_BACKSTOP
        } else {
            rlimits::NPROC_LIMIT
        };
        report.check(nproc).map_err(SandboxError::ProbeFailed)?;
        self.launcher
            .check_probe(&result.stdout)
            .map_err(SandboxError::ProbeFailed)?;
        self.launcher.log_protections(self.cgroups());
        tracing::info!(?report, "sandbox isolation probe passed");
        Ok(())
    }

    /// Runs a runtime's version command in the sandbox; the parsed version, or why not.
    async fn probe_version(&self, spec: &RuntimeSpec) -> Result<String, String> {
        let mut argv = vec![spec.program.to_string()];
        argv.extend(spec.version_args.iter().map(|a| a.to_string()));
        let plan = Plan {
            argv,
            files: &[],
            stdin: b"",
            limits: probe::PROBE_LIMITS,
            address_space_extra_mb: 0,
        };
        let result = self.execute(&plan).await.map_err(|e| error_chain(&e))?;
        if result.outcome != Outcome::Ok {
            return Err(format!(
                "version command ended {:?} (exit {:?}): {}",
                result.outcome,
                result.exit_code,
                result.stderr.trim()
            ));
        }
        // Some interpreters print their version on stderr.
        let text = if result.stdout.trim().is_empty() {
            &result.stderr
        } else {
            &result.stdout
        };
        probe::parse_version(text).ok_or_else(|| format!("no version in {:?}", text.trim()))
    }
}

/// The cgroup's counters in place of the rusage figures (exact, even for a killed sandbox),
/// and whether it OOM-killed anything. The cgroup is emptied and removed on the way.
async fn with_cgroup_figures(
    mut finished: outcome::Finished,
    cgroup: Option<cgroup::ExecCgroup>,
) -> outcome::Finished {
    let Some(cgroup) = cgroup else {
        return finished;
    };
    let usage = cgroup.finish().await;
    if let Some(ms) = usage.cpu_ms {
        finished.cpu_ms = ms;
    }
    if let Some(kb) = usage.peak_kb {
        finished.memory_kb = kb;
    }
    finished.oom_killed = usage.oom_kills > 0;
    finished
}

/// `program args… ENTRY user_args…` for a job whose files were validated.
fn command_for(spec: &RuntimeSpec, job: &Job) -> Vec<String> {
    let mut argv = Vec::with_capacity(2 + spec.args.len() + job.args.len());
    argv.push(spec.program.to_string());
    argv.extend(spec.args.iter().map(|a| a.to_string()));
    // validate_job guarantees a first file. An entry named like an option ("-c") would be
    // parsed as one by the interpreter; "./-c" is the same file.
    let entry = &job.files[0].name;
    argv.push(if entry.starts_with('-') {
        format!("./{entry}")
    } else {
        entry.clone()
    });
    argv.extend(job.args.iter().cloned());
    argv
}

fn validate_config(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    // 0.01 core: the kernel's smallest quota is 1 ms per 100 ms period.
    if !(cfg.cpu_millis == 0 || (10..=1_024_000).contains(&cfg.cpu_millis)) {
        return Err(SandboxError::Config(format!(
            "WARMPOOL_SANDBOX_CPUS={}: the CPU cap per execution must be 0 (none) or 0.01 to \
             1024 cores",
            f64::from(cfg.cpu_millis) / 1000.0
        )));
    }
    if cfg.slots == 0 {
        return Err(SandboxError::Config("slots must be at least 1".into()));
    }
    if cfg.uid_base == 0 {
        return Err(SandboxError::Config(
            "uid_base must not be 0: sandboxes must never run as root".into(),
        ));
    }
    let last = u32::try_from(cfg.slots - 1)
        .ok()
        .and_then(|n| cfg.uid_base.checked_add(n))
        .filter(|&last| last < u32::MAX);
    if last.is_none() {
        return Err(SandboxError::Config(format!(
            "uid_base {} + slots {} overflows the uid range",
            cfg.uid_base, cfg.slots
        )));
    }
    if cfg.work_dir_mb == 0 {
        return Err(SandboxError::Config(
            "work_dir_mb must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Re-checks what the API already validated: the sandbox must not trust its caller with paths.
fn validate_job(job: &Job, work_dir_mb: u64) -> Result<(), SandboxError> {
    if job.files.is_empty() {
        return Err(SandboxError::InvalidJob(
            "no files: the first file is the entry point".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut total: u64 = 0;
    for file in &job.files {
        warmpool_core::rules::check_file_name(&file.name).map_err(|reason| {
            SandboxError::InvalidJob(format!("file name {:?} {reason}", file.name))
        })?;
        if !seen.insert(file.name.as_str()) {
            return Err(SandboxError::InvalidJob(format!(
                "file {:?} appears twice",
                file.name
            )));
        }
        total = total.saturating_add(file.content.len() as u64);
    }
    if total > work_dir_mb.saturating_mul(1024 * 1024) {
        return Err(SandboxError::InvalidJob(format!(
            "the files hold {total} bytes, more than the {work_dir_mb} MB work directory"
        )));
    }
    if job.args.iter().any(|a| a.contains('\0')) {
        return Err(SandboxError::InvalidJob(
            "an argument contains a NUL byte".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use warmpool_core::model::FileSpec;

    #[test]
    fn configs_that_could_run_as_root_or_overflow_are_refused() {
        let ok = SandboxConfig::default();
        assert!(validate_config(&ok).is_ok());
        for bad in [
            SandboxConfig {
                uid_base: 0,
                ..ok.clone()
            },
            SandboxConfig {
                slots: 0,
                ..ok.clone()
            },
            SandboxConfig {
                uid_base: u32::MAX - 1,
                slots: 2,
                ..ok.clone()
            },
            SandboxConfig {
                work_dir_mb: 0,
                ..ok.clone()
            },
            SandboxConfig {
                cpu_millis: 5,
                ..ok.clone()
            },
            SandboxConfig {
                cpu_millis: u32::MAX,
                ..ok.clone()
            },
        ] {
            assert!(validate_config(&bad).is_err(), "{bad:?} was accepted");
        }
        for cpu_millis in [0, 10, 1000, 1_024_000] {
            let fine = SandboxConfig {
                cpu_millis,
                ..ok.clone()
            };
            assert!(validate_config(&fine).is_ok(), "{fine:?} was refused");
        }
    }

    #[test]
    fn the_command_is_program_args_entry_then_user_args() {
        let spec = runtimes::lookup("python").unwrap();
        let mut job = Job {
            execution_id: "e".into(),
            game_id: "g".into(),
            language: "python".into(),
            files: vec![FileSpec {
                name: "main.py".into(),
                content: String::new(),
            }],
            stdin: String::new(),
            args: vec!["a b".into(), "--x".into()],
            limits: probe::PROBE_LIMITS,
        };
        assert_eq!(
            command_for(spec, &job),
            [
                "/usr/bin/python3",
                "-E",
                "-s",
                "-B",
                "main.py",
                "a b",
                "--x"
            ]
        );
        job.files[0].name = "-c".into();
        assert_eq!(command_for(spec, &job)[4], "./-c");
    }

    /// Drift check: nsjail's binds and environment are bwrap's, read from bwrap's real command
    /// line (where bwrap is installed). Both render `host`'s lists; this catches a renderer
    /// that skips or adds one.
    #[test]
    fn binds_and_environment_match_bwraps() {
        let bwrap = match bwrap::Bwrap::locate(false) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIPPED binds_and_environment_match_bwraps: {e}");
                return;
            }
        };
        let inputs = bwrap.inputs(&[]).unwrap();
        let command = bwrap.command(&["/bin/true".to_string()], &inputs, 1);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut binds = Vec::new();
        let mut env = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            match arg.as_str() {
                "--ro-bind" => binds.push(args[i + 1].clone()),
                "--ro-bind-try" if Path::new(&args[i + 1]).exists() => {
                    binds.push(args[i + 1].clone())
                }
                "--setenv" => env.push(format!("{}={}", args[i + 1], args[i + 2])),
                "--symlink" => binds.push(format!("{} -> {}", args[i + 2], args[i + 1])),
                _ => {}
            }
        }
        let config = nsjail::Nsjail::config_on_this_host(62_500, 64);
        let mut ours_binds = Vec::new();
        let mut ours_env = Vec::new();
        for line in config.lines() {
            let field = |name: &str| {
                let start = line.find(&format!("{name}: \""))? + name.len() + 3;
                let end = start + line[start..].find('"')?;
                Some(line[start..end].to_string())
            };
            if line.contains("is_bind: true") && !line.contains("src: \"/dev/") {
                ours_binds.push(field("src").unwrap());
            } else if line.contains("is_symlink: true") && !line.contains("dst: \"/dev/") {
                ours_binds.push(format!(
                    "{} -> {}",
                    field("dst").unwrap(),
                    field("src").unwrap()
                ));
            } else if let Some(value) = line.strip_prefix("envar: ") {
                ours_env.push(value.trim_matches('"').to_string());
            }
        }
        binds.sort();
        ours_binds.sort();
        env.sort();
        ours_env.sort();
        assert_eq!(ours_binds, binds);
        assert_eq!(ours_env, env);
    }

    /// The `# Layout` above, enforced: each file names (through `super::`) only files of a
    /// lower layer, so the import graph stays a DAG and no backend reaches another.
    #[test]
    fn each_file_uses_only_files_of_lower_layers() {
        const FILES: &[(&str, u8, &str)] = &[
            ("error", 0, include_str!("error.rs")),
            ("rlimits", 0, include_str!("rlimits.rs")),
            ("output", 0, include_str!("output.rs")),
            ("probe", 0, include_str!("probe.rs")),
            ("leftovers", 0, include_str!("leftovers.rs")),
            ("seccomp", 0, include_str!("seccomp/mod.rs")),
            ("host", 1, include_str!("host.rs")),
            ("preexec", 1, include_str!("preexec.rs")),
            ("outcome", 1, include_str!("outcome.rs")),
            ("stub", 1, include_str!("stub.rs")),
            ("slots", 1, include_str!("slots.rs")),
            ("cgroup", 2, include_str!("cgroup.rs")),
            ("supervise", 2, include_str!("supervise.rs")),
            ("launch", 3, include_str!("launch.rs")),
            ("bwrap", 4, include_str!("bwrap.rs")),
            ("nsjail", 4, include_str!("nsjail.rs")),
            ("process", 4, include_str!("process.rs")),
            ("warm", 4, include_str!("warm.rs")),
        ];
        let layer = |name: &str| FILES.iter().find(|f| f.0 == name).map(|f| f.1);
        for &(file, own, source) in FILES {
            // Only the file's own code: its unit tests may reach further (`use super::*`).
            let code = source
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or(source);
            // One line, comments left out: a `use super::{…}` group may span several.
            let code = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join(" ");
            for (i, _) in code.match_indices("super::") {
                let rest = &code[i + "super::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                    None => vec![rest],
                };
                let context: String = rest.chars().take(60).collect();
                for name in names {
                    let name = name.trim();
                    let end = name
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(name.len());
                    let name = &name[..end];
                    if file == "seccomp" || name.is_empty() || name == "self" {
                        continue;
                    }
                    match layer(name) {
                        Some(theirs) => assert!(
                            theirs < own,
                            "{file} (layer {own}) uses {name} (layer {theirs}): super::{context}"
                        ),
                        None => panic!(
                            "{file} uses `super::{name}`, which is no sandbox file (the \
                             sandbox's mod.rs is used by none): super::{context}"
                        ),
                    }
                }
            }
        }
    }
}
