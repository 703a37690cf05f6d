//! Deciding what the pool should do: a pure function of a snapshot. The reconciler reads the
//! snapshot from Redis, calls [`plan`], then acts; it is never told why it ran, so the plan is
//! computed from state alone and running it twice does no harm.
//!
//! Everything that decides is an input here, so a table of snapshots tests it: the VMs, the
//! formula's answer, the creates still running on this leader, whether the provider's create
//! pause lets creates out, and whether this pool's size is managed at all.
//!
//! # Rules, in order
//! 1. A Ready or Draining VM whose heartbeat is older than `heartbeat_timeout` is failed (its
//!    games move, its unfinished executions are queued again); a Provisioning or Booting VM
//!    older than `boot_timeout` is failed too (and replaced by rule 3, since it no longer
//!    counts), unless its create is still running here (a slow provider is not a dead VM).
//!    Dead VMs are deleted at the provider.
//! 2. The target is the desired size, or `min_vms` once the pool has been idle (no games, none
//!    pending, none reserved) for `idle_timeout`: scale to zero.
//!    A pool whose size is not managed (provider `none`: VMs are started elsewhere) keeps the
//!    size it has after rule 1: nothing is created or drained.
//! 3. Scale up at once: Provisioning, Booting and Ready VMs count as capacity (coming or here);
//!    Draining VMs are taken back first (they are warm), then new VMs are created, at most
//!    `max_creates_per_pass` per pass (the rest next pass) and as many as the create gate
//!    lets out: none while creates are paused after a failure, one at a time while a probe
//!    after a pause has not succeeded yet.
//! 4. Scale down only after the target stayed lower for `scale_down_delay` (or at once when
//!    the idle timeout made it so): VMs not yet Ready go first (they hold nothing), then the
//!    Ready VMs with the fewest games are drained (they take no new games).
//! 5. A Draining VM with no games and nothing running is retired; one draining longer than
//!    `drain_timeout` is retired with its games moved first. Retiring re-checks atomically in
//!    Redis that nothing runs on it and no game was placed on it since.
//!
//! # Example
//! 3 VMs Ready with 8, 2 and 0 games, desired 2, lower for 301 s with a 300 s delay: the VM with
//! 0 games is drained; next pass it is retired (empty), and the pool settles at 2.

use std::collections::HashSet;

use warmpool_core::model::VmState;
use warmpool_core::store::vms::VmRecord;

/// Whether creates may go out now (see `control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateGate {
    Open,
    /// After a pause, until a create succeeds: one at a time.
    Probe,
    /// Paused after a failure, or a probe is already out.
    Closed,
}

/// What the reconciler observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now_ms: u64,
    /// Every VM record the leader can read (one it cannot is left out, and left alone).
    pub vms: Vec<VmRecord>,
    /// The formula's answer (already clamped to min..max).
    pub desired: u32,
    /// Since when the pool has had no game, none pending and none reserved; `None`: busy.
    pub idle_since_ms: Option<u64>,
    /// Since when the target has been below the live size (kept by the reconciler between
    /// passes from [`Plan::below_since_ms`]).
    pub below_since_ms: Option<u64>,
    /// VMs the provider no longer runs (see [`super::inventory`]): failed at once.
    pub lost: Vec<String>,
    /// VMs whose create is still running on this leader: not failed for their boot time.
    pub creating: HashSet<String>,
    /// Whether creates may go out.
    pub gate: CreateGate,
    /// Whether this pool's size is managed here (`false` with provider `none`).
    pub manage_size: bool,
}

/// Operator settings of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanParams {
    pub min_vms: u32,
    pub scale_down_delay_ms: u64,
    pub drain_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub boot_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub max_creates_per_pass: u32,
}

