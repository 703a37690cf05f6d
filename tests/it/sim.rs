//! `warmpool sim`: the simulator on hand-checked traces, the generated day against the issue's
//! targets (a real check of the sizing formula and the planner), and the command line.

use std::process::Command;

use warmpool::sim::generate::{generate_day, DayShape};
use warmpool::sim::rng::BootTimes;
use warmpool::sim::trace::{Burst, TraceGame, TraceReservation};
use warmpool::sim::{simulate, Settings, Trace};

fn game(start_s: f64, duration_s: f64, executions: u32, burst: Burst) -> TraceGame {
    TraceGame {
        start_s,
        duration_s,
        executions,
        burst,
    }
}

/// X = 2, boots of exactly 45 s, no buffer beyond the formula's λ·T.
fn exact_settings() -> Settings {
    let defaults = Settings::default();
    Settings {
        games_per_vm: 2,
        headroom_games: 0.0,
        z: 0.0,
        boot: BootTimes {
            sd_s: 0.0,
            ..defaults.boot
        },
        placement: warmpool_core::store::games::Placement::LeastLoaded,
        ..defaults
    }
}

#[test]
fn two_games_on_a_cold_pool_wait_for_the_boots_computed_by_hand() {
    // A at 10 s for 100 s (4 executions: 22.5, 47.5, 72.5, 97.5 s); B at 20 s for 50 s
    // (2 executions: 32.5, 57.5 s). X = 2, boots 45 s, pool empty and idle before.
    //
    // 10 s: A pending → pass: desired = ceil((1 pending + λT 0.5) / 2) = 1 → VM0, Ready 55 s.
    // 20 s: B pending → pass: λ ≈ 0.022/s, desired = ceil((2 + 0.98) / 2) = 2 → VM1, Ready 65 s.
    // 55 s: VM0 Ready: A then B placed on it (FIFO): waits 45 s and 35 s.
    // 70 s: B ends; desired 1 < 2 live, but the scale-down delay outlasts the trace (110 s).
    // VM-seconds: VM0 10 → 110 s, VM1 20 → 110 s = 190. Lower bound (X = 2): 1 VM over
    // 10–110 s = 100. One VM per game: (45 + 100) + (45 + 50) = 240.
    let trace = Trace {
        games: vec![
            game(10.0, 100.0, 4, Burst::None),
            game(20.0, 50.0, 2, Burst::None),
        ],
        reservations: vec![],
    };
    let r = simulate(&trace, &exact_settings()).report;
    assert_eq!(r.pool.vm_seconds, 190.0);
    assert_eq!(r.lower_bound.vm_seconds, 100.0);
    assert_eq!(r.one_vm_per_game.vm_seconds, 240.0);
    assert_eq!(r.pool.vms_created, 2);
    let w = r.pool.wait_outside_unannounced;
    assert_eq!((w.n, w.p50_s, w.max_s), (2, 35.0, 45.0));
    // 22.5 and 47.5 s of A, 32.5 s of B waited in a backlog, none past the queue timeout.
    assert_eq!(r.pool.executions_queued, 3);
    assert_eq!(r.pool.executions_lost, 0);
    assert_eq!(r.trace.executions, 6);
}

#[test]
fn a_warm_pool_places_games_at_once_and_keeps_one_spare_vm() {
    // Six games start 10 s apart after the pool is busy: with headroom 4 and X = 8, each new
    // game finds a free Ready slot.
    let mut games = vec![game(0.0, 3600.0, 1, Burst::None)];
    games.extend((0..6).map(|i| game(600.0 + 10.0 * f64::from(i), 600.0, 1, Burst::None)));
    let trace = Trace {
        games,
        reservations: vec![],
    };
    let r = simulate(&trace, &Settings::default()).report;
    let w = r.pool.wait_outside_unannounced;
    assert_eq!(w.n, 7);
    assert!(w.max_s > 20.0, "the very first game met a cold pool: {w:?}");
    assert_eq!(w.p50_s, 0.0, "the others found a warm slot: {w:?}");
    assert_eq!(r.pool.executions_lost, 0);
}

