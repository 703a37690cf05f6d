//! The Lua scripts on a real redis-server, through the library functions that call them:
//! placement, capacity, pending FIFO, backlogs, idempotency, exactly-once results, expiry.

use std::time::Duration;

use crate::common::*;
use warmpool_core::model::{
    ErrorDetail, ExecutionResult, ExecutionState, GameState, Outcome, VmState,
};
use warmpool_core::store::executions::{
    self, AgentIdentity, Finish, Recorded, Start, SubmitParams, Submitted,
};
use warmpool_core::store::games::{self, Deleted, Placement};
use warmpool_core::store::vms::{self, Held, Registration};
use warmpool_core::store::Store;
use warmpool_testkit::redis::publish_default_settings;

/// Takes the pool's leadership and returns its fencing token.
async fn lead(store: &Store) -> u64 {
    warmpool::pool::leader::Leadership::new(
        store.clone(),
        "me".into(),
        std::time::Duration::from_secs(10),
    )
    .try_lead()
    .await
    .unwrap()
    .expect("the only replica leads")
}

/// The VM a game is leased to (`None`: pending).
async fn vm_of(store: &Store, game: &str) -> Option<String> {
    games::get_game(store, game).await.unwrap().unwrap().vm_id
}

/// The agent of `vm`, as a VM with no secret presents itself.
fn agent(vm: &str) -> AgentIdentity {
    AgentIdentity {
        vm_id: vm.into(),
        secret: String::new(),
    }
}

/// Registers `vm` Ready with nothing leased to it (the pool's settings published first, as a
/// replica does when it starts).
async fn ready_vm(store: &Store, vm: &str, capacity: u32) {
    publish_default_settings(store).await;
    let registered = vms::register(store, vm, capacity, &[], "test", "")
        .await
        .unwrap();
    assert!(
        matches!(registered, Registration::Ok { games: 0, .. }),
        "{registered:?}"
    );
}

const TTL: Duration = Duration::from_secs(60);
/// The trace id the executions here are submitted under.
const TRACE: &str = "105445aa7843bc8bf206b12000100000";
/// Queue timeout and retention of the executions here.
const MINUTE: Duration = Duration::from_secs(60);

fn params(placement: Placement) -> SubmitParams {
    SubmitParams {
        queue_timeout: MINUTE,
        game_ttl: TTL,
        placement,
        retention: MINUTE,
    }
}

async fn submit(store: &Store, game: &str, id: &str, idem: Option<&str>) -> Submitted {
    executions::submit(
        store,
        params(Placement::LeastLoaded),
        game,
        id,
        "{}",
        idem,
        TRACE,
    )
    .await
    .unwrap()
}

fn ok_result() -> ExecutionResult {
    ExecutionResult {
        outcome: Outcome::Ok,
        exit_code: Some(0),
        signal: None,
        stdout: "hi\n".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        wall_time_ms: 1,
        cpu_time_ms: 1,
        memory_kb: 1,
    }
}

/// Reads the VM stream's entries: (entry id, execution id).
async fn stream_entries(store: &Store, vm: &str) -> Vec<(String, String)> {
    use fred::prelude::*;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = store
        .client()
        .xrange(store.keys.queue(vm), "-", "+", None)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(id, f)| (id, f.get("e").cloned().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn least_loaded_spreads_games_and_packed_fills_the_fullest_vm() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 3).await;
    ready_vm(&s, "vm-b", 3).await;

    let mut on = Vec::new();
    for g in ["g1", "g2", "g3", "g4"] {
        let (game, created) = games::put_game(&s, g, Some(TTL), TTL, Placement::LeastLoaded)
            .await
            .unwrap();
        assert!(created);
        on.push(game.vm_id.unwrap());
    }
    let a = on.iter().filter(|v| *v == "vm-a").count();
    assert_eq!((a, on.len() - a), (2, 2), "least-loaded alternates: {on:?}");

    // vm-a and vm-b hold 2 each; packed takes the fullest one with a slot until it is full.
    let (g5, _) = games::put_game(&s, "g5", Some(TTL), TTL, Placement::Packed)
        .await
        .unwrap();
    let first = g5.vm_id.unwrap();
    let (g6, _) = games::put_game(&s, "g6", Some(TTL), TTL, Placement::Packed)
        .await
        .unwrap();
    let second = g6.vm_id.unwrap();
    assert_ne!(
        first, second,
        "the first VM was full after g5, so g6 goes to the other"
    );
    // Both full now: the next game is pending.
    let (g7, _) = games::put_game(&s, "g7", Some(TTL), TTL, Placement::Packed)
        .await
        .unwrap();
    assert_eq!(g7.state, GameState::Pending);
    assert_eq!(g7.vm_id, None);
}

