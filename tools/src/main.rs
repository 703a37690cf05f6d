//! `warmpool-tools`: what developers and operators run beside warmpool, kept out of the
//! production binary: the benchmarks behind `docs/BENCHMARKS.md` and the narrated demo. Both
//! drive the real `warmpool` and `warmpool-agent` binaries built beside this one.
//!
//! # Layout
//! - [`bench`]: `bench place|exec|startup|gce|sandbox`, each against a baseline in the same run.
//! - [`demo`]: `demo`, a game through a cold start on `warmpool dev` (`make demo`).

mod bench;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warmpool-tools",
    version,
    about = "warmpool's benchmarks and demo (not part of a deployment)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: warmpool_core::telemetry::LogSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (release build): placement rate, execution latency, start-up, Compute Engine
    /// scale-up, sandbox overhead.
    Bench(bench::BenchArgs),
    /// A narrated local run: `warmpool dev`, a game through a cold start, the pool, shutdown.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = warmpool_core::telemetry::init_tracing(&cli.log) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    warmpool_core::telemetry::block_on(None, async move {
        match cli.command {
            Command::Bench(args) => bench::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    })
}
