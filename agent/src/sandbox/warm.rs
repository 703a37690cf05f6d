//! Warm sandboxes: one spare per slot, launched ahead of its job, used once and discarded. On
//! by default (the agent's `WARMPOOL_SANDBOX_WARM`), for both backends.
//!
//! # What a spare is
//! Everything a cold run does before its program starts, done while the slot is idle: the
//! execution's cgroup created (memory limit [`PREPARE_MEMORY_MB`], `pids.max`), the launcher
//! forked, dropped to the slot's uid, under the reaper shim, and the sandbox started with every
//! namespace, mount and tmpfs and the seccomp filter; inside, in place of the program, the
//! **stub**: the agent binary itself, run as `warmpool-agent sandbox-stub FD`, blocked reading
//! the inherited pipe `FD`.
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
//!    stdin as in a cold run, and is supervised exactly as one (`supervise::Spawned::supervise`).
//! 4. The stub ([`stub_main`]) reads the message to end-of-file, writes each file into `/work`
//!    with `O_CREAT|O_EXCL|O_NOFOLLOW`, lowers `RLIMIT_CPU` (and `RLIMIT_AS` without a memory
//!    cgroup) to the job's, closes the pipe, marks every fd but 0-2 close-on-exec (under
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
//!   by its `supervise::Spawned` and its cgroup removed by `cgroup::ExecCgroup`'s drop; if the
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
//! - An idle agent always has processes of its slot uids. `tests/attacks.rs`' "nothing left"
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

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use super::cgroup::{Cgroups, ExecCgroup};
use super::error::SandboxError;
use super::outcome::Finished;
use super::preexec::Setup;
use super::rlimits::Rlimits;
use super::slots::{Slot, SlotState, Slots};
use super::supervise::{self, Spawned, Tree};
use super::{bwrap, host, nsjail, Plan};
use warmpool_core::model::Limits;
use warmpool_core::rules::check_file_name;

/// The agent's subcommand that runs the stub (`main` dispatches on it before anything else).
pub const STUB_COMMAND: &str = "sandbox-stub";
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
/// The stub's ready byte, on its stdout before it reads its job.
const READY: u8 = b'R';
/// The message's first bytes; anything else is refused.
const MAGIC: &[u8; 4] = b"WPJ1";
/// The stub reads at most this much: more than any valid job (files are capped by the work
/// directory's size, which the agent checked), far less than the cgroup allows.
const MAX_MESSAGE: u64 = 1 << 30;
/// Stub exit statuses: a refused or failed hand-over, and a program that could not be exec'd.
const STUB_FAILED: i32 = 125;
const EXEC_FAILED: i32 = 127;

/// The backend that launches spares.
pub(super) enum Launch {
    Bwrap(bwrap::Bwrap),
    Nsjail(nsjail::Nsjail),
}

/// What a spare's launch holds open until its run is over.
enum Held {
    /// The seccomp filter's memfd: bwrap read it long ago.
    Bwrap(#[allow(dead_code)] bwrap::Inputs),
    /// nsjail's configuration and log; the log is read after the run.
    Nsjail(nsjail::JailFds),
}

/// What a spare needs to be made: copies of the sandbox's own, so refills run on their own.
pub(super) struct Preparer {
    pub launch: Launch,
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

    /// Whether a spare can take a job of these limits: any under bwrap; under nsjail one whose
    /// wall time is within [`NSJAIL_MAX_WARM_WALL`] (the spare's backstop was set before).
    fn fits(&self, limits: &Limits) -> bool {
        match self.launch {
            Launch::Bwrap(_) => true,
            Launch::Nsjail(_) => Duration::from_millis(limits.wall_time_ms) <= NSJAIL_MAX_WARM_WALL,
        }
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
        let (stub, job) = (self.stub.as_raw_fd(), job_rx.as_raw_fd());
        let (command, mut setup, held) = match &self.launch {
            Launch::Bwrap(bwrap) => {
                let inputs = bwrap.inputs(&[])?;
                let command = bwrap.stub_command(stub, job, &inputs, self.work_dir_mb);
                let mut inherit = inputs.raw_fds();
                inherit.extend([stub, job]);
                let setup = Setup::new(Some(uid), self.rlimits, inherit);
                (command, setup, Held::Bwrap(inputs))
            }
            Launch::Nsjail(nsjail) => {
                let (command, setup, fds) = nsjail.prepare_stub(
                    stub,
                    job,
                    uid,
                    self.rlimits,
                    self.work_dir_mb,
                    NSJAIL_SPARE_TIME_LIMIT_S,
                )?;
                (command, setup, Held::Nsjail(fds))
            }
        };
        setup.cgroup_procs = cgroup
            .as_ref()
            .map(ExecCgroup::procs_files)
            .unwrap_or_default();
        let mut spawned = supervise::spawn(command, setup, Tree::Shimmed, self.usage_from_cgroup)?;
        // Only the stub holds the read end now: if it dies, the hand-over sees EPIPE.
        drop(job_rx);
        let failed = match tokio::time::timeout(READY_TIMEOUT, spawned.read_ready(READY)).await {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(source),
            Err(_) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the stub never got ready",
            )),
        };
        if let Some(source) = failed {
            // nsjail says why in its log (a mount it could not make, say).
            let log = match &held {
                Held::Nsjail(fds) => fds.failures_so_far(),
                Held::Bwrap(_) => String::new(),
            };
            let source = match log.is_empty() {
                true => source,
                false => io::Error::new(source.kind(), format!("{source}; nsjail: {log}")),
            };
            return Err(SandboxError::Prepare {
                context: "starting the warm sandbox (its stub never got ready)",
                source,
            });
        }
        Ok(Prepared {
            spawned,
            job_tx,
            held,
            cgroup,
            made: Instant::now(),
        })
    }
}

