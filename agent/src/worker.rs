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
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fred::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use warmpool::executions::{self, Finish, Start};
use warmpool::model::{ErrorDetail, Job};
use warmpool::pool::vms;
use warmpool::routing::{self, Placement};
use warmpool::store::{keys::GROUP, RedisSettings, Store};

use crate::lifecycle::{self, Disposal, Exit, ExitReason, OnExit, Stop};
use crate::metadata;
use crate::sandbox::{Backend, Sandbox, SandboxConfig};

#[derive(Parser, Debug)]
#[command(name = "warmpool-agent", version, about = "warmpool's VM agent")]
pub struct Cli {
    /// Read the VM's settings from Compute Engine instance metadata first (see
    /// `agent/deploy/README.md`); waits for the metadata server up to
    /// WARMPOOL_AGENT_METADATA_TIMEOUT_S (default 60). Handled in `main` before this parser runs:
    /// declared here so that clap accepts it and `--help` lists it.
    #[arg(long, env = metadata::FROM_METADATA_ENV, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub from_metadata: bool,
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
    /// `bwrap`, `nsjail` (production image), or `process` (unsandboxed; development only).
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
    /// CPU cap of each execution, in cores (its cgroup's bandwidth limit): a program cannot
    /// take more than this from the other games on the VM. 0: no cap.
    #[arg(long, env = "WARMPOOL_SANDBOX_CPUS", default_value_t = 1.0)]
    pub sandbox_cpus: f64,
    /// The bwrap sandbox's seccomp filter (see `sandbox::seccomp`): `on`, or `off` only to
    /// measure what it costs (`warmpool bench sandbox`).
    #[arg(long, env = "WARMPOOL_SANDBOX_SECCOMP", default_value = "on", value_parser = ["on", "off"])]
    pub sandbox_seccomp: String,
    /// Warm sandboxes (see `sandbox::warm`): `on` (the default) keeps one launched sandbox per
    /// slot waiting for its job, so a run does not pay for the cgroup, the fork and the
    /// sandbox's start; `off` starts every run cold.
    #[arg(long, env = "WARMPOOL_SANDBOX_WARM", default_value = "on", value_parser = ["on", "off"])]
    pub sandbox_warm: String,
    /// How long ended execution records stay readable (must match the orchestrator's).
    #[arg(long, env = "WARMPOOL_RESULT_TTL_S", default_value_t = 86_400)]
    pub result_ttl_s: u64,
    /// Placement used when this agent places pending games on Ready VMs.
    #[arg(long, env = "WARMPOOL_PLACEMENT", default_value = "least-loaded")]
    pub placement: Placement,
    /// Seconds a SIGTERM'd agent lets running executions finish.
    #[arg(long, env = "WARMPOOL_AGENT_GRACE_S", default_value_t = 30)]
    pub grace_s: u64,
    /// This VM's own secret, from the orchestrator (never logged).
    #[arg(
        long,
        env = "WARMPOOL_VM_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub vm_secret: Secret,
    /// Seconds without a successful Redis round trip (registration, then heartbeats) after
    /// which the agent is an orphan: it stops and shuts its VM down (WARMPOOL_AGENT_ON_EXIT).
    #[arg(long, env = "WARMPOOL_AGENT_ORPHAN_TIMEOUT_S", default_value_t = 300)]
    pub orphan_timeout_s: u64,
    /// Seconds with no orchestrator replica leading the pool and nothing running here, after
    /// which the agent is unattended: it stops and shuts its VM down (WARMPOOL_AGENT_ON_EXIT).
    /// Longer than the orphan timeout: a deploy of every replica should not empty the pool.
    #[arg(
        long,
        env = "WARMPOOL_AGENT_UNATTENDED_TIMEOUT_S",
        default_value_t = 900
    )]
    pub unattended_timeout_s: u64,
    /// What a retired or orphaned agent does to its VM: `none`, `delete-instance` (falls back
    /// to `poweroff`) or `poweroff`. A SIGTERM never shuts the VM down.
    #[arg(long, env = "WARMPOOL_AGENT_ON_EXIT", value_enum, default_value_t = OnExit::None)]
    pub on_exit: OnExit,
    /// The poweroff command, split on whitespace (no shell).
    #[arg(long, env = "WARMPOOL_AGENT_POWEROFF_CMD", default_value = "poweroff")]
    pub poweroff_cmd: String,
    /// Origin of the Compute API, for the self-delete.
    #[arg(
        long,
        env = "WARMPOOL_AGENT_COMPUTE_ENDPOINT",
        default_value = "https://compute.googleapis.com"
    )]
    pub compute_endpoint: String,
    /// The metadata server (the self-delete's token; the bootstrap reads it too).
    #[arg(long, env = "WARMPOOL_METADATA_URL", default_value = metadata::DEFAULT_URL)]
    pub metadata_url: String,
    /// This VM's instance, `projects/P/zones/Z/instances/N`: what `delete-instance` deletes.
    /// Set by --from-metadata.
    #[arg(long, env = metadata::INSTANCE_ENV, default_value = "")]
    pub instance: String,
}

