//! VM records in Redis: added by the leader before it creates the VM, made Ready by their
//! agent, kept alive by heartbeats, read at one instant for the planner and `GET /v1/pool`.

use std::collections::HashMap;

use fred::prelude::*;

use super::scripts::SCRIPTS;
use super::settings::{self, PoolSettings};
use super::{arg, Store, StoreError, StoreResult};
use crate::model::{LanguageInfo, VmState};

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
                k.vm_agent.clone(),
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
            games: reply.count(1)?,
            running: reply.count(2)?,
        },
        _ => TransitionResult::Skip {
            state: reply.str(1)?,
        },
    })
}

/// What a registration got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The VM is Ready (or stays draining) with `games` already leased to it; `settings` are
    /// the pool's, as the replicas published them (`None` before any replica did: then no game
    /// can be pending yet): the agent works by these, not its own.
    Ok {
        games: u64,
        settings: Option<PoolSettings>,
    },
    /// The pool declared this VM dead: its agent must stop.
    Dead,
    /// The VM's record holds a secret this agent did not present: it is not that VM.
    Refused,
}

/// An agent declares its VM Ready (or keeps it draining), presenting the VM's secret (`""`
/// for none).
pub async fn register(
    store: &Store,
    vm_id: &str,
    capacity: u32,
    languages: &[LanguageInfo],
    agent_version: &str,
    secret: &str,
) -> StoreResult<Registration> {
    let k = &store.keys;
    let languages = serde_json::to_string(languages).map_err(|e| StoreError::Reply {
        script: SCRIPTS.register_vm.name,
        detail: format!("encoding the languages: {e}"),
    })?;
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
                k.settings.clone(),
                k.stats.clone(),
            ],
            vec![
                arg(vm_id),
                arg(i64::from(capacity)),
                arg(languages),
                arg(agent_version),
                arg(secret),
                arg(super::keys::GROUP),
            ],
        )
        .await?;
    Ok(match reply.status(&["ok", "dead", "refused"])? {
        "ok" => {
            let fields = reply.map(3)?;
            Registration::Ok {
                games: reply.count(1)?,
                settings: match fields.is_empty() {
                    true => None,
                    false => Some(settings::from_fields(&fields)?),
                },
            }
        }
        "refused" => {
            tracing::warn!(
                vm_id,
                "registration refused: the VM's secret does not match"
            );
            Registration::Refused
        }
        _ => Registration::Dead,
    })
}

/// The state the pool holds for a VM, as a heartbeat reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The pool has no record of this VM.
    Unknown,
    /// The secret presented is not the VM's: this agent is not that VM (nothing written).
    Refused,
    State(VmState),
}

/// What a heartbeat tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub held: Held,
    /// Whether a replica leads the pool (holds the leader lease) right now.
    pub led: bool,
    /// Executions running on the VM, as the pool counts them.
    pub running: u64,
}

/// What an agent reports with a heartbeat: its gauges now, and what it counted since its last
/// heartbeat that went through (the pool adds those to its counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentFigures {
    /// Sandboxes running a job.
    pub busy: u64,
    /// Warm spare sandboxes waiting for a job.
    pub spares: u64,
    /// Programs the sandbox killed, by reason (`time_limit`, `memory_limit`, `output_limit`).
    pub kills: std::collections::BTreeMap<String, u64>,
    /// How long each run took to start its program (ms): the sandbox's own cost.
    pub start_ms: Vec<u64>,
}

/// Records a heartbeat with the agent's `figures`. A state this build does not know is an
/// error (the heartbeat was written; the caller logs it).
pub async fn heartbeat(
    store: &Store,
    me: &super::executions::AgentIdentity,
    figures: &AgentFigures,
) -> StoreResult<Beat> {
    let k = &store.keys;
    let vm_id = me.vm_id.as_str();
    let figures = serde_json::to_string(figures).map_err(|e| StoreError::Reply {
        script: SCRIPTS.heartbeat.name,
        detail: format!("encoding the figures: {e}"),
    })?;
    let reply = store
        .call(
            &SCRIPTS.heartbeat,
            vec![
                k.vm_state.clone(),
                k.vm_hb.clone(),
                k.leader.clone(),
                k.vm_running.clone(),
                k.stats.clone(),
                k.vm_agent.clone(),
                k.vm_info.clone(),
            ],
            vec![arg(vm_id), arg(figures), arg(me.secret.as_str())],
        )
        .await?;
    let word = reply.str(0)?;
    let held = match word.as_str() {
        "unknown" => Held::Unknown,
        "refused" => Held::Refused,
        other => Held::State(parse_state(vm_id, other)?),
    };
    Ok(Beat {
        held,
        led: reply.int(1)? == 1,
        running: reply.count(2)?,
    })
}

fn parse_state(vm_id: &str, state: &str) -> StoreResult<VmState> {
    VmState::parse(state).ok_or_else(|| {
        StoreError::corrupt(
            format!("state of VM {vm_id}"),
            format!("{state:?} is not a state this build knows"),
        )
    })
}

/// `{wp:P}:vm:info` of one VM, as the scripts write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// When the pool recorded it (Redis clock, ms).
    pub created_ms: u64,
    /// The languages its agent reported (none before it registered).
    pub languages: Vec<LanguageInfo>,
    /// The secret its agent must present (`""`: none).
    pub secret: String,
}

