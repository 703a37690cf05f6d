//! Warm sandboxes: one spare per slot, launched ahead of its job, used once and discarded. On
//! by default (the agent's `WARMPOOL_SANDBOX_WARM`), for both backends.
//!
//! # What a spare is
//! Everything a cold run does before its program starts, done while the slot is idle: the
//! execution's cgroup created (memory limit [`PREPARE_MEMORY_MB`], `pids.max`), the launcher
//! prepared by the backend through the same interface as a cold run's (`launch::Launcher`'s
//! `spare`), forked, dropped to the slot's uid, under the reaper shim, and the sandbox started with
//! every namespace, mount and tmpfs and the seccomp filter; inside, in place of the program, the
//! **stub**: the agent binary itself, run as `warmpool-agent sandbox-stub FD`, blocked reading the
//! inherited pipe `FD`.
//! - bwrap: the binary is bound read-only at `bwrap::STUB_PATH` and bwrap execs it there.
//! - nsjail: nsjail cannot bind an fd's file into the jail (and the slot uid may not traverse
//!   the binary's directories), so the jail's init (`nsjail::STUB_LOADER`, the cold loader's
//!   twin) execs it through its inherited `O_PATH` fd as `/proc/self/fd/N`, closes its own
//!   copy, and stays pid 1 as in a cold jail. nsjail's `time_limit` backstop is set before the
//!   job is known: [`MAX_AGE`] plus [`NSJAIL_MAX_WARM_WALL`]; a job with a longer wall time
//!   runs cold, with its own.
//!
//! # Expected flow
//! The spares live in the slots of the `slots` pool (a `deadpool` managed pool: see `slots`
//! for why the slot, not the spare, is the pooled object).
//! 1. After a slot's execution ended, [`Warm::refill`] prepares the slot's next spare in the
//!    background, holding the slot until it is in place (the next run on that slot would
//!    otherwise prepare its own at the same time, for the same uid). At start-up every slot
//!    gets one. [`Preparer::prepare`] returns once the stub wrote its ready byte, so a spare
//!    is a sandbox that came up, not one that might still fail.
//! 2. A job takes a slot from the pool, whose recycling ([`Warm::ensure_spare`]) keeps the
//!    spare if it is alive and younger than [`MAX_AGE`] and else prepares one there and then
//!    (the same path, only not ahead); [`Warm::take`] takes it out of the slot for the job.
//!    A slot left without a spare (its preparation failed, logged as a warning) runs the job
//!    cold: a broken warm path costs time, never a job.
//! 3. [`Prepared::begin`]: the cgroup takes the job's memory limit, and what it used so far
//!    stops counting (see `cgroup::ExecCgroup::begin_job`). A limit below what the spare
//!    already holds (a job asking for a few MiB) cannot be set: the spare is discarded and the
//!    job runs cold, so its outcome is a cold run's. Then [`Prepared::run`]: with the
//!    wall-clock deadline starting, the job goes down the pipe ([`encode_job`]) followed by
//!    stdin as in a cold run, and is supervised exactly as one (`launch::Started::run`).
//! 4. The stub (`stub::stub_main`) reads the message to end-of-file, writes each file into
//!    `/work` with `O_CREAT|O_EXCL|O_NOFOLLOW`, lowers `RLIMIT_CPU` (and `RLIMIT_AS` without a
//!    memory cgroup) to the job's, closes the pipe, marks every fd but 0-2 close-on-exec (under
//!    nsjail it holds the agent binary's fd), resets every signal to its default action
//!    (whatever a launcher left ignored) and execs the program: from there on the process is
//!    the program, in the same namespaces, cgroup and seccomp filter as a cold one.
//!
//! # Guarantees
//! - Used once: a spare is taken out of its slot before the hand-over and never put back; its
//!   sandbox ends with its job and is reaped and its cgroup removed as in a cold run.
//! - The stub can do nothing the program could not: it is exec'd inside the sandbox (by bwrap,
//!   or by nsjail's init) after the uid drop, capability drop and seccomp filter, as the
//!   program would be; it only lowers its own limits. It trusts nothing but its pipe, and checks even that (names, sizes, NULs).
//! - [`Warm::shutdown`] (the agent's shutdown) waits for the refills in flight, then kills
//!   the spare of every idle slot and removes its cgroup (a running job's slot has none). A spare dropped any other way is killed and reaped
//!   by its `launch::Started` and its cgroup removed by `cgroup::ExecCgroup`'s drop; if the
//!   agent dies, `PR_SET_PDEATHSIG` and `--die-with-parent` end it as they end a cold run.
//!
//! # What the job is charged
//! CPU: the cgroup's usage from the hand-over on: the stub reading the message, writing the
//! files and exec'ing the program (a cold run is charged bwrap's whole start as well). Peak
//! memory: on v1 from the hand-over on (then bwrap, its init and the stub resident, as in a
//! cold run); on v2 since the preparation (`memory.peak` cannot be reset for another reader).
//! `RLIMIT_CPU` is per process and the stub's few milliseconds before the exec count in it.
//! Without cgroups the figures are the reaper shim's rusage, as in a cold run: they include
//! bwrap's and its init's start (as cold), and the peak resident size is at least the stub's
//! (a few MiB: the kernel carries a process's high-water mark across exec).
//!
//! # Caveats
//! - A spare holds its uid's processes (shim, bwrap, init, stub; under nsjail shim, nsjail,
//!   init, stub): 4 of `RLIMIT_NPROC`'s 64, but only while its slot is idle (a spare is
//!   prepared only once the slot's run ended).
//! - An idle agent always has processes of its slot uids. `tests/it/attacks.rs`' "nothing left"
//!   check tells a spare from a leftover by its shape (a pid namespace holding exactly the
//!   sandbox's init and a waiting stub, one per slot at most, plus the launchers leading to it).
//! - The stub is the agent binary: the program can read it at `bwrap::STUB_PATH`. It holds no
//!   secret (those come from the environment and metadata, never the binary).
//! - A spare that dies while it waits is replaced at its job ([`Warm::take`] checks it); one
//!   killed in the very instant of its hand-over ends that job as killed (`runtime_error`,
//!   signal 9), as a cold sandbox killed while it starts would.
//! - A refill runs after every execution: an agent killed (SIGKILL) while one is in bwrap's
//!   set-up leaves bwrap's inner process behind, blocked for ever on the eventfd by which the
//!   outer bwrap (killed by its parent-death signal) would have released it; the inner one
//!   has no parent-death signal yet. Seen here, and in cold runs too (an agent killed during
//!   a run's start); warm makes the window follow every run. On a VM the agent is pid 1 of
//!   its container's pid namespace, so its death makes the kernel kill everything in the
//!   container, that process included. Outside a container (development, these tests) a
//!   graceful stop ([`Warm::shutdown`]) leaves nothing, and the next agent's start kills
//!   what a dead agent left (in its cgroups, see `cgroup`; by shape, see `leftovers`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;
use warmpool_core::model::Limits;

