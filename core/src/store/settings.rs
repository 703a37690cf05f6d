//! The pool settings every process of a pool must agree on, kept in one place: the pool's
//! Redis (`{wp:P}:settings`). Each orchestrator replica publishes its own at start; agents
//! never configure them, they receive them in the reply to their registration
//! (`redis/register_vm-11.lua`), so an agent cannot drift from its orchestrators.
//!
//! Only what an agent must follow is here: the placement it places pending games by when its
//! VM becomes Ready. (How long an ended execution stays readable is the execution's own:
//! the replica that accepts it writes its retention into the record.)
//!
//! # Caveats
//! - Replicas started with different values overwrite each other: the last one started wins
//!   for the agents that register after it, and [`publish`] returns what it replaced, so the
//!   replica logs the disagreement.

use std::collections::HashMap;

use fred::prelude::*;

use super::games::Placement;
use super::{Store, StoreError, StoreResult};

/// What every process of a pool must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Where new and pending games go (`WARMPOOL_PLACEMENT`): the agent places pending games
    /// on its VM when it registers, by the same rule as the replicas.
    pub placement: Placement,
}

const PLACEMENT: &str = "placement";

/// Writes this replica's settings; returns the ones it replaced when they differed.
pub async fn publish(store: &Store, settings: &PoolSettings) -> StoreResult<Option<PoolSettings>> {
    let key = &store.keys.settings;
    let before: HashMap<String, String> = store.client().hgetall(key).await?;
    let _: () = store
        .client()
        .hset(key, [(PLACEMENT, settings.placement.as_str().to_string())])
        .await?;
    if before.is_empty() {
        return Ok(None);
    }
    // What was there but cannot be read (logged and counted by `from_fields`) is replaced.
    Ok(from_fields(&before)
        .ok()
        .filter(|before| before != settings))
}

/// The settings as a hash holds them (`HGETALL {wp:P}:settings`).
pub fn from_fields(fields: &HashMap<String, String>) -> StoreResult<PoolSettings> {
    let placement = fields
        .get(PLACEMENT)
        .ok_or_else(|| StoreError::corrupt("pool settings", format!("no {PLACEMENT}")))?;
    Ok(PoolSettings {
        placement: placement.parse().map_err(|e: String| {
            StoreError::corrupt("pool settings", format!("{PLACEMENT}: {e}"))
        })?,
    })
}
