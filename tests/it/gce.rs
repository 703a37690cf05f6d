//! The Compute Engine provider end to end: a real orchestrator replica drives the official
//! `google-cloud-compute-v1` client against the fake Compute Engine of `fake-gce/`, which
//! launches a real `warmpool-agent --from-metadata` for every instance it runs. The agents
//! boot from instance metadata alone, register in a real redis-server and run executions in
//! real bwrap sandboxes.
//!
//! Conditions are awaited with deadlines, never with sleeps.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use warmpool_fake_gce::{FakeGce, FakeGceConfig, Method};

const LONG: Duration = Duration::from_secs(40);

async fn fake() -> FakeGce {
    FakeGce::start(FakeGceConfig {
        agent_bin: Some(agent_bin()),
        agent_env: vec![("WARMPOOL_LOG".into(), "warn,warmpool_agent=info".into())],
        ..FakeGceConfig::default()
    })
    .await
    .expect("start the fake Compute Engine")
}

/// A replica on the gce provider, pointed at `fake`, with short timers. One VM per game.
fn gce_config(pool: &str, fake: &FakeGce, uid_base: u32) -> Config {
    let mut c = test_config(pool);
    c.provider = warmpool::config::ProviderKind::Gce;
    c.gce.project = Some(fake.project().to_string());
    c.gce.zones = Some("zone-a,zone-b".into());
    c.gce.agent_image = "registry.invalid/warmpool/agent:test".into();
    c.gce.endpoint = Some(fake.endpoint());
    c.gce.credentials = warmpool::gce::config::Credentials::Anonymous;
    c.gce.poll = Duration::from_millis(20);
    c.gce.operation_timeout = Duration::from_secs_f64(20.0);
    c.gce.agent_env = format!(
        "WARMPOOL_AGENT_SANDBOX=bwrap;WARMPOOL_SANDBOX_CGROUPS=off;\
         WARMPOOL_SANDBOX_UID_BASE={uid_base};WARMPOOL_AGENT_SLOTS=2;\
         WARMPOOL_HEARTBEAT_INTERVAL_MS=200;WARMPOOL_AGENT_ORPHAN_TIMEOUT_S=3;\
         WARMPOOL_AGENT_UNATTENDED_TIMEOUT_S=3"
    );
    // Exactly one VM per game (placed or waiting), so tests can count.
    c.games_per_vm = 1;
    c.pool_formula = Some("games + pending".into());
    c.max_vms = 6;
    c.reconcile_interval = Duration::from_secs_f64(0.2);
    c.provider_sync_interval = Duration::from_secs_f64(0.3);
    c.orphan_grace = Duration::from_secs_f64(2.0);
    c.boot_timeout = Duration::from_secs_f64(30.0);
    c.heartbeat_timeout = Duration::from_secs_f64(10.0);
    c.scale_down_delay = Duration::from_secs_f64(0.5);
    c.idle_timeout = Duration::from_secs_f64(1.0);
    c.leader_ttl = Duration::from_millis(1_000);
    c
}

