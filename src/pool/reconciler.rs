//! The reconcile loop of the leader: observe → plan → act.
//!
//! # Expected flow
//! Every `WARMPOOL_RECONCILE_INTERVAL_S`, when a game goes pending, and on
//! `POST /v1/pool/reconcile`, the leader reads a snapshot of the pool from Redis, measures the
//! formula's inputs (smoothed arrival rate from the game counter, p90 boot time, reservations),
//! computes the desired size ([`sizing`]), asks the pure planner what to do ([`plan`]), and
//! carries the actions out: fenced VM transitions in Redis, then the provider.
//!
//! # Guarantees
//! - Only the leader acts, and each VM change is fenced by its token: a stale leader's pass
//!   stops at its first `Fenced` answer.
//! - A VM is recorded before it is created, and has at most one instance: the provider
//!   derives the instance name and every request id from the record, and walks zones in a
//!   fixed order, so a retried create, or a new leader resuming a create the old one left
//!   unfinished (a provisioning record with no instance, found by the inventory sync), reaches
//!   the same instance. A leader that loses its term cancels its creates within 100 ms.
//! - A failed or retired VM's games go back to pending (in their original order) and every
//!   execution left on its stream is queued again or, after `WARMPOOL_MAX_ATTEMPTS`
//!   deliveries, ends `failed` with `vm_lost`. The stream is deleted only once empty, so a
//!   leader that dies mid-recovery leaves the rest for the next one.
//! - Creates run in the background (at most `WARMPOOL_CREATE_CONCURRENCY` at once), so a pass
//!   that asks for 100 VMs does not wait for 100 provider operations. A create that fails
//!   fails its record (the next pass replaces it) and pauses creates: a configuration error
//!   for `WARMPOOL_CREATE_PAUSE_S` (doubling with each pause that ends in another failure, up
//!   to 15 min), a stockout everywhere or a passing error for a tenth of that. The creates
//!   still queued when a pause starts are cancelled (their records are resumed later); those
//!   already sent fail on their own without lengthening the pause. After a pause one create
//!   (new or resumed) probes at a time until one succeeds. The failure is shown in
//!   `GET /v1/pool` (`provider.last_error`).
//! - Every `WARMPOOL_PROVIDER_SYNC_INTERVAL_S` the leader lists the provider's VMs and
//!   compares them with the records ([`inventory`]): lost VMs are failed, orphans deleted
//!   after `WARMPOOL_ORPHAN_GRACE_S` (unless their agent registered meanwhile), unfinished
//!   creates resumed. A VM whose create still runs here is not failed for its boot time.
//!
//! # Caveats
//! - Evicting a VM's games scans the pool's game hash (O(games)); it runs only when a VM fails
//!   or a drain times out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::inventory;
use super::leader::Leadership;
use super::plan::{self, Action, FailReason, PlanParams, Snapshot};
use super::provider::{FailureKind, Provider, ProviderError, VmSpec};
use super::sizing::{self, Formula, Reservation, SizingInputs, SizingParams};
use super::vms::{self, Transition, TransitionResult};
use crate::routing::{self, Placement};
use crate::store::scripts::SCRIPTS;
use crate::store::{arg, Store, StoreResult};

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
    pub max_attempts: u32,
    pub queue_timeout_ms: u64,
    pub retention_ms: u64,
    /// Whether this pool's size is managed here. With provider `none` VMs are started
    /// elsewhere: the reconciler then only fails dead VMs and recovers their work.
    pub manage_size: bool,
    pub create_concurrency: usize,
    pub provider_sync_interval: Duration,
    pub orphan_grace_ms: u64,
    /// First pause of creates after a configuration error.
    pub create_pause: Duration,
}

/// Longest pause of creates.
const MAX_CREATE_PAUSE: Duration = Duration::from_secs(15 * 60);

