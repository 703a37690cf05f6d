//! The leader's memory between passes, kept in Redis (`{wp:P}:ctl`) so a new leader carries
//! on: what it last measured and decided ([`Control`], shown by `GET /v1/pool`), and the
//! provider's health with the create-pause policy ([`ProviderControl`], pure).
//!
//! # The create-pause policy
//! A create that fails pauses creates: a configuration error for `WARMPOOL_CREATE_PAUSE_S`, a
//! stockout everywhere or a passing error for a tenth of it. Each pause that ends in another
//! failure doubles, up to 15 min. Failures of the creates already sent while a pause runs do
//! not lengthen it. After a pause, one create at a time probes until one succeeds, which ends
//! the policy's memory (the next failure starts again from the first pause).
//!
//! Worked example, `WARMPOOL_CREATE_PAUSE_S=60`: a bad image fails a create at t=0 → paused
//! until 60 s; the probe at 60 s fails → 120 s, until 180 s; the next → 240 s; a quota error
//! at that point → max(2 × 240 s, 6 s) = 480 s; a success → creates open again.

use std::time::Duration;

use fred::prelude::*;
use serde::{Deserialize, Serialize};

use super::plan::CreateGate;
use super::provider::{FailureKind, ProviderError};
use super::sizing::SizingInputs;
use warmpool_core::model::ProviderFailure;
use warmpool_core::store::{parse_record, Store, StoreError, StoreResult};

/// Longest pause of creates.
pub const MAX_CREATE_PAUSE: Duration = Duration::from_secs(15 * 60);

/// What the reconciler last measured and decided.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Control {
    pub desired_vms: u32,
    pub inputs: SizingInputs,
    /// Reason of the last scaling action, and when (RFC 3339).
    pub last_scaling: Option<String>,
    pub last_scaling_at: Option<String>,
    /// The planner's current reasoning (also when holding steady).
    pub status: String,
    /// The pool's game counter at the last measure (for the arrival rate).
    pub starts: u64,
    pub measured_ms: u64,
    pub below_since_ms: Option<u64>,
    pub idle_since_ms: Option<u64>,
    pub provider: ProviderControl,
}

/// The provider's health as the leader keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderControl {
    /// Creates wait until then (Redis clock, ms).
    pub paused_until_ms: Option<u64>,
    /// The current pause; 0 once a create succeeded.
    pub pause_ms: u64,
    pub last_error: Option<ProviderFailure>,
    pub creates_failed: u64,
    pub vms_lost: u64,
    pub orphans_deleted: u64,
    pub last_sync_ms: Option<u64>,
    /// Why the last list of the provider's VMs failed (`None`: it worked).
    pub last_sync_error: Option<String>,
}

impl ProviderControl {
    /// Records a failed create and, unless a pause is already running (the creates sent
    /// before it fail one after another), starts the next, longer one. Returns whether a
    /// pause started.
    pub fn failed(&mut self, err: &ProviderError, now_ms: u64, first_pause: Duration) -> bool {
        self.creates_failed += 1;
        let paused = self.paused(now_ms);
        if !paused {
            let base = match err.kind {
                FailureKind::Config => first_pause,
                FailureKind::Capacity | FailureKind::Transient => first_pause / 10,
            };
            let pause = if self.pause_ms == 0 {
                base
            } else {
                (Duration::from_millis(self.pause_ms) * 2).max(base)
            }
            .min(MAX_CREATE_PAUSE);
            self.pause_ms = pause.as_millis() as u64;
            self.paused_until_ms = Some(now_ms + self.pause_ms);
        }
        self.last_error = Some(ProviderFailure {
            vm_id: err.vm_id.clone(),
            kind: err.kind.as_str().to_string(),
            message: err.message.clone(),
            at: warmpool_core::model::rfc3339_ms(now_ms),
        });
        !paused
    }