#[tokio::test]
async fn a_game_stays_on_its_vm_when_refreshed() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 4).await;
    let (g, created) = games::put_game(&s, "g", Some(TTL), TTL, Placement::LeastLoaded)
        .await
        .unwrap();
    assert!(created);
    ready_vm(&s, "vm-b", 4).await; // emptier VM appears
    let (again, created) = games::put_game(&s, "g", Some(TTL * 2), TTL, Placement::LeastLoaded)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.vm_id, g.vm_id);
    assert!(again.expires_at > g.expires_at, "the lease was extended");
    let pool = vms::snapshot(&s).await.unwrap().vms;
    let games: Vec<u32> = pool.iter().map(|v| v.games).collect();
    assert_eq!(games, vec![1, 0], "refresh took no second slot");
}

#[tokio::test]
async fn pending_games_are_placed_in_arrival_order_with_their_backlogs() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    // No VM: both games pend, executions wait in their backlogs.
    for (game, exec) in [
        ("first", "e1"),
        ("second", "e2"),
        ("first", "e3"),
        ("third", "e4"),
    ] {
        submit(&s, game, exec, None).await;
    }
    for g in ["first", "second", "third"] {
        let game = games::get_game(&s, g).await.unwrap().unwrap();
        assert_eq!(game.state, GameState::Pending);
    }
    // A VM with room for two becomes Ready: the two oldest games go to it.
    ready_vm(&s, "vm-a", 2).await;
    assert_eq!(
        games::place_pending(&s, Placement::LeastLoaded, Some("vm-a"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(vm_of(&s, "first").await.as_deref(), Some("vm-a"));
    assert_eq!(vm_of(&s, "second").await.as_deref(), Some("vm-a"));
    assert_eq!(
        games::get_game(&s, "third").await.unwrap().unwrap().state,
        GameState::Pending
    );
    let on_stream: Vec<String> = stream_entries(&s, "vm-a")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        on_stream,
        vec!["e1", "e3", "e2"],
        "backlogs moved in order, game by game"
    );

    // Another VM: the guess is wrong on purpose; the script names the right VM.
    ready_vm(&s, "vm-b", 2).await;
    assert_eq!(
        games::place_pending(&s, Placement::LeastLoaded, Some("vm-a"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(vm_of(&s, "third").await.as_deref(), Some("vm-b"));
    let on_b: Vec<String> = stream_entries(&s, "vm-b")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(on_b, vec!["e4"]);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_execution() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 2).await;
    let first = submit(&s, "g", "e1", Some("k")).await;
    let again = submit(&s, "g", "e2", Some("k")).await;
    assert_eq!(
        (first.execution_id.as_str(), first.duplicate),
        ("e1", false)
    );
    assert!(first.created_ms.is_some());
    assert_eq!(
        again,
        Submitted {
            execution_id: "e1".into(),
            duplicate: true,
            created_ms: None,
            vm_id: None
        }
    );
    assert!(
        executions::get(&s, "e2").await.unwrap().is_none(),
        "nothing was written for e2"
    );
    // The key is per game.
    let other = submit(&s, "h", "e3", Some("k")).await;
    assert!(!other.duplicate);
    assert_eq!(stream_entries(&s, "vm-a").await.len(), 2);
}

#[tokio::test]
async fn a_result_is_written_once_and_a_stale_attempt_is_rejected() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 2).await;
    submit(&s, "g", "e1", None).await;
    let (entry, _) = stream_entries(&s, "vm-a").await.remove(0);

    let Start::Run { attempt, .. } = executions::start(&s, &agent("vm-a"), "e1").await.unwrap()
    else {
        panic!("a queued execution starts");
    };
    assert_eq!(attempt, 1);
    // Re-delivery to the same VM (an agent restart) is a new attempt; the old one is stale.
    let Start::Run {
        attempt: second, ..
    } = executions::start(&s, &agent("vm-a"), "e1").await.unwrap()
    else {
        panic!("re-delivery on the same VM runs again");
    };
    assert_eq!(second, 2);
    // Another VM cannot take a running execution.
    assert_eq!(
        executions::start(&s, &agent("vm-b"), "e1").await.unwrap(),
        Start::Skip
    );

    let result = Finish::Finished(ok_result());
    assert!(
        executions::finish(&s, &agent("vm-a"), "e1", 1, &entry, &result)
            .await
            .unwrap()
            == Recorded::Stale,
        "stale attempt"
    );
    assert_eq!(
        executions::finish(&s, &agent("vm-a"), "e1", 2, &entry, &result)
            .await
            .unwrap(),
        Recorded::Written
    );
    assert!(
        executions::finish(&s, &agent("vm-a"), "e1", 2, &entry, &result)
            .await
            .unwrap()
            == Recorded::Stale,
        "no second result"
    );

    let record = executions::get(&s, "e1").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Finished);
    assert_eq!(record.result.unwrap().stdout, "hi\n");
    assert!(
        stream_entries(&s, "vm-a").await.is_empty(),
        "entry acknowledged and deleted"
    );
    let running = vms::snapshot(&s).await.unwrap().vms[0].running;
    assert_eq!(running, 0);
}

