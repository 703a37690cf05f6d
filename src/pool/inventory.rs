//! Compares what the provider runs with the VM records in Redis: [`compare`] decides (pure),
//! [`Syncer::sync`] lists the provider every `WARMPOOL_PROVIDER_SYNC_INTERVAL_S`, deletes the
//! orphans, resumes unfinished creates and hands the lost VMs to the planner.
//!
//! # Rules
//! - A VM whose agent has registered (Ready or Draining) but whose instance the provider lists
//!   stopped (a preempted Spot VM), or has not listed in two lists running, is **lost**: the
//!   reconciler fails it at once (its games move, its executions are queued again) instead of
//!   waiting for the heartbeat timeout. One missing list entry is not enough: a list is not a
//!   transaction. A Provisioning VM is left to the boot timeout unless its instance is
//!   listed stopped (its create may still be on its way).
//! - A VM whose record the leader cannot read (see `warmpool_core::store::vms::Unreadable`) is
//!   left alone: neither lost nor an orphan.
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
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use warmpool_core::model::VmState;
use warmpool_core::store::vms::{self, VmRecord};
use warmpool_core::store::Store;

use super::control::ProviderControl;
use super::creates::Creates;
use super::leader::Leadership;
use super::plan::CreateGate;
use super::provider::{InstanceState, Provider, VmInstance, VmSpec};

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

/// Entries of `memory` that no longer apply are dropped. `unreadable` are the ids of records
/// that exist but cannot be read.
pub fn compare(
    records: &[VmRecord],
    unreadable: &[String],
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
    let known: HashSet<&str> = records
        .iter()
        .map(|r| r.vm_id.as_str())
        .chain(unreadable.iter().map(String::as_str))
        .collect();
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

/// The leader's inventory syncs: when the last one ran, and what the comparisons remember (the
/// leader's memory: a new leader starts the orphans' grace over, which only delays a delete).
pub struct Syncer {
    interval: Duration,
    orphan_grace_ms: u64,
    memory: Mutex<Memory>,
    last: Mutex<Option<tokio::time::Instant>>,
}

/// What a sync works with.
pub struct Context<'a> {
    pub store: &'a Store,
    pub provider: &'a dyn Provider,
    pub creates: &'a Creates,
    pub leadership: &'a Leadership,
    /// The leadership term the sync runs under: it stops acting once the term is lost.
    pub token: u64,
}

impl Context<'_> {
    fn leading(&self) -> bool {
        self.leadership.token() == Some(self.token)
    }
}

impl Syncer {
    pub fn new(interval: Duration, orphan_grace: Duration) -> Self {
        Syncer {
            interval,
            orphan_grace_ms: u64::try_from(orphan_grace.as_millis()).unwrap_or(u64::MAX),
            memory: Mutex::new(Memory::default()),
            last: Mutex::new(None),
        }
    }

