//! How many VMs the pool wants: a pure function of measured inputs and operator settings.
//!
//! # The default formula
//! ```text
//! buffer  = max(headroom_games, λ·T + z·√(λ·T))          λ = arrivals_per_s, T = boot_s
//! desired = ceil((games + pending + reserved + buffer) / games_per_vm), clamped to min..max
//! ```
//! `buffer` is the number of free slots kept warm: enough to absorb the games that arrive while
//! a new VM boots (λ·T on average; arrivals are roughly Poisson, so z standard deviations,
//! √(λ·T), more cover the bursts), and never fewer than `headroom_games`.
//!
//! Worked example: 37 games placed, 3 pending, a tournament of 40 games reserved to start in a
//! minute, games arriving at 0.5/s, VMs booting in 45 s (p90), X = 8 games per VM, headroom 4,
//! z = 2. λ·T = 22.5, √22.5 ≈ 4.74, so buffer = max(4, 22.5 + 9.49) = 31.99 and
//! desired = ceil((37 + 3 + 40 + 31.99) / 8) = ceil(13.999) = 14 VMs.
//!
//! An idle pool (no games, none pending, none reserved, for `WARMPOOL_IDLE_TIMEOUT_S`) wants
//! `min_vms` (0 by default): scale to zero is decided by the reconciler, not here, because it
//! depends on how long the pool has been idle.

use std::fmt;

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node, Value};
pub use warmpool_core::store::reservations::Reservation;

/// Measured inputs of the formula.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SizingInputs {
    /// Games placed on VMs.
    pub games: f64,
    /// Games waiting for capacity.
    pub pending: f64,
    /// Games announced by reservations whose window has opened (minus those already placed).
    pub reserved: f64,
    /// Recent game-start rate, smoothed.
    pub arrivals_per_s: f64,
    /// Recent p90 of the time from create to Ready.
    pub boot_s: f64,
}

/// Operator settings of the formula.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SizingParams {
    /// X: games one VM takes (`WARMPOOL_GAMES_PER_VM`).
    pub games_per_vm: f64,
    /// Free slots kept at least (`WARMPOOL_HEADROOM_GAMES`).
    pub headroom_games: f64,
    /// Standard deviations of arrival noise covered (`WARMPOOL_HEADROOM_Z`).
    pub z: f64,
    pub min_vms: u32,
    pub max_vms: u32,
}

/// The names a formula may use.
pub const NAMES: [&str; 8] = [
    "games",
    "pending",
    "reserved",
    "arrivals_per_s",
    "boot_s",
    "games_per_vm",
    "headroom_games",
    "z",
];

/// The default formula, as an expression over [`NAMES`] (shown by `GET /v1/pool`).
pub const DEFAULT_FORMULA: &str = "ceil((games + pending + reserved + max(headroom_games, arrivals_per_s * boot_s + z * math::sqrt(arrivals_per_s * boot_s))) / games_per_vm)";

/// A sizing formula: the default, or an operator's expression.
#[derive(Clone)]
pub enum Formula {
    Default,
    Custom { text: String, tree: Node },
}

impl fmt::Debug for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// A formula that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("WARMPOOL_POOL_FORMULA: {0}")]
pub struct FormulaError(pub String);

impl Formula {
    /// Parses an operator's formula and checks it: every name must be one of [`NAMES`], and it
    /// must evaluate to a number on sample inputs.
    pub fn parse(text: &str) -> Result<Formula, FormulaError> {
        let tree = evalexpr::build_operator_tree::<evalexpr::DefaultNumericTypes>(text)
            .map_err(|e| FormulaError(format!("syntax error in {text:?}: {e}")))?;
        for name in tree.iter_variable_identifiers() {
            if !NAMES.contains(&name) {
                return Err(FormulaError(format!(
                    "unknown name {name:?}; known: {}",
                    NAMES.join(", ")
                )));
            }
        }
        let formula = Formula::Custom {
            text: text.to_string(),
            tree,
        };
        let sample = SizingParams {
            games_per_vm: 8.0,
            headroom_games: 4.0,
            z: 2.0,
            min_vms: 0,
            max_vms: 100,
        };
        formula
            .raw(
                &SizingInputs {
                    games: 10.0,
                    pending: 1.0,
                    reserved: 0.0,
                    arrivals_per_s: 0.5,
                    boot_s: 45.0,
                },
                &sample,
            )
            .map_err(|e| FormulaError(format!("{text:?} does not evaluate to a number: {e}")))?;
        Ok(formula)
    }

