//! What the orchestrator's and the agent's configurations share: the error that names a bad
//! setting, the parsers of durations, and the settings one side passes to the other.

use std::time::Duration;

/// A configuration mistake, named so the operator can fix it: the process stops with this one
/// line before it starts anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub name: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            name,
            message: message.into(),
        }
    }
}

/// Refuses the first of `settings` (name, value) that is zero (a count, a duration).
pub fn all_positive<T: PartialEq + Default>(
    settings: impl IntoIterator<Item = (&'static str, T)>,
) -> Result<(), ConfigError> {
    match settings.into_iter().find(|(_, v)| *v == T::default()) {
        Some((name, _)) => Err(ConfigError::new(name, "must be greater than 0")),
        None => Ok(()),
    }
}

/// A duration in seconds, fractions allowed (`1.5`), for `…_S` settings.
pub fn secs(text: &str) -> Result<Duration, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{text:?}: seconds must be 0 or more"))
}

/// A duration in whole milliseconds, for `…_MS` settings.
pub fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))
}

/// Which sandbox runs the jobs on a VM (`WARMPOOL_AGENT_SANDBOX`): the agent's setting, which
/// the local provider passes to the agents it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SandboxBackend {
    /// bubblewrap: namespaces, a private tmpfs root, an unprivileged uid. Production.
    Bwrap,
    /// nsjail: the same sandbox, plus a read-only root and nsjail's own backstops. Production
    /// (the agent image's default).
    Nsjail,
    /// The bare process in a temporary directory with rlimits only. Development only: untrusted
    /// code run this way can read the host's files and reach its network.
    Process,
}

impl SandboxBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bwrap => "bwrap",
            Self::Nsjail => "nsjail",
            Self::Process => "process",
        }
    }
}

impl std::fmt::Display for SandboxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `on`/`off` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_their_unit_and_refuse_the_rest() {
        assert_eq!(secs("120"), Ok(Duration::from_secs(120)));
        assert_eq!(secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(secs("0"), Ok(Duration::ZERO));
        for bad in ["-1", "NaN", "inf", "ten", ""] {
            assert!(secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(millis("1500"), Ok(Duration::from_millis(1500)));
        for bad in ["1.5", "-1", "x"] {
            assert!(millis(bad).is_err(), "{bad:?}");
        }
    }
}
