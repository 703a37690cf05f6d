//! The concurrency slots, a `deadpool` managed pool: one object per slot, holding the slot's
//! uid and, with warm sandboxes, the prepared sandbox waiting on it.
//!
//! # Why a slot is the pooled object, not the spare
//! A spare runs as its slot's uid, and a uid must never run two sandboxes at once (its
//! `RLIMIT_NPROC` and its cgroup names are per uid). So the pool hands out slots: holding one
//! is the right to run as its uid, and `max_size` (the configured `slots`) bounds how many
//! sandboxes run at once, with deadpool's queue deciding who waits. The spare inside a slot is
//! the "prepared one, used once and discarded": `warm::Warm::take` takes it out for a
//! job, and it ends with that job.
//!
//! # Expected flow
//! 1. `SlotManager::create` makes a slot from a free index `i` (uid `uid_base + i`) when the
//!    pool grows. Recycling never fails, so a slot is dropped only when a `get` is cancelled
//!    (or panics) while its slot is being made or recycled; the slot's index guard then gives
//!    the index back. So there are never more than `slots` slots, never two with one uid, and
//!    a permit always finds its index (at worst a moment later: `create` waits for it).
//! 2. `SlotManager::recycle`, on every `get`, makes sure the slot has a usable spare
//!    ([`Keeper::keep`], `Warm::ensure_spare`: kept if alive and young, else prepared there
//!    and then). Usually the refill that followed the slot's previous run put one there
//!    already, off any job's path.
//! 3. After a run the caller hands the slot to `Warm::refill`, which prepares its next spare in
//!    the background and only then lets the slot go back to the pool: the next job on it
//!    waits for that rather than preparing a second sandbox for the same uid.
//!
//! Without warm sandboxes the objects are bare slots and recycling does nothing.
//!
//! # Why generic over a [`Keeper`]
//! The pool only needs "make sure this slot has its spare" on create and recycle. Taking that
//! as a trait (implemented by `warm::Warm`) keeps this file free of what a spare is, and the
//! dependency one way: `warm` uses the slots, the slots know nothing of `warm`.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult, Timeouts};
use tokio::sync::Notify;

use super::error::SandboxError;

/// What keeps each slot's spare (`warm::Warm`).
pub(super) trait Keeper: Send + Sync + 'static {
    /// A slot's prepared sandbox (`warm::Prepared`).
    type Spare: Send + 'static;

    /// Leaves `slot` with a usable spare if it can (none is fine: the run then starts cold).
    /// Called when a slot is made and every time one is handed out.
    fn keep(&self, slot: &mut SlotState<Self::Spare>) -> impl Future<Output = ()> + Send;
}

/// A held slot: returns to the pool when dropped.
pub(super) type Slot<K> = managed::Object<SlotManager<K>>;

/// One slot: while it is held, its uid runs nothing but the holder's sandbox.
pub(super) struct SlotState<S> {
    pub index: usize,
    pub uid: u32,
    /// The slot's warm spare, if one is ready (see `warm`). Declared before the guard: a
    /// dropped slot kills its spare before its index is free again.
    pub spare: Option<S>,
    _index: IndexGuard,
}

/// The slot indices no slot holds.
struct FreeIndices {
    /// A std Mutex: held for a push or a pop, never across an await.
    list: Mutex<Vec<usize>>,
    returned: Notify,
}

impl FreeIndices {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A free index; waits for one being given back (see the module docs).
    async fn take(self: &Arc<Self>) -> IndexGuard {
        loop {
            if let Some(index) = self.list().pop() {
                return IndexGuard {
                    index,
                    free: Arc::clone(self),
                };
            }
            // notify_one keeps a permit when nobody waits: a return between the pop above
            // and this wait is not missed.
            self.returned.notified().await;
        }
    }
}

/// Gives its index back when dropped, however its slot ends (even one whose making was
/// cancelled half-way).
struct IndexGuard {
    index: usize,
    free: Arc<FreeIndices>,
}

impl Drop for IndexGuard {
    fn drop(&mut self) {
        self.free.list().push(self.index);
        self.free.returned.notify_one();
    }
}

pub(super) struct SlotManager<K> {
    uid_base: u32,
    free: Arc<FreeIndices>,
    keeper: Option<Arc<K>>,
}

impl<K: Keeper> managed::Manager for SlotManager<K> {
    type Type = SlotState<K::Spare>;
    type Error = io::Error;

    async fn create(&self) -> Result<SlotState<K::Spare>, io::Error> {
        // deadpool creates only while it holds fewer than `max_size` slots: an index is free,
        // or being given back by a slot just dropped.
        let guard = self.free.take().await;
        // validate_config checked that uid_base + slots fits in a u32.
        let mut slot = SlotState {
            index: guard.index,
            uid: self.uid_base + guard.index as u32,
            spare: None,
            _index: guard,
        };
        if let Some(keeper) = &self.keeper {
            keeper.keep(&mut slot).await;
        }
        Ok(slot)
    }

    async fn recycle(
        &self,
        slot: &mut SlotState<K::Spare>,
        _: &Metrics,
    ) -> RecycleResult<io::Error> {
        if let Some(keeper) = &self.keeper {
            keeper.keep(slot).await;
        }
        Ok(())
    }
}

/// The pool of `slots` slots running as `uid_base`, `uid_base + 1`, …
pub(super) struct Slots<K: Keeper> {
    pool: managed::Pool<SlotManager<K>>,
    slots: usize,
}

impl<K: Keeper> Slots<K> {
    /// `keeper`: what keeps each slot's spare; `None` without warm sandboxes.
    pub fn new(slots: usize, uid_base: u32, keeper: Option<Arc<K>>) -> Result<Self, SandboxError> {
        let manager = SlotManager {
            uid_base,
            free: Arc::new(FreeIndices {
                // Reversed so that pop() hands out slot 0 first.
                list: Mutex::new((0..slots).rev().collect()),
                returned: Notify::new(),
            }),
            keeper,
        };
        let pool = managed::Pool::builder(manager)
            .max_size(slots)
            .build()
            .map_err(|e| SandboxError::Config(format!("the slot pool: {e}")))?;
        Ok(Self { pool, slots })
    }

    /// Waits for a free slot (with its spare, when warm).
    pub async fn get(&self) -> Result<Slot<K>, SandboxError> {
        self.pool.get().await.map_err(|e| SandboxError::Prepare {
            context: "taking a sandbox slot",
            source: io::Error::other(e.to_string()),
        })
    }

    /// Every slot, once each is free: for the start-up fill, `settle` and shutdown.
    pub async fn all(&self) -> Result<Vec<Slot<K>>, SandboxError> {
        let mut held = Vec::with_capacity(self.slots);
        for _ in 0..self.slots {
            held.push(self.get().await?);
        }
        Ok(held)
    }

    /// The slots free right now, without waiting (those running a job are left alone).
    pub async fn idle(&self) -> Vec<Slot<K>> {
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let mut held = Vec::with_capacity(self.slots);
        while let Ok(slot) = self.pool.timeout_get(&now).await {
            held.push(slot);
        }
        held
    }
}
