//! Start-up and footprint of `warmpool serve` (replicas scale from zero on Cloud Run): time
//! from exec to `/readyz` answering 200, and RSS once idle. Baseline in the same run: starting
//! the same binary as `warmpool --version`, which exits at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{summarize, Report, ServeProcess};
use warmpool::redis_server::RedisServer;

#[derive(Args)]
pub struct StartupArgs {
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub async fn run(args: StartupArgs) -> anyhow::Result<Report> {
    let redis = RedisServer::start()?;
    let client = reqwest::Client::new();
    // Baseline: starting the `warmpool` binary and exiting at once.
    let mut bare = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let status = Command::new(super::sibling("warmpool"))
            .arg("--version")
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success());
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let replica = ServeProcess::spawn(&redis.url(), "bench", &[])?;
        let at = replica.wait_ready(&client, Duration::from_secs(10)).await?;
        ready.push((at - t).as_secs_f64() * 1000.0);
        // Idle: a few requests served, then nothing for a moment.
        for _ in 0..5 {
            client
                .get(format!("{}/v1/pool", replica.url))
                .bearer_auth("bench-token")
                .send()
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(kb) = rss_kb(replica.child.id()) {
            rss.push(kb as f64 / 1024.0);
        }
    }
    let bare = summarize(bare);
    let ready = summarize(ready);
    let rss = summarize(rss);
    let table = format!(
        "warmpool-tools bench startup ({} starts)\n\
         {:<44} {:>9} {:>9}\n\
         {:<44} {:>9} {:>9}\n\
         {:<44} {:>9} {:>9}\n\
         idle RSS: p50 {} MiB, max {} MiB (target < 30); ready p50 {} ms (target < 100)",
        args.runs,
        "phase",
        "p50 ms",
        "p99 ms",
        "`warmpool --version` (process start baseline)",
        bare.p50_ms,
        bare.p99_ms,
        "`warmpool serve` exec -> /readyz 200",
        ready.p50_ms,
        ready.p99_ms,
        rss.p50_ms,
        rss.max_ms,
        ready.p50_ms,
    );
    let json = json!({
        "bench": "startup",
        "runs": args.runs,
        "process_start_ms": bare,
        "exec_to_ready_ms": ready,
        "idle_rss_mib": {"p50": rss.p50_ms, "max": rss.max_ms},
    });
    Ok(Report { table, json })
}
