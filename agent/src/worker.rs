//! The agent's work loop: register the VM, heartbeat, pull executions from the VM's stream,
//! run each in a fresh sandbox, write the result.
//!
//! # Expected flow
//! 1. Probe the sandbox (a real sandboxed run) and the runtimes; refuse to start if it fails.
//! 2. Wait out the boot delay (local provider only), register the VM Ready with its capacity
//!    and languages, and place pending games on it (their backlogs arrive on its stream). Redis
//!    unreachable at boot is retried, up to the orphan timeout (see `lifecycle`).
//! 3. Read the stream through the consumer group: first this VM's unacknowledged entries (a
//!    previous agent process died mid-run: they run again as a new attempt), then new ones,
//!    never more at once than there are sandbox slots.
//! 4. For each entry: `start` (queued → running), run, `finish` (one result per execution).
//! 5. Until something ends the agent (`lifecycle::ExitReason`): a signal, the pool declaring
//!    the VM dead, or Redis silence. [`main`] then hands the VM to `lifecycle::Disposal`.
//!
//! # Guarantees
//! - No inbound port: the agent only dials Redis.
//! - A result is written at most once per execution (checked in `finish_execution`).
//! - On SIGTERM the agent takes nothing new and finishes what runs (up to a grace period).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fred::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use warmpool_core::model::{ErrorDetail, Job};
use warmpool_core::store::executions::{self, AgentIdentity, Finish, Recorded, Start};
use warmpool_core::store::settings::PoolSettings;
use warmpool_core::store::vms::{self, Registration};
use warmpool_core::store::{games, keys::GROUP, RedisSettings, Store};

use crate::config::{AgentCommand, Cli, Settings};
use crate::figures::Figures;
use crate::lifecycle::{self, Exit, ExitReason, OnExit, Stop};
use crate::sandbox::Sandbox;

/// Runs the command; for the agent itself, then disposes of the VM as its end demands.
pub async fn main(cli: Cli) -> anyhow::Result<Exit> {
    cli.settings.validate(cli.command.is_none())?;
    let disposal = cli.settings.disposal()?;
    let sandbox = Arc::new(
        Sandbox::new(cli.settings.sandbox_config()?)
            .await
            .context("sandbox probe failed; refusing to run untrusted code")?,
    );
    match cli.command {
        Some(AgentCommand::BenchSandbox {
            runs,
            language,
            code,
        }) => {
            let benched = bench_sandbox(&sandbox, runs, &language, &code).await;
            sandbox.shutdown().await;
            benched.map(|()| Exit::Stopped)
        }
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
            let reason = run(cli.settings, Arc::clone(&sandbox), shutdown).await;
            // The warm spares die with the agent (PR_SET_PDEATHSIG) anyway; this also removes
            // their cgroups, which nothing else would.
            sandbox.shutdown().await;
            let reason = reason?;
            Ok(disposal.carry_out(&reason).await)
        }
    }
}

