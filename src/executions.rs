//! Executions: accept, read, end, and the agent's start and finish.
//!
//! # Expected flow
//! `submit` writes the record (`queued`, with a queue deadline) and puts its id on the game's
//! VM stream, or in the game's backlog while the game is pending. The VM's agent reads the
//! stream, `start`s the execution (`running`), runs it and `finish`es it (`finished` or
//! `failed`), which publishes its id so waiting replicas answer at once.
//!
//! # Guarantees
//! - Nothing accepted is lost: the record and its queue entry are written by one script, and a
//!   queued execution always ends: run, `expired` by the sweeper at its deadline, or
//!   `cancelled` with its game.
//! - One result per execution: `finish` writes only for the VM and attempt that started it.
//! - The same idempotency key on the same game returns the first execution's id.

use std::collections::HashMap;

use fred::prelude::*;

use crate::model::{ErrorDetail, Execution, ExecutionResult, ExecutionState};
use crate::routing::Placement;
use crate::store::scripts::SCRIPTS;
use crate::store::{arg, Store, StoreError, StoreResult};

/// Tunables of `submit`, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SubmitParams {
    pub queue_timeout_ms: u64,
    pub game_ttl_ms: u64,
    pub placement: Placement,
    pub retention_ms: u64,
}

/// What `submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub execution_id: String,
    /// The idempotency key was seen before: nothing new was accepted.
    pub duplicate: bool,
    /// When it was accepted (Redis clock, ms); `None` for a duplicate.
    pub created_ms: Option<u64>,
    /// The VM its game is on; `None` while the game is pending (or for a duplicate).
    pub vm_id: Option<String>,
}

/// Accepts an execution for `game_id` (starting the game if unknown).
pub async fn submit(
    store: &Store,
    params: SubmitParams,
    game_id: &str,
    execution_id: &str,
    job_json: &str,
    idempotency_key: Option<&str>,
) -> StoreResult<Submitted> {
    let k = &store.keys;
    // The script must be handed the stream of the game's VM; start from what Redis says now and
    // follow 'moved' answers (a game only moves when it is placed, so this settles at once).
    let mut expected = match crate::routing::get_game(store, game_id).await? {
        Some(game) => game.vm_id.unwrap_or_default(),
        None => String::new(),
    };
    let idem_key = match idempotency_key {
        Some(key) => k.idem(game_id, key),
        None => k.idem(game_id, ""),
    };
    for _ in 0..8 {
        let reply = store
            .call(
                &SCRIPTS.submit_execution,
                vec![
                    k.exec(execution_id),
                    idem_key.clone(),
                    k.games.clone(),
                    k.free.clone(),
                    k.vm_games.clone(),
                    k.vm_cap.clone(),
                    k.pending.clone(),
                    k.game_exp.clone(),
                    k.seq.clone(),
                    k.backlog.clone(),
                    k.queued.clone(),
                    k.game_queued.clone(),
                    k.queue(&expected),
                ],
                vec![
                    arg(game_id),
                    arg(execution_id),
                    arg(job_json),
                    arg(params.queue_timeout_ms as i64),
                    arg(params.game_ttl_ms as i64),
                    arg(params.placement.as_str()),
                    arg(expected.as_str()),
                    arg(params.retention_ms as i64),
                    arg(if idempotency_key.is_some() { "1" } else { "0" }),
                ],
            )
            .await?;
        match reply.status(&["ok", "dup", "moved"])? {
            "ok" => {
                return Ok(Submitted {
                    execution_id: execution_id.to_string(),
                    duplicate: false,
                    created_ms: Some(reply.int(3)? as u64),
                    vm_id: Some(reply.str(2)?).filter(|v| !v.is_empty()),
                })
            }
            "dup" => {
                return Ok(Submitted {
                    execution_id: reply.str(1)?,
                    duplicate: true,
                    created_ms: None,
                    vm_id: None,
                })
            }
            _ => expected = reply.str(1)?,
        }
    }
    Err(StoreError::Reply {
        script: SCRIPTS.submit_execution.name,
        detail: format!("game {game_id} kept moving"),
    })
}

/// Reads an execution record.
pub async fn get(store: &Store, execution_id: &str) -> StoreResult<Option<Execution>> {
    let fields: HashMap<String, String> = store
        .client()
        .hgetall(store.keys.exec(execution_id))
        .await?;
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(record_from_fields(execution_id, &fields)))
}

