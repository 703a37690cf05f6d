//! Compares what the provider runs with the VM records in Redis (pure; the reconciler lists
//! and acts).
//!
//! # Rules
//! - A VM whose agent has registered (Ready or Draining) but whose instance the provider lists
//!   stopped (a preempted Spot VM), or has not listed in two lists running, is **lost**: the
//!   reconciler fails it at once (its games move, its executions are queued again) instead of
//!   waiting for the heartbeat timeout. One missing list entry is not enough: a list is not a
//!   transaction. A Provisioning VM is left to the boot timeout unless its instance is
//!   listed stopped (its create may still be on its way).
//! - An instance of the pool with no record is an **orphan**: left by a leader that died
//!   between create and record-keeping, by a failed delete, or by a Redis data loss. Its agent
//!   adopts it by registering (the record then exists); one that has not within the grace
//!   period is deleted.
//!
//! # Example
//! Records `p-1` Ready (also missing from the previous list), `p-2` Provisioning; the provider
//! lists `p-2` Starting and `p-9` Running, first seen 400 s ago with a 300 s grace: `p-1` is
//! lost, `p-9` is deleted.

use std::collections::{HashMap, HashSet};

use super::plan::VmView;
use super::provider::{InstanceState, VmInstance};
use crate::model::VmState;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Records to fail: (vm_id, why).
    pub lost: Vec<(String, String)>,
    /// Instances to delete (orphans past their grace).
    pub orphans: Vec<String>,
}

/// What the comparisons remember between calls.
#[derive(Debug, Default)]
pub struct Memory {
    /// Orphans' first sighting (ms).
    pub first_seen: HashMap<String, u64>,
    /// Registered VMs missing from the last list.
    pub missing: HashSet<String>,
}

/// Entries of `memory` that no longer apply are dropped.
pub fn compare(
    records: &[VmView],
    instances: &[VmInstance],
    memory: &mut Memory,
    now_ms: u64,
    grace_ms: u64,
) -> Inventory {
    let first_seen = &mut memory.first_seen;
    let mut missing_now = HashSet::new();
    let mut out = Inventory::default();
    let by_id: HashMap<&str, &VmInstance> =
        instances.iter().map(|i| (i.vm_id.as_str(), i)).collect();
    for r in records {
        let instance = by_id.get(r.vm_id.as_str());
        let why = match (r.state, instance) {
            (VmState::Ready | VmState::Draining, None) => {
                missing_now.insert(r.vm_id.clone());
                memory
                    .missing
                    .contains(&r.vm_id)
                    .then(|| "its instance is gone at the provider".to_string())
            }
            (
                VmState::Ready | VmState::Draining | VmState::Provisioning | VmState::Booting,
                Some(i),
            ) if i.state == InstanceState::Stopped => Some(format!(
                "its instance stopped at the provider ({})",
                i.detail
            )),
            _ => None,
        };
        if let Some(why) = why {
            out.lost.push((r.vm_id.clone(), why));
        }
    }
    let known: HashSet<&str> = records.iter().map(|r| r.vm_id.as_str()).collect();
    let mut seen_now = HashSet::new();
    for i in instances {
        if known.contains(i.vm_id.as_str()) {
            continue;
        }
        seen_now.insert(i.vm_id.clone());
        let first = *first_seen.entry(i.vm_id.clone()).or_insert(now_ms);
        if now_ms.saturating_sub(first) >= grace_ms {
            out.orphans.push(i.vm_id.clone());
        }
    }
    first_seen.retain(|id, _| seen_now.contains(id));
    memory.missing = missing_now;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: VmState) -> VmView {
        VmView {
            vm_id: id.into(),
            state,
            games: 0,
            capacity: 8,
            running: 0,
            created_ms: 0,
            heartbeat_ms: None,
            state_since_ms: 0,
        }
    }

    fn instance(id: &str, state: InstanceState) -> VmInstance {
        VmInstance {
            vm_id: id.into(),
            state,
            detail: format!("zone/wp-{id}"),
        }
    }

    #[test]
    fn the_worked_example() {
        let mut seen = Memory {
            first_seen: HashMap::from([("p-9".to_string(), 100_000)]),
            missing: HashSet::from(["p-1".to_string()]),
        };
        let inv = compare(
            &[
                record("p-1", VmState::Ready),
                record("p-2", VmState::Provisioning),
            ],
            &[
                instance("p-2", InstanceState::Starting),
                instance("p-9", InstanceState::Running),
            ],
            &mut seen,
            500_000,
            300_000,
        );
        assert_eq!(inv.lost.len(), 1);
        assert_eq!(inv.lost[0].0, "p-1");
        assert_eq!(inv.orphans, ["p-9"]);
    }

    #[test]
    fn a_stopped_instance_is_lost_whatever_the_record_state_but_dead() {
        let records = [
            record("ready", VmState::Ready),
            record("draining", VmState::Draining),
            record("new", VmState::Provisioning),
            record("dead", VmState::Dead),
        ];
        let instances: Vec<_> = records
            .iter()
            .map(|r| instance(&r.vm_id, InstanceState::Stopped))
            .collect();
        let inv = compare(&records, &instances, &mut Memory::default(), 0, 0);
        let lost: Vec<&str> = inv.lost.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(lost, ["ready", "draining", "new"]);
        assert!(inv.lost[0].1.contains("stopped"));
    }

    #[test]
    fn a_provisioning_record_without_an_instance_is_left_to_the_boot_timeout() {
        let inv = compare(
            &[
                record("new", VmState::Provisioning),
                record("dead", VmState::Dead),
            ],
            &[],
            &mut Memory::default(),
            0,
            0,
        );
        assert_eq!(inv, Inventory::default());
    }

    #[test]
    fn a_registered_vm_missing_from_two_lists_in_a_row_is_lost() {
        let mut memory = Memory::default();
        let records = [record("a", VmState::Ready)];
        let here = [instance("a", InstanceState::Running)];
        assert!(compare(&records, &[], &mut memory, 0, 0).lost.is_empty());
        // Back in the next list: forgiven.
        assert!(compare(&records, &here, &mut memory, 0, 0).lost.is_empty());
        assert!(compare(&records, &[], &mut memory, 0, 0).lost.is_empty());
        let inv = compare(&records, &[], &mut memory, 0, 0);
        assert_eq!(inv.lost.len(), 1);
        assert!(inv.lost[0].1.contains("gone"));
    }

    #[test]
    fn an_orphan_waits_out_its_grace_and_is_forgiven_once_it_registers() {
        let mut seen = Memory::default();
        let orphan = [instance("x-1", InstanceState::Running)];
        assert!(compare(&[], &orphan, &mut seen, 1_000, 5_000)
            .orphans
            .is_empty());
        assert!(compare(&[], &orphan, &mut seen, 5_999, 5_000)
            .orphans
            .is_empty());
        assert_eq!(
            compare(&[], &orphan, &mut seen, 6_000, 5_000).orphans,
            ["x-1"]
        );
        // Its agent registered: a record now exists, the sighting is dropped.
        let inv = compare(
            &[record("x-1", VmState::Ready)],
            &orphan,
            &mut seen,
            7_000,
            5_000,
        );
        assert_eq!(inv, Inventory::default());
        assert!(seen.first_seen.is_empty());
        // Seen again later as an orphan: the grace starts over.
        assert!(compare(&[], &orphan, &mut seen, 8_000, 5_000)
            .orphans
            .is_empty());
    }
}
