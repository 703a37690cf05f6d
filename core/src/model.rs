//! Wire types: the one definition of what crosses the REST API and Redis, shared by the
//! orchestrator (`warmpool`) and the agent (`warmpool-agent`).
//!
//! Timestamps on the wire are RFC 3339 strings; inside Redis they are Unix milliseconds of the
//! Redis server's clock (`TIME`), so every replica and agent agrees on one clock.

use serde::{Deserialize, Serialize};

/// One source file of an execution. The first file of a request is the entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    pub name: String,
    pub content: String,
}

/// Resource limits of one execution, every field resolved (defaults applied, range-checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock limit; the whole sandbox is killed when it passes.
    pub wall_time_ms: u64,
    /// CPU time limit (user + system), enforced by RLIMIT_CPU rounded up to whole seconds and
    /// checked against the measured CPU time to the millisecond.
    pub cpu_time_ms: u64,
    /// Address-space limit of every sandboxed process.
    pub memory_mb: u64,
    /// Cap on each of stdout and stderr; past it the execution ends `output_limit`.
    pub max_output_bytes: u64,
}

/// Limits as a client sends them: every field optional, defaults come from the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub wall_time_ms: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_output_bytes: Option<u64>,
}

/// Body of `POST /v1/games/{game_id}/executions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    pub language: String,
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub limits: Option<LimitsRequest>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// What an agent receives: a validated execution, limits resolved, language canonical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub execution_id: String,
    pub game_id: String,
    pub language: String,
    pub files: Vec<FileSpec>,
    pub stdin: String,
    pub args: Vec<String>,
    pub limits: Limits,
}

/// Lifecycle of an execution.
///
/// ```text
/// queued ──start──▶ running ──result──▶ finished | failed
///   │ └──(game deleted / expired)──▶ cancelled
///   └──(no VM took it within WARMPOOL_QUEUE_TIMEOUT_S)──▶ expired
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Accepted and durable in Redis; waiting for its game to be placed or for the agent.
    Queued,
    /// An agent took it and is running it in a sandbox.
    Running,
    /// The program ran, whatever it did: see `result.outcome`.
    Finished,
    /// The system could not run it; `error` says why.
    Failed,
    /// No VM took it before the queue timeout.
    Expired,
    /// Its game was deleted or expired before it ran.
    Cancelled,
}

impl ExecutionState {
    pub const ALL: [ExecutionState; 6] = [
        Self::Queued,
        Self::Running,
        Self::Finished,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// How a program that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    RuntimeError,
    TimeLimit,
    MemoryLimit,
    OutputLimit,
    InternalError,
}

/// The result of a program that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall_time_ms: u64,
    pub cpu_time_ms: u64,
    pub memory_kb: u64,
}

/// A machine-readable error: the body of every API error and the `error` of a failed,
/// expired or cancelled execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// The execution record served by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub execution_id: String,
    pub game_id: String,
    pub state: ExecutionState,
    pub vm_id: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub result: Option<ExecutionResult>,
    pub error: Option<ErrorDetail>,
}

/// Where a game stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GameState {
    /// Leased to a Ready VM; its executions go to that VM's queue.
    Placed,
    /// No Ready capacity yet: waits FIFO, executions wait in its backlog.
    Pending,
}

/// The game record served by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Game {
    pub game_id: String,
    pub state: GameState,
    pub vm_id: Option<String>,
    pub created_at: String,
    pub expires_at: String,
}

/// Lifecycle of a VM.
///
/// ```text
/// provisioning ──agent registers──▶ ready ──▶ draining ──▶ dead
///      └────────(boot fails)───────────────────────────────▶ dead
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The provider was asked to create it; no agent has spoken yet.
    Provisioning,
    /// The agent is up and preparing (probing runtimes) but takes no games yet.
    Booting,
    /// Takes games up to its capacity.
    Ready,
    /// Takes no new games; keeps serving the games it has.
    Draining,
    /// Gone or declared gone; its record is kept briefly for the API.
    Dead,
}

impl VmState {
    pub const ALL: [VmState; 5] = [
        Self::Provisioning,
        Self::Booting,
        Self::Ready,
        Self::Draining,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Booting => "booting",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// One VM as `GET /v1/pool` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub vm_id: String,
    pub state: VmState,
    pub games: u64,
    pub capacity: u64,
    pub running: u64,
    pub languages: Vec<String>,
    /// Seconds since the agent's last heartbeat; `None` before its first.
    pub heartbeat_age_s: Option<f64>,
}

/// Game counts in `GET /v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameCounts {
    pub placed: u64,
    pub pending: u64,
}

/// Body of `GET /v1/pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pool: String,
    pub vms: Vec<VmStatus>,
    pub games: GameCounts,
    /// The size the reconciler steers to (after clamping and the idle rule).
    pub desired_vms: Option<u32>,
    /// The sizing formula in force.
    pub formula: String,
    /// Every input of the formula, as last measured, with the operator's settings.
    pub inputs: Option<serde_json::Value>,
    /// The last scaling action: why, and when.
    pub last_scaling: Option<ScalingNote>,
    /// What the reconciler thinks now (also when holding steady).
    pub status: Option<String>,
    /// The replica leading the pool and its fencing token.
    pub leader: Option<LeaderInfo>,
    /// The VM provider as the leader last saw it: paused creates, the last failure.
    pub provider: Option<ProviderHealth>,
}

/// A VM the provider could not create (or delete), as `GET /v1/pool` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderFailure {
    pub vm_id: String,
    /// `config` (an operator must fix something), `capacity` (no zone could take it) or
    /// `transient`.
    pub kind: String,
    pub message: String,
    pub at: String,
}

/// The provider part of `GET /v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub name: String,
    /// Creates wait until then (RFC 3339) after a failure that retrying at once cannot fix.
    pub creates_paused_until: Option<String>,
    pub last_error: Option<ProviderFailure>,
    pub creates_failed: u64,
    /// VMs failed because the provider no longer ran them (preempted, deleted elsewhere).
    pub vms_lost: u64,
    /// Instances of the pool with no record that were deleted after the grace period.
    pub orphans_deleted: u64,
    /// When the leader last compared the provider's VMs with the records.
    pub last_sync: Option<String>,
    /// Why the last list of the provider's VMs failed (`null`: it worked).
    pub last_sync_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingNote {
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub replica: String,
    pub token: u64,
}

/// One language an agent can run, as `GET /v1/languages` and the VM record show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanguageInfo {
    pub name: String,
    pub version: String,
    pub aliases: Vec<String>,
}

/// RFC 3339 (UTC, millisecond precision) for a Unix-millisecond timestamp.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&format).unwrap_or_else(|_| unix_ms.to_string())
        }
        Err(_) => unix_ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in ExecutionState::ALL {
            assert_eq!(ExecutionState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for state in VmState::ALL {
            assert_eq!(VmState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ExecutionState::parse("bogus"), None);
    }

    #[test]
    fn only_queued_and_running_are_not_final() {
        let open: Vec<_> = ExecutionState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(open, vec![ExecutionState::Queued, ExecutionState::Running]);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_041_400_123), "2025-11-25T03:30:00.123Z");
    }

    #[test]
    fn execution_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<ExecutionRequest>(
            r#"{"language":"python","files":[],"network":true}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("network"), "{err}");
    }
}