/// A launched sandbox waiting for its job. Dropping it kills the sandbox, reaps it and
/// removes its cgroup (fields drop in order: the processes first).
pub(super) struct Prepared {
    spawned: Spawned,
    job_tx: OwnedFd,
    /// Closed with the spare.
    held: Held,
    cgroup: Option<ExecCgroup>,
    made: Instant,
}

impl Prepared {
    fn usable(&self) -> bool {
        self.made.elapsed() < MAX_AGE && self.spawned.alive()
    }

    /// Kills the sandbox and removes its cgroup once its processes are gone (the processes
    /// are reaped on a thread, see `supervise::Reaper`).
    pub async fn discard(self) {
        let Prepared {
            spawned, cgroup, ..
        } = self;
        drop(spawned);
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
            spawned,
            job_tx,
            held,
            cgroup,
            ..
        } = self;
        let message = encode_job(plan, rlimits);
        let mut finished = spawned
            .supervise(Some((job_tx, message)), plan.stdin, &plan.limits)
            .await?;
        if let Held::Nsjail(fds) = held {
            fds.finish(&mut finished);
        }
        Ok((finished, cgroup))
    }
}

/// What makes the spares, and the refills that make them in the background.
pub(super) struct Warm {
    preparer: Preparer,
    closed: AtomicBool,
    refills: TaskTracker,
}

impl Warm {
    pub fn new(preparer: Preparer) -> Self {
        Self {
            preparer,
            closed: AtomicBool::new(false),
            refills: TaskTracker::new(),
        }
    }

