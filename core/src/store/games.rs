//! Placement and leases: which VM a game runs on, and for how long.
//!
//! A game is leased to one Ready VM and stays there (sticky): every execution of the game runs
//! on that VM. With no free Ready slot the game is pending, first in first out, and is placed
//! by the same choice (`redis/common.lua: pick_vm`) as soon as a VM becomes Ready or a slot
//! frees. All of it is decided inside Lua scripts, so any number of replicas can place games
//! concurrently without ever leasing one game twice or a VM past its capacity.
//!
//! # Guarantees
//! - A game is leased to at most one VM; a VM never holds more games than its capacity.
//! - Pending games are placed in arrival order.
//! - A pending game's executions move to its VM's stream, in order, in the same script that
//!   places the game: none is lost or duplicated between backlog and stream.

use std::str::FromStr;
use std::time::Duration;

use fred::prelude::*;

use super::scripts::SCRIPTS;
use super::{arg, ms, parse_record, Store, StoreResult};
use crate::model::{Game, GameState};

/// Where a new game goes. The rule itself is `pick_vm` in `redis/common.lua`, its only home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// The Ready VM with the fewest games: spreads load, keeps games fast.
    LeastLoaded,
    /// The Ready VM with the most games that still has a slot: fills VMs, so scale-down
    /// empties whole VMs sooner.
    Packed,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::LeastLoaded => "least-loaded",
            Placement::Packed => "packed",
        }
    }
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least-loaded" => Ok(Placement::LeastLoaded),
            "packed" => Ok(Placement::Packed),
            other => Err(format!("{other:?}: expected least-loaded or packed")),
        }
    }
}

/// Game record as kept in Redis (`{wp:P}:games`).
#[derive(Debug, Clone, serde::Deserialize)]
struct StoredGame {
    vm: String,
    created: f64,
    expires: f64,
}

impl StoredGame {
    fn into_game(self, game_id: &str) -> Game {
        let vm_id = (!self.vm.is_empty()).then_some(self.vm);
        Game {
            game_id: game_id.to_string(),
            state: if vm_id.is_some() {
                GameState::Placed
            } else {
                GameState::Pending
            },
            vm_id,
            created_at: crate::model::rfc3339_ms(self.created as u64),
            expires_at: crate::model::rfc3339_ms(self.expires as u64),
        }
    }
}

/// Starts a game or refreshes its lease; `true` when it was created by this call. `ttl` `None`
/// keeps an existing game's lease length (a new one gets `default_ttl`).
pub async fn put_game(
    store: &Store,
    game_id: &str,
    ttl: Option<Duration>,
    default_ttl: Duration,
    placement: Placement,
) -> StoreResult<(Game, bool)> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.put_game,
            vec![
                k.games.clone(),
                k.free.clone(),
                k.vm_games.clone(),
                k.vm_cap.clone(),
                k.pending.clone(),
                k.game_exp.clone(),
                k.seq.clone(),
            ],
            vec![
                arg(game_id),
                ttl.map_or_else(|| arg(""), ms),
                arg(placement.as_str()),
                ms(default_ttl),
            ],
        )
        .await?;
    let created = reply.int(0)? == 1;
    let vm = reply.str(1)?;
    let stored = StoredGame {
        vm,
        created: reply.count(2)? as f64,
        expires: reply.count(3)? as f64,
    };
    Ok((stored.into_game(game_id), created))
}

pub async fn get_game(store: &Store, game_id: &str) -> StoreResult<Option<Game>> {
    let raw: Option<String> = store.client().hget(&store.keys.games, game_id).await?;
    raw.map(|raw| {
        parse_record::<StoredGame>(&format!("game {game_id}"), &raw).map(|g| g.into_game(game_id))
    })
    .transpose()
}

/// What deleting a game did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// No such game.
    Gone,
    /// The lease has not run out (only when deleting expired games).
    Alive,
    /// Deleted; these executions were still queued and must be cancelled.
    Deleted {
        vm_id: Option<String>,
        queued: Vec<String>,
    },
}

/// Ends a game and frees its slot. With `only_if_expired` it is the lease sweeper's delete.
pub async fn delete_game(
    store: &Store,
    game_id: &str,
    only_if_expired: bool,
) -> StoreResult<Deleted> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.delete_game,
            vec![
                k.games.clone(),
                k.free.clone(),
                k.vm_games.clone(),
                k.vm_cap.clone(),
                k.vm_state.clone(),
                k.pending.clone(),
                k.game_exp.clone(),
                k.backlog.clone(),
                k.queued.clone(),
                k.game_queued.clone(),
            ],
            vec![arg(game_id), arg(if only_if_expired { "1" } else { "0" })],
        )
        .await?;
    Ok(match reply.status(&["gone", "alive", "deleted"])? {
        "gone" => Deleted::Gone,
        "alive" => Deleted::Alive,
        _ => {
            let vm = reply.str(1)?;
            Deleted::Deleted {
                vm_id: (!vm.is_empty()).then_some(vm),
                queued: reply.strs_from(2)?,
            }
        }
    })
}

/// Most games one `place_pending` call places, so one script never blocks Redis for long.
const PLACE_BATCH: i64 = 64;

/// Places pending games on Ready VMs until none is pending or no slot is free. Starts with the
/// VM the caller expects to be chosen (an agent that just became Ready passes itself) or, with
/// `None`, lets the script name the choice (`pick_vm`, the placement rule's only home). Returns
/// how many games were placed.
pub async fn place_pending(
    store: &Store,
    placement: Placement,
    first_guess: Option<&str>,
) -> StoreResult<u64> {
    let k = &store.keys;
    // '' is no VM: the script answers with the VM it picks, having placed nothing.
    let mut guess = first_guess.unwrap_or_default().to_string();
    let mut placed = 0u64;
    // Each round either places games or moves to the VM the script named; both make progress,
    // and the bound keeps a pathological race from spinning.
    for _ in 0..1_000 {
        let reply = store
            .call(
                &SCRIPTS.place_pending,
                vec![
                    k.free.clone(),
                    k.vm_games.clone(),
                    k.vm_cap.clone(),
                    k.pending.clone(),
                    k.games.clone(),
                    k.backlog.clone(),
                    k.queue(&guess),
                ],
                vec![
                    arg(guess.as_str()),
                    arg(placement.as_str()),
                    arg(PLACE_BATCH),
                ],
            )
            .await?;
        placed += reply.count(0)?;
        let next = reply.str(1)?;
        if next.is_empty() {
            break;
        }
        guess = next;
    }
    Ok(placed)
}

/// Game ids whose lease ran out by the Redis clock `now_ms`, at most `limit`.
pub async fn expired_games(store: &Store, now_ms: u64, limit: i64) -> StoreResult<Vec<String>> {
    store
        .client()
        .zrangebyscore(
            &store.keys.game_exp,
            "-inf",
            now_ms as f64,
            false,
            Some((0, limit)),
        )
        .await
        .map_err(Into::into)
}

/// Counts for `GET /v1/pool`: (placed, pending).
pub async fn game_counts(store: &Store) -> StoreResult<(u64, u64)> {
    let total: u64 = store.client().hlen(&store.keys.games).await?;
    let pending: u64 = store.client().zcard(&store.keys.pending).await?;
    Ok((total.saturating_sub(pending), pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_parses_its_two_names_only() {
        assert_eq!("packed".parse(), Ok(Placement::Packed));
        assert_eq!("least-loaded".parse(), Ok(Placement::LeastLoaded));
        assert!("random".parse::<Placement>().is_err());
    }
}