#[tokio::test]
async fn deleting_a_game_frees_its_slot_and_returns_its_queue() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 1).await;
    submit(&s, "g", "e1", None).await;
    submit(&s, "g", "e2", None).await;
    submit(&s, "other", "e3", None).await; // pending: vm-a is full
    assert_eq!(
        games::get_game(&s, "other").await.unwrap().unwrap().state,
        GameState::Pending
    );

    let Deleted::Deleted { vm_id, mut queued } = games::delete_game(&s, "g", false).await.unwrap()
    else {
        panic!("g existed");
    };
    queued.sort();
    assert_eq!(vm_id.as_deref(), Some("vm-a"));
    assert_eq!(queued, vec!["e1", "e2"]);
    assert_eq!(
        games::delete_game(&s, "g", false).await.unwrap(),
        Deleted::Gone
    );
    // The freed slot goes to the pending game.
    assert_eq!(
        games::place_pending(&s, Placement::LeastLoaded, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(vm_of(&s, "other").await.as_deref(), Some("vm-a"));

    // An execution of the deleted game still on the stream is cancelled when the agent reaches it.
    assert_eq!(
        executions::start(&s, &agent("vm-a"), "e1").await.unwrap(),
        Start::Skip
    );
    let e1 = executions::get(&s, "e1").await.unwrap().unwrap();
    assert_eq!(e1.state, ExecutionState::Cancelled);
    assert_eq!(e1.error.unwrap().code, "game_ended");
}

#[tokio::test]
async fn only_queued_executions_end_expired_and_only_when_due() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    submit(&s, "g", "e1", None).await;
    let err = ErrorDetail {
        code: "queue_timeout".into(),
        message: "m".into(),
    };
    assert!(
        !executions::end_queued(&s, "e1", ExecutionState::Expired, &err, true)
            .await
            .unwrap(),
        "not due yet"
    );
    assert!(
        executions::end_queued(&s, "e1", ExecutionState::Expired, &err, false)
            .await
            .unwrap()
    );
    assert!(
        !executions::end_queued(&s, "e1", ExecutionState::Cancelled, &err, false)
            .await
            .unwrap(),
        "final stays final"
    );
    let e1 = executions::get(&s, "e1").await.unwrap().unwrap();
    assert_eq!(e1.state, ExecutionState::Expired);
    assert!(e1.finished_at.is_some());
    // An expired execution in a later-placed game's backlog is skipped by the agent.
    ready_vm(&s, "vm-a", 1).await;
    games::place_pending(&s, Placement::LeastLoaded, Some("vm-a"))
        .await
        .unwrap();
    assert_eq!(
        executions::start(&s, &agent("vm-a"), "e1").await.unwrap(),
        Start::Skip
    );
}

