//! `/metrics` in the Prometheus text format, on its own listener (`WARMPOOL_METRICS_LISTEN`).
//!
//! Two kinds of figure, and where each comes from:
//! - **The pool's**, read from Redis at every scrape, so any replica answers the same:
//!   VMs by state, desired VMs, games placed and pending, executions queued; the counters and
//!   histograms of `{wp:P}:stats` (executions by final state and outcome, queue wait, run
//!   time, cold start, sandbox start, kills by reason, reconcile passes and actions, provider
//!   calls; see `warmpool_core::store::stats`); leader terms (the fencing counter); and the
//!   agents' gauges (sandboxes busy, spares ready) summed over the live VMs.
//! - **This replica's**, in memory (the `metrics` crate): HTTP requests by route and status,
//!   their latency, placement latency, Redis errors by kind, unreadable records.
//!   Prometheus sums them over replicas.
//!
//! Labels are bounded: routes, states, outcomes, error codes and kinds, never a game,
//! execution or VM id.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fred::prelude::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use warmpool_core::model::VmState;
use warmpool_core::store::stats::{self, BUCKETS_MS};
use warmpool_core::store::{games, vms, Store, StoreResult};

/// The buckets (seconds) of this replica's own latency histograms.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// This process's recorder: installed once (in-process test replicas share it).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS_S)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder was set first (none is in this program).
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// Installs this process's recorder (before the replica records anything).
pub fn install() {
    handle();
}

fn describe() {
    metrics::describe_counter!(
        "warmpool_http_requests_total",
        "HTTP requests this replica answered, by route and status"
    );
    metrics::describe_histogram!(
        "warmpool_http_request_seconds",
        metrics::Unit::Seconds,
        "Time this replica took to answer, by route"
    );
    metrics::describe_histogram!(
        "warmpool_placement_seconds",
        metrics::Unit::Seconds,
        "Time this replica took to place a game (the put_game or submit_execution script)"
    );
}

/// Records a request this replica answered.
pub fn request(route: &str, status: u16, took: Duration) {
    metrics::counter!("warmpool_http_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("warmpool_http_request_seconds", "route" => route.to_string())
        .record(took.as_secs_f64());
}

/// Records a placement (the script call that leased a game, or made it pending).
pub fn placement(took: Duration) {
    metrics::histogram!("warmpool_placement_seconds").record(took.as_secs_f64());
}

/// The router of the metrics listener.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(store)
}

async fn scrape(State(store): State<Store>) -> Response {
    match render(&store).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "a scrape could not read the pool");
            (StatusCode::SERVICE_UNAVAILABLE, format!("# {err}\n")).into_response()
        }
    }
}