fn record_from_fields(execution_id: &str, f: &HashMap<String, String>) -> Execution {
    let time = |name: &str| {
        f.get(name)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|ms| crate::model::rfc3339_ms(ms as u64))
    };
    let state = f
        .get("state")
        .and_then(|s| ExecutionState::parse(s))
        .unwrap_or(ExecutionState::Failed);
    Execution {
        execution_id: execution_id.to_string(),
        game_id: f.get("game").cloned().unwrap_or_default(),
        state,
        vm_id: f.get("vm").filter(|v| !v.is_empty()).cloned(),
        created_at: time("created").unwrap_or_default(),
        started_at: time("started"),
        finished_at: time("finished"),
        result: f
            .get("result")
            .and_then(|r| serde_json::from_str::<ExecutionResult>(r).ok()),
        error: f
            .get("error")
            .and_then(|e| serde_json::from_str::<ErrorDetail>(e).ok()),
    }
}

/// Ends a queued execution as `expired` or `cancelled`; `false` if it was not queued (or, with
/// `only_if_due`, its deadline has not passed).
pub async fn end_queued(
    store: &Store,
    execution_id: &str,
    state: ExecutionState,
    error: &ErrorDetail,
    retention_ms: u64,
    only_if_due: bool,
) -> StoreResult<bool> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.end_execution,
            vec![
                k.exec(execution_id),
                k.queued.clone(),
                k.game_queued.clone(),
            ],
            vec![
                arg(execution_id),
                arg(state.as_str()),
                arg(error.code.as_str()),
                arg(error.message.as_str()),
                arg(retention_ms as i64),
                arg(k.events.as_str()),
                arg(if only_if_due { "1" } else { "0" }),
            ],
        )
        .await?;
    Ok(reply.int(0)? == 1)
}

/// Queued executions whose deadline passed by the Redis clock `now_ms`, at most `limit`.
pub async fn overdue(store: &Store, now_ms: u64, limit: i64) -> StoreResult<Vec<String>> {
    store
        .client()
        .zrangebyscore(
            &store.keys.queued,
            "-inf",
            now_ms as f64,
            false,
            Some((0, limit)),
        )
        .await
        .map_err(Into::into)
}

/// What `start` decided for a stream entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Run it: this is attempt `attempt` of this job.
    Run { attempt: i64, job_json: String },
    /// Not to run (already ended, started elsewhere, or gone): acknowledge the entry.
    Skip,
    /// The pool declared this VM dead: stop taking work.
    VmDead,
}

/// An agent marks an execution running on its VM.
pub async fn start(
    store: &Store,
    vm_id: &str,
    execution_id: &str,
    retention_ms: u64,
) -> StoreResult<Start> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.start_execution,
            vec![
                k.exec(execution_id),
                k.queued.clone(),
                k.game_queued.clone(),
                k.games.clone(),
                k.vm_running.clone(),
                k.vm_state.clone(),
            ],
            vec![
                arg(execution_id),
                arg(vm_id),
                arg(retention_ms as i64),
                arg(k.events.as_str()),
            ],
        )
        .await?;
    Ok(match reply.status(&["run", "skip", "cancelled", "dead"])? {
        "run" => Start::Run {
            attempt: reply.int(1)?,
            job_json: reply.str(2)?,
        },
        "dead" => Start::VmDead,
        _ => Start::Skip,
    })
}

/// How an attempt ended, as the agent reports it.
#[derive(Debug, Clone)]
pub enum Finish {
    Finished(ExecutionResult),
    Failed(ErrorDetail),
}

/// An agent records the end of an attempt and acknowledges its stream entry. `false` when the
/// result was stale (another attempt or VM owns the execution): nothing was written.
pub async fn finish(
    store: &Store,
    vm_id: &str,
    execution_id: &str,
    attempt: i64,
    entry_id: &str,
    outcome: &Finish,
    retention_ms: u64,
) -> StoreResult<bool> {
    let k = &store.keys;
    let (state, result, error) = match outcome {
        Finish::Finished(result) => (
            "finished",
            serde_json::to_string(result).unwrap_or_default(),
            String::new(),
        ),
        Finish::Failed(error) => (
            "failed",
            String::new(),
            serde_json::to_string(error).unwrap_or_default(),
        ),
    };
    let reply = store
        .call(
            &SCRIPTS.finish_execution,
            vec![k.exec(execution_id), k.vm_running.clone(), k.queue(vm_id)],
            vec![
                arg(execution_id),
                arg(vm_id),
                arg(attempt.to_string()),
                arg(entry_id),
                arg(state),
                arg(result),
                arg(error),
                arg(retention_ms as i64),
                arg(k.events.as_str()),
            ],
        )
        .await?;
    Ok(reply.int(0)? == 1)
}

/// Acknowledges and drops a stream entry the agent will not run.
pub async fn ack(store: &Store, vm_id: &str, entry_id: &str) -> StoreResult<()> {
    let queue = store.keys.queue(vm_id);
    let _: i64 = store
        .client()
        .xack(&queue, crate::store::keys::GROUP, entry_id)
        .await?;
    let _: i64 = store.client().xdel(&queue, entry_id).await?;
    Ok(())
}