    /// Lists the provider's VMs if a sync is due, deletes orphans past their grace, resumes
    /// unfinished creates, and returns the records to fail as lost. The snapshot's unreadable
    /// records count as known: their instances are left alone.
    pub async fn sync(
        &self,
        cx: &Context<'_>,
        now: u64,
        snapshot: &vms::Snapshot,
        control: &mut ProviderControl,
    ) -> Vec<String> {
        let due = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.interval);
            if due {
                *last = Some(tokio::time::Instant::now());
            }
            due
        };
        if !due {
            return Vec::new();
        }
        // Before the list: a create that ends between the two is then listed, not resumed.
        let creating = cx.creates.in_flight();
        let instances = match cx.provider.list().await {
            Ok(i) => i,
            Err(err) => {
                tracing::warn!(error = %err, "listing the provider's VMs failed");
                control.last_sync_error = Some(err.to_string());
                return Vec::new();
            }
        };
        control.last_sync_error = None;
        let unreadable: Vec<String> = snapshot
            .unreadable
            .iter()
            .map(|u| u.vm_id.clone())
            .collect();
        let found = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            compare(
                &snapshot.vms,
                &unreadable,
                &instances,
                &mut memory,
                now,
                self.orphan_grace_ms,
            )
        };
        control.last_sync_ms = Some(now);
        for vm_id in &found.orphans {
            if !cx.leading() {
                break;
            }
            // The agent may have registered since the records were read: then it is adopted.
            match cx
                .store
                .client()
                .hexists::<bool, _, _>(&cx.store.keys.vm_state, vm_id.as_str())
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
            match cx.provider.delete(vm_id).await {
                Ok(()) => {
                    control.orphans_deleted += 1;
                    self.memory
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
        resume_creates(
            cx,
            &snapshot.vms,
            &instances,
            &creating,
            control.gate(now, creating.len()),
        )
        .await;
        control.vms_lost += found.lost.len() as u64;
        found.lost.into_iter().map(|(id, _)| id).collect()
    }
}

/// Provisioning records with no instance and no create running here: a leader that died or
/// stepped down mid-create left them. They are created again (through the same create gate as
/// new VMs): the instance name and request ids are the record's, so a create that had gone
/// through is found, not repeated.
async fn resume_creates(
    cx: &Context<'_>,
    records: &[VmRecord],
    instances: &[VmInstance],
    creating: &HashSet<String>,
    gate: CreateGate,
) {
    let mut allowed = match gate {
        CreateGate::Open => usize::MAX,
        CreateGate::Probe => 1,
        CreateGate::Closed => return,
    };
    for vm in records {
        if allowed == 0 || !cx.leading() {
            return;
        }
        let listed = instances.iter().any(|i| i.vm_id == vm.vm_id);
        if vm.state != VmState::Provisioning || listed || creating.contains(&vm.vm_id) {
            continue;
        }
        match vms::secret(cx.store, &vm.vm_id).await {
            Ok(secret) => {
                tracing::info!(vm_id = %vm.vm_id, "resuming the create of a provisioning VM");
                cx.creates.spawn(
                    cx.token,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: VmState) -> VmRecord {
        VmRecord {
            vm_id: id.into(),
            state,
            games: 0,
            capacity: 8,
            running: 0,
            created_ms: 0,
            heartbeat_ms: None,
            state_since_ms: 0,
            languages: Vec::new(),
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
            &[],
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
        let inv = compare(&records, &[], &instances, &mut Memory::default(), 0, 0);
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
        assert!(compare(&records, &[], &[], &mut memory, 0, 0)
            .lost
            .is_empty());
        // Back in the next list: forgiven.
        assert!(compare(&records, &[], &here, &mut memory, 0, 0)
            .lost
            .is_empty());
        assert!(compare(&records, &[], &[], &mut memory, 0, 0)
            .lost
            .is_empty());
        let inv = compare(&records, &[], &[], &mut memory, 0, 0);
        assert_eq!(inv.lost.len(), 1);
        assert!(inv.lost[0].1.contains("gone"));
    }

    #[test]
    fn an_orphan_waits_out_its_grace_and_is_forgiven_once_it_registers() {
        let mut seen = Memory::default();
        let orphan = [instance("x-1", InstanceState::Running)];
        assert!(compare(&[], &[], &orphan, &mut seen, 1_000, 5_000)
            .orphans
            .is_empty());
        assert!(compare(&[], &[], &orphan, &mut seen, 5_999, 5_000)
            .orphans
            .is_empty());
        assert_eq!(
            compare(&[], &[], &orphan, &mut seen, 6_000, 5_000).orphans,
            ["x-1"]
        );
        // Its agent registered: a record now exists, the sighting is dropped.
        let inv = compare(
            &[record("x-1", VmState::Ready)],
            &[],
            &orphan,
            &mut seen,
            7_000,
            5_000,
        );
        assert_eq!(inv, Inventory::default());
        assert!(seen.first_seen.is_empty());
        // Seen again later as an orphan: the grace starts over.
        assert!(compare(&[], &[], &orphan, &mut seen, 8_000, 5_000)
            .orphans
            .is_empty());
    }

    #[test]
    fn an_instance_whose_record_cannot_be_read_is_left_alone() {
        let mut seen = Memory::default();
        let instance = [instance("x-1", InstanceState::Running)];
        let unreadable = ["x-1".to_string()];
        for now in [0, 10_000, 1_000_000] {
            let inv = compare(&[], &unreadable, &instance, &mut seen, now, 5_000);
            assert_eq!(inv, Inventory::default(), "at {now}");
        }
        // The same instance with no record at all is an orphan once its grace is over.
        assert!(compare(&[], &[], &instance, &mut seen, 2_000_000, 5_000)
            .orphans
            .is_empty());
        assert_eq!(
            compare(&[], &[], &instance, &mut seen, 2_005_000, 5_000).orphans,
            ["x-1"]
        );
    }
}