impl VmInfo {
    /// Reads the JSON field by field: Lua's cjson writes an empty list as `{}`, so a VM that
    /// has not registered yet has `"languages": {}`.
    pub fn parse(vm_id: &str, raw: &str) -> StoreResult<VmInfo> {
        let what = || format!("info of VM {vm_id}");
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| StoreError::corrupt(what(), e.to_string()))?;
        let created_ms = v["created"]
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| StoreError::corrupt(what(), "no `created` time"))?
            as u64;
        let languages = match &v["languages"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Object(o) if o.is_empty() => Vec::new(),
            list => serde_json::from_value(list.clone())
                .map_err(|e| StoreError::corrupt(what(), format!("languages: {e}")))?,
        };
        let secret = match &v["secret"] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => return Err(StoreError::corrupt(what(), format!("secret is {other}"))),
        };
        Ok(VmInfo {
            created_ms,
            languages,
            secret,
        })
    }
}

/// The secret a VM's agent must present (`""`: none), for a create resumed by a new leader.
pub async fn secret(store: &Store, vm_id: &str) -> StoreResult<String> {
    let raw: Option<String> = store.client().hget(&store.keys.vm_info, vm_id).await?;
    match raw {
        Some(raw) => Ok(VmInfo::parse(vm_id, &raw)?.secret),
        None => Ok(String::new()),
    }
}

/// One VM record, read at one instant with all the others ([`snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub vm_id: String,
    pub state: VmState,
    pub games: u32,
    pub capacity: u32,
    pub running: u32,
    /// When the pool recorded it (Redis clock, ms).
    pub created_ms: u64,
    /// Last heartbeat; `None` before the agent's first.
    pub heartbeat_ms: Option<u64>,
    /// When it entered its current state (draining since, ...).
    pub state_since_ms: u64,
    /// The names of the languages its agent reported.
    pub languages: Vec<String>,
}

/// A VM record this build cannot read (an unknown state written by a newer version, a
/// corrupt field). It is reported and counted, and nobody acts on it: the leader neither
/// fails nor deletes a VM it does not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub vm_id: String,
    pub problem: String,
}

/// Every VM record at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The Redis clock when it was read (ms).
    pub now_ms: u64,
    /// Sorted by id.
    pub vms: Vec<VmRecord>,
    pub unreadable: Vec<Unreadable>,
}

/// Reads every VM record at one instant (one script).
pub async fn snapshot(store: &Store) -> StoreResult<Snapshot> {
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
    let tables = Tables {
        caps: reply.map(2)?,
        games: reply.map(3)?,
        running: reply.map(4)?,
        beats: reply.map(5)?,
        infos: reply.map(6)?,
        since: reply.map(7)?,
    };
    let mut out = Snapshot {
        now_ms: reply.count(0)?,
        ..Snapshot::default()
    };
    for (vm_id, state) in reply.map(1)? {
        match tables.record(&vm_id, &state) {
            Ok(record) => out.vms.push(record),
            Err(err) => out.unreadable.push(Unreadable {
                vm_id,
                problem: err.to_string(),
            }),
        }
    }
    out.vms.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    out.unreadable.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    Ok(out)
}

/// The VM hashes of a snapshot.
struct Tables {
    caps: HashMap<String, String>,
    games: HashMap<String, String>,
    running: HashMap<String, String>,
    beats: HashMap<String, String>,
    infos: HashMap<String, String>,
    since: HashMap<String, String>,
}

impl Tables {
    fn record(&self, vm_id: &str, state: &str) -> StoreResult<VmRecord> {
        let state = parse_state(vm_id, state)?;
        let number = |table: &HashMap<String, String>, name: &str| -> StoreResult<f64> {
            let raw = table
                .get(vm_id)
                .ok_or_else(|| StoreError::corrupt(format!("{name} of VM {vm_id}"), "missing"))?;
            raw.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    StoreError::corrupt(format!("{name} of VM {vm_id}"), format!("{raw:?}"))
                })
        };
        let count = |table, name| number(table, name).map(|n| n as u32);
        let info = match self.infos.get(vm_id) {
            Some(raw) => VmInfo::parse(vm_id, raw)?,
            None => {
                return Err(StoreError::corrupt(
                    format!("info of VM {vm_id}"),
                    "missing",
                ))
            }
        };
        Ok(VmRecord {
            vm_id: vm_id.to_string(),
            state,
            games: count(&self.games, "games")?,
            capacity: count(&self.caps, "capacity")?,
            running: count(&self.running, "running")?,
            created_ms: info.created_ms,
            heartbeat_ms: match self.beats.contains_key(vm_id) {
                true => Some(number(&self.beats, "heartbeat")? as u64),
                false => None,
            },
            state_since_ms: number(&self.since, "state time")? as u64,
            languages: info.languages.into_iter().map(|l| l.name).collect(),
        })
    }
}

/// Versions of each language as the VMs report them: name → version.
pub async fn language_versions(store: &Store) -> StoreResult<HashMap<String, String>> {
    let infos: HashMap<String, String> = store.client().hgetall(&store.keys.vm_info).await?;
    let mut versions = HashMap::new();
    for (vm_id, raw) in &infos {
        for lang in VmInfo::parse(vm_id, raw)?.languages {
            versions.entry(lang.name).or_insert(lang.version);
        }
    }
    Ok(versions)
}

/// Each VM's agent gauges as its last heartbeat left them: vm_id → (busy, spares).
pub async fn agent_gauges(store: &Store) -> StoreResult<HashMap<String, (u64, u64)>> {
    #[derive(serde::Deserialize)]
    struct Gauges {
        busy: u64,
        spares: u64,
    }
    let all: HashMap<String, String> = store.client().hgetall(&store.keys.vm_agent).await?;
    all.into_iter()
        .map(|(vm, raw)| {
            let g: Gauges = super::parse_record(&format!("agent gauges of VM {vm}"), &raw)?;
            Ok((vm, (g.busy, g.spares)))
        })
        .collect()
}