/// Runs the agent until something ends it, and says what (see `lifecycle`).
pub async fn run(
    settings: Settings,
    sandbox: Arc<Sandbox>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitReason> {
    settings.validate(true)?;
    let redis = RedisSettings {
        url: settings.redis_url.clone(),
        pool_size: 2,
        command_timeout: Duration::from_secs(5),
    };
    // A URL that cannot be parsed will not parse on a retry either.
    warmpool_core::store::builder(&redis).context("WARMPOOL_REDIS_URL")?;
    let stop = Stop::new(&shutdown);
    // With nothing to do to the VM (`none`: development, the local provider) the dead-man's
    // switch is off: the agent waits for Redis and for a leader as long as it takes.
    let switch_on = settings.on_exit != OnExit::None;
    let orphan_after = if switch_on {
        settings.orphan_timeout
    } else {
        Duration::from_secs(100 * 365 * 86_400)
    };
    let unattended_after = switch_on.then_some(settings.unattended_timeout);

    let languages = sandbox.languages();
    tracing::info!(
        vm_id = %settings.vm_id,
        pool = %settings.pool,
        capacity = settings.capacity,
        slots = settings.slots,
        languages = ?languages.iter().map(|l| &l.name).collect::<Vec<_>>(),
        "agent up"
    );
    if !settings.boot_delay.is_zero() {
        tokio::select! {
            _ = stop.cancelled() => return Ok(stop.reason()),
            _ = tokio::time::sleep(settings.boot_delay) => {}
        }
    }
    let vm_id = settings.vm_id.clone();
    // What this agent proves on every call that changes state.
    let me = Arc::new(AgentIdentity {
        vm_id: vm_id.clone(),
        secret: settings.vm_secret.expose().to_string(),
    });
    let Some(Registered {
        store,
        reader,
        at: registered_at,
        pool,
    }) = register(&settings, &redis, &languages, orphan_after, &stop).await
    else {
        return Ok(stop.reason());
    };
    // The pool's placement, as the replicas published it. Before any replica did, no game can
    // be pending: there is nothing to place.
    let placed = match pool {
        Some(pool) => games::place_pending(&store, pool.placement, Some(&vm_id)).await,
        None => Ok(0),
    };
    match placed {
        Ok(0) => {}
        Ok(placed) => tracing::info!(vm_id, placed, "placed pending games"),
        // The orchestrator places them too: not a reason to stop.
        Err(err) => tracing::warn!(vm_id, error = %err, "placing pending games failed"),
    }

    let slots = Arc::new(Semaphore::new(settings.slots as usize));
    let figures = Arc::new(Figures::new(
        slots.clone(),
        settings.slots as usize,
        sandbox.clone(),
    ));
    let heartbeat = tokio::spawn(lifecycle::watch(
        lifecycle::Watch {
            store: store.clone(),
            me: me.clone(),
            every: settings.heartbeat_interval,
            orphan_after,
            unattended_after,
            figures: figures.clone(),
        },
        registered_at,
        stop.clone(),
    ));

    let tasks = TaskTracker::new();
    let queue = store.keys.queue(&vm_id);
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
                let _ = executions::ack(&store, &me, &entry_id).await;
                continue;
            };
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let store = store.clone();
            let sandbox = sandbox.clone();
            let figures = figures.clone();
            let vm_id = vm_id.clone();
            let me = me.clone();
            let stop = stop.clone();
            // One span per execution: its lines carry its id, and its request's trace id
            // once `start` has read it from the record.
            let span = tracing::info_span!(
                "execution",
                execution_id = %execution_id,
                vm_id = %vm_id,
                trace_id = tracing::field::Empty,
                attempt = tracing::field::Empty,
            );
            tasks.spawn(
                async move {
                    let _permit = permit;
                    if let Err(err) =
                        handle(&store, &sandbox, &figures, &me, &execution_id, &entry_id, &stop)
                            .await
                    {
                        tracing::warn!(error = %err, "execution not completed; it stays pending for this VM");
                    }
                }
                .instrument(span),
            );
        }
    }

    stop.cancel();
    tasks.close();
    if tokio::time::timeout(settings.grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("running executions did not finish within the grace period");
    }
    let _ = heartbeat.await;
    quit(&store, &reader).await;
    let reason = stop.reason();
    tracing::info!(vm_id, %reason, "agent stopped");
    Ok(reason)
}

/// A registered VM's connections.
struct Registered {
    store: Store,
    /// XREADGROUP BLOCK holds its connection: it gets one of its own.
    reader: fred::clients::Client,
    /// The first successful round trip: the dead-man's switch counts from here.
    at: Instant,
    /// The pool's settings, from the registration's reply (`None` before a replica published
    /// them).
    pool: Option<PoolSettings>,
}

