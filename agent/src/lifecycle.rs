//! How the agent's life ends, and what becomes of its VM: no VM outlives its purpose, even when
//! no orchestrator replica is left to delete it.
//!
//! # Expected flow
//! 1. The worker runs until something ends it through [`Stop`], with an [`ExitReason`]:
//!    - [`ExitReason::Stopped`]: SIGTERM or Ctrl-C. Whoever sent it (the orchestrator deleting
//!      the VM, an operator, the host shutting down) decides the VM's fate: the agent leaves it.
//!    - [`ExitReason::Retired`]: the pool declared this VM dead, or no longer knows it (a
//!      heartbeat's answer, a refused registration, or `start` finding the VM dead). The VM was
//!      retired or failed and must go.
//!    - [`ExitReason::Orphaned`]: no successful Redis round trip (the registration at boot,
//!      then heartbeats: see [`watch`]) for `WARMPOOL_AGENT_ORPHAN_TIMEOUT_S`. Nobody can
//!      give this VM work or see it: it must go.
//!    - [`ExitReason::Unattended`]: Redis answers, but no orchestrator replica has held the
//!      pool's leader lease, and nothing has run here, for `WARMPOOL_AGENT_UNATTENDED_TIMEOUT_S`:
//!      every replica is gone (scaled to zero, deleted), so nobody will retire this VM. A
//!      replica that comes back finds the VM dead and creates what it needs.
//! 2. The worker winds down as on SIGTERM (running executions get the grace period).
//! 3. [`decide`] maps the reason and `WARMPOOL_AGENT_ON_EXIT` to an [`Action`] (pure), and
//!    [`Disposal::carry_out`] does it:
//!    - `none`: nothing (development, the local provider, tests);
//!    - `delete-instance`: `DELETE` the instance through the Compute API with the default
//!      service account's token from the metadata server; 200 or 404 is done; anything else
//!      falls back to `poweroff`;
//!    - `poweroff`: run `WARMPOOL_AGENT_POWEROFF_CMD`.
//! 4. The process exits with an [`Exit`] status that tells its supervisor (the startup script)
//!    what to do: 3 or 4 → power the host off.
//!
//! # Guarantees
//! - SIGTERM never shuts the VM down, and the first reason wins: a VM stopped by SIGTERM while a
//!   heartbeat was failing stays `Stopped`.
//! - With `delete-instance` or `poweroff`, a retired or orphaned VM ends powered off at worst:
//!   a failed delete falls back to powering off, and the exit status asks the host to power
//!   off too, since a containerised agent cannot do it itself.
//!
//! # Caveats
//! - Every replica of a pool runs for the leader lease, so "no leader" means "no replica".
//!   An outage of every replica longer than the timeout (a broken deploy) therefore shuts the
//!   idle VMs down; they come back as a cold start. Games leased to such a VM move when a
//!   replica returns.
//! - A Redis outage longer than the orphan timeout powers off every VM of the pool. Keep the
//!   timeout well above a failover (seconds) and a planned Redis maintenance window.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use warmpool_core::config::ConfigError;
use warmpool_core::model::VmState;
use warmpool_core::store::executions::AgentIdentity;
use warmpool_core::store::vms::{self, Held};
use warmpool_core::store::Store;

use crate::figures::Figures;
use crate::metadata::{self, Instance, Metadata};

/// Why the agent's work loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// SIGTERM or Ctrl-C: stop, and leave the VM to whoever asked.
    Stopped,
    /// The pool declared this VM dead, or does not know it.
    Retired,
    /// No successful Redis round trip for this long.
    Orphaned { silent_for: Duration },
    /// No replica led the pool, and nothing ran here, for this long.
    Unattended { for_: Duration },
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Stopped => write!(f, "stopped by a signal"),
            ExitReason::Retired => write!(f, "the pool declared this VM dead or does not know it"),
            ExitReason::Orphaned { silent_for } => write!(
                f,
                "orphaned: no successful Redis round trip for {} s",
                silent_for.as_secs()
            ),
            ExitReason::Unattended { for_ } => write!(
                f,
                "unattended: no orchestrator replica has led the pool, and nothing has run \
                 here, for {} s",
                for_.as_secs()
            ),
        }
    }
}

