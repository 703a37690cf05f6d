//! Orchestrator configuration: one struct, every field an env variable (and a flag), parsed
//! into its type (durations, enums) and validated once at start; a bad value stops the process
//! with one line naming it. The README's configuration table lists the same names and
//! defaults.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::Args;

pub use warmpool_core::config::ConfigError;
use warmpool_core::config::{all_positive, millis, secs, SandboxBackend};
use warmpool_core::model::Limits;
use warmpool_core::rules::LimitRules;
use warmpool_core::store::executions::SubmitParams;
use warmpool_core::store::games::Placement;
use warmpool_core::store::settings::PoolSettings;
use warmpool_core::store::RedisSettings;

/// Where the pool's VMs come from (`WARMPOOL_PROVIDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// Compute Engine (see `WARMPOOL_GCE_*`).
    Gce,
    /// Agent processes on this machine.
    Local,
    /// VMs started elsewhere: the pool's size is not managed; dead VMs are still failed.
    None,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Gce => "gce",
            ProviderKind::Local => "local",
            ProviderKind::None => "none",
        }
    }
}

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
    /// Address of `/metrics` (Prometheus text), a listener of its own; unset: none (`dev`
    /// serves it on a free loopback port and prints where).
    #[arg(long, env = "WARMPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Comma-separated bearer tokens accepted by /v1 (`dev` uses `dev-token` when unset).
    #[arg(long, env = "WARMPOOL_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// Where a new game goes: `least-loaded` (spread) or `packed` (fill the fullest VM first).
    #[arg(long, env = "WARMPOOL_PLACEMENT", value_enum, default_value_t = Placement::LeastLoaded)]
    pub placement: Placement,
    /// An execution no VM took within this many seconds ends `expired`.
    #[arg(long = "queue-timeout-s", env = "WARMPOOL_QUEUE_TIMEOUT_S", value_parser = secs, default_value = "120")]
    pub queue_timeout: Duration,
    /// Default game lease: a game with no activity for this long is expired.
    #[arg(long = "game-ttl-s", env = "WARMPOOL_GAME_TTL_S", value_parser = secs, default_value = "3600")]
    pub game_ttl: Duration,
    /// Largest `ttl_s` a client may ask for.
    #[arg(long = "max-game-ttl-s", env = "WARMPOOL_MAX_GAME_TTL_S", value_parser = secs, default_value = "86400")]
    pub max_game_ttl: Duration,
    /// How long an ended execution (and an idempotency key) stays readable.
    #[arg(long = "result-ttl-s", env = "WARMPOOL_RESULT_TTL_S", value_parser = secs, default_value = "86400")]
    pub result_ttl: Duration,
    /// Largest request body; larger ones get 413.
    #[arg(long, env = "WARMPOOL_MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Languages the API accepts (comma-separated catalog names); default: the whole catalog.
    #[arg(
        long,
        env = "WARMPOOL_LANGUAGES",
        value_delimiter = ',',
        default_value = "python,bash,javascript"
    )]
    pub languages: Vec<String>,
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
    /// Tokio worker threads (default: one per CPU; set 1 on a 1-vCPU replica).
    #[arg(long, env = "WARMPOOL_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,
    /// Redis command timeout; past it the API answers 503.
    #[arg(long = "redis-timeout-ms", env = "WARMPOOL_REDIS_TIMEOUT_MS", value_parser = millis, default_value = "2000")]
    pub redis_timeout: Duration,
    /// How often each replica sweeps expired executions and games.
    #[arg(long = "sweep-interval-ms", env = "WARMPOOL_SWEEP_INTERVAL_MS", value_parser = millis, default_value = "1000")]
    pub sweep_interval: Duration,
    /// VM provider: `gce` (Compute Engine, see WARMPOOL_GCE_*), `local` (agent processes on
    /// this machine) or `none` (VMs are started by someone else, e.g. a test).
    #[arg(long, env = "WARMPOOL_PROVIDER", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,
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
    #[arg(long = "leader-ttl-ms", env = "WARMPOOL_LEADER_TTL_MS", value_parser = millis, default_value = "5000")]
    pub leader_ttl: Duration,
    /// Reconcile tick (also on every pending game and on POST /v1/pool/reconcile).
    #[arg(long = "reconcile-interval-s", env = "WARMPOOL_RECONCILE_INTERVAL_S", value_parser = secs, default_value = "5")]
    pub reconcile_interval: Duration,
    /// The desired size must stay lower this long before VMs are drained.
    #[arg(long = "scale-down-delay-s", env = "WARMPOOL_SCALE_DOWN_DELAY_S", value_parser = secs, default_value = "300")]
    pub scale_down_delay: Duration,
    /// A draining VM still holding games after this long has them moved, then is deleted.
    #[arg(long = "drain-timeout-s", env = "WARMPOOL_DRAIN_TIMEOUT_S", value_parser = secs, default_value = "600")]
    pub drain_timeout: Duration,
    /// No games, none pending, none reserved for this long: scale to WARMPOOL_MIN_VMS.
    #[arg(long = "idle-timeout-s", env = "WARMPOOL_IDLE_TIMEOUT_S", value_parser = secs, default_value = "900")]
    pub idle_timeout: Duration,
    /// A VM not Ready this long after its create is failed and replaced.
    #[arg(long = "boot-timeout-s", env = "WARMPOOL_BOOT_TIMEOUT_S", value_parser = secs, default_value = "180")]
    pub boot_timeout: Duration,
    /// A VM whose agent has not heartbeated for this long is declared dead.
    #[arg(long = "heartbeat-timeout-s", env = "WARMPOOL_HEARTBEAT_TIMEOUT_S", value_parser = secs, default_value = "15")]
    pub heartbeat_timeout: Duration,
    /// Deliveries of an execution to VMs that died before it ends `failed` (`vm_lost`).
    #[arg(long, env = "WARMPOOL_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Most VMs created per reconcile pass (the rest next pass).
    #[arg(long, env = "WARMPOOL_MAX_CREATES_PER_PASS", default_value_t = 20)]
    pub max_creates_per_pass: u32,
    /// Half-life of the smoothed game arrival rate.
    #[arg(long = "arrival-half-life-s", env = "WARMPOOL_ARRIVAL_HALF_LIFE_S", value_parser = secs, default_value = "60")]
    pub arrival_half_life: Duration,
    /// Local provider: delay before a new agent registers, to make a cold start visible.
    #[arg(long = "local-boot-delay-ms", env = "WARMPOOL_LOCAL_BOOT_DELAY_MS", value_parser = millis, default_value = "0")]
    pub local_boot_delay: Duration,
    /// Local provider: the agent binary (default: `warmpool-agent` beside this binary).
    #[arg(long, env = "WARMPOOL_AGENT_BIN")]
    pub agent_bin: Option<std::path::PathBuf>,
    /// Local provider: the agents' sandbox backend (`process` is unsandboxed, dev only).
    #[arg(long, env = "WARMPOOL_AGENT_SANDBOX", value_enum, default_value_t = SandboxBackend::Bwrap)]
    pub agent_sandbox: SandboxBackend,
    /// Local provider: concurrent sandboxes per agent.
    #[arg(long, env = "WARMPOOL_AGENT_SLOTS", default_value_t = 4)]
    pub agent_slots: u32,
    /// Concurrent VM creates of the leader (each waits for its provider's operation; the
    /// provider paces its own API calls).
    #[arg(long, env = "WARMPOOL_CREATE_CONCURRENCY", default_value_t = 256)]
    pub create_concurrency: u32,
    /// How often the leader compares the provider's VMs with the records in Redis.
    #[arg(
        long = "provider-sync-interval-s",
        env = "WARMPOOL_PROVIDER_SYNC_INTERVAL_S",
        value_parser = secs,
        default_value = "30"
    )]
    pub provider_sync_interval: Duration,
    /// A provider VM of this pool with no record in Redis (its agent never registered) is
    /// deleted after this long.
    #[arg(long = "orphan-grace-s", env = "WARMPOOL_ORPHAN_GRACE_S", value_parser = secs, default_value = "300")]
    pub orphan_grace: Duration,
    /// First pause of creates after a configuration error (doubling up to 15 min); a
    /// stockout in every zone pauses for a tenth of it.
    #[arg(long = "create-pause-s", env = "WARMPOOL_CREATE_PAUSE_S", value_parser = secs, default_value = "60")]
    pub create_pause: Duration,
    #[command(flatten)]
    pub gce: crate::gce::GceConfig,
}

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(name, message)
}

