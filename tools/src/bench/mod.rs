//! `warmpool-tools bench place|exec|startup|gce|sandbox`: figures for `docs/BENCHMARKS.md`. Each
//! bench starts its own processes (and redis-server, where it needs one) on loopback, measures a
//! baseline in the same run (this machine is shared and noisy: ratios mean more than
//! absolutes), prints a table, or one JSON object with `--json`. Every load is bounded in count
//! and time and stops by itself.

mod exec;
mod gce;
mod place;
mod sandbox;
mod startup;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Which {
    /// Placements per second and latency through the API (two replicas) against the raw
    /// placement script on the same Redis.
    Place(place::PlaceArgs),
    /// End-to-end latency of a trivial program (API → Redis → agent → sandbox) against the
    /// same sandbox run directly.
    Exec(exec::ExecArgs),
    /// Time from exec to /readyz answering 200, and idle RSS, of `warmpool serve`.
    Startup(startup::StartupArgs),
    /// Scaling up on the fake Compute Engine: time to all inserts accepted, API calls per VM.
    Gce(gce::GceArgs),
    /// Per-execution cost of each sandbox configuration (process, bwrap, cgroups, seccomp,
    /// nsjail) against the same program exec'd bare.
    Sandbox(sandbox::SandboxArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: a debug build; figures are only meaningful from `cargo build --release`"
        );
    }
    let report = match args.which {
        Which::Place(a) => place::run(a).await?,
        Which::Exec(a) => exec::run(a).await?,
        Which::Startup(a) => startup::run(a).await?,
        Which::Gce(a) => gce::run(a).await?,
        Which::Sandbox(a) => sandbox::run(a).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report.json)?);
    } else {
        println!("{}", report.table);
    }
    Ok(())
}

/// What a bench prints.
pub struct Report {
    pub table: String,
    pub json: serde_json::Value,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(mut samples_ms: Vec<f64>) -> Summary {
    samples_ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if samples_ms.is_empty() {
            return 0.0;
        }
        let i = ((samples_ms.len() as f64 - 1.0) * q).round() as usize;
        round2(samples_ms[i])
    };
    Summary {
        n: samples_ms.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// CPU time (user + system) a process has used so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz.max(1.0)
}

/// A sibling binary of this one (target/release/warmpool-agent beside target/release/warmpool-tools).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A `warmpool serve` child process (the `warmpool` binary beside this one), killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl ServeProcess {
    pub fn spawn(
        redis_url: &str,
        pool: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<ServeProcess> {
        let port = warmpool::redis_server::free_port()?;
        let mut cmd = Command::new(sibling("warmpool"));
        cmd.arg("serve")
            .env("WARMPOOL_REDIS_URL", redis_url)
            .env("WARMPOOL_POOL", pool)
            .env("WARMPOOL_LISTEN", format!("127.0.0.1:{port}"))
            .env("WARMPOOL_API_TOKENS", "bench-token")
            .env("WARMPOOL_PROVIDER", "none")
            .env("WARMPOOL_MIN_VMS", "0")
            .env("WARMPOOL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Ok(ServeProcess {
            child: cmd.spawn()?,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Polls /readyz every millisecond until it answers 200; returns when it did.
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.url);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(Instant::now());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