/// 200 games within a minute at 1 h, on top of a light steady load from 5 min; announced 40
/// min ahead or not at all.
fn tournament(announced: bool) -> Trace {
    let mut games: Vec<TraceGame> = (0..220)
        .map(|i| game(300.0 + 15.0 * f64::from(i), 900.0, 10, Burst::None))
        .collect();
    let burst = if announced {
        Burst::Announced("cup".into())
    } else {
        Burst::Unannounced("cup".into())
    };
    games.extend((0..200).map(|i| game(3600.0 + 0.3 * f64::from(i), 1200.0, 20, burst.clone())));
    games.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let reservations = if announced {
        vec![TraceReservation {
            id: "cup".into(),
            start_s: 3600.0,
            duration_s: 60.0,
            games: 200,
            announced_s: Some(3600.0 - 2400.0),
        }]
    } else {
        vec![]
    };
    Trace {
        games,
        reservations,
    }
}

#[test]
fn an_announced_burst_is_absorbed_and_the_same_burst_unannounced_waits_for_boots() {
    // One VM kept warm, so the first background game does not meet a cold pool.
    let settings = Settings {
        min_vms: 1,
        ..Settings::default()
    };
    let announced = simulate(&tournament(true), &settings).report;
    let w = announced.pool.wait_outside_unannounced;
    assert_eq!(w.n, 420);
    assert!(
        w.max_s < 1.0,
        "announced: every game placed within 1 s: {w:?}"
    );

    let surprise = simulate(&tournament(false), &settings).report;
    let u = surprise.pool.wait_unannounced_bursts;
    assert_eq!(u.n, 200);
    // The first games find the warm buffer; most wait for VMs created when they went pending,
    // so they wait up to about one boot (45 s, lognormal, sd 8 s).
    assert!(u.p50_s > 15.0 && u.p50_s < 60.0, "{u:?}");
    assert!(u.max_s > 30.0 && u.max_s < 120.0, "{u:?}");
    for r in [&announced, &surprise] {
        assert_eq!(r.pool.executions_lost, 0);
        assert_eq!(r.pool.games_never_placed, 0);
    }
}

#[test]
fn the_generated_day_meets_the_targets_at_8_games_per_vm() {
    // The targets for the default formula and planner: VM-seconds ≤ 1.15 × the lower
    // bound and ≤ 0.2 × one VM per game, p99 wait < 1 s outside unannounced bursts, nothing
    // lost. A change to sizing.rs or plan.rs that breaks one of them fails here.
    let trace = generate_day(&DayShape::default(), 1);
    let settings = Settings::default();
    assert_eq!(settings.games_per_vm, 8);
    let r = simulate(&trace, &settings).report;
    let report = r.table();
    assert!(r.targets.vs_lower_bound <= 1.15, "{report}");
    assert!(r.targets.vs_one_vm_per_game <= 0.2, "{report}");
    assert!(r.pool.wait_outside_unannounced.p99_s < 1.0, "{report}");
    assert_eq!(r.pool.executions_lost, 0, "{report}");
    assert_eq!(r.pool.games_never_placed, 0, "{report}");
    assert!(r.targets.met, "{report}");
    // The unannounced bursts do wait (for boots), and are reported apart.
    assert_eq!(r.pool.wait_unannounced_bursts.n, 750);
    assert!(r.pool.wait_unannounced_bursts.p99_s > 10.0, "{report}");
}

