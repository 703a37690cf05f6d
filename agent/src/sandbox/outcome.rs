//! From what happened to a program to its [`Outcome`]: a pure decision, tested by table.

use warmpool::model::{ExecutionResult, Limits, Outcome};

use super::child::{Finished, Rlimits};

/// How the program's process ended, as the backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Termination {
    Exited(i32),
    Signaled(i32),
}

/// Why the supervisor killed the sandbox (the first reason wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The wall-clock limit passed.
    WallTime,
    /// stdout or stderr passed `max_output_bytes`.
    OutputLimit,
    /// The agent could not supervise it (a read error on an output pipe).
    Internal,
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    pub stop: Option<Stop>,
    pub termination: Option<Termination>,
    pub internal_error: bool,
    pub truncated: bool,
    pub cpu_ms: u64,
    pub cpu_time_ms: u64,
    pub cpu_soft_s: u64,
}

/// Decides the outcome. In order: what made us kill it; a failure of ours; the CPU limit
/// (SIGXCPU at the soft RLIMIT_CPU, SIGKILL once past it, or the measured CPU time over the
/// millisecond limit); truncated output; then the exit status.
///
/// `memory_limit` is never decided here: under RLIMIT_AS an allocation just fails, and each
/// runtime reports that its own way (Python raises MemoryError, node aborts, a C program gets
/// NULL) — telling it apart from any other error would be a guess. TODO(cgroups issue): the
/// memory cgroup's OOM events make it reliable.
pub(super) fn decide(f: Facts) -> Outcome {
    match f.stop {
        Some(Stop::WallTime) => return Outcome::TimeLimit,
        Some(Stop::OutputLimit) => return Outcome::OutputLimit,
        Some(Stop::Internal) => return Outcome::InternalError,
        None => {}
    }
    let Some(termination) = f.termination else {
        return Outcome::InternalError;
    };
    if f.internal_error {
        return Outcome::InternalError;
    }
    let past_cpu_rlimit = f.cpu_ms >= f.cpu_soft_s.saturating_mul(1000);
    match termination {
        Termination::Signaled(libc::SIGXCPU) => return Outcome::TimeLimit,
        Termination::Signaled(libc::SIGKILL) if past_cpu_rlimit => return Outcome::TimeLimit,
        _ => {}
    }
    if f.cpu_ms > f.cpu_time_ms {
        return Outcome::TimeLimit;
    }
    if f.truncated {
        return Outcome::OutputLimit;
    }
    match termination {
        Termination::Exited(0) => Outcome::Ok,
        _ => Outcome::RuntimeError,
    }
}

/// The wire result of a finished child.
pub(super) fn result(
    finished: Finished,
    decode: fn(libc::c_int) -> Termination,
    limits: &Limits,
    rlimits: &Rlimits,
) -> ExecutionResult {
    let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let termination = finished.termination(decode);
    let (stdout, stdout_truncated) = finished.stdout.into_text(cap);
    let (stderr, stderr_truncated) = finished.stderr.into_text(cap);
    let outcome = decide(Facts {
        stop: finished.stop,
        termination,
        internal_error: finished.internal_error.is_some(),
        truncated: stdout_truncated || stderr_truncated,
        cpu_ms: finished.cpu_ms,
        cpu_time_ms: limits.cpu_time_ms,
        cpu_soft_s: rlimits.cpu_soft_s,
    });
    let (exit_code, signal) = match termination {
        Some(Termination::Exited(code)) => (Some(code), None),
        Some(Termination::Signaled(sig)) => (None, Some(sig)),
        None => (None, None),
    };
    ExecutionResult {
        outcome,
        exit_code,
        signal,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        wall_time_ms: u64::try_from(finished.wall.as_millis()).unwrap_or(u64::MAX),
        cpu_time_ms: finished.cpu_ms,
        memory_kb: finished.memory_kb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Termination::{Exited, Signaled};

    const CLEAN: Facts = Facts {
        stop: None,
        termination: Some(Exited(0)),
        internal_error: false,
        truncated: false,
        cpu_ms: 20,
        cpu_time_ms: 1500,
        cpu_soft_s: 2,
    };

    #[test]
    fn outcomes_follow_the_documented_order() {
        let cases = [
            ("clean exit", CLEAN, Outcome::Ok),
            (
                "non-zero exit",
                Facts {
                    termination: Some(Exited(3)),
                    ..CLEAN
                },
                Outcome::RuntimeError,
            ),
            (
                "segfault",
                Facts {
                    termination: Some(Signaled(libc::SIGSEGV)),
                    ..CLEAN
                },
                Outcome::RuntimeError,
            ),
            (
                "wall clock",
                Facts {
                    stop: Some(Stop::WallTime),
                    termination: Some(Signaled(9)),
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "flood",
                Facts {
                    stop: Some(Stop::OutputLimit),
                    termination: Some(Signaled(9)),
                    ..CLEAN
                },
                Outcome::OutputLimit,
            ),
            (
                "wall clock first, then flood",
                Facts {
                    stop: Some(Stop::WallTime),
                    truncated: true,
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "SIGXCPU at the soft rlimit",
                Facts {
                    termination: Some(Signaled(libc::SIGXCPU)),
                    cpu_ms: 2000,
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "SIGKILL at the hard rlimit",
                Facts {
                    termination: Some(Signaled(libc::SIGKILL)),
                    cpu_ms: 3000,
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "SIGKILL well within the CPU limit",
                Facts {
                    termination: Some(Signaled(libc::SIGKILL)),
                    cpu_ms: 10,
                    ..CLEAN
                },
                Outcome::RuntimeError,
            ),
            (
                "over the ms CPU limit, exit 0",
                Facts {
                    cpu_ms: 1501,
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "exactly the CPU limit",
                Facts {
                    cpu_ms: 1500,
                    ..CLEAN
                },
                Outcome::Ok,
            ),
            (
                "output cut by conversion",
                Facts {
                    truncated: true,
                    ..CLEAN
                },
                Outcome::OutputLimit,
            ),
            (
                "not reaped",
                Facts {
                    termination: None,
                    ..CLEAN
                },
                Outcome::InternalError,
            ),
            (
                "pipe read failed",
                Facts {
                    stop: Some(Stop::Internal),
                    ..CLEAN
                },
                Outcome::InternalError,
            ),
            (
                "supervision error",
                Facts {
                    internal_error: true,
                    ..CLEAN
                },
                Outcome::InternalError,
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(decide(facts), want, "{name}");
        }
    }
}
