//! The leader's creates, run in the background so a pass that asks for 100 VMs does not wait
//! for 100 provider operations; each outcome comes back to the reconcile loop.
//!
//! # Guarantees
//! - At most `WARMPOOL_CREATE_CONCURRENCY` creates wait for their provider at once, and one VM
//!   is never created twice at once here.
//! - A leader that lost its term stops its creates within 100 ms, and a pause stops the ones
//!   still queued ([`Creates::cancel_batch`]): their records stay provisioning and a later
//!   leader (or this one, after the pause) resumes them under the same instance name and
//!   request ids.
//! - A crash before a create ends leaves its record provisioning: the next leader's inventory
//!   sync resumes it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::leader::Leadership;
use super::provider::{Provider, ProviderError, VmSpec};

/// A background create's outcome, handed back to the reconcile loop.
pub struct CreateDone {
    pub vm_id: String,
    pub result: Result<(), ProviderError>,
}

/// Creates in flight, run beside the reconcile loop.
pub struct Creates {
    provider: Arc<dyn Provider>,
    leadership: Leadership,
    tx: mpsc::UnboundedSender<CreateDone>,
    slots: Arc<Semaphore>,
    /// VM ids whose create runs here.
    in_flight: Arc<Mutex<HashSet<String>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Cancels the creates started since the last pause or change of leadership term.
    batch: Mutex<(u64, CancellationToken)>,
}

impl Creates {
    /// The creates, and where their outcomes arrive.
    pub fn new(
        provider: Arc<dyn Provider>,
        leadership: Leadership,
        concurrency: usize,
    ) -> (Creates, mpsc::UnboundedReceiver<CreateDone>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let creates = Creates {
            provider,
            leadership,
            tx,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            batch: Mutex::new((0, CancellationToken::new())),
        };
        (creates, rx)
    }

    /// VM ids whose create runs here now.
    pub fn in_flight(&self) -> HashSet<String> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cancellation token of the creates of term `token` (a new one when the term is new).
    fn batch(&self, token: u64) -> CancellationToken {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.0 != token {
            batch.1.cancel();
            *batch = (token, CancellationToken::new());
        }
        batch.1.clone()
    }

    /// Cancels the creates started so far (queued or waiting for their operation).
    pub fn cancel_batch(&self) {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        batch.1.cancel();
        batch.1 = CancellationToken::new();
    }

    /// Creates the VM in the background under term `token`; its outcome comes back through
    /// the receiver. Nothing happens if its create already runs here.
    pub fn spawn(&self, token: u64, spec: VmSpec) {
        let provider = self.provider.clone();
        let slots = self.slots.clone();
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let batch = self.batch(token);
        let leadership = self.leadership.clone();
        let in_flight = self.in_flight.clone();
        if !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.vm_id.clone())
        {
            return;
        }
        self.tasks.spawn(async move {
            // A leader that lost its term stops creating at once, not at its next pass.
            let term_lost = async {
                while leadership.token() == Some(token) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => None,
                _ = batch.cancelled() => None,
                _ = term_lost => None,
                r = async {
                    let _slot = slots.acquire().await;
                    provider.create(&spec).await
                } => Some(r),
            };
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&spec.vm_id);
            if let Some(result) = result {
                let _ = tx.send(CreateDone {
                    vm_id: spec.vm_id,
                    result,
                });
            }
        });
    }

    /// Abandons the creates in flight (their records stay provisioning, and the next leader
    /// resumes them) and waits for their tasks to end.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
