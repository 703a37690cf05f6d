//! Wakes requests waiting for an execution to end (`wait_s`), from Redis pub/sub.
//!
//! Every script that ends an execution publishes its id on `{wp:P}:events`. Each replica holds
//! one subscriber connection and wakes its local waiters; a waiter registers *before* it reads
//! the record, so an end published between its read and its wait still wakes it. After a
//! reconnect (messages may have been missed) every waiter is woken to read its record again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use warmpool_core::model::Execution;
use warmpool_core::store::executions;
use warmpool_core::store::{RedisSettings, Store, StoreResult};

/// Published on the events channel to wake the leader's reconciler (execution ids are hex,
/// so they never collide with it).
pub const RECONCILE: &str = "reconcile";

/// Local waiters of one replica, by execution id.
#[derive(Clone, Default)]
pub struct Waiters {
    // A std Mutex: nothing awaits while holding it.
    inner: Arc<Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>>,
}

impl Waiters {
    fn register(&self, execution_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(execution_id.to_string()).or_default();
        list.retain(|s| !s.is_closed());
        list.push(tx);
        rx
    }

    fn forget_closed(&self, execution_id: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(execution_id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                map.remove(execution_id);
            }
        }
    }

    /// Wakes the waiters of one execution.
    pub fn wake(&self, execution_id: &str) {
        let senders = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(execution_id)
        };
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Wakes everyone (after a reconnect: they read their records again).
    pub fn wake_all(&self) {
        let all = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        for tx in all.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Number of executions somebody waits for (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record once it is final or `wait` has passed, whichever comes first.
    /// `None` when no such execution exists.
    pub async fn wait_final(
        &self,
        store: &Store,
        execution_id: &str,
        wait: Duration,
    ) -> StoreResult<Option<Execution>> {
        let deadline = Instant::now() + wait;
        loop {
            let woken = self.register(execution_id);
            let record = executions::get(store, execution_id).await?;
            match &record {
                Some(r) if !r.state.is_final() && Instant::now() < deadline => {}
                _ => {
                    drop(woken);
                    self.forget_closed(execution_id);
                    return Ok(record);
                }
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                self.forget_closed(execution_id);
                return executions::get(store, execution_id).await;
            }
        }
    }
}

/// Subscribes to the pool's events channel and wakes local waiters until the client quits.
pub async fn subscribe(
    settings: &RedisSettings,
    store: &Store,
    waiters: Waiters,
    reconcile: Arc<tokio::sync::Notify>,
) -> StoreResult<SubscriberClient> {
    let client = warmpool_core::store::builder(settings)?.build_subscriber_client()?;
    client.init().await?;
    let _resubscribe = client.manage_subscriptions();
    let on_message = waiters.clone();
    client.on_message(move |msg| {
        let waiters = on_message.clone();
        let reconcile = reconcile.clone();
        async move {
            match msg.value.as_str().as_deref() {
                Some(RECONCILE) => reconcile.notify_one(),
                Some(id) => waiters.wake(id),
                None => {}
            }
            Ok(())
        }
    });
    let on_reconnect = waiters.clone();
    client.on_reconnect(move |_| {
        let waiters = on_reconnect.clone();
        async move {
            waiters.wake_all();
            Ok(())
        }
    });
    client.subscribe(store.keys.events.clone()).await?;
    Ok(client)
}
