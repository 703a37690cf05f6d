//! The `warmpool` command line: `serve`, `dev`, `exec`, `sim`. The benchmarks and the demo are
//! `warmpool-tools`, which production never installs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::redis_server::RedisServer;
use warmpool_core::model::{Execution, ExecutionState, FileSpec};

#[derive(Parser)]
#[command(
    name = "warmpool",
    version,
    about = "A steady, warm pool of VMs for untrusted game code"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: warmpool_core::telemetry::LogSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Run one orchestrator replica (API + background loops).
    Serve(Box<Config>),
    /// Everything on this machine: its own redis-server (unless WARMPOOL_REDIS_URL is set), an
    /// orchestrator and local agent VMs. Prints `ready: http://ADDR` once the API answers.
    Dev(Box<Config>),
    /// Submit a program to a game and print its result.
    Exec(ExecArgs),
    /// Replay a trace of games against the sizing formula and planner on a virtual clock, or
    /// generate a day's trace (`--generate`).
    Sim(crate::sim::SimArgs),
    /// Now `warmpool-tools bench`: runs it, from beside this binary.
    #[command(hide = true, disable_help_flag = true)]
    Bench(Forwarded),
    /// Now `warmpool-tools demo`: runs it, from beside this binary.
    #[command(hide = true, disable_help_flag = true)]
    Demo(Forwarded),
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Game to run in (started if unknown).
    #[arg(long)]
    game: String,
    /// The program; its extension picks the language unless --language is given.
    file: PathBuf,
    #[arg(long)]
    language: Option<String>,
    /// File whose content is the program's standard input.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
    /// The API.
    #[arg(long, env = "WARMPOOL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(
        long,
        env = "WARMPOOL_API_TOKEN",
        default_value = "dev-token",
        hide_env_values = true
    )]
    token: String,
}

/// The arguments of a command that moved to `warmpool-tools`, passed on as they are.
#[derive(clap::Args)]
struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let worker_threads = match &cli.command {
        Command::Serve(config) | Command::Dev(config) => config.worker_threads,
        Command::Exec(_) | Command::Sim(_) | Command::Bench(_) | Command::Demo(_) => None,
    };
    if let Err(err) = warmpool_core::telemetry::init_tracing(&cli.log) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    warmpool_core::telemetry::block_on(worker_threads, async move {
        match cli.command {
            Command::Serve(config) => serve(*config).await.map(|()| ExitCode::SUCCESS),
            Command::Dev(config) => dev(*config).await.map(|()| ExitCode::SUCCESS),
            Command::Exec(args) => exec(args).await,
            Command::Sim(args) => crate::sim::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(f) => Ok(forward_to_tools("bench", &f.args)),
            Command::Demo(f) => Ok(forward_to_tools("demo", &f.args)),
        }
    })
}

/// `warmpool bench|demo` from before the tools left this binary: becomes `warmpool-tools`
/// beside it (a source build has it; a deployment does not, and is told so).
fn forward_to_tools(command: &str, args: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let tools = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("warmpool-tools")))
        .filter(|path| path.exists());
    let Some(tools) = tools else {
        eprintln!(
            "error: `warmpool {command}` is `warmpool-tools {command}`, a binary of its own that \
             a deployment does not install: build it with `cargo build --release --workspace --bins`"
        );
        return ExitCode::FAILURE;
    };
    let err = std::process::Command::new(&tools)
        .arg(command)
        .args(args)
        .exec();
    eprintln!("error: running {}: {err}", tools.display());
    ExitCode::FAILURE
}

/// Cancels the token on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let Some(redis_url) = config.redis_url.clone() else {
        bail!("WARMPOOL_REDIS_URL: required by `warmpool serve` (e.g. redis://10.0.0.5:6379)");
    };
    if config.tokens().is_empty() {
        bail!("WARMPOOL_API_TOKENS: required by `warmpool serve` (comma-separated bearer tokens)");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding WARMPOOL_LISTEN={}", config.listen))?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    crate::server::run(config, redis_url, listener, shutdown).await
}

async fn dev(mut config: Config) -> anyhow::Result<()> {
    config.validate()?;
    if config.api_tokens.is_none() {
        config.api_tokens = Some("dev-token".into());
    }
    if config.metrics_listen.is_none() {
        // On in `dev`: a free loopback port, said where.
        let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        config.metrics_listen = Some(free);
    }
    if let Some(addr) = config.metrics_listen {
        eprintln!("metrics: http://{addr}/metrics");
    }
    let mut own_redis = None;
    let redis_url = match config.redis_url.clone() {
        Some(url) => url,
        None => {
            let server = RedisServer::start()?;
            let url = server.url();
            eprintln!("redis: {url} (private, removed on exit)");
            own_redis = Some(server);
            url
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding WARMPOOL_LISTEN={}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let server = tokio::spawn(crate::server::run(
        config,
        redis_url,
        listener,
        shutdown.clone(),
    ));
    // Announce readiness only once the API answers /readyz.
    let ready_url = format!("http://{addr}/readyz");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if server.is_finished() {
            break;
        }
        if let Ok(r) = client.get(&ready_url).send().await {
            if r.status().is_success() {
                println!("ready: http://{addr}");
                break;
            }
        }
        if Instant::now() > deadline {
            shutdown.cancel();
            bail!("the API did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = server.await.context("orchestrator task")?;
    drop(own_redis);
    result
}

fn language_for(path: &std::path::Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "py" => Some("python"),
        "sh" | "bash" => Some("bash"),
        "js" | "mjs" => Some("javascript"),
        _ => None,
    }
}

async fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let content = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let language = match args.language.clone() {
        Some(l) => l,
        None => language_for(&args.file)
            .context("cannot tell the language from the file name: pass --language")?
            .to_string(),
    };
    let stdin = match &args.stdin {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("main")
        .to_string();
    let body = serde_json::json!({
        "language": language,
        "files": [FileSpec { name, content }],
        "stdin": stdin,
    });
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/games/{}/executions?wait_s={}",
        args.url.trim_end_matches('/'),
        args.game,
        args.wait_s.min(60)
    );
    let response = client
        .post(&url)
        .bearer_auth(&args.token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let mut record: Execution = serde_json::from_str(&text).context("reading the record")?;
    // Longer waits than the API's 60 s cap: keep asking.
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    while !record.state.is_final() && Instant::now() < deadline {
        let url = format!(
            "{}/v1/executions/{}?wait_s=20",
            args.url.trim_end_matches('/'),
            record.execution_id
        );
        record = client
            .get(&url)
            .bearer_auth(&args.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
    }
    Ok(print_record(&record))
}

/// Prints the program's output and a summary; the exit code is the program's.
fn print_record(record: &Execution) -> ExitCode {
    match (&record.state, &record.result) {
        (ExecutionState::Finished, Some(result)) => {
            print!("{}", result.stdout);
            eprint!("{}", result.stderr);
            eprintln!(
                "-- {} on {} | outcome {:?} | exit {:?} | wall {} ms | cpu {} ms",
                record.execution_id,
                record.vm_id.as_deref().unwrap_or("-"),
                result.outcome,
                result.exit_code,
                result.wall_time_ms,
                result.cpu_time_ms
            );
            ExitCode::from(result.exit_code.unwrap_or(1).clamp(0, 255) as u8)
        }
        (state, _) => {
            eprintln!(
                "-- {} is {} {}",
                record.execution_id,
                state.as_str(),
                record
                    .error
                    .as_ref()
                    .map(|e| format!("({}: {})", e.code, e.message))
                    .unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}
