//! Orchestrator configuration: one struct, every field an env variable (and a flag), validated
//! once at start. The README's configuration table lists the same names and defaults.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::model::{Limits, LimitsRequest};
use crate::routing::Placement;
use crate::store::RedisSettings;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Redis URL (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`). Required by
    /// `serve`; `dev` starts its own redis-server when unset.
    #[arg(long, env = "WARMPOOL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Name of the pool: all its keys share the hash tag `{wp:POOL}`.
    #[arg(long, env = "WARMPOOL_POOL", default_value = "default")]
    pub pool: String,
    /// Address the REST API listens on.
    #[arg(long, env = "WARMPOOL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Comma-separated bearer tokens accepted by /v1 (`dev` uses `dev-token` when unset).
    #[arg(long, env = "WARMPOOL_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// Where a new game goes: `least-loaded` (spread) or `packed` (fill the fullest VM first).
    #[arg(long, env = "WARMPOOL_PLACEMENT", default_value = "least-loaded")]
    pub placement: Placement,
    /// An execution no VM took within this many seconds ends `expired`.
    #[arg(long, env = "WARMPOOL_QUEUE_TIMEOUT_S", default_value_t = 120)]
    pub queue_timeout_s: u64,
    /// Default game lease: a game with no activity for this long is expired.
    #[arg(long, env = "WARMPOOL_GAME_TTL_S", default_value_t = 3600)]
    pub game_ttl_s: u64,
    /// Largest `ttl_s` a client may ask for.
    #[arg(long, env = "WARMPOOL_MAX_GAME_TTL_S", default_value_t = 86_400)]
    pub max_game_ttl_s: u64,
    /// How long an ended execution (and an idempotency key) stays readable.
    #[arg(long, env = "WARMPOOL_RESULT_TTL_S", default_value_t = 86_400)]
    pub result_ttl_s: u64,
    /// Largest request body; larger ones get 413.
    #[arg(long, env = "WARMPOOL_MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Languages the API accepts (comma-separated catalog names); default: the whole catalog.
    #[arg(
        long,
        env = "WARMPOOL_LANGUAGES",
        default_value = "python,bash,javascript"
    )]
    pub languages: String,
    #[arg(long, env = "WARMPOOL_DEFAULT_WALL_TIME_MS", default_value_t = 5_000)]
    pub default_wall_time_ms: u64,
    #[arg(long, env = "WARMPOOL_MAX_WALL_TIME_MS", default_value_t = 60_000)]
    pub max_wall_time_ms: u64,
    #[arg(long, env = "WARMPOOL_DEFAULT_CPU_TIME_MS", default_value_t = 5_000)]
    pub default_cpu_time_ms: u64,
    #[arg(long, env = "WARMPOOL_MAX_CPU_TIME_MS", default_value_t = 60_000)]
    pub max_cpu_time_ms: u64,
    #[arg(long, env = "WARMPOOL_DEFAULT_MEMORY_MB", default_value_t = 256)]
    pub default_memory_mb: u64,
    #[arg(long, env = "WARMPOOL_MAX_MEMORY_MB", default_value_t = 2_048)]
    pub max_memory_mb: u64,
    #[arg(long, env = "WARMPOOL_DEFAULT_MAX_OUTPUT_BYTES", default_value_t = 64 * 1024)]
    pub default_max_output_bytes: u64,
    #[arg(long, env = "WARMPOOL_MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: u64,
    /// Redis connections per replica.
    /// Few connections pipeline better (fred pipelines commands on a connection); more help only
    /// when single commands are slow.
    #[arg(long, env = "WARMPOOL_REDIS_POOL_SIZE", default_value_t = 2)]
    pub redis_pool_size: usize,
    /// Redis command timeout; past it the API answers 503.
    #[arg(long, env = "WARMPOOL_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,
    /// How often each replica sweeps expired executions and games.
    #[arg(long, env = "WARMPOOL_SWEEP_INTERVAL_MS", default_value_t = 1_000)]
    pub sweep_interval_ms: u64,
    /// VM provider: `gce` (Compute Engine, see WARMPOOL_GCE_*), `local` (agent processes on
    /// this machine) or `none` (VMs are started by someone else, e.g. a test).
    #[arg(long, env = "WARMPOOL_PROVIDER", default_value = "local")]
    pub provider: String,
    /// This replica's name in the leader lease (default: hostname plus a random suffix).
    #[arg(long, env = "WARMPOOL_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Fewest VMs the pool keeps, also when idle (0: scale to zero).
    #[arg(long, env = "WARMPOOL_MIN_VMS", default_value_t = 0)]
    pub min_vms: u32,
    /// Most VMs the pool may have.
    #[arg(long, env = "WARMPOOL_MAX_VMS", default_value_t = 50)]
    pub max_vms: u32,
    /// X: games one VM takes (its capacity) and the formula's divisor.
    #[arg(long, env = "WARMPOOL_GAMES_PER_VM", default_value_t = 8)]
    pub games_per_vm: u32,
    /// Free game slots the pool keeps warm at least.
    #[arg(long, env = "WARMPOOL_HEADROOM_GAMES", default_value_t = 4.0)]
    pub headroom_games: f64,
    /// Standard deviations of arrival noise the warm buffer covers.
    #[arg(long, env = "WARMPOOL_HEADROOM_Z", default_value_t = 1.0)]
    pub headroom_z: f64,
    /// An expression replacing the default formula (names: games, pending, reserved,
    /// arrivals_per_s, boot_s, games_per_vm, headroom_games, z).
    #[arg(long, env = "WARMPOOL_POOL_FORMULA")]
    pub pool_formula: Option<String>,
    /// Leader lease; a leader that stops renewing is replaced after this long.
    #[arg(long, env = "WARMPOOL_LEADER_TTL_MS", default_value_t = 5_000)]
    pub leader_ttl_ms: u64,
    /// Reconcile tick (also on every pending game and on POST /v1/pool/reconcile).
    #[arg(long, env = "WARMPOOL_RECONCILE_INTERVAL_S", default_value_t = 5.0)]
    pub reconcile_interval_s: f64,
    /// The desired size must stay lower this long before VMs are drained.
    #[arg(long, env = "WARMPOOL_SCALE_DOWN_DELAY_S", default_value_t = 300.0)]
    pub scale_down_delay_s: f64,
    /// A draining VM still holding games after this long has them moved, then is deleted.
    #[arg(long, env = "WARMPOOL_DRAIN_TIMEOUT_S", default_value_t = 600.0)]
    pub drain_timeout_s: f64,
    /// No games, none pending, none reserved for this long: scale to WARMPOOL_MIN_VMS.
    #[arg(long, env = "WARMPOOL_IDLE_TIMEOUT_S", default_value_t = 900.0)]
    pub idle_timeout_s: f64,
    /// A VM not Ready this long after its create is failed and replaced.
    #[arg(long, env = "WARMPOOL_BOOT_TIMEOUT_S", default_value_t = 180.0)]
    pub boot_timeout_s: f64,
    /// A VM whose agent has not heartbeated for this long is declared dead.
    #[arg(long, env = "WARMPOOL_HEARTBEAT_TIMEOUT_S", default_value_t = 15.0)]
    pub heartbeat_timeout_s: f64,
    /// Deliveries of an execution to VMs that died before it ends `failed` (`vm_lost`).
    #[arg(long, env = "WARMPOOL_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Most VMs created per reconcile pass (the rest next pass).
    #[arg(long, env = "WARMPOOL_MAX_CREATES_PER_PASS", default_value_t = 20)]
    pub max_creates_per_pass: u32,
    /// Half-life of the smoothed game arrival rate.
    #[arg(long, env = "WARMPOOL_ARRIVAL_HALF_LIFE_S", default_value_t = 60.0)]
    pub arrival_half_life_s: f64,
    /// Local provider: delay before a new agent registers, to make a cold start visible.
    #[arg(long, env = "WARMPOOL_LOCAL_BOOT_DELAY_MS", default_value_t = 0)]
    pub local_boot_delay_ms: u64,
    /// Local provider: the agent binary (default: `warmpool-agent` beside this binary).
    #[arg(long, env = "WARMPOOL_AGENT_BIN")]
    pub agent_bin: Option<std::path::PathBuf>,
    /// Local provider: the agents' sandbox backend (`bwrap`; `process` is unsandboxed, dev only).
    #[arg(long, env = "WARMPOOL_AGENT_SANDBOX", default_value = "bwrap")]
    pub agent_sandbox: String,
    /// Local provider: concurrent sandboxes per agent.
    #[arg(long, env = "WARMPOOL_AGENT_SLOTS", default_value_t = 4)]
    pub agent_slots: u32,
    /// Concurrent VM creates of the leader (each waits for its provider's operation; the
    /// provider paces its own API calls).
    #[arg(long, env = "WARMPOOL_CREATE_CONCURRENCY", default_value_t = 256)]
    pub create_concurrency: u32,
    /// How often the leader compares the provider's VMs with the records in Redis.
    #[arg(
        long,
        env = "WARMPOOL_PROVIDER_SYNC_INTERVAL_S",
        default_value_t = 30.0
    )]
    pub provider_sync_interval_s: f64,
    /// A provider VM of this pool with no record in Redis (its agent never registered) is
    /// deleted after this long.
    #[arg(long, env = "WARMPOOL_ORPHAN_GRACE_S", default_value_t = 300.0)]
    pub orphan_grace_s: f64,
    /// First pause of creates after a configuration error (doubling up to 15 min); a
    /// stockout in every zone pauses for a tenth of it.
    #[arg(long, env = "WARMPOOL_CREATE_PAUSE_S", default_value_t = 60.0)]
    pub create_pause_s: f64,
    #[command(flatten)]
    pub gce: crate::gce::GceConfig,
}

/// A configuration mistake, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        message: message.into(),
    }
}

impl Config {
    /// Checks what clap cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pool_ok = !self.pool.is_empty()
            && self.pool.len() <= 32
            && self
                .pool
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !pool_ok {
            return Err(bad("WARMPOOL_POOL", "1-32 of [a-z0-9-]"));
        }
        for (name, value) in [
            ("WARMPOOL_QUEUE_TIMEOUT_S", self.queue_timeout_s),
            ("WARMPOOL_GAME_TTL_S", self.game_ttl_s),
            ("WARMPOOL_RESULT_TTL_S", self.result_ttl_s),
            ("WARMPOOL_REDIS_TIMEOUT_MS", self.redis_timeout_ms),
            ("WARMPOOL_SWEEP_INTERVAL_MS", self.sweep_interval_ms),
            ("WARMPOOL_GAMES_PER_VM", u64::from(self.games_per_vm)),
            ("WARMPOOL_MAX_ATTEMPTS", u64::from(self.max_attempts)),
            ("WARMPOOL_LEADER_TTL_MS", self.leader_ttl_ms),
            ("WARMPOOL_AGENT_SLOTS", u64::from(self.agent_slots)),
        ] {
            if value == 0 {
                return Err(bad(name, "must be greater than 0"));
            }
        }
        if self.game_ttl_s > self.max_game_ttl_s {
            return Err(bad(
                "WARMPOOL_GAME_TTL_S",
                "must not exceed WARMPOOL_MAX_GAME_TTL_S",
            ));
        }
        for (name, default, max) in [
            (
                "WARMPOOL_DEFAULT_WALL_TIME_MS",
                self.default_wall_time_ms,
                self.max_wall_time_ms,
            ),
            (
                "WARMPOOL_DEFAULT_CPU_TIME_MS",
                self.default_cpu_time_ms,
                self.max_cpu_time_ms,
            ),
            (
                "WARMPOOL_DEFAULT_MEMORY_MB",
                self.default_memory_mb,
                self.max_memory_mb,
            ),
            (
                "WARMPOOL_DEFAULT_MAX_OUTPUT_BYTES",
                self.default_max_output_bytes,
                self.max_output_bytes,
            ),
        ] {
            if default == 0 || default > max {
                return Err(bad(name, format!("must be in 1..={max} (its maximum)")));
            }
        }
        for lang in self.language_list() {
            if crate::runtimes::lookup(&lang).is_none_or(|spec| spec.name != lang) {
                return Err(bad(
                    "WARMPOOL_LANGUAGES",
                    format!("unknown language {lang:?}"),
                ));
            }
        }
        if self.min_vms > self.max_vms {
            return Err(bad("WARMPOOL_MIN_VMS", "must not exceed WARMPOOL_MAX_VMS"));
        }
        for (name, v) in [
            ("WARMPOOL_RECONCILE_INTERVAL_S", self.reconcile_interval_s),
            ("WARMPOOL_ARRIVAL_HALF_LIFE_S", self.arrival_half_life_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(name, "must be a number greater than 0"));
            }
        }
        for (name, v) in [
            ("WARMPOOL_HEADROOM_GAMES", self.headroom_games),
            ("WARMPOOL_HEADROOM_Z", self.headroom_z),
            ("WARMPOOL_SCALE_DOWN_DELAY_S", self.scale_down_delay_s),
            ("WARMPOOL_DRAIN_TIMEOUT_S", self.drain_timeout_s),
            ("WARMPOOL_IDLE_TIMEOUT_S", self.idle_timeout_s),
            ("WARMPOOL_BOOT_TIMEOUT_S", self.boot_timeout_s),
            ("WARMPOOL_HEARTBEAT_TIMEOUT_S", self.heartbeat_timeout_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(name, "must be a number >= 0"));
            }
        }
        self.formula()
            .map_err(|e| bad("WARMPOOL_POOL_FORMULA", e.0))?;
        match self.provider.as_str() {
            "local" | "none" => {}
            "gce" => {
                self.gce
                    .settings(&self.pool, self.redis_url.as_deref().unwrap_or(""))?;
            }
            _ => return Err(bad("WARMPOOL_PROVIDER", "one of: gce, local, none")),
        }
        if self.create_concurrency == 0 {
            return Err(bad("WARMPOOL_CREATE_CONCURRENCY", "must be greater than 0"));
        }
        for (name, v) in [
            (
                "WARMPOOL_PROVIDER_SYNC_INTERVAL_S",
                self.provider_sync_interval_s,
            ),
            ("WARMPOOL_CREATE_PAUSE_S", self.create_pause_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(name, "must be a number greater than 0"));
            }
        }
        if !(self.orphan_grace_s.is_finite() && self.orphan_grace_s >= 0.0) {
            return Err(bad("WARMPOOL_ORPHAN_GRACE_S", "must be a number >= 0"));
        }
        if !matches!(self.agent_sandbox.as_str(), "bwrap" | "nsjail" | "process") {
            return Err(bad(
                "WARMPOOL_AGENT_SANDBOX",
                "one of: bwrap, nsjail, process",
            ));
        }
        Ok(())
    }

    /// The sizing formula: the operator's, or the default.
    pub fn formula(
        &self,
    ) -> Result<crate::pool::sizing::Formula, crate::pool::sizing::FormulaError> {
        match self.pool_formula.as_deref().map(str::trim) {
            None | Some("") => Ok(crate::pool::sizing::Formula::Default),
            Some(text) => crate::pool::sizing::Formula::parse(text),
        }
    }

    pub fn sizing_params(&self) -> crate::pool::sizing::SizingParams {
        crate::pool::sizing::SizingParams {
            games_per_vm: f64::from(self.games_per_vm),
            headroom_games: self.headroom_games,
            z: self.headroom_z,
            min_vms: self.min_vms,
            max_vms: self.max_vms,
        }
    }

    /// Settings of the reconcile loop.
    pub fn reconciler_settings(&self) -> crate::pool::reconciler::ReconcilerSettings {
        let ms = |s: f64| (s * 1000.0) as u64;
        crate::pool::reconciler::ReconcilerSettings {
            interval: Duration::from_secs_f64(self.reconcile_interval_s),
            formula: self
                .formula()
                .unwrap_or(crate::pool::sizing::Formula::Default),
            sizing: self.sizing_params(),
            plan: crate::pool::plan::PlanParams {
                min_vms: self.min_vms,
                scale_down_delay_ms: ms(self.scale_down_delay_s),
                drain_timeout_ms: ms(self.drain_timeout_s),
                idle_timeout_ms: ms(self.idle_timeout_s),
                boot_timeout_ms: ms(self.boot_timeout_s),
                heartbeat_timeout_ms: ms(self.heartbeat_timeout_s),
                max_creates_per_pass: self.max_creates_per_pass,
            },
            games_per_vm: self.games_per_vm,
            placement: self.placement,
            arrival_half_life_s: self.arrival_half_life_s,
            default_boot_s: 45.0,
            max_attempts: self.max_attempts,
            queue_timeout_ms: self.queue_timeout_s * 1000,
            retention_ms: self.result_ttl_s * 1000,
            manage_size: self.provider != "none",
            create_concurrency: self.create_concurrency as usize,
            provider_sync_interval: Duration::from_secs_f64(self.provider_sync_interval_s),
            orphan_grace_ms: ms(self.orphan_grace_s),
            create_pause: Duration::from_secs_f64(self.create_pause_s),
        }
    }

    pub fn language_list(&self) -> Vec<String> {
        self.languages
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn redis_settings(&self, url: String) -> RedisSettings {
        RedisSettings {
            url,
            pool_size: self.redis_pool_size,
            command_timeout: Duration::from_millis(self.redis_timeout_ms),
        }
    }

    pub fn tokens(&self) -> Vec<String> {
        self.api_tokens
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Resolves a client's limits against the defaults and maxima; `Err` names the field.
    pub fn resolve_limits(&self, req: Option<LimitsRequest>) -> Result<Limits, String> {
        let req = req.unwrap_or_default();
        let pick = |field: &str, asked: Option<u64>, default: u64, max: u64| match asked {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("limits.{field} is {v}; allowed: 1..={max}")),
        };
        Ok(Limits {
            wall_time_ms: pick(
                "wall_time_ms",
                req.wall_time_ms,
                self.default_wall_time_ms,
                self.max_wall_time_ms,
            )?,
            cpu_time_ms: pick(
                "cpu_time_ms",
                req.cpu_time_ms,
                self.default_cpu_time_ms,
                self.max_cpu_time_ms,
            )?,
            memory_mb: pick(
                "memory_mb",
                req.memory_mb,
                self.default_memory_mb,
                self.max_memory_mb,
            )?,
            max_output_bytes: pick(
                "max_output_bytes",
                req.max_output_bytes,
                self.default_max_output_bytes,
                self.max_output_bytes,
            )?,
        })
    }

    /// The configuration with every default, as tests and benches start from.
    pub fn defaults() -> Config {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        Wrapper::parse_from(["warmpool"]).config
    }
}
