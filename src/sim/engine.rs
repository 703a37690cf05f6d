//! The warm pool on a virtual clock: games arrive and end as the trace says, VMs boot in a
//! drawn time, and a reconcile pass runs the real sizing formula and the real planner
//! (`pool::sizing`, `pool::plan`) every tick and whenever a game goes pending.
//!
//! # Expected flow of one pass (as the reconciler does it)
//! 1. The smoothed arrival rate takes the games started since the last pass (`smooth_rate`).
//! 2. `boot_s` is the p90 of the last boots (`boot_p90`), `reserved` comes from the
//!    reservations announced so far (`reserved_now`), each used up by the games started since
//!    the first pass at or after its start (the reconciler's counting). `games` counts every
//!    placed game, Draining VMs' included, as `routing::game_counts` does.
//! 3. `desired` from the formula; `idle_since` (a pool never seen busy has been idle since the
//!    epoch); a [`Snapshot`] of every VM; [`plan`]; its actions applied at once: Create
//!    (Provisioning, Ready after a drawn boot time), Drain, Undrain, Retire (a Draining VM with
//!    games is skipped unless `evict`, as the atomic re-check in Redis would), Fail and Delete
//!    (their games go back to pending; with fresh heartbeats only a boot past the boot timeout
//!    fails).
//! 4. Pending games are placed.
//!
//! # Placement (mirrors `redis/common.lua` pick_vm and `place_pending`)
//! A new game goes to the Ready VM with a free slot and the fewest games (`least-loaded`,
//! ties: lowest id) or the most games (`packed`, ties: highest id), and stays there. With no
//! free slot it is pending, FIFO by arrival, and placed as soon as a slot exists. A game evicted
//! from a VM keeps its place in the queue (Redis orders pending games by their sequence).
//!
//! # Caveats
//! - Executions are instantaneous: `running` is always 0, so a Draining VM is retired as soon
//!   as its last game ends.
//! - Every event at one millisecond is handled in a fixed order: game ends, VMs turning Ready,
//!   game starts, the tick, the sample.
//! - The run ends when the last game ends: VMs still alive are billed up to then, like the
//!   lower bound.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use crate::pool::plan::{plan, Action, CreateGate, PlanParams, Snapshot};
use crate::pool::sizing::{
    boot_p90, count_arrivals, reserved_now, smooth_rate, Reservation, SizingInputs, SizingParams,
};
use warmpool_core::model::VmState;
use warmpool_core::store::games::Placement;
use warmpool_core::store::vms::VmRecord;

use super::rng::Rng;
use super::trace::{Burst, Trace};
use super::{ms, Settings};

/// RNG stream of the pool's boot times (the one-VM-per-game baseline has its own).
pub const BOOT_STREAM: u64 = 1;

/// What the planner's clock reads at the trace's 0 (Unix ms, 2001-09-09): the trace counts
/// from 0, the planner's snapshot from an epoch long before, so that "idle since 0" means idle
/// for ages, as in production. `below_since_ms` and `idle_since_ms` are kept on this clock.
const CLOCK_ORIGIN_MS: u64 = 1_000_000_000_000;

/// The state of the pool at one instant, for the plot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Games between their start and their end (placed or pending).
    pub active_games: u32,
    pub pending_games: u32,
    /// The formula's answer at the last pass.
    pub desired: u32,
    pub ready_vms: u32,
    /// Provisioning + Ready + Draining: the VMs being paid for.
    pub billed_vms: u32,
}

/// What one replay of the pool measured.
#[derive(Debug, Clone, Default)]
pub struct PoolRun {
    pub vm_ms: u64,
    pub vms_created: u32,
    pub peak_vms: u32,
    /// Start → first placement (s) of games outside unannounced bursts.
    pub waits_other_s: Vec<f64>,
    /// Start → first placement (s) of games in unannounced bursts.
    pub waits_unannounced_s: Vec<f64>,
    /// Eviction → placement again (s).
    pub move_waits_s: Vec<f64>,
    pub moves: u32,
    pub executions: u64,
    /// Executions submitted while their game was pending (they wait in its backlog).
    pub executions_queued: u64,
    /// Executions whose game was never placed again before it ended, or which waited in the
    /// backlog longer than the queue timeout (they end `expired`).
    pub executions_lost: u64,
    pub games_never_placed: u32,
    pub passes: u64,
    pub series: Vec<Sample>,
    pub end_ms: u64,
}