    /// A create succeeded: creates open again. Returns whether a pause policy was in force.
    pub fn succeeded(&mut self) -> bool {
        let was = self.pause_ms != 0;
        self.pause_ms = 0;
        self.paused_until_ms = None;
        was
    }

    /// Whether a pause is running at `now_ms`.
    pub fn paused(&self, now_ms: u64) -> bool {
        self.paused_until_ms.is_some_and(|t| t > now_ms)
    }

    /// Whether creates may go out at `now_ms`, with `in_flight` creates running here.
    pub fn gate(&self, now_ms: u64, in_flight: usize) -> CreateGate {
        if self.paused(now_ms) {
            CreateGate::Closed
        } else if self.pause_ms == 0 {
            CreateGate::Open
        } else if in_flight == 0 {
            CreateGate::Probe
        } else {
            CreateGate::Closed
        }
    }
}

/// The last control record, `None` before the first pass. One that cannot be read is an
/// error: a default would forget a running create pause.
pub async fn read(store: &Store) -> StoreResult<Option<Control>> {
    let raw: Option<String> = store.client().hget(&store.keys.ctl, "state").await?;
    raw.map(|r| parse_record("the reconciler's control record", &r))
        .transpose()
}

pub async fn write(store: &Store, control: &Control, formula: &str) -> StoreResult<()> {
    let json = serde_json::to_string(control).map_err(|e| StoreError::Reply {
        script: "HSET ctl",
        detail: format!("encoding the control record: {e}"),
    })?;
    let _: () = store
        .client()
        .hset(
            &store.keys.ctl,
            [("state", json), ("formula", formula.to_string())],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_secs(60);

    fn err(kind: FailureKind) -> ProviderError {
        ProviderError::new("create", "p-1", kind, "boom")
    }

    #[test]
    fn the_worked_example() {
        let mut p = ProviderControl::default();
        let s = 1_000;
        assert!(p.failed(&err(FailureKind::Config), 0, PAUSE));
        assert_eq!(p.paused_until_ms, Some(60 * s));
        assert_eq!(p.gate(59 * s, 0), CreateGate::Closed);
        assert_eq!(p.gate(60 * s, 0), CreateGate::Probe);
        assert_eq!(p.gate(60 * s, 1), CreateGate::Closed, "one probe at a time");
        assert!(p.failed(&err(FailureKind::Config), 60 * s, PAUSE));
        assert_eq!(p.paused_until_ms, Some(180 * s));
        assert!(p.failed(&err(FailureKind::Config), 180 * s, PAUSE));
        assert_eq!(p.pause_ms, 240 * s);
        assert!(p.failed(&err(FailureKind::Capacity), 420 * s, PAUSE));
        assert_eq!(p.pause_ms, 480 * s);
        assert!(p.succeeded());
        assert_eq!(p.gate(420 * s, 0), CreateGate::Open);
        assert_eq!(p.creates_failed, 4);
    }

    #[test]
    fn failures_during_a_pause_do_not_lengthen_it() {
        let mut p = ProviderControl::default();
        assert!(p.failed(&err(FailureKind::Transient), 0, PAUSE));
        assert_eq!(
            p.paused_until_ms,
            Some(6_000),
            "a tenth for a passing error"
        );
        assert!(!p.failed(&err(FailureKind::Config), 1_000, PAUSE));
        assert_eq!(p.paused_until_ms, Some(6_000));
        assert_eq!(
            p.last_error.as_ref().map(|e| e.kind.as_str()),
            Some("config")
        );
    }

    #[test]
    fn pauses_stop_doubling_at_fifteen_minutes() {
        let mut p = ProviderControl::default();
        let mut now = 0;
        for _ in 0..10 {
            p.failed(&err(FailureKind::Config), now, PAUSE);
            now = p.paused_until_ms.unwrap_or(now);
        }
        assert_eq!(p.pause_ms, MAX_CREATE_PAUSE.as_millis() as u64);
    }
}
