//! The reconcile loop of the leader: observe → plan → act.
//!
//! # Expected flow
//! Every `WARMPOOL_RECONCILE_INTERVAL_S`, when a game goes pending, and on
//! `POST /v1/pool/reconcile`, the leader reads a snapshot of the pool from Redis, measures the
//! formula's inputs (smoothed arrival rate from the game counter, p90 boot time, reservations:
//! [`super::reservations`]), lists the provider when a sync is due ([`super::inventory`]),
//! computes the desired size ([`super::sizing`]), asks the pure planner what to do
//! ([`super::plan`]: every decision, the create gate of [`super::control`] and the creates in
//! flight included, is made there), and carries the actions out: fenced VM transitions in
//! Redis, then the provider. Creates run in the background ([`super::creates`]) and their
//! outcomes come back to this loop.
//!
//! # Guarantees
//! - Only the leader acts, and each VM change is fenced by its token: a stale leader's pass
//!   stops at its first `Fenced` answer.
//! - A VM is recorded before it is created, and has at most one instance: the provider
//!   derives the instance name and every request id from the record, and walks zones in a
//!   fixed order, so a retried create, or a new leader resuming a create the old one left
//!   unfinished, reaches the same instance.
//! - A failed or retired VM's games go back to pending (in their original order) and every
//!   execution left on its stream is queued again or, after `WARMPOOL_MAX_ATTEMPTS`
//!   deliveries, ends `failed` with `vm_lost`. The stream is deleted only once empty, so a
//!   leader that dies mid-recovery leaves the rest for the next one.
//! - A create that fails fails its record (the next pass replaces it) and pauses creates (the
//!   policy is [`super::control`]'s); the creates still queued are cancelled. The failure is
//!   shown in `GET /v1/pool` (`provider.last_error`).
//! - A VM record the leader cannot read is left alone: not failed, not deleted, not counted.
//!
//! # Caveats
//! - Evicting a VM's games scans the pool's game hash (O(games)); it runs only when a VM fails
//!   or a drain times out.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::control::{self, Control};
use super::creates::{CreateDone, Creates};
use super::inventory::{self, Syncer};
use super::leader::Leadership;
use super::plan::{self, Action, FailReason, PlanParams, Snapshot};
use super::provider::{Provider, VmSpec};
use super::reservations;
use super::sizing::{self, Formula, SizingInputs, SizingParams};
use warmpool_core::store::executions::{self, RequeueParams};
use warmpool_core::store::games::{self, Placement};
use warmpool_core::store::vms::{self, Transition, TransitionResult};
use warmpool_core::store::{Store, StoreError, StoreResult};

/// Settings of the reconciler, from the configuration.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    pub formula: Formula,
    pub sizing: SizingParams,
    pub plan: PlanParams,
    pub games_per_vm: u32,
    pub placement: Placement,
    pub arrival_half_life_s: f64,
    /// Boot time assumed before any VM booted.
    pub default_boot_s: f64,
    /// How a dead VM's executions are queued again.
    pub requeue: RequeueParams,
    /// Whether this pool's size is managed here. With provider `none` VMs are started
    /// elsewhere: the reconciler then only fails dead VMs and recovers their work.
    pub manage_size: bool,
    pub create_concurrency: usize,
    pub provider_sync_interval: Duration,
    pub orphan_grace_ms: u64,
    /// First pause of creates after a configuration error.
    pub create_pause: Duration,
}

pub struct Reconciler {
    store: Store,
    provider: Arc<dyn Provider>,
    leadership: Leadership,
    settings: ReconcilerSettings,
    wake: Arc<Notify>,
    creates: Creates,
    done: tokio::sync::Mutex<mpsc::UnboundedReceiver<CreateDone>>,
    inventory: Syncer,
}

#[derive(Debug)]
enum ActError {
    Fenced,
    Store(StoreError),
}

impl From<StoreError> for ActError {
    fn from(e: StoreError) -> Self {
        ActError::Store(e)
    }
}

