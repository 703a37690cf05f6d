//! Placement throughput: the raw `put_game` script against the same placement through the
//! HTTP API of two `warmpool serve` replicas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{round2, summarize, Report, ServeProcess, Summary};
use crate::pool::vms;
use crate::redis_server::RedisServer;
use crate::routing::{self, Placement};
use crate::store::{RedisSettings, Store};

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
    // Enough Ready capacity that every game in every phase is placed (no pending path).
    for i in 0..50 {
        let vm = format!("vm-{i}");
        vms::add(&store, &vm, 10_000).await?;
        vms::register(&store, &vm, 10_000, &[], "bench").await?;
    }

    // Baseline: the placement script called directly.
    let s = store.clone();
    let (raw_rate, raw_lat) = drive(args.placements, args.concurrency, move |i| {
        let s = s.clone();
        async move {
            routing::put_game(&s, &format!("raw-{i}"), 600_000, Placement::LeastLoaded).await?;
            Ok(())
        }
    })
    .await?;

    // The API, two replicas, clients spread over both.
    let replicas = [
        ServeProcess::spawn(&redis.url(), POOL, &[])?,
        ServeProcess::spawn(&redis.url(), POOL, &[])?,
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
    let (api_rate, api_lat) = drive(args.placements, args.concurrency, put("api")).await?;
    // Below saturation: a paced load at a quarter of the measured rate.
    let paced_rate = (api_rate / 4.0).max(10.0);
    let paced_n = (paced_rate * 5.0).min(5_000.0) as u64;
    let paced_lat = paced(paced_rate, paced_n, put("paced")).await?;

    let ratio = api_rate / raw_rate;
    let table = format!(
        "warmpool bench place ({} placements per phase, {} concurrent clients)\n\
         {:<34} {:>10} {:>9} {:>9} {:>9}\n\
         {:<34} {:>10.0} {:>9} {:>9} {:>9}\n\
         {:<34} {:>10.0} {:>9} {:>9} {:>9}\n\
         {:<34} {:>10.0} {:>9} {:>9} {:>9}\n\
         API / raw script rate: {:.2} (target >= 0.5); p99 below saturation: {} ms (target < 5)",
        args.placements,
        args.concurrency,
        "phase",
        "per s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "raw put_game script (baseline)",
        raw_rate,
        raw_lat.p50_ms,
        raw_lat.p99_ms,
        raw_lat.max_ms,
        "HTTP API, 2 replicas, saturated",
        api_rate,
        api_lat.p50_ms,
        api_lat.p99_ms,
        api_lat.max_ms,
        format!("HTTP API, paced at {paced_rate:.0}/s"),
        paced_rate,
        paced_lat.p50_ms,
        paced_lat.p99_ms,
        paced_lat.max_ms,
        ratio,
        paced_lat.p99_ms,
    );
    let json = json!({
        "bench": "place",
        "placements_per_phase": args.placements,
        "concurrency": args.concurrency,
        "raw_script": {"per_s": round2(raw_rate), "latency": raw_lat},
        "api_saturated": {"per_s": round2(api_rate), "latency": api_lat},
        "api_paced": {"per_s": round2(paced_rate), "latency": paced_lat},
        "api_to_raw_ratio": round2(ratio),
    });
    store.quit().await;
    Ok(Report { table, json })
}
