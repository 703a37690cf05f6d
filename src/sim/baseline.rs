//! The two designs the pool is compared with, on the same trace.
//!
//! - **One VM per game** (today's design): each game creates its own VM when it starts and
//!   waits for it to boot (a time drawn from the same distribution as the pool's boots); the
//!   game then runs its full duration, and the VM is deleted when it ends. VM-seconds = boot +
//!   duration, wait = boot. Its executions start once the VM is up, so none is lost.
//! - **Lower bound**: ∫ ceil(active games(t) / X) dt with VMs that boot in zero time, are
//!   perfectly packed and appear and vanish the instant they are needed. No design can do
//!   better at X games per VM.

use super::ms;
use super::rng::{BootTimes, Rng};
use super::trace::{Burst, Trace};

/// RNG stream of the baseline's boot times (the pool's is [`super::engine::BOOT_STREAM`]).
pub const ONE_PER_GAME_STREAM: u64 = 2;

#[derive(Debug, Clone, Default)]
pub struct OnePerGame {
    pub vm_ms: u64,
    pub waits_other_s: Vec<f64>,
    pub waits_unannounced_s: Vec<f64>,
}

pub fn one_vm_per_game(trace: &Trace, boot: &BootTimes, seed: u64) -> OnePerGame {
    let mut rng = Rng::new(seed, ONE_PER_GAME_STREAM);
    let mut out = OnePerGame::default();
    for g in &trace.games {
        let boot_ms = ms(boot.draw(&mut rng));
        out.vm_ms += boot_ms + ms(g.duration_s);
        let wait_s = boot_ms as f64 / 1000.0;
        match g.burst {
            Burst::Unannounced(_) => out.waits_unannounced_s.push(wait_s),
            _ => out.waits_other_s.push(wait_s),
        }
    }
    out
}

/// ∫ ceil(active(t) / games_per_vm) dt in VM-milliseconds, over the same millisecond clock as
/// the pool (a game is active on [start, start + duration)).
pub fn lower_bound_vm_ms(trace: &Trace, games_per_vm: u32) -> u64 {
    let x = u64::from(games_per_vm.max(1));
    // (time, +1 start / -1 end); ends sort before starts at the same instant.
    let mut edges: Vec<(u64, i64)> = Vec::with_capacity(2 * trace.games.len());
    for g in &trace.games {
        let start = ms(g.start_s);
        edges.push((start, 1));
        edges.push((start + ms(g.duration_s).max(1), -1));
    }
    edges.sort_unstable();
    let mut active: u64 = 0;
    let mut last = 0;
    let mut total = 0;
    for (t, delta) in edges {
        total += active.div_ceil(x) * (t - last);
        last = t;
        active = active.saturating_add_signed(delta);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::trace::TraceGame;

    fn game(start_s: f64, duration_s: f64) -> TraceGame {
        TraceGame {
            start_s,
            duration_s,
            executions: 1,
            burst: Burst::None,
        }
    }

    #[test]
    fn the_lower_bound_rounds_up_at_each_instant() {
        // X = 2. 0–10 s: 1 game → 1 VM; 10–20 s: 3 games → 2 VMs; 20–30 s: 2 games → 1 VM.
        let trace = Trace {
            games: vec![game(0.0, 30.0), game(10.0, 10.0), game(10.0, 20.0)],
            reservations: vec![],
        };
        assert_eq!(lower_bound_vm_ms(&trace, 2), 10_000 + 2 * 10_000 + 10_000);
        assert_eq!(lower_bound_vm_ms(&trace, 1), 30_000 + 10_000 + 20_000);
    }

    #[test]
    fn one_vm_per_game_pays_boot_plus_life_and_waits_the_boot() {
        let trace = Trace {
            games: vec![game(0.0, 100.0), game(5.0, 200.0)],
            reservations: vec![],
        };
        let fixed = BootTimes {
            mean_s: 45.0,
            sd_s: 0.0,
            min_s: 25.0,
            max_s: 120.0,
        };
        let out = one_vm_per_game(&trace, &fixed, 1);
        assert_eq!(out.vm_ms, 145_000 + 245_000);
        assert_eq!(out.waits_other_s, vec![45.0, 45.0]);
    }
}
