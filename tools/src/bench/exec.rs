//! End-to-end latency of a trivial program through API → Redis → agent → sandbox, against the
//! same sandbox run directly by the agent binary (`warmpool-agent bench-sandbox`), in one run.
//!
//! Both phases time a job that reaches an idle agent: `bench-sandbox` lets the slot's warm
//! refill finish before each run, and the end-to-end phase leaves `--gap-ms` between one
//! result and the next submission (untimed), as a game's moves come, so that its refill
//! finishes too. Back to back on one slot a job would wait for the refill its predecessor
//! started; `--warm off` measures the cold sandbox instead.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{round2, sibling, summarize, Report, ServeProcess};
use warmpool::redis_server::RedisServer;

#[derive(Args)]
pub struct ExecArgs {
    /// Executions per phase.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Sandbox backend of the agent (`bwrap`, or `process` for an unsandboxed comparison).
    #[arg(long, default_value = "bwrap")]
    sandbox: String,
    /// Warm sandboxes in the agent (`on`, its default, or `off`), for both phases.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    warm: String,
    /// Untimed pause between one end-to-end result and the next submission.
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
}

const POOL: &str = "bench";
const PROGRAM: &str = "pass";

pub async fn run(args: ExecArgs) -> anyhow::Result<Report> {
    let agent_bin = sibling("warmpool-agent");
    anyhow::ensure!(
        agent_bin.exists(),
        "{} is missing: cargo build --release --workspace --bins",
        agent_bin.display()
    );

    // Baseline: the same sandbox, called directly, same program, same machine, same run.
    let out = Command::new(&agent_bin)
        .args([
            "bench-sandbox",
            "--runs",
            &args.runs.to_string(),
            "--language",
            "python",
            "--code",
            PROGRAM,
        ])
        .env("WARMPOOL_AGENT_SANDBOX", &args.sandbox)
        .env("WARMPOOL_SANDBOX_WARM", &args.warm)
        .env("WARMPOOL_AGENT_SLOTS", "1")
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "bench-sandbox failed");
    let direct: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let direct_ms: Vec<f64> = direct["times_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let direct = summarize(direct_ms);

    let redis = RedisServer::start()?;
    let replica = ServeProcess::spawn(&redis.url(), POOL, &[])?;
    let mut agent = Command::new(&agent_bin)
        .args(["--vm-id", "bench-vm"])
        .env("WARMPOOL_REDIS_URL", redis.url())
        .env("WARMPOOL_POOL", POOL)
        .env("WARMPOOL_AGENT_SANDBOX", &args.sandbox)
        .env("WARMPOOL_SANDBOX_WARM", &args.warm)
        .env("WARMPOOL_AGENT_SLOTS", "1")
        .env("WARMPOOL_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let result = async {
        let client = reqwest::Client::new();
        replica.wait_ready(&client, Duration::from_secs(10)).await?;
        // Wait until the agent is Ready (it probes its sandbox first).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pool: serde_json::Value = client
                .get(format!("{}/v1/pool", replica.url))
                .bearer_auth("bench-token")
                .send()
                .await?
                .json()
                .await?;
            if pool["vms"][0]["state"] == "ready" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "agent not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let body =
            json!({"language": "python", "files": [{"name": "main.py", "content": PROGRAM}]});
        let url = format!("{}/v1/games/bench-game/executions?wait_s=30", replica.url);
        let mut samples = Vec::with_capacity(args.runs);
        for i in 0..args.runs + 5 {
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
            let t = Instant::now();
            let r = client
                .post(&url)
                .bearer_auth("bench-token")
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 200, "submit answered {}", r.status());
            let record: serde_json::Value = r.json().await?;
            anyhow::ensure!(
                record["result"]["exit_code"] == 0,
                "program failed: {record}"
            );
            // The first few warm the connection and the agent.
            if i >= 5 {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok::<_, anyhow::Error>(summarize(samples))
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let e2e = result?;

    let over50 = round2(e2e.p50_ms - direct.p50_ms);
    let over99 = round2(e2e.p99_ms - direct.p99_ms);
    let table = format!(
        "warmpool-tools bench exec (python `{PROGRAM}`, {} runs per phase, sandbox {}, warm {}, gap {} ms)\n\
         {:<40} {:>9} {:>9} {:>9}\n\
         {:<40} {:>9} {:>9} {:>9}\n\
         {:<40} {:>9} {:>9} {:>9}\n\
         overhead over the bare sandbox: p50 {over50} ms (target < 10), p99 {over99} ms (target < 30)",
        args.runs, args.sandbox, args.warm, args.gap_ms,
        "phase", "p50 ms", "p99 ms", "max ms",
        "sandbox run directly (baseline)", direct.p50_ms, direct.p99_ms, direct.max_ms,
        "API -> Redis -> agent -> sandbox", e2e.p50_ms, e2e.p99_ms, e2e.max_ms,
    );
    let json = json!({
        "bench": "exec",
        "runs": args.runs,
        "sandbox": args.sandbox,
        "warm": args.warm,
        "gap_ms": args.gap_ms,
        "direct": direct,
        "end_to_end": e2e,
        "overhead_p50_ms": over50,
        "overhead_p99_ms": over99,
    });
    Ok(Report { table, json })
}
