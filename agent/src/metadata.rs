//! Booting from Compute Engine instance metadata: a fresh VM's agent learns who it is, which
//! pool it serves and where Redis is from the attributes the orchestrator wrote when it created
//! the instance, and nothing else.
//!
//! # The contract (written by the orchestrator's Compute Engine provider)
//!
//! | attribute                | becomes                 | |
//! |--------------------------|-------------------------|---|
//! | `warmpool-vm-id`         | `WARMPOOL_VM_ID`        | required |
//! | `warmpool-pool`          | `WARMPOOL_POOL`         | required |
//! | `warmpool-redis-url`     | `WARMPOOL_REDIS_URL`    | required; `redis://` or `rediss://user:pass@host:port` |
//! | `warmpool-vm-secret`     | `WARMPOOL_VM_SECRET`    | optional; never logged |
//! | `warmpool-capacity`      | `WARMPOOL_VM_CAPACITY`  | optional; a u32 |
//! | `warmpool-agent-env`     | its own `KEY=VALUE` lines | optional; only agent settings (see [`parse_agent_env`]) |
//!
//! Also read: `instance/name`, `instance/zone` (`projects/N/zones/Z`: the last segment),
//! `project/project-id`. They become `WARMPOOL_AGENT_INSTANCE`
//! (`projects/P/zones/Z/instances/N`), which the self-delete needs (see `lifecycle`).
//!
//! # Expected flow
//! 1. `main` sees `--from-metadata` (or `WARMPOOL_AGENT_FROM_METADATA=true`) before anything else
//!    runs: no tokio runtime, no clap, no logger yet.
//! 2. [`bootstrap`] reads the attributes on a throwaway current-thread runtime, retrying with
//!    backoff for up to `WARMPOOL_AGENT_METADATA_TIMEOUT_S` (default 60): right after boot the
//!    metadata server can be slow or not yet reachable.
//! 3. The runtime is dropped (its blocking threads are joined), the process is checked to be
//!    single-threaded again, and only then are the variables set. Then clap parses them like any
//!    other environment.
//!
//! # Guarantees
//! - Metadata wins over the process environment for every variable it sets.
//! - A missing required attribute, an unreadable value or a key outside the allow-list stops the
//!   agent with one line naming it, before it touches Redis.
//! - The environment is changed only while the process has one thread (`setenv` is not
//!   thread-safe in glibc: a concurrent `getenv`, e.g. inside `getaddrinfo`, could read freed
//!   memory).
//!
//! # Caveats
//! - A 404 is final: attributes are written when the instance is created, so one missing at boot
//!   will not appear later.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where the metadata server answers on every Compute Engine VM.
pub const DEFAULT_URL: &str = "http://metadata.google.internal/computeMetadata/v1";
/// The variable that turns the bootstrap on (like `--from-metadata`).
pub const FROM_METADATA_ENV: &str = "WARMPOOL_AGENT_FROM_METADATA";
/// The variable that carries the instance path to the self-delete.
pub const INSTANCE_ENV: &str = "WARMPOOL_AGENT_INSTANCE";
const TIMEOUT_ENV: &str = "WARMPOOL_AGENT_METADATA_TIMEOUT_S";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether an attribute must be there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

/// Attribute → variable. `warmpool-agent-env` is handled apart: it holds variables itself.
const ATTRIBUTES: [(&str, &str, Need); 5] = [
    ("warmpool-vm-id", "WARMPOOL_VM_ID", Need::Required),
    ("warmpool-pool", "WARMPOOL_POOL", Need::Required),
    ("warmpool-redis-url", "WARMPOOL_REDIS_URL", Need::Required),
    ("warmpool-vm-secret", "WARMPOOL_VM_SECRET", Need::Optional),
    ("warmpool-capacity", "WARMPOOL_VM_CAPACITY", Need::Optional),
];
const AGENT_ENV: &str = "warmpool-agent-env";
const CAPACITY: &str = "warmpool-capacity";

/// A failed bootstrap. Each message is one line that names the attribute or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata {0}: missing (required with --from-metadata)")]
    Missing(String),
    #[error("metadata {what}: {problem}")]
    Invalid { what: String, problem: String },
    #[error("metadata attribute warmpool-agent-env, line {line}: {problem}")]
    AgentEnv { line: usize, problem: String },
    #[error("metadata server {url}: no answer within {waited_s} s ({last})")]
    Unreachable {
        url: String,
        waited_s: u64,
        last: String,
    },
    #[error("metadata server {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("building the metadata client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A Compute Engine instance, as the Compute API names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub project: String,
    pub zone: String,
    pub name: String,
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/zones/{}/instances/{}",
            self.project, self.zone, self.name
        )
    }
}

