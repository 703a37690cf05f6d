//! The rlimits of one execution: what the job's limits become as `setrlimit` figures, applied
//! in the forked child (see `preexec`) and inherited by everything in the sandbox; a warm
//! spare's stub lowers CPU time and address space to its job's (see `warm`).

use warmpool_core::model::Limits;

/// Processes (threads count too) per slot uid. Enough for node's worker threads and a shell
/// pipeline; few enough that a fork bomb stalls at once.
pub(super) const NPROC_LIMIT: u64 = 64;
/// `RLIMIT_NPROC` when the pids cgroup already limits each execution (`cgroup::PIDS_MAX`): a
/// per-uid backstop, set above the cgroup's limit so that the per-execution limit is the one a
/// fork bomb meets.
pub(super) const NPROC_BACKSTOP: u64 = 2 * NPROC_LIMIT;
/// Open files per process.
const NOFILE_LIMIT: u64 = 256;

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