#[tokio::test]
async fn a_dead_vm_cannot_register_or_start_work() {
    use fred::prelude::*;
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 1).await;
    submit(&s, "g", "e1", None).await;
    let _: i64 = s
        .client()
        .hset(&s.keys.vm_state, ("vm-a", "dead"))
        .await
        .unwrap();
    assert_eq!(
        vms::register(&s, "vm-a", 1, &[], "test", "").await.unwrap(),
        Registration::Dead
    );
    assert_eq!(
        executions::start(&s, &agent("vm-a"), "e1").await.unwrap(),
        Start::VmDead
    );
    assert_eq!(
        vms::heartbeat(&s, &agent("vm-a"), &Default::default())
            .await
            .unwrap()
            .held,
        Held::State(VmState::Dead)
    );
    assert_eq!(
        vms::heartbeat(&s, &agent("vm-unknown"), &Default::default())
            .await
            .unwrap()
            .held,
        Held::Unknown
    );
}

#[tokio::test]
async fn a_heartbeat_tells_the_agent_whether_anybody_leads_the_pool() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "hb-led").await;
    ready_vm(&s, "vm-a", 1).await;
    let beat = vms::heartbeat(&s, &agent("vm-a"), &Default::default())
        .await
        .unwrap();
    assert_eq!(beat.held, Held::State(VmState::Ready));
    assert!(!beat.led, "no replica holds the lease yet");
    assert_eq!(beat.running, 0);
    lead(&s).await;
    assert!(
        vms::heartbeat(&s, &agent("vm-a"), &Default::default())
            .await
            .unwrap()
            .led
    );
}

#[tokio::test]
async fn scripts_survive_a_script_flush() {
    use fred::prelude::*;
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    let _: () = s.client().script_flush(false).await.unwrap();
    // NOSCRIPT is answered by reloading the script.
    let (game, created) = games::put_game(&s, "g", Some(TTL), TTL, Placement::LeastLoaded)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(game.state, GameState::Pending);
}

mod control {
    use super::*;
    use warmpool::pool::leader::Leadership;
    use warmpool_core::store::vms::{Transition, TransitionResult};

    #[tokio::test]
    async fn a_new_leader_fences_off_the_old_one() {
        let redis = RedisServer::start().unwrap();
        let s = store(&redis.url(), "t").await;
        let ttl = std::time::Duration::from_millis(200);
        let old = Leadership::new(s.clone(), "old".into(), ttl);
        let new = Leadership::new(s.clone(), "new".into(), ttl);
        let t1 = old.try_lead().await.unwrap().expect("first comes, leads");
        assert_eq!(new.try_lead().await.unwrap(), None, "the lease is held");
        assert_eq!(
            old.try_lead().await.unwrap(),
            Some(t1),
            "renewal keeps the token"
        );
        // The old leader pauses past its lease; the new one takes over with a new token.
        let t2 = eventually(
            std::time::Duration::from_secs(5),
            "the lease to expire",
            || {
                let new = new.clone();
                async move { new.try_lead().await.unwrap() }
            },
        )
        .await;
        assert!(t2 > t1);
        // The old leader wakes up and acts with its stale token: nothing happens.
        let stale = vms::transition(&s, t1, "t", Transition::Add { capacity: 8 })
            .await
            .unwrap();
        assert_eq!(stale, TransitionResult::Fenced);
        assert!(vms::snapshot(&s).await.unwrap().vms.is_empty());
        let TransitionResult::Ok { vm_id, .. } =
            vms::transition(&s, t2, "t", Transition::Add { capacity: 8 })
                .await
                .unwrap()
        else {
            panic!("the current leader acts");
        };
        assert_eq!(vm_id, "t-1");
        assert_eq!(
            old.try_lead().await.unwrap(),
            None,
            "the old leader learns it lost"
        );
        assert_eq!(old.token(), None);
    }