/// What the reconciler last measured and decided, kept in `{wp:P}:ctl` for `GET /v1/pool`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Control {
    pub desired_vms: u32,
    pub inputs: SizingInputs,
    /// Reason of the last scaling action, and when (RFC 3339).
    pub last_scaling: Option<String>,
    pub last_scaling_at: Option<String>,
    /// The planner's current reasoning (also when holding steady).
    pub status: String,
    pub starts: u64,
    pub measured_ms: u64,
    pub below_since_ms: Option<u64>,
    pub idle_since_ms: Option<u64>,
    #[serde(default)]
    pub provider: ProviderControl,
}

/// The provider's health as the leader keeps it (in `{wp:P}:ctl`, so a new leader honours a
/// pause).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderControl {
    /// Creates wait until then (Redis clock, ms).
    pub paused_until_ms: Option<u64>,
    /// The current pause; 0 once a create succeeded.
    pub pause_ms: u64,
    pub last_error: Option<crate::model::ProviderFailure>,
    pub creates_failed: u64,
    pub vms_lost: u64,
    pub orphans_deleted: u64,
    pub last_sync_ms: Option<u64>,
    /// Why the last list of the provider's VMs failed (`None`: it worked).
    #[serde(default)]
    pub last_sync_error: Option<String>,
}

impl ProviderControl {
    /// Records a failed create and, unless a pause is already running (the creates sent
    /// before it fail one after another), starts the next, longer one. Returns whether a
    /// pause started.
    fn failed(&mut self, err: &ProviderError, now_ms: u64, first_pause: Duration) -> bool {
        self.creates_failed += 1;
        let paused = self.paused_until_ms.is_some_and(|t| t > now_ms);
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
        self.last_error = Some(crate::model::ProviderFailure {
            vm_id: err.vm_id.clone(),
            kind: err.kind.as_str().to_string(),
            message: err.message.clone(),
            at: crate::model::rfc3339_ms(now_ms),
        });
        !paused
    }
}

/// Whether creates may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// After a pause, until a create succeeds: one at a time.
    Probe,
    Closed,
}

fn create_gate(p: &ProviderControl, now_ms: u64, in_flight: usize) -> Gate {
    if p.paused_until_ms.is_some_and(|t| t > now_ms) {
        Gate::Closed
    } else if p.pause_ms == 0 {
        Gate::Open
    } else if in_flight == 0 {
        Gate::Probe
    } else {
        Gate::Closed
    }
}

/// A background create's outcome, handed back to the reconcile loop.
struct CreateDone {
    vm_id: String,
    result: Result<(), ProviderError>,
}

/// Creates in flight, run beside the loop.
struct Creates {
    tx: mpsc::UnboundedSender<CreateDone>,
    slots: Arc<Semaphore>,
    /// VM ids whose create runs here.
    in_flight: Arc<Mutex<HashSet<String>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Cancels the creates started since the last pause or change of leadership term: a
    /// pause stops the creates already queued, and a leader that lost its term stops
    /// creating (its successor resumes what is left).
    batch: Mutex<(u64, CancellationToken)>,
}

pub async fn read_control(store: &Store) -> StoreResult<Option<Control>> {
    let raw: Option<String> = store.client().hget(&store.keys.ctl, "state").await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

async fn write_control(store: &Store, control: &Control, formula: &str) -> StoreResult<()> {
    let json = serde_json::to_string(control).unwrap_or_default();
    let _: () = store
        .client()
        .hset(
            &store.keys.ctl,
            [("state", json), ("formula", formula.to_string())],
        )
        .await?;
    Ok(())
}

pub async fn reservations(store: &Store) -> StoreResult<Vec<Reservation>> {
    let all: HashMap<String, String> = store.client().hgetall(&store.keys.reservations).await?;
    let mut out: Vec<Reservation> = all
        .values()
        .filter_map(|raw| serde_json::from_str(raw).ok())
        .collect();
    out.sort_by(|a, b| {
        a.start_ms
            .cmp(&b.start_ms)
            .then(a.reservation_id.cmp(&b.reservation_id))
    });
    Ok(out)
}

/// A reservation as stored: with the game counter at its start, to count its arrivals.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredReservation {
    #[serde(flatten)]
    r: Reservation,
    #[serde(default)]
    starts_at_start: Option<u64>,
}

