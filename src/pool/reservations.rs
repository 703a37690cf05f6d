//! The leader's side of reservations: each pass counts the games that arrived against the open
//! reservations, drops the ended ones, and tells the formula how many games are still
//! reserved. Storing them is `warmpool_core::store::reservations`' (their only writer); the
//! arithmetic is `sizing`'s (pure).

use warmpool_core::store::reservations;
use warmpool_core::store::{Store, StoreResult};

use super::sizing;

/// What the reservations add to this pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reserved {
    /// Games the formula counts as `reserved` now.
    pub games: f64,
    /// Arrivals that used reservations up since the last pass (kept out of the arrival rate:
    /// they are counted as `reserved` already).
    pub arrivals: u64,
}

/// Counts arrivals (the pool's game counter is `starts`) against open reservations at `now_ms`
/// and drops ended ones; VMs boot in `boot_s`.
pub async fn update(store: &Store, now_ms: u64, starts: u64, boot_s: f64) -> StoreResult<Reserved> {
    let mut open = Vec::new();
    let mut arrivals = 0;
    for mut r in reservations::list(store).await? {
        if now_ms >= r.start_ms.saturating_add(r.duration_ms) {
            reservations::delete(store, &r.reservation_id).await?;
            continue;
        }
        let first = r.starts_at_start.is_none();
        let n = sizing::count_arrivals(&mut r, starts, now_ms);
        arrivals += n;
        let changed = n > 0 || (first && r.starts_at_start.is_some());
        // Deleted meanwhile (by the API): it no longer counts.
        if changed && !reservations::save(store, &r).await? {
            continue;
        }
        open.push(r);
    }
    Ok(Reserved {
        games: sizing::reserved_now(&open, now_ms, (boot_s * 1000.0) as u64),
        arrivals,
    })
}