use super::cgroup::{Cgroups, ExecCgroup};
use super::error::SandboxError;
use super::host;
use super::launch::{Launcher, Plan, Spare, Started};
use super::outcome::Finished;
use super::rlimits::Rlimits;
use super::slots::{Keeper, Slot, SlotState, Slots};
use super::stub::{encode_job, READY};

/// A spare's memory limit until its job's replaces it: room for bwrap, its init and the stub.
pub(super) const PREPARE_MEMORY_MB: u64 = 64;
/// A spare older than this is discarded and prepared afresh at its next job: anything the host
/// changed under it since (an upgraded `/usr` still bound at its old inodes) is then picked up.
pub(super) const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// The longest wall time a job may have to run in an nsjail spare, whose backstop
/// ([`NSJAIL_SPARE_TIME_LIMIT_S`]) is set before the job is known; longer jobs run cold, with a
/// backstop of their own.
pub(super) const NSJAIL_MAX_WARM_WALL: Duration = Duration::from_secs(5 * 60);
/// nsjail's `time_limit` for a spare: its whole life ([`MAX_AGE`] at most) and then the
/// longest job it takes, plus a second, so that it never fires before the agent's own deadline.
/// Its start counts too: nsjail's clock starts at launch, a spare's age at ready, up to
/// [`READY_TIMEOUT`] later.
const NSJAIL_SPARE_TIME_LIMIT_S: u64 =
    MAX_AGE.as_secs() + READY_TIMEOUT.as_secs() + NSJAIL_MAX_WARM_WALL.as_secs() + 1;
