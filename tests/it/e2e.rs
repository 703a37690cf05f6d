//! End to end on real parts: redis-server, orchestrator replicas, `warmpool-agent` processes
//! and bwrap sandboxes. Conditions are awaited with deadlines, never with sleeps.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

const POOL: &str = "e2e";
const LONG: Duration = Duration::from_secs(30);

async fn setup() -> (RedisServer, Replica) {
    let redis = RedisServer::start().unwrap();
    let replica = Replica::start(test_config(POOL), &redis.url()).await;
    (redis, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_through_api_redis_agent_and_sandbox() {
    let (redis, replica) = setup().await;
    let api = replica.api();
    let _agent = Agent::spawn(&redis.url(), POOL, "vm-1", AgentOptions::default());
    wait_ready(&api, "vm-1").await;
    let body = json!({
        "language": "python",
        "files": [
            {"name": "main.py", "content": "import sys, helper\nprint(helper.greet(sys.stdin.read().strip()), sys.argv[1:])"},
            {"name": "helper.py", "content": "def greet(n):\n    return 'hello ' + n\n"}
        ],
        "stdin": "world\n",
        "args": ["a b", "$HOME;rm -rf /"],
    });
    let started = Instant::now();
    let r = api.submit("g1", body, 30).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the waiting request was woken by the result"
    );
    assert_eq!(r.body["state"], "finished");
    assert_eq!(r.body["vm_id"], "vm-1");
    let result = &r.body["result"];
    assert_eq!(result["outcome"], "ok", "{}", r.body);
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "hello world ['a b', '$HOME;rm -rf /']\n");
    assert!(r.body["started_at"].as_str().is_some() && r.body["finished_at"].as_str().is_some());

    let bash = json!({"language": "sh", "files": [{"name": "run.sh", "content": "echo \"$1\"; exit 3"}], "args": ["x"]});
    let r = api.submit("g1", bash, 30).await;
    assert_eq!(r.body["result"]["outcome"], "runtime_error", "{}", r.body);
    assert_eq!(r.body["result"]["exit_code"], 3);
    assert_eq!(r.body["result"]["stdout"], "x\n");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_submitted_before_any_vm_is_ready_all_finish() {
    let (redis, replica) = setup().await;
    let api = replica.api();
    let mut ids = Vec::new();
    for (game, n) in [
        ("early-a", 0),
        ("early-b", 1),
        ("early-a", 2),
        ("early-b", 3),
        ("early-a", 4),
    ] {
        let r = api.submit(game, python(&format!("print({n})")), 0).await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["state"], "queued");
        ids.push((r.body["execution_id"].as_str().unwrap().to_string(), n));
    }
    assert_eq!(api.get("/v1/games/early-a").await.body["state"], "pending");
    assert_eq!(
        api.get("/v1/pool").await.body["games"],
        json!({"placed": 0, "pending": 2})
    );

    // The VM boots (slowly) only now.
    let _agent = Agent::spawn(
        &redis.url(),
        POOL,
        "late-vm",
        AgentOptions {
            boot_delay_ms: 500,
            ..Default::default()
        },
    );
    for (id, n) in &ids {
        let record = api.wait_final(id, LONG).await;
        assert_eq!(record["state"], "finished", "{record}");
        assert_eq!(record["result"]["stdout"], format!("{n}\n"));
        assert_eq!(record["vm_id"], "late-vm");
    }
    assert_eq!(api.get("/v1/games/early-a").await.body["vm_id"], "late-vm");
    assert_eq!(
        api.get("/v1/pool").await.body["games"],
        json!({"placed": 2, "pending": 0})
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn games_spread_over_ready_vms_and_stay_on_theirs() {
    let (redis, replica) = setup().await;
    let api = replica.api();
    let _a = Agent::spawn(
        &redis.url(),
        POOL,
        "vm-a",
        AgentOptions {
            capacity: 2,
            ..Default::default()
        },
    );
    let _b = Agent::spawn(
        &redis.url(),
        POOL,
        "vm-b",
        AgentOptions {
            capacity: 2,
            ..Default::default()
        },
    );
    wait_ready(&api, "vm-a").await;
    wait_ready(&api, "vm-b").await;
    let mut vm_of = std::collections::HashMap::new();
    for g in ["g1", "g2", "g3", "g4", "g5"] {
        let r = api.put_game(g).await;
        assert_eq!(r.status, 201);
        vm_of.insert(g, r.body["vm_id"].as_str().map(str::to_string));
    }
    let on_a = vm_of
        .values()
        .filter(|v| v.as_deref() == Some("vm-a"))
        .count();
    let on_b = vm_of
        .values()
        .filter(|v| v.as_deref() == Some("vm-b"))
        .count();
    assert_eq!(
        (on_a, on_b),
        (2, 2),
        "least-loaded, capacity 2 each: {vm_of:?}"
    );
    assert_eq!(vm_of["g5"], None, "the fifth game waits for capacity");
    // Every execution of a game runs on the game's VM.
    for g in ["g1", "g2", "g3", "g4"] {
        for _ in 0..2 {
            let r = api.submit(g, python("print('x')"), 30).await;
            assert_eq!(r.body["vm_id"].as_str(), vm_of[g].as_deref(), "{}", r.body);
        }
    }
    // Ending a game frees its slot: the pending game is placed there.
    assert_eq!(api.send("DELETE", "/v1/games/g1", None).await.status, 204);
    let g5 = api.get("/v1/games/g5").await.body;
    assert_eq!(g5["state"], "placed", "{g5}");
    assert_eq!(g5["vm_id"].as_str(), vm_of["g1"].as_deref());
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_the_same_game() {
    let redis = RedisServer::start().unwrap();
    let one = Replica::start(test_config(POOL), &redis.url()).await;
    let two = Replica::start(test_config(POOL), &redis.url()).await;
    let _agent = Agent::spawn(&redis.url(), POOL, "vm-1", AgentOptions::default());
    // Accepted on one replica before the VM is up ...
    let mut body = python("print('shared')");
    body["idempotency_key"] = json!("once");
    let r = one.api().submit("shared-game", body.clone(), 0).await;
    let id = r.body["execution_id"].as_str().unwrap().to_string();
    // ... the same submission on the other is the same execution ...
    let again = two.api().submit("shared-game", body, 0).await;
    assert_eq!(again.body["execution_id"], id.as_str());
    // ... and a request waiting on the other replica is woken by the result.
    let r = two.api().execution(&id, 30).await;
    assert_eq!(r.body["state"], "finished", "{}", r.body);
    assert_eq!(r.body["result"]["stdout"], "shared\n");
    assert_eq!(
        one.api().get("/v1/games/shared-game").await.body,
        two.api().get("/v1/games/shared-game").await.body
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_limits_hold_through_the_api() {
    let (redis, replica) = setup().await;
    let api = replica.api();
    let _agent = Agent::spawn(&redis.url(), POOL, "vm-1", AgentOptions::default());
    wait_ready(&api, "vm-1").await;

    // Not root, no network: not even loopback, not the Redis the agent uses.
    let probe = format!(
        "import os, socket\nprint(os.getuid())\ntry:\n    socket.create_connection(('127.0.0.1', {}), timeout=1)\n    print('connected')\nexcept OSError:\n    print('no network')\nprint(sorted(n for _, n in socket.if_nameindex()))\n",
        redis.port()
    );
    let r = api.submit("limits", python(&probe), 30).await;
    let out = r.body["result"]["stdout"].as_str().unwrap().to_string();
    let mut lines = out.lines();
    let uid: u32 = lines.next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "{out}");
    assert_eq!(lines.next(), Some("no network"), "{out}");
    assert_eq!(lines.next(), Some("['lo']"), "{out}");

    // The wall-clock limit kills the program and the child it left behind.
    let sleeper = json!({
        "language": "bash",
        "files": [{"name": "s.sh", "content": "sleep 30 & sleep 30"}],
        "limits": {"wall_time_ms": 500}
    });
    let started = Instant::now();
    let r = api.submit("limits", sleeper, 30).await;
    assert_eq!(r.body["result"]["outcome"], "time_limit", "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Output past the cap is cut and the run ends output_limit.
    let flood = json!({
        "language": "python",
        "files": [{"name": "f.py", "content": "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n"}],
        "limits": {"max_output_bytes": 10000}
    });
    let r = api.submit("limits", flood, 30).await;
    let result = &r.body["result"];
    assert_eq!(result["outcome"], "output_limit", "{}", r.body);
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 10000);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_run_reruns_its_work_once_it_is_back() {
    let (redis, replica) = setup().await;
    let api = replica.api();
    let mut agent = Agent::spawn(&redis.url(), POOL, "vm-1", AgentOptions::default());
    wait_ready(&api, "vm-1").await;
    // A program that runs long enough to be caught mid-run.
    let slow =
        json!({"language": "bash", "files": [{"name": "s.sh", "content": "sleep 2; echo done"}]});
    let id = api.submit("g", slow, 0).await.body["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(LONG, "the execution to be running", || {
        let api = api.clone();
        let id = id.clone();
        async move { (api.execution(&id, 0).await.body["state"] == "running").then_some(()) }
    })
    .await;
    unsafe {
        libc::kill(agent.pid() as i32, libc::SIGKILL);
    }
    let _ = agent.stop();
    // The same VM's agent comes back and re-reads its unacknowledged entry: a second attempt.
    let _back = Agent::spawn(&redis.url(), POOL, "vm-1", AgentOptions::default());
    let record = api.wait_final(&id, LONG).await;
    assert_eq!(record["state"], "finished", "{record}");
    assert_eq!(record["result"]["stdout"], "done\n");
    replica.stop().await;
}