impl Reconciler {
    pub fn new(
        store: Store,
        provider: Arc<dyn Provider>,
        leadership: Leadership,
        settings: ReconcilerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        let (creates, done) = Creates::new(
            provider.clone(),
            leadership.clone(),
            settings.create_concurrency,
        );
        let inventory = Syncer::new(
            settings.provider_sync_interval,
            Duration::from_millis(settings.orphan_grace_ms),
        );
        Reconciler {
            store,
            provider,
            leadership,
            settings,
            wake,
            creates,
            done: tokio::sync::Mutex::new(done),
            inventory,
        }
    }

    /// Runs passes on the tick and on wake-ups until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done = self.done.lock().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                Some(result) = done.recv() => {
                    if let Err(err) = self.created(result).await {
                        tracing::warn!(error = %err, "recording a create's outcome failed");
                    }
                    continue;
                }
            }
            let Some(token) = self.leadership.token() else {
                // Not (or no longer) leading: stop creating.
                self.creates.cancel_batch();
                continue;
            };
            if let Err(err) = self.pass(token).await {
                tracing::warn!(error = %err, "reconcile pass failed; retrying next tick");
            }
        }
        // Creates in flight are abandoned: their records stay provisioning, and the next
        // leader resumes them (same instance names and request ids).
        self.creates.stop().await;
    }

    /// A background create ended: on failure, fail its record, note the error and pause.
    async fn created(&self, done: CreateDone) -> StoreResult<()> {
        let Some(token) = self.leadership.token() else {
            // No longer leading: the new leader resumes or fails the record.
            return Ok(());
        };
        let now = self.store.now_ms().await?;
        let mut control = control::read(&self.store).await?.unwrap_or_default();
        let formula = self.settings.formula.text();
        match done.result {
            Ok(()) => {
                if control.provider.succeeded() {
                    tracing::info!(vm_id = %done.vm_id, "a create succeeded; creates resume");
                    control::write(&self.store, &control, formula).await?;
                }
            }
            Err(err) => {
                if control
                    .provider
                    .failed(&err, now, self.settings.create_pause)
                {
                    // The creates still queued would meet the same failure: stop them (their
                    // records stay provisioning and are resumed after the pause).
                    self.creates.cancel_batch();
                }
                tracing::warn!(
                    vm_id = %done.vm_id,
                    kind = err.kind.as_str(),
                    error = %err.message,
                    pause_s = control.provider.pause_ms / 1000,
                    "create failed; pausing creates"
                );
                control.status = format!(
                    "creates paused for {} s after a {} error creating {}: {}",
                    control.provider.pause_ms / 1000,
                    err.kind.as_str(),
                    done.vm_id,
                    err.message
                );
                control::write(&self.store, &control, formula).await?;
                let fail = Action::Fail {
                    vm_id: done.vm_id,
                    reason: FailReason::CreateFailed,
                };
                match self.act(token, &fail).await {
                    Ok(true) => {
                        games::place_pending(&self.store, self.settings.placement, None).await?;
                    }
                    Ok(false) => {}
                    Err(ActError::Fenced) => self.leadership.step_down(),
                    Err(ActError::Store(err)) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// One observe → plan → act pass under fencing token `token`.
    pub async fn pass(&self, token: u64) -> StoreResult<()> {
        let store = &self.store;
        let k = &store.keys;
        let s = &self.settings;
        let now = store.now_ms().await?;
        let previous = control::read(store).await?.unwrap_or_default();

        // Observe.
        let snapshot = vms::snapshot(store).await?;
        for u in &snapshot.unreadable {
            tracing::warn!(vm_id = %u.vm_id, problem = %u.problem, "leaving alone a VM whose record cannot be read");
        }
        let mut provider_control = previous.provider.clone();
        let lost = if s.manage_size {
            let cx = inventory::Context {
                store,
                provider: self.provider.as_ref(),
                creates: &self.creates,
                leadership: &self.leadership,
                token,
            };
            self.inventory
                .sync(&cx, now, &snapshot, &mut provider_control)
                .await
        } else {
            Vec::new()
        };
        let (placed, pending) = games::game_counts(store).await?;
        let starts: u64 = store
            .client()
            .get::<Option<u64>, _>(&k.seq)
            .await?
            .unwrap_or(0);
        let boots_ms: Vec<f64> = store.client().lrange(&k.boots, 0, -1).await?;
        let boot_s = sizing::boot_p90(
            &boots_ms.iter().map(|ms| ms / 1000.0).collect::<Vec<_>>(),
            s.default_boot_s,
        );
        let reserved = reservations::update(store, now, starts, boot_s).await?;
        let arrivals_per_s = if previous.measured_ms == 0 {
            0.0
        } else {
            let dt_s = now.saturating_sub(previous.measured_ms) as f64 / 1000.0;
            // Games that arrived under a reservation are already counted as `reserved`.
            let count = starts
                .saturating_sub(previous.starts)
                .saturating_sub(reserved.arrivals) as f64;
            sizing::smooth_rate(
                previous.inputs.arrivals_per_s,
                count,
                dt_s,
                s.arrival_half_life_s,
            )
        };
        let inputs = SizingInputs {
            games: placed as f64,
            pending: pending as f64,
            reserved: reserved.games,
            arrivals_per_s,
            boot_s,
        };
        let desired = s.formula.desired(&inputs, &s.sizing);
        let busy = placed + pending > 0 || reserved.games > 0.0;
        let idle_since_ms = match (busy, previous.idle_since_ms, previous.measured_ms) {
            (true, _, _) => None,
            (false, Some(t), _) => Some(t),
            // A pool that has never been observed idle-to-busy starts idle long ago: a fresh
            // pool with no games starts at min_vms rather than holding headroom for the timeout.
            (false, None, 0) => Some(0),
            (false, None, _) => Some(now),
        };

        // Plan.
        let creating = self.creates.in_flight();
        let gate = provider_control.gate(now, creating.len());
        let planned = plan::plan(
            &Snapshot {
                now_ms: now,
                vms: snapshot.vms,
                desired,
                idle_since_ms,
                below_since_ms: previous.below_since_ms,
                lost,
                creating,
                gate,
                manage_size: s.manage_size,
            },
            &s.plan,
        );

        // Act.
        let mut control = Control {
            desired_vms: planned.target,
            inputs,
            last_scaling: previous.last_scaling.clone(),
            last_scaling_at: previous.last_scaling_at.clone(),
            status: planned.reason.clone(),
            starts,
            measured_ms: now,
            below_since_ms: planned.below_since_ms,
            idle_since_ms,
            provider: provider_control,
        };
        if control.provider.paused(now) {
            if let Some(err) = &control.provider.last_error {
                control.status = format!(
                    "{}; creates paused until {} after a {} error: {}",
                    planned.reason,
                    warmpool_core::model::rfc3339_ms(
                        control.provider.paused_until_ms.unwrap_or(now)
                    ),
                    err.kind,
                    err.message
                );
            }
        }
        let scaled = planned.actions.iter().any(|a| {
            matches!(
                a,
                Action::Create { count: 1.. }
                    | Action::Drain { .. }
                    | Action::Undrain { .. }
                    | Action::Fail { .. }
            )
        });
        if scaled {
            control.last_scaling = Some(planned.reason.clone());
            control.last_scaling_at = Some(warmpool_core::model::rfc3339_ms(now));
            tracing::info!(reason = %planned.reason, actions = ?planned.actions, "reconcile");
        }
        self.count("reconcile_passes", 1).await;
        for action in &planned.actions {
            let (kind, n) = match action {
                Action::Create { count } => ("create", u64::from(*count)),
                Action::Drain { .. } => ("drain", 1),
                Action::Undrain { .. } => ("undrain", 1),
                Action::Retire { .. } => ("retire", 1),
                Action::Fail { .. } => ("fail", 1),
                Action::Delete { .. } => ("delete", 1),
            };
            if n > 0 {
                self.count(&format!("reconcile_actions|{kind}"), n).await;
            }
        }
        let mut moved_games = false;
        for action in &planned.actions {
            if self.leadership.token() != Some(token) {
                break;
            }
            match self.act(token, action).await {
                Ok(moved) => moved_games |= moved,
                Err(ActError::Fenced) => {
                    self.leadership.step_down();
                    return Ok(());
                }
                Err(ActError::Store(err)) => return Err(err),
            }
        }
        if moved_games {
            games::place_pending(store, s.placement, None).await?;
        }
        control::write(store, &control, s.formula.text()).await
    }

    /// Adds to one of the pool's counters (for /metrics); a failure only costs the figure.
    async fn count(&self, name: &str, n: u64) {
        if let Err(err) = warmpool_core::store::stats::count(&self.store, name, n).await {
            tracing::debug!(error = %err, name, "counting failed");
        }
    }

    /// Carries out one action; `Ok(true)` when games went back to pending.
    async fn act(&self, token: u64, action: &Action) -> Result<bool, ActError> {
        let store = &self.store;
        let transition = |vm_id: String, t: Transition| async move {
            match vms::transition(store, token, &vm_id, t).await? {
                TransitionResult::Fenced => Err(ActError::Fenced),
                other => Ok(other),
            }
        };
        match action {
            Action::Create { count } => {
                for _ in 0..*count {
                    // The agent presents it when it registers: an instance cannot pass
                    // itself off as another VM of the pool.
                    let secret = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    let added = vms::transition_with_secret(
                        store,
                        token,
                        store.pool_name(),
                        Transition::Add {
                            capacity: self.settings.games_per_vm,
                        },
                        &secret,
                    )
                    .await?;
                    match added {
                        TransitionResult::Fenced => return Err(ActError::Fenced),
                        TransitionResult::Ok { vm_id, .. } => self.creates.spawn(
                            token,
                            VmSpec {
                                vm_id,
                                capacity: self.settings.games_per_vm,
                                secret,
                            },
                        ),
                        _ => {}
                    }
                }
                Ok(false)
            }
            Action::Drain { vm_id } => {
                transition(vm_id.clone(), Transition::Drain).await?;
                Ok(false)
            }
            Action::Undrain { vm_id } => {
                transition(vm_id.clone(), Transition::Undrain).await?;
                Ok(false)
            }
            Action::Retire { vm_id, evict } => {
                match transition(vm_id.clone(), Transition::Retire { evict: *evict }).await? {
                    TransitionResult::Ok { moved, .. } => {
                        tracing::info!(vm_id, moved = moved.len(), "retiring VM");
                        self.bury(token, vm_id).await?;
                        Ok(!moved.is_empty())
                    }
                    _ => Ok(false),
                }
            }
            Action::Fail { vm_id, reason } => {
                if let TransitionResult::Ok { moved, .. } =
                    transition(vm_id.clone(), Transition::Fail).await?
                {
                    tracing::warn!(
                        vm_id,
                        reason = reason.as_str(),
                        moved = moved.len(),
                        "VM failed"
                    );
                    self.bury(token, vm_id).await?;
                    return Ok(true);
                }
                Ok(false)
            }
            Action::Delete { vm_id } => {
                self.bury(token, vm_id).await?;
                Ok(true)
            }
        }
    }

    /// For a dead VM: queue again what its stream still holds, delete it at the provider,
    /// then forget it. Safe to repeat (a later pass finishes what a crash interrupted).
    async fn bury(&self, token: u64, vm_id: &str) -> Result<(), ActError> {
        executions::requeue_stream(&self.store, vm_id, self.settings.requeue).await?;
        if let Err(err) = self.provider.delete(vm_id).await {
            tracing::warn!(vm_id, error = %err, "provider delete failed; retrying next pass");
            return Ok(());
        }
        let queue = self.store.keys.queue(vm_id);
        let left: u64 = self
            .store
            .client()
            .xlen(&queue)
            .await
            .map_err(StoreError::from)?;
        if left == 0 {
            let _: i64 = self
                .store
                .client()
                .del(&queue)
                .await
                .map_err(StoreError::from)?;
            match vms::transition(&self.store, token, vm_id, Transition::Forget).await? {
                TransitionResult::Fenced => return Err(ActError::Fenced),
                _ => tracing::info!(vm_id, "VM deleted"),
            }
        }
        Ok(())
    }
}
