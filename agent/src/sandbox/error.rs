//! Why the sandbox could not run a job: the one error type of the sandbox's boundary, and the
//! stable code each variant gives metric labels and the execution's `error.code`.

/// Why the system could not run a job (as opposed to the job running and failing, which is an
/// `Ok` [`ExecutionResult`](warmpool_core::model::ExecutionResult)).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    #[error(
        "bubblewrap (bwrap) was not found on PATH: install the `bubblewrap` package, or use the \
         `process` backend for development only"
    )]
    BwrapMissing,
    #[error(
        "nsjail is not usable: {0} (install it: scripts/ensure-deps.sh, or the agent image; set \
         WARMPOOL_SANDBOX_NSJAIL to its path; or use the bwrap backend)"
    )]
    NsjailUnavailable(String),
    #[error("per-execution cgroups are unavailable: {0}")]
    Cgroups(String),
    #[error("the sandbox probe failed: {0}")]
    ProbeFailed(String),
    #[error("language {0:?} is not available on this VM")]
    LanguageUnavailable(String),
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("could not prepare the sandbox: {context}")]
    Prepare {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the sandbox")]
    Spawn(#[source] std::io::Error),
}

impl SandboxError {
    /// A short, stable code for metric labels and the execution's `error.code`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "invalid_config",
            Self::BwrapMissing | Self::NsjailUnavailable(_) => "sandbox_unavailable",
            Self::Cgroups(_) => "cgroups_unavailable",
            Self::ProbeFailed(_) => "probe_failed",
            Self::LanguageUnavailable(_) => "language_unavailable",
            Self::InvalidJob(_) => "invalid_job",
            Self::Prepare { .. } => "prepare_failed",
            Self::Spawn(_) => "spawn_failed",
        }
    }
}
