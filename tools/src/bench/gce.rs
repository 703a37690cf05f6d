//! Scaling up on Compute Engine (the fake of `fake-gce/`, on loopback): time from a desired-size
//! change to every insert accepted, and API calls per VM created.
//!
//! Phases, each on a fresh fake and Redis:
//! - **raw client** (baseline): N inserts straight through the official client, 32 at once.
//! - **warmpool, no budget**: a reservation of N games makes the formula ask for N VMs; the
//!   leader records and creates them (`WARMPOOL_GCE_MAX_INSERTS_PER_MIN` lifted).
//! - **warmpool, default budget**: the same with the default per-minute insert budget.
//! - **faults + leader change**: zone-a stocked out, 429s, 503s and lost answers injected, and
//!   the leading replica stopped a third of the way through; a second replica takes over.
//!
//! The fake runs no agents here: only the provider's side is measured.

use std::time::{Duration, Instant};

use clap::Args;
use google_cloud_gax::options::RequestOptionsBuilder;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warmpool_fake_gce::{FakeGce, FakeGceConfig, Method};

use super::{round2, Report};
use warmpool::config::Config;
use warmpool::redis_server::RedisServer;

#[derive(Args)]
pub struct GceArgs {
    /// VMs the desired size jumps to.
    #[arg(long, default_value_t = 100)]
    vms: u32,
    /// How long the fake's insert operations run.
    #[arg(long, default_value_t = 1_000)]
    op_delay_ms: u64,
}

const POOL: &str = "bench";
const TOKEN: &str = "bench-token";

#[derive(Debug, Clone, serde::Serialize)]
struct Phase {
    name: &'static str,
    ms: f64,
    vms: u32,
    insert_calls: u64,
    inserts_per_vm: f64,
    /// Distinct instances that exist at the end per VM asked for (1.0: none missing, none twice).
    instances_per_vm: f64,
    deduplicated: u64,
    operation_polls_per_vm: f64,
}

async fn fake(op_delay: Duration) -> anyhow::Result<FakeGce> {
    FakeGce::start(FakeGceConfig {
        op_delay,
        ..FakeGceConfig::default()
    })
    .await
}

/// Instances that exist outside the stocked-out zone, if any (there an accepted insert is
/// taken away again when its operation ends).
fn live(fake: &FakeGce, stocked_out: Option<&str>) -> usize {
    fake.instances()
        .iter()
        .filter(|i| Some(i.zone.as_str()) != stocked_out)
        .count()
}

async fn until_live(
    fake: &FakeGce,
    n: u32,
    stocked_out: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while live(fake, stocked_out) < n as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} instances after {timeout:?}",
            live(fake, stocked_out)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn phase(name: &'static str, seconds: f64, n: u32, fake: &FakeGce) -> Phase {
    let c = fake.counters();
    let mut names: Vec<String> = fake.instances().into_iter().map(|i| i.name).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    // A name in two zones would be two VMs for one record: count it against the figure.
    let distinct = names.len() as f64 - (total - names.len()) as f64;
    Phase {
        name,
        ms: round2(seconds * 1000.0),
        vms: n,
        insert_calls: c.insert_calls,
        inserts_per_vm: round2(c.insert_calls as f64 / f64::from(n)),
        instances_per_vm: round2(distinct / f64::from(n)),
        deduplicated: c.duplicate_inserts_deduplicated,
        operation_polls_per_vm: round2(c.operation_calls as f64 / f64::from(n)),
    }
}

/// The baseline: N inserts through the raw client, 32 at once, no warmpool around them.
async fn raw(n: u32, op_delay: Duration) -> anyhow::Result<Phase> {
    let fake = fake(op_delay).await?;
    let client = google_cloud_compute_v1::client::Instances::builder()
        .with_endpoint(fake.endpoint())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await?;
    let started = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = client.clone();
        let slots = slots.clone();
        let project = fake.project().to_string();
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire().await;
            client
                .insert()
                .set_project(project)
                .set_zone("zone-a")
                .set_request_id(uuid::Uuid::new_v4().to_string())
                .set_body(
                    google_cloud_compute_v1::model::Instance::new()
                        .set_name(format!("wp-raw-{i}"))
                        .set_machine_type("zones/zone-a/machineTypes/e2-standard-2"),
                )
                .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
                .send()
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let p = phase(
        "raw client (baseline)",
        started.elapsed().as_secs_f64(),
        n,
        &fake,
    );
    fake.shutdown().await;
    Ok(p)
}