    #[tokio::test]
    async fn retire_refuses_a_vm_with_games_or_running_work_and_evict_moves_games_in_order() {
        let redis = RedisServer::start().unwrap();
        let s = store(&redis.url(), "t").await;
        let token = lead(&s).await;
        ready_vm(&s, "vm-a", 2).await;
        submit(&s, "g1", "e1", None).await;
        submit(&s, "g2", "e2", None).await;
        submit(&s, "g3", "e3", None).await; // pending: vm-a is full
        let drained = vms::transition(&s, token, "vm-a", Transition::Drain)
            .await
            .unwrap();
        assert!(matches!(drained, TransitionResult::Ok { .. }));
        assert_eq!(
            vms::transition(&s, token, "vm-a", Transition::Retire { evict: false })
                .await
                .unwrap(),
            TransitionResult::Busy {
                games: 2,
                running: 0
            }
        );
        let TransitionResult::Ok { mut moved, .. } =
            vms::transition(&s, token, "vm-a", Transition::Retire { evict: true })
                .await
                .unwrap()
        else {
            panic!("evicting retire goes through");
        };
        moved.sort();
        assert_eq!(moved, vec!["g1", "g2"]);
        // Their original order holds: g1 and g2 arrived before g3.
        ready_vm(&s, "vm-b", 2).await;
        games::place_pending(&s, Placement::LeastLoaded, Some("vm-b"))
            .await
            .unwrap();
        assert_eq!(vm_of(&s, "g1").await.as_deref(), Some("vm-b"));
        assert_eq!(vm_of(&s, "g2").await.as_deref(), Some("vm-b"));
        assert_eq!(
            games::get_game(&s, "g3").await.unwrap().unwrap().state,
            GameState::Pending
        );
    }

    #[tokio::test]
    async fn work_on_a_failed_vm_is_queued_again_and_fails_after_max_attempts() {
        let redis = RedisServer::start().unwrap();
        let s = store(&redis.url(), "t").await;
        let token = lead(&s).await;
        let mut requeue = Config::defaults()
            .reconciler_settings(warmpool::pool::sizing::Formula::Default)
            .requeue;
        requeue.max_attempts = 2;
        ready_vm(&s, "vm-a", 4).await;
        submit(&s, "g", "running-1", None).await;
        submit(&s, "g", "queued-1", None).await;
        let entries = stream_entries(&s, "vm-a").await;
        let Start::Run { attempt, .. } = executions::start(&s, &agent("vm-a"), "running-1")
            .await
            .unwrap()
        else {
            panic!("starts");
        };
        // vm-a dies mid-run.
        let TransitionResult::Ok { moved, .. } =
            vms::transition(&s, token, "vm-a", Transition::Fail)
                .await
                .unwrap()
        else {
            panic!("fail goes through");
        };
        assert_eq!(moved, vec!["g"]);
        let handled = executions::requeue_stream(&s, "vm-a", requeue)
            .await
            .unwrap();
        assert_eq!(handled, 2);
        assert!(stream_entries(&s, "vm-a").await.is_empty());
        let r1 = executions::get(&s, "running-1").await.unwrap().unwrap();
        assert_eq!(
            r1.state,
            ExecutionState::Queued,
            "queued again for a new VM"
        );
        // The dead VM's late result is rejected.
        let late = Finish::Finished(ok_result());
        assert!(
            executions::finish(
                &s,
                &agent("vm-a"),
                "running-1",
                attempt,
                &entries[0].0,
                &late
            )
            .await
            .unwrap()
                == Recorded::Stale
        );
        // A new VM takes the game and both executions, in order.
        ready_vm(&s, "vm-b", 4).await;
        games::place_pending(&s, Placement::LeastLoaded, Some("vm-b"))
            .await
            .unwrap();
        let order: Vec<String> = stream_entries(&s, "vm-b")
            .await
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(order, vec!["running-1", "queued-1"]);
        // It dies mid-run too: that is the second delivery, the limit: failed, vm_lost.
        let Start::Run {
            attempt: second, ..
        } = executions::start(&s, &agent("vm-b"), "running-1")
            .await
            .unwrap()
        else {
            panic!("starts again");
        };
        assert_eq!(second, 2);
        vms::transition(&s, token, "vm-b", Transition::Fail)
            .await
            .unwrap();
        executions::requeue_stream(&s, "vm-b", requeue)
            .await
            .unwrap();
        let r1 = executions::get(&s, "running-1").await.unwrap().unwrap();
        assert_eq!(r1.state, ExecutionState::Failed);
        assert_eq!(r1.error.unwrap().code, "vm_lost");
        assert_eq!(
            executions::get(&s, "queued-1")
                .await
                .unwrap()
                .unwrap()
                .state,
            ExecutionState::Queued
        );
    }
}

