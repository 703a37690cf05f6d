//! Redis: the connection, the key schema ([`keys`]), the Lua scripts ([`scripts`]) and one
//! typed wrapper per script, grouped by the record they change.
//!
//! All of warmpool's shared state lives here; orchestrator replicas and agents keep none of
//! their own. Every change that must be atomic is one script call.
//!
//! # Layout
//! - [`keys`]: the key schema (every key of a pool shares one hash tag).
//! - [`scripts`]: the embedded Lua scripts, loaded once and called by SHA.
//! - [`games`]: placement and leases (put, delete, place pending games).
//! - [`executions`]: accept, start, finish, end and requeue executions; read their records.
//! - [`vms`]: VM records: the leader's fenced transitions, registration, heartbeats, snapshots.
//! - [`leader`]: the leader lease and its fencing token.
//! - [`reservations`]: announced bursts of games.
//! - [`settings`]: the pool settings every process must agree on, published by the replicas.
//! - [`stats`]: the pool-wide counters and histograms behind every replica's `/metrics`.
//!
//! # Guarantees
//! - Data read back from Redis that is unknown or corrupt (a state this build does not know,
//!   JSON that does not parse, a count that is not a number) is a [`StoreError::Corrupt`],
//!   logged and counted ([`corrupt_reads`]) where it is made, never a silent default.

pub mod executions;
pub mod games;
pub mod keys;
pub mod leader;
pub mod reservations;
pub mod scripts;
pub mod settings;
pub mod stats;
pub mod vms;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

pub use keys::Keys;
use scripts::LuaScript;

/// A Redis failure, as callers need to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (connection refused or lost, timed out): the API answers 503.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] fred::error::Error),
    /// Redis answered with an error or a reply the scripts never produce: a bug or a corrupt key.
    #[error("redis error: {0}")]
    Redis(#[source] fred::error::Error),
    #[error("unexpected reply from {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
    /// A record read from Redis that this build cannot understand: an unknown state, JSON
    /// that does not parse, a missing field. Never replaced by a default.
    #[error("unreadable {what}: {problem}")]
    Corrupt { what: String, problem: String },
}

/// Records read from Redis that could not be understood, since this process started.
static CORRUPT_READS: AtomicU64 = AtomicU64::new(0);

/// How many unreadable records this process has met (see [`StoreError::Corrupt`]).
pub fn corrupt_reads() -> u64 {
    CORRUPT_READS.load(Ordering::Relaxed)
}

/// Redis errors this process has met, by [`StoreError::kind`]: unavailable, internal.
static UNAVAILABLE: AtomicU64 = AtomicU64::new(0);
static INTERNAL: AtomicU64 = AtomicU64::new(0);

/// `(kind, count)` of the Redis errors this process has met (unreadable records apart: see
/// [`corrupt_reads`]).
pub fn error_counts() -> [(&'static str, u64); 2] {
    [
        ("unavailable", UNAVAILABLE.load(Ordering::Relaxed)),
        ("internal", INTERNAL.load(Ordering::Relaxed)),
    ]
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Redis(_) | StoreError::Reply { .. } => "internal",
        }
    }

    /// An unreadable record: logged and counted here, so no caller can forget either.
    pub fn corrupt(what: impl Into<String>, problem: impl Into<String>) -> StoreError {
        let (what, problem) = (what.into(), problem.into());
        CORRUPT_READS.fetch_add(1, Ordering::Relaxed);
        tracing::error!(what, problem, "unreadable record in redis");
        StoreError::Corrupt { what, problem }
    }
}

/// Parses a JSON record read from Redis; `what` names it in the error.
pub fn parse_record<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(what, e.to_string()))
}

