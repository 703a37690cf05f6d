//! A fake Compute Engine on loopback, speaking the real Compute Engine v1 REST protocol, so
//! that the official `google-cloud-compute-v1` client, pointed at [`FakeGce::endpoint`] with
//! anonymous credentials, runs its real code paths (requests, retries, pagination, the
//! operation poller). Each fake VM runs a real agent process that reads its own metadata
//! server from the same listener.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use warmpool_fake_gce::{FakeGce, FakeGceConfig};
//! let gce = FakeGce::start(FakeGceConfig {
//!     project: "warmpool-test".into(),
//!     agent_bin: Some("target/debug/warmpool-agent".into()),
//!     ..FakeGceConfig::default()
//! })
//! .await?;
//! // Instances::builder().with_endpoint(gce.endpoint()) …
//! gce.set_stockout("us-central1-a", true);
//! gce.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `lib.rs`: the public handle: start, knobs, inspection, shutdown.
//! - `rest`: the `instances` and zone `operations` routes.
//! - `lifecycle`: the timers behind an operation (PROVISIONING → STAGING → RUNNING, deletes).
//! - `metadata`: the per-instance metadata server the agents read.
//! - `agents`: launching, stopping and reaping each VM's agent process.
//! - `state`: the one mutex-guarded state, knobs and counters.
//! - `resources`: instance and operation records and their JSON.
//! - `filter`: the `filter` expressions of `instances.list`.
//! - `errors`: Google-style error bodies.
//!
//! # Faithful to Compute Engine
//! - Paths, query parameters, camelCase bodies, `Operation` and `Instance` JSON (kind, numeric
//!   string ids, RFC 3339 times, `selfLink`s under `https://www.googleapis.com/compute/v1`).
//! - Error bodies `{"error":{"code","message","errors":[{"message","domain","reason"}]}}`
//!   without `status`, as Compute Engine sends them.
//! - `requestId` idempotency: a repeated insert or delete gets the first operation back;
//!   requestIds must be non-zero UUIDs.
//! - Validation messages name the field (`Invalid value for field 'resource.machineType'`).
//! - Capacity failures arrive where they do on GCE: in the finished operation
//!   (`ZONE_RESOURCE_POOL_EXHAUSTED` with `httpErrorStatusCode` 503, `QUOTA_EXCEEDED` with
//!   403), not in the insert's answer. The instance then disappears.
//! - Lists come in name order, paged by `maxResults` (≤ 500) and `pageToken`, without `items`
//!   when empty. A preempted instance stays listed as TERMINATED.
//! - The metadata server needs `Metadata-Flavor: Google` and answers `instance/zone` as
//!   `projects/<number>/zones/<zone>`.
//!
//! # Simplified
//! - One project (others get 404), any zone name, no regions, no aggregated list, no global
//!   or region operations; instances only (no disks, networks or images as resources: an
//!   image exists unless named in `add_missing_image`).
//! - `filter` knows `name`, `status`, `labels.KEY` with `=`/`!=`, and `labels.KEY:*`, joined
//!   by AND; anything else is a 400 rather than a silently wrong list. `orderBy` is ignored.
//! - No authentication: any or no `Authorization` is accepted; a bearer token only serves to
//!   recognise an instance deleting itself.
//! - A delete always waits for the agent to exit (SIGTERM, SIGKILL after 2 s) and `op_delay`;
//!   a delete of an instance already being deleted gets its own operation that finishes with
//!   the first. `operations/{op}/wait` returns after at most 2 s (GCE's waits up to 2 min).
//! - Request ids are remembered for the fake's lifetime (GCE: a limited time).
//!
//! # What the official client does here (google-cloud-compute-v1 4.1, checked by the tests)
//! - It sends `$alt=json` (percent-encoded as `%24alt`) and, except on operation gets,
//!   `$apiVersion=<date>`; see [`FakeGce::request_log`] for the exact lines.
//! - `poller().until_done()` polls `GET …/operations/{op}` (never `/wait`) and ends with
//!   `Ok(op)` once the operation is DONE, *also when it failed*: callers must look at
//!   `op.error` / `op.http_error_status_code`.
//! - An insert (POST) is retried only with `.with_idempotency(true)` on the request builder;
//!   with a `requestId` set that is safe, and a lost answer then costs no second instance.
//! - It decodes fingerprints as URL-safe base64, so the fake writes them that way, as GCE does.

