//! `warmpool sim`: replays a trace of games against the real sizing formula and reconcile
//! planner on a virtual clock, and compares the warm pool with one VM per game and with the
//! lower bound ceil(active games / X).
//!
//! # Layout
//! - [`trace`]: the trace CSV (format in its doc): games, bursts, reservations.
//! - [`generate`]: a day with a diurnal curve and tournament bursts (`--generate`).
//! - [`engine`]: the pool: discrete events, `pool::sizing` + `pool::plan` each pass, placement
//!   as `redis/common.lua` does it.
//! - [`baseline`]: one VM per game, and the lower bound.
//! - [`report`]: figures, targets, the table and the JSON object.
//! - [`plot`]: the day as SVG.
//! - [`rng`]: a seedable splitmix64 and the boot-time distribution.
//!
//! # Guarantees
//! - Deterministic: the same trace, settings and `--seed` give the same figures, byte for byte.
//! - The decisions are the production code's: nothing of sizing or planning is re-implemented
//!   here. What the simulator supplies is what Redis, the provider and the reconciler's loop
//!   would: VM states, boot times, game counts, the arrival count, reservations' `arrived`.
//!
//! # Caveats
//! - A reservation's `arrived` counts every game started since its start (capped at its size),
//!   as the reconciler does: it cannot tell a tournament's games from the others.
//! - Executions take no time; VMs never fail; the clock starts with an empty pool.

pub mod baseline;
pub mod engine;
pub mod generate;
pub mod plot;
pub mod report;
pub mod rng;
pub mod trace;

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};

use crate::pool::sizing::{Formula, FormulaError};
use warmpool_core::store::games::Placement;

pub use engine::Sample;
pub use report::Report;
pub use trace::Trace;

/// Settings of one simulation. Times are seconds (`f64`, as typed on the command line); the
/// engine turns them into the milliseconds `pool::plan` works in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// X: games per VM.
    pub games_per_vm: u32,
    pub headroom_games: f64,
    pub z: f64,
    pub min_vms: u32,
    pub max_vms: u32,
    #[serde(serialize_with = "formula_text")]
    pub formula: Formula,
    #[serde(serialize_with = "placement_text")]
    pub placement: Placement,
    /// Reconcile interval (a pass also runs whenever a game goes pending).
    pub tick_s: f64,
    /// Half-life of the smoothed arrival rate.
    pub rate_half_life_s: f64,
    pub boot: rng::BootTimes,
    /// `boot_s` before any VM has booted.
    pub boot_fallback_s: f64,
    /// Boots the p90 is taken over (the most recent).
    pub boot_samples: usize,
    pub scale_down_delay_s: f64,
    pub drain_timeout_s: f64,
    pub idle_timeout_s: f64,
    pub boot_timeout_s: f64,
    pub max_creates_per_pass: u32,
    /// An execution waiting longer than this for its game's VM ends `expired` (lost), as
    /// `WARMPOOL_QUEUE_TIMEOUT_S`.
    pub queue_timeout_s: f64,
    /// Interval of the plotted samples.
    pub sample_s: f64,
    pub seed: u64,
}

fn formula_text<S: serde::Serializer>(f: &Formula, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.text())
}

