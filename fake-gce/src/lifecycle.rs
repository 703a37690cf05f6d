//! What happens to an instance after the request that changed it was answered: the timers.
//!
//! # Expected flow
//! - Insert: PROVISIONING, operation RUNNING → after `op_delay`: stocked-out zone → operation
//!   DONE with ZONE_RESOURCE_POOL_EXHAUSTED (503), instance gone; quota knob → QUOTA_EXCEEDED
//!   (403), instance gone; otherwise STAGING and operation DONE → after `boot_delay`: RUNNING
//!   and the agent launched.
//! - Delete: STOPPING and the agent told to stop at once → after both the agent is gone and
//!   `op_delay` passed: instance removed, operation DONE.
//!
//! # Guarantees
//! Each timer re-reads the state after its sleep and acts only if the instance is still the
//! same one (same id) in the expected status, so a delete racing an insert, or a name reused
//! after a delete, never gets a stale transition. Timers end on shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::agents::{self, LaunchSpec};
use crate::resources::{region_of, Instance, InstanceStatus, OpError, OpStatus};
use crate::state::{Shared, State};

type Key = (String, String);

/// Runs `work` as a tracked task that stops at shutdown.
pub(crate) fn spawn(shared: &Arc<Shared>, work: impl Future<Output = ()> + Send + 'static) {
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            () = work => {}
            () = cancel.cancelled() => {}
        }
    });
}

/// The insert operation `op_name` for instance `id` at `key`, after it was accepted.
pub(crate) async fn run_insert(shared: Arc<Shared>, op_name: String, key: Key, id: u64) {
    let op_delay = shared.lock().knobs.op_delay;
    tokio::time::sleep(op_delay).await;

    let boot_delay = {
        let mut state = shared.lock();
        let state = &mut *state;
        let still_ours = state
            .instances
            .get(&key)
            .is_some_and(|i| i.id == id && i.status == InstanceStatus::Provisioning);
        let failure = if !still_ours {
            // Deleted (or replaced) meanwhile: the insert itself went through.
            None
        } else if state.knobs.stocked_out_zones.contains(&key.0) {
            state.counters.stockouts += 1;
            Some(stockout_error(&shared.settings.project, &key.0))
        } else if state.knobs.quota_exceeded_zones.contains(&key.0) {
            state.counters.quota_failures += 1;
            Some(quota_error(&key.0))
        } else {
            None
        };
        let failed = failure.is_some();
        if failed {
            state.instances.remove(&key);
        } else if let Some(instance) = state.instances.get_mut(&key).filter(|_| still_ours) {
            instance.status = InstanceStatus::Staging;
        }
        if let Some(op) = state.operations.get_mut(&op_name) {
            op.finish(failure);
        }
        shared.op_changed.notify_waiters();
        if failed || !still_ours {
            return;
        }
        state.knobs.boot_delay
    };

    tokio::time::sleep(boot_delay).await;
    let mut state = shared.lock();
    if let Some(instance) = state
        .instances
        .get_mut(&key)
        .filter(|i| i.id == id && i.status == InstanceStatus::Staging)
    {
        instance.status = InstanceStatus::Running;
        if let Err(err) = launch_agent(&shared, instance) {
            tracing::error!(
                instance = %instance.name,
                error = %err,
                "could not launch the fake VM's agent; the VM stays up without one"
            );
        }
    }
}

/// The delete operation `op_name` of instance `id` at `key`. The caller already set STOPPING
/// and told the agent to stop; `agent_gone` resolves when it has.
pub(crate) async fn run_delete(
    shared: Arc<Shared>,
    op_name: String,
    key: Key,
    id: u64,
    agent_gone: Option<impl Future<Output = ()>>,
) {
    let op_delay = shared.lock().knobs.op_delay;
    let agent_gone = async {
        if let Some(gone) = agent_gone {
            gone.await;
        }
    };
    tokio::join!(agent_gone, tokio::time::sleep(op_delay));

    let mut state = shared.lock();
    if state.instances.get(&key).is_some_and(|i| i.id == id) {
        state.instances.remove(&key);
    }
    finish_ops_on_target(&mut state, id);
    if let Some(op) = state.operations.get_mut(&op_name) {
        op.finish(None);
    }
    shared.op_changed.notify_waiters();
}

/// An instance deleted while its insert was still running: that insert is over too.
fn finish_ops_on_target(state: &mut State, target_id: u64) {
    for op in state.operations.values_mut() {
        if op.target_id == target_id && op.status == OpStatus::Running {
            op.finish(None);
        }
    }
}

/// Launches the agent of a RUNNING instance (when an agent binary is configured). Spawning
/// under the state lock costs a fork+exec but leaves no window in which a delete could miss
/// the agent.
pub(crate) fn launch_agent(shared: &Shared, instance: &mut Instance) -> std::io::Result<()> {
    let Some(bin) = &shared.settings.agent_bin else {
        return Ok(());
    };
    let spec = LaunchSpec {
        bin,
        env: &shared.settings.agent_env,
        metadata_url: format!(
            "{}/metadata/{}/{}/computeMetadata/v1",
            shared.endpoint, instance.zone, instance.name
        ),
    };
    instance.agent = Some(agents::launch(spec, &shared.tracker, &shared.cancel)?);
    Ok(())
}

fn stockout_error(project: &str, zone: &str) -> OpError {
    OpError {
        code: "ZONE_RESOURCE_POOL_EXHAUSTED",
        message: format!(
            "The zone 'projects/{project}/zones/{zone}' does not have enough resources \
             available to fulfill the request.  Try a different zone, or try again later."
        ),
        http_status: 503,
        http_message: "SERVICE UNAVAILABLE",
    }
}

fn quota_error(zone: &str) -> OpError {
    OpError {
        code: "QUOTA_EXCEEDED",
        message: format!(
            "Quota 'CPUS' exceeded.  Limit: 8.0 in region {}.",
            region_of(zone)
        ),
        http_status: 403,
        http_message: "FORBIDDEN",
    }
}
