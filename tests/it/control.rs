//! The control plane on real processes: `warmpool serve` replicas with the local provider
//! (real `warmpool-agent` processes with bwrap sandboxes), a real redis-server, and faults
//! injected with signals. Each test waits for conditions with deadlines, then checks the
//! invariants: every accepted execution ended; no game is leased past its VM's books; no agent
//! process runs that the pool does not know.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(60);

/// A replica process.
struct Serve {
    id: String,
    child: Option<Child>,
    api: Api,
    paused: bool,
}

impl Serve {
    fn signal(&mut self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
        match sig {
            libc::SIGSTOP => self.paused = true,
            libc::SIGCONT => self.paused = false,
            _ => {}
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis, replicas and (through them) agents of one pool; everything is killed on drop,
/// agents orphaned by a killed replica included.
struct Cluster {
    pool: String,
    redis: RedisServer,
    replicas: Vec<Serve>,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn new(pool: &str, aof: bool, env: &[(&str, &str)]) -> Cluster {
        let mut base: Vec<(String, String)> = [
            ("WARMPOOL_PROVIDER", "local"),
            ("WARMPOOL_GAMES_PER_VM", "4"),
            ("WARMPOOL_HEADROOM_GAMES", "0"),
            ("WARMPOOL_HEADROOM_Z", "0"),
            // Exactly enough VMs for the games: tests can count them.
            (
                "WARMPOOL_POOL_FORMULA",
                "ceil((games + pending) / games_per_vm)",
            ),
            ("WARMPOOL_MIN_VMS", "0"),
            ("WARMPOOL_MAX_VMS", "10"),
            ("WARMPOOL_RECONCILE_INTERVAL_S", "0.3"),
            ("WARMPOOL_LEADER_TTL_MS", "1000"),
            // Short enough for the agent-kill test, long enough that a loaded CI machine does not
            // fail healthy agents.
            ("WARMPOOL_HEARTBEAT_TIMEOUT_S", "5"),
            ("WARMPOOL_BOOT_TIMEOUT_S", "8"),
            ("WARMPOOL_SCALE_DOWN_DELAY_S", "1"),
            ("WARMPOOL_IDLE_TIMEOUT_S", "2"),
            ("WARMPOOL_DRAIN_TIMEOUT_S", "30"),
            ("WARMPOOL_LOCAL_BOOT_DELAY_MS", "300"),
            ("WARMPOOL_SWEEP_INTERVAL_MS", "200"),
            ("WARMPOOL_REDIS_TIMEOUT_MS", "500"),
            ("WARMPOOL_AGENT_SLOTS", "2"),
            ("WARMPOOL_LOG", "warn"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in env {
            base.retain(|(bk, _)| bk != k);
            base.push((k.to_string(), v.to_string()));
        }
        Cluster {
            pool: pool.to_string(),
            redis: RedisServer::start_with(aof).unwrap(),
            replicas: Vec::new(),
            env: base,
        }
    }

    async fn add_replica(&mut self) -> usize {
        let port = warmpool_testkit::free_port().unwrap();
        let id = format!("replica-{}", self.replicas.len());
        let child = Command::new(warmpool_bin())
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WARMPOOL_REDIS_URL", self.redis.url())
            .env("WARMPOOL_POOL", &self.pool)
            .env("WARMPOOL_LISTEN", format!("127.0.0.1:{port}"))
            .env("WARMPOOL_API_TOKENS", TOKEN)
            .env("WARMPOOL_REPLICA_ID", &id)
            .env("WARMPOOL_AGENT_BIN", agent_bin())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let api = Api::new(&format!("http://127.0.0.1:{port}"));
        let mut open = api.clone();
        open.token = None;
        eventually(
            Duration::from_secs(15),
            "the replica to answer /readyz",
            || {
                let open = open.clone();
                async move { (open.try_status("/readyz").await == Some(200)).then_some(()) }
            },
        )
        .await;
        self.replicas.push(Serve {
            id,
            child: Some(child),
            api,
            paused: false,
        });
        self.replicas.len() - 1
    }

    fn api(&self) -> Api {
        self.replicas
            .iter()
            .find(|r| r.child.is_some() && !r.paused)
            .expect("a live replica")
            .api
            .clone()
    }

    async fn pool(&self) -> Value {
        self.api().get("/v1/pool").await.body
    }

    async fn wait_pool(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        until_ok(timeout, what, || async {
            let r = self.api().get("/v1/pool").await;
            if r.status == 200 && done(&r.body) {
                Ok(r.body)
            } else {
                Err(r.body)
            }
        })
        .await
    }

    async fn leader(&self) -> (usize, u64) {
        self.leader_other_than(None).await
    }

    /// The leader, once it is not replica `not` (after a kill or a pause).
    async fn leader_other_than(&self, not: Option<usize>) -> (usize, u64) {
        let not_id = not.map(|i| self.replicas[i].id.clone());
        let pool = self
            .wait_pool("a (new) leader", Duration::from_secs(15), |p| {
                p["leader"]["replica"]
                    .as_str()
                    .is_some_and(|r| Some(r) != not_id.as_deref())
            })
            .await;
        let id = pool["leader"]["replica"].as_str().unwrap();
        let i = self.replicas.iter().position(|r| r.id == id).unwrap();
        (i, pool["leader"]["token"].as_u64().unwrap())
    }

    /// Live agent processes of this pool: vm_id -> pid.
    fn agents(&self) -> HashMap<String, i32> {
        warmpool::pool::local::agent_processes(&self.pool)
    }

    /// The invariants, once things settled: every execution in `ids` is final, every VM's
    /// game count matches the games leased to it, and every agent process is a live VM.
    async fn check_invariants(&self, ids: &[String]) {
        let api = self.api();
        for id in ids {
            let record = api.wait_final(id, SETTLE).await;
            assert!(
                matches!(
                    record["state"].as_str(),
                    Some("finished" | "failed" | "expired" | "cancelled")
                ),
                "{record}"
            );
        }
        let s = store(&self.redis.url(), &self.pool).await;
        // Each game is on at most one VM by construction (one field); each VM's books agree.
        let games: HashMap<String, String> = {
            use fred::prelude::*;
            s.client().hgetall(&s.keys.games).await.unwrap()
        };
        let mut per_vm: HashMap<String, u64> = HashMap::new();
        for raw in games.values() {
            let g: Value = serde_json::from_str(raw).unwrap();
            if let Some(vm) = g["vm"].as_str().filter(|v| !v.is_empty()) {
                *per_vm.entry(vm.to_string()).or_default() += 1;
            }
        }
        let pool = self
            .wait_pool("agents and records to agree", SETTLE, |p| {
                let live: Vec<&str> = p["vms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|vm| vm["state"] != "dead")
                    .filter_map(|vm| vm["vm_id"].as_str())
                    .collect();
                self.agents().keys().all(|a| live.contains(&a.as_str()))
            })
            .await;
        for vm in pool["vms"].as_array().unwrap() {
            let id = vm["vm_id"].as_str().unwrap();
            if vm["state"] == "ready" || vm["state"] == "draining" {
                assert_eq!(
                    vm["games"].as_u64().unwrap(),
                    per_vm.get(id).copied().unwrap_or(0),
                    "{pool}"
                );
                assert!(vm["games"].as_u64().unwrap() <= vm["capacity"].as_u64().unwrap());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
        for pid in self.agents().values() {
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
}

fn ready_count(p: &Value) -> usize {
    p["vms"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|vm| vm["state"] == "ready").count())
}

async fn submit_all(api: &Api, games: &[String], code: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for g in games {
        let r = api.submit(g, python(code), 0).await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["execution_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_scales_up_from_zero_and_back_to_zero() {
    // The default formula with 2 games of headroom (and a flat arrival rate, so the count is
    // exact): an empty pool still wants one VM, and only the idle rule takes it to zero.
    let mut c = Cluster::new(
        "ctl-scale",
        false,
        &[
            ("WARMPOOL_POOL_FORMULA", ""),
            ("WARMPOOL_HEADROOM_GAMES", "2"),
            ("WARMPOOL_ARRIVAL_HALF_LIFE_S", "1000000000"),
        ],
    );
    c.add_replica().await;
    assert!(
        c.pool().await["vms"].as_array().unwrap().is_empty(),
        "starts empty"
    );
    let games: Vec<String> = (0..7).map(|i| format!("g{i}")).collect();
    let ids = submit_all(&c.api(), &games, "print('hi')").await;
    // (7 games + 2 headroom) / 4 per VM: three VMs, created at once as the games went pending.
    let pool = c
        .wait_pool("three Ready VMs", SETTLE, |p| ready_count(p) == 3)
        .await;
    assert_eq!(pool["desired_vms"], 3, "{pool}");
    assert!(
        pool["last_scaling"]["reason"]
            .as_str()
            .unwrap()
            .contains("scale up"),
        "{pool}"
    );
    for id in &ids {
        assert_eq!(c.api().wait_final(id, SETTLE).await["state"], "finished");
    }
    c.check_invariants(&ids).await;
    // Games end: idle for the idle timeout, then nothing is left, not even a process.
    for g in &games {
        assert_eq!(
            c.api()
                .send("DELETE", &format!("/v1/games/{g}"), None)
                .await
                .status,
            204
        );
    }
    let pool = c
        .wait_pool("an empty pool", SETTLE, |p| {
            p["vms"].as_array().unwrap().is_empty()
        })
        .await;
    assert!(
        pool["last_scaling"]["reason"]
            .as_str()
            .unwrap()
            .contains("idle"),
        "{pool}"
    );
    eventually(Duration::from_secs(10), "agent processes to exit", || {
        let n = c.agents().len();
        async move { (n == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_load_loses_nothing_and_creates_nothing_twice() {
    let mut c = Cluster::new("ctl-leader", false, &[]);
    c.add_replica().await;
    c.add_replica().await;
    let (leader, token) = c.leader().await;
    let games: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    let mut ids = submit_all(&c.replicas[1 - leader].api, &games, "print(1)").await;
    c.replicas[leader].kill();
    // More load while nobody leads; then a new leader with a new token.
    let more: Vec<String> = (6..10).map(|i| format!("g{i}")).collect();
    ids.extend(submit_all(&c.replicas[1 - leader].api, &more, "print(2)").await);
    let started = Instant::now();
    let (next, next_token) = c.leader_other_than(Some(leader)).await;
    assert_eq!(next, 1 - leader);
    assert!(next_token > token);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a new leader within the TTL (plus a renewal)"
    );
    c.check_invariants(&ids).await;
    // 10 games at 4 per VM: 3 VMs, each created once (ids are sequential, processes match).
    let pool = c
        .wait_pool("three Ready VMs", SETTLE, |p| ready_count(p) == 3)
        .await;
    let mut vm_ids: Vec<String> = pool["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm_id"].as_str().unwrap().to_string())
        .collect();
    vm_ids.sort();
    let mut procs: Vec<String> = c.agents().into_keys().collect();
    procs.sort();
    assert_eq!(vm_ids, procs, "one process per VM record, no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_fenced_off_when_it_resumes() {
    let mut c = Cluster::new("ctl-stop", false, &[]);
    c.add_replica().await;
    c.add_replica().await;
    let (leader, token) = c.leader().await;
    let other = 1 - leader;
    c.replicas[leader].signal(libc::SIGSTOP);
    let (next, next_token) = c.leader_other_than(Some(leader)).await;
    assert_eq!(next, other);
    assert!(next_token > token);
    // The new leader does real work while the old one sleeps ...
    let games: Vec<String> = (0..5).map(|i| format!("g{i}")).collect();
    let ids = submit_all(&c.replicas[other].api, &games, "print(1)").await;
    c.wait_pool("two Ready VMs", SETTLE, |p| ready_count(p) == 2)
        .await;
    // ... then the old one wakes up with its stale token.
    c.replicas[leader].signal(libc::SIGCONT);
    // Terms only move forward: whoever leads now holds the newest token (the resumed replica
    // may win a later term, never act in its old one).
    let (_, now_token) = c.leader().await;
    assert!(now_token >= next_token);
    c.check_invariants(&ids).await;
    // Every agent process is a VM the pool knows (checked above), and the pool settles at the
    // two VMs the games need: the stale leader added none of its own.
    let pool = c
        .wait_pool("two VMs and two agents", SETTLE, |p| {
            p["vms"].as_array().is_some_and(|v| v.len() == 2) && c.agents().len() == 2
        })
        .await;
    assert_eq!(ready_count(&pool), 2, "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_execution_has_its_game_and_work_moved() {
    let mut c = Cluster::new("ctl-agent", false, &[]);
    c.add_replica().await;
    let api = c.api();
    let slow = json!({"language": "bash", "files": [{"name": "s.sh", "content": "sleep 1; echo survived"}]});
    let r = api.submit("victim", slow, 0).await;
    let id = r.body["execution_id"].as_str().unwrap().to_string();
    let vm = eventually(SETTLE, "the execution to run", || {
        let api = api.clone();
        let id = id.clone();
        async move {
            let r = api.execution(&id, 0).await.body;
            (r["state"] == "running").then(|| r["vm_id"].as_str().unwrap().to_string())
        }
    })
    .await;
    let pid = c.agents()[&vm];
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    // Heartbeat timeout: the VM is failed, the game moves to a new VM, the execution re-runs.
    let record = api.wait_final(&id, SETTLE).await;
    assert_eq!(record["state"], "finished", "{record}");
    assert_eq!(record["result"]["stdout"], "survived\n");
    assert_ne!(record["vm_id"].as_str(), Some(vm.as_str()), "{record}");
    let game = api.get("/v1/games/victim").await.body;
    assert_eq!(game["vm_id"], record["vm_id"]);
    c.check_invariants(&[id]).await;
    let pool = c.pool().await;
    assert!(
        pool["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["vm_id"] != vm.as_str()),
        "the dead VM is forgotten: {pool}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_answering_loses_no_accepted_execution() {
    let mut c = Cluster::new("ctl-replica", false, &[]);
    c.add_replica().await;
    c.add_replica().await;
    let doomed = c.replicas[0].api.clone();
    let body = python("import time; time.sleep(0.5); print('done')");
    // The request waits for its result on replica 0, which dies before answering.
    let pending = tokio::spawn(async move {
        let r = doomed
            .http
            .post(format!("{}/v1/games/g/executions?wait_s=30", doomed.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        r.is_ok()
    });
    let api = c.replicas[1].api.clone();
    let s = store(&c.redis.url(), "ctl-replica").await;
    let id = eventually(SETTLE, "the execution to be accepted", || {
        let s = s.clone();
        async move {
            use fred::prelude::*;
            let ids: Vec<String> = s
                .client()
                .zrange(&s.keys.queued, 0, -1, None, false, None, false)
                .await
                .ok()?;
            ids.into_iter().next()
        }
    })
    .await;
    c.replicas[0].kill();
    assert!(
        !pending.await.unwrap(),
        "the client saw the connection drop"
    );
    let record = api.wait_final(&id, SETTLE).await;
    assert_eq!(record["state"], "finished", "{record}");
    assert_eq!(record["result"]["stdout"], "done\n");
    c.check_invariants(&[id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_aof_answers_503_meanwhile_and_then_carries_on() {
    let mut c = Cluster::new("ctl-redis", true, &[]);
    c.add_replica().await;
    let api = c.api();
    let first = submit_all(&api, &["g".to_string()], "print('before')").await;
    assert_eq!(api.wait_final(&first[0], SETTLE).await["state"], "finished");
    // Accepted just before the outage (fsync everysec: give AOF its second).
    let queued = submit_all(
        &api,
        &["g".to_string()],
        "import time; time.sleep(0.2); print('across')",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await; // AOF everysec: not synchronisation, a durability window
    c.redis.kill();
    let r = api.submit("g", python("print(1)"), 0).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    c.redis.restart().unwrap();
    let after = eventually(SETTLE, "the API to accept again", || {
        let api = api.clone();
        async move {
            let r = api.submit("g", python("print('after')"), 0).await;
            (r.status == 202).then(|| r.body["execution_id"].as_str().unwrap().to_string())
        }
    })
    .await;
    for id in queued.iter().chain(std::iter::once(&after)) {
        let record = api.wait_final(id, SETTLE).await;
        assert_eq!(record["state"], "finished", "{record}");
    }
    c.check_invariants(&[first, queued, vec![after]].concat())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_no_ready_vm_is_placed_once_vms_boot() {
    let mut c = Cluster::new(
        "ctl-burst",
        false,
        &[("WARMPOOL_LOCAL_BOOT_DELAY_MS", "1500")],
    );
    c.add_replica().await;
    c.add_replica().await;
    let games: Vec<String> = (0..24).map(|i| format!("burst-{i}")).collect();
    let apis = [c.replicas[0].api.clone(), c.replicas[1].api.clone()];
    let mut ids = Vec::new();
    for (i, g) in games.iter().enumerate() {
        let r = apis[i % 2].submit(g, python("print(1)"), 0).await;
        assert_eq!(r.status, 202);
        ids.push(r.body["execution_id"].as_str().unwrap().to_string());
    }
    let pool = c
        .wait_pool("all 24 games placed", SETTLE, |p| {
            p["games"]["placed"] == 24
        })
        .await;
    assert_eq!(pool["games"]["pending"], 0);
    assert_eq!(ready_count(&pool), 6, "24 games / 4 per VM: {pool}");
    c.check_invariants(&ids).await;
    for id in &ids {
        assert_eq!(c.api().wait_final(id, SETTLE).await["state"], "finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_warms_vms_before_its_games_arrive() {
    let mut c = Cluster::new(
        "ctl-reserve",
        false,
        &[(
            "WARMPOOL_POOL_FORMULA",
            "ceil((games + pending + reserved) / games_per_vm)",
        )],
    );
    c.add_replica().await;
    // Starts in 30 s; VMs boot in 45 s as far as the pool knows (no boot measured yet), so the
    // reserved games count at once.
    let start = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
    let start_at = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body =
        serde_json::to_vec(&json!({"games": 8, "start_at": start_at, "duration_s": 600})).unwrap();
    let r = c
        .api()
        .send("POST", "/v1/pool/reservations", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pool = c
        .wait_pool("two VMs Ready for the reserved games", SETTLE, |p| {
            ready_count(p) == 2
        })
        .await;
    assert_eq!(pool["inputs"]["reserved"], 8.0, "{pool}");
    assert_eq!(pool["games"]["placed"], 0, "no game has arrived yet");
    // The burst lands on warm VMs: every game is placed at once.
    for i in 0..8 {
        let r = c.api().put_game(&format!("t{i}")).await;
        assert_eq!(r.body["state"], "placed", "{}", r.body);
    }
}