impl FromStr for Instance {
    type Err = String;

    /// `projects/P/zones/Z/instances/N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["projects", p, "zones", z, "instances", n]
                if [p, z, n].iter().all(|v| is_segment(v)) =>
            {
                Ok(Instance {
                    project: p.to_string(),
                    zone: z.to_string(),
                    name: n.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is not projects/PROJECT/zones/ZONE/instances/NAME"
            )),
        }
    }
}

/// A path segment that cannot change the URL it is put into.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether the bootstrap is asked for: `--from-metadata` among the arguments (before any `--`),
/// or [`FROM_METADATA_ENV`] set to a true value (`true`, `1`, `yes`, `on`, as clap reads it).
pub fn requested(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    env: Option<std::ffi::OsString>,
) -> bool {
    let flag = args
        .into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--from-metadata");
    let env = env.and_then(|v| v.into_string().ok()).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "y" | "on"
        )
    });
    flag || env
}

/// Reads the metadata and sets the variables. Call it from `main` before any thread exists.
pub fn bootstrap() -> anyhow::Result<()> {
    let base = std::env::var("WARMPOOL_METADATA_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let timeout = match std::env::var(TIMEOUT_ENV) {
        Ok(v) => Duration::from_secs(
            v.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{TIMEOUT_ENV}={v:?}: {e}"))?,
        ),
        Err(_) => DEFAULT_TIMEOUT,
    };
    // The global logger starts after clap (RUST_LOG may come from the metadata): log through a
    // scoped one meanwhile. Thread-local, so it leaves no thread behind.
    let logger = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARMPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,warmpool_agent=info")),
        )
        .with_writer(std::io::stderr)
        .finish();
    let boot = tracing::subscriber::with_default(logger, || -> anyhow::Result<Bootstrap> {
        tracing::info!(url = %base, "reading this VM's settings from instance metadata");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the bootstrap runtime")?;
        let boot = runtime.block_on(async {
            let metadata = Metadata::new(&base)?;
            fetch(&metadata, Instant::now() + timeout).await
        })?;
        // Joins the blocking pool (DNS lookups run there) before the environment changes.
        drop(runtime);
        tracing::info!(
            vm_id = boot.get("WARMPOOL_VM_ID").unwrap_or_default(),
            pool = boot.get("WARMPOOL_POOL").unwrap_or_default(),
            instance = %boot.instance,
            agent_env = ?boot.agent_env_keys,
            "settings read from instance metadata"
        );
        Ok(boot)
    })?;
    boot.apply()
}

/// What the metadata says, ready to become the environment.
#[derive(Debug)]
pub struct Bootstrap {
    /// Variable → value, in the order they are set.
    vars: Vec<(String, String)>,
    /// Keys `warmpool-agent-env` set (for the log: values may be secret).
    agent_env_keys: Vec<String>,
    pub instance: Instance,
}

impl Bootstrap {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets the variables, once the process is sure to be single-threaded.
    fn apply(self) -> anyhow::Result<()> {
        if let Some(n) = threads().filter(|n| *n > 1) {
            anyhow::bail!(
                "internal: {n} threads run before the environment is set from metadata; refusing to call setenv"
            );
        }
        for (key, value) in &self.vars {
            // Safe in edition 2021; sound here because no other thread exists (checked above).
            std::env::set_var(key, value);
        }
        Ok(())
    }
}

/// Threads of this process (Linux), `None` where `/proc` cannot tell.
fn threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// Reads every attribute the agent needs, each retried until `deadline`.
pub async fn fetch(metadata: &Metadata, deadline: Instant) -> Result<Bootstrap, MetadataError> {
    let mut vars = Vec::new();
    let mut agent_env_keys = Vec::new();
    if let Some(text) = metadata
        .get(&format!("instance/attributes/{AGENT_ENV}"), deadline)
        .await?
    {
        for (key, value) in parse_agent_env(&text)? {
            agent_env_keys.push(key.clone());
            vars.push((key, value));
        }
    }
    // After agent-env: the attributes' own variables always win.
    for (attribute, var, need) in ATTRIBUTES {
        let path = format!("instance/attributes/{attribute}");
        let value = match metadata.get(&path, deadline).await? {
            Some(v) => checked_value(&format!("attribute {attribute}"), v.trim())?,
            None if need == Need::Required => {
                return Err(MetadataError::Missing(format!("attribute {attribute}")))
            }
            None => continue,
        };
        if value.is_empty() {
            if need == Need::Optional {
                continue;
            }
            return Err(MetadataError::Invalid {
                what: format!("attribute {attribute}"),
                problem: "empty".into(),
            });
        }
        if attribute == CAPACITY {
            value.parse::<u32>().map_err(|e| MetadataError::Invalid {
                what: format!("attribute {attribute}"),
                problem: format!("{value:?} is not a capacity: {e}"),
            })?;
        }
        vars.push((var.to_string(), value));
    }
    let required = |path: &'static str| async move {
        match metadata.get(path, deadline).await? {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(MetadataError::Missing(path.to_string())),
        }
    };
    let name = required("instance/name").await?;
    let zone_path = required("instance/zone").await?;
    let project = required("project/project-id").await?;
    let instance = Instance {
        project,
        zone: zone_of(&zone_path).to_string(),
        name,
    };
    // Round-trip through the parser: every segment must be safe to put into a URL.
    let instance: Instance =
        instance
            .to_string()
            .parse()
            .map_err(|problem| MetadataError::Invalid {
                what: "instance/name, instance/zone or project/project-id".into(),
                problem,
            })?;
    vars.push((INSTANCE_ENV.to_string(), instance.to_string()));
    Ok(Bootstrap {
        vars,
        agent_env_keys,
        instance,
    })
}

