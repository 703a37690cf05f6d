//! From what happened to a program to its [`Outcome`]: what the supervisor observed
//! ([`Finished`]), how a reaped status reads ([`decode_status`], one convention per process
//! tree, whatever the backend), and the decision itself, pure and tested by table.

use std::time::Duration;

use warmpool_core::model::{ExecutionResult, Limits, Outcome};

use super::output::Captured;
use super::rlimits::Rlimits;

/// How the program's process ended, as the backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Termination {
    Exited(i32),
    Signaled(i32),
}

/// How the status the agent reaped tells the program's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusCoding {
    /// A raw wait status, as the kernel reports a bare process (the process backend).
    Wait,
    /// An exit code where signal N reads as 128 + N, as shells say it: bwrap reports a program
    /// killed by a signal that way, nsjail's loader does the same, and the reaper shim reports
    /// a launcher it saw signalled so too. A program that itself exits with 129..=192 is
    /// therefore reported as signalled: the price of that convention.
    SignalAs128PlusN,
}

/// The program's end from a reaped status.
pub(super) fn decode_status(status: libc::c_int, coding: StatusCoding) -> Termination {
    let raw = if libc::WIFSIGNALED(status) {
        Termination::Signaled(libc::WTERMSIG(status))
    } else {
        Termination::Exited(libc::WEXITSTATUS(status))
    };
    match (coding, raw) {
        (StatusCoding::SignalAs128PlusN, Termination::Exited(code))
            if (129..=128 + 64).contains(&code) =>
        {
            Termination::Signaled(code - 128)
        }
        _ => raw,
    }
}

/// Everything the supervisor observed about one child.
#[derive(Debug)]
pub(super) struct Finished {
    /// `None` when the child could not be reaped (then `internal_error` says why).
    pub termination: Option<Termination>,
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
    /// The memory cgroup OOM-killed a process of the sandbox.
    pub oom_killed: bool,
    pub cpu_ms: u64,
    pub cpu_time_ms: u64,
    pub cpu_soft_s: u64,
}

/// Decides the outcome. In order: what made us kill it; a failure of ours; an OOM kill by the
/// memory cgroup; the CPU limit (SIGXCPU at the soft RLIMIT_CPU, SIGKILL once past it, or the
/// measured CPU time over the millisecond limit); truncated output; then the exit status.
///
/// Why this order for memory: when we killed the sandbox (wall time, output), it was still
/// running, so an OOM kill had not ended it — the first reason wins, as between our own
/// reasons. An OOM kill comes before the CPU checks because its SIGKILL would otherwise read as
/// the hard CPU rlimit's, and before the exit status because a program that survives the loss
/// of a child (or catches the error) still went over its memory limit: any OOM kill in the
/// cgroup is `memory_limit`, even with exit status 0.
///
/// Without a memory cgroup `memory_limit` is never decided: under RLIMIT_AS an allocation just
/// fails, and each runtime reports that its own way (Python raises MemoryError, node aborts, a
/// C program gets NULL) — telling it apart from any other error would be a guess.
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
    if f.oom_killed {
        return Outcome::MemoryLimit;
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
pub(super) fn result(finished: Finished, limits: &Limits, rlimits: &Rlimits) -> ExecutionResult {
    let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let termination = finished.termination;
    let (stdout, stdout_truncated) = finished.stdout.into_text(cap);
    let (stderr, stderr_truncated) = finished.stderr.into_text(cap);
    let outcome = decide(Facts {
        stop: finished.stop,
        termination,
        internal_error: finished.internal_error.is_some(),
        truncated: stdout_truncated || stderr_truncated,
        oom_killed: finished.oom_killed,
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
        oom_killed: false,
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
                "OOM-killed by the memory cgroup",
                Facts {
                    termination: Some(Signaled(libc::SIGKILL)),
                    oom_killed: true,
                    cpu_ms: 3000,
                    ..CLEAN
                },
                Outcome::MemoryLimit,
            ),
            (
                "a child OOM-killed, the program exits 0",
                Facts {
                    oom_killed: true,
                    ..CLEAN
                },
                Outcome::MemoryLimit,
            ),
            (
                "wall clock first, then an OOM kill",
                Facts {
                    stop: Some(Stop::WallTime),
                    oom_killed: true,
                    ..CLEAN
                },
                Outcome::TimeLimit,
            ),
            (
                "output flood first, then an OOM kill",
                Facts {
                    stop: Some(Stop::OutputLimit),
                    oom_killed: true,
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

    #[test]
    fn exit_statuses_past_128_are_bwraps_way_of_saying_signal() {
        let decode = |status| decode_status(status, StatusCoding::SignalAs128PlusN);
        // Raw wait statuses: exited with code c is c << 8.
        assert_eq!(decode(3 << 8), Termination::Exited(3));
        assert_eq!(decode(137 << 8), Termination::Signaled(9));
        assert_eq!(decode(128 << 8), Termination::Exited(128));
        assert_eq!(decode(255 << 8), Termination::Exited(255));
        assert_eq!(decode(libc::SIGKILL), Termination::Signaled(9));
    }

    #[test]
    fn a_bare_processs_wait_status_is_taken_as_it_is() {
        let decode = |status| decode_status(status, StatusCoding::Wait);
        assert_eq!(decode(3 << 8), Termination::Exited(3));
        assert_eq!(decode(137 << 8), Termination::Exited(137));
        assert_eq!(decode(libc::SIGSEGV), Termination::Signaled(libc::SIGSEGV));
    }
}
