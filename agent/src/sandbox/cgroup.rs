//! Per-execution cgroups: a memory limit that ends in a reliable `memory_limit`, a process limit
//! per execution, and CPU and memory figures that stay exact when the sandbox is killed.
//!
//! # Layout
//! Both cgroup versions are supported, probed once at start-up ([`probe`]):
//! - **v2** (unified, e.g. COS): one directory per execution, `P/wp-<uid>-<agent pid>-<n>`,
//!   where `P` is the agent's own cgroup. v2 forbids processes in a cgroup whose children use
//!   controllers, so if the agent is alone in `P` it first moves itself into the leaf
//!   `P/warmpool-agent`, then enables `memory` and `pids` in `P/cgroup.subtree_control`.
//!   Limits: `memory.max`, `memory.swap.max = 0`, `memory.oom.group = 1` (an OOM kill takes the
//!   whole sandbox), `pids.max`, `cpu.max` (with the `cpu` controller, enabled like the others
//!   when there is a cap). Figures: `memory.peak`, `memory.events` `oom_kill`, `cpu.stat`
//!   `usage_usec`.
//! - **v1** (one hierarchy per controller): the same name under the agent's cgroup in each of
//!   the `memory`, `pids` and `cpuacct` hierarchies. Limits: `memory.limit_in_bytes` and
//!   `memory.memsw.limit_in_bytes` (no swap, where swap accounting exists), `pids.max`, and in
//!   the `cpu` hierarchy (often the accounting one) `cpu.cfs_quota_us` per `cpu.cfs_period_us`.
//!   Figures: `memory.max_usage_in_bytes`, `memory.oom_control` `oom_kill`, `cpuacct.usage`.
//!
//! # Expected flow
//! 1. [`Cgroups::create`] makes the execution's cgroup and writes its limits, before the fork.
//! 2. The forked child writes `0` ("myself") to each `cgroup.procs` before it drops root and
//!    before anything else is forked or exec'd (`preexec::Setup`): every process of the
//!    sandbox, the reaper shim and bwrap included, starts inside the cgroup, so there is no
//!    window in which the program runs unlimited.
//! 3. After the child was reaped, [`ExecCgroup::finish`] kills whatever is left in the cgroup,
//!    waits until it is empty, reads the figures (final then: nobody is left to add to them)
//!    and removes the cgroup.
//!
//! # Guarantees
//! - The counters are the kernel's, per cgroup: processes killed with the pid namespace count
//!   too, unlike the rusage of a dying namespace init.
//! - No `wp-*` cgroup outlives its execution while the agent lives: [`ExecCgroup`]'s drop (a
//!   cancelled execution) kills the tasks and removes it, retrying on a thread while they die.
//!
//! # Caveats
//! - The memory figure counts what the kernel charges to the cgroup: the program's memory,
//!   the files it writes to its tmpfs `/work` and `/tmp`, and page cache it read (which is
//!   reclaimed before anything is killed). A job's files count against `memory_mb` too.
//! - The reaper shim is a fork of the agent and lives in the cgroup; the pages it shares with
//!   the agent stay charged to the agent, only what it touches counts here (a few KiB).
//! - A cgroup left by an agent that was killed (SIGKILL) stays until the next agent starts:
//!   its processes died with the agent (`PR_SET_PDEATHSIG`), and [`probe`] removes every
//!   `wp-*` cgroup whose agent pid (in its name) no longer runs. Almost all: an agent killed
//!   while bwrap was setting up a sandbox leaves bwrap's inner process blocked for ever on the
//!   eventfd by which the (killed) outer bwrap would have released it, without a parent-death
//!   signal yet. It is still in the cgroup, so [`probe`] kills whatever such a cgroup holds
//!   before it removes it. (Warm spares, see `warm`, make that window follow every run.)

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::SandboxError;
use super::host;