/// `projects/123456/zones/europe-west1-b` → `europe-west1-b`.
pub fn zone_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A value the environment can hold (`setenv` rejects NUL: refuse it here, not panic later).
fn checked_value(what: &str, value: &str) -> Result<String, MetadataError> {
    if value.contains('\0') {
        return Err(MetadataError::Invalid {
            what: what.to_string(),
            problem: "contains a NUL byte".into(),
        });
    }
    Ok(value.to_string())
}

/// `warmpool-agent-env`: agent settings, one `KEY=VALUE` per line (the contract is
/// [`warmpool_core::agent_env`], which the orchestrator checks too). Any other key is an error
/// naming it: a typo or a setting that does not belong there stops the VM at boot, not ignored.
pub fn parse_agent_env(text: &str) -> Result<Vec<(String, String)>, MetadataError> {
    warmpool_core::agent_env::parse(text)
        .map_err(|(line, problem)| MetadataError::AgentEnv { line, problem })
}

/// A client of the metadata server.
#[derive(Clone)]
pub struct Metadata {
    base: String,
    http: reqwest::Client,
}

/// The default service account's OAuth token.
#[derive(serde::Deserialize)]
struct Token {
    access_token: String,
}

impl Metadata {
    pub fn new(base: &str) -> Result<Self, MetadataError> {
        let http = reqwest::Client::builder()
            // The metadata server is link-local: never through an HTTP proxy.
            .no_proxy()
            .build()
            .map_err(MetadataError::Client)?;
        Ok(Metadata {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The value at `path` (e.g. `instance/zone`), `None` if the server answers 404. Retries
    /// connection errors, timeouts, 429 and 5xx with backoff until `deadline`.
    pub async fn get(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Result<Option<String>, MetadataError> {
        let url = format!("{}/{path}", self.base);
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            // At least one try, however late: a deadline passed while the caller was busy
            // should not fail a server that answers at once.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = remaining.clamp(Duration::from_millis(500), Duration::from_secs(5));
            let last = match self.try_get(&url, timeout).await {
                Attempt::Value(v) => return Ok(Some(v)),
                Attempt::NotFound => return Ok(None),
                Attempt::Fatal(status) => return Err(MetadataError::Status { url, status }),
                Attempt::Retry(reason) => reason,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(MetadataError::Unreachable {
                    url,
                    waited_s: started.elapsed().as_secs_f64().round() as u64,
                    last,
                });
            }
            if warned {
                tracing::debug!(url, error = %last, "metadata server not answering yet; retrying");
            } else {
                tracing::warn!(url, error = %last, "metadata server not answering yet; retrying");
                warned = true;
            }
            tokio::time::sleep(delay.min(remaining)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn try_get(&self, url: &str, timeout: Duration) -> Attempt {
        let sent = self
            .http
            .get(url)
            .header("Metadata-Flavor", "Google")
            .timeout(timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(err) => return Attempt::Retry(error_chain(&err)),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Attempt::NotFound;
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry(format!("HTTP {}", status.as_u16()));
        }
        if !status.is_success() {
            return Attempt::Fatal(status.as_u16());
        }
        match response.text().await {
            Ok(text) => Attempt::Value(text),
            Err(err) => Attempt::Retry(error_chain(&err)),
        }
    }

    /// An OAuth access token of the instance's default service account.
    pub async fn access_token(&self, deadline: Instant) -> Result<String, MetadataError> {
        const PATH: &str = "instance/service-accounts/default/token";
        let body = self
            .get(PATH, deadline)
            .await?
            .ok_or_else(|| MetadataError::Missing(format!("{PATH} (no service account?)")))?;
        let token: Token = serde_json::from_str(&body).map_err(|e| MetadataError::Invalid {
            what: PATH.into(),
            problem: format!("not a token: {e}"),
        })?;
        if token.access_token.is_empty() {
            return Err(MetadataError::Invalid {
                what: PATH.into(),
                problem: "empty access_token".into(),
            });
        }
        Ok(token.access_token)
    }
}

enum Attempt {
    Value(String),
    NotFound,
    /// Worth another try (the reason, for the log).
    Retry(String),
    /// An answer retrying will not change (403: no `Metadata-Flavor`, or a proxy in the way).
    Fatal(u16),
}

/// An error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") hides the cause, and so does a sandbox error's context. The agent's one copy.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_env_accepts_agent_settings_only() {
        let ok = parse_agent_env(
            "# slots\nWARMPOOL_AGENT_SLOTS=3\n\n  WARMPOOL_SANDBOX_WORK_MB=32\r\nRUST_LOG=debug\nWARMPOOL_HEARTBEAT_INTERVAL_MS=500\nWARMPOOL_AGENT_X=a=b\n",
        )
        .expect("valid");
        assert_eq!(
            ok,
            vec![
                ("WARMPOOL_AGENT_SLOTS".into(), "3".into()),
                ("WARMPOOL_SANDBOX_WORK_MB".into(), "32".into()),
                ("RUST_LOG".into(), "debug".into()),
                ("WARMPOOL_HEARTBEAT_INTERVAL_MS".into(), "500".into()),
                ("WARMPOOL_AGENT_X".into(), "a=b".into()),
            ]
        );
        let cases = [
            ("PATH=/tmp\n", 1, "PATH is not an agent setting"),
            ("WARMPOOL_AGENT_SLOTS=1\nLD_PRELOAD=x", 2, "LD_PRELOAD"),
            ("WARMPOOL_REDIS_URL=redis://x", 1, "WARMPOOL_REDIS_URL"),
            ("WARMPOOL_VM_ID=x", 1, "WARMPOOL_VM_ID"),
            // The pool's settings come with the registration, never from the VM's metadata.
            ("WARMPOOL_PLACEMENT=packed", 1, "WARMPOOL_PLACEMENT"),
            ("WARMPOOL_RESULT_TTL_S=60", 1, "WARMPOOL_RESULT_TTL_S"),
            ("WARMPOOL_AGENT_SLOTS", 1, "not KEY=VALUE"),
            ("warmpool_agent_slots=1", 1, "not a variable name"),
            ("=1", 1, "not a variable name"),
            (
                "WARMPOOL_AGENT_INSTANCE=projects/x",
                1,
                "set by the bootstrap",
            ),
            ("WARMPOOL_AGENT_X=a\0b", 1, "NUL"),
        ];
        for (text, line, needle) in cases {
            match parse_agent_env(text) {
                Err(err @ MetadataError::AgentEnv { line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}");
                    let msg = err.to_string();
                    assert!(msg.contains(needle), "{text:?}: {msg}");
                    assert!(!msg.contains('\n'), "one line: {msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn zone_is_the_last_segment() {
        assert_eq!(
            zone_of("projects/123456/zones/europe-west1-b"),
            "europe-west1-b"
        );
        assert_eq!(zone_of("europe-west1-b"), "europe-west1-b");
    }

    #[test]
    fn instance_paths_round_trip_and_reject_unsafe_segments() {
        let i: Instance = "projects/p-1/zones/europe-west1-b/instances/wp-7"
            .parse()
            .expect("valid");
        assert_eq!(i.name, "wp-7");
        assert_eq!(
            i.to_string(),
            "projects/p-1/zones/europe-west1-b/instances/wp-7"
        );
        for bad in [
            "",
            "projects/p/zones/z",
            "projects/p/zones/z/instances/",
            "projects/p/zones/z/instances/a?b",
            "projects/p/zones/../instances/n/x",
            "projects/p/zones/z/instances/n/extra",
        ] {
            assert!(bad.parse::<Instance>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requested_by_flag_or_env() {
        let args = |v: &[&str]| {
            v.iter()
                .map(|s| s.into())
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert!(requested(args(&["agent", "--from-metadata"]), None));
        assert!(!requested(args(&["agent"]), None));
        assert!(!requested(args(&["agent", "--", "--from-metadata"]), None));
        assert!(
            !requested(args(&["--from-metadata"]), None),
            "argv[0] is the program"
        );
        assert!(requested(args(&["agent"]), Some("true".into())));
        assert!(requested(args(&["agent"]), Some("1".into())));
        assert!(!requested(args(&["agent"]), Some("false".into())));
        assert!(!requested(args(&["agent"]), Some("".into())));
    }
}