/// How long a spare may take to come up before its preparation counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a spare needs to be made: copies of the sandbox's own, so refills run on their own.
pub(super) struct Preparer {
    /// The sandbox's backend (bwrap or nsjail: only a backend that isolates keeps spares).
    pub launcher: Arc<dyn Launcher>,
    pub cgroups: Option<Cgroups>,
    /// An `O_PATH` fd on the agent binary (the slot uid may not traverse the directories of its
    /// path): bound into each bwrap sandbox with `--ro-bind-fd`, exec'd through by nsjail's.
    pub stub: OwnedFd,
    pub work_dir_mb: u64,
    /// The job's limits except CPU time and address space, which the stub sets.
    pub rlimits: Rlimits,
    pub usage_from_cgroup: bool,
}

impl Preparer {
    /// Opens the stub binary for the life of the agent.
    pub fn open_stub(path: &Path) -> Result<OwnedFd, SandboxError> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|source| SandboxError::Prepare {
                context: "opening the agent binary for the warm sandboxes' stub",
                source,
            })
    }

    /// Whether a spare can take a job of these limits: any under bwrap; under nsjail (a
    /// backend with a wall-clock backstop) one whose wall time is within
    /// [`NSJAIL_MAX_WARM_WALL`] (the spare's backstop was set before).
    fn fits(&self, limits: &Limits) -> bool {
        !self.launcher.wall_backstop()
            || Duration::from_millis(limits.wall_time_ms) <= NSJAIL_MAX_WARM_WALL
    }

    /// Launches a spare for the slot running as `uid`; returns once its stub is ready.
    pub async fn prepare(&self, uid: u32) -> Result<Prepared, SandboxError> {
        let cgroup = self
            .cgroups
            .as_ref()
            .map(|c| c.create(uid, PREPARE_MEMORY_MB))
            .transpose()
            .map_err(|source| SandboxError::Prepare {
                context: "creating the warm sandbox's cgroup",
                source,
            })?;
        let (job_rx, job_tx) =
            host::pipe(libc::O_CLOEXEC).map_err(|source| SandboxError::Prepare {
                context: "creating the warm sandbox's job pipe",
                source,
            })?;
        let launch = self.launcher.spare(&Spare {
            uid,
            rlimits: self.rlimits,
            work_dir_mb: self.work_dir_mb,
            stub: self.stub.as_raw_fd(),
            job_fd: job_rx.as_raw_fd(),
            time_limit_s: NSJAIL_SPARE_TIME_LIMIT_S,
        })?;
        let cgroup_procs = cgroup
            .as_ref()
            .map(ExecCgroup::procs_files)
            .unwrap_or_default();
        let mut started = launch.spawn(cgroup_procs, self.usage_from_cgroup)?;
        // Only the stub holds the read end now: if it dies, the hand-over sees EPIPE.
        drop(job_rx);
        let failed = match tokio::time::timeout(READY_TIMEOUT, started.read_ready(READY)).await {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(source),
            Err(_) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the stub never got ready",
            )),
        };
        if let Some(source) = failed {
            // nsjail says why in its log (a mount it could not make, say).
            let log = started.failures_so_far();
            let source = match log.is_empty() {
                true => source,
                false => io::Error::new(source.kind(), format!("{source}; {log}")),
            };
            return Err(SandboxError::Prepare {
                context: "starting the warm sandbox (its stub never got ready)",
                source,
            });
        }
        Ok(Prepared {
            started,
            job_tx,
            cgroup,
            made: Instant::now(),
        })
    }
}

/// A launched sandbox waiting for its job. Dropping it kills the sandbox, reaps it and
/// removes its cgroup (fields drop in order: the processes first).
pub(super) struct Prepared {
    /// The sandbox, and what its backend holds for it (closed with the spare).
    started: Started,
    job_tx: OwnedFd,
    cgroup: Option<ExecCgroup>,
    made: Instant,
}

impl Prepared {
    fn usable(&self) -> bool {
        self.made.elapsed() < MAX_AGE && self.started.alive()
    }

    /// Kills the sandbox and removes its cgroup once its processes are gone (the processes
    /// are reaped on a thread, see `supervise::Reaper`).
    pub async fn discard(self) {
        let Prepared {
            started, cgroup, ..
        } = self;
        drop(started);
        if let Some(cgroup) = cgroup {
            cgroup.finish().await;
        }
    }

    /// Gives the cgroup the job's memory limit and starts the job's accounting (see
    /// `cgroup::ExecCgroup::begin_job`). Fails when the sandbox already uses more than the
    /// limit (a job asking for a few MiB): the caller then discards the spare and runs the job
    /// cold, so that its outcome is a cold run's.
    pub fn begin(&mut self, memory_mb: u64) -> io::Result<()> {
        match &mut self.cgroup {
            Some(cgroup) => cgroup.begin_job(memory_mb),
            None => Ok(()),
        }
    }

