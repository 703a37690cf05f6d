//! The agent's configuration: its command line and environment, parsed into types (durations,
//! enums) and validated before anything starts, so a bad value stops the agent with one line
//! naming it, as it stops the orchestrator.
//!
//! What every process of a pool must agree on is not here: the agent receives the pool's
//! placement when it registers (`warmpool_core::store::settings`), and each execution record
//! carries its own retention.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warmpool_core::config::{all_positive, millis, secs, ConfigError, SandboxBackend, Switch};

use crate::lifecycle::{Disposal, OnExit};
use crate::metadata;
use crate::sandbox::{CgroupMode, SandboxConfig};

#[derive(Parser, Debug)]
#[command(name = "warmpool-agent", version, about = "warmpool's VM agent")]
pub struct Cli {
    /// Read the VM's settings from Compute Engine instance metadata first (see
    /// `agent/deploy/README.md`); waits for the metadata server up to
    /// WARMPOOL_AGENT_METADATA_TIMEOUT_S (default 60). Handled in `main` before this parser runs:
    /// declared here so that clap accepts it and `--help` lists it.
    #[arg(long, env = metadata::FROM_METADATA_ENV, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub from_metadata: bool,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub log: warmpool_core::telemetry::LogSettings,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Runs a trivial program N times directly in the sandbox and prints one JSON object of
    /// per-run latencies (the baseline of `warmpool-tools bench exec`).
    BenchSandbox {
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value = "python")]
        language: String,
        #[arg(long, default_value = "pass")]
        code: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// This VM's id (the pool knows it by this). Required.
    #[arg(long, env = "WARMPOOL_VM_ID", default_value = "")]
    pub vm_id: String,
    #[arg(long, env = "WARMPOOL_POOL", default_value = "default")]
    pub pool: String,
    /// The pool's Redis. Required.
    #[arg(
        long,
        env = "WARMPOOL_REDIS_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Games this VM takes.
    #[arg(long, env = "WARMPOOL_VM_CAPACITY", default_value_t = 8)]
    pub capacity: u32,
    /// Concurrent sandboxes.
    #[arg(long, env = "WARMPOOL_AGENT_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// `bwrap`, `nsjail` (production image), or `process` (unsandboxed; development only).
    #[arg(long, env = "WARMPOOL_AGENT_SANDBOX", value_enum, default_value_t = SandboxBackend::Bwrap)]
    pub sandbox: SandboxBackend,
    /// Wait this long before registering (the local provider's simulated boot).
    #[arg(long = "boot-delay-ms", env = "WARMPOOL_AGENT_BOOT_DELAY_MS", value_parser = millis, default_value = "0")]
    pub boot_delay: Duration,
    /// Heartbeat period (at least 50 ms).
    #[arg(long = "heartbeat-interval-ms", env = "WARMPOOL_HEARTBEAT_INTERVAL_MS", value_parser = millis, default_value = "1000")]
    pub heartbeat_interval: Duration,
    /// Sandbox slot i runs as uid/gid base + i.
    #[arg(long, env = "WARMPOOL_SANDBOX_UID_BASE", default_value_t = 60_000)]
    pub uid_base: u32,
    /// Size of each execution's tmpfs work directory.
    #[arg(long, env = "WARMPOOL_SANDBOX_WORK_MB", default_value_t = 64)]
    pub work_dir_mb: u64,
    /// Per-execution cgroups (memory and process limits): `auto` (use them if this host
    /// allows, warn if not), `required` (refuse to start without them) or `off`.
    #[arg(long, env = "WARMPOOL_SANDBOX_CGROUPS", value_enum, default_value_t = CgroupMode::Auto)]
    pub sandbox_cgroups: CgroupMode,
    /// CPU cap of each execution, in cores (its cgroup's bandwidth limit, 0.01 to 1024): a
    /// program cannot take more than this from the other games on the VM. 0: no cap.
    #[arg(long, env = "WARMPOOL_SANDBOX_CPUS", default_value_t = 1.0)]
    pub sandbox_cpus: f64,
    /// The sandbox's seccomp filter (see `sandbox::seccomp`): `on`, or `off` only to measure
    /// what it costs (`warmpool-tools bench sandbox`).
    #[arg(long, env = "WARMPOOL_SANDBOX_SECCOMP", value_enum, default_value_t = Switch::On)]
    pub sandbox_seccomp: Switch,
    /// Warm sandboxes (see `sandbox::warm`): `on` (the default) keeps one launched sandbox per
    /// slot waiting for its job, so a run does not pay for the cgroup, the fork and the
    /// sandbox's start; `off` starts every run cold.
    #[arg(long, env = "WARMPOOL_SANDBOX_WARM", value_enum, default_value_t = Switch::On)]
    pub sandbox_warm: Switch,
    /// How long a SIGTERM'd agent lets running executions finish.
    #[arg(long = "grace-s", env = "WARMPOOL_AGENT_GRACE_S", value_parser = secs, default_value = "30")]
    pub grace: Duration,
    /// This VM's own secret, from the orchestrator (never logged).
    #[arg(
        long,
        env = "WARMPOOL_VM_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub vm_secret: Secret,
    /// No successful Redis round trip (registration, then heartbeats) this long and the agent
    /// is an orphan: it stops and shuts its VM down (WARMPOOL_AGENT_ON_EXIT).
    #[arg(long = "orphan-timeout-s", env = "WARMPOOL_AGENT_ORPHAN_TIMEOUT_S", value_parser = secs, default_value = "300")]
    pub orphan_timeout: Duration,
    /// No orchestrator replica leading the pool and nothing running here this long and the
    /// agent is unattended: it stops and shuts its VM down (WARMPOOL_AGENT_ON_EXIT). Longer
    /// than the orphan timeout: a deploy of every replica should not empty the pool.
    #[arg(
        long = "unattended-timeout-s",
        env = "WARMPOOL_AGENT_UNATTENDED_TIMEOUT_S",
        value_parser = secs,
        default_value = "900"
    )]
    pub unattended_timeout: Duration,
    /// What a retired or orphaned agent does to its VM: `none`, `delete-instance` (falls back
    /// to `poweroff`) or `poweroff`. A SIGTERM never shuts the VM down.
    #[arg(long, env = "WARMPOOL_AGENT_ON_EXIT", value_enum, default_value_t = OnExit::None)]
    pub on_exit: OnExit,
    /// The poweroff command, split on whitespace (no shell).
    #[arg(long, env = "WARMPOOL_AGENT_POWEROFF_CMD", default_value = "poweroff")]
    pub poweroff_cmd: String,
    /// Origin of the Compute API, for the self-delete.
    #[arg(
        long,
        env = "WARMPOOL_AGENT_COMPUTE_ENDPOINT",
        default_value = "https://compute.googleapis.com"
    )]
    pub compute_endpoint: String,
    /// The metadata server (the self-delete's token; the bootstrap reads it too).
    #[arg(long, env = "WARMPOOL_METADATA_URL", default_value = metadata::DEFAULT_URL)]
    pub metadata_url: String,
    /// This VM's instance, `projects/P/zones/Z/instances/N`: what `delete-instance` deletes.
    /// Set by --from-metadata.
    #[arg(long, env = metadata::INSTANCE_ENV, default_value = "")]
    pub instance: String,
}