pub struct Reconciler {
    store: Store,
    provider: Arc<dyn Provider>,
    leadership: Leadership,
    settings: ReconcilerSettings,
    wake: Arc<Notify>,
    creates: Creates,
    done: tokio::sync::Mutex<mpsc::UnboundedReceiver<CreateDone>>,
    /// What the inventory comparisons remember (the leader's memory: a new leader starts the
    /// orphans' grace over, which only delays a delete).
    inventory: Mutex<inventory::Memory>,
    last_sync: Mutex<Option<tokio::time::Instant>>,
}

impl Reconciler {
    pub fn new(
        store: Store,
        provider: Arc<dyn Provider>,
        leadership: Leadership,
        settings: ReconcilerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let creates = Creates {
            tx,
            slots: Arc::new(Semaphore::new(settings.create_concurrency.max(1))),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            batch: Mutex::new((0, CancellationToken::new())),
        };
        Reconciler {
            store,
            provider,
            leadership,
            settings,
            wake,
            creates,
            done: tokio::sync::Mutex::new(rx),
            inventory: Mutex::new(inventory::Memory::default()),
            last_sync: Mutex::new(None),
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
                self.cancel_batch();
                continue;
            };
            if let Err(err) = self.pass(token).await {
                tracing::warn!(error = %err, "reconcile pass failed; retrying next tick");
            }
        }
        // Creates in flight are abandoned: their records stay provisioning, and the next
        // leader resumes them (same instance names and request ids).
        self.creates.cancel.cancel();
        self.creates.tasks.close();
        self.creates.tasks.wait().await;
    }

    /// A background create ended: on failure, fail its record, note the error and pause.
    async fn created(&self, done: CreateDone) -> StoreResult<()> {
        let Some(token) = self.leadership.token() else {
            // No longer leading: the new leader resumes or fails the record.
            return Ok(());
        };
        let now = self.store.now_ms().await?;
        let mut control = read_control(&self.store).await?.unwrap_or_default();
        match done.result {
            Ok(()) => {
                if control.provider.pause_ms == 0 {
                    return Ok(());
                }
                tracing::info!(vm_id = %done.vm_id, "a create succeeded; creates resume");
                control.provider.pause_ms = 0;
                control.provider.paused_until_ms = None;
                write_control(&self.store, &control, self.settings.formula.text()).await?;
            }
            Err(err) => {
                if control
                    .provider
                    .failed(&err, now, self.settings.create_pause)
                {
                    // The creates still queued would meet the same failure: stop them (their
                    // records stay provisioning and are resumed after the pause).
                    self.cancel_batch();
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
                write_control(&self.store, &control, self.settings.formula.text()).await?;
                let fail = Action::Fail {
                    vm_id: done.vm_id,
                    reason: FailReason::CreateFailed,
                };
                match self.act(token, &fail).await {
                    Ok(true) => {
                        routing::place_pending(&self.store, self.settings.placement, None).await?;
                    }
                    Ok(false) => {}
                    Err(ActError::Fenced) => self.leadership.step_down(),
                    Err(ActError::Store(err)) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// Lists the provider's VMs if a sync is due: the records to fail as lost (orphans past
    /// their grace are deleted, unfinished creates resumed, here).
    async fn sync_inventory(
        &self,
        token: u64,
        now: u64,
        records: &[plan::VmView],
        control: &mut ProviderControl,
    ) -> Vec<String> {
        let due = {
            let mut last = self.last_sync.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.settings.provider_sync_interval);
            if due {
                *last = Some(tokio::time::Instant::now());
            }
            due
        };
        if !due || !self.settings.manage_size {
            return Vec::new();
        }
        // Before the list: a create that ends between the two is then listed, not resumed.
        let creating = self.creating();
        let instances = match self.provider.list().await {
            Ok(i) => i,
            Err(err) => {
                tracing::warn!(error = %err, "listing the provider's VMs failed");
                control.last_sync_error = Some(err.to_string());
                return Vec::new();
            }
        };
        control.last_sync_error = None;
        let found = {
            let mut memory = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
            inventory::compare(
                records,
                &instances,
                &mut memory,
                now,
                self.settings.orphan_grace_ms,
            )
        };
        control.last_sync_ms = Some(now);
        for vm_id in &found.orphans {
            if self.leadership.token() != Some(token) {
                break;
            }
            // The agent may have registered since the records were read: then it is adopted.
            match self
                .store
                .client()
                .hexists::<bool, _, _>(&self.store.keys.vm_state, vm_id.as_str())
                .await
            {
                Ok(false) => {}
                Ok(true) => continue,
                Err(err) => {
                    tracing::warn!(vm_id, error = %err, "checking an orphan failed");
                    continue;
                }
            }
            tracing::warn!(
                vm_id,
                "deleting an instance no record knows (its agent never registered)"
            );
            match self.provider.delete(vm_id).await {
                Ok(()) => {
                    control.orphans_deleted += 1;
                    self.inventory
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .first_seen
                        .remove(vm_id);
                }
                Err(err) => tracing::warn!(vm_id, error = %err, "deleting an orphan failed"),
            }
        }
        for (vm_id, why) in &found.lost {
            tracing::warn!(vm_id, why = why.as_str(), "VM lost at the provider");
        }
        self.resume_creates(token, now, records, &instances, &creating, control)
            .await;
        control.vms_lost += found.lost.len() as u64;
        found.lost.into_iter().map(|(id, _)| id).collect()
    }

    /// Provisioning records with no instance and no create running here: a leader that died
    /// or stepped down mid-create left them. They are created again (through the same pause
    /// gate as new VMs): the instance name and request ids are the record's, so a create that
    /// had gone through is found, not repeated.
    async fn resume_creates(
        &self,
        token: u64,
        now: u64,
        records: &[plan::VmView],
        instances: &[super::provider::VmInstance],
        creating: &HashSet<String>,
        control: &ProviderControl,
    ) {
        let mut allowed = match create_gate(control, now, creating.len()) {
            Gate::Open => usize::MAX,
            Gate::Probe => 1,
            Gate::Closed => return,
        };
        for vm in records {
            if allowed == 0 || self.leadership.token() != Some(token) {
                return;
            }
            let listed = instances.iter().any(|i| i.vm_id == vm.vm_id);
            if vm.state != crate::model::VmState::Provisioning
                || listed
                || creating.contains(&vm.vm_id)
            {
                continue;
            }
            match vms::secret(&self.store, &vm.vm_id).await {
                Ok(secret) => {
                    tracing::info!(vm_id = %vm.vm_id, "resuming the create of a provisioning VM");
                    self.spawn_create(
                        token,
                        VmSpec {
                            vm_id: vm.vm_id.clone(),
                            capacity: vm.capacity,
                            secret,
                        },
                    );
                    allowed -= 1;
                }
                Err(err) => {
                    tracing::warn!(vm_id = %vm.vm_id, error = %err, "reading a VM's secret failed")
                }
            }
        }
    }

    /// One observe → plan → act pass under fencing token `token`.
    pub async fn pass(&self, token: u64) -> StoreResult<()> {
        let store = &self.store;
        let k = &store.keys;
        let s = &self.settings;
        let now = store.now_ms().await?;
        let previous = read_control(store).await?.unwrap_or_default();

        // Observe.
        let vms_now = vms::views(store).await?;
        let mut provider_control = previous.provider.clone();
        let lost = self
            .sync_inventory(token, now, &vms_now, &mut provider_control)
            .await;
        let (placed, pending) = routing::game_counts(store).await?;
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
        let (reserved, reserved_arrivals) = self.update_reservations(now, starts, boot_s).await?;
        let arrivals_per_s = if previous.measured_ms == 0 {
            0.0
        } else {
            let dt_s = now.saturating_sub(previous.measured_ms) as f64 / 1000.0;
            // Games that arrived under a reservation are already counted as `reserved`.
            let count = starts
                .saturating_sub(previous.starts)
                .saturating_sub(reserved_arrivals) as f64;
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
            reserved,
            arrivals_per_s,
            boot_s,
        };
        let desired = s.formula.desired(&inputs, &s.sizing);
        let busy = placed + pending > 0 || reserved > 0.0;
        let idle_since_ms = match (busy, previous.idle_since_ms, previous.measured_ms) {
            (true, _, _) => None,
            (false, Some(t), _) => Some(t),
            // A pool that has never been observed idle-to-busy starts idle long ago: a fresh
            // pool with no games starts at min_vms rather than holding headroom for the timeout.
            (false, None, 0) => Some(0),
            (false, None, _) => Some(now),
        };

        // Plan.
        let (desired, idle_since_ms) = if s.manage_size {
            (desired, idle_since_ms)
        } else {
            let live = vms_now
                .iter()
                .filter(|vm| {
                    matches!(
                        vm.state,
                        crate::model::VmState::Provisioning
                            | crate::model::VmState::Booting
                            | crate::model::VmState::Ready
                    )
                })
                .count() as u32;
            (live, None)
        };
        let mut plan_params = s.plan;
        if !s.manage_size {
            plan_params.min_vms = 0;
        }
        let planned = plan::plan(
            &Snapshot {
                now_ms: now,
                vms: vms_now,
                desired,
                idle_since_ms,
                below_since_ms: previous.below_since_ms,
                lost,
            },
            &plan_params,
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
        // After a failed create: nothing until the pause ends, then one probe at a time. A
        // VM whose create still runs here is not failed for its boot time.
        let creating = self.creating();
        let gate = create_gate(&control.provider, now, creating.len());
        let paused = control.provider.paused_until_ms.is_some_and(|t| t > now);
        let mut actions = planned.actions.clone();
        actions.retain(|a| {
            !matches!(a, Action::Fail { vm_id, reason: FailReason::BootTimeout }
                if creating.contains(vm_id))
        });
        for action in &mut actions {
            if let Action::Create { count } = action {
                match gate {
                    Gate::Open => {}
                    Gate::Probe => *count = (*count).min(1),
                    Gate::Closed => *count = 0,
                }
            }
        }
        if paused {
            if let Some(err) = &control.provider.last_error {
                control.status = format!(
                    "{}; creates paused until {} after a {} error: {}",
                    planned.reason,
                    crate::model::rfc3339_ms(control.provider.paused_until_ms.unwrap_or(now)),
                    err.kind,
                    err.message
                );
            }
        }
        let scaled = actions.iter().any(|a| {
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
            control.last_scaling_at = Some(crate::model::rfc3339_ms(now));
            tracing::info!(reason = %planned.reason, actions = ?actions, "reconcile");
        }
        let mut moved_games = false;
        for action in &actions {
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
            routing::place_pending(store, s.placement, None).await?;
        }
        write_control(store, &control, s.formula.text()).await
    }

    /// Counts arrivals against open reservations and drops ended ones. Returns `reserved` and
    /// the arrivals that used reservations up since the last pass.
    async fn update_reservations(
        &self,
        now: u64,
        starts: u64,
        boot_s: f64,
    ) -> StoreResult<(f64, u64)> {
        let k = &self.store.keys;
        let all: HashMap<String, String> = self.store.client().hgetall(&k.reservations).await?;
        let mut open = Vec::new();
        let mut added = 0;
        for (id, raw) in all {
            let Ok(mut stored) = serde_json::from_str::<StoredReservation>(&raw) else {
                continue;
            };
            if now >= stored.r.start_ms + stored.r.duration_ms {
                let _: i64 = self.store.client().hdel(&k.reservations, &id).await?;
                continue;
            }
            let first = stored.starts_at_start.is_none();
            let n = sizing::count_arrivals(&mut stored.r, &mut stored.starts_at_start, starts, now);
            added += n;
            if n > 0 || (first && stored.starts_at_start.is_some()) {
                let json = serde_json::to_string(&stored).unwrap_or_default();
                let _: i64 = self
                    .store
                    .client()
                    .hset(&k.reservations, (id, json))
                    .await?;
            }
            open.push(stored.r);
        }
        Ok((
            sizing::reserved_now(&open, now, (boot_s * 1000.0) as u64),
            added,
        ))
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
                        TransitionResult::Ok { vm_id, .. } => self.spawn_create(
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

    /// The cancellation token of the creates of term `token` (a new one when the term is new).
    fn batch(&self, token: u64) -> CancellationToken {
        let mut batch = self.creates.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.0 != token {
            batch.1.cancel();
            *batch = (token, CancellationToken::new());
        }
        batch.1.clone()
    }

    /// Cancels the creates started so far (queued or waiting for their operation).
    fn cancel_batch(&self) {
        let mut batch = self.creates.batch.lock().unwrap_or_else(|e| e.into_inner());
        batch.1.cancel();
        batch.1 = CancellationToken::new();
    }

    /// VM ids whose create runs here now.
    fn creating(&self) -> HashSet<String> {
        self.creates
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Creates the VM in the background; its outcome comes back to the loop. A crash before it
    /// ends leaves the record provisioning: the next leader's inventory sync resumes it.
    fn spawn_create(&self, token: u64, spec: VmSpec) {
        let provider = self.provider.clone();
        let slots = self.creates.slots.clone();
        let tx = self.creates.tx.clone();
        let cancel = self.creates.cancel.clone();
        let batch = self.batch(token);
        let leadership = self.leadership.clone();
        let in_flight = self.creates.in_flight.clone();
        if !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.vm_id.clone())
        {
            return; // already being created here
        }
        self.creates.tasks.spawn(async move {
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

    /// For a dead VM: queue again what its stream still holds, delete it at the provider,
    /// then forget it. Safe to repeat (a later pass finishes what a crash interrupted).
    async fn bury(&self, token: u64, vm_id: &str) -> Result<(), ActError> {
        requeue_stream(&self.store, vm_id, &self.settings).await?;
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
            .map_err(crate::store::StoreError::from)?;
        if left == 0 {
            let _: i64 = self
                .store
                .client()
                .del(&queue)
                .await
                .map_err(crate::store::StoreError::from)?;
            match vms::transition(&self.store, token, vm_id, Transition::Forget).await? {
                TransitionResult::Fenced => return Err(ActError::Fenced),
                _ => tracing::info!(vm_id, "VM deleted"),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum ActError {
    Fenced,
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for ActError {
    fn from(e: crate::store::StoreError) -> Self {
        ActError::Store(e)
    }
}

/// Moves every execution left on a dead VM's stream back to its game (or fails it).
pub async fn requeue_stream(
    store: &Store,
    vm_id: &str,
    s: &ReconcilerSettings,
) -> StoreResult<u64> {
    let k = &store.keys;
    let dead_queue = k.queue(vm_id);
    let entries: Vec<(String, HashMap<String, String>)> = store
        .client()
        .xrange(&dead_queue, "-", "+", Some(1_000))
        .await?;
    let mut handled = 0;
    for (entry_id, fields) in entries {
        let Some(exec_id) = fields.get("e") else {
            let _: i64 = store.client().xdel(&dead_queue, &entry_id).await?;
            continue;
        };
        let mut expected = String::new();
        for _ in 0..8 {
            let reply = store
                .call(
                    &SCRIPTS.requeue_execution,
                    vec![
                        k.exec(exec_id),
                        k.games.clone(),
                        k.backlog.clone(),
                        k.queued.clone(),
                        k.game_queued.clone(),
                        dead_queue.clone(),
                        k.queue(&expected),
                    ],
                    vec![
                        arg(exec_id.as_str()),
                        arg(entry_id.as_str()),
                        arg(vm_id),
                        arg(expected.as_str()),
                        arg(i64::from(s.max_attempts)),
                        arg(s.queue_timeout_ms as i64),
                        arg(s.retention_ms as i64),
                        arg(k.events.as_str()),
                    ],
                )
                .await?;
            match reply.status(&["requeued", "failed", "cancelled", "skip", "moved"])? {
                "moved" => expected = reply.str(1)?,
                _ => {
                    handled += 1;
                    break;
                }
            }
        }
    }
    Ok(handled)
}
