//! Figures of one simulation: the pool against both baselines, the targets, a table and JSON.

use std::fmt::Write as _;

use super::baseline::OnePerGame;
use super::engine::PoolRun;
use super::trace::{Burst, Trace};
use super::Settings;

/// The targets on the generated day.
pub const MAX_VS_LOWER_BOUND: f64 = 1.15;
pub const MAX_VS_ONE_PER_GAME: f64 = 0.2;
pub const MAX_P99_WAIT_S: f64 = 1.0;

/// Wait times in seconds. Percentiles by nearest rank: p99 is the smallest wait that at least
/// 99 % of the games did not exceed.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WaitSummary {
    pub n: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

impl WaitSummary {
    pub fn of(samples_s: &[f64]) -> WaitSummary {
        let mut v = samples_s.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            round3(v[i])
        };
        WaitSummary {
            n: v.len(),
            p50_s: rank(0.5),
            p99_s: rank(0.99),
            max_s: rank(1.0),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceSummary {
    pub games: usize,
    pub games_announced_bursts: usize,
    pub games_unannounced_bursts: usize,
    pub reservations: usize,
    pub executions: u64,
    pub span_s: f64,
    /// Most games active at once.
    pub peak_active_games: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolFigures {
    pub vm_seconds: f64,
    pub vms_created: u32,
    pub peak_vms: u32,
    /// Games outside unannounced bursts (diurnal games and announced bursts).
    pub wait_outside_unannounced: WaitSummary,
    pub wait_unannounced_bursts: WaitSummary,
    pub executions_queued: u64,
    pub executions_lost: u64,
    pub games_never_placed: u32,
    /// Games moved off a VM that was retired with its games (drain timeout).
    pub moves: u32,
    pub move_wait: WaitSummary,
    pub reconcile_passes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OnePerGameFigures {
    pub vm_seconds: f64,
    pub wait_outside_unannounced: WaitSummary,
    pub wait_unannounced_bursts: WaitSummary,
    pub executions_lost: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LowerBoundFigures {
    pub vm_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Targets {
    /// Pool VM-seconds / lower bound (target ≤ 1.15).
    pub vs_lower_bound: f64,
    /// Pool VM-seconds / one VM per game (target ≤ 0.2).
    pub vs_one_vm_per_game: f64,
    /// Target < 1 s.
    pub p99_wait_outside_unannounced_s: f64,
    /// Target 0.
    pub executions_lost: u64,
    pub met: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub trace: TraceSummary,
    pub settings: Settings,
    pub pool: PoolFigures,
    pub one_vm_per_game: OnePerGameFigures,
    pub lower_bound: LowerBoundFigures,
    pub targets: Targets,
}

pub fn build(
    trace: &Trace,
    settings: &Settings,
    pool: &PoolRun,
    one: &OnePerGame,
    lower_bound_vm_ms: u64,
) -> Report {
    let count = |f: fn(&Burst) -> bool| trace.games.iter().filter(|g| f(&g.burst)).count();
    let vm_s = |vm_ms: u64| vm_ms as f64 / 1000.0;
    let pool_figures = PoolFigures {
        vm_seconds: vm_s(pool.vm_ms),
        vms_created: pool.vms_created,
        peak_vms: pool.peak_vms,
        wait_outside_unannounced: WaitSummary::of(&pool.waits_other_s),
        wait_unannounced_bursts: WaitSummary::of(&pool.waits_unannounced_s),
        executions_queued: pool.executions_queued,
        executions_lost: pool.executions_lost,
        games_never_placed: pool.games_never_placed,
        moves: pool.moves,
        move_wait: WaitSummary::of(&pool.move_waits_s),
        reconcile_passes: pool.passes,
    };
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            round3(a as f64 / b as f64)
        }
    };
    let targets = Targets {
        vs_lower_bound: ratio(pool.vm_ms, lower_bound_vm_ms),
        vs_one_vm_per_game: ratio(pool.vm_ms, one.vm_ms),
        p99_wait_outside_unannounced_s: pool_figures.wait_outside_unannounced.p99_s,
        executions_lost: pool.executions_lost,
        met: false,
    };
    let met = targets.vs_lower_bound <= MAX_VS_LOWER_BOUND
        && targets.vs_one_vm_per_game <= MAX_VS_ONE_PER_GAME
        && targets.p99_wait_outside_unannounced_s < MAX_P99_WAIT_S
        && targets.executions_lost == 0;
    Report {
        trace: TraceSummary {
            games: trace.games.len(),
            games_announced_bursts: count(|b| matches!(b, Burst::Announced(_))),
            games_unannounced_bursts: count(|b| matches!(b, Burst::Unannounced(_))),
            reservations: trace.reservations.len(),
            executions: pool.executions,
            span_s: vm_s(pool.end_ms),
            peak_active_games: pool
                .series
                .iter()
                .map(|s| s.active_games)
                .max()
                .unwrap_or(0),
        },
        settings: settings.clone(),
        pool: pool_figures,
        one_vm_per_game: OnePerGameFigures {
            vm_seconds: vm_s(one.vm_ms),
            wait_outside_unannounced: WaitSummary::of(&one.waits_other_s),
            wait_unannounced_bursts: WaitSummary::of(&one.waits_unannounced_s),
            executions_lost: 0,
        },
        lower_bound: LowerBoundFigures {
            vm_seconds: vm_s(lower_bound_vm_ms),
        },
        targets: Targets { met, ..targets },
    }
}

impl Report {
    /// The table `warmpool sim` prints (Markdown, ready for docs/BENCHMARKS.md).
    pub fn table(&self) -> String {
        let t = &self.trace;
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "trace: {} games over {:.1} h (peak {} active), {} in announced bursts, {} in \
             unannounced bursts, {} reservations, {} executions",
            thousands(t.games as f64),
            t.span_s / 3600.0,
            t.peak_active_games,
            t.games_announced_bursts,
            t.games_unannounced_bursts,
            t.reservations,
            thousands(t.executions as f64),
        );
        let _ = writeln!(
            out,
            "pool: X = {} games/VM, formula {}, headroom {} games, z {}, {} placement, tick {} s, \
             rate half-life {} s, scale-down delay {} s, drain timeout {} s, idle timeout {} s, \
             ≤ {} creates/pass, boots lognormal mean {} s sd {} s in {}–{} s, seed {}",
            s.games_per_vm,
            if s.formula_text() == crate::pool::sizing::DEFAULT_FORMULA {
                "default"
            } else {
                s.formula_text()
            },
            s.headroom_games,
            s.z,
            s.placement.as_str(),
            s.tick_s,
            s.rate_half_life_s,
            s.scale_down_delay_s,
            s.drain_timeout_s,
            s.idle_timeout_s,
            s.max_creates_per_pass,
            s.boot.mean_s,
            s.boot.sd_s,
            s.boot.min_s,
            s.boot.max_s,
            s.seed,
        );
        out.push('\n');
        out.push_str(
            "| design | VM-seconds | × lower bound | wait p50 / p99 / max s (other games) | \
             wait p50 / p99 / max s (unannounced bursts) | executions lost |\n",
        );
        out.push_str("|---|---|---|---|---|---|\n");
        let lb = self.lower_bound.vm_seconds;
        let times = |v: f64| if lb > 0.0 { v / lb } else { 0.0 };
        let w =
            |w: &WaitSummary| format!("{} / {} / {}", secs(w.p50_s), secs(w.p99_s), secs(w.max_s));
        let p = &self.pool;
        let _ = writeln!(
            out,
            "| warm pool | {} | {:.3} | {} | {} | {} |",
            thousands(p.vm_seconds),
            times(p.vm_seconds),
            w(&p.wait_outside_unannounced),
            w(&p.wait_unannounced_bursts),
            p.executions_lost
        );
        let o = &self.one_vm_per_game;
        let _ = writeln!(
            out,
            "| one VM per game | {} | {:.3} | {} | {} | {} |",
            thousands(o.vm_seconds),
            times(o.vm_seconds),
            w(&o.wait_outside_unannounced),
            w(&o.wait_unannounced_bursts),
            o.executions_lost
        );
        let _ = writeln!(
            out,
            "| lower bound ceil(active / X), zero boot | {} | 1.000 | 0 / 0 / 0 | 0 / 0 / 0 | 0 |",
            thousands(lb)
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "pool: {} VMs created, peak {} VMs, {} reconcile passes; {} executions waited in a \
             pending game's backlog, {} games never placed, {} games moved by a drain timeout \
             (wait to re-place p99 {} s)",
            p.vms_created,
            p.peak_vms,
            thousands(p.reconcile_passes as f64),
            p.executions_queued,
            p.games_never_placed,
            p.moves,
            secs(p.move_wait.p99_s),
        );
        let g = &self.targets;
        let mark = |ok: bool| if ok { "met" } else { "NOT MET" };
        let _ = writeln!(
            out,
            "targets: VM-seconds {:.3} × lower bound (≤ {MAX_VS_LOWER_BOUND}: {}), {:.3} × one VM \
             per game (≤ {MAX_VS_ONE_PER_GAME}: {}), p99 wait outside unannounced bursts {} s \
             (< {MAX_P99_WAIT_S} s: {}), executions lost {} (= 0: {})",
            g.vs_lower_bound,
            mark(g.vs_lower_bound <= MAX_VS_LOWER_BOUND),
            g.vs_one_vm_per_game,
            mark(g.vs_one_vm_per_game <= MAX_VS_ONE_PER_GAME),
            secs(g.p99_wait_outside_unannounced_s),
            mark(g.p99_wait_outside_unannounced_s < MAX_P99_WAIT_S),
            g.executions_lost,
            mark(g.executions_lost == 0),
        );
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Seconds for the table: whole above 10 s, else two decimals; "0" for zero.
fn secs(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let waits: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = WaitSummary::of(&waits);
        assert_eq!((s.n, s.p50_s, s.p99_s, s.max_s), (100, 50.0, 99.0, 100.0));
        // 99 games placed at once and one that waited: p99 is still 0.
        let mut mostly_zero = vec![0.0; 99];
        mostly_zero.push(45.0);
        let s = WaitSummary::of(&mostly_zero);
        assert_eq!((s.p99_s, s.max_s), (0.0, 45.0));
        assert_eq!(WaitSummary::of(&[]), WaitSummary::default());
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
