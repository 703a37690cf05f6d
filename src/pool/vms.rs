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
            vec![arg(token.to_string()), arg(action), arg(vm_id), arg(extra)],
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

/// An agent declares its VM Ready (or keeps it draining). `Ok(None)` when the pool has
/// declared it dead; otherwise the games already leased to it.
pub async fn register(
    store: &Store,
    vm_id: &str,
    capacity: u32,
    languages: &[LanguageInfo],
    agent_version: &str,
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
            ],
        )
        .await?;
    Ok(match reply.status(&["ok", "dead"])? {
        "ok" => Some(reply.int(1)? as u64),
        _ => None,
    })
}

/// Records a heartbeat; returns the state the pool holds for the VM (`None`: unknown VM).
pub async fn heartbeat(store: &Store, vm_id: &str) -> StoreResult<Option<VmState>> {
    let k = &store.keys;
    let reply = store
        .call(
            &SCRIPTS.heartbeat,
            vec![k.vm_state.clone(), k.vm_hb.clone()],
            vec![arg(vm_id)],
        )
        .await?;
    Ok(VmState::parse(&reply.str(0)?))
}

#[derive(serde::Deserialize, Default)]
struct VmInfo {
    #[serde(default)]
    languages: Vec<LanguageInfo>,
}

/// Every VM the pool knows, sorted by id.
pub async fn list(store: &Store) -> StoreResult<Vec<VmStatus>> {
    let k = &store.keys;
    let client = store.client();
    let states: HashMap<String, String> = client.hgetall(&k.vm_state).await?;
    let caps: HashMap<String, u64> = client.hgetall(&k.vm_cap).await?;
    let games: HashMap<String, u64> = client.hgetall(&k.vm_games).await?;
    let running: HashMap<String, u64> = client.hgetall(&k.vm_running).await?;
    let infos: HashMap<String, String> = client.hgetall(&k.vm_info).await?;
    let beats: Vec<(String, f64)> = client
        .zrange(&k.vm_hb, 0, -1, None, false, None, true)
        .await?;
    let beats: HashMap<String, f64> = beats.into_iter().collect();
    let now = store.now_ms().await? as f64;
    let mut vms: Vec<VmStatus> = states
        .into_iter()
        .map(|(vm_id, state)| {
            let info: VmInfo = infos
                .get(&vm_id)
                .and_then(|raw| serde_json::from_str(raw).ok())
                .unwrap_or_default();
            VmStatus {
                state: VmState::parse(&state).unwrap_or(VmState::Dead),
                games: games.get(&vm_id).copied().unwrap_or(0),
                capacity: caps.get(&vm_id).copied().unwrap_or(0),
                running: running.get(&vm_id).copied().unwrap_or(0),
                languages: info.languages.into_iter().map(|l| l.name).collect(),
                heartbeat_age_s: beats
                    .get(&vm_id)
                    .map(|at| ((now - at).max(0.0) / 1000.0 * 1000.0).round() / 1000.0),
                vm_id,
            }
        })
        .collect();
    vms.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    Ok(vms)
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

/// Every VM as the reconciler's planner sees it.
pub async fn views(store: &Store) -> StoreResult<Vec<crate::pool::plan::VmView>> {
    let k = &store.keys;
    let client = store.client();
    let states: HashMap<String, String> = client.hgetall(&k.vm_state).await?;
    let caps: HashMap<String, u32> = client.hgetall(&k.vm_cap).await?;
    let games: HashMap<String, u32> = client.hgetall(&k.vm_games).await?;
    let running: HashMap<String, u32> = client.hgetall(&k.vm_running).await?;
    let since: HashMap<String, u64> = client.hgetall(&k.vm_since).await?;
    let infos: HashMap<String, String> = client.hgetall(&k.vm_info).await?;
    let beats: Vec<(String, f64)> = client
        .zrange(&k.vm_hb, 0, -1, None, false, None, true)
        .await?;
    let beats: HashMap<String, f64> = beats.into_iter().collect();
    #[derive(serde::Deserialize, Default)]
    struct Created {
        #[serde(default)]
        created: f64,
    }
    let mut out: Vec<crate::pool::plan::VmView> = states
        .into_iter()
        .map(|(vm_id, state)| {
            let created = infos
                .get(&vm_id)
                .and_then(|raw| serde_json::from_str::<Created>(raw).ok())
                .unwrap_or_default()
                .created as u64;
            crate::pool::plan::VmView {
                state: VmState::parse(&state).unwrap_or(VmState::Dead),
                games: games.get(&vm_id).copied().unwrap_or(0),
                capacity: caps.get(&vm_id).copied().unwrap_or(0),
                running: running.get(&vm_id).copied().unwrap_or(0),
                created_ms: created,
                heartbeat_ms: beats.get(&vm_id).map(|t| *t as u64),
                state_since_ms: since.get(&vm_id).copied().unwrap_or(created),
                vm_id,
            }
        })
        .collect();
    out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    Ok(out)
}