/// Whether executions run in per-execution cgroups (`WARMPOOL_SANDBOX_CGROUPS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CgroupMode {
    /// Use the cgroup controllers this host lets the agent use; warn about the missing ones.
    #[default]
    Auto,
    /// Refuse to start unless the memory and pids controllers can be used.
    Required,
    /// Never use cgroups: memory is bounded by `RLIMIT_AS` only, processes by `RLIMIT_NPROC`.
    Off,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Required => "required",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// What the per-execution cgroups enforce on this host, as the start-up probe found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupProtections {
    pub version: CgroupVersion,
    /// A memory limit per execution, and the `memory_limit` outcome.
    pub memory: bool,
    /// A process (task) limit per execution.
    pub pids: bool,
    /// CPU time per execution from the cgroup (else from the reaper's rusage).
    pub cpu_accounting: bool,
    /// A CPU bandwidth cap per execution (`cpu.max`, v1 `cpu.cfs_quota_us`): one execution
    /// cannot take more than its share of the VM's cores from the others. `false` also when
    /// the cap is configured off.
    pub cpu_limit: bool,
}

/// The CPU bandwidth period, in microseconds: the cap is `cpus` times this per period.
const CPU_PERIOD_US: u64 = 100_000;

/// Tasks (processes and threads) per execution under the pids controller. The sandbox's own
/// three (reaper shim, bwrap, bwrap's init) count too.
pub(super) const PIDS_MAX: u64 = 64;

/// How long [`ExecCgroup::finish`] waits for killed tasks to leave the cgroup.
const EMPTY_GRACE: Duration = Duration::from_secs(2);

/// The name of the leaf a v2 agent moves itself into (see the module docs).
const AGENT_LEAF: &str = "warmpool-agent";

/// The parent directories of the execution cgroups, one per controller (all the same in v2).
/// Cloned into the warm pool's preparer (see `warm`).
#[derive(Debug, Clone)]
pub(super) struct Cgroups {
    version: CgroupVersion,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// Where the CPU bandwidth cap is written (v1: the `cpu` hierarchy, which may be the
    /// accounting one), and the cap per [`CPU_PERIOD_US`]; `None` without a cap.
    cpu_limit: Option<(PathBuf, u64)>,
}

impl Cgroups {
    pub fn protections(&self) -> CgroupProtections {
        CgroupProtections {
            version: self.version,
            memory: self.memory.is_some(),
            pids: self.pids.is_some(),
            cpu_accounting: self.cpu.is_some(),
            cpu_limit: self.cpu_limit.is_some(),
        }
    }

    /// Creates the cgroup of one execution run as `uid`, with its limits written.
    pub fn create(&self, uid: u32, memory_mb: u64) -> io::Result<ExecCgroup> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("wp-{uid}-{}-{n}", std::process::id());
        let mut cgroup = ExecCgroup {
            version: self.version,
            memory: None,
            pids: None,
            cpu: None,
            cpu_limit: None,
            dirs: Vec::new(),
            finished: false,
            cpu_baseline_ns: 0,
        };
        // Each directory is recorded as soon as it exists, so that a failure half-way removes
        // what was made (on drop).
        let mut make = |parent: &Option<PathBuf>| -> io::Result<Option<PathBuf>> {
            let Some(parent) = parent else {
                return Ok(None);
            };
            let dir = parent.join(&name);
            if !cgroup.dirs.contains(&dir) {
                fs::create_dir(&dir)?;
                cgroup.dirs.push(dir.clone());
            }
            Ok(Some(dir))
        };
        let memory = make(&self.memory)?;
        let pids = make(&self.pids)?;
        let cpu = make(&self.cpu)?;
        let cpu_limit = match &self.cpu_limit {
            Some((parent, quota_us)) => make(&Some(parent.clone()))?.map(|dir| (dir, *quota_us)),
            None => None,
        };
        cgroup.memory = memory;
        cgroup.pids = pids;
        cgroup.cpu = cpu;
        cgroup.cpu_limit = cpu_limit;
        cgroup.write_limits(memory_mb)?;
        Ok(cgroup)
    }
}

/// One execution's cgroup (one directory per v1 hierarchy). Removed by [`Self::finish`], or on
/// drop if the execution was abandoned.
#[derive(Debug)]
pub(super) struct ExecCgroup {
    version: CgroupVersion,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// The directory holding the CPU bandwidth files, and the cap per period.
    cpu_limit: Option<(PathBuf, u64)>,
    /// Every directory created, each once.
    dirs: Vec<PathBuf>,
    finished: bool,
    /// CPU the cgroup had used when a warm sandbox was handed its job (see [`Self::begin_job`]),
    /// not charged to the job; 0 for a cold run.
    cpu_baseline_ns: u64,
}

