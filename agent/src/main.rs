//! `warmpool-agent`: reads its settings (from instance metadata first, with `--from-metadata`)
//! and runs the worker (or a sandbox benchmark). The exit status is documented on
//! `lifecycle::Exit`.

use std::process::ExitCode;

use clap::Parser;
use warmpool_agent::metadata;

fn main() -> ExitCode {
    // Inside a warm sandbox (see `sandbox::warm` and `sandbox::stub`): before anything else, because the stub must
    // start no thread, read no setting and trust nothing but its pipe.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(3).collect();
    if args
        .get(1)
        .is_some_and(|a| a == warmpool_agent::sandbox::STUB_COMMAND)
    {
        warmpool_agent::sandbox::stub_main(&args);
    }
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
    let cli = warmpool_agent::config::Cli::parse();
    if let Err(err) = warmpool_core::telemetry::init_tracing(&cli.log) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    warmpool_core::telemetry::block_on(None, async move {
        warmpool_agent::worker::main(cli)
            .await
            .map(|exit| ExitCode::from(exit.status()))
    })
}