#[tokio::test]
async fn a_vm_recorded_but_not_registered_keeps_its_creation_time() {
    use warmpool_core::store::vms::{Transition, TransitionResult};
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    let token = lead(&s).await;
    let TransitionResult::Ok { vm_id, .. } =
        vms::transition(&s, token, "t", Transition::Add { capacity: 4 })
            .await
            .unwrap()
    else {
        panic!("add goes through");
    };
    let now = s.now_ms().await.unwrap();
    let views = vms::snapshot(&s).await.unwrap().vms;
    let view = views.iter().find(|v| v.vm_id == vm_id).unwrap();
    // Its info holds an empty language list (`{}` from Lua): the planner still sees its age,
    // or it would fail every new VM at once as a boot timeout.
    assert!(now.saturating_sub(view.created_ms) < 60_000, "{view:?}");
    assert_eq!(view.state, VmState::Provisioning);
}

#[tokio::test]
async fn only_the_agent_with_the_vms_secret_registers_it() {
    use warmpool_core::store::vms::{Transition, TransitionResult};
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "sec").await;
    let token = lead(&s).await;
    let TransitionResult::Ok { vm_id, .. } = vms::transition_with_secret(
        &s,
        token,
        "sec",
        Transition::Add { capacity: 2 },
        "the-secret",
    )
    .await
    .unwrap() else {
        panic!("add goes through");
    };
    publish_default_settings(&s).await;
    for wrong in ["", "another"] {
        assert_eq!(
            vms::register(&s, &vm_id, 2, &[], "test", wrong)
                .await
                .unwrap(),
            Registration::Refused,
            "secret {wrong:?}"
        );
    }
    let views = vms::snapshot(&s).await.unwrap().vms;
    assert_eq!(views[0].state, VmState::Provisioning);
    assert!(matches!(
        vms::register(&s, &vm_id, 2, &[], "test", "the-secret")
            .await
            .unwrap(),
        Registration::Ok { games: 0, .. }
    ));
}