/// The cgroup's figures for one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CgroupUsage {
    pub cpu_ms: Option<u64>,
    pub peak_kb: Option<u64>,
    /// Processes the kernel killed for going over the memory limit.
    pub oom_kills: u64,
}

impl ExecCgroup {
    fn write_limits(&self, memory_mb: u64) -> io::Result<()> {
        let bytes = memory_mb.saturating_mul(1024 * 1024).to_string();
        if let Some(dir) = &self.memory {
            match self.version {
                CgroupVersion::V2 => {
                    fs::write(dir.join("memory.max"), &bytes)?;
                    write_if_present(&dir.join("memory.swap.max"), "0")?;
                    write_if_present(&dir.join("memory.oom.group"), "1")?;
                }
                CgroupVersion::V1 => {
                    // memsw (memory + swap) must stay >= the memory limit: memory first.
                    fs::write(dir.join("memory.limit_in_bytes"), &bytes)?;
                    write_if_present(&dir.join("memory.memsw.limit_in_bytes"), &bytes)?;
                }
            }
        }
        if let Some(dir) = &self.pids {
            fs::write(dir.join("pids.max"), PIDS_MAX.to_string())?;
        }
        if let Some((dir, quota_us)) = &self.cpu_limit {
            match self.version {
                CgroupVersion::V2 => {
                    fs::write(dir.join("cpu.max"), format!("{quota_us} {CPU_PERIOD_US}"))?
                }
                CgroupVersion::V1 => {
                    fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// A warm sandbox (see `warm`) is handed its job: its cgroup takes the job's memory limit,
    /// and what its preparation cost stops counting. CPU: the usage so far becomes a baseline
    /// that [`Self::finish`] subtracts. Peak memory: reset on v1 (`memory.max_usage_in_bytes`
    /// takes a write), so the job's peak starts from what the sandbox holds at hand-over (bwrap,
    /// its init, the stub: as in a cold run, where they are in the cgroup too). On v2
    /// `memory.peak` resets only for the file descriptor that wrote it, so there the peak
    /// still includes the preparation's (a few MiB, below any job's).
    pub fn begin_job(&mut self, memory_mb: u64) -> io::Result<()> {
        if let Some(dir) = &self.memory {
            let bytes = memory_mb.saturating_mul(1024 * 1024).to_string();
            match self.version {
                CgroupVersion::V2 => fs::write(dir.join("memory.max"), &bytes)?,
                CgroupVersion::V1 => {
                    // memsw must stay >= memory: a raise fails on memory first, then takes
                    // memsw first; a lowering takes memory first.
                    let memory = dir.join("memory.limit_in_bytes");
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if fs::write(&memory, &bytes).is_err() {
                        write_if_present(&memsw, &bytes)?;
                        fs::write(&memory, &bytes)?;
                    }
                    write_if_present(&memsw, &bytes)?;
                    fs::write(dir.join("memory.max_usage_in_bytes"), "0")?;
                }
            }
        }
        self.cpu_baseline_ns = self.cpu_ns().unwrap_or(0);
        Ok(())
    }

    /// The cgroup's CPU time so far, in nanoseconds.
    fn cpu_ns(&self) -> Option<u64> {
        let dir = self.cpu.as_ref()?;
        match self.version {
            CgroupVersion::V2 => {
                read_key(&dir.join("cpu.stat"), "usage_usec").map(|us| us.saturating_mul(1000))
            }
            CgroupVersion::V1 => read_u64(&dir.join("cpuacct.usage")),
        }
    }

    /// The `cgroup.procs` files the child writes itself into, prepared before the fork (the
    /// child may not allocate).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Kills what is left, waits for the cgroup to empty, reads its figures, removes it.
    pub async fn finish(mut self) -> CgroupUsage {
        let give_up = Instant::now() + EMPTY_GRACE;
        loop {
            self.kill_all();
            if self.is_empty() || Instant::now() > give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let usage = self.usage();
        // rmdir can still see a task that is past exit but not yet released: retry briefly.
        while !self.remove() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.finished = true;
        if !self.dirs.is_empty() {
            tracing::warn!(dirs = ?self.dirs, "could not remove an execution's cgroup");
        }
        usage
    }

    fn usage(&self) -> CgroupUsage {
        let mut usage = CgroupUsage::default();
        if let Some(dir) = &self.memory {
            let (peak, events, oom_key) = match self.version {
                CgroupVersion::V2 => ("memory.peak", "memory.events", "oom_kill"),
                CgroupVersion::V1 => (
                    "memory.max_usage_in_bytes",
                    "memory.oom_control",
                    "oom_kill",
                ),
            };
            usage.peak_kb = read_u64(&dir.join(peak)).map(|b| b / 1024);
            usage.oom_kills = read_key(&dir.join(events), oom_key).unwrap_or(0);
        }
        usage.cpu_ms = self
            .cpu_ns()
            .map(|ns| ns.saturating_sub(self.cpu_baseline_ns) / 1_000_000);
        usage
    }

    fn pids_in_cgroup(&self) -> Vec<libc::pid_t> {
        let mut pids: Vec<libc::pid_t> = self
            .dirs
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn is_empty(&self) -> bool {
        self.pids_in_cgroup().is_empty()
    }

    /// SIGKILL to every task of the cgroup: `cgroup.kill` where the kernel has it (v2, 5.14+),
    /// else one by one through pidfds, each checked to still be in the cgroup after its pidfd
    /// was opened, so a recycled pid is never signalled.
    fn kill_all(&self) {
        if self.version == CgroupVersion::V2 {
            if let Some(dir) = self.dirs.first() {
                if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        for pid in self.pids_in_cgroup() {
            let Ok(pidfd) = host::pidfd_open(pid) else {
                continue;
            };
            if !self.pids_in_cgroup().contains(&pid) {
                continue;
            }
            host::pidfd_kill(&pidfd);
        }
    }

    /// Removes every directory it can; `true` once none is left.
    fn remove(&mut self) -> bool {
        self.dirs.retain(|dir| match fs::remove_dir(dir) {
            Ok(()) => false,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        });
        self.dirs.is_empty()
    }
}

impl Drop for ExecCgroup {
    fn drop(&mut self) {
        if self.finished || self.dirs.is_empty() {
            return;
        }
        // Abandoned (cancelled execution, or a failed start): kill, and remove once empty.
        self.kill_all();
        if self.remove() {
            return;
        }
        let mut cgroup = ExecCgroup {
            version: self.version,
            memory: None,
            pids: None,
            cpu: None,
            cpu_limit: None,
            dirs: std::mem::take(&mut self.dirs),
            finished: true,
            cpu_baseline_ns: 0,
        };
        let spawned = std::thread::Builder::new()
            .name("cgroup-cleanup".into())
            .spawn(move || {
                let give_up = Instant::now() + EMPTY_GRACE;
                while Instant::now() < give_up {
                    cgroup.kill_all();
                    if cgroup.remove() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                tracing::warn!(dirs = ?cgroup.dirs, "could not remove an abandoned execution's cgroup");
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a thread to remove an execution's cgroup");
        }
    }
}

fn write_if_present(path: &Path, value: &str) -> io::Result<()> {
    match fs::write(path, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line: `memory.events`, `cpu.stat`).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    parse_key(&fs::read_to_string(path).ok()?, key)
}

fn parse_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Finds and tries the cgroups of this host, mounted under `fs_root` (normally
/// `/sys/fs/cgroup`), and decides per `mode`. `Ok(None)`: run without cgroups.
/// `cpu_millis`: the CPU cap per execution in thousandths of a core (0: none).
pub(super) fn probe(
    mode: CgroupMode,
    fs_root: &Path,
    cpu_millis: u32,
) -> Result<Option<Cgroups>, SandboxError> {
    if mode == CgroupMode::Off {
        tracing::warn!(
            "cgroups off by configuration: memory is bounded by RLIMIT_AS only (no memory_limit \
             outcome), processes by RLIMIT_NPROC only"
        );
        return Ok(None);
    }
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quota_us = u64::from(cpu_millis) * CPU_PERIOD_US / 1000;
    let cpus = f64::from(cpu_millis) / 1000.0;
    let found = if fs_root.join("cgroup.controllers").is_file() {
        find_v2(fs_root, &own, quota_us)
    } else {
        find_v1(fs_root, &own, quota_us)
    };
    let (cgroups, missing) = match found {
        Ok(found) => found,
        Err(reason) => (
            Cgroups {
                version: CgroupVersion::V1,
                memory: None,
                pids: None,
                cpu: None,
                cpu_limit: None,
            },
            vec![reason],
        ),
    };
    let cpu_limit_parent = cgroups.cpu_limit.as_ref().map(|(parent, _)| parent);
    for parent in [&cgroups.memory, &cgroups.pids, &cgroups.cpu]
        .into_iter()
        .flatten()
        .chain(cpu_limit_parent)
    {
        sweep_stale(cgroups.version, parent);
    }
    let p = cgroups.protections();
    let usable = p.memory || p.pids || p.cpu_accounting;
    if mode == CgroupMode::Required && !(p.memory && p.pids) {
        return Err(SandboxError::Cgroups(format!(
            "cgroups are required (WARMPOOL_SANDBOX_CGROUPS=required) but the memory and pids \
             controllers cannot both be used under {}: {}",
            fs_root.display(),
            missing.join("; ")
        )));
    }
    if !usable {
        tracing::warn!(
            reasons = %missing.join("; "),
            "NO CGROUPS: memory is bounded by RLIMIT_AS only (no memory_limit outcome), \
             processes by RLIMIT_NPROC only, CPU and memory figures of killed sandboxes are \
             lower bounds"
        );
        return Ok(None);
    }
    if missing.is_empty() {
        tracing::info!(version = ?p.version, memory = p.memory, pids = p.pids, cpu_accounting = p.cpu_accounting, cpu_limit = p.cpu_limit, cpus, "per-execution cgroups in force");
    } else {
        tracing::warn!(version = ?p.version, memory = p.memory, pids = p.pids, cpu_accounting = p.cpu_accounting, cpu_limit = p.cpu_limit, cpus, reasons = %missing.join("; "), "per-execution cgroups only partly in force");
    }
    Ok(Some(cgroups))
}

/// The agent's own cgroup path in the v1 hierarchy holding `controller`, from
/// `/proc/self/cgroup` (`4:memory:/a/b`, `1:cpu,cpuacct:/`).
fn own_v1_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

/// The agent's cgroup in `mount`: its own path if the mount shows it (a host, or a container
/// with a cgroup namespace), else the mount's root (a container whose own cgroup is mounted).
fn parent_in(mount: &Path, own: &str) -> PathBuf {
    let candidate = mount.join(own.trim_start_matches('/'));
    if candidate.is_dir() {
        candidate
    } else {
        mount.to_path_buf()
    }
}

fn find_v1(
    fs_root: &Path,
    proc_cgroup: &str,
    quota_us: u64,
) -> Result<(Cgroups, Vec<String>), String> {
    let mut missing = Vec::new();
    let mut controller = |name: &str, mounts: &[&str], control: Option<(&str, &str)>| {
        let Some(mount) = mounts
            .iter()
            .map(|m| fs_root.join(m))
            .find(|m| m.join("cgroup.procs").is_file())
        else {
            missing.push(format!("no {name} hierarchy under {}", fs_root.display()));
            return None;
        };
        let parent = parent_in(&mount, own_v1_path(proc_cgroup, name).unwrap_or("/"));
        match try_child(&parent, control) {
            Ok(()) => Some(parent),
            Err(e) => {
                missing.push(format!(
                    "{name}: cannot create a cgroup in {}: {e}",
                    parent.display()
                ));
                None
            }
        }
    };
    let memory = controller(
        "memory",
        &["memory"],
        Some(("memory.limit_in_bytes", "67108864")),
    );
    let pids = controller("pids", &["pids"], Some(("pids.max", "64")));
    let cpu = controller("cpuacct", &["cpuacct", "cpu,cpuacct", "cpuacct,cpu"], None);
    let cpu_limit = (quota_us > 0)
        .then(|| {
            controller(
                "cpu",
                &["cpu", "cpu,cpuacct", "cpuacct,cpu"],
                Some(("cpu.cfs_quota_us", "100000")),
            )
        })
        .flatten()
        .map(|parent| (parent, quota_us));
    Ok((
        Cgroups {
            version: CgroupVersion::V1,
            memory,
            pids,
            cpu,
            cpu_limit,
        },
        missing,
    ))
}

fn find_v2(
    fs_root: &Path,
    proc_cgroup: &str,
    quota_us: u64,
) -> Result<(Cgroups, Vec<String>), String> {
    let own = proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("cgroup v2 is mounted but /proc/self/cgroup shows no v2 cgroup")?;
    let mut parent = parent_in(fs_root, own);
    // Already moved into our leaf (another Sandbox of this process did it).
    if parent.file_name().is_some_and(|n| n == AGENT_LEAF) && parent != fs_root {
        parent.pop();
    }
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let mut missing = Vec::new();
    let wanted: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| {
            let ok = available.split_whitespace().any(|a| a == *c);
            if !ok {
                missing.push(format!(
                    "the {c} controller is not available in {} (not delegated by its parent)",
                    parent.display()
                ));
            }
            ok
        })
        .collect();
    let enabled = |parent: &Path| {
        let on = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        wanted
            .iter()
            .all(|c| on.split_whitespace().any(|o| o == *c))
    };
    if !wanted.is_empty() && !enabled(&parent) {
        // Controllers can be enabled for children only if no process lives in the parent
        // itself: move the agent into a leaf if it is alone there.
        let me = std::process::id().to_string();
        let procs = fs::read_to_string(parent.join("cgroup.procs")).unwrap_or_default();
        let others: Vec<&str> = procs.split_whitespace().filter(|p| *p != me).collect();
        if procs.split_whitespace().any(|p| p == me) {
            if !others.is_empty() && parent != fs_root {
                return Err(format!(
                    "the agent's cgroup {} also holds processes {:?}: cgroup v2 allows \
                     limits for child cgroups only when the agent is alone in its cgroup (run \
                     it as its container's main process)",
                    parent.display(),
                    others
                ));
            }
            let leaf = parent.join(AGENT_LEAF);
            match fs::create_dir(&leaf) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(format!("cannot create {}: {e}", leaf.display()));
                }
                _ => {}
            }
            fs::write(leaf.join("cgroup.procs"), &me)
                .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
        }
        let enable: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        fs::write(parent.join("cgroup.subtree_control"), enable.join(" ")).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                " (processes other than the agent live in that cgroup: cgroup v2 then refuses \
                 limits for its children; run the agent as its container's main process)"
            } else {
                ""
            };
            format!(
                "cannot enable {} in {}: {e}{hint}",
                wanted.join(" "),
                parent.join("cgroup.subtree_control").display()
            )
        })?;
    }
    let has = |c: &str| wanted.contains(&c).then(|| parent.clone());
    let memory = has("memory");
    let pids = has("pids");
    // The CPU cap apart, after the others: a cpu controller that cannot be enabled here
    // (real-time tasks in the parent, say) costs the cap only, never the memory limit.
    let cpu_limit = if quota_us == 0 {
        None
    } else if !available.split_whitespace().any(|a| a == "cpu") {
        missing.push(format!(
            "the cpu controller is not available in {} (no CPU cap per execution)",
            parent.display()
        ));
        None
    } else {
        let control = parent.join("cgroup.subtree_control");
        let on = fs::read_to_string(&control).unwrap_or_default();
        match on.split_whitespace().any(|c| c == "cpu") || fs::write(&control, "+cpu").is_ok() {
            true => Some((parent.clone(), quota_us)),
            false => {
                missing.push(format!(
                    "cannot enable cpu in {} (no CPU cap per execution)",
                    control.display()
                ));
                None
            }
        }
    };
    // cpu.stat's usage_usec exists in every v2 cgroup, with or without the cpu controller.
    let cpu = Some(parent.clone());
    let control = memory
        .as_ref()
        .map(|_| ("memory.max", "67108864"))
        .or(pids.as_ref().map(|_| ("pids.max", "64")));
    try_child(&parent, control)
        .map_err(|e| format!("cannot create a cgroup in {}: {e}", parent.display()))?;
    Ok((
        Cgroups {
            version: CgroupVersion::V2,
            memory,
            pids,
            cpu,
            cpu_limit,
        },
        missing,
    ))
}

/// Removes the empty `wp-<uid>-<pid>-<n>` (and `wp-probe-<pid>`) cgroups of agents that no
/// longer run: an agent killed with SIGKILL could not remove its own.
fn sweep_stale(version: CgroupVersion, parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(agent_pid_of) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        // What the dead agent left in it (see the module docs) is killed first. At start-up
        // only, and bounded: a blocking wait is fine here.
        let mut stale = ExecCgroup {
            version,
            memory: None,
            pids: None,
            cpu: None,
            cpu_limit: None,
            dirs: vec![entry.path()],
            finished: true,
            cpu_baseline_ns: 0,
        };
        let give_up = Instant::now() + EMPTY_GRACE;
        loop {
            stale.kill_all();
            if stale.remove() {
                tracing::info!(cgroup = %entry.path().display(), "removed the cgroup of a dead agent");
                break;
            }
            if Instant::now() > give_up {
                tracing::warn!(cgroup = %entry.path().display(), "could not empty the cgroup of a dead agent");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The agent pid in a cgroup name of ours: `wp-<uid>-<pid>-<n>` or `wp-probe-<pid>`.
fn agent_pid_of(name: &str) -> Option<libc::pid_t> {
    let rest = name.strip_prefix("wp-")?;
    let pid = match rest.strip_prefix("probe-") {
        Some(pid) => pid,
        None => {
            let mut fields = rest.split('-');
            let (_uid, pid, _n) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            pid
        }
    };
    pid.parse().ok().filter(|&pid| pid > 0)
}

/// Creates a child cgroup, writes one control file, and removes it: proves the controller is
/// writable here.
fn try_child(parent: &Path, control: Option<(&str, &str)>) -> io::Result<()> {
    let dir = parent.join(format!("wp-probe-{}", std::process::id()));
    match fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let written = match control {
        Some((file, value)) => fs::write(dir.join(file), value),
        None => Ok(()),
    };
    let removed = fs::remove_dir(&dir);
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_their_names() {
        use clap::ValueEnum;
        for mode in [CgroupMode::Auto, CgroupMode::Required, CgroupMode::Off] {
            assert_eq!(CgroupMode::from_str(mode.as_str(), false), Ok(mode));
        }
        assert!(CgroupMode::from_str("yes", false).is_err());
    }

    #[test]
    fn the_agents_v1_cgroup_is_read_per_controller() {
        let text =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(own_v1_path(text, "memory"), Some("/process_api/abc"));
        assert_eq!(own_v1_path(text, "pids"), Some("/"));
        assert_eq!(own_v1_path(text, "cpuacct"), Some("/x"));
        assert_eq!(own_v1_path(text, "blkio"), None);
    }

    #[test]
    fn only_our_own_cgroup_names_yield_an_agent_pid() {
        assert_eq!(agent_pid_of("wp-60000-4340-4"), Some(4340));
        assert_eq!(agent_pid_of("wp-probe-77"), Some(77));
        for other in [
            "wp-60000-4340",
            "wp-a-b-c-d",
            "warmpool-agent",
            "wp-1-0-2",
            "x",
        ] {
            assert_eq!(agent_pid_of(other), None, "{other}");
        }
    }

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_key(events, "oom_kill"), Some(1));
        assert_eq!(parse_key(events, "oom"), Some(2));
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_key(oom_control, "oom_kill"), Some(3));
        assert_eq!(parse_key("usage_usec 1500\n", "usage_usec"), Some(1500));
        assert_eq!(parse_key("", "oom_kill"), None);
    }

    #[test]
    fn a_missing_cgroup_filesystem_fails_required_mode_clearly() {
        let root = Path::new("/nonexistent/cgroup");
        let err = probe(CgroupMode::Required, root, 1000).unwrap_err();
        assert_eq!(err.kind(), "cgroups_unavailable");
        assert!(err.to_string().contains("/nonexistent/cgroup"), "{err}");
        assert!(probe(CgroupMode::Auto, root, 1000).unwrap().is_none());
        assert!(probe(CgroupMode::Off, Path::new("/sys/fs/cgroup"), 1000)
            .unwrap()
            .is_none());
    }
}