impl Config {
    /// Checks what the types cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !warmpool_core::rules::valid_pool_name(&self.pool) {
            return Err(bad("WARMPOOL_POOL", "1-32 of [a-z0-9-]"));
        }
        all_positive([
            ("WARMPOOL_GAMES_PER_VM", u64::from(self.games_per_vm)),
            ("WARMPOOL_MAX_ATTEMPTS", u64::from(self.max_attempts)),
            ("WARMPOOL_AGENT_SLOTS", u64::from(self.agent_slots)),
            ("WARMPOOL_REDIS_POOL_SIZE", self.redis_pool_size as u64),
            (
                "WARMPOOL_CREATE_CONCURRENCY",
                u64::from(self.create_concurrency),
            ),
        ])?;
        all_positive([
            ("WARMPOOL_QUEUE_TIMEOUT_S", self.queue_timeout),
            ("WARMPOOL_GAME_TTL_S", self.game_ttl),
            ("WARMPOOL_RESULT_TTL_S", self.result_ttl),
            ("WARMPOOL_REDIS_TIMEOUT_MS", self.redis_timeout),
            ("WARMPOOL_SWEEP_INTERVAL_MS", self.sweep_interval),
            ("WARMPOOL_LEADER_TTL_MS", self.leader_ttl),
            ("WARMPOOL_RECONCILE_INTERVAL_S", self.reconcile_interval),
            ("WARMPOOL_ARRIVAL_HALF_LIFE_S", self.arrival_half_life),
            (
                "WARMPOOL_PROVIDER_SYNC_INTERVAL_S",
                self.provider_sync_interval,
            ),
            ("WARMPOOL_CREATE_PAUSE_S", self.create_pause),
        ])?;
        if self.game_ttl > self.max_game_ttl {
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
        if self.languages.is_empty() {
            return Err(bad("WARMPOOL_LANGUAGES", "at least one language"));
        }
        for lang in &self.languages {
            if warmpool_core::runtimes::lookup(lang).is_none_or(|spec| spec.name != lang) {
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
            ("WARMPOOL_HEADROOM_GAMES", self.headroom_games),
            ("WARMPOOL_HEADROOM_Z", self.headroom_z),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(name, "must be a number >= 0"));
            }
        }
        self.formula()
            .map_err(|e| bad("WARMPOOL_POOL_FORMULA", e.0))?;
        if self.provider == ProviderKind::Gce {
            self.gce
                .settings(&self.pool, self.redis_url.as_deref().unwrap_or(""))?;
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

    /// Settings of the reconcile loop. `formula` is [`Config::formula`], which `validate`
    /// checked.
    pub fn reconciler_settings(
        &self,
        formula: crate::pool::sizing::Formula,
    ) -> crate::pool::reconciler::ReconcilerSettings {
        crate::pool::reconciler::ReconcilerSettings {
            interval: self.reconcile_interval,
            formula,
            sizing: self.sizing_params(),
            plan: crate::pool::plan::PlanParams {
                min_vms: self.min_vms,
                scale_down_delay_ms: ms(self.scale_down_delay),
                drain_timeout_ms: ms(self.drain_timeout),
                idle_timeout_ms: ms(self.idle_timeout),
                boot_timeout_ms: ms(self.boot_timeout),
                heartbeat_timeout_ms: ms(self.heartbeat_timeout),
                max_creates_per_pass: self.max_creates_per_pass,
            },
            games_per_vm: self.games_per_vm,
            placement: self.placement,
            arrival_half_life_s: self.arrival_half_life.as_secs_f64(),
            default_boot_s: 45.0,
            requeue: warmpool_core::store::executions::RequeueParams {
                max_attempts: self.max_attempts,
                queue_timeout: self.queue_timeout,
            },
            manage_size: self.provider != ProviderKind::None,
            create_concurrency: self.create_concurrency as usize,
            provider_sync_interval: self.provider_sync_interval,
            orphan_grace_ms: ms(self.orphan_grace),
            create_pause: self.create_pause,
        }
    }

    pub fn redis_settings(&self, url: String) -> RedisSettings {
        RedisSettings {
            url,
            pool_size: self.redis_pool_size,
            command_timeout: self.redis_timeout,
        }
    }

    /// The bearer tokens `/v1` accepts.
    pub fn tokens(&self) -> Vec<String> {
        self.api_tokens
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The defaults and maxima of execution limits.
    pub fn limit_rules(&self) -> LimitRules {
        LimitRules {
            default: Limits {
                wall_time_ms: self.default_wall_time_ms,
                cpu_time_ms: self.default_cpu_time_ms,
                memory_mb: self.default_memory_mb,
                max_output_bytes: self.default_max_output_bytes,
            },
            max: Limits {
                wall_time_ms: self.max_wall_time_ms,
                cpu_time_ms: self.max_cpu_time_ms,
                memory_mb: self.max_memory_mb,
                max_output_bytes: self.max_output_bytes,
            },
        }
    }

    /// The settings every process of the pool must agree on, as this replica publishes them.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            placement: self.placement,
        }
    }

    /// How `submit` accepts executions.
    pub fn submit_params(&self) -> SubmitParams {
        SubmitParams {
            queue_timeout: self.queue_timeout,
            game_ttl: self.game_ttl,
            placement: self.placement,
            retention: self.result_ttl,
        }
    }

    /// How games end.
    pub fn leases(&self) -> crate::routing::Leases {
        crate::routing::Leases {
            placement: self.placement,
        }
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

/// Milliseconds, as the pure planner counts (its clock is the Redis clock in ms).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_typed() {
        let c = Config::defaults();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.queue_timeout, Duration::from_secs(120));
        assert_eq!(c.provider, ProviderKind::Local);
        assert_eq!(c.agent_sandbox, SandboxBackend::Bwrap);
        assert_eq!(c.languages, ["python", "bash", "javascript"]);
        assert_eq!(c.worker_threads, None);
    }

    #[test]
    fn a_bad_value_is_refused_by_name() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        for (flag, value) in [
            ("--provider", "docker"),
            ("--agent-sandbox", "chroot"),
            ("--queue-timeout-s", "-1"),
            ("--worker-threads", "0"),
            ("--redis-timeout-ms", "1.5"),
        ] {
            let err = Wrapper::try_parse_from(["warmpool", flag, value]).unwrap_err();
            assert!(err.to_string().contains(value), "{flag} {value}: {err}");
        }
        let mut c = Config::defaults();
        c.languages = vec!["cobol".into()];
        assert_eq!(c.validate().map_err(|e| e.name), Err("WARMPOOL_LANGUAGES"));
        let mut c = Config::defaults();
        c.sweep_interval = Duration::ZERO;
        assert_eq!(
            c.validate().map_err(|e| e.name),
            Err("WARMPOOL_SWEEP_INTERVAL_MS")
        );
    }
}
