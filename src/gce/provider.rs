//! [`GceProvider`]: the pool's [`Provider`] on Compute Engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use google_cloud_compute_v1::client::Instances;
use google_cloud_compute_v1::model::{instance, operation, Operation};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;
use tokio::time::Instant;

use super::config::{GceSettings, VmMetadata, VM_LABEL};
use super::errors::{classify_http, classify_operation, Failure};
use super::limiter::RateLimiter;
use crate::pool::provider::{
    BoxFuture, FailureKind, InstanceState, Provider, ProviderError, VmInstance, VmSpec,
};

/// Namespace of the deterministic insert request ids (a UUID v5 of project/zone/name/attempt).
const REQUEST_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1f_7d0e_9a51_4d2e_8f3c_77a2_0b5e_c901);
/// One HTTP attempt never waits longer than this (the operation deadline bounds the whole).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_POLL: Duration = Duration::from_secs(5);

/// API calls made, by method (the figures of `warmpool bench gce`).
#[derive(Debug, Default)]
pub struct Calls {
    pub inserts: AtomicU64,
    pub operation_polls: AtomicU64,
    pub deletes: AtomicU64,
    pub lists: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    pub inserts: u64,
    pub operation_polls: u64,
    pub deletes: u64,
    pub lists: u64,
}

pub struct GceProvider {
    settings: GceSettings,
    client: Instances,
    inserts: RateLimiter,
    /// Operation polls and list pages share this budget.
    reads: RateLimiter,
    /// vm_id → the zone its instance is in, learned from creates and lists (a delete tries
    /// every zone when it does not know).
    zones: Mutex<HashMap<String, String>>,
    calls: Calls,
}

/// "Equal jitter", a delay drawn from [d/2, d]: retries of many VMs spread out instead of
/// arriving together, and none comes back sooner than half the backoff.
fn jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
    d.mul_f64(0.5 + r / 2.0)
}

fn message(err: &google_cloud_gax::error::Error) -> String {
    err.status()
        .map(|s| s.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| err.to_string())
}

/// The failure class of a call's error.
fn classify(err: &google_cloud_gax::error::Error) -> Failure {
    let status = err.http_status_code();
    if status.is_none()
        && !(err.is_timeout() || err.is_io() || err.is_connect() || err.is_transport())
    {
        // Not an answer from the API and not a network problem: our own request or
        // credentials are wrong.
        if err.is_authentication() || err.is_serialization() || err.is_binding() {
            return Failure::Config(err.to_string());
        }
    }
    classify_http(status, &message(err))
}

/// Sleeps `d`, but not past `deadline`; `false` when the deadline has passed.
async fn sleep_until_deadline(d: Duration, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    tokio::time::sleep(d.min(deadline - now)).await;
    Instant::now() < deadline
}

impl GceProvider {
    /// Builds the client: Application Default Credentials, or anonymous for a fake endpoint.
    pub async fn new(settings: GceSettings) -> anyhow::Result<GceProvider> {
        let mut builder = Instances::builder();
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if settings.anonymous {
            builder = builder.with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let client = builder.build().await?;
        Ok(GceProvider {
            inserts: RateLimiter::per_minute(settings.max_inserts_per_min),
            reads: RateLimiter::per_minute(settings.max_reads_per_min),
            settings,
            client,
            zones: Mutex::new(HashMap::new()),
            calls: Calls::default(),
        })
    }

    pub fn calls(&self) -> CallCounts {
        CallCounts {
            inserts: self.calls.inserts.load(Ordering::Relaxed),
            operation_polls: self.calls.operation_polls.load(Ordering::Relaxed),
            deletes: self.calls.deletes.load(Ordering::Relaxed),
            lists: self.calls.lists.load(Ordering::Relaxed),
        }
    }

    fn remember_zone(&self, vm_id: &str, zone: &str) {
        self.zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.to_string(), zone.to_string());
    }