/// Events at the same millisecond are handled in the order of the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    GameEnd(usize),
    VmReady(usize),
    GameStart(usize),
    Tick,
    Sample,
}

struct Vm {
    state: VmState,
    /// Indexes of the games leased to it.
    games: Vec<usize>,
    created_ms: u64,
    state_since_ms: u64,
    alive: bool,
}

struct Game {
    start_ms: u64,
    end_ms: u64,
    executions: u32,
    unannounced: bool,
    vm: Option<usize>,
    pending_since_ms: Option<u64>,
    placed_once: bool,
}

struct ReservationState {
    reservation: Reservation,
    announced_ms: Option<u64>,
}

struct Pool<'a> {
    s: &'a Settings,
    sizing: SizingParams,
    plan_params: PlanParams,
    games: Vec<Game>,
    vms: Vec<Vm>,
    /// Indexes of the VMs not yet deleted, in creation order.
    alive: Vec<usize>,
    /// Pending games by index (games are sorted by start, so this is FIFO by arrival).
    pending: BTreeSet<usize>,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    rng: Rng,
    rate_per_s: f64,
    rate_count: u64,
    rate_at_ms: u64,
    boot_samples_s: VecDeque<f64>,
    /// On the planner's clock, as the plan returned it.
    below_since_ms: Option<u64>,
    /// On the planner's clock (see [`CLOCK_ORIGIN_MS`]).
    idle_since_ms: Option<u64>,
    ever_busy: bool,
    desired: u32,
    started: usize,
    placed: u32,
    active: u32,
    reservations: Vec<ReservationState>,
    run: PoolRun,
}

/// Replays `trace` against the pool and returns what it measured.
pub fn run_pool(trace: &Trace, s: &Settings) -> PoolRun {
    let mut pool = Pool::new(trace, s);
    pool.run_until(pool.run.end_ms);
    // Bill the VMs still alive up to the end of the trace.
    for &vm in &pool.alive {
        pool.run.vm_ms += pool.run.end_ms.saturating_sub(pool.vms[vm].created_ms);
    }
    pool.run
}