mod agents;
mod errors;
mod filter;
mod lifecycle;
mod metadata;
mod resources;
mod rest;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

pub use resources::InstanceStatus;
pub use state::{Counters, Method};

use resources::Instance;
use state::{Fault, Settings, Shared, State};

/// How the fake starts. `Default` gives a project `warmpool-test`, short delays for tests,
/// GCE's page size and a handful of common machine types.
#[derive(Debug, Clone)]
pub struct FakeGceConfig {
    /// The only project the fake hosts.
    pub project: String,
    /// What the metadata server answers in `instance/zone` and `project/numeric-project-id`.
    pub project_number: u64,
    /// The agent each VM runs, as `<agent_bin> --from-metadata`; `None` runs no process.
    pub agent_bin: Option<PathBuf>,
    /// Extra environment for the agent (on top of PATH, HOME and `WARMPOOL_METADATA_URL`).
    pub agent_env: Vec<(String, String)>,
    /// How long an operation runs before it is DONE (insert: PROVISIONING; delete: at least
    /// this, and until the agent has gone).
    pub op_delay: Duration,
    /// How long a VM is STAGING, from its insert operation's end to RUNNING.
    pub boot_delay: Duration,
    /// A cap on list pages below GCE's 500, so tests can force pagination.
    pub max_page_size: u32,
    /// Machine types an insert may name (`…/machineTypes/<one of these>`).
    pub known_machine_types: Vec<String>,
}

