//! `warmpool-agent`: reads its settings (from instance metadata first, with `--from-metadata`)
//! and runs the worker (or a sandbox benchmark). The exit status is documented on
//! `lifecycle::Exit`.

use std::process::ExitCode;

use clap::Parser;
use warmpool_agent::metadata;

fn main() -> ExitCode {
    // First, while this is the only thread: the bootstrap sets environment variables, which is
    // only sound before any other thread could read the environment.
    if metadata::requested(
        std::env::args_os(),
        std::env::var_os(metadata::FROM_METADATA_ENV),
    ) {
        if let Err(err) = metadata::bootstrap() {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    }
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
        Ok(exit) => ExitCode::from(exit.status()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