#[test]
fn the_same_seed_gives_the_same_figures() {
    let trace = generate_day(&DayShape::default(), 7);
    let a = serde_json::to_string(&simulate(&trace, &Settings::default()).report).unwrap();
    let b = serde_json::to_string(&simulate(&trace, &Settings::default()).report).unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_command_generates_a_day_then_replays_it_as_json_with_a_plot() {
    let bin = env!("CARGO_BIN_EXE_warmpool");
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("day.csv");
    let plot = dir.path().join("day.svg");

    let out = Command::new(bin)
        .args(["sim", "--generate", "--seed", "3", "--out"])
        .arg(&day)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&day).unwrap();
    assert!(csv.starts_with("kind,start_s,duration_s,executions,games,burst,announced_s\n"));
    assert_eq!(
        csv.lines()
            .filter(|l| l.starts_with("reservation,"))
            .count(),
        3
    );

    let out = Command::new(bin)
        .args(["sim", "--json", "--seed", "3", "--trace"])
        .arg(&day)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["trace"]["reservations"], 3);
    assert_eq!(v["settings"]["games_per_vm"], 8);
    assert_eq!(v["pool"]["executions_lost"], 0);
    let pool = v["pool"]["vm_seconds"].as_f64().unwrap();
    let lower = v["lower_bound"]["vm_seconds"].as_f64().unwrap();
    let one = v["one_vm_per_game"]["vm_seconds"].as_f64().unwrap();
    assert!(lower > 0.0 && lower < pool && pool < one, "{stdout}");
    assert!(v["pool"]["wait_unannounced_bursts"]["p99_s"].is_number());
    assert!(v["targets"]["met"].is_boolean());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));

    // The table by default.
    let out = Command::new(bin)
        .args(["sim", "--trace"])
        .arg(&day)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| warm pool |"), "{table}");
    assert!(table.contains("| one VM per game |"), "{table}");
    assert!(table.contains("targets:"), "{table}");
}

#[test]
fn a_bad_trace_or_formula_fails_with_the_reason() {
    let bin = env!("CARGO_BIN_EXE_warmpool");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "start_s,duration_s\n0,60\nsoon,60\n").unwrap();
    let out = Command::new(bin)
        .args(["sim", "--trace"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("start_s"),
        "{stderr}"
    );

    let out = Command::new(bin)
        .args(["sim", "--formula", "games / vms", "--trace"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vms"));

    let out = Command::new(bin).args(["sim"]).output().unwrap();
    assert!(!out.status.success(), "--trace or --generate is required");
}

/// The simulator models the placement rule (`warmpool::sim::engine::pick`); the rule itself is
/// `pick_vm` in `redis/common.lua`. Both must choose the same VM for the same loads: each
/// round gives random loads to a few Ready VMs on a real Redis, places one game through the
/// real script, and compares with the model.
#[tokio::test]
async fn the_simulators_placement_model_chooses_as_the_lua_rule_does() {
    use fred::prelude::*;
    use warmpool::sim::engine::pick;
    use warmpool_core::store::games::{self, Placement};
    use warmpool_core::store::vms;

    let redis = crate::common::RedisServer::start().unwrap();
    let s = crate::common::store(&redis.url(), "pick").await;
    warmpool_testkit::redis::publish_default_settings(&s).await;
    let ids: Vec<String> = (0..5).map(|i| format!("vm-{i:06}")).collect();
    for vm in &ids {
        vms::register(&s, vm, 1_000, &[], "test", "").await.unwrap();
    }
    let mut rng = warmpool::sim::rng::Rng::new(7, 0);
    let mut game = 0;
    let mut ties = 0;
    for round in 0..200 {
        let placement = if round % 2 == 0 {
            Placement::LeastLoaded
        } else {
            Placement::Packed
        };
        // Few distinct loads, so that ties (where the two could part ways) are common.
        let loads: Vec<usize> = ids.iter().map(|_| (rng.next_u64() % 4) as usize).collect();
        ties += usize::from(loads.iter().filter(|l| **l == loads[0]).count() > 1);
        for (vm, load) in ids.iter().zip(&loads) {
            let _: i64 = s
                .client()
                .hset(&s.keys.vm_games, (vm.as_str(), *load as i64))
                .await
                .unwrap();
            let _: i64 = s
                .client()
                .zadd(
                    &s.keys.free,
                    None,
                    None,
                    false,
                    false,
                    (*load as f64, vm.as_str()),
                )
                .await
                .unwrap();
        }
        game += 1;
        let (placed, _) = games::put_game(
            &s,
            &format!("g{game}"),
            None,
            std::time::Duration::from_secs(60),
            placement,
        )
        .await
        .unwrap();
        let model = pick(ids.iter().cloned().zip(loads.iter().copied()), placement);
        assert_eq!(placed.vm_id, model, "{placement:?} with loads {loads:?}");
    }
    assert!(ties > 50, "the rounds exercised ties ({ties})");
}
