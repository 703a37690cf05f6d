//! Hostile programs through the real API, to a real agent, in a real bwrap sandbox. Before any
//! attack fires, a probe run through the same path proves isolation (non-root uid, no network
//! interface but `lo`, a process limit in force); without it the suite refuses to run, since a
//! fork or memory bomb outside a sandbox takes the machine down. After every attack the agent
//! must still serve.
//!
//! Each attack states the outcome it must get with the `bwrap` backend and per-execution
//! cgroups (`WARMPOOL_SANDBOX_CGROUPS=auto`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const POOL: &str = "attacks";
/// Hostile code runs as uids 63000.. (resource attacks) and 63100.. (escape attacks), apart
/// from each other and from other tests' sandboxes: a fork bomb's process limit is per uid.
const UID_BASE: u32 = 63_000;
const ESCAPE_UID_BASE: u32 = 63_100;

struct Range {
    uid_base: u32,
    _redis: RedisServer,
    replica: Replica,
    _agent: Agent,
    api: Api,
}

async fn range(uid_base: u32) -> Range {
    let redis = RedisServer::start().unwrap();
    let replica = Replica::start(test_config(POOL), &redis.url()).await;
    let api = replica.api();
    let agent = Agent::spawn(
        &redis.url(),
        POOL,
        "target",
        AgentOptions {
            uid_base,
            slots: 2,
            ..Default::default()
        },
    );
    wait_ready(&api, "target").await;
    prove_isolation(&api, uid_base).await;
    Range {
        uid_base,
        _redis: redis,
        replica,
        _agent: agent,
        api,
    }
}

/// Refuses to continue unless the sandbox is proven: uid, network, process limit.
async fn prove_isolation(api: &Api, uid_base: u32) {
    let probe = "import os, socket, resource\n\
        print(os.getuid(), os.getgid())\n\
        print(sorted(n for _, n in socket.if_nameindex()))\n\
        print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n";
    let r = api.submit("probe", python(probe), 30).await;
    let out = r.body["result"]["stdout"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let lines: Vec<&str> = out.lines().collect();
    let refuse = |why: &str| panic!("REFUSING to fire attacks: {why}; probe said {}", r.body);
    let Some(ids) = lines.first() else {
        refuse("the probe did not run")
    };
    let uid: u32 = ids
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    if uid < uid_base || uid >= uid_base + 16 {
        refuse("the program does not run as the sandbox uid");
    }
    if lines.get(1) != Some(&"['lo']") {
        refuse("the sandbox has a network interface");
    }
    let nproc: i64 = lines.get(2).and_then(|n| n.parse().ok()).unwrap_or(-1);
    if !(1..=1024).contains(&nproc) {
        refuse("no process limit in force");
    }
}

async fn run(api: &Api, game: &str, body: Value) -> Value {
    let r = api.submit(game, body, 60).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "finished", "{}", r.body);
    r.body["result"].clone()
}

fn bash(code: &str, limits: Value) -> Value {
    json!({"language": "bash", "files": [{"name": "a.sh", "content": code}], "limits": limits})
}

fn py(code: &str, limits: Value) -> Value {
    json!({"language": "python", "files": [{"name": "a.py", "content": code}], "limits": limits})
}

/// The agent still answers with a correct result.
async fn still_serving(api: &Api) {
    let r = run(api, "after", python("print(6 * 7)")).await;
    assert_eq!(r["stdout"], "42\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attacks_are_contained_and_the_agent_keeps_serving() {
    let t = range(UID_BASE).await;
    let api = &t.api;

    // Fork bomb (kept alive by its parent): the per-uid process limit stops it, the wall clock
    // ends it, and nothing of it survives. time_limit.
    let started = Instant::now();
    let r = run(
        api,
        "a",
        bash(":(){ :|:& };: ; sleep 30", json!({"wall_time_ms": 2000})),
    )
    .await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually(
        Duration::from_secs(10),
        "no fork-bomb process left",
        || async { (!processes_of_uids(t.uid_base, t.uid_base + 16)).then_some(()) },
    )
    .await;
    still_serving(api).await;

    // Memory bomb: its cgroup OOM-kills it at the limit. memory_limit, peak at the limit. (On a
    // host without a usable memory cgroup the agent falls back to RLIMIT_AS: allocations then
    // fail inside the program, a runtime_error with MemoryError.)
    let r = run(
        api,
        "a",
        py(
            "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n",
            json!({"memory_mb": 128}),
        ),
    )
    .await;
    match r["outcome"].as_str() {
        Some("memory_limit") => {
            assert_eq!(r["signal"], 9, "{r}");
            let kb = r["memory_kb"].as_u64().unwrap();
            assert!((96 * 1024..=128 * 1024).contains(&kb), "{r}");
        }
        Some("runtime_error") if !memory_cgroup_available() => {
            eprintln!("NOTE: no memory cgroup on this host; the RLIMIT_AS fallback was tested");
            assert!(r["stderr"].as_str().unwrap().contains("MemoryError"), "{r}");
        }
        _ => panic!("the memory bomb was not contained as expected: {r}"),
    }
    still_serving(api).await;

    // CPU spin past the CPU limit. time_limit, with the CPU time measured.
    let r = run(
        api,
        "a",
        py(
            "while True:\n    pass\n",
            json!({"cpu_time_ms": 500, "wall_time_ms": 10000}),
        ),
    )
    .await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(r["cpu_time_ms"].as_u64().unwrap() >= 400, "{r}");

    // Sleep past the wall time. time_limit, at once.
    let started = Instant::now();
    let r = run(api, "a", bash("sleep 30", json!({"wall_time_ms": 300}))).await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Output floods, in one write and in many. output_limit, cut exactly at the cap.
    for code in [
        "import sys\nsys.stdout.write('x' * 50_000_000)\n",
        "import sys\nwhile True:\n    sys.stdout.write('y' * 100)\n",
    ] {
        let r = run(api, "a", py(code, json!({"max_output_bytes": 4096}))).await;
        assert_eq!(r["outcome"], "output_limit", "{r}");
        assert_eq!(r["stdout"].as_str().unwrap().len(), 4096);
        assert_eq!(r["stdout_truncated"], true);
    }
    // Flooding stderr is capped the same way.
    let r = run(
        api,
        "a",
        bash("yes 1>&2", json!({"max_output_bytes": 1000})),
    )
    .await;
    assert_eq!(r["outcome"], "output_limit", "{r}");
    assert_eq!(r["stderr_truncated"], true);

    // Disk fill of the work dir: the sized tmpfs and RLIMIT_FSIZE stop it. runtime_error.
    let r = run(
        api,
        "a",
        bash(
            "head -c 200000000 /dev/zero > /work/fill; echo rc=$?; df -k /work | tail -1",
            json!({}),
        ),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("rc=0"), "{r}");
    still_serving(api).await;

    // A daemon that tries to outlive its execution.
    let r = run(
        api,
        "a",
        bash(
            "setsid sh -c 'sleep 60' & nohup sleep 60 & echo started",
            json!({"wall_time_ms": 2000}),
        ),
    )
    .await;
    assert!(r["stdout"].as_str().unwrap().contains("started"), "{r}");
    eventually(
        Duration::from_secs(10),
        "no sandbox process left",
        || async { (!processes_of_uids(t.uid_base, t.uid_base + 16)).then_some(()) },
    )
    .await;
    t.replica.stop().await;
}

/// Whether this host offers a memory cgroup controller (v1 hierarchy or v2 controller).
fn memory_cgroup_available() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
}