impl<'a> Pool<'a> {
    fn new(trace: &Trace, s: &'a Settings) -> Pool<'a> {
        // Sorted by start (stable), so an index is a game's place in the pending FIFO.
        let mut games: Vec<Game> = trace
            .games
            .iter()
            .map(|g| {
                let start_ms = ms(g.start_s);
                Game {
                    start_ms,
                    end_ms: start_ms + ms(g.duration_s).max(1),
                    executions: g.executions,
                    unannounced: matches!(g.burst, Burst::Unannounced(_)),
                    vm: None,
                    pending_since_ms: None,
                    placed_once: false,
                }
            })
            .collect();
        games.sort_by_key(|g| g.start_ms);
        let reservations = trace
            .reservations
            .iter()
            .map(|r| {
                let start_ms = ms(r.start_s);
                ReservationState {
                    reservation: Reservation {
                        reservation_id: r.id.clone(),
                        games: r.games,
                        start_ms,
                        duration_ms: ms(r.duration_s),
                        arrived: 0,
                        // As the reconciler does: games started since the first pass on or
                        // after its start use the reservation up.
                        starts_at_start: None,
                    },
                    announced_ms: r.announced_s.map(ms),
                }
            })
            .collect();
        let end_ms = games.iter().map(|g| g.end_ms).max().unwrap_or(0);

        let mut pool = Pool {
            s,
            sizing: SizingParams {
                games_per_vm: f64::from(s.games_per_vm),
                headroom_games: s.headroom_games,
                z: s.z,
                min_vms: s.min_vms,
                max_vms: s.max_vms,
            },
            plan_params: PlanParams {
                min_vms: s.min_vms,
                scale_down_delay_ms: ms(s.scale_down_delay_s),
                drain_timeout_ms: ms(s.drain_timeout_s),
                idle_timeout_ms: ms(s.idle_timeout_s),
                boot_timeout_ms: ms(s.boot_timeout_s),
                // Heartbeats are always fresh in the simulation; any timeout will do.
                heartbeat_timeout_ms: 15_000,
                max_creates_per_pass: s.max_creates_per_pass,
            },
            events: BinaryHeap::with_capacity(2 * games.len() + 16),
            games,
            vms: Vec::new(),
            alive: Vec::new(),
            pending: BTreeSet::new(),
            rng: Rng::new(s.seed, BOOT_STREAM),
            rate_per_s: 0.0,
            rate_count: 0,
            rate_at_ms: 0,
            boot_samples_s: VecDeque::new(),
            below_since_ms: None,
            idle_since_ms: None,
            ever_busy: false,
            desired: 0,
            started: 0,
            placed: 0,
            active: 0,
            reservations,
            run: PoolRun {
                end_ms,
                ..PoolRun::default()
            },
        };
        pool.run.executions = pool.games.iter().map(|g| u64::from(g.executions)).sum();
        for (i, g) in pool.games.iter().enumerate() {
            pool.events.push(Reverse((g.start_ms, Event::GameStart(i))));
            pool.events.push(Reverse((g.end_ms, Event::GameEnd(i))));
        }
        pool.events.push(Reverse((0, Event::Tick)));
        pool.events.push(Reverse((0, Event::Sample)));
        pool
    }

    /// Handles every event up to `until_ms`, included.
    fn run_until(&mut self, until_ms: u64) {
        let tick_ms = ms(self.s.tick_s).max(1);
        let sample_ms = ms(self.s.sample_s).max(1);
        while let Some(&Reverse((now, event))) = self.events.peek() {
            if now > until_ms {
                break;
            }
            self.events.pop();
            match event {
                Event::GameStart(g) => self.game_starts(g, now),
                Event::GameEnd(g) => self.game_ends(g, now),
                Event::VmReady(vm) => self.vm_ready(vm, now),
                Event::Tick => {
                    self.reconcile(now);
                    self.events.push(Reverse((now + tick_ms, Event::Tick)));
                }
                Event::Sample => {
                    self.sample(now);
                    self.events.push(Reverse((now + sample_ms, Event::Sample)));
                }
            }
        }
    }

    fn game_starts(&mut self, g: usize, now: u64) {
        self.started += 1;
        self.active += 1;
        self.rate_count += 1;
        match self.pick_vm() {
            Some(vm) => self.place(g, vm, now),
            None => {
                self.games[g].pending_since_ms = Some(now);
                self.pending.insert(g);
                // The reconciler is woken when a game goes pending, not only on its tick.
                self.reconcile(now);
            }
        }
    }

    fn game_ends(&mut self, g: usize, now: u64) {
        self.active -= 1;
        if let Some(vm) = self.games[g].vm.take() {
            let games = &mut self.vms[vm].games;
            if let Some(pos) = games.iter().position(|&x| x == g) {
                games.swap_remove(pos);
            }
            self.placed -= 1;
            self.place_pending(now);
        } else if let Some(since) = self.games[g].pending_since_ms.take() {
            // It ends while pending: whatever waits in its backlog is lost.
            self.pending.remove(&g);
            self.account_backlog(g, since, now, None);
            if !self.games[g].placed_once {
                self.run.games_never_placed += 1;
                self.record_wait(g, now);
            }
        }
    }

    fn vm_ready(&mut self, vm: usize, now: u64) {
        let v = &mut self.vms[vm];
        if !v.alive || v.state != VmState::Provisioning {
            return; // retired before it booted
        }
        v.state = VmState::Ready;
        v.state_since_ms = now;
        let boot_s = (now - v.created_ms) as f64 / 1000.0;
        self.boot_samples_s.push_back(boot_s);
        while self.boot_samples_s.len() > self.s.boot_samples.max(1) {
            self.boot_samples_s.pop_front();
        }
        self.place_pending(now);
    }

    fn reconcile(&mut self, now: u64) {
        self.run.passes += 1;
        // As the reconciler does: reservations first, so the games that used one up stay out
        // of the arrival rate (they are counted as `reserved` already).
        let started = self.started as u64;
        let mut reserved_arrivals = 0;
        let known: Vec<Reservation> = self
            .reservations
            .iter_mut()
            .filter(|r| r.announced_ms.is_none_or(|a| a <= now))
            .map(|r| {
                reserved_arrivals += count_arrivals(&mut r.reservation, started, now);
                r.reservation.clone()
            })
            .collect();
        self.rate_count = self.rate_count.saturating_sub(reserved_arrivals);
        if now > self.rate_at_ms {
            let dt_s = (now - self.rate_at_ms) as f64 / 1000.0;
            self.rate_per_s = smooth_rate(
                self.rate_per_s,
                self.rate_count as f64,
                dt_s,
                self.s.rate_half_life_s,
            );
            self.rate_count = 0;
            self.rate_at_ms = now;
        }
        let boot_s = boot_p90(
            self.boot_samples_s.make_contiguous(),
            self.s.boot_fallback_s,
        );
        let reserved = reserved_now(&known, now, ms(boot_s));
        let inputs = SizingInputs {
            games: f64::from(self.placed),
            pending: self.pending.len() as f64,
            reserved,
            arrivals_per_s: self.rate_per_s,
            boot_s,
        };
        self.desired = self.s.formula.desired(&inputs, &self.sizing);
        let busy = self.placed > 0 || !self.pending.is_empty() || reserved > 0.0;
        self.idle_since_ms = match (busy, self.idle_since_ms) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            // As the reconciler: a pool never seen busy has been idle since the epoch, so it
            // starts at min_vms rather than holding headroom until the idle timeout.
            (false, None) if self.ever_busy => Some(now + CLOCK_ORIGIN_MS),
            (false, None) => Some(0),
        };
        self.ever_busy |= busy;

        let snapshot = Snapshot {
            now_ms: now + CLOCK_ORIGIN_MS,
            vms: self.alive.iter().map(|&i| self.view(i, now)).collect(),
            desired: self.desired,
            idle_since_ms: self.idle_since_ms,
            below_since_ms: self.below_since_ms,
            lost: Vec::new(),
            // Creates are instant here and never fail: none in flight, the gate always open.
            creating: Default::default(),
            gate: CreateGate::Open,
            manage_size: true,
        };
        let decided = plan(&snapshot, &self.plan_params);
        self.below_since_ms = decided.below_since_ms;
        for action in decided.actions {
            self.apply(action, now);
        }
        self.place_pending(now);
    }