fn config(fake: &FakeGce, n: u32, inserts_per_min: u32) -> Config {
    let mut c = Config::defaults();
    c.pool = POOL.into();
    c.api_tokens = Some(TOKEN.into());
    c.provider = warmpool::config::ProviderKind::Gce;
    c.games_per_vm = 1;
    c.pool_formula = Some("games + pending + reserved".into());
    c.max_vms = n;
    c.max_creates_per_pass = n;
    c.reconcile_interval = Duration::from_secs(1);
    c.provider_sync_interval = Duration::from_secs(1);
    c.leader_ttl = Duration::from_secs(1);
    // No agents run on the fake: the VMs never register, and must not time out meanwhile.
    c.boot_timeout = Duration::from_secs(3_600);
    c.gce.project = Some(fake.project().into());
    c.gce.zones = Some("zone-a,zone-b".into());
    c.gce.agent_image = "registry.invalid/warmpool/agent:bench".into();
    c.gce.endpoint = Some(fake.endpoint());
    c.gce.credentials = warmpool::gce::config::Credentials::Anonymous;
    c.gce.poll = Duration::from_millis(250);
    c.gce.max_inserts_per_min = inserts_per_min;
    c
}

struct Replica {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn replica(config: Config, redis_url: &str) -> anyhow::Result<Replica> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(warmpool::server::run(
        config,
        redis_url.to_string(),
        listener,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the replica did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Replica {
        url,
        shutdown,
        task,
    })
}

impl Replica {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The desired-size change: a reservation of `n` games from now, then a reconcile.
async fn reserve(url: &str, n: u32) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let r = client
        .post(format!("{url}/v1/pool/reservations"))
        .bearer_auth(TOKEN)
        .json(&json!({"games": n, "start_at": warmpool_core::model::rfc3339_ms(now), "duration_s": 3600}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 201,
        "reservation: {}",
        r.text().await?
    );
    client
        .post(format!("{url}/v1/pool/reconcile"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    Ok(())
}

async fn warmpool(
    name: &'static str,
    n: u32,
    op_delay: Duration,
    inserts_per_min: u32,
) -> anyhow::Result<Phase> {
    let redis = RedisServer::start()?;
    let fake = fake(op_delay).await?;
    let one = replica(config(&fake, n, inserts_per_min), &redis.url()).await?;
    let started = Instant::now();
    reserve(&one.url, n).await?;
    until_live(&fake, n, None, Duration::from_secs(600)).await?;
    let p = phase(name, started.elapsed().as_secs_f64(), n, &fake);
    one.stop().await;
    fake.shutdown().await;
    Ok(p)
}

async fn faults_and_failover(n: u32, op_delay: Duration) -> anyhow::Result<Phase> {
    let redis = RedisServer::start()?;
    let fake = fake(op_delay).await?;
    fake.set_stockout("zone-a", true);
    fake.fail_next(Method::Insert, n / 10, 429);
    fake.fail_next(Method::Insert, n / 20, 503);
    fake.lose_next_insert_responses(n / 10);
    let first = replica(config(&fake, n, 100_000), &redis.url()).await?;
    let second = replica(config(&fake, n, 100_000), &redis.url()).await?;
    let started = Instant::now();
    reserve(&first.url, n).await?;
    // A third of the way, the leader goes (the first replica leads: it started first).
    let third = n / 3;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (live(&fake, Some("zone-a")) as u32) < third {
        anyhow::ensure!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.stop().await;
    until_live(&fake, n, Some("zone-a"), Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    // Let the new leader's inventory settle, so a duplicate would have had time to appear.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = phase("faults + leader change (no budget)", seconds, n, &fake);
    second.stop().await;
    fake.shutdown().await;
    Ok(p)
}

pub async fn run(args: GceArgs) -> anyhow::Result<Report> {
    let n = args.vms.max(1);
    let op_delay = Duration::from_millis(args.op_delay_ms);
    let phases = vec![
        raw(n, op_delay).await?,
        warmpool("warmpool, budget lifted", n, op_delay, 100_000).await?,
        warmpool("warmpool, default budget 300/min", n, op_delay, 300).await?,
        faults_and_failover(n, op_delay).await?,
    ];
    let base = phases[0].ms.max(0.01);
    let mut table = format!(
        "warmpool-tools bench gce ({n} VMs at once; fake operations take {} ms)\n\
         {:<38} {:>8} {:>7} {:>8} {:>10} {:>10} {:>6} {:>8}\n",
        args.op_delay_ms,
        "phase",
        "ms",
        "× raw",
        "inserts",
        "inserts/VM",
        "inst./VM",
        "dedup",
        "polls/VM"
    );
    for p in &phases {
        table.push_str(&format!(
            "{:<38} {:>8} {:>7} {:>8} {:>10} {:>10} {:>6} {:>8}\n",
            p.name,
            p.ms,
            round2(p.ms / base),
            p.insert_calls,
            p.inserts_per_vm,
            p.instances_per_vm,
            p.deduplicated,
            p.operation_polls_per_vm
        ));
    }
    table.push_str(
        "ms: desired-size change → every insert accepted (instances exist at the fake); \
         inst./VM: distinct instances per VM asked for (target 1.00)",
    );
    Ok(Report {
        table,
        json: json!({ "vms": n, "op_delay_ms": args.op_delay_ms, "phases": phases }),
    })
}
