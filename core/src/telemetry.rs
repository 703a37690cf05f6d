//! How both binaries start: their log output and their tokio runtime.

use std::fmt::Display;
use std::future::Future;
use std::num::NonZeroUsize;
use std::process::ExitCode;

/// The default log filter of both binaries.
pub const DEFAULT_LOG: &str = "warn,warmpool=info,warmpool_core=info,warmpool_agent=info";

/// Logs to stderr, filtered by `WARMPOOL_LOG` (else `RUST_LOG`, else [`DEFAULT_LOG`]).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARMPOOL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A multi-threaded runtime with `worker_threads` workers (`None`: one per CPU). A replica on
/// one vCPU (Cloud Run's default) runs best with 1.
pub fn runtime(worker_threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n.get());
    }
    builder.enable_all().build()
}

/// Runs a binary's work on [`runtime`] and turns its end into the process's exit status: an
/// error is printed as one line `error: …` (with its causes, for an `anyhow::Error`).
pub fn block_on<E: Display>(
    worker_threads: Option<NonZeroUsize>,
    work: impl Future<Output = Result<ExitCode, E>>,
) -> ExitCode {
    let runtime = match runtime(worker_threads) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