    fn view(&self, i: usize, now: u64) -> VmRecord {
        let vm = &self.vms[i];
        VmRecord {
            vm_id: vm_id(i),
            state: vm.state,
            games: vm.games.len() as u32,
            capacity: self.s.games_per_vm,
            running: 0,
            created_ms: vm.created_ms + CLOCK_ORIGIN_MS,
            heartbeat_ms: Some(now + CLOCK_ORIGIN_MS),
            state_since_ms: vm.state_since_ms + CLOCK_ORIGIN_MS,
            languages: Vec::new(),
        }
    }

    fn apply(&mut self, action: Action, now: u64) {
        match action {
            Action::Create { count } => {
                for _ in 0..count {
                    self.create_vm(now);
                }
            }
            Action::Drain { vm_id } => self.set_state(&vm_id, VmState::Draining, now),
            Action::Undrain { vm_id } => self.set_state(&vm_id, VmState::Ready, now),
            Action::Retire { vm_id, evict } => {
                let Some(vm) = self.vm_index(&vm_id) else {
                    return;
                };
                if !self.vms[vm].games.is_empty() {
                    if !evict {
                        return; // the atomic re-check refuses: a game is on it
                    }
                    self.evict(vm, now);
                }
                self.delete_vm(vm, now);
            }
            // Not expected here, but handled as the reconciler does.
            Action::Fail { vm_id, .. } | Action::Delete { vm_id } => {
                if let Some(vm) = self.vm_index(&vm_id) {
                    self.evict(vm, now);
                    self.delete_vm(vm, now);
                }
            }
        }
    }

    fn create_vm(&mut self, now: u64) {
        let vm = self.vms.len();
        self.vms.push(Vm {
            state: VmState::Provisioning,
            games: Vec::new(),
            created_ms: now,
            state_since_ms: now,
            alive: true,
        });
        self.alive.push(vm);
        self.run.vms_created += 1;
        self.run.peak_vms = self.run.peak_vms.max(self.alive.len() as u32);
        let boot_ms = ms(self.s.boot.draw(&mut self.rng)).max(1);
        self.events
            .push(Reverse((now + boot_ms, Event::VmReady(vm))));
    }