    /// Creates the VM in the first zone that can take it.
    ///
    /// The zones are always walked in the configured order, and every insert's request id
    /// depends only on the VM, the zone and the attempt: two creators of one VM (a leader and
    /// its successor, before the first noticed) send the same requests and reach the same
    /// instance. A smarter order (skipping a zone that just stocked out) would let them
    /// diverge into two zones.
    async fn create_vm(&self, spec: &VmSpec) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.settings.operation_timeout;
        let mut full = Vec::new();
        for zone in &self.settings.zones {
            match self.create_in_zone(zone, spec, deadline).await {
                Ok(()) => {
                    self.remember_zone(&spec.vm_id, zone);
                    tracing::info!(vm_id = %spec.vm_id, zone, "instance created");
                    return Ok(());
                }
                Err(Failure::Capacity(m)) => {
                    tracing::warn!(vm_id = %spec.vm_id, zone, reason = %m, "zone cannot take the VM; trying the next zone");
                    full.push(format!("{zone}: {m}"));
                }
                Err(Failure::Config(m)) => {
                    return Err(ProviderError::new(
                        "create",
                        &spec.vm_id,
                        FailureKind::Config,
                        m,
                    ))
                }
                Err(Failure::Transient(m)) => {
                    return Err(ProviderError::new(
                        "create",
                        &spec.vm_id,
                        FailureKind::Transient,
                        m,
                    ))
                }
                Err(Failure::Exists) => return Ok(()),
            }
        }
        Err(ProviderError::new(
            "create",
            &spec.vm_id,
            FailureKind::Capacity,
            format!("no zone could take it: {}", full.join("; ")),
        ))
    }

    /// Inserts the instance in `zone` and waits for its operation. An operation that failed
    /// for a passing reason is tried again with a new request id (the old one names the
    /// failed operation).
    async fn create_in_zone(
        &self,
        zone: &str,
        spec: &VmSpec,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let s = &self.settings;
        let name = s.instance_name(&spec.vm_id);
        let body = s.instance(
            zone,
            &VmMetadata {
                vm_id: &spec.vm_id,
                capacity: spec.capacity,
                secret: &spec.secret,
            },
        );
        let mut delay = s.poll;
        for attempt in 0u32.. {
            let request_id = uuid::Uuid::new_v5(
                &REQUEST_NAMESPACE,
                format!("{}/{zone}/{name}/{attempt}", s.project).as_bytes(),
            );
            let Some(op) = self
                .insert(zone, &body, &request_id.to_string(), deadline)
                .await?
            else {
                // An instance of that name exists: an earlier attempt of ours made it.
                return Ok(());
            };
            let waited = match self.wait(zone, op, deadline).await {
                Ok(w) => w,
                // The operation cannot be followed (gone, or the deadline passed), but the
                // insert was accepted: the instance decides. If it exists the create went
                // through (the boot timeout watches the rest); failing the record would
                // delete a VM that may well be booting.
                Err(Failure::Transient(m)) => match self.instance_exists(zone, &name).await {
                    Ok(true) => return Ok(()),
                    _ => return Err(Failure::Transient(m)),
                },
                Err(other) => return Err(other),
            };
            match waited {
                None => return Ok(()),
                Some(errors) => match classify_operation(&errors) {
                    Failure::Transient(m) => {
                        tracing::warn!(vm_id = %spec.vm_id, zone, reason = %m, "create failed for a passing reason; retrying");
                        if !sleep_until_deadline(jitter(delay), deadline).await {
                            return Err(Failure::Transient(m));
                        }
                        delay = (delay * 2).min(MAX_BACKOFF);
                    }
                    other => return Err(other),
                },
            }
        }
        Err(Failure::Transient("out of attempts".into()))
    }

    /// One insert, retried on passing errors with the same request id, so a retry after a
    /// lost answer gets the first attempt's operation rather than a second VM. `None`: the
    /// instance exists already.
    async fn insert(
        &self,
        zone: &str,
        body: &google_cloud_compute_v1::model::Instance,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Option<Operation>, Failure> {
        let mut delay = self.settings.poll;
        loop {
            self.inserts.acquire().await;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Transient(
                    "insert not accepted before the deadline".into(),
                ));
            }
            self.calls.inserts.fetch_add(1, Ordering::Relaxed);
            let result = self
                .client
                .insert()
                .set_project(self.settings.project.clone())
                .set_zone(zone)
                .set_request_id(request_id)
                .set_or_clear_source_instance_template(self.settings.instance_template.clone())
                .set_body(body.clone())
                .with_retry_policy(NeverRetry)
                .with_attempt_timeout(left.min(ATTEMPT_TIMEOUT))
                .send()
                .await;
            match result {
                Ok(op) => return Ok(Some(op)),
                Err(err) => match classify(&err) {
                    Failure::Exists => return Ok(None),
                    Failure::Transient(m) => {
                        tracing::debug!(zone, reason = %m, "insert failed; backing off");
                        if !sleep_until_deadline(jitter(delay), deadline).await {
                            return Err(Failure::Transient(m));
                        }
                        delay = (delay * 2).min(MAX_BACKOFF);
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Polls a zone operation until it is done: `None` when it succeeded, its errors if not.
    async fn wait(
        &self,
        zone: &str,
        mut op: Operation,
        deadline: Instant,
    ) -> Result<Option<Vec<(String, String)>>, Failure> {
        let name = op.name.clone().unwrap_or_default();
        let mut delay = self.settings.poll;
        loop {
            if op.status == Some(operation::Status::Done) {
                let errors: Vec<(String, String)> = op
                    .error
                    .map(|e| {
                        e.errors
                            .into_iter()
                            .map(|x| (x.code.unwrap_or_default(), x.message.unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(if errors.is_empty() {
                    None
                } else {
                    Some(errors)
                });
            }
            if name.is_empty() {
                return Err(Failure::Transient("the operation has no name".into()));
            }
            if !sleep_until_deadline(delay, deadline).await {
                return Err(Failure::Transient(format!(
                    "operation {name} in {zone} not done within {:?}",
                    self.settings.operation_timeout
                )));
            }
            delay = (delay * 2).min(MAX_POLL);
            self.reads.acquire().await;
            self.calls.operation_polls.fetch_add(1, Ordering::Relaxed);
            match self
                .client
                .get_operation()
                .set_project(self.settings.project.clone())
                .set_zone(zone)
                .set_operation(name.clone())
                .with_retry_policy(NeverRetry)
                .with_attempt_timeout(ATTEMPT_TIMEOUT)
                .send()
                .await
            {
                Ok(next) => op = next,
                Err(err) => match (err.http_status_code(), classify(&err)) {
                    // Operations are kept for a while only.
                    (Some(404), _) => {
                        return Err(Failure::Transient(format!(
                            "operation {name} in {zone} not found"
                        )))
                    }
                    // No permission to read operations, say: an operator must act.
                    (_, Failure::Config(m)) => return Err(Failure::Config(m)),
                    // Passing: poll again (the deadline bounds it).
                    (_, other) => {
                        tracing::debug!(zone, operation = %name, error = ?other, "polling failed")
                    }
                },
            }
        }
    }

    /// Whether instance `name` exists in `zone` (for an operation that could not be followed).
    async fn instance_exists(&self, zone: &str, name: &str) -> Result<bool, Failure> {
        self.reads.acquire().await;
        match self
            .client
            .get()
            .set_project(self.settings.project.clone())
            .set_zone(zone)
            .set_instance(name)
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(ATTEMPT_TIMEOUT)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.http_status_code() == Some(404) => Ok(false),
            Err(err) => Err(classify(&err)),
        }
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ProviderError> {
        let name = self.settings.instance_name(vm_id);
        let known = self
            .zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .cloned();
        let zones: Vec<String> = match known {
            Some(z) => vec![z],
            None => self.settings.zones.clone(),
        };
        for zone in zones {
            let mut delay = self.settings.poll;
            for attempt in 0..4 {
                self.calls.deletes.fetch_add(1, Ordering::Relaxed);
                let result = self
                    .client
                    .delete()
                    .set_project(self.settings.project.clone())
                    .set_zone(zone.clone())
                    .set_instance(name.clone())
                    .set_request_id(uuid::Uuid::new_v4().to_string())
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send()
                    .await;
                let err = match result {
                    Ok(_) => {
                        // The operation runs on: the instance is going; a list finds it if
                        // the delete fails after all.
                        self.zones
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(vm_id);
                        tracing::info!(vm_id, zone, "instance deleting");
                        return Ok(());
                    }
                    Err(err) => err,
                };
                let status = err.http_status_code();
                if status == Some(404) {
                    break; // not in this zone
                }
                let m = message(&err);
                // An instance still being created cannot be deleted yet, and a delete that
                // conflicts with another operation on it: both pass.
                let not_ready = status == Some(400) && m.to_ascii_lowercase().contains("not ready");
                let failure = if not_ready || status == Some(409) {
                    Failure::Transient(m)
                } else {
                    classify(&err)
                };
                match failure {
                    Failure::Transient(m) | Failure::Capacity(m) if attempt < 3 => {
                        tracing::debug!(vm_id, zone, reason = %m, "delete failed; retrying");
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(MAX_BACKOFF);
                    }
                    Failure::Config(m) => {
                        return Err(ProviderError::new("delete", vm_id, FailureKind::Config, m))
                    }
                    Failure::Transient(m) | Failure::Capacity(m) => {
                        return Err(ProviderError::new(
                            "delete",
                            vm_id,
                            FailureKind::Transient,
                            m,
                        ))
                    }
                    Failure::Exists => break,
                }
            }
        }
        self.zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        Ok(())
    }

    async fn list_vms(&self) -> Result<Vec<VmInstance>, ProviderError> {
        let mut out = Vec::new();
        for zone in &self.settings.zones {
            let mut page_token: Option<String> = None;
            loop {
                self.reads.acquire().await;
                self.calls.lists.fetch_add(1, Ordering::Relaxed);
                let page = self
                    .client
                    .list()
                    .set_project(self.settings.project.clone())
                    .set_zone(zone.clone())
                    .set_filter(self.settings.list_filter())
                    .set_max_results(500u32)
                    .set_or_clear_page_token(page_token.clone())
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .send()
                    .await
                    .map_err(|err| {
                        let kind = match classify(&err) {
                            Failure::Config(_) => FailureKind::Config,
                            _ => FailureKind::Transient,
                        };
                        ProviderError::new("list", zone, kind, message(&err))
                    })?;
                for inst in page.items {
                    let name = inst.name.clone().unwrap_or_default();
                    let Some(vm_id) = inst
                        .labels
                        .get(VM_LABEL)
                        .cloned()
                        .or_else(|| name.strip_prefix("wp-").map(String::from))
                    else {
                        continue;
                    };
                    let state = match inst.status {
                        Some(instance::Status::Running) => InstanceState::Running,
                        Some(
                            instance::Status::Stopping
                            | instance::Status::Stopped
                            | instance::Status::Suspending
                            | instance::Status::Suspended
                            | instance::Status::Terminated
                            | instance::Status::PendingStop
                            | instance::Status::Deprovisioning,
                        ) => InstanceState::Stopped,
                        _ => InstanceState::Starting,
                    };
                    let status = inst
                        .status
                        .as_ref()
                        .and_then(|s| s.name())
                        .unwrap_or("UNKNOWN")
                        .to_string();
                    self.remember_zone(&vm_id, zone);
                    out.push(VmInstance {
                        vm_id,
                        state,
                        detail: format!("{zone}/{name} {status}"),
                    });
                }
                page_token = page.next_page_token.filter(|t| !t.is_empty());
                if page_token.is_none() {
                    break;
                }
            }
        }
        out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        Ok(out)
    }
}

impl Provider for GceProvider {
    fn name(&self) -> &'static str {
        "gce"
    }
    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.create_vm(spec))
    }
    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.delete_vm(vm_id))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        Box::pin(self.list_vms())
    }
}