impl Settings {
    /// What to do with the VM at the end, checked now.
    pub fn disposal(&self) -> anyhow::Result<Disposal> {
        let instance = match self.instance.trim() {
            "" => None,
            path => Some(
                path.parse()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", metadata::INSTANCE_ENV))?,
            ),
        };
        let disposal = Disposal {
            on_exit: self.on_exit,
            instance,
            metadata_url: self.metadata_url.clone(),
            compute_endpoint: self.compute_endpoint.clone(),
            poweroff_cmd: self
                .poweroff_cmd
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        disposal.check()?;
        Ok(disposal)
    }
}

/// A value that must not reach a log: `Debug` shows only whether it is set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(redacted)"
        })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Runs the command; for the agent itself, then disposes of the VM as its end demands.
pub async fn main(cli: Cli) -> anyhow::Result<Exit> {
    let disposal = cli.settings.disposal()?;
    let sandbox = Arc::new(make_sandbox(&cli.settings).await?);
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
        seccomp: s.sandbox_seccomp == "on",
        warm: s.sandbox_warm == "on",
        // Out of range (negative, NaN, huge) saturates and is refused by the sandbox's check.
        cpu_millis: if s.sandbox_cpus.is_finite() && s.sandbox_cpus >= 0.0 {
            (s.sandbox_cpus * 1000.0).round() as u32
        } else {
            u32::MAX
        },
        ..SandboxConfig::default()
    })
    .await
    .context("sandbox probe failed; refusing to run untrusted code")
}

/// Runs the agent until something ends it, and says what (see `lifecycle`).
pub async fn run(
    settings: Settings,
    sandbox: Arc<Sandbox>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitReason> {
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
    // A URL that cannot be parsed will not parse on a retry either.
    warmpool::store::builder(&redis).context("WARMPOOL_REDIS_URL")?;
    let stop = Stop::new(&shutdown);
    // With nothing to do to the VM (`none`: development, the local provider) the dead-man's
    // switch is off: the agent waits for Redis and for a leader as long as it takes.
    let switch_on = settings.on_exit != OnExit::None;
    let orphan_after = if switch_on {
        Duration::from_secs(settings.orphan_timeout_s.max(1))
    } else {
        Duration::from_secs(100 * 365 * 86_400)
    };
    let unattended_after =
        switch_on.then(|| Duration::from_secs(settings.unattended_timeout_s.max(1)));

    let languages = sandbox.languages();
    tracing::info!(
        vm_id = %settings.vm_id,
        pool = %settings.pool,
        capacity = settings.capacity,
        slots = settings.slots,
        languages = ?languages.iter().map(|l| &l.name).collect::<Vec<_>>(),
        "agent up"
    );
    if settings.boot_delay_ms > 0 {
        tokio::select! {
            _ = stop.cancelled() => return Ok(stop.reason()),
            _ = tokio::time::sleep(Duration::from_millis(settings.boot_delay_ms)) => {}
        }
    }
    let vm_id = settings.vm_id.clone();
    let Some(Registered {
        store,
        reader,
        at: registered_at,
    }) = register(&settings, &redis, &languages, orphan_after, &stop).await
    else {
        return Ok(stop.reason());
    };
    match routing::place_pending(&store, settings.placement, Some(&vm_id)).await {
        Ok(0) => {}
        Ok(placed) => tracing::info!(vm_id, placed, "placed pending games"),
        // The orchestrator places them too: not a reason to stop.
        Err(err) => tracing::warn!(vm_id, error = %err, "placing pending games failed"),
    }

    let heartbeat = tokio::spawn(lifecycle::watch(
        store.clone(),
        vm_id.clone(),
        Duration::from_millis(settings.heartbeat_interval_ms.max(50)),
        orphan_after,
        unattended_after,
        registered_at,
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
}

/// Connects and registers the VM Ready, retrying for up to `orphan_after`: a VM that never
/// reaches Redis is an orphan too. `None` when the agent must stop instead (`stop` says why).
async fn register(
    settings: &Settings,
    redis: &RedisSettings,
    languages: &[warmpool::model::LanguageInfo],
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
            Ok(Ok((store, reader, Some(games)))) => {
                tracing::info!(vm_id = %settings.vm_id, games, "registered Ready");
                return Some(Registered {
                    store,
                    reader,
                    at: Instant::now(),
                });
            }
            Ok(Ok((store, reader, None))) => {
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
    let reader = warmpool::store::builder(redis)?.build()?;
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
    vm_id: &str,
    execution_id: &str,
    entry_id: &str,
    retention_ms: u64,
    stop: &Stop,
) -> anyhow::Result<()> {
    let (attempt, job_json) =
        match executions::start(store, vm_id, execution_id, retention_ms).await? {
            Start::Run { attempt, job_json } => (attempt, job_json),
            Start::Skip => {
                executions::ack(store, vm_id, entry_id).await?;
                return Ok(());
            }
            Start::VmDead => {
                stop.end(ExitReason::Retired);
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