    fn set_state(&mut self, vm_id: &str, state: VmState, now: u64) {
        if let Some(vm) = self.vm_index(vm_id) {
            self.vms[vm].state = state;
            self.vms[vm].state_since_ms = now;
        }
    }

    fn delete_vm(&mut self, vm: usize, now: u64) {
        let v = &mut self.vms[vm];
        v.alive = false;
        v.state = VmState::Dead;
        self.run.vm_ms += now - v.created_ms;
        self.alive.retain(|&x| x != vm);
    }

    /// Moves the VM's games back to pending (they keep their place in the FIFO).
    fn evict(&mut self, vm: usize, now: u64) {
        for g in std::mem::take(&mut self.vms[vm].games) {
            self.games[g].vm = None;
            self.games[g].pending_since_ms = Some(now);
            self.pending.insert(g);
            self.placed -= 1;
            self.run.moves += 1;
        }
    }

    fn vm_index(&self, vm_id: &str) -> Option<usize> {
        let i: usize = vm_id.strip_prefix("vm-")?.parse().ok()?;
        (i < self.vms.len() && self.vms[i].alive).then_some(i)
    }

    /// The VM [`pick`] chooses among the Ready VMs with a free slot. Ids are zero-padded
    /// creation indexes, so comparing indexes compares ids.
    fn pick_vm(&self) -> Option<usize> {
        let cap = self.s.games_per_vm as usize;
        let free = self
            .alive
            .iter()
            .copied()
            .filter(|&i| self.vms[i].state == VmState::Ready && self.vms[i].games.len() < cap)
            .map(|i| (i, self.vms[i].games.len()));
        pick(free, self.s.placement)
    }

    fn place_pending(&mut self, now: u64) {
        while let Some(&g) = self.pending.first() {
            let Some(vm) = self.pick_vm() else {
                return;
            };
            self.pending.remove(&g);
            self.place(g, vm, now);
        }
    }

    fn place(&mut self, g: usize, vm: usize, now: u64) {
        if let Some(since) = self.games[g].pending_since_ms.take() {
            self.account_backlog(g, since, now, Some(now));
            if self.games[g].placed_once {
                self.run.move_waits_s.push((now - since) as f64 / 1000.0);
            }
        }
        if !self.games[g].placed_once {
            self.games[g].placed_once = true;
            self.record_wait(g, now);
        }
        self.games[g].vm = Some(vm);
        self.vms[vm].games.push(g);
        self.placed += 1;
    }

    fn record_wait(&mut self, g: usize, now: u64) {
        let game = &self.games[g];
        let wait_s = (now - game.start_ms) as f64 / 1000.0;
        if game.unannounced {
            self.run.waits_unannounced_s.push(wait_s);
        } else {
            self.run.waits_other_s.push(wait_s);
        }
    }

    /// Counts the executions submitted while the game was pending in `[from, until)`: queued
    /// in its backlog, and lost if the game was not placed (`placed_at` None) or placed after
    /// they had waited longer than the queue timeout.
    fn account_backlog(&mut self, g: usize, from: u64, until: u64, placed_at: Option<u64>) {
        let game = &self.games[g];
        if game.executions == 0 {
            return;
        }
        let n = f64::from(game.executions);
        let life = (game.end_ms - game.start_ms) as f64;
        let timeout = self.s.queue_timeout_s * 1000.0;
        for k in 0..game.executions {
            let at = game.start_ms as f64 + (f64::from(k) + 0.5) * life / n;
            if at < from as f64 || at >= until as f64 {
                continue;
            }
            self.run.executions_queued += 1;
            let lost = match placed_at {
                None => true,
                Some(p) => p as f64 - at > timeout,
            };
            if lost {
                self.run.executions_lost += 1;
            }
        }
    }

    fn sample(&mut self, now: u64) {
        let count = |state: VmState| {
            self.alive
                .iter()
                .filter(|&&i| self.vms[i].state == state)
                .count() as u32
        };
        self.run.series.push(Sample {
            t_s: now as f64 / 1000.0,
            active_games: self.active,
            pending_games: self.pending.len() as u32,
            desired: self.desired,
            ready_vms: count(VmState::Ready),
            billed_vms: self.alive.len() as u32,
        });
    }
}

