//! A day of games for `warmpool sim --generate`: a diurnal curve and tournament bursts.
//!
//! # The day
//! The trace starts at 05:00, the quietest hour, so the pool does not start cold in a crowd.
//! Outside bursts, games arrive as a Poisson process whose rate follows the target number of
//! concurrent games C(h) divided by the mean game length:
//! ```text
//! C(h) = trough + (peak − trough) · (1 − cos φ(h)) / 2,   h = hours since 05:00
//! φ(h) = π·h/16 while rising to the 21:00 peak, then π + π·(h − 16)/8 falling back by 05:00
//! ```
//! With the defaults (trough 40, peak 400 games, lives uniform in 5–30 min, mean 17.5 min) the
//! rate goes from 0.04 to 0.38 games/s. Each game submits an execution every 30 s on average.
//!
//! # Bursts
//! Six tournaments, each hundreds of games starting within one minute (uniformly): three
//! announced by a reservation 30–60 min ahead (its window is that minute and its size the
//! exact number of games), three not announced. See [`DayShape::default`].

use super::rng::Rng;
use super::trace::{Burst, Trace, TraceGame, TraceReservation};

/// RNG stream of the generator.
const GENERATOR_STREAM: u64 = 3;

/// One tournament.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstSpec {
    pub id: &'static str,
    /// Hours since the trace's start.
    pub at_h: f64,
    pub games: u32,
    pub announced: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DayShape {
    pub hours: f64,
    pub trough_games: f64,
    pub peak_games: f64,
    pub min_life_s: f64,
    pub max_life_s: f64,
    /// Mean time between two executions of a game.
    pub execution_every_s: f64,
    pub burst_window_s: f64,
    pub bursts: Vec<BurstSpec>,
}

impl Default for DayShape {
    fn default() -> DayShape {
        let burst = |id, at_h, games, announced| BurstSpec {
            id,
            at_h,
            games,
            announced,
        };
        DayShape {
            hours: 24.0,
            trough_games: 40.0,
            peak_games: 400.0,
            min_life_s: 300.0,
            max_life_s: 1800.0,
            execution_every_s: 30.0,
            burst_window_s: 60.0,
            // Local times: 11:00, 14:00, 17:00, 19:00, 20:30, 22:30.
            bursts: vec![
                burst("cup-1100", 6.0, 150, true),
                burst("flash-1400", 9.0, 200, false),
                burst("cup-1700", 12.0, 300, true),
                burst("flash-1900", 14.0, 250, false),
                burst("final-2030", 15.5, 500, true),
                burst("flash-2230", 17.5, 300, false),
            ],
        }
    }
}

impl DayShape {
    /// Target concurrent games (outside bursts) `h` hours after the start (05:00).
    pub fn concurrent(&self, h: f64) -> f64 {
        let h = h.rem_euclid(24.0);
        let phase = if h <= 16.0 {
            std::f64::consts::PI * h / 16.0
        } else {
            std::f64::consts::PI * (1.0 + (h - 16.0) / 8.0)
        };
        self.trough_games + (self.peak_games - self.trough_games) * (1.0 - phase.cos()) / 2.0
    }

    fn mean_life_s(&self) -> f64 {
        (self.min_life_s + self.max_life_s) / 2.0
    }
}

/// A day's trace, the same for the same seed.
pub fn generate_day(shape: &DayShape, seed: u64) -> Trace {
    let mut rng = Rng::new(seed, GENERATOR_STREAM);
    let mut trace = Trace::default();
    let end_s = shape.hours * 3600.0;
    let mean_life = shape.mean_life_s();
    let max_rate = shape.peak_games.max(shape.trough_games) / mean_life;

    // Diurnal arrivals: a Poisson process at max_rate, thinned to the curve.
    let mut t = 0.0;
    loop {
        t += rng.exponential(1.0 / max_rate);
        if t >= end_s {
            break;
        }
        let rate = shape.concurrent(t / 3600.0) / mean_life;
        if rng.unit() < rate / max_rate {
            let g = game(shape, &mut rng, t, Burst::None);
            trace.games.push(g);
        }
    }

    for b in &shape.bursts {
        let start_s = b.at_h * 3600.0;
        let label = if b.announced {
            Burst::Announced(b.id.to_string())
        } else {
            Burst::Unannounced(b.id.to_string())
        };
        for _ in 0..b.games {
            let at = start_s + rng.uniform(0.0, shape.burst_window_s);
            let g = game(shape, &mut rng, at, label.clone());
            trace.games.push(g);
        }
        if b.announced {
            let ahead_s = rng.uniform(30.0, 60.0) * 60.0;
            trace.reservations.push(TraceReservation {
                id: b.id.to_string(),
                start_s,
                duration_s: shape.burst_window_s,
                games: b.games,
                announced_s: Some((start_s - ahead_s).max(0.0)),
            });
        }
    }
    // Millisecond precision, as written to CSV, so a generated trace and its CSV replay alike.
    for g in &mut trace.games {
        g.start_s = (g.start_s * 1000.0).round() / 1000.0;
        g.duration_s = (g.duration_s * 1000.0).round() / 1000.0;
    }
    for r in &mut trace.reservations {
        r.announced_s = r.announced_s.map(|a| (a * 1000.0).round() / 1000.0);
    }
    trace.games.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    trace
}

fn game(shape: &DayShape, rng: &mut Rng, start_s: f64, burst: Burst) -> TraceGame {
    let duration_s = rng.uniform(shape.min_life_s, shape.max_life_s);
    let mean = duration_s / shape.execution_every_s;
    let executions = (mean * rng.uniform(0.5, 1.5)).round().max(1.0) as u32;
    TraceGame {
        start_s,
        duration_s,
        executions,
        burst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_has_its_trough_at_the_start_and_its_peak_at_21_00() {
        let day = DayShape::default();
        assert!((day.concurrent(0.0) - 40.0).abs() < 1e-9);
        assert!((day.concurrent(16.0) - 400.0).abs() < 1e-9);
        assert!((day.concurrent(24.0) - 40.0).abs() < 1e-9);
        assert!(day.concurrent(8.0) > 200.0 && day.concurrent(8.0) < 240.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_day_and_another_seed_another() {
        let day = DayShape::default();
        let a = generate_day(&day, 1);
        assert_eq!(a, generate_day(&day, 1));
        assert_ne!(a, generate_day(&day, 2));
        assert_eq!(
            Trace::parse(&a.to_csv()).unwrap(),
            a,
            "CSV keeps it exactly"
        );
    }

    #[test]
    fn bursts_land_within_their_minute_and_announced_ones_come_with_a_reservation() {
        let day = DayShape::default();
        let trace = generate_day(&day, 1);
        for b in &day.bursts {
            let games: Vec<&TraceGame> = trace
                .games
                .iter()
                .filter(|g| match &g.burst {
                    Burst::Announced(id) | Burst::Unannounced(id) => id == b.id,
                    Burst::None => false,
                })
                .collect();
            assert_eq!(games.len() as u32, b.games, "{}", b.id);
            let start = b.at_h * 3600.0;
            assert!(games
                .iter()
                .all(|g| g.start_s >= start && g.start_s <= start + 60.0));
            let reservation = trace.reservations.iter().find(|r| r.id == b.id);
            assert_eq!(reservation.is_some(), b.announced, "{}", b.id);
            if let Some(r) = reservation {
                let ahead = r.start_s - r.announced_s.unwrap();
                assert!((1800.0..=3600.0).contains(&ahead), "{ahead}");
                assert_eq!(r.games, b.games);
            }
        }
    }
}
