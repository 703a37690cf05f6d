//! The agent's work loop: register the VM, heartbeat, pull executions from the VM's stream,
//! run each in a fresh sandbox, write the result.
//!
//! # Expected flow
//! 1. Probe the sandbox (a real sandboxed run) and the runtimes; refuse to start if it fails.
//! 2. Wait out the boot delay (local provider only), register the VM Ready with its capacity
//!    and languages, and place pending games on it (their backlogs arrive on its stream).
//! 3. Read the stream through the consumer group: first this VM's unacknowledged entries (a
//!    previous agent process died mid-run: they run again as a new attempt), then new ones,
//!    never more at once than there are sandbox slots.
//! 4. For each entry: `start` (queued → running), run, `finish` (one result per execution).
//!
//! # Guarantees
//! - No inbound port: the agent only dials Redis.
//! - A result is written at most once per execution (checked in `finish_execution`).
//! - On SIGTERM the agent takes nothing new and finishes what runs (up to a grace period).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fred::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use warmpool::executions::{self, Finish, Start};
use warmpool::model::{ErrorDetail, Job, VmState};
use warmpool::pool::vms;
use warmpool::routing::{self, Placement};
use warmpool::store::{keys::GROUP, RedisSettings, Store};

use crate::sandbox::{Backend, Sandbox, SandboxConfig};

#[derive(Parser, Debug)]
#[command(name = "warmpool-agent", version, about = "warmpool's VM agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Runs a trivial program N times directly in the sandbox and prints one JSON object of
    /// per-run latencies (the baseline of `warmpool bench exec`).
    BenchSandbox {
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value = "python")]
        language: String,
        #[arg(long, default_value = "pass")]
        code: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// This VM's id (the pool knows it by this).
    #[arg(long, env = "WARMPOOL_VM_ID", default_value = "")]
    pub vm_id: String,
    #[arg(long, env = "WARMPOOL_POOL", default_value = "default")]
    pub pool: String,
    #[arg(long, env = "WARMPOOL_REDIS_URL", default_value = "")]
    pub redis_url: String,
    /// Games this VM takes.
    #[arg(long, env = "WARMPOOL_VM_CAPACITY", default_value_t = 8)]
    pub capacity: u32,
    /// Concurrent sandboxes.
    #[arg(long, env = "WARMPOOL_AGENT_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// `bwrap`, or `process` (unsandboxed; development only).
    #[arg(long, env = "WARMPOOL_AGENT_SANDBOX", default_value = "bwrap")]
    pub sandbox: String,
    /// Wait this long before registering (the local provider's simulated boot).
    #[arg(long, env = "WARMPOOL_AGENT_BOOT_DELAY_MS", default_value_t = 0)]
    pub boot_delay_ms: u64,
    #[arg(long, env = "WARMPOOL_HEARTBEAT_INTERVAL_MS", default_value_t = 1_000)]
    pub heartbeat_interval_ms: u64,
    /// Sandbox slot i runs as uid/gid base + i.
    #[arg(long, env = "WARMPOOL_SANDBOX_UID_BASE", default_value_t = 60_000)]
    pub uid_base: u32,
    /// Size of each execution's tmpfs work directory.
    #[arg(long, env = "WARMPOOL_SANDBOX_WORK_MB", default_value_t = 64)]
    pub work_dir_mb: u64,
    /// Per-execution cgroups (memory and process limits): `auto` (use them if this host
    /// allows, warn if not), `required` (refuse to start without them) or `off`.
    #[arg(long, env = "WARMPOOL_SANDBOX_CGROUPS", default_value = "auto")]
    pub sandbox_cgroups: String,
    /// How long ended execution records stay readable (must match the orchestrator's).
    #[arg(long, env = "WARMPOOL_RESULT_TTL_S", default_value_t = 86_400)]
    pub result_ttl_s: u64,
    /// Placement used when this agent places pending games on Ready VMs.
    #[arg(long, env = "WARMPOOL_PLACEMENT", default_value = "least-loaded")]
    pub placement: Placement,
    /// Seconds a SIGTERM'd agent lets running executions finish.
    #[arg(long, env = "WARMPOOL_AGENT_GRACE_S", default_value_t = 30)]
    pub grace_s: u64,
}

pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let sandbox = Arc::new(make_sandbox(&cli.settings).await?);
    match cli.command {
        Some(AgentCommand::BenchSandbox {
            runs,
            language,
            code,
        }) => bench_sandbox(&sandbox, runs, &language, &code).await,
        None => {
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                token.cancel();
            });
            run(cli.settings, sandbox, shutdown).await
        }
    }
}