/// Ends the worker, remembering why. A child of the signal token: SIGTERM ends it too, as
/// [`ExitReason::Stopped`].
#[derive(Clone)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<ExitReason>>,
}

impl Stop {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Stop {
            token: shutdown.child_token(),
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// Ends the agent for `reason`, unless it is already ending (the first reason stays).
    pub fn end(&self, reason: ExitReason) {
        if !self.token.is_cancelled() && self.reason.set(reason.clone()).is_ok() {
            tracing::warn!(%reason, "the agent stops");
        }
        self.token.cancel();
    }

    /// Ends the agent without a reason of its own (a sandbox or Redis failure the caller
    /// reports): as a stop, the VM stays.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// The token, for code that only needs to know "stop now".
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn reason(&self) -> ExitReason {
        self.reason.get().cloned().unwrap_or(ExitReason::Stopped)
    }
}

/// Heartbeats every `every` until `stop`, and is the dead-man's switch: it ends the agent as
/// [`ExitReason::Retired`] when the heartbeat's answer says the VM is dead or unknown, and as
/// [`ExitReason::Orphaned`] when no heartbeat succeeded for `orphan_after` since `last_ok` (the
/// registration), even while a heartbeat call hangs, and as [`ExitReason::Unattended`] when
/// the heartbeats found no leader and nothing running for `unattended_after` (`None`: never).
pub async fn watch(watch: Watch, mut last_ok: Instant, stop: Stop) {
    let Watch {
        store,
        me,
        every,
        orphan_after,
        unattended_after,
        figures,
    } = watch;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unattended_since: Option<Instant> = None;
    loop {
        let orphaned_at = tokio::time::Instant::from_std(last_ok + orphan_after);
        let beat = async {
            tick.tick().await;
            let sent = figures.take();
            let beat = vms::heartbeat(&store, &me, &sent).await;
            if beat.is_err() {
                figures.keep(sent);
            }
            beat
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout_at(orphaned_at, beat) => r,
        };
        match outcome {
            Err(_elapsed) => {
                stop.end(ExitReason::Orphaned {
                    silent_for: last_ok.elapsed(),
                });
                return;
            }
            Ok(Ok(vms::Beat {
                held: Held::State(VmState::Dead) | Held::Unknown | Held::Refused,
                ..
            })) => {
                stop.end(ExitReason::Retired);
                return;
            }
            Ok(Ok(beat)) => {
                last_ok = Instant::now();
                if beat.led || beat.running > 0 {
                    unattended_since = None;
                } else {
                    let since = *unattended_since.get_or_insert(last_ok);
                    if unattended_after.is_some_and(|after| since.elapsed() >= after) {
                        stop.end(ExitReason::Unattended {
                            for_: since.elapsed(),
                        });
                        return;
                    }
                }
            }
            Ok(Err(err)) => tracing::warn!(
                vm_id = %me.vm_id,
                error = %err,
                silent_s = last_ok.elapsed().as_secs(),
                orphan_after_s = orphan_after.as_secs(),
                "heartbeat failed"
            ),
        }
    }
}

/// What [`watch`] heartbeats with, and when it gives up.
pub struct Watch {
    pub store: Store,
    /// Who the heartbeats speak for.
    pub me: Arc<AgentIdentity>,
    pub every: Duration,
    pub orphan_after: Duration,
    /// `None`: never unattended.
    pub unattended_after: Option<Duration>,
    /// What the heartbeats carry for the pool's `/metrics`.
    pub figures: Arc<Figures>,
}

/// `WARMPOOL_AGENT_ON_EXIT`: what a retired or orphaned agent does to its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Nothing: the agent just stops (development, the local provider, tests).
    None,
    /// Delete the instance through the Compute API; power off if that fails.
    DeleteInstance,
    /// Run `WARMPOOL_AGENT_POWEROFF_CMD` and exit with status 3.
    Poweroff,
}

/// What to do to the VM once the worker has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    LeaveVm,
    DeleteInstance,
    PowerOff,
}