/// The pool's figures (from Redis) and this replica's (from memory), as Prometheus text.
pub async fn render(store: &Store) -> StoreResult<String> {
    let mut out = Text::default();
    let snapshot = vms::snapshot(store).await?;
    out.help("warmpool_vms", "gauge", "VMs of the pool by state");
    for state in VmState::ALL {
        let n = snapshot.vms.iter().filter(|vm| vm.state == state).count();
        out.sample("warmpool_vms", &[("state", state.as_str())], n as f64);
    }
    out.help(
        "warmpool_unreadable_vms",
        "gauge",
        "VM records the leader cannot read (left alone)",
    );
    out.sample(
        "warmpool_unreadable_vms",
        &[],
        snapshot.unreadable.len() as f64,
    );
    if let Some(control) = crate::pool::control::read(store).await? {
        out.help(
            "warmpool_desired_vms",
            "gauge",
            "The size the leader steers the pool to",
        );
        out.sample("warmpool_desired_vms", &[], f64::from(control.desired_vms));
    }
    let (placed, pending) = games::game_counts(store).await?;
    out.help("warmpool_games", "gauge", "Games by state");
    out.sample("warmpool_games", &[("state", "placed")], placed as f64);
    out.sample("warmpool_games", &[("state", "pending")], pending as f64);
    let queued: u64 = store.client().zcard(&store.keys.queued).await?;
    out.help(
        "warmpool_executions_queued",
        "gauge",
        "Executions accepted and not started yet",
    );
    out.sample("warmpool_executions_queued", &[], queued as f64);
    let terms: Option<u64> = store.client().get(&store.keys.fence).await?;
    out.help(
        "warmpool_leader_terms_total",
        "counter",
        "Leadership terms of the pool so far (each change of leader starts one)",
    );
    out.sample(
        "warmpool_leader_terms_total",
        &[],
        terms.unwrap_or(0) as f64,
    );

    let alive: std::collections::HashSet<&str> = snapshot
        .vms
        .iter()
        .filter(|vm| matches!(vm.state, VmState::Ready | VmState::Draining))
        .map(|vm| vm.vm_id.as_str())
        .collect();
    let gauges = vms::agent_gauges(store).await?;
    let (busy, spares) = gauges
        .iter()
        .filter(|(vm, _)| alive.contains(vm.as_str()))
        .fold((0, 0), |(b, s), (_, (busy, spares))| (b + busy, s + spares));
    out.help(
        "warmpool_sandboxes_busy",
        "gauge",
        "Sandboxes running a job, over the pool's live VMs (their last heartbeats)",
    );
    out.sample("warmpool_sandboxes_busy", &[], busy as f64);
    out.help(
        "warmpool_spares_ready",
        "gauge",
        "Warm spare sandboxes waiting for a job, over the pool's live VMs",
    );
    out.sample("warmpool_spares_ready", &[], spares as f64);

    let figures = stats::read(store).await?;
    for (name, labels, help) in COUNTERS {
        let metric = format!("warmpool_{name}_total");
        out.help(&metric, "counter", help);
        for (field, value) in &figures.counters {
            let Some(rest) = field.strip_prefix(name) else {
                continue;
            };
            let values: Vec<&str> = rest.split('|').skip(1).collect();
            if (rest.is_empty() || rest.starts_with('|')) && values.len() == labels.len() {
                let pairs: Vec<(&str, &str)> =
                    labels.iter().copied().zip(values.iter().copied()).collect();
                out.sample(&metric, &pairs, *value as f64);
            }
        }
    }
    for (name, help) in HISTOGRAMS {
        let metric = format!("warmpool_{name}_seconds");
        out.help(&metric, "histogram", help);
        let h = figures.histograms.get(*name).cloned().unwrap_or_default();
        let mut cumulative = 0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            let le = format!("{}", *le as f64 / 1000.0);
            out.sample(
                &format!("{metric}_bucket"),
                &[("le", &le)],
                cumulative as f64,
            );
        }
        out.sample(
            &format!("{metric}_bucket"),
            &[("le", "+Inf")],
            h.count() as f64,
        );
        out.sample(&format!("{metric}_sum"), &[], h.sum_ms as f64 / 1000.0);
        out.sample(&format!("{metric}_count"), &[], h.count() as f64);
    }

    out.help(
        "warmpool_redis_errors_total",
        "counter",
        "Redis errors this replica met, by kind",
    );
    for (kind, n) in warmpool_core::store::error_counts() {
        out.sample("warmpool_redis_errors_total", &[("kind", kind)], n as f64);
    }
    out.help(
        "warmpool_corrupt_reads_total",
        "counter",
        "Records this replica read from Redis and could not understand",
    );
    out.sample(
        "warmpool_corrupt_reads_total",
        &[],
        warmpool_core::store::corrupt_reads() as f64,
    );
    let mut text = out.0;
    text.push_str(&handle().render());
    Ok(text)
}

/// The stats hash's counters: name, label names, help.
const COUNTERS: &[(&str, &[&str], &str)] = &[
    (
        "executions",
        &["state", "outcome"],
        "Executions that reached a final state: finished with their outcome, or failed, expired or cancelled with their error code",
    ),
    ("reconcile_passes", &[], "Reconcile passes of the pool's leaders"),
    (
        "reconcile_actions",
        &["kind"],
        "What the leaders did to VMs, by kind",
    ),
    (
        "provider_calls",
        &["op", "result"],
        "Calls of the leaders to the VM provider, by operation and result (ok, or the failure's kind)",
    ),
    (
        "sandbox_kills",
        &["reason"],
        "Programs the agents' sandboxes killed, by the limit they hit",
    ),
];

/// The stats hash's histograms: name, help.
const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "queue_wait",
        "Time from an execution's acceptance to its first start",
    ),
    ("run_time", "Time from an execution's start to its result"),
    (
        "cold_start",
        "Time from a VM's create to its agent registering Ready",
    ),
    (
        "sandbox_start",
        "Time an agent's sandbox took to start a program (a run's time beyond its wall time)",
    ),
];

/// Prometheus text, written line by line.
#[derive(Default)]
struct Text(String);

impl Text {
    fn help(&mut self, metric: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {metric} {help}");
        let _ = writeln!(self.0, "# TYPE {metric} {kind}");
    }

    fn sample(&mut self, metric: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(metric);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}
