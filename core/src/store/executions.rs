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
use std::time::Duration;

use fred::prelude::*;

use super::games::{self, Placement};
use super::keys::GROUP;
use super::scripts::SCRIPTS;
use super::{arg, ms, parse_record, Store, StoreError, StoreResult};
use crate::model::{ErrorDetail, Execution, ExecutionResult, ExecutionState};

/// Tunables of `submit`, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SubmitParams {
    pub queue_timeout: Duration,
    pub game_ttl: Duration,
    pub placement: Placement,
    /// How long the ended record (and the idempotency key) stays readable: kept in the
    /// record, so whoever ends the execution keeps it that long.
    pub retention: Duration,
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
    trace_id: &str,
) -> StoreResult<Submitted> {
    let k = &store.keys;
    // The script must be handed the stream of the game's VM; start from what Redis says now and
    // follow 'moved' answers (a game only moves when it is placed, so this settles at once).
    let mut expected = match games::get_game(store, game_id).await? {
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
                    arg(ms(params.queue_timeout)),
                    arg(ms(params.game_ttl)),
                    arg(params.placement.as_str()),
                    arg(expected.as_str()),
                    arg(ms(params.retention)),
                    arg(if idempotency_key.is_some() { "1" } else { "0" }),
                    arg(trace_id),
                ],
            )
            .await?;
        match reply.status(&["ok", "dup", "moved"])? {
            "ok" => {
                return Ok(Submitted {
                    execution_id: execution_id.to_string(),
                    duplicate: false,
                    created_ms: Some(reply.count(3)?),
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

/// Reads an execution record. A record this build cannot read (an unknown state, a result
/// that does not parse) is an error, never a default.
pub async fn get(store: &Store, execution_id: &str) -> StoreResult<Option<Execution>> {
    let fields: HashMap<String, String> = store
        .client()
        .hgetall(store.keys.exec(execution_id))
        .await?;
    if fields.is_empty() {
        return Ok(None);
    }
    record_from_fields(execution_id, &fields).map(Some)
}

fn record_from_fields(execution_id: &str, f: &HashMap<String, String>) -> StoreResult<Execution> {
    let what = || format!("execution {execution_id}");
    let field = |name: &str| {
        f.get(name)
            .ok_or_else(|| StoreError::corrupt(what(), format!("no `{name}` field")))
    };
    let time = |name: &str| -> StoreResult<Option<String>> {
        match f.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(ms) if ms.is_finite() && ms >= 0.0 => {
                    Ok(Some(crate::model::rfc3339_ms(ms as u64)))
                }
                _ => Err(StoreError::corrupt(what(), format!("{name} is {v:?}"))),
            },
        }
    };
    let state = field("state")?;
    let state = ExecutionState::parse(state).ok_or_else(|| {
        StoreError::corrupt(
            what(),
            format!("state {state:?} is not a state this build knows"),
        )
    })?;
    let json = |name: &str| f.get(name).filter(|v| !v.is_empty());
    Ok(Execution {
        execution_id: execution_id.to_string(),
        game_id: field("game")?.clone(),
        state,
        vm_id: f.get("vm").filter(|v| !v.is_empty()).cloned(),
        created_at: time("created")?
            .ok_or_else(|| StoreError::corrupt(what(), "no `created` field"))?,
        started_at: time("started")?,
        finished_at: time("finished")?,
        result: json("result")
            .map(|r| parse_record::<ExecutionResult>(&format!("result of {}", what()), r))
            .transpose()?,
        error: json("error")
            .map(|e| parse_record::<ErrorDetail>(&format!("error of {}", what()), e))
            .transpose()?,
    })
}

/// Ends a queued execution as `expired` or `cancelled`; `false` if it was not queued (or, with
/// `only_if_due`, its deadline has not passed).
pub async fn end_queued(
    store: &Store,
    execution_id: &str,
    state: ExecutionState,
    error: &ErrorDetail,
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
                k.stats.clone(),
            ],
            vec![
                arg(execution_id),
                arg(state.as_str()),
                arg(error.code.as_str()),
                arg(error.message.as_str()),
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
    Run {
        attempt: i64,
        job_json: String,
        /// The trace of the request that submitted it (`None` for a record without one).
        trace_id: Option<String>,
    },
    /// Not to run (already ended, started elsewhere, or gone): acknowledge the entry.
    Skip,
    /// The pool declared this VM dead: stop taking work.
    VmDead,
    /// The secret presented is not the VM's: this agent is not that VM. Nothing was written.
    Refused,
}

/// An agent marks an execution running on its VM.
pub async fn start(store: &Store, me: &AgentIdentity, execution_id: &str) -> StoreResult<Start> {
    let k = &store.keys;
    let vm_id = me.vm_id.as_str();
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
                k.stats.clone(),
                k.vm_info.clone(),
            ],
            vec![
                arg(execution_id),
                arg(vm_id),
                arg(k.events.as_str()),
                arg(me.secret.as_str()),
            ],
        )
        .await?;
    Ok(
        match reply.status(&["run", "skip", "cancelled", "dead", "refused"])? {
            "run" => Start::Run {
                attempt: reply.int(1)?,
                job_json: reply.str(2)?,
                trace_id: Some(reply.str(3)?).filter(|t| !t.is_empty()),
            },
            "dead" => Start::VmDead,
            "refused" => Start::Refused,
            _ => Start::Skip,
        },
    )
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
    me: &AgentIdentity,
    execution_id: &str,
    attempt: i64,
    entry_id: &str,
    outcome: &Finish,
) -> StoreResult<Recorded> {
    let k = &store.keys;
    let vm_id = me.vm_id.as_str();
    let encode = |v: Result<String, serde_json::Error>| {
        v.map_err(|e| StoreError::Reply {
            script: SCRIPTS.finish_execution.name,
            detail: format!("encoding the outcome: {e}"),
        })
    };
    let (state, result, error) = match outcome {
        Finish::Finished(result) => (
            "finished",
            encode(serde_json::to_string(result))?,
            String::new(),
        ),
        Finish::Failed(error) => (
            "failed",
            String::new(),
            encode(serde_json::to_string(error))?,
        ),
    };
    let reply = store
        .call(
            &SCRIPTS.finish_execution,
            vec![
                k.exec(execution_id),
                k.vm_running.clone(),
                k.queue(vm_id),
                k.stats.clone(),
                k.vm_info.clone(),
            ],
            vec![
                arg(execution_id),
                arg(vm_id),
                arg(attempt.to_string()),
                arg(entry_id),
                arg(state),
                arg(result),
                arg(error),
                arg(k.events.as_str()),
                arg(GROUP),
                arg(me.secret.as_str()),
            ],
        )
        .await?;
    Ok(match reply.int(0)? {
        1 => Recorded::Written,
        0 => Recorded::Stale,
        _ => Recorded::Refused,
    })
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The result is the execution's.
    Written,
    /// Another attempt or VM owns the execution: nothing was written.
    Stale,
    /// The secret presented is not the VM's: nothing was written, the entry stays.
    Refused,
}

