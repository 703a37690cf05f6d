//! Placement and leases: which VM a game runs on, and for how long.
//!
//! A game is leased to one Ready VM and stays there (sticky): every execution of the game runs
//! on that VM. With no free Ready slot the game is pending, first in first out, and is placed
//! by the same choice as soon as a VM becomes Ready or a slot frees. The choice itself is
//! `pick_vm` in `redis/common.lua`, its only home; every lease changes inside a script
//! (`warmpool_core::store::games`), so any number of replicas place games concurrently without
//! ever leasing one game twice or a VM past its capacity. This module drives a game's life
//! around those scripts: its end (its queued executions cancelled, its slot handed on) and the
//! expiry of idle leases.
//!
//! # Guarantees
//! - A game is leased to at most one VM; a VM never holds more games than its capacity.
//! - Pending games are placed in arrival order.
//! - A game that ends leaves no queued execution behind: each ends `cancelled` (and should this
//!   replica die first, `start_execution` cancels it when an agent reaches it).

use warmpool_core::model::{ErrorDetail, ExecutionState};
use warmpool_core::store::executions;
use warmpool_core::store::games::{self, Deleted, Placement};
use warmpool_core::store::{Store, StoreResult};

/// Most games one expiry sweep ends, so a backlog is worked through in bounded steps.
const EXPIRY_BATCH: i64 = 256;

/// How games end here, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    pub placement: Placement,
}

/// Why a game ended, as its cancelled executions say.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// `DELETE /v1/games/{id}`.
    Deleted,
    /// No activity for its lease.
    Expired,
}

impl Ending {
    fn error(self) -> ErrorDetail {
        let (code, message) = match self {
            Ending::Deleted => ("game_deleted", "the game was deleted"),
            Ending::Expired => ("game_expired", "the game's lease expired"),
        };
        ErrorDetail {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl Leases {
    /// Ends a game: its lease and slot go, its queued executions end `cancelled`, and the
    /// slot it held goes to the next pending game. An expiry ends it only if its lease ran out
    /// ([`Deleted::Alive`] otherwise).
    pub async fn end_game(
        &self,
        store: &Store,
        game_id: &str,
        ending: Ending,
    ) -> StoreResult<Deleted> {
        let only_if_expired = matches!(ending, Ending::Expired);
        let deleted = games::delete_game(store, game_id, only_if_expired).await?;
        if let Deleted::Deleted { vm_id, queued } = &deleted {
            let error = ending.error();
            for id in queued {
                executions::end_queued(store, id, ExecutionState::Cancelled, &error, false).await?;
            }
            if vm_id.is_some() {
                games::place_pending(store, self.placement, None).await?;
            }
        }
        Ok(deleted)
    }

    /// Ends the games whose lease ran out by the Redis clock `now_ms`; how many it ended.
    pub async fn expire_games(&self, store: &Store, now_ms: u64) -> StoreResult<u32> {
        let mut ended = 0;
        for game_id in games::expired_games(store, now_ms, EXPIRY_BATCH).await? {
            if let Deleted::Deleted { .. } = self.end_game(store, &game_id, Ending::Expired).await?
            {
                tracing::info!(game_id, "game lease expired");
                ended += 1;
            }
        }
        Ok(ended)
    }
}
