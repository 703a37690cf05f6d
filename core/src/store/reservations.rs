//! Reservations: bursts of games the app announces ahead (`POST /v1/pool/reservations`), kept
//! in `{wp:P}:reservations`. This module is their only writer: the API adds and deletes them,
//! the leader counts their arrivals and drops the ended ones; every change is one atomic step,
//! so a count written by the leader never brings back a reservation the API just deleted.

use std::collections::HashMap;

use fred::prelude::*;

use super::scripts::SCRIPTS;
use super::{arg, parse_record, Store, StoreError, StoreResult};

/// A burst the app announced ahead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub games: u32,
    /// When the games start arriving (Unix ms).
    pub start_ms: u64,
    pub duration_ms: u64,
    /// Games started in the pool since `start_ms` (counted by the leader), which use up the
    /// reservation: reserved slots turn into real games.
    pub arrived: u32,
    /// The pool's game counter at the first count at or after `start_ms` (`None` before).
    pub starts_at_start: Option<u64>,
}

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Ok,
    /// `max` reservations exist already: nothing was written.
    Full,
}

/// Records a new reservation unless `max` exist already (one script: two concurrent adds
/// cannot both pass the check).
pub async fn add(store: &Store, r: &Reservation, max: u32) -> StoreResult<Added> {
    let reply = store
        .call(
            &SCRIPTS.add_reservation,
            vec![store.keys.reservations.clone()],
            vec![
                arg(r.reservation_id.as_str()),
                arg(encode(r)?),
                arg(i64::from(max)),
            ],
        )
        .await?;
    Ok(match reply.status(&["ok", "full"])? {
        "ok" => Added::Ok,
        _ => Added::Full,
    })
}

/// Writes a reservation's new counts, only if it still exists; whether it did.
pub async fn save(store: &Store, r: &Reservation) -> StoreResult<bool> {
    let reply = store
        .call(
            &SCRIPTS.save_reservation,
            vec![store.keys.reservations.clone()],
            vec![arg(r.reservation_id.as_str()), arg(encode(r)?)],
        )
        .await?;
    Ok(reply.int(0)? == 1)
}

/// Deletes a reservation; whether it existed.
pub async fn delete(store: &Store, reservation_id: &str) -> StoreResult<bool> {
    let removed: i64 = store
        .client()
        .hdel(&store.keys.reservations, reservation_id)
        .await?;
    Ok(removed == 1)
}

/// Every reservation, by start then id. One that cannot be read is an error.
pub async fn list(store: &Store) -> StoreResult<Vec<Reservation>> {
    let all: HashMap<String, String> = store.client().hgetall(&store.keys.reservations).await?;
    let mut out = all
        .iter()
        .map(|(id, raw)| parse_record::<Reservation>(&format!("reservation {id}"), raw))
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by(|a, b| {
        a.start_ms
            .cmp(&b.start_ms)
            .then(a.reservation_id.cmp(&b.reservation_id))
    });
    Ok(out)
}

fn encode(r: &Reservation) -> StoreResult<String> {
    serde_json::to_string(r).map_err(|e| StoreError::Reply {
        script: SCRIPTS.add_reservation.name,
        detail: format!("encoding reservation {}: {e}", r.reservation_id),
    })
}