fn placement_text<S: serde::Serializer>(p: &Placement, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

impl Settings {
    /// The defaults of `warmpool sim` (and of its flags): the orchestrator's defaults except
    /// four, chosen so that the generated day meets the targets (docs/BENCHMARKS.md
    /// "Simulator" has the runs behind each):
    /// - `placement` packed (server: least-loaded): filling the fullest VM leaves whole VMs
    ///   empty to drain; spreading leaves every VM a few games, so scale-down waits for the
    ///   drain timeout and moves games (1.24 × the lower bound with all server defaults).
    /// - `z` 1 (server: 2): p99 placement wait stays 0 outside unannounced bursts either way;
    ///   the second standard deviation of warm slots only costs.
    /// - `scale_down_delay_s` 60 (server: 300): a falling pool sheds VMs every delay, so the
    ///   delay is paid on every step of the evening's decline and after every burst.
    /// - `max_vms` 1000 (server: 50): the generated day peaks above 100 VMs.
    pub const DEFAULT: Settings = Settings {
        games_per_vm: 8,
        headroom_games: 4.0,
        z: 1.0,
        min_vms: 0,
        max_vms: 1000,
        formula: Formula::Default,
        placement: Placement::Packed,
        tick_s: 5.0,
        rate_half_life_s: 60.0,
        boot: rng::BootTimes {
            mean_s: 45.0,
            sd_s: 8.0,
            min_s: 25.0,
            max_s: 120.0,
        },
        boot_fallback_s: 45.0,
        boot_samples: 20,
        scale_down_delay_s: 60.0,
        drain_timeout_s: 600.0,
        idle_timeout_s: 900.0,
        boot_timeout_s: 180.0,
        max_creates_per_pass: 20,
        queue_timeout_s: 120.0,
        sample_s: 60.0,
        seed: 1,
    };

    pub fn formula_text(&self) -> &str {
        self.formula.text()
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::DEFAULT
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("trace line {line}: {message}")]
    Trace { line: usize, message: String },
    #[error(transparent)]
    Formula(#[from] FormulaError),
}

impl SimError {
    fn trace(line: usize, message: impl Into<String>) -> SimError {
        SimError::Trace {
            line,
            message: message.into(),
        }
    }
}

/// Seconds → milliseconds of the virtual clock (negative and NaN become 0).
pub(crate) fn ms(seconds: f64) -> u64 {
    (seconds * 1000.0).round().max(0.0) as u64
}

/// A finished simulation: the figures and the pool over time.
pub struct Simulation {
    pub report: Report,
    pub series: Vec<Sample>,
}

/// Replays `trace` against the pool and both baselines.
pub fn simulate(trace: &Trace, settings: &Settings) -> Simulation {
    let mut pool = engine::run_pool(trace, settings);
    let one = baseline::one_vm_per_game(trace, &settings.boot, settings.seed);
    let lower = baseline::lower_bound_vm_ms(trace, settings.games_per_vm);
    let report = report::build(trace, settings, &pool, &one, lower);
    Simulation {
        report,
        series: std::mem::take(&mut pool.series),
    }
}

/// The markers of the plot: one per burst, at its first game.
pub fn burst_markers(trace: &Trace) -> Vec<plot::Marker> {
    let mut markers: Vec<plot::Marker> = Vec::new();
    for g in &trace.games {
        let (id, announced) = match &g.burst {
            trace::Burst::None => continue,
            trace::Burst::Announced(id) => (id, true),
            trace::Burst::Unannounced(id) => (id, false),
        };
        if !markers.iter().any(|m| &m.label == id) {
            markers.push(plot::Marker {
                t_s: g.start_s,
                label: id.clone(),
                announced,
            });
        }
    }
    markers
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["trace", "generate"])))]
pub struct SimArgs {
    /// Replay this trace (CSV: kind,start_s,duration_s,executions,games,burst,announced_s).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write a generated day's trace (to stdout, or to --out) instead of simulating.
    #[arg(long)]
    generate: bool,
    /// With --generate: the file to write.
    #[arg(long, requires = "generate")]
    out: Option<PathBuf>,
    /// With --generate: concurrent games at the evening peak (outside bursts).
    #[arg(long, requires = "generate", default_value_t = 400.0)]
    peak_games: f64,
    /// With --generate: concurrent games at the night trough.
    #[arg(long, requires = "generate", default_value_t = 40.0)]
    trough_games: f64,
    /// Seed of the generator and of the boot times.
    #[arg(long, default_value_t = Settings::DEFAULT.seed)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write an SVG of active games, desired and Ready VMs over the trace.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// X: games per VM.
    #[arg(long, default_value_t = Settings::DEFAULT.games_per_vm)]
    games_per_vm: u32,
    /// Free slots kept at least.
    #[arg(long, default_value_t = Settings::DEFAULT.headroom_games)]
    headroom_games: f64,
    /// Standard deviations of arrival noise covered.
    #[arg(long, default_value_t = Settings::DEFAULT.z)]
    z: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.min_vms)]
    min_vms: u32,
    #[arg(long, default_value_t = Settings::DEFAULT.max_vms)]
    max_vms: u32,
    /// Sizing formula over games, pending, reserved, arrivals_per_s, boot_s, games_per_vm,
    /// headroom_games, z (default: the built-in one).
    #[arg(long)]
    formula: Option<String>,
    /// least-loaded or packed.
    #[arg(long, default_value = "packed")]
    placement: Placement,
    #[arg(long, default_value_t = Settings::DEFAULT.tick_s)]
    tick_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.rate_half_life_s)]
    rate_half_life_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.boot.mean_s)]
    boot_mean_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.boot.sd_s)]
    boot_sd_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.scale_down_delay_s)]
    scale_down_delay_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.drain_timeout_s)]
    drain_timeout_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.idle_timeout_s)]
    idle_timeout_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.boot_timeout_s)]
    boot_timeout_s: f64,
    #[arg(long, default_value_t = Settings::DEFAULT.max_creates_per_pass)]
    max_creates_per_pass: u32,
    #[arg(long, default_value_t = Settings::DEFAULT.queue_timeout_s)]
    queue_timeout_s: f64,
}

