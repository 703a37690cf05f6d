//! `warmpool-agent`: parses its settings and runs the worker (or a sandbox benchmark).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = warmpool_agent::worker::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARMPOOL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,warmpool=info,warmpool_agent=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warmpool_agent::worker::main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