    /// Leaves `slot` with a usable spare: its own if alive and younger than [`MAX_AGE`], else
    /// one prepared now (none if that fails: the slot's next run prepares its own; none once
    /// shut down). The slot pool's create and recycle, and the background refill.
    pub async fn ensure_spare(&self, slot: &mut SlotState) {
        match slot.spare.take() {
            Some(spare) if spare.usable() && !self.closed.load(Ordering::Acquire) => {
                slot.spare = Some(spare);
                return;
            }
            Some(stale) => {
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
            Ok(spare) => slot.spare = Some(spare),
            Err(e) => tracing::warn!(
                slot = slot.index,
                error = %super::error_chain(&e),
                "could not prepare a spare sandbox; the slot's next run prepares its own"
            ),
        }
    }

    /// Takes the slot's spare out for a job (the pool's recycling just made sure of it).
    /// `None`, and the job runs cold, when the slot has none (its preparation failed: logged
    /// there), when it died since, or when no spare can take a job of these `limits` (a wall
    /// time past an nsjail spare's backstop; the spare is then discarded).
    pub async fn take(&self, slot: &mut SlotState, limits: &Limits) -> Option<Prepared> {
        let spare = slot.spare.take()?;
        if self.preparer.fits(limits) && spare.usable() {
            return Some(spare);
        }
        spare.discard().await;
        None
    }

    /// Prepares `slot`'s next spare in the background, holding the slot until it is in place.
    pub fn refill(self: &Arc<Self>, mut slot: Slot) {
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
    pub async fn shutdown(&self, slots: &Slots) {
        self.closed.store(true, Ordering::Release);
        self.refills.close();
        self.refills.wait().await;
        for mut slot in slots.idle().await {
            if let Some(spare) = slot.spare.take() {
                spare.discard().await;
            }
        }
    }
}

/// The job as the stub reads it; all integers little-endian:
/// `"WPJ1"`, `cpu_soft_s` u64, `cpu_hard_s` u64, `address_space_bytes` u64 (`u64::MAX`: none),
/// `argc` u32 then each argument (u32 length, bytes), `nfiles` u32 then each file (u32 name
/// length, name, u64 content length, content).
pub(super) fn encode_job(plan: &Plan<'_>, rlimits: &Rlimits) -> Vec<u8> {
    let size = 64
        + plan.argv.iter().map(|a| 4 + a.len()).sum::<usize>()
        + plan
            .files
            .iter()
            .map(|f| 12 + f.name.len() + f.content.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&rlimits.cpu_soft_s.to_le_bytes());
    out.extend_from_slice(&rlimits.cpu_hard_s.to_le_bytes());
    out.extend_from_slice(
        &rlimits
            .address_space_bytes
            .unwrap_or(u64::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&(plan.argv.len() as u32).to_le_bytes());
    for arg in &plan.argv {
        out.extend_from_slice(&(arg.len() as u32).to_le_bytes());
        out.extend_from_slice(arg.as_bytes());
    }
    out.extend_from_slice(&(plan.files.len() as u32).to_le_bytes());
    for file in plan.files {
        out.extend_from_slice(&(file.name.len() as u32).to_le_bytes());
        out.extend_from_slice(file.name.as_bytes());
        out.extend_from_slice(&(file.content.len() as u64).to_le_bytes());
        out.extend_from_slice(file.content.as_bytes());
    }
    out
}

/// The job, decoded and checked by the stub.
#[derive(Debug, PartialEq, Eq)]
struct StubJob {
    cpu_soft_s: u64,
    cpu_hard_s: u64,
    address_space_bytes: Option<u64>,
    argv: Vec<Vec<u8>>,
    files: Vec<(String, Vec<u8>)>,
}

fn decode_job(mut bytes: &[u8]) -> Result<StubJob, &'static str> {
    fn take<'a>(bytes: &mut &'a [u8], n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "truncated")?;
        if bytes.len() < n {
            return Err("truncated");
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn u32_of(bytes: &mut &[u8]) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            take(bytes, 4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u64_of(bytes: &mut &[u8]) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            take(bytes, 8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    if take(&mut bytes, 4)? != MAGIC {
        return Err("not a job message");
    }
    let cpu_soft_s = u64_of(&mut bytes)?;
    let cpu_hard_s = u64_of(&mut bytes)?;
    let address_space_bytes = Some(u64_of(&mut bytes)?).filter(|&b| b != u64::MAX);
    let argc = u32_of(&mut bytes)?;
    let mut argv = Vec::new();
    for _ in 0..argc {
        let len = u32_of(&mut bytes)?;
        let arg = take(&mut bytes, len.into())?;
        if arg.contains(&0) {
            return Err("an argument contains NUL");
        }
        argv.push(arg.to_vec());
    }
    if argv
        .first()
        .is_none_or(|program| !program.starts_with(b"/"))
    {
        return Err("the program is not an absolute path");
    }
    let nfiles = u32_of(&mut bytes)?;
    let mut files = Vec::new();
    for _ in 0..nfiles {
        let len = u32_of(&mut bytes)?;
        let name = std::str::from_utf8(take(&mut bytes, len.into())?)
            .map_err(|_| "a file name is not UTF-8")?;
        check_file_name(name).map_err(|_| "a file name could escape /work")?;
        let len = u64_of(&mut bytes)?;
        files.push((name.to_string(), take(&mut bytes, len)?.to_vec()));
    }
    if !bytes.is_empty() {
        return Err("trailing bytes");
    }
    if cpu_soft_s > cpu_hard_s {
        return Err("the CPU soft limit is above the hard one");
    }
    Ok(StubJob {
        cpu_soft_s,
        cpu_hard_s,
        address_space_bytes,
        argv,
        files,
    })
}

/// `warmpool-agent sandbox-stub FD`, inside a warm sandbox: see the module docs. Never
/// returns: it becomes the program, or exits with [`STUB_FAILED`] or [`EXEC_FAILED`] and a
/// line on stderr (the program's stderr, so the job's result shows why).
pub fn stub_main(args: &[OsString]) -> ! {
    let fail = |code: i32, why: &dyn std::fmt::Display| -> ! {
        let _ = writeln!(io::stderr(), "warmpool sandbox stub: {why}");
        std::process::exit(code)
    };
    let fd: RawFd = match args.get(2).and_then(|a| a.to_str()?.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => fail(STUB_FAILED, &"usage: sandbox-stub FD"),
    };
    // SAFETY: the fd was inherited for us alone (see `Preparer::prepare`); we own it from here.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = io::stdout()
        .write_all(&[READY])
        .and_then(|()| io::stdout().flush())
    {
        fail(STUB_FAILED, &format_args!("signalling ready: {e}"));
    }
    let mut message = Vec::new();
    if let Err(e) = (&mut pipe).take(MAX_MESSAGE).read_to_end(&mut message) {
        fail(STUB_FAILED, &format_args!("reading the job: {e}"));
    }
    drop(pipe);
    let job = decode_job(&message).unwrap_or_else(|why| fail(STUB_FAILED, &why));
    drop(message);
    for (name, content) in &job.files {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(Path::new("/work").join(name))
            .and_then(|mut file| file.write_all(content));
        if let Err(e) = written {
            fail(STUB_FAILED, &format_args!("writing /work/{name}: {e}"));
        }
    }
    let limit = |resource, soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid struct. Only lowering: the stub is unprivileged.
        if unsafe { libc::setrlimit(resource, &limit) } == -1 {
            fail(
                STUB_FAILED,
                &format_args!("setting a limit: {}", io::Error::last_os_error()),
            );
        }
    };
    limit(libc::RLIMIT_CPU, job.cpu_soft_s, job.cpu_hard_s);
    if let Some(bytes) = job.address_space_bytes {
        limit(libc::RLIMIT_AS, bytes, bytes);
    }
    if let Err(e) = close_on_exec_from(3) {
        fail(STUB_FAILED, &format_args!("closing inherited fds: {e}"));
    }
    reset_signal_dispositions();
    let program = PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&job.argv[0])));
    // std resets SIGPIPE (which its runtime ignores) and the signal mask before the exec.
    let error = std::process::Command::new(&program)
        .args(job.argv[1..].iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .exec();
    fail(
        EXEC_FAILED,
        &format_args!("exec {}: {error}", program.display()),
    )
}

/// Marks every fd from `first` on close-on-exec, so that the program inherits only stdin,
/// stdout and stderr (under nsjail the stub runs from an inherited fd on the agent binary).
fn close_on_exec_from(first: libc::c_uint) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's fds.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return Ok(());
    }
    // Kernels before 5.11: one by one. Collected first: the directory's own fd is among them.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on an fd number; one that closed meanwhile fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Every signal back to its default action: the program must start as a cold run's does,
