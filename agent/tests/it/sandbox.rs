//! The sandbox on the real bubblewrap of this machine: no mocks.
//!
//! Each test builds its own [`Sandbox`] on its own uid range (see `uids`), so that the process
//! counts and the "nothing left behind" checks of one test never see another's processes.
//!
//! Hostile programs (daemons, fork bombs, network access) run only after [`assert_isolated`]
//! proved, through the public API, that the sandbox runs them as a non-root uid with only `lo`
//! and a process limit: on a host where that fails they refuse to run rather than loose a fork
//! bomb on it.
//!
//! The cgroup tests need per-execution cgroups (root, and a cgroup filesystem the agent may
//! write): where the probe finds none they print `SKIPPED` with the reason instead of passing
//! silently.

use std::path::Path;
use std::time::{Duration, Instant};

use warmpool_core::model::{Job, Outcome};

use crate::common::behaviour;
use crate::common::{
    assert_isolated, bash, cgroups_of, cgroups_or_skip, job, leftovers_of, processes_of, python,
    run,
};
use warmpool_agent::sandbox::{CgroupMode, Sandbox, SandboxBackend, SandboxConfig};
use warmpool_testkit::settled;

/// One uid range per test (slots never exceed 4).
mod uids {
    pub const PYTHON: u32 = 61_000;
    pub const BASH_JS: u32 = 61_010;
    pub const EXIT: u32 = 61_020;
    pub const WALL: u32 = 61_030;
    pub const DAEMON: u32 = 61_040;
    pub const FLOOD: u32 = 61_050;
    pub const NETWORK: u32 = 61_060;
    pub const UID: u32 = 61_070;
    pub const LEAK: u32 = 61_080;
    pub const FORK_BOMB: u32 = 61_090;
    pub const CONCURRENCY: u32 = 61_100;
    pub const CPU: u32 = 61_110;
    pub const ERRORS: u32 = 61_120;
    pub const MEMORY: u32 = 61_130;
    pub const PROCESS: u32 = 61_140;
    pub const CANCEL: u32 = 61_150;
    pub const OOM: u32 = 61_160;
    pub const NODE_SMALL: u32 = 61_170;
    pub const PIDS: u32 = 61_180;
    pub const CLEANUP: u32 = 61_190;
    pub const REQUIRED: u32 = 61_200;
    pub const CPU_KILLED: u32 = 61_210;
    pub const HYBRID_V2: u32 = 61_220;
    pub const DEAD_SPARE: u32 = 61_230;
    pub const TINY_COLD: u32 = 61_240;
    pub const TINY_WARM: u32 = 61_250;
    pub const FDS: u32 = 61_260;
    /// Two sandboxes: base and base + 8.
    pub const STALE: u32 = 61_270;
    pub const STDIO: u32 = 61_280;
    pub const LEFTOVERS: u32 = 61_290;
    pub const CANCELLED_GETS: u32 = 61_300;
    pub const BROKEN_STUB: u32 = 61_310;
    pub const CPU_CAP: u32 = 61_320;
}

/// Every test here runs warm (the agent's default) unless `WARMPOOL_TEST_SANDBOX_WARM=off`
/// (see [`crate::common::warm_mode`]; `make test` runs it both ways; the tests named for warm or cold
/// always run so). Warm, a slot keeps a spare sandbox of its uid between runs, so the
/// "nothing left behind" checks call `Sandbox::shutdown` (which kills the spares) first: what
/// they look for is anything of a finished run, which shutdown does not touch.
fn base_config() -> SandboxConfig {
    SandboxConfig {
        warm: crate::common::warm_mode(),
        stub: Some(env!("CARGO_BIN_EXE_warmpool-agent").into()),
        ..SandboxConfig::default()
    }
}

