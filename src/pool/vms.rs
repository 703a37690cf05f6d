//! VM records in Redis: added by the pool before creating, made Ready by their agent,
//! kept alive by heartbeats, listed for `GET /v1/pool`.

use std::collections::HashMap;

use fred::prelude::*;

use crate::model::{LanguageInfo, VmState, VmStatus};
use crate::store::scripts::SCRIPTS;
use crate::store::{arg, Store, StoreResult};

/// A fenced change of a VM record by the leader (see `redis/vm_transition-12.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Record a new VM; `vm_id` is the id prefix, the reply carries the new id.
    Add {
        capacity: u32,
    },
    Drain,
    Undrain,
    Retire {
        evict: bool,
    },
    Fail,
    Forget,
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionResult {
    /// Done; `moved` are games sent back to pending (retire with evict, fail).
    Ok { vm_id: String, moved: Vec<String> },
    /// The fencing token is stale: another replica leads now. Nothing was written.
    Fenced,
    /// Retire refused: games are leased to it or executions run on it.
    Busy { games: u64, running: u64 },
    /// The VM is not in a state this transition applies to.
    Skip { state: String },
}

pub async fn transition(
    store: &Store,
    token: u64,
    vm_id: &str,
    t: Transition,
) -> StoreResult<TransitionResult> {
    transition_with_secret(store, token, vm_id, t, "").await
}

/// [`transition`]; an `Add` keeps `secret` in the record, and the VM's agent must present it
/// when it registers.
pub async fn transition_with_secret(
    store: &Store,
    token: u64,
    vm_id: &str,
    t: Transition,
    secret: &str,
) -> StoreResult<TransitionResult> {
    let k = &store.keys;
    let (action, extra) = match t {
        Transition::Add { capacity } => ("add", capacity.to_string()),
        Transition::Drain => ("drain", String::new()),
        Transition::Undrain => ("undrain", String::new()),
        Transition::Retire { evict } => ("retire", if evict { "1" } else { "0" }.to_string()),
        Transition::Fail => ("fail", String::new()),
        Transition::Forget => ("forget", String::new()),
    };
    let reply = store
        .call(
            &SCRIPTS.vm_transition,
            vec![
                k.fence.clone(),
                k.vm_state.clone(),
                k.vm_cap.clone(),
                k.vm_games.clone(),
                k.vm_running.clone(),
                k.vm_hb.clone(),
                k.vm_info.clone(),
                k.vm_since.clone(),
                k.free.clone(),
                k.games.clone(),
                k.pending.clone(),
                k.vm_seq.clone(),
            ],
            vec![
                arg(token.to_string()),
                arg(action),
                arg(vm_id),
                arg(extra),
                arg(secret),
            ],
        )
        .await?;
    Ok(match reply.status(&["ok", "fenced", "busy", "skip"])? {
        "ok" => TransitionResult::Ok {
            vm_id: reply.str(1)?,
            moved: reply.strs_from(2)?,
        },
        "fenced" => TransitionResult::Fenced,
        "busy" => TransitionResult::Busy {
            games: reply.int(1)? as u64,
            running: reply.int(2)? as u64,
        },
        _ => TransitionResult::Skip {
            state: reply.str(1)?,
        },
    })
}

/// An agent declares its VM Ready (or keeps it draining), presenting the VM's secret (`""`
/// for none). `Ok(None)` when the pool has declared it dead or the secret is wrong; otherwise
/// the games already leased to it.
pub async fn register(
    store: &Store,
    vm_id: &str,
    capacity: u32,
    languages: &[LanguageInfo],
    agent_version: &str,
    secret: &str,
) -> StoreResult<Option<u64>> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.register_vm,
            vec![
                k.vm_state.clone(),
                k.vm_cap.clone(),
                k.vm_games.clone(),
                k.vm_running.clone(),
                k.vm_hb.clone(),
                k.vm_info.clone(),
                k.free.clone(),
                k.queue(vm_id),
                k.vm_since.clone(),
                k.boots.clone(),
            ],
            vec![
                arg(vm_id),
                arg(i64::from(capacity)),
                arg(serde_json::to_string(languages).unwrap_or_else(|_| "[]".into())),
                arg(agent_version),
                arg(secret),
            ],
        )
        .await?;
    Ok(match reply.status(&["ok", "dead", "refused"])? {
        "ok" => Some(reply.int(1)? as u64),
        "refused" => {
            tracing::warn!(
                vm_id,
                "registration refused: the VM's secret does not match"
            );
            None
        }
        _ => None,
    })
}

/// What a heartbeat tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The state the pool holds for the VM (`None`: unknown VM).
    pub state: Option<VmState>,
    /// Whether a replica leads the pool (holds the leader lease) right now.
    pub led: bool,
    /// Executions running on the VM, as the pool counts them.
    pub running: u64,
}