/// whatever the stub inherited (bash ignores SIGINT and SIGQUIT for a background command, as
/// under nsjail's loader). Signals that cannot be changed are skipped.
fn reset_signal_dispositions() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: installs the default disposition; no handler code is involved.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_core::model::{FileSpec, Limits};

    fn plan<'a>(argv: &[&str], files: &'a [FileSpec]) -> Plan<'a> {
        Plan {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            files,
            stdin: b"",
            limits: Limits {
                wall_time_ms: 1000,
                cpu_time_ms: 1500,
                memory_mb: 64,
                max_output_bytes: 1024,
            },
            address_space_extra_mb: 0,
        }
    }

    fn rlimits(address_space_mb: Option<u64>) -> Rlimits {
        Rlimits::for_limits(&plan(&[], &[]).limits, 64, address_space_mb, true)
    }

    #[test]
    fn a_job_decodes_to_what_was_encoded() {
        let files = [
            FileSpec {
                name: "main.py".into(),
                content: "print(1)\n".into(),
            },
            FileSpec {
                name: "-c".into(),
                content: String::new(),
            },
        ];
        let plan = plan(&["/usr/bin/python3", "main.py", "a b"], &files);
        let job = decode_job(&encode_job(&plan, &rlimits(Some(100)))).unwrap();
        assert_eq!(
            job,
            StubJob {
                cpu_soft_s: 2,
                cpu_hard_s: 3,
                address_space_bytes: Some(100 * 1024 * 1024),
                argv: vec![
                    b"/usr/bin/python3".to_vec(),
                    b"main.py".to_vec(),
                    b"a b".to_vec()
                ],
                files: vec![
                    ("main.py".into(), b"print(1)\n".to_vec()),
                    ("-c".into(), Vec::new())
                ],
            }
        );
        let job = decode_job(&encode_job(&plan, &rlimits(None))).unwrap();
        assert_eq!(job.address_space_bytes, None);
    }

    #[test]
    fn the_stub_refuses_messages_it_should_not_trust() {
        let files = |name: &str| {
            vec![FileSpec {
                name: name.into(),
                content: "x".into(),
            }]
        };
        for (argv, files, why) in [
            (vec!["relative"], files("a"), "a relative program"),
            (vec!["/bin/x\0y"], files("a"), "a NUL in an argument"),
            (vec!["/bin/x"], files("../escape"), "a path in a name"),
            (vec!["/bin/x"], files(".."), "a dot-dot name"),
            (vec!["/bin/x"], files(""), "an empty name"),
        ] {
            let message = encode_job(&plan(&argv, &files), &rlimits(None));
            assert!(decode_job(&message).is_err(), "accepted {why}");
        }
        let good = encode_job(&plan(&["/bin/x"], &files("a")), &rlimits(None));
        assert!(decode_job(&good).is_ok());
        for cut in 0..good.len() {
            assert!(decode_job(&good[..cut]).is_err(), "accepted a cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_job(&long).is_err(), "accepted trailing bytes");
        let mut forged = good;
        forged[0] = b'X';
        assert!(decode_job(&forged).is_err(), "accepted a wrong magic");
    }
}