async fn sandbox_on(backend: SandboxBackend, uid_base: u32, slots: usize) -> Sandbox {
    Sandbox::new(SandboxConfig {
        backend,
        uid_base,
        slots,
        work_dir_mb: 16,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the {backend} sandbox does not start on this machine: {e:?}"))
}

async fn sandbox(uid_base: u32, slots: usize) -> Sandbox {
    sandbox_on(SandboxBackend::Bwrap, uid_base, slots).await
}

/// A one-slot bwrap sandbox with cgroups in `mode`.
async fn sandbox_with_cgroups(uid_base: u32, mode: CgroupMode) -> Sandbox {
    Sandbox::new(SandboxConfig {
        uid_base,
        slots: 1,
        work_dir_mb: 16,
        cgroups: mode,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the sandbox does not start on this machine: {e:?}"))
}

#[tokio::test]
async fn python_hello_world_reads_stdin_and_args() {
    let sandbox = sandbox(uids::PYTHON, 1).await;
    let python = sandbox
        .languages()
        .into_iter()
        .find(|l| l.name == "python")
        .expect("python is offered");
    assert!(python.version.starts_with('3'), "{python:?}");
    assert!(python.aliases.contains(&"py".to_string()));

    // The catalog runs python with -I, which (3.11+) keeps the script's directory off
    // sys.path: a second file is read as data, not imported.
    let mut job = job(
        "python",
        &[
            (
                "main.py",
                "import sys\nname = sys.stdin.read().strip()\n\
                 print(f'hello {name}', sys.argv[1:], open('answer.txt').read())\n",
            ),
            ("answer.txt", "42"),
        ],
    );
    job.stdin = "world\n".into();
    job.args = vec!["a b".into(), "c".into()];
    let result = run(&sandbox, &job).await;
    assert_eq!(result.stdout, "hello world ['a b', 'c'] 42\n", "{result:?}");
    assert_eq!(result.stderr, "");
    assert_eq!(result.outcome, Outcome::Ok);
    assert_eq!((result.exit_code, result.signal), (Some(0), None));
    assert!(!result.stdout_truncated && !result.stderr_truncated);
    assert!(result.memory_kb > 0, "{result:?}");
}

#[tokio::test]
async fn bash_and_javascript_run() {
    let sandbox = sandbox(uids::BASH_JS, 1).await;
    behaviour::bash_and_javascript_run(&sandbox).await;
}

fn job_js(source: &str) -> Job {
    job("javascript", &[("main.js", source)])
}

#[tokio::test]
async fn a_cancelled_run_leaves_no_process_behind() {
    let sandbox = sandbox(uids::CANCEL, 1).await;
    let mut job = bash("setsid sleep 100 & sleep 100");
    job.limits.wall_time_ms = 60_000;
    // The agent gives up on the execution (shutdown, lease lost): the future is dropped.
    let abandoned = tokio::time::timeout(Duration::from_millis(300), sandbox.run(&job)).await;
    assert!(abandoned.is_err(), "the run should still have been going");
    assert_eq!(leftovers_of(uids::CANCEL).await, Vec::<u32>::new());
    // And the slot is free again.
    let result = run(&sandbox, &bash("echo next")).await;
    assert_eq!(result.stdout, "next\n", "{result:?}");
}

#[tokio::test]
async fn a_non_zero_exit_or_a_signal_is_a_runtime_error() {
    let sandbox = sandbox(uids::EXIT, 1).await;
    behaviour::a_non_zero_exit_or_a_signal_is_a_runtime_error(&sandbox).await;
}

#[tokio::test]
async fn sleeping_past_the_wall_time_is_killed_at_once() {
    let sandbox = sandbox(uids::WALL, 1).await;
    behaviour::sleeping_past_the_wall_time_is_killed_at_once(&sandbox, uids::WALL).await;
}

#[tokio::test]
async fn a_daemon_does_not_survive_its_execution() {
    let sandbox = sandbox(uids::DAEMON, 1).await;
    behaviour::a_daemon_does_not_survive_its_execution(&sandbox, uids::DAEMON).await;
}

#[tokio::test]
async fn an_output_flood_is_cut_at_exactly_the_cap() {
    let sandbox = sandbox(uids::FLOOD, 1).await;
    behaviour::an_output_flood_is_cut_at_exactly_the_cap(&sandbox, uids::FLOOD).await;
}

#[tokio::test]
async fn the_sandbox_has_no_network() {
    let sandbox = sandbox(uids::NETWORK, 1).await;
    behaviour::the_sandbox_has_no_network(&sandbox).await;
}

#[tokio::test]
async fn programs_run_as_the_slot_uid_not_root() {
    let sandbox = sandbox(uids::UID, 1).await;
    let result = run(
        &sandbox,
        &bash("id -u; id -g; id -G; cat /proc/self/status | grep CapEff"),
    )
    .await;
    let base = uids::UID;
    assert_eq!(
        result.stdout,
        format!("{base}\n{base}\n{base}\nCapEff:\t0000000000000000\n"),
        "{result:?}"
    );
}

#[tokio::test]
async fn files_of_one_execution_are_not_visible_to_the_next() {
    // One slot: both executions run as the same uid, the worst case.
    let sandbox = sandbox(uids::LEAK, 1).await;
    let result = run(
        &sandbox,
        &bash("echo secret > /work/secret; echo secret > /tmp/secret; ls /work /tmp"),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    let result = run(
        &sandbox,
        &python("import os\nprint(sorted(os.listdir('/work')), os.listdir('/tmp'))\n"),
    )
    .await;
    assert_eq!(result.stdout, "['main.py'] []\n", "{result:?}");
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_process_limit() {
    // Without cgroups: RLIMIT_NPROC alone (the fallback) must hold it.
    let sandbox = sandbox_with_cgroups(uids::FORK_BOMB, CgroupMode::Off).await;
    behaviour::a_fork_bomb_is_contained_by_the_process_limit(&sandbox, uids::FORK_BOMB).await;
}

#[tokio::test]
async fn four_runs_share_two_slots() {
    let sandbox = sandbox(uids::CONCURRENCY, 2).await;
    behaviour::four_runs_share_two_slots(&sandbox, uids::CONCURRENCY).await;
}

#[tokio::test]
async fn burning_cpu_past_the_cpu_limit_is_a_time_limit() {
    let sandbox = sandbox(uids::CPU, 1).await;
    behaviour::burning_cpu_past_the_cpu_limit_is_a_time_limit(&sandbox).await;
}

#[tokio::test]
async fn jobs_the_system_cannot_run_are_errors_with_a_kind() {
    let sandbox = sandbox(uids::ERRORS, 1).await;
    let err = sandbox
        .run(&job("cobol", &[("main.cob", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "language_unavailable");
    for name in ["../escape.py", "a/b.py", ".."] {
        let err = sandbox
            .run(&job("python", &[(name, "")]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_job", "{name}");
    }
    let err = sandbox.run(&job("python", &[])).await.unwrap_err();
    assert_eq!(err.kind(), "invalid_job");
}

#[tokio::test]
async fn without_cgroups_allocating_past_the_memory_limit_fails_inside_the_program() {
    let sandbox = sandbox_with_cgroups(uids::MEMORY, CgroupMode::Off).await;
    behaviour::without_cgroups_allocating_past_the_memory_limit_fails_inside_the_program(&sandbox)
        .await;
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_by_its_cgroup_and_ends_memory_limit() {
    let sandbox = sandbox_with_cgroups(uids::OOM, CgroupMode::Auto).await;
    behaviour::a_memory_bomb_is_oom_killed_by_its_cgroup_and_ends_memory_limit(&sandbox, uids::OOM)
        .await;
}

#[tokio::test]
async fn node_runs_at_a_normal_memory_limit_under_the_memory_cgroup() {
    let sandbox = sandbox_with_cgroups(uids::NODE_SMALL, CgroupMode::Auto).await;
    if !cgroups_or_skip(&sandbox, "node at 128 MB", |p| p.memory) {
        return;
    }
    if !sandbox.languages().iter().any(|l| l.name == "javascript") {
        eprintln!("SKIPPED node at 128 MB: node is not installed on this machine");
        return;
    }
    // V8 reserves ~1 GB of address space: under RLIMIT_AS alone it could not start at 128 MB.
    let mut job = job_js("console.log(1)");
    job.limits.memory_mb = 128;
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert_eq!(result.stdout, "1\n", "{result:?}");
    assert!(result.memory_kb < 128 * 1024, "{result:?}");
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_the_pids_cgroup() {
    let sandbox = sandbox_with_cgroups(uids::PIDS, CgroupMode::Auto).await;
    behaviour::a_fork_bomb_is_stopped_by_the_pids_cgroup(&sandbox, uids::PIDS).await;
}

#[tokio::test]
async fn no_cgroup_is_left_after_runs_that_end_in_every_way() {
    let sandbox = sandbox_with_cgroups(uids::CLEANUP, CgroupMode::Auto).await;
    if !cgroups_or_skip(&sandbox, "cgroup clean-up", |_| true) {
        return;
    }
    let ok = run(&sandbox, &bash("echo ok")).await;
    assert_eq!(ok.outcome, Outcome::Ok, "{ok:?}");
    let mut job = bash("setsid sleep 100 </dev/null >/dev/null 2>&1 & sleep 100");
    job.limits.wall_time_ms = 300;
    let killed = run(&sandbox, &job).await;
    assert_eq!(killed.outcome, Outcome::TimeLimit, "{killed:?}");
    sandbox.shutdown().await; // the warm spares (see base_config)
    assert_eq!(cgroups_of(uids::CLEANUP), Vec::<std::path::PathBuf>::new());

    // A cancelled run's cgroup goes too, once its processes are dead.
    job.limits.wall_time_ms = 60_000;
    let abandoned = tokio::time::timeout(Duration::from_millis(300), sandbox.run(&job)).await;
    assert!(abandoned.is_err(), "the run should still have been going");
    let left = settled(
        Duration::from_secs(3),
        || async { cgroups_of(uids::CLEANUP) },
        Vec::is_empty,
    )
    .await;
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
    assert_eq!(leftovers_of(uids::CLEANUP).await, Vec::<u32>::new());
}

#[tokio::test]
async fn cpu_time_of_a_killed_sandbox_is_counted_by_its_cgroup() {
    let sandbox = sandbox_with_cgroups(uids::CPU_KILLED, CgroupMode::Auto).await;
    behaviour::cpu_time_of_a_killed_sandbox_is_counted_by_its_cgroup(&sandbox).await;
}

#[tokio::test]
async fn required_cgroups_that_cannot_be_used_stop_the_start_with_a_clear_error() {
    let config = SandboxConfig {
        uid_base: uids::REQUIRED,
        slots: 1,
        work_dir_mb: 16,
        cgroups: CgroupMode::Required,
        cgroup_fs: "/nonexistent/cgroup".into(),
        ..base_config()
    };
    let err = match Sandbox::new(config.clone()).await {
        Ok(_) => panic!("a sandbox started without the cgroups it requires"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "cgroups_unavailable");
    let message = err.to_string();
    assert!(
        message.contains("required") && message.contains("/nonexistent/cgroup"),
        "{message}"
    );
    // Auto on the same host starts, without cgroups, and says so.
    let sandbox = Sandbox::new(SandboxConfig {
        cgroups: CgroupMode::Auto,
        ..config
    })
    .await
    .unwrap_or_else(|e| panic!("auto mode must start without cgroups: {e:?}"));
    assert_eq!(sandbox.cgroups(), None);
    let result = run(&sandbox, &bash("echo ok")).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

#[tokio::test]
async fn the_process_backend_runs_the_same_jobs_with_the_same_limits() {
    let sandbox = sandbox_on(SandboxBackend::Process, uids::PROCESS, 1).await;
    let mut job = python("import sys\nprint('hi', sys.stdin.read(), sys.argv[1:])\n");
    job.stdin = "there".into();
    job.args = vec!["x".into()];
    let result = run(&sandbox, &job).await;
    assert_eq!(result.stdout, "hi there ['x']\n", "{result:?}");
    assert_eq!(result.outcome, Outcome::Ok);

    let mut job = bash("sleep 5");
    job.limits.wall_time_ms = 300;
    let started = Instant::now();
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut job = python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n");
    job.limits.max_output_bytes = 1_000;
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::OutputLimit);
    assert_eq!(result.stdout.len(), 1_000);
}

#[tokio::test]
async fn on_a_v2_hierarchy_without_memory_or_pids_auto_mode_uses_what_there_is() {
    // A hybrid host (v1 controllers, plus a v2 mount holding none of memory and pids) runs the
    // v2 code on its real kernel: create, join, count CPU, kill, remove.
    let unified = Path::new("/sys/fs/cgroup/unified");
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"));
    if !controllers
        .as_ref()
        .is_ok_and(|c| !c.contains("memory") && !c.contains("pids"))
    {
        eprintln!(
            "SKIPPED v2 without memory and pids: this machine has no such v2 mount at {} \
             ({controllers:?})",
            unified.display()
        );
        return;
    }
    let sandbox = Sandbox::new(SandboxConfig {
        uid_base: uids::HYBRID_V2,
        slots: 1,
        work_dir_mb: 16,
        cgroup_fs: unified.into(),
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("auto mode must start on a partial v2 hierarchy: {e:?}"));
    let Some(protections) = sandbox.cgroups() else {
        eprintln!("SKIPPED v2 without memory and pids: the agent may not create cgroups there");
        return;
    };
    assert!(!protections.memory && !protections.pids && protections.cpu_accounting);
    let mut job = python("while True:\n    pass\n");
    job.limits.wall_time_ms = 1_000;
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    assert!(result.cpu_time_ms >= 200, "the cgroup's count: {result:?}");
    // No memory cgroup: RLIMIT_AS is still in force.
    let mut job = python("x = bytearray(512 * 1024 * 1024)\n");
    job.limits.memory_mb = 128;
    let result = run(&sandbox, &job).await;
    sandbox.shutdown().await; // the warm spares (see base_config)
    assert_eq!(result.outcome, Outcome::RuntimeError, "{result:?}");
    assert_eq!(
        cgroups_of(uids::HYBRID_V2),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn a_spare_that_died_while_it_waited_is_replaced_at_its_job() {
    let sandbox = Sandbox::new(SandboxConfig {
        uid_base: uids::DEAD_SPARE,
        slots: 1,
        work_dir_mb: 16,
        warm: true,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the sandbox does not start on this machine: {e:?}"));
    assert_isolated(&sandbox).await;
    // Every refill done: the slot's spare (when warm) is waiting. Kill it, as the OOM killer
    // or an operator might: these are this test's own sandbox processes, found by their uid.
    sandbox.settle().await;
    let spare = processes_of(uids::DEAD_SPARE);
    for &pid in &spare {
        // SAFETY: plain syscall; a process that is already gone is fine.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    // SIGKILL is delivered asynchronously: wait until each is dead (gone, or a zombie until
    // the agent's reaper takes it). A spare that dies in the very instant of its hand-over
    // ends that job as killed, as a cold sandbox killed while it starts would.
    let dead = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    let all_dead = settled(
        Duration::from_secs(5),
        || async { spare.iter().all(dead) },
        |&all_dead| all_dead,
    )
    .await;
    assert!(all_dead, "the spare's processes would not die");
    let mut job = python("import sys\nprint(sys.stdin.read(), sys.argv[1:])\n");
    job.stdin = "still".into();
    job.args = vec!["fine".into()];
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert_eq!(result.stdout, "still ['fine']\n", "{result:?}");
    sandbox.shutdown().await;
    assert_eq!(leftovers_of(uids::DEAD_SPARE).await, Vec::<u32>::new());
    assert_eq!(
        cgroups_of(uids::DEAD_SPARE),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn a_job_smaller_than_what_a_spare_holds_ends_as_it_would_cold() {
    let cold = Sandbox::new(SandboxConfig {
        uid_base: uids::TINY_COLD,
        slots: 1,
        work_dir_mb: 16,
        warm: false,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the sandbox does not start on this machine: {e:?}"));
    let warm = Sandbox::new(SandboxConfig {
        uid_base: uids::TINY_WARM,
        slots: 1,
        work_dir_mb: 16,
        warm: true,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the sandbox does not start on this machine: {e:?}"));
    if !cgroups_or_skip(&warm, "a 1 MiB job", |p| p.memory) {
        return;
    }
    // 1 MiB is a valid limit (the API allows 1..=max), below what bwrap and the stub hold: the
    // spare cannot take the job and it runs cold. A job that only just fits in 1 MiB ends one
    // way or the other with what happens to be cached, so the job here needs far more: cold
    // or through the warm sandbox's fallback, it must end `memory_limit`, never in an error.
    let mut job = python("b = bytearray(64 << 20)\nprint(len(b))");
    job.limits.memory_mb = 1;
    let expected = run(&cold, &job).await;
    assert_eq!(expected.outcome, Outcome::MemoryLimit, "cold: {expected:?}");
    let result = run(&warm, &job).await;
    assert_eq!(
        result.outcome, expected.outcome,
        "{result:?} vs cold {expected:?}"
    );
    // And the warm sandbox goes on as before.
    let result = run(&warm, &bash("echo next")).await;
    assert_eq!(result.stdout, "next\n", "{result:?}");
    warm.shutdown().await;
    assert_eq!(leftovers_of(uids::TINY_WARM).await, Vec::<u32>::new());
}

#[tokio::test]
async fn the_program_inherits_no_file_descriptor_but_its_three_streams() {
    let sandbox = sandbox(uids::FDS, 1).await;
    // Each fd's target; the listing's own directory fd is closed by the time it is looked
    // at ("-").
    let result = run(
        &sandbox,
        &python(
            "import os\nfor fd in sorted(os.listdir('/proc/self/fd'), key=int):\n    \
             print(fd, os.readlink('/proc/self/fd/' + fd) if os.path.exists('/proc/self/fd/' + fd) else '-')\n",
        ),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    let fds: Vec<&str> = result
        .stdout
        .lines()
        .filter(|line| !line.ends_with(" -"))
        .collect();
    assert_eq!(fds.len(), 3, "{result:?}");
    for (line, fd) in fds.iter().zip(["0 ", "1 ", "2 "]) {
        assert!(line.starts_with(fd) && line.contains("pipe:"), "{result:?}");
    }
}

#[tokio::test]
async fn what_a_dead_agent_left_in_its_cgroups_is_killed_at_the_next_start() {
    let sandbox = sandbox_with_cgroups(uids::STALE, CgroupMode::Auto).await;
    if !cgroups_or_skip(&sandbox, "a dead agent's cgroups", |_| true) {
        return;
    }
    // Where execution cgroups are made: seen beside a running one.
    let mut job = bash("sleep 2");
    job.limits.wall_time_ms = 3_000;
    let (result, dirs) = tokio::join!(
        run(&sandbox, &job),
        settled(
            Duration::from_secs(2),
            || async { cgroups_of(uids::STALE) },
            |dirs| !dirs.is_empty(),
        )
    );
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    let mut parents: Vec<_> = dirs.iter().filter_map(|d| d.parent()).collect();
    parents.sort();
    parents.dedup();
    assert!(!parents.is_empty(), "no execution cgroup was seen");
    // A dead agent's pid, and what it left: a process (this test's own child) in cgroups
    // named as that agent's, as bwrap's inner process is when the agent dies during set-up.
    let mut gone = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let mut left = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let stale: Vec<_> = parents
        .iter()
        .map(|parent| parent.join(format!("wp-{}-{dead_pid}-0", uids::STALE)))
        .collect();
    for dir in &stale {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), left.id().to_string()).unwrap();
    }
    let next = sandbox_with_cgroups(uids::STALE + 8, CgroupMode::Auto).await;
    let status = settled(
        Duration::from_secs(5),
        || {
            // Sampled here, not in the future: the future may not borrow `left`.
            let status = left.try_wait().unwrap();
            async move { status }
        },
        Option::is_some,
    )
    .await;
    if status.is_none() {
        let _ = left.kill();
        let _ = left.wait();
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.and_then(|s| s.signal()), Some(9), "not killed");
    for dir in &stale {
        assert!(!dir.exists(), "{} was left", dir.display());
    }
    drop(next);
}

/// The stdio pipes belong to the slot uid (they are the agent's, made by root), so that a
/// program can reopen them by path; before, `/dev/stdin` failed with EACCES.
#[tokio::test]
async fn stdio_can_be_reopened_by_path() {
    let sandbox = sandbox(uids::STDIO, 1).await;
    behaviour::stdio_can_be_reopened_by_path(&sandbox).await;
}

/// A process of `uid` running `sleep 60` as `argv0`, the child of this (root) test process.
fn sleeper_as(uid: u32, argv0: &str, script: Option<&str>) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut command = match script {
        Some(script) => {
            let mut c = std::process::Command::new("/bin/bash");
            c.args(["-c", script]);
            c
        }
        None => {
            let mut c = std::process::Command::new("/bin/sleep");
            c.arg0(argv0).arg("60");
            c
        }
    };
    // SAFETY: setgid/setuid only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setgid(uid) == -1 || libc::setuid(uid) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().expect("spawn a sleeper")
}

/// What a dead agent's sandbox set-up can leave (a `bwrap` of a slot uid, reparented outside
/// the slot uids) is killed when the next agent starts on those uids; a launcher whose parent
/// is of the range (a live sandbox's) and a program of the range (the `process` backend's,
/// the agent's child) are not. Stand-ins: `sleep` run as `bwrap`.
#[tokio::test]
async fn a_launcher_a_dead_agent_left_is_killed_at_the_next_start() {
    let uid = uids::LEFTOVERS;
    let mut orphan = sleeper_as(uid, "bwrap", None);
    let mut program = sleeper_as(uid, "python3", None);
    // bash (of the range) parent of a `bwrap`: a live sandbox's shape.
    let mut live = sleeper_as(uid, "", Some("(exec -a bwrap sleep 60) & wait"));
    let live_child =
        crate::common::eventually(Duration::from_secs(5), "the live bwrap", || async {
            processes_of(uid).into_iter().find(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"bwrap\0") && pid != orphan.id())
            })
        })
        .await;

    let sandbox = sandbox(uid, 1).await;
    let status = crate::common::eventually(Duration::from_secs(5), "the orphan killed", || {
        let exited = orphan.try_wait().unwrap();
        async move { exited }
    })
    .await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(program.try_wait().unwrap(), None, "the program was killed");
    assert_eq!(
        live.try_wait().unwrap(),
        None,
        "the live sandbox's parent was killed"
    );
    assert!(
        Path::new(&format!("/proc/{live_child}")).exists(),
        "the live sandbox's bwrap was killed"
    );
    for child in [&mut program, &mut live] {
        let _ = child.kill();
        let _ = child.wait();
    }
    unsafe { libc::kill(live_child as i32, libc::SIGKILL) };
    // The sandbox itself starts and runs as usual.
    let result = run(&sandbox, &bash("echo fine")).await;
    assert_eq!(result.stdout, "fine\n", "{result:?}");
    sandbox.shutdown().await;
}

/// Runs cancelled at every point of their start (waiting for the slot, while the slot's spare
/// is prepared, while the sandbox starts) lose no slot: deadpool drops a slot whose `get` was
/// cancelled mid-recycle, and its index must come back (seen: every later run failed with
/// "more slots made than configured"). One slot, so a lost one would fail the last run.
#[tokio::test]
async fn runs_cancelled_while_they_start_lose_no_slot() {
    let sandbox = sandbox(uids::CANCELLED_GETS, 1).await;
    for delay_ms in 0..30 {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(delay_ms),
            sandbox.run(&bash("sleep 5")),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "a 5 s run ended within {delay_ms} ms: {cancelled:?}"
        );
    }
    let result = run(&sandbox, &bash("echo still")).await;
    assert_eq!(result.stdout, "still\n", "{result:?}");
    sandbox.shutdown().await;
}

/// A warm path that cannot start (here a stub that is not the agent: `/bin/false` exits before
/// it is ready) costs time, never a job: the agent starts, and every run runs cold.
#[tokio::test]
async fn jobs_run_cold_when_no_spare_can_start() {
    let sandbox = Sandbox::new(SandboxConfig {
        uid_base: uids::BROKEN_STUB,
        slots: 1,
        work_dir_mb: 16,
        warm: true,
        stub: Some("/bin/false".into()),
        ..SandboxConfig::default()
    })
    .await
    .expect("the agent starts although no spare can");
    assert!(sandbox.warm());
    for _ in 0..2 {
        let result = run(&sandbox, &bash("echo cold")).await;
        assert_eq!(result.stdout, "cold\n", "{result:?}");
        assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    }
    sandbox.shutdown().await;
}

/// The per-execution CPU cap (`WARMPOOL_SANDBOX_CPUS`, here half a core): two processes
/// spinning for 1.5 s get at most half a core's time between them (uncapped, on this 2-core
/// machine, they take up to 3 s of CPU), so one game cannot starve the others on its VM.
#[tokio::test]
async fn a_busy_program_gets_no_more_cpu_than_its_cap() {
    let sandbox = Sandbox::new(SandboxConfig {
        uid_base: uids::CPU_CAP,
        slots: 1,
        work_dir_mb: 16,
        cpu_millis: 500,
        ..base_config()
    })
    .await
    .unwrap_or_else(|e| panic!("the sandbox does not start on this machine: {e:?}"));
    if !cgroups_or_skip(&sandbox, "the CPU cap", |p| p.cpu_limit && p.cpu_accounting) {
        return;
    }
    let mut job = python(
        "import os, time\n\
         end = time.time() + 1.5\n\
         child = os.fork()\n\
         while time.time() < end:\n    pass\n\
         if child:\n    os.wait()\n",
    );
    job.limits.wall_time_ms = 10_000;
    job.limits.cpu_time_ms = 10_000;
    let result = run(&sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    // Half of the wall time, plus one period's (100 ms) worth of burst and some start-up.
    let cap_ms = result.wall_time_ms / 2 + 100;
    assert!(
        result.cpu_time_ms <= cap_ms,
        "{} ms of CPU in {} ms of wall time: over half a core ({result:?})",
        result.cpu_time_ms,
        result.wall_time_ms
    );
    sandbox.shutdown().await;
}