/// Any process on this machine running as a uid in `lo..hi`.
fn processes_of_uids(lo: u32, hi: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok())
                .is_some_and(|u| (lo..hi).contains(&u))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_and_leak_attacks_find_nothing() {
    let t = range(ESCAPE_UID_BASE).await;
    let api = &t.api;

    // Network: loopback, the Redis port, the metadata server, the outside. All fail.
    let net = format!(
        "import socket\nfor host, port in [('127.0.0.1', 22), ('127.0.0.1', {}), ('169.254.169.254', 80), ('1.1.1.1', 443)]:\n    try:\n        socket.create_connection((host, port), timeout=1)\n        print(host, 'OPEN')\n    except OSError as e:\n        print(host, 'blocked')\n",
        t._redis.port()
    );
    let r = run(api, "b", py(&net, json!({}))).await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("OPEN"), "{r}");
    assert_eq!(out.matches("blocked").count(), 4, "{r}");

    // Environment and secrets: nothing of the agent's (its Redis URL) is visible.
    let r = run(
        api,
        "b",
        bash(
            "env; cat /proc/1/environ /proc/self/environ 2>/dev/null | tr '\\0' '\\n'",
            json!({}),
        ),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("WARMPOOL"), "{r}");
    assert!(!out.contains("redis://"), "{r}");

    // Files of another execution: planted, then looked for, concurrently and afterwards.
    let plant = bash(
        "echo secret-42 > /work/loot; echo secret-42 > /tmp/loot; sleep 1",
        json!({}),
    );
    let look = bash("cat /work/loot /tmp/loot 2>&1; ls -a /work /tmp", json!({}));
    let (a, b) = tokio::join!(run(api, "c", plant.clone()), run(api, "d", look.clone()));
    assert_eq!(a["outcome"], "ok");
    assert!(!b["stdout"].as_str().unwrap().contains("secret-42"), "{b}");
    let later = run(api, "d", look).await;
    assert!(
        !later["stdout"].as_str().unwrap().contains("secret-42"),
        "{later}"
    );

    // A symlink planted where a later file would be written (Judge0 CVE-2024-28185/28189):
    // each execution gets a fresh tmpfs, so the link is gone; and nothing outside is writable.
    let r = run(api, "e", bash("ln -s /etc/passwd /work/main.py; touch /usr/pwned 2>&1; echo > /etc/pwned 2>&1; echo done", json!({}))).await;
    assert!(r["stdout"].as_str().unwrap().contains("done"), "{r}");
    assert!(!std::path::Path::new("/usr/pwned").exists());
    let r = run(api, "e", json!({"language": "python", "files": [{"name": "main.py", "content": "print(open(__file__).read()[:5])"}]})).await;
    assert_eq!(r["stdout"], "print\n", "{r}");

    // Shell metacharacters in args are plain arguments.
    let r = run(api, "f", json!({"language": "bash", "files": [{"name": "a.sh", "content": "printf '%s|' \"$@\""}], "args": ["$(id)", "; rm -rf /", "`whoami`", "a b"]})).await;
    assert_eq!(r["stdout"], "$(id)|; rm -rf /|`whoami`|a b|", "{r}");

    // Path traversal and NUL in file names never reach an agent.
    for name in ["../escape.py", "/etc/cron.d/x", "a\u{0}b", ".."] {
        let r = api
            .submit(
                "g",
                json!({"language": "python", "files": [{"name": name, "content": ""}]}),
                0,
            )
            .await;
        assert_eq!(r.status, 422, "{name:?}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_file_name");
    }
    still_serving(api).await;
    t.replica.stop().await;
}