/// Records a heartbeat.
pub async fn heartbeat(store: &Store, vm_id: &str) -> StoreResult<Beat> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.heartbeat,
            vec![
                k.vm_state.clone(),
                k.vm_hb.clone(),
                k.leader.clone(),
                k.vm_running.clone(),
            ],
            vec![arg(vm_id)],
        )
        .await?;
    Ok(Beat {
        state: VmState::parse(&reply.str(0)?),
        led: reply.int(1)? == 1,
        running: reply.int(2)?.max(0) as u64,
    })
}

/// The secret a VM's agent must present (`""`: none), for a create resumed by a new leader.
pub async fn secret(store: &Store, vm_id: &str) -> StoreResult<String> {
    #[derive(serde::Deserialize, Default)]
    struct WithSecret {
        #[serde(default)]
        secret: String,
    }
    let raw: Option<String> = store.client().hget(&store.keys.vm_info, vm_id).await?;
    Ok(raw
        .and_then(|r| serde_json::from_str::<WithSecret>(&r).ok())
        .unwrap_or_default()
        .secret)
}

#[derive(serde::Deserialize, Default)]
struct VmInfo {
    #[serde(default)]
    languages: Vec<LanguageInfo>,
}

/// All VM records, read at one instant.
struct Records {
    now_ms: u64,
    states: HashMap<String, String>,
    caps: HashMap<String, String>,
    games: HashMap<String, String>,
    running: HashMap<String, String>,
    beats: HashMap<String, String>,
    infos: HashMap<String, String>,
    since: HashMap<String, String>,
}

async fn records(store: &Store) -> StoreResult<Records> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.snapshot_pool,
            vec![
                k.vm_state.clone(),
                k.vm_cap.clone(),
                k.vm_games.clone(),
                k.vm_running.clone(),
                k.vm_hb.clone(),
                k.vm_info.clone(),
                k.vm_since.clone(),
            ],
            vec![],
        )
        .await?;
    Ok(Records {
        now_ms: reply.int(0)? as u64,
        states: reply.map(1)?,
        caps: reply.map(2)?,
        games: reply.map(3)?,
        running: reply.map(4)?,
        beats: reply.map(5)?,
        infos: reply.map(6)?,
        since: reply.map(7)?,
    })
}

fn num<T: std::str::FromStr + Default>(map: &HashMap<String, String>, key: &str) -> T {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Versions of each language as Ready VMs report them: name → version.
pub async fn language_versions(store: &Store) -> StoreResult<HashMap<String, String>> {
    let infos: HashMap<String, String> = store.client().hgetall(&store.keys.vm_info).await?;
    let mut versions = HashMap::new();
    for raw in infos.values() {
        if let Ok(info) = serde_json::from_str::<VmInfo>(raw) {
            for lang in info.languages {
                versions.entry(lang.name).or_insert(lang.version);
            }
        }
    }
    Ok(versions)
}

/// One VM of a snapshot, with everything both views of it need.
struct Row {
    view: crate::pool::plan::VmView,
    languages: Vec<String>,
}

fn rows(r: &Records) -> Vec<Row> {
    let mut out: Vec<Row> = r
        .states
        .iter()
        .map(|(vm_id, state)| {
            // Read field by field: Lua's cjson writes an empty list as `{}`, so a VM that has
            // not registered yet has `"languages": {}`, which must not hide its `created`.
            let info: serde_json::Value = r
                .infos
                .get(vm_id)
                .and_then(|raw| serde_json::from_str(raw).ok())
                .unwrap_or_default();
            let created = info["created"].as_f64().unwrap_or(0.0) as u64;
            let languages = info["languages"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|l| l["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Row {
                view: crate::pool::plan::VmView {
                    vm_id: vm_id.clone(),
                    state: VmState::parse(state).unwrap_or(VmState::Dead),
                    games: num(&r.games, vm_id),
                    capacity: num(&r.caps, vm_id),
                    running: num(&r.running, vm_id),
                    created_ms: created,
                    heartbeat_ms: r
                        .beats
                        .get(vm_id)
                        .and_then(|t| t.parse::<f64>().ok())
                        .map(|t| t as u64),
                    state_since_ms: r
                        .since
                        .get(vm_id)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(created),
                },
                languages,
            }
        })
        .collect();
    out.sort_by(|a, b| a.view.vm_id.cmp(&b.view.vm_id));
    out
}

/// Every VM the pool knows, sorted by id.
pub async fn list(store: &Store) -> StoreResult<Vec<VmStatus>> {
    let r = records(store).await?;
    Ok(rows(&r)
        .into_iter()
        .map(|row| VmStatus {
            heartbeat_age_s: row
                .view
                .heartbeat_ms
                .map(|at| r.now_ms.saturating_sub(at) as f64 / 1000.0),
            vm_id: row.view.vm_id,
            state: row.view.state,
            games: u64::from(row.view.games),
            capacity: u64::from(row.view.capacity),
            running: u64::from(row.view.running),
            languages: row.languages,
        })
        .collect())
}

/// Every VM as the reconciler's planner sees it, sorted by id.
pub async fn views(store: &Store) -> StoreResult<Vec<crate::pool::plan::VmView>> {
    let r = records(store).await?;
    Ok(rows(&r).into_iter().map(|row| row.view).collect())
}