/// Who an agent is, as it proves it on every call that changes state: its VM's id and secret
/// (`""` for a VM whose record holds none). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub vm_id: String,
    pub secret: String,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("vm_id", &self.vm_id)
            .field("secret", &if self.secret.is_empty() { "" } else { "<set>" })
            .finish()
    }
}

/// Acknowledges and drops a stream entry the agent will not run (one script: the entry is
/// never left acknowledged but still on the stream); `false` when the secret is not the VM's
/// (nothing written).
pub async fn ack(store: &Store, me: &AgentIdentity, entry_id: &str) -> StoreResult<bool> {
    let reply = store
        .call(
            &SCRIPTS.drop_entry,
            vec![store.keys.queue(&me.vm_id), store.keys.vm_info.clone()],
            vec![
                arg(GROUP),
                arg(entry_id),
                arg(me.vm_id.as_str()),
                arg(me.secret.as_str()),
            ],
        )
        .await?;
    Ok(reply.int(0)? == 1)
}

/// Tunables of [`requeue_stream`], from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RequeueParams {
    pub max_attempts: u32,
    pub queue_timeout: Duration,
}

/// Moves every execution left on a dead VM's stream back to its game (or fails it, `vm_lost`,
/// after `max_attempts` deliveries). Returns how many entries were handled.
pub async fn requeue_stream(store: &Store, vm_id: &str, p: RequeueParams) -> StoreResult<u64> {
    let k = &store.keys;
    let dead_queue = k.queue(vm_id);
    let entries: Vec<(String, HashMap<String, String>)> = store
        .client()
        .xrange(&dead_queue, "-", "+", Some(1_000))
        .await?;
    let mut handled = 0;
    for (entry_id, fields) in entries {
        let Some(exec_id) = fields.get("e") else {
            // Not an entry any script writes: dropped, and said so.
            let _ = StoreError::corrupt(
                format!("entry {entry_id} of {dead_queue}"),
                "no execution id (field e)",
            );
            // The leader drops it as the dead VM would: with the VM's own secret.
            let me = AgentIdentity {
                vm_id: vm_id.to_string(),
                secret: super::vms::secret(store, vm_id).await?,
            };
            ack(store, &me, &entry_id).await?;
            continue;
        };
        let mut expected = String::new();
        for _ in 0..8 {
            let reply = store
                .call(
                    &SCRIPTS.requeue_execution,
                    vec![
                        k.exec(exec_id),
                        k.games.clone(),
                        k.backlog.clone(),
                        k.queued.clone(),
                        k.game_queued.clone(),
                        dead_queue.clone(),
                        k.queue(&expected),
                        k.stats.clone(),
                    ],
                    vec![
                        arg(exec_id.as_str()),
                        arg(entry_id.as_str()),
                        arg(vm_id),
                        arg(expected.as_str()),
                        arg(i64::from(p.max_attempts)),
                        arg(ms(p.queue_timeout)),
                        arg(k.events.as_str()),
                        arg(GROUP),
                    ],
                )
                .await?;
            match reply.status(&["requeued", "failed", "cancelled", "skip", "moved"])? {
                "moved" => expected = reply.str(1)?,
                _ => {
                    handled += 1;
                    break;
                }
            }
        }
    }
    Ok(handled)
}