impl From<fred::error::Error> for StoreError {
    /// Anything that says "Redis cannot answer right now" is `Unavailable` (503, retry): lost or
    /// refused connections, timeouts, cancelled commands (a reconnect), a server that is
    /// loading, read-only or busy. Only an error Redis itself reports about the command (a
    /// script error, a wrong type) or a reply we cannot read is `Redis` (500: a bug).
    fn from(err: fred::error::Error) -> Self {
        let store_error = Self::classify(err);
        match &store_error {
            StoreError::Unavailable(_) => &UNAVAILABLE,
            StoreError::Redis(_) | StoreError::Reply { .. } => &INTERNAL,
            // Counted where it is made.
            StoreError::Corrupt { .. } => return store_error,
        }
        .fetch_add(1, Ordering::Relaxed);
        store_error
    }
}

impl StoreError {
    fn classify(err: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        const TRANSIENT: [&str; 8] = [
            "LOADING",
            "BUSY",
            "MASTERDOWN",
            "READONLY",
            "NOREPLICAS",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MOVED",
        ];
        let details = err.details();
        // A script that met a record it cannot read says so (`retention_of` in common.lua).
        if let Some(problem) = details.strip_prefix("CORRUPT ") {
            return StoreError::corrupt("a record a script read", problem);
        }
        let server_reply = details
            .split_whitespace()
            .next()
            .is_some_and(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_uppercase()));
        match err.kind() {
            ErrorKind::Parse
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidCommand
            | ErrorKind::NotFound
            | ErrorKind::Config
            | ErrorKind::Url => StoreError::Redis(err),
            ErrorKind::Unknown
                if server_reply && !TRANSIENT.iter().any(|t| details.starts_with(t)) =>
            {
                StoreError::Redis(err)
            }
            _ => StoreError::Unavailable(err),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`, `rediss://…`, `redis-cluster://…`, `redis-sentinel://…`.
    pub url: String,
    /// Connections in the pool (replicas) or 1 (agents).
    pub pool_size: usize,
    /// Every command fails after this long, so a Redis outage surfaces as an error (503) rather
    /// than a hung request.
    pub command_timeout: Duration,
}

/// A pool's Redis: connections, key names and scripts.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pub keys: Keys,
    pool_name: String,
}