async fn pool(api: &Api) -> Value {
    let r = api.get("/v1/pool").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn vm_ids(pool: &Value) -> Vec<String> {
    pool["vms"]
        .as_array()
        .map(|vms| {
            vms.iter()
                .filter_map(|v| v["vm_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills, when the test ends, whatever still runs as this test's sandbox uids
/// (`base..base + 10`): an agent killed while bwrap was setting a sandbox up (a preemption
/// SIGKILLs it) leaves that bwrap blocked for good (see the production-sandbox note). Each test
/// has its own range, so this never touches another test's sandboxes.
struct Leftovers(u32);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in warmpool_core::procfs::processes() {
            if (self.0..self.0 + 10).contains(&p.uid) {
                eprintln!("killing leftover sandbox process {} (uid {})", p.pid, p.uid);
                unsafe {
                    libc::kill(p.pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Waits for a Ready VM in the pool; its id.
async fn first_ready_vm(api: &Api) -> String {
    eventually(LONG, "a ready VM", || {
        let api = api.clone();
        async move {
            let p = pool(&api).await;
            let vm = p["vms"]
                .as_array()?
                .iter()
                .find(|v| v["state"] == "ready")?;
            vm["vm_id"].as_str().map(String::from)
        }
    })
    .await
}

/// Instances the fake runs (not deleted, not failed by a stockout), by name.
fn running(fake: &FakeGce) -> Vec<String> {
    fake.instances().into_iter().map(|i| i.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scales_up_from_zero_on_compute_engine_and_back_to_zero() {
    let _leftovers = Leftovers(63_300);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let replica = Replica::start(gce_config("gce-up", &fake, 63_300), &redis.url()).await;
    let api = replica.api();
    assert!(running(&fake).is_empty());

    // A game arrives at an empty pool: its execution waits, a VM is created, boots from its
    // metadata and runs it.
    let r = api.submit("g1", python("print('hello from gce')"), 0).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["execution_id"].as_str().unwrap().to_string();
    let done = api.wait_final(&id, LONG).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["result"]["stdout"], "hello from gce\n");
    assert_eq!(done["vm_id"], "gce-up-1");

    let instances = fake.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let vm = &instances[0];
    assert_eq!(
        (vm.zone.as_str(), vm.name.as_str()),
        ("zone-a", "wp-gce-up-1")
    );
    assert_eq!(vm.labels["warmpool-pool"], "gce-up");
    assert_eq!(vm.labels["warmpool-vm"], "gce-up-1");
    assert_eq!(vm.metadata["warmpool-vm-id"], "gce-up-1");
    assert_eq!(vm.metadata["warmpool-redis-url"], redis.url());
    let c = fake.counters();
    assert_eq!((c.insert_calls, c.instances_created), (1, 1), "{c:?}");

    // The game ends: the pool drains to zero and the instance is deleted, its agent gone.
    let agent = vm.agent_pid.expect("the agent's pid");
    assert_eq!(api.send("DELETE", "/v1/games/g1", None).await.status, 204);
    eventually(LONG, "the pool to scale back to zero", || {
        let fake = fake.clone();
        async move { running(&fake).is_empty().then_some(()) }
    })
    .await;
    eventually(LONG, "the VM record to be forgotten", || {
        let api = api.clone();
        async move { vm_ids(&pool(&api).await).is_empty().then_some(()) }
    })
    .await;
    assert_eq!(warmpool_fake_gce::live_processes_in_groups(&[agent]), 0);
    let c = fake.counters();
    assert_eq!(c.instances_created, 1, "{c:?}");
    replica.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stockouts_rate_limits_and_lost_answers_make_exactly_one_instance_per_vm() {
    let _leftovers = Leftovers(63_310);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    fake.set_stockout("zone-a", true);
    fake.fail_next(Method::Insert, 2, 429);
    fake.fail_next(Method::Insert, 1, 503);
    fake.lose_next_insert_responses(2);
    let replica = Replica::start(gce_config("gce-faults", &fake, 63_310), &redis.url()).await;
    let api = replica.api();

    let mut ids = Vec::new();
    for game in ["g1", "g2", "g3"] {
        let r = api
            .submit(game, python(&format!("print('{game}')")), 0)
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["execution_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let done = api.wait_final(id, LONG).await;
        assert_eq!(done["state"], "finished", "{done}");
    }

    // Every VM record has exactly one instance, all in the zone that had room.
    let records = vm_ids(&pool(&api).await);
    assert_eq!(records.len(), 3, "{records:?}");
    let instances = fake.instances();
    for vm in &records {
        let named: Vec<_> = instances
            .iter()
            .filter(|i| i.name == format!("wp-{vm}"))
            .collect();
        assert_eq!(named.len(), 1, "{vm}: {instances:?}");
        assert_eq!(named[0].zone, "zone-b");
    }
    let c = fake.counters();
    // Created = the zone-b instances plus the zone-a ones the stockout took away again.
    assert_eq!(c.instances_created - c.stockouts, 3, "{c:?}");
    assert_eq!(c.insert_responses_lost, 2, "{c:?}");
    assert!(c.duplicate_inserts_deduplicated >= 2, "{c:?}");
    // Nothing failed as far as the pool is concerned.
    let p = pool(&api).await;
    assert_eq!(p["provider"]["last_error"], Value::Null, "{p}");
    assert_eq!(p["provider"]["creates_failed"], 0);
    replica.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_fails_the_vm_is_shown_and_is_not_repeated() {
    let _leftovers = Leftovers(63_320);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let image = "projects/warmpool-test/global/images/does-not-exist";
    fake.add_missing_image(image);
    let mut config = gce_config("gce-bad", &fake, 63_320);
    config.gce.image = image.into();
    let replica = Replica::start(config, &redis.url()).await;
    let api = replica.api();

    // Three games at once: three VMs asked for in one pass, all failing the same way.
    for game in ["g1", "g2", "g3"] {
        let r = api.submit(game, python("print(1)"), 0).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let p = eventually(LONG, "the failure in GET /v1/pool", || {
        let api = api.clone();
        async move {
            let p = pool(&api).await;
            (p["provider"]["last_error"]["kind"] == "config").then_some(p)
        }
    })
    .await;
    let error = &p["provider"]["last_error"];
    assert!(
        error["vm_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("gce-bad-"),
        "{p}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("does-not-exist"),
        "{p}"
    );
    // The first pause (WARMPOOL_CREATE_PAUSE_S, 60 s), not one lengthened by each of the
    // creates that were already on their way.
    let at = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap_or(""),
            &time::format_description::well_known::Rfc3339,
        )
    };
    let paused_for = at(&p["provider"]["creates_paused_until"]).expect("a pause")
        - at(&error["at"]).expect("the failure's time");
    assert!(
        (59.0..=61.0).contains(&paused_for.as_seconds_f64()),
        "paused for {paused_for}: {p}"
    );
    assert!(p["status"].as_str().unwrap_or("").contains("paused"), "{p}");

    // Several more passes, each with an inventory sync (seen in last_sync), and the games
    // still pending: no insert beyond the first three.
    let syncs = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    eventually(LONG, "three more reconcile passes", || {
        let api = api.clone();
        let seen = syncs.clone();
        async move {
            let _ = api.send("POST", "/v1/pool/reconcile", None).await;
            let p = pool(&api).await;
            let mut seen = seen.lock().unwrap();
            seen.insert(p["provider"]["last_sync"].to_string());
            (seen.len() >= 4).then_some(())
        }
    })
    .await;
    let p = pool(&api).await;
    assert_eq!(p["games"]["pending"], 3, "{p}");
    let c = fake.counters();
    assert!((1..=3).contains(&c.insert_calls), "{c:?}");
    assert_eq!(c.instances_created, 0, "{c:?}");
    replica.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_vm_moves_its_games_and_loses_no_execution() {
    let _leftovers = Leftovers(63_330);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let mut config = gce_config("gce-spot", &fake, 63_330);
    config.gce.spot = true;
    // Only the provider can notice the loss in time: the heartbeat timeout is far away.
    config.heartbeat_timeout = Duration::from_secs_f64(60.0);
    let replica = Replica::start(config, &redis.url()).await;
    let api = replica.api();

    // A long execution runs on the game's VM when the VM is preempted.
    let r = api
        .submit(
            "g1",
            python("import time\ntime.sleep(2)\nprint('survived')"),
            0,
        )
        .await;
    let id = r.body["execution_id"].as_str().unwrap().to_string();
    let vm = eventually(LONG, "the execution to run", || {
        let api = api.clone();
        let id = id.clone();
        async move {
            let r = api.execution(&id, 0).await;
            (r.body["state"] == "running").then(|| r.body["vm_id"].as_str().unwrap().to_string())
        }
    })
    .await;
    let queued = api.submit("g1", python("print('queued behind')"), 0).await;
    let queued_id = queued.body["execution_id"].as_str().unwrap().to_string();
    let instance = fake
        .instances()
        .into_iter()
        .find(|i| i.name == format!("wp-{vm}"))
        .expect("the VM's instance");
    fake.preempt(&instance.zone, &instance.name).unwrap();

    let done = api.wait_final(&id, LONG).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["result"]["stdout"], "survived\n");
    assert_ne!(done["vm_id"], vm.as_str(), "it ran again elsewhere: {done}");
    let after = api.wait_final(&queued_id, LONG).await;
    assert_eq!(after["state"], "finished", "{after}");
    let p = pool(&api).await;
    assert_eq!(p["provider"]["vms_lost"], 1, "{p}");
    assert!(!vm_ids(&p).contains(&vm), "{p}");
    // The preempted instance is deleted, not left TERMINATED.
    eventually(LONG, "the preempted instance to be deleted", || {
        let fake = fake.clone();
        let name = instance.name.clone();
        async move { (!running(&fake).contains(&name)).then_some(()) }
    })
    .await;
    replica.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_instance_is_adopted_when_its_agent_registers_and_deleted_when_not() {
    let _leftovers = Leftovers(63_340);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let mut config = gce_config("gce-orphan", &fake, 63_340);
    // No scale-down within the test (the adopted VM is one more than the pool needs).
    config.scale_down_delay = Duration::from_secs_f64(600.0);
    let replica = Replica::start(config.clone(), &redis.url()).await;
    let api = replica.api();
    // One game: one VM of the pool's own.
    assert_eq!(api.put_game("g1").await.status, 201);
    let first = first_ready_vm(&api).await;

    // Two instances nobody recorded (left by a replica that died mid-create, say): one with
    // a working agent, one whose agent cannot start.
    let labels = |vm: &str| {
        BTreeMap::from([
            ("warmpool-pool".to_string(), "gce-orphan".to_string()),
            ("warmpool-vm".to_string(), vm.to_string()),
        ])
    };
    let settings = config.gce.settings("gce-orphan", &redis.url()).unwrap();
    let metadata = |vm: &str| -> BTreeMap<String, String> {
        settings
            .metadata_items(&warmpool::gce::config::VmMetadata {
                vm_id: vm,
                capacity: 1,
                secret: "",
            })
            .into_iter()
            .collect()
    };
    fake.insert_unmanaged(
        "zone-b",
        "wp-gce-orphan-77",
        labels("gce-orphan-77"),
        metadata("gce-orphan-77"),
    )
    .unwrap();
    let mut broken = metadata("gce-orphan-78");
    broken.remove("warmpool-redis-url");
    fake.insert_unmanaged(
        "zone-b",
        "wp-gce-orphan-78",
        labels("gce-orphan-78"),
        broken,
    )
    .unwrap();

    eventually(LONG, "the working orphan to be adopted", || {
        let api = api.clone();
        async move {
            let p = pool(&api).await;
            p["vms"]
                .as_array()?
                .iter()
                .any(|v| v["vm_id"] == "gce-orphan-77" && v["state"] == "ready")
                .then_some(())
        }
    })
    .await;
    eventually(LONG, "the broken orphan to be deleted", || {
        let fake = fake.clone();
        async move { (!running(&fake).contains(&"wp-gce-orphan-78".to_string())).then_some(()) }
    })
    .await;
    // The adopted VM takes the next game (the pool's own VM is full).
    let r = api
        .submit("g2", python("print('on the adopted VM')"), 30)
        .await;
    assert_eq!(r.body["state"], "finished", "{}", r.body);
    assert_eq!(r.body["vm_id"], "gce-orphan-77", "{}", r.body);
    let p = pool(&api).await;
    assert_eq!(p["provider"]["orphans_deleted"], 1, "{p}");
    let names = running(&fake);
    assert!(names.contains(&"wp-gce-orphan-77".to_string()), "{names:?}");
    assert!(names.contains(&format!("wp-{first}")), "{names:?} {p}");
    replica.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_loses_redis_deletes_its_own_vm() {
    let _leftovers = Leftovers(63_350);
    let mut redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let mut config = gce_config("gce-deadman", &fake, 63_350);
    config.min_vms = 1;
    let replica = Replica::start(config, &redis.url()).await;
    let api = replica.api();
    first_ready_vm(&api).await;
    // Redis goes away (with the replica still up, so it is Redis silence, not the lack of a
    // leader, that the agent reacts to), then the replica: nobody is left to delete the VM.
    assert_eq!(running(&fake).len(), 1);
    let agent = fake.instances()[0].agent_pid.expect("the agent's pid");
    redis.kill();
    replica.stop().await;

    eventually(LONG, "the agent to delete its own instance", || {
        let fake = fake.clone();
        async move { running(&fake).is_empty().then_some(()) }
    })
    .await;
    let c = fake.counters();
    assert_eq!(c.self_deletes, 1, "{c:?}");
    assert_eq!(warmpool_fake_gce::live_processes_in_groups(&[agent]), 0);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_left_without_any_replica_deletes_itself_once_idle() {
    let _leftovers = Leftovers(63_360);
    let redis = RedisServer::start().unwrap();
    let fake = fake().await;
    let mut config = gce_config("gce-alone", &fake, 63_360);
    config.min_vms = 1;
    let replica = Replica::start(config, &redis.url()).await;
    let api = replica.api();
    first_ready_vm(&api).await;
    let agent = fake.instances()[0].agent_pid.expect("the agent's pid");
    // Every replica goes (scaled to zero); Redis stays. Nobody leads the pool any more.
    replica.stop().await;
    eventually(LONG, "the unattended VM to delete itself", || {
        let fake = fake.clone();
        async move { running(&fake).is_empty().then_some(()) }
    })
    .await;
    let c = fake.counters();
    assert_eq!((c.self_deletes, c.delete_calls), (1, 1), "{c:?}");
    assert_eq!(warmpool_fake_gce::live_processes_in_groups(&[agent]), 0);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_the_old_leaders_creates_without_a_second_instance() {
    let _leftovers = Leftovers(63_370);
    let redis = RedisServer::start().unwrap();
    // No agents: only the provider's side matters here, and records stay provisioning.
    let fake = FakeGce::start(FakeGceConfig {
        op_delay: Duration::from_millis(300),
        ..FakeGceConfig::default()
    })
    .await
    .unwrap();
    // Inserts fail for a while: the first leader records the VMs but creates none of them.
    fake.fail_next(Method::Insert, 60, 503);
    let first = Replica::start(gce_config("gce-handoff", &fake, 63_370), &redis.url()).await;
    let second = Replica::start(gce_config("gce-handoff", &fake, 63_370), &redis.url()).await;
    let api = first.api();
    for game in ["g1", "g2", "g3", "g4", "g5", "g6"] {
        assert_eq!(api.put_game(game).await.status, 201);
    }
    // The leader goes while its creates are backing off.
    eventually(LONG, "the six VM records", || {
        let api = api.clone();
        async move { (vm_ids(&pool(&api).await).len() == 6).then_some(()) }
    })
    .await;
    let leader_before = pool(&api).await["leader"]["replica"].clone();
    first.stop().await;
    assert!(
        running(&fake).is_empty(),
        "no create went through before the hand-off"
    );
    let api = second.api();
    eventually(LONG, "an instance for every VM record", || {
        let api = api.clone();
        let fake = fake.clone();
        async move {
            let records = vm_ids(&pool(&api).await);
            let names = running(&fake);
            (records.len() == 6 && records.iter().all(|vm| names.contains(&format!("wp-{vm}"))))
                .then_some(())
        }
    })
    .await;
    let p = pool(&api).await;
    assert_ne!(p["leader"]["replica"], leader_before, "{p}");
    let names = running(&fake);
    assert_eq!(
        names.len(),
        6,
        "one instance per record, no more: {names:?}"
    );
    let c = fake.counters();
    assert_eq!(c.instances_created, 6, "{c:?}");
    second.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_term_while_running_stops_creating() {
    let _leftovers = Leftovers(63_380);
    let redis = RedisServer::start().unwrap();
    // Slow operations in a stocked-out first zone: a create that is still running when its
    // operation ends moves on to zone-b, which is what must not happen once the term is lost.
    let fake = FakeGce::start(FakeGceConfig {
        op_delay: Duration::from_secs(3),
        ..FakeGceConfig::default()
    })
    .await
    .unwrap();
    fake.set_stockout("zone-a", true);
    let replica = Replica::start(gce_config("gce-term", &fake, 63_380), &redis.url()).await;
    let api = replica.api();
    for game in ["g1", "g2", "g3"] {
        assert_eq!(api.put_game(game).await.status, 201);
    }
    eventually(LONG, "three inserts waiting for their operations", || {
        let fake = fake.clone();
        async move { (running(&fake).len() == 3).then_some(()) }
    })
    .await;

    // Another replica takes the lease; this one is alive and learns it when it renews.
    let s = store(&redis.url(), "gce-term").await;
    let _: i64 = fred::interfaces::KeysInterface::del(s.client(), &s.keys.leader)
        .await
        .unwrap();
    let thief =
        warmpool::pool::leader::Leadership::new(s.clone(), "thief".into(), Duration::from_secs(60));
    thief.try_lead().await.unwrap().expect("the lease was free");
    eventually(LONG, "the replica to see the new leader", || {
        let api = api.clone();
        async move { (pool(&api).await["leader"]["replica"] == "thief").then_some(()) }
    })
    .await;
    eventually(LONG, "the zone-a operations to fail", || {
        let fake = fake.clone();
        async move { running(&fake).is_empty().then_some(()) }
    })
    .await;
    // A create still running polls its operation at most 5 s apart, then inserts in zone-b
    // at once: watch for longer than that. (Absence can only be shown over a window.)
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(running(&fake).is_empty(), "{:?}", fake.instances());
    assert_eq!(fake.counters().insert_calls, 3, "{:?}", fake.counters());
    replica.stop().await;
    fake.shutdown().await;
}
