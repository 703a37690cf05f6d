//! Placement throughput: the raw `put_game` script against the same placement through the
//! HTTP API of two `warmpool serve` replicas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{cpu_ms, round2, summarize, Report, ServeProcess, Summary};
use warmpool::redis_server::RedisServer;
use warmpool_core::store::games::{self, Placement};
use warmpool_core::store::vms;
use warmpool_core::store::{RedisSettings, Store};

#[derive(Args)]
pub struct PlaceArgs {
    /// Placements per phase.
    #[arg(long, default_value_t = 20_000)]
    placements: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

const POOL: &str = "bench";

/// Runs `total` operations over `concurrency` tasks; returns (ops/s, latency).
async fn drive<F, Fut>(total: u64, concurrency: usize, op: F) -> anyhow::Result<(f64, Summary)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(samples);
                }
                let t = Instant::now();
                op(i).await?;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((total as f64 / secs, summarize(all)))
}

/// Paced load at `rate` per second for `count` requests: latency below saturation.
async fn paced<F, Fut>(rate: f64, count: u64, op: F) -> anyhow::Result<Summary>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            op(i).await?;
            Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(t.await??);
    }
    Ok(summarize(samples))
}

pub async fn run(args: PlaceArgs) -> anyhow::Result<Report> {
    let redis = RedisServer::start()?;
    let settings = RedisSettings {
        url: redis.url(),
        pool_size: 8,
        command_timeout: Duration::from_secs(5),
    };
    let store = Store::connect(&settings, POOL).await?;
    // What the replicas publish when they start; the VMs registered here need it first.
    let config = warmpool::config::Config::defaults();
    warmpool_core::store::settings::publish(&store, &config.pool_settings()).await?;
    // Enough Ready capacity that every game in every phase is placed (no pending path).
    for i in 0..50 {
        let vm = format!("vm-{i}");
        let registered = vms::register(&store, &vm, 10_000, &[], "bench", "").await?;
        anyhow::ensure!(
            matches!(registered, vms::Registration::Ok { .. }),
            "registering {vm}: {registered:?}"
        );
    }

    let redis_pid = redis.pid().unwrap_or(0);
    let me = std::process::id();

    // Baseline: the placement script called directly.
    let (redis0, me0) = (cpu_ms(redis_pid), cpu_ms(me));
    let s = store.clone();
    let (raw_rate, raw_lat) = drive(args.placements, args.concurrency, move |i| {
        let s = s.clone();
        async move {
            games::put_game(
                &s,
                &format!("raw-{i}"),
                None,
                Duration::from_secs(600),
                Placement::LeastLoaded,
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let raw_cpu = (
        (cpu_ms(me) - me0) * 1000.0 / args.placements as f64,
        (cpu_ms(redis_pid) - redis0) * 1000.0 / args.placements as f64,
    );

    // The API, two replicas (each with one worker thread, as a 1-vCPU replica on Cloud Run runs),
    // clients spread over both.
    let replicas = [
        ServeProcess::spawn(&redis.url(), POOL, &[("WARMPOOL_WORKER_THREADS", "1")])?,
        ServeProcess::spawn(&redis.url(), POOL, &[("WARMPOOL_WORKER_THREADS", "1")])?,
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    for r in &replicas {
        r.wait_ready(&client, Duration::from_secs(10)).await?;
    }
    let urls: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.url.clone()).collect());
    let put = {
        let client = client.clone();
        let urls = urls.clone();
        move |prefix: &'static str| {
            let client = client.clone();
            let urls = urls.clone();
            move |i: u64| {
                let client = client.clone();
                let url = format!("{}/v1/games/{prefix}-{i}", urls[(i % 2) as usize]);
                async move {
                    let r = client.put(url).bearer_auth("bench-token").send().await?;
                    anyhow::ensure!(r.status().as_u16() == 201, "PUT answered {}", r.status());
                    Ok(())
                }
            }
        }
    };
    // Warm the connections, then measure saturation.
    drive(500, args.concurrency, put("warm")).await?;
    let replica_pids: Vec<u32> = replicas.iter().map(|r| r.child.id()).collect();
    let replicas_cpu = || replica_pids.iter().map(|p| cpu_ms(*p)).sum::<f64>();
    let (redis0, me0, rep0) = (cpu_ms(redis_pid), cpu_ms(me), replicas_cpu());
    let (api_rate, api_lat) = drive(args.placements, args.concurrency, put("api")).await?;
    let per = |d: f64| round2(d * 1000.0 / args.placements as f64);
    let api_cpu = (
        per(cpu_ms(me) - me0),
        per(replicas_cpu() - rep0),
        per(cpu_ms(redis_pid) - redis0),
    );
    // Below saturation: a paced load at a quarter of the measured rate.
    let paced_rate = (api_rate / 4.0).max(10.0);
    let paced_n = (paced_rate * 5.0).min(5_000.0) as u64;
    let paced_lat = paced(paced_rate, paced_n, put("paced")).await?;

    let ratio = api_rate / raw_rate;
    let row = |name: &str, rate: f64, l: &Summary| {
        format!(
            "{name:<34} {rate:>10.0} {:>9} {:>9} {:>9}\n",
            l.p50_ms, l.p99_ms, l.max_ms
        )
    };
    let mut table = format!(
        "warmpool-tools bench place ({} placements per phase, {} concurrent clients)\n{:<34} {:>10} {:>9} {:>9} {:>9}\n",
        args.placements, args.concurrency, "phase", "per s", "p50 ms", "p99 ms", "max ms"
    );
    table += &row("raw put_game script (baseline)", raw_rate, &raw_lat);
    table += &row("HTTP API, 2 replicas, saturated", api_rate, &api_lat);
    table += &row(
        &format!("HTTP API, paced at {paced_rate:.0}/s"),
        paced_rate,
        &paced_lat,
    );
    table += &format!(
        "API / raw script rate: {ratio:.2} (target >= 0.5); p99 below saturation: {} ms (target < 5)\n",
        paced_lat.p99_ms
    );
    table += &format!(
        "CPU per placement, us: raw phase: client {:.0}, redis {:.0} | API phase: load generator {:.0}, both replicas {:.0}, redis {:.0} ({} cores shared by all)",
        raw_cpu.0,
        raw_cpu.1,
        api_cpu.0,
        api_cpu.1,
        api_cpu.2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    let json = json!({
        "bench": "place",
        "placements_per_phase": args.placements,
        "concurrency": args.concurrency,
        "raw_script": {"per_s": round2(raw_rate), "latency": raw_lat},
        "api_saturated": {"per_s": round2(api_rate), "latency": api_lat},
        "api_paced": {"per_s": round2(paced_rate), "latency": paced_lat},
        "api_to_raw_ratio": round2(ratio),
        "cpu_us_per_placement": {
            "raw": {"client": round2(raw_cpu.0), "redis": round2(raw_cpu.1)},
            "api": {"load_generator": api_cpu.0, "replicas": api_cpu.1, "redis": api_cpu.2},
        },
    });
    store.quit().await;
    Ok(Report { table, json })
}