#[tokio::test]
async fn a_record_keeps_the_retention_it_was_accepted_with_and_one_without_is_refused() {
    use fred::prelude::*;
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "t").await;
    ready_vm(&s, "vm-a", 2).await;
    // Accepted by a replica whose results stay readable 90 s (not this test's minute).
    let mut short = params(Placement::LeastLoaded);
    short.retention = Duration::from_secs(90);
    executions::submit(&s, short, "g", "e1", "{}", None, TRACE)
        .await
        .unwrap();
    let entries = stream_entries(&s, "vm-a").await;
    let Start::Run { attempt, .. } = executions::start(&s, &agent("vm-a"), "e1").await.unwrap()
    else {
        panic!("starts");
    };
    // The agent that ends it knows nothing of retention: the record's own applies.
    let done = Finish::Finished(ok_result());
    assert_eq!(
        executions::finish(&s, &agent("vm-a"), "e1", attempt, &entries[0].0, &done)
            .await
            .unwrap(),
        Recorded::Written
    );
    let ttl_ms: i64 = s.client().pttl(s.keys.exec("e1")).await.unwrap();
    assert!((85_000..=90_000).contains(&ttl_ms), "PTTL {ttl_ms}");

    // A record without its retention is not one this build wrote: refused, left as it is.
    submit(&s, "g", "e2", None).await;
    let _: i64 = s
        .client()
        .hdel(s.keys.exec("e2"), "retention")
        .await
        .unwrap();
    let before = warmpool_core::store::corrupt_reads();
    let err = executions::end_queued(
        &s,
        "e2",
        ExecutionState::Cancelled,
        &ErrorDetail {
            code: "game_deleted".into(),
            message: "gone".into(),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "corrupt", "{err}");
    assert!(warmpool_core::store::corrupt_reads() > before, "counted");
    let record = executions::get(&s, "e2").await.unwrap().unwrap();
    assert_eq!(record.state, ExecutionState::Queued, "nothing was written");
}

#[tokio::test]
async fn one_vm_cannot_start_finish_drop_or_heartbeat_for_another() {
    use warmpool_core::store::vms::{Transition, TransitionResult};
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "idn").await;
    publish_default_settings(&s).await;
    let token = lead(&s).await;
    let mut ids = Vec::new();
    for secret in ["secret-a", "secret-b"] {
        let TransitionResult::Ok { vm_id, .. } =
            vms::transition_with_secret(&s, token, "idn", Transition::Add { capacity: 4 }, secret)
                .await
                .unwrap()
        else {
            panic!("add goes through");
        };
        ids.push(AgentIdentity {
            vm_id,
            secret: secret.into(),
        });
    }
    let (a, b) = (&ids[0], &ids[1]);
    // Only B is Ready when the game arrives: it is leased to B.
    let registered = vms::register(&s, &b.vm_id, 4, &[], "test", &b.secret)
        .await
        .unwrap();
    assert!(matches!(registered, Registration::Ok { .. }));
    submit(&s, "g", "e1", None).await;
    vms::register(&s, &a.vm_id, 4, &[], "test", &a.secret)
        .await
        .unwrap();
    let entries = stream_entries(&s, &b.vm_id).await;
    assert_eq!(entries.len(), 1);
    let before = executions::get(&s, "e1").await.unwrap().unwrap();

    // A's agent, claiming to be B (its own secret, B's id): refused at every step.
    let posing = AgentIdentity {
        vm_id: b.vm_id.clone(),
        secret: a.secret.clone(),
    };
    assert_eq!(
        executions::start(&s, &posing, "e1").await.unwrap(),
        Start::Refused
    );
    let forged = Finish::Finished(ok_result());
    assert_eq!(
        executions::finish(&s, &posing, "e1", 1, &entries[0].0, &forged)
            .await
            .unwrap(),
        Recorded::Refused
    );
    assert!(!executions::ack(&s, &posing, &entries[0].0).await.unwrap());
    assert_eq!(
        vms::heartbeat(&s, &posing, &Default::default())
            .await
            .unwrap()
            .held,
        Held::Refused
    );
    // As itself, A cannot take B's work either: the game is leased to B.
    assert_eq!(executions::start(&s, a, "e1").await.unwrap(), Start::Skip);
    // Nothing changed: the record, B's entry, B's heartbeat time.
    assert_eq!(executions::get(&s, "e1").await.unwrap().unwrap(), before);
    assert_eq!(stream_entries(&s, &b.vm_id).await, entries);
    // B, with its own secret, runs and finishes it.
    let Start::Run { attempt, .. } = executions::start(&s, b, "e1").await.unwrap() else {
        panic!("B starts its own work");
    };
    assert_eq!(
        executions::finish(&s, b, "e1", attempt, &entries[0].0, &forged)
            .await
            .unwrap(),
        Recorded::Written
    );
}