/// Connects and registers the VM Ready, retrying for up to `orphan_after`: a VM that never
/// reaches Redis is an orphan too. `None` when the agent must stop instead (`stop` says why).
async fn register(
    settings: &Settings,
    redis: &RedisSettings,
    languages: &[warmpool_core::model::LanguageInfo],
    orphan_after: Duration,
    stop: &Stop,
) -> Option<Registered> {
    let started = Instant::now();
    let give_up = tokio::time::Instant::from_std(started + orphan_after);
    let agent_version = concat!("warmpool-agent/", env!("CARGO_PKG_VERSION"));
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let store = Store::connect(redis, &settings.pool).await?;
            let reader = match connect_reader(redis).await {
                Ok(r) => r,
                Err(err) => {
                    store.quit().await;
                    return Err(err);
                }
            };
            match vms::register(
                &store,
                &settings.vm_id,
                settings.capacity,
                languages,
                agent_version,
                settings.vm_secret.expose(),
            )
            .await
            {
                Ok(games) => Ok((store, reader, games)),
                Err(err) => {
                    quit(&store, &reader).await;
                    Err(err.into())
                }
            }
        };
        let outcome: Result<anyhow::Result<_>, _> = tokio::select! {
            _ = stop.cancelled() => return None,
            r = tokio::time::timeout_at(give_up, attempt) => r,
        };
        let err = match outcome {
            Ok(Ok((
                store,
                reader,
                Registration::Ok {
                    games,
                    settings: pool,
                },
            ))) => {
                tracing::info!(vm_id = %settings.vm_id, games, "registered Ready");
                return Some(Registered {
                    store,
                    reader,
                    at: Instant::now(),
                    pool,
                });
            }
            Ok(Ok((store, reader, Registration::Dead | Registration::Refused))) => {
                quit(&store, &reader).await;
                stop.end(ExitReason::Retired);
                return None;
            }
            Ok(Err(err)) => err,
            Err(_elapsed) => {
                stop.end(ExitReason::Orphaned {
                    silent_for: started.elapsed(),
                });
                return None;
            }
        };
        tracing::warn!(
            vm_id = %settings.vm_id,
            error = %err,
            orphan_in_s = give_up.saturating_duration_since(tokio::time::Instant::now()).as_secs(),
            "registering failed; retrying"
        );
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep_until(give_up) => {
                stop.end(ExitReason::Orphaned { silent_for: started.elapsed() });
                return None;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn connect_reader(redis: &RedisSettings) -> anyhow::Result<fred::clients::Client> {
    let reader = warmpool_core::store::builder(redis)?.build()?;
    reader.init().await?;
    Ok(reader)
}

/// Closes both connections; bounded, since with Redis gone QUIT may wait for a reconnect.
async fn quit(store: &Store, reader: &fred::clients::Client) {
    let both = async {
        let _ = reader.quit().await;
        store.quit().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), both).await;
}

/// Runs one stream entry to its end.
async fn handle(
    store: &Store,
    sandbox: &Sandbox,
    figures: &Figures,
    me: &AgentIdentity,
    execution_id: &str,
    entry_id: &str,
    stop: &Stop,
) -> anyhow::Result<()> {
    let (attempt, job_json) = match executions::start(store, me, execution_id).await? {
        Start::Run {
            attempt,
            job_json,
            trace_id,
        } => {
            let span = tracing::Span::current();
            span.record("attempt", attempt);
            if let Some(trace) = trace_id {
                span.record("trace_id", trace.as_str());
            }
            tracing::debug!("execution started");
            (attempt, job_json)
        }
        Start::Skip => {
            executions::ack(store, me, entry_id).await?;
            return Ok(());
        }
        Start::VmDead => {
            stop.end(ExitReason::Retired);
            return Ok(());
        }
        Start::Refused => {
            tracing::error!(
                "the pool refused this VM's secret: this agent is not the VM it claims to be"
            );
            stop.end(ExitReason::Retired);
            return Ok(());
        }
    };
    let started = Instant::now();
    let outcome = match serde_json::from_str::<Job>(&job_json) {
        Ok(job) => match sandbox.run(&job).await {
            Ok(result) => {
                figures.ran(&result, started.elapsed());
                Finish::Finished(result)
            }
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
        match executions::finish(store, me, execution_id, attempt, entry_id, &outcome).await {
            Ok(Recorded::Written) => return Ok(()),
            Ok(Recorded::Stale) => {
                tracing::info!(execution_id, attempt, "stale result discarded");
                return Ok(());
            }
            Ok(Recorded::Refused) => {
                tracing::error!(
                    "the pool refused this VM's secret: this agent is not the VM it claims to be"
                );
                stop.end(ExitReason::Retired);
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

/// The sandbox alone, N times: the baseline the end-to-end bench is compared with.
async fn bench_sandbox(
    sandbox: &Sandbox,
    runs: usize,
    language: &str,
    code: &str,
) -> anyhow::Result<()> {
    let spec = warmpool_core::runtimes::lookup(language).context("unknown language")?;
    let mut times_ms = Vec::with_capacity(runs);
    for i in 0..runs {
        let job = Job {
            execution_id: format!("bench-{i}"),
            game_id: "bench".into(),
            language: spec.name.into(),
            files: vec![warmpool_core::model::FileSpec {
                name: "main".into(),
                content: code.into(),
            }],
            stdin: String::new(),
            args: vec![],
            limits: warmpool_core::model::Limits {
                wall_time_ms: 10_000,
                cpu_time_ms: 10_000,
                memory_mb: 512,
                max_output_bytes: 65_536,
            },
        };
        // Each job reaches an idle agent: with warm sandboxes, its slot's spare is ready (back
        // to back on one slot, a run would wait for the refill its predecessor started).
        sandbox.settle().await;
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