/// The simulator's model of the placement rule, whose only home is `pick_vm` in
/// `redis/common.lua` (`tests/it/sim.rs` checks on a real Redis that the two choose alike):
/// among the Ready VMs with a free slot, given as `(id, games)`, least-loaded takes the fewest
/// games and packed the most; ties go to the lowest id (least-loaded) or the highest (packed),
/// the order of a sorted set's members of equal score.
pub fn pick<K: Ord>(free: impl IntoIterator<Item = (K, usize)>, placement: Placement) -> Option<K> {
    let by_load = |a: &(K, usize), b: &(K, usize)| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0));
    let free = free.into_iter();
    match placement {
        Placement::LeastLoaded => free.min_by(by_load),
        Placement::Packed => free.max_by(by_load),
    }
    .map(|(id, _)| id)
}

fn vm_id(i: usize) -> String {
    format!("vm-{i:06}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::trace::TraceGame;

    fn game(start_s: f64, duration_s: f64, executions: u32) -> TraceGame {
        TraceGame {
            start_s,
            duration_s,
            executions,
            burst: Burst::None,
        }
    }

    /// Boots take exactly `boot_s`; no warm buffer beyond the formula's λ·T.
    fn exact(boot_s: f64) -> Settings {
        let mut s = Settings::DEFAULT;
        s.games_per_vm = 2;
        s.headroom_games = 0.0;
        s.z = 0.0;
        s.boot.sd_s = 0.0;
        s.boot.mean_s = boot_s;
        s.boot.max_s = 1000.0;
        s
    }

    fn trace(games: Vec<TraceGame>) -> Trace {
        Trace {
            games,
            reservations: vec![],
        }
    }

    #[test]
    fn a_game_that_never_gets_a_vm_loses_all_its_executions() {
        let mut s = exact(45.0);
        s.max_vms = 0;
        let run = run_pool(&trace(vec![game(0.0, 100.0, 4)]), &s);
        assert_eq!(run.games_never_placed, 1);
        assert_eq!((run.executions_queued, run.executions_lost), (4, 4));
        assert_eq!(run.waits_other_s, vec![100.0]);
        assert_eq!(run.vm_ms, 0);
    }

    #[test]
    fn executions_that_wait_past_the_queue_timeout_are_lost() {
        // The VM boots in 200 s; executions at 25, 75, 125, 175, 225, 275 s (every 50 s).
        // Placed at 200 s: those queued before 80 s waited over 120 s and expired.
        let mut s = exact(200.0);
        s.boot_timeout_s = 1000.0;
        let run = run_pool(&trace(vec![game(0.0, 300.0, 6)]), &s);
        assert_eq!(run.waits_other_s, vec![200.0]);
        assert_eq!(run.executions_queued, 4);
        assert_eq!(run.executions_lost, 2);
    }

    #[test]
    fn a_boot_past_the_boot_timeout_is_failed_and_replaced_until_the_game_ends() {
        // Boots of 200 s never finish within the 180 s boot timeout.
        let run = run_pool(&trace(vec![game(0.0, 300.0, 6)]), &exact(200.0));
        assert_eq!(run.games_never_placed, 1);
        assert_eq!(run.vms_created, 2, "failed at 185 s, replaced at once");
    }

    #[test]
    fn least_loaded_spreads_and_packed_fills() {
        // Two VMs Ready (min_vms 2) before four games arrive, one every 10 s.
        let t = trace(
            (0..4)
                .map(|i| game(100.0 + 10.0 * f64::from(i), 1000.0, 1))
                .collect(),
        );
        let mut s = exact(45.0);
        s.games_per_vm = 4;
        s.min_vms = 2;
        s.max_vms = 2;
        let games_per_vm_at_200_s = |placement| {
            let s = Settings {
                placement,
                ..s.clone()
            };
            let mut pool = Pool::new(&t, &s);
            pool.run_until(200_000);
            let per_vm: Vec<usize> = pool
                .alive
                .iter()
                .map(|&i| pool.vms[i].games.len())
                .collect();
            per_vm
        };
        assert_eq!(games_per_vm_at_200_s(Placement::LeastLoaded), vec![2, 2]);
        // Packed ties go to the highest id (ZRANGE -1 -1), then stay on the fullest VM.
        assert_eq!(games_per_vm_at_200_s(Placement::Packed), vec![0, 4]);
    }
}