impl SimArgs {
    fn settings(&self) -> Result<Settings, SimError> {
        let formula = match &self.formula {
            Some(text) => Formula::parse(text)?,
            None => Formula::Default,
        };
        Ok(Settings {
            games_per_vm: self.games_per_vm.max(1),
            headroom_games: self.headroom_games,
            z: self.z,
            min_vms: self.min_vms,
            max_vms: self.max_vms,
            formula,
            placement: self.placement,
            tick_s: self.tick_s,
            rate_half_life_s: self.rate_half_life_s,
            boot: rng::BootTimes {
                mean_s: self.boot_mean_s,
                sd_s: self.boot_sd_s,
                ..Settings::DEFAULT.boot
            },
            scale_down_delay_s: self.scale_down_delay_s,
            drain_timeout_s: self.drain_timeout_s,
            idle_timeout_s: self.idle_timeout_s,
            boot_timeout_s: self.boot_timeout_s,
            max_creates_per_pass: self.max_creates_per_pass,
            queue_timeout_s: self.queue_timeout_s,
            seed: self.seed,
            ..Settings::DEFAULT
        })
    }
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.generate {
        let shape = generate::DayShape {
            peak_games: args.peak_games,
            trough_games: args.trough_games,
            ..generate::DayShape::default()
        };
        let csv = generate::generate_day(&shape, args.seed).to_csv();
        match &args.out {
            Some(path) => {
                std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?
            }
            None => print!("{csv}"),
        }
        return Ok(());
    }
    let settings = args.settings()?;
    let Some(path) = &args.trace else {
        anyhow::bail!("pass --trace FILE or --generate");
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let trace = Trace::parse(&text).with_context(|| format!("reading {}", path.display()))?;
    let sim = simulate(&trace, &settings);
    if let Some(plot_path) = &args.plot {
        let title = format!(
            "warmpool sim: {} games, X = {}, VM-seconds {:.3} × lower bound",
            sim.report.trace.games, settings.games_per_vm, sim.report.targets.vs_lower_bound
        );
        let svg = plot::svg(
            &sim.series,
            settings.games_per_vm,
            &burst_markers(&trace),
            &title,
        );
        std::fs::write(plot_path, svg)
            .with_context(|| format!("writing {}", plot_path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&sim.report)?);
    } else {
        print!("{}", sim.report.table());
    }
    Ok(())
}