/// Why a VM is failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    HeartbeatLost,
    BootTimeout,
    /// The provider no longer runs its instance (preempted, deleted behind our back).
    LostAtProvider,
    /// The provider could not create it.
    CreateFailed,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::HeartbeatLost => "heartbeat_lost",
            FailReason::BootTimeout => "boot_timeout",
            FailReason::LostAtProvider => "lost_at_provider",
            FailReason::CreateFailed => "create_failed",
        }
    }
}

/// One step for the reconciler to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mark dead, move its games, queue its unfinished executions again.
    Fail { vm_id: String, reason: FailReason },
    /// Delete a dead VM at the provider and forget it.
    Delete { vm_id: String },
    /// Take a draining VM back into service.
    Undrain { vm_id: String },
    /// Create this many new VMs.
    Create { count: u32 },
    /// Stop placing games on it.
    Drain { vm_id: String },
    /// Delete it once Redis confirms (atomically) that nothing runs on it; with `evict`, its
    /// games are moved first.
    Retire { vm_id: String, evict: bool },
}

/// What to do, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub target: u32,
    pub live: u32,
    pub actions: Vec<Action>,
    /// Human-readable reason of the scaling decision (shown by `GET /v1/pool`).
    pub reason: String,
    /// Carry into the next snapshot.
    pub below_since_ms: Option<u64>,
}

fn is_coming_or_ready(state: VmState) -> bool {
    matches!(
        state,
        VmState::Provisioning | VmState::Booting | VmState::Ready
    )
}