    pub fn text(&self) -> &str {
        match self {
            Formula::Default => DEFAULT_FORMULA,
            Formula::Custom { text, .. } => text,
        }
    }

    /// The formula's value before rounding and clamping.
    fn raw(&self, i: &SizingInputs, p: &SizingParams) -> Result<f64, String> {
        match self {
            Formula::Default => {
                let lt = (i.arrivals_per_s * i.boot_s).max(0.0);
                let buffer = p.headroom_games.max(lt + p.z * lt.sqrt());
                Ok((i.games + i.pending + i.reserved + buffer) / p.games_per_vm)
            }
            Formula::Custom { tree, .. } => {
                let mut ctx = HashMapContext::<evalexpr::DefaultNumericTypes>::new();
                let values = [
                    i.games,
                    i.pending,
                    i.reserved,
                    i.arrivals_per_s,
                    i.boot_s,
                    p.games_per_vm,
                    p.headroom_games,
                    p.z,
                ];
                for (name, v) in NAMES.iter().zip(values) {
                    ctx.set_value((*name).to_string(), Value::from_float(v))
                        .map_err(|e| e.to_string())?;
                }
                match tree.eval_with_context(&ctx).map_err(|e| e.to_string())? {
                    Value::Float(f) => Ok(f),
                    Value::Int(n) => Ok(n as f64),
                    other => Err(format!("got {other:?}")),
                }
            }
        }
    }

    /// Desired VMs: the formula rounded up and clamped to `min_vms..=max_vms`. A formula that
    /// fails or yields NaN at run time falls back to the default formula (logged), so a bad
    /// expression never empties the pool.
    pub fn desired(&self, i: &SizingInputs, p: &SizingParams) -> u32 {
        let raw = match self.raw(i, p) {
            Ok(v) if v.is_finite() => v,
            Ok(v) => {
                tracing::warn!(
                    formula = self.text(),
                    value = v,
                    "formula is not finite; using the default"
                );
                Formula::Default.raw(i, p).unwrap_or(0.0)
            }
            Err(e) => {
                tracing::warn!(formula = self.text(), error = %e, "formula failed; using the default");
                Formula::Default.raw(i, p).unwrap_or(0.0)
            }
        };
        // Round away float noise before ceil (13.999999 from 14 exact slots must stay 14).
        let rounded = ((raw * 1e9).round() / 1e9).ceil().max(0.0);
        let desired = if rounded >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            rounded as u32
        };
        desired.clamp(p.min_vms, p.max_vms.max(p.min_vms))
    }
}

/// Smooths the game-start rate: an exponentially weighted moving average with a half-life, so
/// a burst raises the rate at once and it decays over `half_life_s` after the burst.
/// `count` games started in the last `dt_s` seconds.
pub fn smooth_rate(prev_per_s: f64, count: f64, dt_s: f64, half_life_s: f64) -> f64 {
    if dt_s <= 0.0 {
        return prev_per_s;
    }
    let instant = count / dt_s;
    let keep = 0.5f64.powf(dt_s / half_life_s.max(1e-3));
    prev_per_s * keep + instant * (1.0 - keep)
}