/// Fewest milliseconds between heartbeats.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

impl Settings {
    /// Checks what the types cannot, for the agent proper (`bench-sandbox` needs no VM id or
    /// Redis). Every error names its variable.
    pub fn validate(&self, runs_the_agent: bool) -> Result<(), ConfigError> {
        if runs_the_agent {
            if self.vm_id.trim().is_empty() {
                return Err(ConfigError::new("WARMPOOL_VM_ID", "required (or --vm-id)"));
            }
            if self.redis_url.trim().is_empty() {
                return Err(ConfigError::new("WARMPOOL_REDIS_URL", "required"));
            }
        }
        if !warmpool_core::rules::valid_pool_name(&self.pool) {
            return Err(ConfigError::new("WARMPOOL_POOL", "1-32 of [a-z0-9-]"));
        }
        all_positive([
            ("WARMPOOL_VM_CAPACITY", u64::from(self.capacity)),
            ("WARMPOOL_AGENT_SLOTS", u64::from(self.slots)),
            ("WARMPOOL_SANDBOX_UID_BASE", u64::from(self.uid_base)),
            ("WARMPOOL_SANDBOX_WORK_MB", self.work_dir_mb),
        ])?;
        if self.uid_base.checked_add(self.slots).is_none() {
            return Err(ConfigError::new(
                "WARMPOOL_SANDBOX_UID_BASE",
                format!(
                    "plus WARMPOOL_AGENT_SLOTS={} overflows the uid range",
                    self.slots
                ),
            ));
        }
        self.cpu_millis()?;
        if self.heartbeat_interval < MIN_HEARTBEAT {
            return Err(ConfigError::new(
                "WARMPOOL_HEARTBEAT_INTERVAL_MS",
                "must be at least 50",
            ));
        }
        for (name, value) in [
            ("WARMPOOL_AGENT_ORPHAN_TIMEOUT_S", self.orphan_timeout),
            (
                "WARMPOOL_AGENT_UNATTENDED_TIMEOUT_S",
                self.unattended_timeout,
            ),
        ] {
            if value < Duration::from_secs(1) {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        self.disposal()?;
        Ok(())
    }

    /// `WARMPOOL_SANDBOX_CPUS` in thousandths of a core: 0 (no cap) or 0.01 to 1024 cores (the
    /// kernel's smallest quota is 1 ms per 100 ms period).
    pub fn cpu_millis(&self) -> Result<u32, ConfigError> {
        let cores = self.sandbox_cpus;
        if cores == 0.0 || (cores.is_finite() && (0.01..=1024.0).contains(&cores)) {
            Ok((cores * 1000.0).round() as u32)
        } else {
            Err(ConfigError::new(
                "WARMPOOL_SANDBOX_CPUS",
                format!("{cores}: 0 (no cap) or 0.01 to 1024 cores"),
            ))
        }
    }

    /// The sandbox these settings ask for.
    pub fn sandbox_config(&self) -> Result<SandboxConfig, ConfigError> {
        Ok(SandboxConfig {
            backend: self.sandbox,
            uid_base: self.uid_base,
            slots: self.slots as usize,
            work_dir_mb: self.work_dir_mb,
            cgroups: self.sandbox_cgroups,
            seccomp: self.sandbox_seccomp.is_on(),
            warm: self.sandbox_warm.is_on(),
            cpu_millis: self.cpu_millis()?,
            ..SandboxConfig::default()
        })
    }

    /// What to do with the VM at the end, checked now.
    pub fn disposal(&self) -> Result<Disposal, ConfigError> {
        let instance = match self.instance.trim() {
            "" => None,
            path => Some(
                path.parse()
                    .map_err(|e| ConfigError::new(metadata::INSTANCE_ENV, e))?,
            ),
        };
        let disposal = Disposal {
            on_exit: self.on_exit,
            instance,
            metadata_url: self.metadata_url.clone(),
            compute_endpoint: self.compute_endpoint.clone(),
            poweroff_cmd: self
                .poweroff_cmd
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        disposal.check()?;
        Ok(disposal)
    }
}

/// A value that must not reach a log: `Debug` shows only whether it is set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(redacted)"
        })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut argv = vec![
            "warmpool-agent",
            "--vm-id",
            "p-1",
            "--redis-url",
            "redis://r",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.settings)
    }

    #[test]
    fn the_defaults_are_valid() {
        let s = parse(&[]).expect("the defaults parse");
        assert_eq!(s.validate(true), Ok(()));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(s.sandbox, SandboxBackend::Bwrap);
        assert_eq!(s.cpu_millis(), Ok(1000));
    }

    #[test]
    fn a_bad_value_stops_the_agent_naming_it() {
        for (args, named) in [
            (&["--slots", "0"][..], "WARMPOOL_AGENT_SLOTS"),
            (&["--capacity", "0"], "WARMPOOL_VM_CAPACITY"),
            (&["--sandbox-cpus", "0.001"], "WARMPOOL_SANDBOX_CPUS"),
            (&["--sandbox-cpus", "NaN"], "WARMPOOL_SANDBOX_CPUS"),
            (
                &["--heartbeat-interval-ms", "10"],
                "WARMPOOL_HEARTBEAT_INTERVAL_MS",
            ),
            (
                &["--orphan-timeout-s", "0"],
                "WARMPOOL_AGENT_ORPHAN_TIMEOUT_S",
            ),
            (&["--uid-base", "4294967295"], "WARMPOOL_SANDBOX_UID_BASE"),
            (&["--pool", "Bad Pool"], "WARMPOOL_POOL"),
            (&["--on-exit", "delete-instance"], "WARMPOOL_AGENT_ON_EXIT"),
        ] {
            let s = parse(args).expect("parses");
            assert_eq!(s.validate(true).map_err(|e| e.name), Err(named), "{args:?}");
        }
        let no_vm_id = Cli::try_parse_from(["warmpool-agent", "--redis-url", "redis://r"])
            .expect("parses")
            .settings;
        assert_eq!(
            no_vm_id.validate(true).map_err(|e| e.name),
            Err("WARMPOOL_VM_ID")
        );
        assert_eq!(
            no_vm_id.validate(false),
            Ok(()),
            "bench-sandbox needs no VM id"
        );
        for args in [
            &["--sandbox", "docker"][..],
            &["--sandbox-cgroups", "maybe"],
            &["--sandbox-warm", "yes"],
            &["--grace-s", "-1"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = parse(&["--vm-secret", "hunter2"]).expect("parses");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Secret(redacted)"), "{shown}");
    }
}
