//! `warmpool-agent`: parses its settings and runs the worker (or a sandbox benchmark).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = warmpool_agent::worker::Cli::parse();
    warmpool::cli::init_tracing();
    let runtime = match warmpool::cli::runtime() {
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