pub fn plan(s: &Snapshot, p: &PlanParams) -> Plan {
    let mut actions = Vec::new();
    let mut failed: Vec<&str> = Vec::new();

    // 1. Failures and dead VMs.
    for vm in &s.vms {
        let age = |since: u64| s.now_ms.saturating_sub(since);
        let reason = match vm.state {
            _ if vm.state != VmState::Dead && s.lost.contains(&vm.vm_id) => {
                Some(FailReason::LostAtProvider)
            }
            VmState::Ready | VmState::Draining => {
                let last = vm.heartbeat_ms.unwrap_or(vm.state_since_ms);
                (age(last) > p.heartbeat_timeout_ms).then_some(FailReason::HeartbeatLost)
            }
            VmState::Provisioning | VmState::Booting => (age(vm.created_ms) > p.boot_timeout_ms
                && !s.creating.contains(&vm.vm_id))
            .then_some(FailReason::BootTimeout),
            VmState::Dead => {
                actions.push(Action::Delete {
                    vm_id: vm.vm_id.clone(),
                });
                None
            }
        };
        if let Some(reason) = reason {
            actions.push(Action::Fail {
                vm_id: vm.vm_id.clone(),
                reason,
            });
            failed.push(&vm.vm_id);
        }
    }
    let alive = |vm: &&VmRecord| !failed.contains(&vm.vm_id.as_str());

    let live: Vec<&VmRecord> = s
        .vms
        .iter()
        .filter(alive)
        .filter(|vm| is_coming_or_ready(vm.state))
        .collect();
    let live_n = live.len() as u32;

    // 2. The target.
    let idle_for = s.idle_since_ms.map(|t| s.now_ms.saturating_sub(t));
    let idle = s.manage_size && idle_for.is_some_and(|d| d >= p.idle_timeout_ms);
    let target = if !s.manage_size {
        live_n
    } else if idle {
        p.min_vms
    } else {
        s.desired.max(p.min_vms)
    };
    let mut below_since_ms = None;
    let mut reason = format!("steady: {live_n} VMs, target {target}");

    if target > live_n {
        // 3. Scale up: take draining VMs back first (most games first: they are busiest).
        let mut need = target - live_n;
        let mut draining: Vec<&VmRecord> = s
            .vms
            .iter()
            .filter(alive)
            .filter(|vm| vm.state == VmState::Draining)
            .collect();
        draining.sort_by(|a, b| b.games.cmp(&a.games).then(a.vm_id.cmp(&b.vm_id)));
        for vm in draining.into_iter().take(need as usize) {
            actions.push(Action::Undrain {
                vm_id: vm.vm_id.clone(),
            });
            need -= 1;
        }
        let gate = match s.gate {
            CreateGate::Open => u32::MAX,
            CreateGate::Probe => 1,
            CreateGate::Closed => 0,
        };
        let create = need.min(p.max_creates_per_pass).min(gate);
        if create > 0 {
            actions.push(Action::Create { count: create });
        }
        reason = format!(
            "scale up: target {target} > {live_n} live VMs (formula {})",
            s.desired
        );
    } else if target < live_n {
        // 4. Scale down, after the delay (or at once when idle).
        let since = s.below_since_ms.unwrap_or(s.now_ms);
        below_since_ms = Some(since);
        let waited = s.now_ms.saturating_sub(since);
        if idle || waited >= p.scale_down_delay_ms {
            let mut order = live.clone();
            // Not-yet-Ready first, then fewest games, fewest running, newest.
            order.sort_by(|a, b| {
                let rank = |vm: &VmRecord| u8::from(vm.state == VmState::Ready);
                rank(a)
                    .cmp(&rank(b))
                    .then(a.games.cmp(&b.games))
                    .then(a.running.cmp(&b.running))
                    .then(b.created_ms.cmp(&a.created_ms))
                    .then(a.vm_id.cmp(&b.vm_id))
            });
            for vm in order.into_iter().take((live_n - target) as usize) {
                if vm.state == VmState::Ready {
                    actions.push(Action::Drain {
                        vm_id: vm.vm_id.clone(),
                    });
                } else {
                    actions.push(Action::Retire {
                        vm_id: vm.vm_id.clone(),
                        evict: false,
                    });
                }
            }
            reason = if idle {
                format!(
                    "scale to {target}: idle for {} s",
                    idle_for.unwrap_or(0) / 1000
                )
            } else {
                format!(
                    "scale down: target {target} < {live_n} live VMs for {} s",
                    waited / 1000
                )
            };
        } else {
            reason = format!(
                "holding {live_n} VMs: target {target} for {} s of the {} s scale-down delay",
                waited / 1000,
                p.scale_down_delay_ms / 1000
            );
        }
    }

    // 5. Retire drained VMs (unless rule 3 took them back).
    let undrained: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Undrain { vm_id } => Some(vm_id.clone()),
            _ => None,
        })
        .collect();
    for vm in s.vms.iter().filter(alive) {
        if vm.state != VmState::Draining || undrained.contains(&vm.vm_id) {
            continue;
        }
        if vm.games == 0 && vm.running == 0 {
            actions.push(Action::Retire {
                vm_id: vm.vm_id.clone(),
                evict: false,
            });
        } else if s.now_ms.saturating_sub(vm.state_since_ms) > p.drain_timeout_ms {
            actions.push(Action::Retire {
                vm_id: vm.vm_id.clone(),
                evict: true,
            });
        }
    }

    Plan {
        target,
        live: live_n,
        actions,
        reason,
        below_since_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn params() -> PlanParams {
        PlanParams {
            min_vms: 0,
            scale_down_delay_ms: 300_000,
            drain_timeout_ms: 600_000,
            idle_timeout_ms: 900_000,
            boot_timeout_ms: 180_000,
            heartbeat_timeout_ms: 15_000,
            max_creates_per_pass: 10,
        }
    }

    fn vm(id: &str, state: VmState, games: u32) -> VmRecord {
        VmRecord {
            vm_id: id.into(),
            state,
            games,
            capacity: 8,
            running: 0,
            created_ms: NOW - 60_000,
            heartbeat_ms: Some(NOW - 1_000),
            state_since_ms: NOW - 60_000,
            languages: Vec::new(),
        }
    }

    fn snap(vms: Vec<VmRecord>, desired: u32) -> Snapshot {
        Snapshot {
            now_ms: NOW,
            vms,
            desired,
            idle_since_ms: None,
            below_since_ms: None,
            lost: Vec::new(),
            creating: HashSet::new(),
            gate: CreateGate::Open,
            manage_size: true,
        }
    }

    #[test]
    fn scale_up_counts_coming_vms_and_creates_the_rest() {
        let s = snap(
            vec![
                vm("a", VmState::Ready, 8),
                vm("b", VmState::Provisioning, 0),
            ],
            5,
        );
        let p = plan(&s, &params());
        assert_eq!(p.actions, vec![Action::Create { count: 3 }]);
        assert_eq!((p.target, p.live), (5, 2));
    }

    #[test]
    fn a_vm_lost_at_the_provider_is_failed_and_replaced_in_the_same_pass() {
        let mut s = snap(
            vec![vm("a", VmState::Ready, 8), vm("b", VmState::Ready, 2)],
            2,
        );
        s.lost = vec!["a".into()];
        let p = plan(&s, &params());
        assert_eq!(
            p.actions,
            vec![
                Action::Fail {
                    vm_id: "a".into(),
                    reason: FailReason::LostAtProvider
                },
                Action::Create { count: 1 }
            ]
        );
    }

    #[test]
    fn scale_up_takes_draining_vms_back_before_creating() {
        let s = snap(
            vec![vm("a", VmState::Ready, 8), vm("d", VmState::Draining, 3)],
            3,
        );
        let p = plan(&s, &params());
        assert_eq!(
            p.actions,
            vec![
                Action::Undrain { vm_id: "d".into() },
                Action::Create { count: 1 }
            ]
        );
    }

    #[test]
    fn creates_are_capped_per_pass() {
        let p = plan(&snap(vec![], 100), &params());
        assert_eq!(p.actions, vec![Action::Create { count: 10 }]);
    }

    #[test]
    fn scale_down_waits_for_the_delay_then_drains_the_emptiest() {
        let vms = vec![
            vm("a", VmState::Ready, 8),
            vm("b", VmState::Ready, 2),
            vm("c", VmState::Ready, 0),
        ];
        let mut s = snap(vms, 2);
        let first = plan(&s, &params());
        assert!(first.actions.is_empty(), "{first:?}");
        assert_eq!(first.below_since_ms, Some(NOW));
        s.below_since_ms = Some(NOW - 301_000);
        let later = plan(&s, &params());
        assert_eq!(later.actions, vec![Action::Drain { vm_id: "c".into() }]);
    }

    #[test]
    fn scale_down_never_drains_a_vm_with_games_before_an_emptier_one() {
        let mut s = snap(
            vec![
                vm("busy", VmState::Ready, 5),
                vm("quiet", VmState::Ready, 1),
                vm("new", VmState::Booting, 0),
            ],
            1,
        );
        s.below_since_ms = Some(NOW - 400_000);
        let p = plan(&s, &params());
        assert_eq!(
            p.actions,
            vec![
                Action::Retire {
                    vm_id: "new".into(),
                    evict: false
                },
                Action::Drain {
                    vm_id: "quiet".into()
                }
            ]
        );
    }

    #[test]
    fn a_target_back_up_resets_the_scale_down_clock() {
        let mut s = snap(vec![vm("a", VmState::Ready, 1)], 1);
        s.below_since_ms = Some(NOW - 100_000);
        assert_eq!(plan(&s, &params()).below_since_ms, None);
    }

    #[test]
    fn an_idle_pool_scales_to_min_at_once() {
        let mut s = snap(
            vec![vm("a", VmState::Ready, 0), vm("b", VmState::Ready, 0)],
            1,
        );
        s.idle_since_ms = Some(NOW - 900_001);
        let p = plan(&s, &params());
        assert_eq!(p.target, 0);
        let mut drained: Vec<_> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Drain { vm_id } => vm_id.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        drained.sort();
        assert_eq!(drained, vec!["a", "b"]);
        assert!(p.reason.contains("idle"), "{}", p.reason);
        // Not idle long enough: the formula's target holds.
        s.idle_since_ms = Some(NOW - 1_000);
        assert_eq!(plan(&s, &params()).target, 1);
    }

    #[test]
    fn drained_vms_are_retired_when_empty_or_evicted_after_the_timeout() {
        let mut empty = vm("empty", VmState::Draining, 0);
        empty.state_since_ms = NOW - 10_000;
        let mut stuck = vm("stuck", VmState::Draining, 2);
        stuck.state_since_ms = NOW - 600_001;
        let mut running = vm("running", VmState::Draining, 0);
        running.running = 1;
        let mut s = snap(vec![vm("a", VmState::Ready, 1), empty, stuck, running], 1);
        s.below_since_ms = Some(NOW);
        let p = plan(&s, &params());
        assert_eq!(
            p.actions,
            vec![
                Action::Retire {
                    vm_id: "empty".into(),
                    evict: false
                },
                Action::Retire {
                    vm_id: "stuck".into(),
                    evict: true
                },
            ]
        );
    }

    #[test]
    fn lost_heartbeats_and_slow_boots_fail_the_vm_and_it_is_replaced() {
        let mut silent = vm("silent", VmState::Ready, 3);
        silent.heartbeat_ms = Some(NOW - 16_000);
        let mut slow = vm("slow", VmState::Provisioning, 0);
        slow.created_ms = NOW - 181_000;
        let p = plan(
            &snap(vec![silent, slow, vm("dead", VmState::Dead, 0)], 2),
            &params(),
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Fail {
                    vm_id: "silent".into(),
                    reason: FailReason::HeartbeatLost
                },
                Action::Fail {
                    vm_id: "slow".into(),
                    reason: FailReason::BootTimeout
                },
                Action::Delete {
                    vm_id: "dead".into()
                },
                Action::Create { count: 2 },
            ]
        );
    }

    #[test]
    fn a_vm_still_being_created_here_is_not_failed_for_its_boot_time() {
        let mut slow = vm("slow", VmState::Provisioning, 0);
        slow.created_ms = NOW - 181_000;
        let mut s = snap(vec![slow], 1);
        s.creating.insert("slow".into());
        assert!(plan(&s, &params()).actions.is_empty());
        s.creating.clear();
        assert_eq!(
            plan(&s, &params()).actions[0],
            Action::Fail {
                vm_id: "slow".into(),
                reason: FailReason::BootTimeout
            }
        );
    }

    #[test]
    fn the_create_gate_caps_creates() {
        let cases = [
            (CreateGate::Open, Some(5)),
            (CreateGate::Probe, Some(1)),
            (CreateGate::Closed, None),
        ];
        for (gate, created) in cases {
            let mut s = snap(vec![], 5);
            s.gate = gate;
            let p = plan(&s, &params());
            let count = p.actions.iter().find_map(|a| match a {
                Action::Create { count } => Some(*count),
                _ => None,
            });
            assert_eq!(count, created, "{gate:?}");
            assert_eq!(p.target, 5, "{gate:?}: the target is the formula's still");
        }
    }

    #[test]
    fn an_unmanaged_pool_fails_dead_vms_but_neither_creates_nor_drains() {
        let mut silent = vm("silent", VmState::Ready, 3);
        silent.heartbeat_ms = Some(NOW - 16_000);
        let mut s = snap(
            vec![
                silent,
                vm("a", VmState::Ready, 0),
                vm("b", VmState::Ready, 0),
            ],
            9,
        );
        s.manage_size = false;
        s.idle_since_ms = Some(0);
        let p = plan(&s, &params());
        assert_eq!(
            p.actions,
            vec![Action::Fail {
                vm_id: "silent".into(),
                reason: FailReason::HeartbeatLost
            }]
        );
        assert_eq!((p.target, p.live), (2, 2));
        // The formula asking for fewer changes nothing either.
        s.desired = 0;
        s.below_since_ms = Some(0);
        assert_eq!(plan(&s, &params()).actions.len(), 1);
    }
}
