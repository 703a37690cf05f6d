//! The leader lease of a pool and its fencing token (`redis/acquire_leader-2.lua`): who may
//! change VM records. The loop that holds it is the orchestrator's (`pool::leader`).

use std::time::Duration;

use fred::prelude::*;

use super::scripts::SCRIPTS;
use super::{arg, ms, Store, StoreError, StoreResult};

/// Takes or renews the lease for `replica_id`: the fencing token while it leads, `None` when
/// another replica holds the lease.
pub async fn acquire(store: &Store, replica_id: &str, ttl: Duration) -> StoreResult<Option<u64>> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.acquire_leader,
            vec![k.leader.clone(), k.fence.clone()],
            vec![arg(replica_id), ms(ttl)],
        )
        .await?;
    Ok(Some(reply.count(0)?).filter(|t| *t > 0))
}

/// Gives the lease up, if `replica_id` still holds it under `token`; whether it did.
pub async fn release(store: &Store, replica_id: &str, token: u64) -> StoreResult<bool> {
    let reply = store
        .call(
            &SCRIPTS.release_leader,
            vec![store.keys.leader.clone()],
            vec![arg(replica_id), arg(token.to_string())],
        )
        .await?;
    Ok(reply.int(0)? == 1)
}

/// The holder of the lease and its token, as `GET /v1/pool` shows them.
pub async fn current(store: &Store) -> StoreResult<Option<(String, u64)>> {
    let value: Option<String> = store.client().get(&store.keys.leader).await?;
    value
        .map(|v| {
            v.rsplit_once('|')
                .and_then(|(replica, token)| Some((replica.to_string(), token.parse().ok()?)))
                .ok_or_else(|| StoreError::corrupt("the leader lease", format!("{v:?}")))
        })
        .transpose()
}