async fn make_sandbox(s: &Settings) -> anyhow::Result<Sandbox> {
    let backend: Backend = s
        .sandbox
        .parse()
        .map_err(|e| anyhow::anyhow!("WARMPOOL_AGENT_SANDBOX: {e}"))?;
    Sandbox::new(SandboxConfig {
        backend,
        uid_base: s.uid_base,
        slots: s.slots.max(1) as usize,
        work_dir_mb: s.work_dir_mb,
        cgroups: s
            .sandbox_cgroups
            .parse()
            .map_err(|e| anyhow::anyhow!("WARMPOOL_SANDBOX_CGROUPS: {e}"))?,
        ..SandboxConfig::default()
    })
    .await
    .context("sandbox probe failed; refusing to run untrusted code")
}

/// Runs the agent until `shutdown` (or until the pool declares its VM dead).
pub async fn run(
    settings: Settings,
    sandbox: Arc<Sandbox>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !settings.vm_id.is_empty(),
        "WARMPOOL_VM_ID (--vm-id): required"
    );
    anyhow::ensure!(
        !settings.redis_url.is_empty(),
        "WARMPOOL_REDIS_URL: required"
    );
    let redis = RedisSettings {
        url: settings.redis_url.clone(),
        pool_size: 2,
        command_timeout: Duration::from_secs(5),
    };
    let store = Store::connect(&redis, &settings.pool).await?;
    // XREADGROUP BLOCK holds its connection: it gets one of its own.
    let reader = warmpool::store::builder(&redis)?.build()?;
    reader.init().await?;

    let languages = sandbox.languages();
    tracing::info!(vm_id = %settings.vm_id, languages = ?languages.iter().map(|l| &l.name).collect::<Vec<_>>(), "agent up");
    if settings.boot_delay_ms > 0 {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(settings.boot_delay_ms)) => {}
        }
    }
    let vm_id = settings.vm_id.clone();
    let agent_version = concat!("warmpool-agent/", env!("CARGO_PKG_VERSION"));
    match vms::register(&store, &vm_id, settings.capacity, &languages, agent_version).await? {
        Some(games) => tracing::info!(vm_id, games, "registered Ready"),
        None => anyhow::bail!("the pool declared VM {vm_id} dead; not registering"),
    }
    let placed = routing::place_pending(&store, settings.placement, Some(&vm_id)).await?;
    if placed > 0 {
        tracing::info!(vm_id, placed, "placed pending games");
    }

    let stop = shutdown.child_token();
    let heartbeat = tokio::spawn(heartbeat_loop(
        store.clone(),
        vm_id.clone(),
        Duration::from_millis(settings.heartbeat_interval_ms.max(50)),
        stop.clone(),
    ));

    let slots = Arc::new(Semaphore::new(settings.slots.max(1) as usize));
    let tasks = TaskTracker::new();
    let queue = store.keys.queue(&vm_id);
    let retention_ms = settings.result_ttl_s * 1000;
    // "0": this consumer's unacknowledged entries first (left by a previous process).
    let mut cursor = "0".to_string();
    while !stop.is_cancelled() {
        let free = slots.available_permits().max(1) as u64;
        let read = reader.xreadgroup::<fred::types::Value, _, _, _, _>(
            GROUP,
            vm_id.as_str(),
            Some(free),
            if cursor == ">" { Some(1_000) } else { None },
            false,
            queue.as_str(),
            cursor.as_str(),
        );
        let response = tokio::select! {
            _ = stop.cancelled() => break,
            r = read => match r {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(error = %err, "reading the queue failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            }
        };
        // A BLOCK that timed out answers nil: no entries.
        let entries = stream_entries(response);
        if cursor != ">" && entries.is_empty() {
            cursor = ">".to_string();
            continue;
        }
        for (entry_id, fields) in entries {
            if cursor != ">" {
                // Re-reading our own backlog: continue after the last entry seen.
                cursor = entry_id.clone();
            }
            let Some(execution_id) = fields.get("e").cloned() else {
                let _ = executions::ack(&store, &vm_id, &entry_id).await;
                continue;
            };
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let store = store.clone();
            let sandbox = sandbox.clone();
            let vm_id = vm_id.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let _permit = permit;
                if let Err(err) =
                    handle(&store, &sandbox, &vm_id, &execution_id, &entry_id, retention_ms, &stop)
                        .await
                {
                    tracing::warn!(execution_id, error = %err, "execution not completed; it stays pending for this VM");
                }
            });
        }
    }

    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(settings.grace_s), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("running executions did not finish within the grace period");
    }
    let _ = heartbeat.await;
    let _ = reader.quit().await;
    store.quit().await;
    tracing::info!(vm_id, "agent stopped");
    Ok(())
}