/// Updates a reservation's `arrived` from the pool's game counter: games started since its
/// start use it up, until its window ends (then it stays as it was). Its `starts_at_start` is
/// the counter at the first observation at or after its start. Returns how many arrivals this
/// update added, which the caller keeps out of the arrival rate: announced games are already
/// counted as `reserved`, and counting them again as arrivals would buy the burst twice for a
/// few half-lives after it lands.
pub fn count_arrivals(r: &mut Reservation, starts: u64, now_ms: u64) -> u64 {
    if now_ms < r.start_ms || now_ms >= r.start_ms + r.duration_ms {
        return 0;
    }
    let base = *r.starts_at_start.get_or_insert(starts);
    let arrived = starts.saturating_sub(base).min(u64::from(r.games)) as u32;
    let added = arrived.saturating_sub(r.arrived);
    r.arrived = r.arrived.max(arrived);
    u64::from(added)
}

/// The 90th percentile of recent boot times (create → Ready), or `fallback_s` with no sample.
pub fn boot_p90(samples_s: &[f64], fallback_s: f64) -> f64 {
    if samples_s.is_empty() {
        return fallback_s;
    }
    let mut v: Vec<f64> = samples_s
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return fallback_s;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Games the formula counts as `reserved` at `now_ms`: each reservation counts from
/// `start - boot` (so its VMs are Ready when the burst lands) until its window ends, minus the
/// games that already arrived for it.
pub fn reserved_now(reservations: &[Reservation], now_ms: u64, boot_ms: u64) -> f64 {
    reservations
        .iter()
        .filter(|r| now_ms + boot_ms >= r.start_ms && now_ms < r.start_ms + r.duration_ms)
        .map(|r| f64::from(r.games.saturating_sub(r.arrived)))
        // An empty f64 sum is -0.0; + 0.0 makes it print as 0.
        .sum::<f64>()
        + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SizingParams {
        SizingParams {
            games_per_vm: 8.0,
            headroom_games: 4.0,
            z: 2.0,
            min_vms: 0,
            max_vms: 1000,
        }
    }

    fn inputs(
        games: f64,
        pending: f64,
        reserved: f64,
        arrivals_per_s: f64,
        boot_s: f64,
    ) -> SizingInputs {
        SizingInputs {
            games,
            pending,
            reserved,
            arrivals_per_s,
            boot_s,
        }
    }

    #[test]
    fn the_arrival_rate_follows_a_burst_and_decays_by_its_half_life() {
        let mut rate = 0.0;
        rate = smooth_rate(rate, 100.0, 10.0, 10.0); // 10/s for 10 s, half-life 10 s
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        rate = smooth_rate(rate, 0.0, 10.0, 10.0);
        assert!((rate - 2.5).abs() < 1e-9, "{rate}");
        assert_eq!(smooth_rate(3.0, 5.0, 0.0, 10.0), 3.0);
    }

    #[test]
    fn arrivals_use_up_a_reservation_only_inside_its_window() {
        let mut r = Reservation {
            reservation_id: "r".into(),
            games: 10,
            start_ms: 1_000,
            duration_ms: 1_000,
            arrived: 0,
            starts_at_start: None,
        };
        assert_eq!(count_arrivals(&mut r, 100, 999), 0, "not started");
        assert_eq!(
            count_arrivals(&mut r, 100, 1_000),
            0,
            "the counter is noted"
        );
        assert_eq!(count_arrivals(&mut r, 104, 1_500), 4);
        assert_eq!(count_arrivals(&mut r, 120, 1_900), 6, "capped at its games");
        assert_eq!(r.arrived, 10);
        assert_eq!(count_arrivals(&mut r, 150, 2_000), 0, "the window ended");
    }

    #[test]
    fn boot_p90_takes_the_slow_tail() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(boot_p90(&samples, 45.0), 9.0);
        assert_eq!(boot_p90(&[], 45.0), 45.0);
        assert_eq!(boot_p90(&[30.0], 45.0), 30.0);
    }

    #[test]
    fn reservations_count_from_start_minus_boot_until_their_games_arrive() {
        let r = Reservation {
            reservation_id: "r".into(),
            games: 100,
            start_ms: 100_000,
            duration_ms: 60_000,
            arrived: 0,
            starts_at_start: None,
        };
        let boot = 45_000;
        assert_eq!(reserved_now(std::slice::from_ref(&r), 54_999, boot), 0.0);
        assert!(reserved_now(&[], 0, boot).is_sign_positive(), "0, not -0");
        assert_eq!(reserved_now(std::slice::from_ref(&r), 55_000, boot), 100.0);
        let mut partly = r.clone();
        partly.arrived = 70;
        assert_eq!(reserved_now(&[partly], 120_000, boot), 30.0);
        assert_eq!(reserved_now(&[r], 160_000, boot), 0.0, "the window ended");
    }

    #[test]
    fn the_worked_example_of_the_docs_holds() {
        let d = Formula::Default.desired(&inputs(37.0, 3.0, 40.0, 0.5, 45.0), &params());
        assert_eq!(d, 14);
    }

    #[test]
    fn default_formula_table() {
        // (games, pending, reserved, λ, T) -> desired, X = 8, headroom 4, z = 2
        let cases = [
            ((0.0, 0.0, 0.0, 0.0, 45.0), 1),  // headroom alone keeps one VM warm
            ((4.0, 0.0, 0.0, 0.0, 45.0), 1),  // 4 + 4 = 8 slots: one VM exactly
            ((5.0, 0.0, 0.0, 0.0, 45.0), 2),  // 9 slots
            ((0.0, 16.0, 0.0, 0.0, 45.0), 3), // pending counts like games
            ((0.0, 0.0, 100.0, 0.0, 45.0), 13),
            ((0.0, 0.0, 0.0, 1.0, 45.0), 8), // 45 + 2·6.7 = 58.4 slots
            ((0.0, 0.0, 0.0, 0.01, 45.0), 1), // λT = .45: headroom dominates
        ];
        for ((g, p, r, l, t), want) in cases {
            assert_eq!(
                Formula::Default.desired(&inputs(g, p, r, l, t), &params()),
                want,
                "{g} {p} {r} {l} {t}"
            );
        }
    }

    #[test]
    fn the_result_is_clamped_to_min_and_max() {
        let mut p = params();
        p.min_vms = 2;
        p.max_vms = 5;
        assert_eq!(
            Formula::Default.desired(&inputs(0.0, 0.0, 0.0, 0.0, 45.0), &p),
            2
        );
        assert_eq!(
            Formula::Default.desired(&inputs(1000.0, 0.0, 0.0, 0.0, 45.0), &p),
            5
        );
    }

    #[test]
    fn the_default_expression_text_agrees_with_the_built_in_formula() {
        let custom = Formula::parse(DEFAULT_FORMULA).unwrap();
        for i in [
            inputs(37.0, 3.0, 40.0, 0.5, 45.0),
            inputs(0.0, 0.0, 0.0, 0.0, 45.0),
            inputs(123.0, 7.0, 0.0, 2.5, 30.0),
        ] {
            assert_eq!(
                custom.desired(&i, &params()),
                Formula::Default.desired(&i, &params()),
                "{i:?}"
            );
        }
    }

    #[test]
    fn a_custom_formula_is_checked_at_start() {
        let f = Formula::parse("ceil((games + pending) / games_per_vm) + 1").unwrap();
        assert_eq!(f.desired(&inputs(9.0, 0.0, 0.0, 0.0, 0.0), &params()), 3);
        let unknown = Formula::parse("games / vms").unwrap_err().to_string();
        assert!(unknown.contains("\"vms\""), "{unknown}");
        let syntax = Formula::parse("games +* 2").unwrap_err().to_string();
        assert!(syntax.contains("games +* 2"), "{syntax}");
        let unclosed = Formula::parse("ceil(games").unwrap_err().to_string();
        assert!(unclosed.contains("syntax error"), "{unclosed}");
        let no_fn = Formula::parse("nope(games)").unwrap_err().to_string();
        assert!(no_fn.contains("nope"), "{no_fn}");
        assert!(Formula::parse("\"text\"").is_err());
    }
}