impl Store {
    /// Connects (waiting for the first connection) with automatic reconnects, and loads the
    /// scripts.
    pub async fn connect(settings: &RedisSettings, pool_name: &str) -> StoreResult<Store> {
        let pool = builder(settings)?.build_pool(settings.pool_size.max(1))?;
        pool.init().await?;
        let store = Store {
            pool,
            keys: Keys::new(pool_name),
            pool_name: pool_name.to_string(),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Name of the warm pool (not the connection pool) this store serves.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// One connection of the pool, for plain commands.
    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    pub async fn load_scripts(&self) -> StoreResult<()> {
        for s in scripts::SCRIPTS.all() {
            s.script.load(self.client()).await?;
        }
        Ok(())
    }

    /// Runs a script by SHA, reloading it if Redis lost it.
    pub async fn call(
        &self,
        s: &'static LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> StoreResult<Reply> {
        debug_assert_eq!(keys.len(), s.num_keys, "{}: keys", s.name);
        debug_assert_eq!(args.len(), s.num_args(), "{}: args", s.name);
        let value: Value = s
            .script
            .evalsha_with_reload(self.client(), keys, args)
            .await?;
        Ok(Reply {
            script: s.name,
            value,
        })
    }

    /// Answers when Redis does (for `/readyz`).
    pub async fn ping(&self) -> StoreResult<()> {
        let _: Value = self.client().ping(None).await?;
        Ok(())
    }

    /// The Redis server's clock, in Unix milliseconds.
    pub async fn now_ms(&self) -> StoreResult<u64> {
        let cmd = fred::types::CustomCommand::new_static("TIME", None, false);
        let (secs, micros): (u64, u64) = self.client().custom(cmd, Vec::<Value>::new()).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}

/// A fred builder with reconnects and the command timeout set.
pub fn builder(settings: &RedisSettings) -> StoreResult<Builder> {
    let config = Config::from_url(&settings.url)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = settings.command_timeout;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = settings.command_timeout;
            conn.internal_command_timeout = settings.command_timeout;
            // Fail a command at once while disconnected instead of queueing it behind a
            // reconnect: the caller answers 503 and the client retries.
            conn.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// A script's reply: an array of strings and integers, read by position.
#[derive(Debug)]
pub struct Reply {
    script: &'static str,
    value: Value,
}

impl Reply {
    fn items(&self) -> &[Value] {
        match &self.value {
            Value::Array(items) => items,
            other => std::slice::from_ref(other),
        }
    }

    pub fn len(&self) -> usize {
        self.items().len()
    }

    pub fn is_empty(&self) -> bool {
        self.items().is_empty()
    }

    fn bad(&self, detail: String) -> StoreError {
        StoreError::Reply {
            script: self.script,
            detail,
        }
    }

    /// Item `i` as text.
    pub fn str(&self, i: usize) -> StoreResult<String> {
        match self.items().get(i) {
            Some(Value::String(s)) => Ok(s.to_string()),
            Some(Value::Bytes(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::Integer(n)) => Ok(n.to_string()),
            other => Err(self.bad(format!("item {i} is {other:?}, not text"))),
        }
    }

    /// Item `i` as an integer (a Lua number, or text holding one).
    pub fn int(&self, i: usize) -> StoreResult<i64> {
        match self.items().get(i) {
            Some(Value::Integer(n)) => Ok(*n),
            Some(Value::String(s)) => s.parse().map_err(|_| self.bad(format!("item {i}: {s}"))),
            Some(Value::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.bad(format!("item {i} is not a number"))),
            other => Err(self.bad(format!("item {i} is {other:?}, not a number"))),
        }
    }

    /// Item `i` as a count: an integer that is not negative.
    pub fn count(&self, i: usize) -> StoreResult<u64> {
        let n = self.int(i)?;
        u64::try_from(n).map_err(|_| self.bad(format!("item {i} is {n}, not a count")))
    }

    /// Item `i` as a map, from a flat `[key, value, key, value, ...]` array (HGETALL, or ZRANGE
    /// WITHSCORES). An entry that is not text (or an odd count) is an error, never dropped.
    pub fn map(&self, i: usize) -> StoreResult<std::collections::HashMap<String, String>> {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Double(d) => Some(d.to_string()),
            _ => None,
        };
        let pair = |k: Option<String>, v: &Value| match (k, text(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            (k, _) => Err(self.bad(format!("item {i}: entry {k:?} = {v:?} is not text"))),
        };
        match self.items().get(i) {
            Some(Value::Array(flat)) if flat.len() % 2 == 0 => flat
                .chunks(2)
                .map(|kv| pair(text(&kv[0]), &kv[1]))
                .collect(),
            Some(Value::Map(map)) => map
                .clone()
                .inner()
                .iter()
                .map(|(k, v)| pair(k.as_str().map(|k| k.to_string()), v))
                .collect(),
            Some(Value::Null) | None => Ok(Default::default()),
            other => Err(self.bad(format!("item {i} is {other:?}, not a map"))),
        }
    }

    /// Items from `i` on, as text.
    pub fn strs_from(&self, i: usize) -> StoreResult<Vec<String>> {
        (i..self.len()).map(|j| self.str(j)).collect()
    }

    /// The reply's status word (item 0), checked against those the script documents.
    pub fn status(&self, known: &[&'static str]) -> StoreResult<&'static str> {
        let word = self.str(0)?;
        known
            .iter()
            .copied()
            .find(|k| *k == word)
            .ok_or_else(|| self.bad(format!("unknown status {word}")))
    }
}

/// A duration as the milliseconds a script takes (saturating: no setting comes near).
pub fn ms(d: Duration) -> Value {
    Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Text, integer and float arguments for [`Store::call`].
pub fn arg(v: impl Into<Value>) -> Value {
    v.into()
}