/// The decision, apart from the doing.
pub fn decide(reason: &ExitReason, on_exit: OnExit) -> Action {
    match (reason, on_exit) {
        (ExitReason::Stopped, _) | (_, OnExit::None) => Action::LeaveVm,
        (_, OnExit::DeleteInstance) => Action::DeleteInstance,
        (_, OnExit::Poweroff) => Action::PowerOff,
    }
}

/// How the process ends: its exit status is the startup script's instruction.
///
/// | status | meaning |
/// |---|---|
/// | 0 | stopped; the VM stays (SIGTERM, or `ON_EXIT=none`) |
/// | 1 | an error (bad settings, the sandbox probe failed, metadata unreadable) |
/// | 2 | bad command line (clap) |
/// | 3 | power this VM off: the agent could not delete it (or `ON_EXIT=poweroff`) and ran the poweroff command, which cannot work inside a container |
/// | 4 | the Compute API accepted the delete of this VM (or it was gone); powering off meanwhile is harmless |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Stopped,
    PowerOff,
    Deleted,
}

impl Exit {
    pub const POWER_OFF_STATUS: u8 = 3;
    pub const DELETED_STATUS: u8 = 4;

    pub fn status(self) -> u8 {
        match self {
            Exit::Stopped => 0,
            Exit::PowerOff => Self::POWER_OFF_STATUS,
            Exit::Deleted => Self::DELETED_STATUS,
        }
    }
}

/// A failed self-delete (then the agent powers off instead).
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(
        "no instance to delete (WARMPOOL_AGENT_INSTANCE is empty: start with --from-metadata)"
    )]
    NoInstance,
    #[error("getting a token: {0}")]
    Token(#[source] metadata::MetadataError),
    #[error("Compute API answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Compute API unreachable: {0}")]
    Unreachable(String),
}

/// Everything needed to dispose of the VM; built and checked at start-up, used at the end.
#[derive(Debug, Clone)]
pub struct Disposal {
    pub on_exit: OnExit,
    pub instance: Option<Instance>,
    pub metadata_url: String,
    /// Origin of the Compute API (`https://compute.googleapis.com`); the path is added.
    pub compute_endpoint: String,
    /// The poweroff command as an argument vector (no shell).
    pub poweroff_cmd: Vec<String>,
}