    /// Hands `plan` over (after [`Self::begin`]) and supervises it to its end; the cgroup is
    /// the caller's to finish.
    pub async fn run(
        self,
        plan: &Plan<'_>,
        rlimits: &Rlimits,
    ) -> Result<(Finished, Option<ExecCgroup>), SandboxError> {
        let Prepared {
            started,
            job_tx,
            cgroup,
            ..
        } = self;
        let message = encode_job(&plan.argv, plan.files, rlimits);
        let finished = started
            .run(Some((job_tx, message)), plan.stdin, &plan.limits)
            .await?;
        Ok((finished, cgroup))
    }
}

/// What makes the spares, and the refills that make them in the background.
pub(super) struct Warm {
    preparer: Preparer,
    closed: AtomicBool,
    refills: TaskTracker,
    /// Spares in place in their slots now (a gauge the agent's heartbeat reports).
    ready: AtomicUsize,
}

impl Warm {
    pub fn new(preparer: Preparer) -> Self {
        Self {
            preparer,
            closed: AtomicBool::new(false),
            refills: TaskTracker::new(),
            ready: AtomicUsize::new(0),
        }
    }

    /// Spares in place now.
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Leaves `slot` with a usable spare: its own if alive and younger than [`MAX_AGE`], else
    /// one prepared now (none if that fails: the slot's next run prepares its own; none once
    /// shut down). The slot pool's create and recycle, and the background refill.
    pub async fn ensure_spare(&self, slot: &mut SlotState<Prepared>) {
        match slot.spare.take() {
            Some(spare) if spare.usable() && !self.closed.load(Ordering::Acquire) => {
                slot.spare = Some(spare);
                return;
            }
            Some(stale) => {
                self.ready.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(
                    slot = slot.index,
                    "a spare sandbox died, aged out or is no longer wanted"
                );
                stale.discard().await;
            }
            None => {}
        }
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        match self.preparer.prepare(slot.uid).await {
            // Checked again: a spare made across the shutdown would outlive it.
            Ok(spare) if self.closed.load(Ordering::Acquire) => spare.discard().await,
            Ok(spare) => {
                slot.spare = Some(spare);
                self.ready.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                slot = slot.index,
                error = %crate::metadata::error_chain(&e),
                "could not prepare a spare sandbox; the slot's next run prepares its own"
            ),
        }
    }

    /// Takes the slot's spare out for a job (the pool's recycling just made sure of it).
    /// `None`, and the job runs cold, when the slot has none (its preparation failed: logged
    /// there), when it died since, or when no spare can take a job of these `limits` (a wall
    /// time past an nsjail spare's backstop; the spare is then discarded).
    pub async fn take(&self, slot: &mut SlotState<Prepared>, limits: &Limits) -> Option<Prepared> {
        let spare = slot.spare.take()?;
        self.ready.fetch_sub(1, Ordering::Relaxed);
        if self.preparer.fits(limits) && spare.usable() {
            return Some(spare);
        }
        spare.discard().await;
        None
    }

    /// Prepares `slot`'s next spare in the background, holding the slot until it is in place.
    pub fn refill(self: &Arc<Self>, mut slot: Slot<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let warm = Arc::clone(self);
        self.refills.spawn(async move {
            warm.ensure_spare(&mut slot).await;
            drop(slot);
        });
    }

    /// Stops refilling, waits for the refills in flight, then kills the spare of every idle
    /// slot and removes its cgroup. Runs after it still work: each prepares its sandbox at
    /// hand-over.
    pub async fn shutdown(&self, slots: &Slots<Self>) {
        self.closed.store(true, Ordering::Release);
        self.refills.close();
        self.refills.wait().await;
        for mut slot in slots.idle().await {
            if let Some(spare) = slot.spare.take() {
                self.ready.fetch_sub(1, Ordering::Relaxed);
                spare.discard().await;
            }
        }
    }
}

/// The slot pool keeps a spare in each slot through [`Warm::ensure_spare`].
impl Keeper for Warm {
    type Spare = Prepared;

    fn keep(&self, slot: &mut SlotState<Prepared>) -> impl std::future::Future<Output = ()> + Send {
        self.ensure_spare(slot)
    }
}