/// Runs one stream entry to its end.
async fn handle(
    store: &Store,
    sandbox: &Sandbox,
    vm_id: &str,
    execution_id: &str,
    entry_id: &str,
    retention_ms: u64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (attempt, job_json) =
        match executions::start(store, vm_id, execution_id, retention_ms).await? {
            Start::Run { attempt, job_json } => (attempt, job_json),
            Start::Skip => {
                executions::ack(store, vm_id, entry_id).await?;
                return Ok(());
            }
            Start::VmDead => {
                stop.cancel();
                return Ok(());
            }
        };
    let outcome = match serde_json::from_str::<Job>(&job_json) {
        Ok(job) => match sandbox.run(&job).await {
            Ok(result) => Finish::Finished(result),
            Err(err) => Finish::Failed(ErrorDetail {
                code: err.kind().to_string(),
                message: err.to_string(),
            }),
        },
        Err(err) => Finish::Failed(ErrorDetail {
            code: "invalid_job".into(),
            message: format!("the job record is unreadable: {err}"),
        }),
    };
    // The result must not be lost to a passing Redis error: retry for a while.
    let mut delay = Duration::from_millis(100);
    for _ in 0..20 {
        match executions::finish(
            store,
            vm_id,
            execution_id,
            attempt,
            entry_id,
            &outcome,
            retention_ms,
        )
        .await
        {
            Ok(written) => {
                if !written {
                    tracing::info!(execution_id, attempt, "stale result discarded");
                }
                return Ok(());
            }
            Err(err) => {
                tracing::warn!(execution_id, error = %err, "writing the result failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    anyhow::bail!("could not write the result of {execution_id}")
}

async fn heartbeat_loop(store: Store, vm_id: String, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match vms::heartbeat(&store, &vm_id).await {
            Ok(Some(VmState::Dead)) | Ok(None) => {
                tracing::warn!(vm_id, "the pool no longer knows this VM as alive; stopping");
                stop.cancel();
                return;
            }
            Ok(Some(_)) => {}
            Err(err) => tracing::warn!(vm_id, error = %err, "heartbeat failed"),
        }
    }
}

/// The sandbox alone, N times: the baseline the end-to-end bench is compared with.
async fn bench_sandbox(
    sandbox: &Sandbox,
    runs: usize,
    language: &str,
    code: &str,
) -> anyhow::Result<()> {
    let spec = warmpool::runtimes::lookup(language).context("unknown language")?;
    let mut times_ms = Vec::with_capacity(runs);
    for i in 0..runs {
        let job = Job {
            execution_id: format!("bench-{i}"),
            game_id: "bench".into(),
            language: spec.name.into(),
            files: vec![warmpool::model::FileSpec {
                name: "main".into(),
                content: code.into(),
            }],
            stdin: String::new(),
            args: vec![],
            limits: warmpool::model::Limits {
                wall_time_ms: 10_000,
                cpu_time_ms: 10_000,
                memory_mb: 512,
                max_output_bytes: 65_536,
            },
        };
        let started = std::time::Instant::now();
        let result = sandbox.run(&job).await?;
        anyhow::ensure!(
            result.exit_code == Some(0),
            "bench program failed: {result:?}"
        );
        times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{}",
        serde_json::json!({ "runs": runs, "times_ms": times_ms })
    );
    Ok(())
}

/// Entries of an XREADGROUP reply on one stream: `[[stream, [[id, [field, value, ...]], ...]]]`
/// (nil when a BLOCK timed out).
fn stream_entries(reply: fred::types::Value) -> Vec<(String, HashMap<String, String>)> {
    use fred::types::Value;
    let text = |v: &Value| v.as_str().map(|s| s.to_string());
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        // RESP3 answers a map of stream -> entries.
        Value::Map(map) => map
            .inner()
            .into_values()
            .map(|entries| Value::Array(vec![Value::Null, entries]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(pair) = entry else { continue };
            let (Some(id), fields) = (pair.first().and_then(text), pair.get(1)) else {
                continue;
            };
            let mut map = HashMap::new();
            if let Some(Value::Array(kv)) = fields {
                for chunk in kv.chunks(2) {
                    if let (Some(k), Some(v)) =
                        (chunk.first().and_then(text), chunk.get(1).and_then(text))
                    {
                        map.insert(k, v);
                    }
                }
            }
            out.push((id, map));
        }
    }
    out
}
