//! What the agent measures for the pool's `/metrics`: its gauges (sandboxes busy, spares
//! ready) and what it counts (programs killed by reason, how long each sandbox took to start
//! its program). The agent opens no port: the figures travel with each heartbeat, and the
//! counts are handed over only once a heartbeat went through (kept for the next one if not).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use warmpool_core::model::{ExecutionResult, Outcome};
use warmpool_core::store::vms::AgentFigures;

use crate::sandbox::Sandbox;

/// Most start times one heartbeat carries: a flood of tiny jobs between two heartbeats keeps
/// only the most recent (the histogram is a sample then; the kill counts stay exact).
const MAX_STARTS: usize = 4_096;

/// The figures of this agent.
pub struct Figures {
    slots: Arc<Semaphore>,
    size: usize,
    sandbox: Arc<Sandbox>,
    // A std Mutex: nothing awaits while holding it.
    pending: Mutex<Counted>,
}

#[derive(Default)]
struct Counted {
    kills: BTreeMap<String, u64>,
    start_ms: Vec<u64>,
}

impl Figures {
    /// `slots` are the worker's concurrency permits, `size` of them in all.
    pub fn new(slots: Arc<Semaphore>, size: usize, sandbox: Arc<Sandbox>) -> Self {
        Figures {
            slots,
            size,
            sandbox,
            pending: Mutex::new(Counted::default()),
        }
    }

    /// Notes a run that took `elapsed` from the call to its result.
    pub fn ran(&self, result: &ExecutionResult, elapsed: Duration) {
        let reason = match result.outcome {
            Outcome::TimeLimit => Some("time_limit"),
            Outcome::MemoryLimit => Some("memory_limit"),
            Outcome::OutputLimit => Some("output_limit"),
            Outcome::Ok | Outcome::RuntimeError | Outcome::InternalError => None,
        };
        // The sandbox's own cost: what the run took beyond the program's wall time.
        let start_ms = (elapsed.as_millis() as u64).saturating_sub(result.wall_time_ms);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = reason {
            *pending.kills.entry(reason.to_string()).or_default() += 1;
        }
        if pending.start_ms.len() >= MAX_STARTS {
            pending.start_ms.remove(0);
        }
        pending.start_ms.push(start_ms);
    }

    /// The figures for a heartbeat: the gauges now and the counts so far (taken out: give them
    /// back with [`Figures::keep`] if the heartbeat fails).
    pub fn take(&self) -> AgentFigures {
        let counted = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        AgentFigures {
            busy: self.size.saturating_sub(self.slots.available_permits()) as u64,
            spares: self.sandbox.spares_ready() as u64,
            kills: counted.kills,
            start_ms: counted.start_ms,
        }
    }

    /// Puts back the counts of a heartbeat that did not go through.
    pub fn keep(&self, unsent: AgentFigures) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, n) in unsent.kills {
            *pending.kills.entry(reason).or_default() += n;
        }
        let mut starts = unsent.start_ms;
        starts.append(&mut pending.start_ms);
        let over = starts.len().saturating_sub(MAX_STARTS);
        starts.drain(..over);
        pending.start_ms = starts;
    }
}