impl Default for FakeGceConfig {
    fn default() -> Self {
        FakeGceConfig {
            project: "warmpool-test".to_string(),
            project_number: 123_456_789_012,
            agent_bin: None,
            agent_env: Vec::new(),
            op_delay: Duration::from_millis(20),
            boot_delay: Duration::from_millis(50),
            max_page_size: 500,
            known_machine_types: [
                "e2-micro",
                "e2-small",
                "e2-medium",
                "e2-standard-2",
                "e2-standard-4",
                "n2-standard-2",
                "n2-standard-4",
                "c3-standard-4",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// One instance as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub zone: String,
    pub name: String,
    pub id: u64,
    pub status: InstanceStatus,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// The agent's pid (its process group id too), once launched; kept after it exits.
    pub agent_pid: Option<u32>,
    /// The agent's exit code (128 + signal if a signal ended it), once it has exited.
    pub agent_exited: Option<i32>,
}

/// A running fake. Clones are cheap and share it; when the last clone is dropped the fake
/// stops and its agents are terminated (prefer [`FakeGce::shutdown`], which waits politely).
#[derive(Clone)]
pub struct FakeGce {
    owner: Arc<Owner>,
}

/// Held only by `FakeGce` handles (tasks hold `Shared`), so its drop marks the last handle.
struct Owner {
    shared: Arc<Shared>,
}

impl FakeGce {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving. Must run inside a Tokio
    /// runtime (the agents and timers are its tasks).
    pub async fn start(config: FakeGceConfig) -> anyhow::Result<FakeGce> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the fake Compute Engine to 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        if let Some(bin) = &config.agent_bin {
            anyhow::ensure!(bin.is_file(), "agent_bin {} is not a file", bin.display());
        }
        let settings = Settings {
            project: config.project,
            project_number: config.project_number,
            agent_bin: config.agent_bin,
            agent_env: config.agent_env,
            max_page_size: config.max_page_size,
            known_machine_types: config.known_machine_types.into_iter().collect(),
        };
        let shared = Shared::new(
            settings,
            format!("http://127.0.0.1:{port}"),
            State::new(config.op_delay, config.boot_delay),
        );
        let app = rest::router()
            .merge(metadata::router())
            .fallback(rest::fallback)
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                rest::log_request,
            ))
            .with_state(shared.clone());
        let cancel = shared.cancel.clone();
        shared.tracker.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "the fake Compute Engine stopped serving");
            }
        });
        Ok(FakeGce {
            owner: Arc::new(Owner { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// `http://127.0.0.1:PORT`: what `Instances::builder().with_endpoint(…)` takes.
    pub fn endpoint(&self) -> String {
        self.shared().endpoint.clone()
    }

    /// The project the fake hosts.
    pub fn project(&self) -> &str {
        &self.shared().settings.project
    }

    /// From now on, inserts in `zone` fail in their operation with
    /// ZONE_RESOURCE_POOL_EXHAUSTED (checked when the operation finishes).
    pub fn set_stockout(&self, zone: &str, stocked_out: bool) {
        toggle(
            &mut self.shared().lock().knobs.stocked_out_zones,
            zone,
            stocked_out,
        );
    }

    /// From now on, inserts in `zone` fail in their operation with QUOTA_EXCEEDED.
    pub fn set_quota_exceeded(&self, zone: &str, exceeded: bool) {
        toggle(
            &mut self.shared().lock().knobs.quota_exceeded_zones,
            zone,
            exceeded,
        );
    }

    /// Inserts answer 403 forbidden (no `compute.instances.create` permission).
    pub fn set_deny_inserts(&self, deny: bool) {
        self.shared().lock().knobs.deny_inserts = deny;
    }

    /// Inserts whose `disks[].initializeParams.sourceImage` is `image` (or a path or URL
    /// ending in `/<image>`) answer 404.
    pub fn add_missing_image(&self, image: &str) {
        self.shared()
            .lock()
            .knobs
            .missing_images
            .push(image.to_string());
    }

    /// For operations that start from now on.
    pub fn set_op_delay(&self, delay: Duration) {
        self.shared().lock().knobs.op_delay = delay;
    }

    /// For boots that start from now on.
    pub fn set_boot_delay(&self, delay: Duration) {
        self.shared().lock().knobs.boot_delay = delay;
    }

    /// The next `n` requests of kind `method` answer `status` (429 → rateLimitExceeded, 5xx →
    /// backendError) and do nothing else. Faults queue up in the order they were asked for.
    ///
    /// # Panics
    /// If `status` is not an HTTP error status (400–599): a mistake in the test.
    pub fn fail_next(&self, method: Method, n: u32, status: u16) {
        assert!(
            (400..600).contains(&status),
            "fail_next wants an error status, got {status}"
        );
        if n > 0 {
            self.shared().lock().knobs.faults.push(Fault {
                method,
                remaining: n,
                status,
            });
        }
    }

    /// The next `n` inserts are carried out (instance created, operation started) but answer
    /// 503 backendError, as if the response were lost on the way back.
    pub fn lose_next_insert_responses(&self, n: u32) {
        self.shared().lock().knobs.insert_responses_to_lose += n;
    }

    /// A Spot preemption: the agent is SIGKILLed and the instance goes TERMINATED, staying
    /// listed until deleted.
    pub fn preempt(&self, zone: &str, name: &str) -> anyhow::Result<()> {
        let mut state = self.shared().lock();
        let instance = state
            .instances
            .get_mut(&(zone.to_string(), name.to_string()))
            .with_context(|| format!("no instance {zone}/{name} to preempt"))?;
        instance.status = InstanceStatus::Terminated;
        if let Some(agent) = &instance.agent {
            agent.kill();
        }
        state.counters.preemptions += 1;
        Ok(())
    }

    /// Creates a RUNNING instance directly (agent launched), as if someone else had inserted
    /// it: for orphan tests. Not counted in `instances_created`. Must run inside the runtime.
    /// Fails if the instance exists or its agent cannot be started.
    pub fn insert_unmanaged(
        &self,
        zone: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        metadata: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let shared = self.shared();
        let project = &shared.settings.project;
        let machine_type = shared
            .settings
            .known_machine_types
            .first()
            .context("no known machine types")?
            .clone();
        let mut state = shared.lock();
        let key = (zone.to_string(), name.to_string());
        anyhow::ensure!(
            !state.instances.contains_key(&key),
            "instance {zone}/{name} already exists"
        );
        let items: Vec<Value> = metadata
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect();
        let resource: Map<String, Value> = [
            ("name".to_string(), json!(name)),
            (
                "machineType".to_string(),
                json!(format!("zones/{zone}/machineTypes/{machine_type}")),
            ),
            ("labels".to_string(), json!(labels)),
            ("metadata".to_string(), json!({"items": items})),
        ]
        .into_iter()
        .collect();
        let id = state.next_id();
        let mut instance = Instance {
            id,
            zone: zone.to_string(),
            name: name.to_string(),
            status: InstanceStatus::Running,
            resource,
            machine_type_url: format!(
                "{}/projects/{project}/zones/{zone}/machineTypes/{machine_type}",
                resources::API_ROOT
            ),
            labels,
            metadata: metadata.into_iter().collect(),
            creation_timestamp: resources::now_rfc3339(),
            token: rest::new_token(),
            agent: None,
        };
        lifecycle::launch_agent(shared, &mut instance).context("launching the agent")?;
        state.instances.insert(key, instance);
        Ok(())
    }

    /// Every instance, in (zone, name) order.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.shared()
            .lock()
            .instances
            .values()
            .map(|i| InstanceInfo {
                zone: i.zone.clone(),
                name: i.name.clone(),
                id: i.id,
                status: i.status,
                labels: i.labels.clone(),
                metadata: i.metadata.iter().cloned().collect(),
                agent_pid: i.agent.as_ref().map(|a| a.pid),
                agent_exited: i.agent.as_ref().and_then(|a| a.exit_code()),
            })
            .collect()
    }

    /// One instance, if it exists.
    pub fn instance(&self, zone: &str, name: &str) -> Option<InstanceInfo> {
        self.instances()
            .into_iter()
            .find(|i| i.zone == zone && i.name == name)
    }

    /// The most recent requests (up to 10 000), oldest first, each as `METHOD /path?query`
    /// exactly as received: what a test reads to see what a client really sent.
    pub fn request_log(&self) -> Vec<String> {
        self.shared().lock().request_log.iter().cloned().collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared().lock().counters.clone()
    }

    /// How many processes (not zombies) are left in the process groups of the agents of the
    /// instances the fake still has: for tests that check nothing is left behind.
    pub fn live_agent_processes(&self) -> usize {
        let groups: Vec<u32> = self
            .instances()
            .iter()
            .filter_map(|i| i.agent_pid)
            .collect();
        live_processes_in_groups(&groups)
    }

    /// Stops serving, ends the timers, stops every agent (SIGTERM, SIGKILL after 2 s) and
    /// waits for all of it. Idempotent; the fake answers nothing afterwards.
    pub async fn shutdown(&self) {
        let shared = self.shared();
        shared.cancel.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        // The runtime may be going down with this handle, taking the agents' supervisors with
        // it (and `kill_on_drop` reaches only each group's leader): stop the groups from here.
        let groups: Vec<i32> = self
            .shared
            .lock()
            .instances
            .values()
            .filter_map(|i| i.agent.as_ref().map(|a| a.pgid()))
            .collect();
        agents::terminate_groups_blocking(&groups);
    }
}

/// How many processes (not zombies) are in the given process groups: an agent leads its own
/// group, so pass [`InstanceInfo::agent_pid`]s to check an agent and everything it started
/// are gone, also after its instance was deleted.
pub fn live_processes_in_groups(pgids: &[u32]) -> usize {
    let pgids: Vec<i32> = pgids
        .iter()
        .filter_map(|&p| i32::try_from(p).ok())
        .collect();
    agents::live_group_members(&pgids)
}

fn toggle(set: &mut BTreeSet<String>, zone: &str, on: bool) {
    if on {
        set.insert(zone.to_string());
    } else {
        set.remove(zone);
    }
}
