//! One leader per pool, elected through a Redis lease and fenced.
//!
//! # Expected flow
//! Every replica tries to take the lease (`acquire_leader`) every third of its TTL; the holder
//! renews it. Taking it starts a new term with a new fencing token (INCR). Only the holder
//! reconciles, and every script that changes a VM record checks the token it is given against
//! the current one.
//!
//! # Guarantees
//! - A paused old leader cannot act after a new one took over: its token is stale, so its
//!   `vm_transition` calls change nothing (`Fenced`), and it creates a VM only after a
//!   successful fenced `add`.
//! - A replica that cannot reach Redis stops leading at once (the first failed renewal).
//!
//! # Caveats
//! - Between the lease expiring and another replica taking it, nobody leads (at most one renewal
//!   period): reconciling pauses, nothing else does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use warmpool_core::store::{leader, Store, StoreResult};

/// This replica's view of the leadership.
#[derive(Clone)]
pub struct Leadership {
    store: Store,
    replica_id: String,
    ttl: Duration,
    /// The fencing token while leading, 0 otherwise.
    token: Arc<AtomicU64>,
}

impl Leadership {
    pub fn new(store: Store, replica_id: String, ttl: Duration) -> Self {
        Leadership {
            store,
            replica_id,
            ttl,
            token: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The current token if this replica leads.
    pub fn token(&self) -> Option<u64> {
        match self.token.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// Stops leading (a stale token was detected, or Redis failed).
    pub fn step_down(&self) {
        if self.token.swap(0, Ordering::SeqCst) != 0 {
            tracing::warn!(replica = %self.replica_id, "stepped down as leader");
        }
    }

    /// Takes or renews the lease. Any error means: not leading.
    pub async fn try_lead(&self) -> StoreResult<Option<u64>> {
        match leader::acquire(&self.store, &self.replica_id, self.ttl).await {
            Ok(Some(t)) => {
                let before = self.token.swap(t, Ordering::SeqCst);
                if before != t {
                    tracing::info!(replica = %self.replica_id, token = t, "leading the pool");
                }
                Ok(Some(t))
            }
            Ok(None) => {
                self.step_down();
                Ok(None)
            }
            Err(err) => {
                self.step_down();
                Err(err)
            }
        }
    }

    /// Renews (or tries to take) the lease every third of its TTL until `shutdown`, then
    /// releases it so another replica takes over without waiting for the TTL.
    pub async fn run(self, shutdown: CancellationToken, on_gain: Arc<tokio::sync::Notify>) {
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        loop {
            let was = self.token();
            match self.try_lead().await {
                Ok(Some(_)) if was.is_none() => on_gain.notify_one(),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "leader lease: redis unavailable"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        let token = self.token.swap(0, Ordering::SeqCst);
        if token > 0 {
            let _ = leader::release(&self.store, &self.replica_id, token).await;
        }
    }
}