impl Disposal {
    /// Refuses settings that could only fail at the end, when it is too late to say so.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.on_exit == OnExit::DeleteInstance && self.instance.is_none() {
            return Err(ConfigError::new(
                "WARMPOOL_AGENT_ON_EXIT",
                "delete-instance needs WARMPOOL_AGENT_INSTANCE (set by --from-metadata)",
            ));
        }
        if self.poweroff_cmd.is_empty() {
            return Err(ConfigError::new("WARMPOOL_AGENT_POWEROFF_CMD", "empty"));
        }
        Ok(())
    }

    /// Does what [`decide`] says for `reason`; never fails (a failed delete powers off).
    pub async fn carry_out(&self, reason: &ExitReason) -> Exit {
        match decide(reason, self.on_exit) {
            Action::LeaveVm => {
                if *reason != ExitReason::Stopped {
                    tracing::warn!(%reason, "WARMPOOL_AGENT_ON_EXIT=none: leaving the VM as it is");
                }
                Exit::Stopped
            }
            Action::DeleteInstance => {
                let instance = self.instance.as_ref();
                tracing::warn!(%reason, instance = %instance.map(|i| i.to_string()).unwrap_or_default(), "deleting this VM's instance");
                match self.delete_instance().await {
                    Ok(()) => Exit::Deleted,
                    Err(err) => {
                        tracing::error!(error = %err, "deleting the instance failed; powering off instead");
                        self.power_off().await
                    }
                }
            }
            Action::PowerOff => {
                tracing::warn!(%reason, "powering this VM off");
                self.power_off().await
            }
        }
    }

    async fn delete_instance(&self) -> Result<(), DeleteError> {
        let instance = self.instance.as_ref().ok_or(DeleteError::NoInstance)?;
        let token = Metadata::new(&self.metadata_url)
            .map_err(DeleteError::Token)?
            .access_token(Instant::now() + Duration::from_secs(30))
            .await
            .map_err(DeleteError::Token)?;
        let url = format!(
            "{}/compute/v1/{instance}",
            self.compute_endpoint.trim_end_matches('/')
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| DeleteError::Unreachable(metadata::error_chain(&e)))?;
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let result = http.delete(&url).bearer_auth(&token).send().await;
            let err = match result {
                Ok(r) if r.status().is_success() => {
                    tracing::warn!(instance = %instance, "the Compute API accepted the delete");
                    return Ok(());
                }
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    tracing::warn!(instance = %instance, "the instance is already gone");
                    return Ok(());
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    let body: String = body.chars().take(300).collect();
                    let err = DeleteError::Status {
                        status: status.as_u16(),
                        body: body.replace('\n', " "),
                    };
                    // 4xx other than 429: permissions or a wrong name; retrying changes nothing.
                    if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        return Err(err);
                    }
                    err
                }
                Err(e) => DeleteError::Unreachable(metadata::error_chain(&e)),
            };
            if attempt >= 3 {
                return Err(err);
            }
            tracing::warn!(error = %err, attempt, "deleting the instance failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    async fn power_off(&self) -> Exit {
        let Some((program, args)) = self.poweroff_cmd.split_first() else {
            return Exit::PowerOff;
        };
        tracing::warn!(
            command = ?self.poweroff_cmd,
            "running the poweroff command; exiting with status 3 so that a supervisor outside a container powers the host off"
        );
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            // The agent's environment holds the Redis URL and the VM secret.
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(30), cmd.status()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::warn!("the poweroff command succeeded")
            }
            Ok(Ok(status)) => tracing::error!(%status, "the poweroff command failed"),
            Ok(Err(err)) => tracing::error!(error = %err, "the poweroff command could not run"),
            Err(_) => tracing::error!("the poweroff command did not finish within 30 s"),
        }
        Exit::PowerOff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_retired_or_orphaned_vm_is_shut_down() {
        let orphaned = ExitReason::Orphaned {
            silent_for: Duration::from_secs(300),
        };
        let cases = [
            (ExitReason::Stopped, OnExit::None, Action::LeaveVm),
            (ExitReason::Stopped, OnExit::DeleteInstance, Action::LeaveVm),
            (ExitReason::Stopped, OnExit::Poweroff, Action::LeaveVm),
            (ExitReason::Retired, OnExit::None, Action::LeaveVm),
            (
                ExitReason::Retired,
                OnExit::DeleteInstance,
                Action::DeleteInstance,
            ),
            (ExitReason::Retired, OnExit::Poweroff, Action::PowerOff),
            (orphaned.clone(), OnExit::None, Action::LeaveVm),
            (
                orphaned.clone(),
                OnExit::DeleteInstance,
                Action::DeleteInstance,
            ),
            (orphaned, OnExit::Poweroff, Action::PowerOff),
        ];
        for (reason, on_exit, action) in cases {
            assert_eq!(decide(&reason, on_exit), action, "{reason:?} {on_exit:?}");
        }
    }

    #[test]
    fn the_first_reason_wins_and_a_signal_is_a_stop() {
        let shutdown = CancellationToken::new();
        let stop = Stop::new(&shutdown);
        stop.end(ExitReason::Retired);
        stop.end(ExitReason::Orphaned {
            silent_for: Duration::from_secs(1),
        });
        assert_eq!(stop.reason(), ExitReason::Retired);

        let shutdown = CancellationToken::new();
        let stop = Stop::new(&shutdown);
        shutdown.cancel();
        stop.end(ExitReason::Retired);
        assert!(stop.is_cancelled());
        assert_eq!(stop.reason(), ExitReason::Stopped);
    }

    #[test]
    fn delete_instance_needs_an_instance() {
        let mut d = Disposal {
            on_exit: OnExit::DeleteInstance,
            instance: None,
            metadata_url: metadata::DEFAULT_URL.into(),
            compute_endpoint: "https://compute.googleapis.com".into(),
            poweroff_cmd: vec!["poweroff".into()],
        };
        assert!(d.check().is_err());
        d.instance = Some("projects/p/zones/z/instances/n".parse().expect("valid"));
        assert!(d.check().is_ok());
        d.poweroff_cmd.clear();
        assert!(d.check().is_err());
    }
}
