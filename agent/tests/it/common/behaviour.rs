//! The behaviour both sandbox backends must show, one body per test: `tests/sandbox.rs` runs
//! each on bwrap and `tests/nsjail.rs` on nsjail, each test building its own sandbox (on the
//! uids from `uid_base`) and calling the body here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use warmpool_agent::sandbox::Sandbox;
use warmpool_core::model::Outcome;

use super::*;

/// Daemons (`setsid`, `nohup`) die with their execution, ended or killed at the wall time.
pub async fn a_daemon_does_not_survive_its_execution(sandbox: &Sandbox, uid_base: u32) {
    assert_isolated(sandbox).await;
    let result = run(
        sandbox,
        &bash(
            "setsid sleep 100 </dev/null >/dev/null 2>&1 &\n\
             (nohup sleep 100 </dev/null >/dev/null 2>&1 &)\n\
             echo started\n",
        ),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert_eq!(result.stdout, "started\n");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());

    // Killed at the wall time, a daemon goes with the rest of the tree.
    let mut job = bash("setsid sleep 100 </dev/null >/dev/null 2>&1 & sleep 100");
    job.limits.wall_time_ms = 300;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());
}

/// Without cgroups (the caller's sandbox has none): RLIMIT_NPROC alone (the fallback) must
/// hold a fork bomb, and the slot must run the next job.
pub async fn a_fork_bomb_is_contained_by_the_process_limit(sandbox: &Sandbox, uid_base: u32) {
    assert_isolated(sandbox).await;
    // The bomb, then a second of waiting (builtins only: forking fails at the limit), then a
    // count of the processes it managed to make, with builtins too.
    let mut job = bash(
        ":(){ :|:& };:\n\
         end=$((SECONDS + 2)); while [ $SECONDS -lt $end ]; do :; done\n\
         n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo \"processes $n\"\n",
    );
    job.limits.wall_time_ms = 4_000;
    job.limits.max_output_bytes = 4_096;
    let started = Instant::now();
    let result = run(sandbox, &job).await;
    assert!(started.elapsed() < Duration::from_secs(8), "{result:?}");
    assert!(
        result.stderr.contains("Resource temporarily unavailable"),
        "the process limit was never hit: {result:?}"
    );
    if let Some(count) = result.stdout.strip_prefix("processes ") {
        let count: u32 = count.trim().parse().unwrap();
        assert!(count <= 64, "{count} processes: more than RLIMIT_NPROC");
    }
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());
    let result = run(sandbox, &bash("echo fine")).await;
    assert_eq!(result.stdout, "fine\n", "{result:?}");
}

/// With a pids cgroup, `pids.max` stops a fork bomb (RLIMIT_NPROC is only a backstop above
/// it, printed first so that the count shows which limit held).
pub async fn a_fork_bomb_is_stopped_by_the_pids_cgroup(sandbox: &Sandbox, uid_base: u32) {
    if !cgroups_or_skip(sandbox, "fork bomb under pids.max", |p| p.pids) {
        return;
    }
    assert_isolated(sandbox).await;
    let mut job = bash(
        "echo \"nproc $(ulimit -u)\"\n\
         :(){ :|:& };:\n\
         end=$((SECONDS + 2)); while [ $SECONDS -lt $end ]; do :; done\n\
         n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo \"processes $n\"\n",
    );
    job.limits.wall_time_ms = 4_000;
    job.limits.max_output_bytes = 4_096;
    let result = run(sandbox, &job).await;
    let mut lines = result.stdout.lines();
    let nproc: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("nproc "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no nproc line: {result:?}"));
    assert!(
        nproc > 64,
        "RLIMIT_NPROC {nproc} would hide pids.max: {result:?}"
    );
    assert!(
        result.stderr.contains("Resource temporarily unavailable"),
        "the process limit was never hit: {result:?}"
    );
    if let Some(count) = lines.next().and_then(|l| l.strip_prefix("processes ")) {
        let count: u64 = count.trim().parse().unwrap();
        assert!(count <= 64, "{count} processes: more than pids.max");
    }
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());
    assert_eq!(cgroups_of(uid_base), Vec::<PathBuf>::new());
    let result = run(sandbox, &bash("echo fine")).await;
    assert_eq!(result.stdout, "fine\n", "{result:?}");
}

/// A memory cgroup OOM-kills a memory bomb at the limit: `memory_limit`, the peak at the limit.
pub async fn a_memory_bomb_is_oom_killed_by_its_cgroup_and_ends_memory_limit(
    sandbox: &Sandbox,
    uid_base: u32,
) {
    if !cgroups_or_skip(sandbox, "memory bomb", |p| p.memory) {
        return;
    }
    assert_isolated(sandbox).await;
    // Filled bytes, so every page is really touched (untouched zero pages cost nothing).
    let mut job =
        python("print('start', flush=True)\nx = []\nwhile True:\n    x.append(b'x' * (1 << 20))\n");
    job.limits.memory_mb = 64;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::MemoryLimit, "{result:?}");
    assert_eq!(result.signal, Some(9), "{result:?}");
    assert_eq!(result.stdout, "start\n", "{result:?}");
    // The cgroup's peak: at the limit, never above it.
    let limit_kb = 64 * 1024;
    assert!(
        result.memory_kb >= limit_kb * 3 / 4 && result.memory_kb <= limit_kb,
        "peak {} KiB for a {limit_kb} KiB limit: {result:?}",
        result.memory_kb
    );
    assert!(result.wall_time_ms < 5_000, "{result:?}");
    assert_eq!(cgroups_of(uid_base), Vec::<PathBuf>::new());
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());

    // Within the limit the same sandbox runs normally, and reports a peak below it.
    let result = run(sandbox, &python("x = b'x' * (8 << 20)\nprint(len(x))\n")).await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert!(
        result.memory_kb > 8 * 1024 && result.memory_kb < 512 * 1024,
        "{result:?}"
    );
}

/// An exit status or a signal is a `runtime_error`; the init's own report stays out of stderr.
pub async fn a_non_zero_exit_or_a_signal_is_a_runtime_error(sandbox: &Sandbox) {
    let result = run(sandbox, &python("import sys\nprint('bye')\nsys.exit(3)\n")).await;
    assert_eq!(result.outcome, Outcome::RuntimeError);
    assert_eq!((result.exit_code, result.signal), (Some(3), None));
    assert_eq!(result.stdout, "bye\n");

    // The program is not pid 1 (a signal without a handler reaches it), and the init's report
    // of the signal ("Segmentation fault") stays out of the program's stderr.
    let result = run(sandbox, &bash("echo before >&2; kill -SEGV $$")).await;
    assert_eq!(result.outcome, Outcome::RuntimeError, "{result:?}");
    assert_eq!(
        (result.exit_code, result.signal),
        (None, Some(libc::SIGSEGV)),
        "{result:?}"
    );
    assert_eq!(result.stderr, "before\n", "{result:?}");
}

/// Output floods on stdout and stderr are cut at exactly `max_output_bytes`.
pub async fn an_output_flood_is_cut_at_exactly_the_cap(sandbox: &Sandbox, uid_base: u32) {
    let mut job = python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n");
    job.limits.max_output_bytes = 10_000;
    let started = Instant::now();
    let result = run(sandbox, &job).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(result.outcome, Outcome::OutputLimit);
    assert_eq!(result.stdout.len(), 10_000);
    assert!(result.stdout.bytes().all(|b| b == b'x'));
    assert!(result.stdout_truncated && !result.stderr_truncated);

    // The same on stderr, which reaches the agent through the loader's fd swap.
    let mut job = python("import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n");
    job.limits.max_output_bytes = 10_000;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::OutputLimit, "{result:?}");
    assert_eq!(result.stderr.len(), 10_000);
    assert!(result.stderr_truncated);
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());
}

/// bash and (where installed) node run with their arguments, in `/work`, on host `sandbox`.
pub async fn bash_and_javascript_run(sandbox: &Sandbox) {
    let mut script = bash("echo \"hi $1 from $0 in $PWD, home $HOME on $(hostname)\"\n");
    script.args = vec!["there".into()];
    let result = run(sandbox, &script).await;
    assert_eq!(
        result.stdout, "hi there from main.sh in /work, home /work on sandbox\n",
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::Ok);

    if !sandbox.languages().iter().any(|l| l.name == "javascript") {
        eprintln!("NOTE: node is not installed: skipping the javascript case");
        return;
    }
    let mut job = job(
        "javascript",
        &[(
            "main.js",
            "console.log('js', process.argv.slice(2).join(','))",
        )],
    );
    job.args = vec!["x".into(), "y".into()];
    // V8 reserves ~800 MB of address space at start and RLIMIT_AS counts it (without a memory
    // cgroup): below that node cannot start (see the sandbox module docs).
    job.limits.memory_mb = 2_048;
    let result = run(sandbox, &job).await;
    assert_eq!(result.stdout, "js x,y\n", "{result:?}");
    assert_eq!(result.outcome, Outcome::Ok);
}

/// Burning CPU past `cpu_time_ms` is a `time_limit`.
pub async fn burning_cpu_past_the_cpu_limit_is_a_time_limit(sandbox: &Sandbox) {
    let mut job = python("while True:\n    pass\n");
    job.limits.cpu_time_ms = 500;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    // RLIMIT_CPU is whole seconds: SIGXCPU at 1 s.
    assert_eq!(result.signal, Some(24), "{result:?}");
    assert!(result.cpu_time_ms >= 500, "{result:?}");
    assert!(result.wall_time_ms < 3_000, "{result:?}");
}

/// A sandbox killed at the wall time still reports its CPU time, from its cgroup.
pub async fn cpu_time_of_a_killed_sandbox_is_counted_by_its_cgroup(sandbox: &Sandbox) {
    if !cgroups_or_skip(sandbox, "cpu accounting", |p| p.cpu_accounting) {
        return;
    }
    let mut job = python("while True:\n    pass\n");
    job.limits.wall_time_ms = 1_500;
    job.limits.cpu_time_ms = 10_000;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    assert!(result.cpu_time_ms >= 200, "{result:?}");
    assert!(
        result.cpu_time_ms <= result.wall_time_ms * 2 + 100,
        "{result:?}"
    );
}

/// Four runs on two slots: two waves, each on its own slot uid.
pub async fn four_runs_share_two_slots(sandbox: &Sandbox, uid_base: u32) {
    let job = bash("sleep 0.3; id -u");
    let started = Instant::now();
    let (a, b, c, d) = tokio::join!(
        run(sandbox, &job),
        run(sandbox, &job),
        run(sandbox, &job),
        run(sandbox, &job)
    );
    let elapsed = started.elapsed();
    let mut uids_seen = Vec::new();
    for result in [a, b, c, d] {
        assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
        uids_seen.push(result.stdout.trim().parse::<u32>().unwrap());
    }
    uids_seen.sort();
    uids_seen.dedup();
    let base = uid_base;
    assert!(
        uids_seen.iter().all(|&u| u == base || u == base + 1),
        "{uids_seen:?}"
    );
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
}

/// Sleeping past the wall time is killed at once, by the agent's millisecond deadline.
pub async fn sleeping_past_the_wall_time_is_killed_at_once(sandbox: &Sandbox, uid_base: u32) {
    let mut job = bash("echo started; sleep 5; echo never");
    job.limits.wall_time_ms = 300;
    let started = Instant::now();
    let result = run(sandbox, &job).await;
    let elapsed = started.elapsed();
    assert_eq!(result.outcome, Outcome::TimeLimit, "{result:?}");
    assert_eq!(result.stdout, "started\n");
    // The agent's millisecond deadline, not nsjail's whole-second backstop (2 s here).
    assert!(elapsed < Duration::from_millis(1_500), "took {elapsed:?}");
    assert!(result.wall_time_ms >= 300, "{result:?}");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uid_base).await, Vec::<u32>::new());
}

/// The stdio pipes belong to the slot uid (they are the agent's, made by root), so that a
/// program can reopen them by path; before, `/dev/stdin` failed with EACCES.
pub async fn stdio_can_be_reopened_by_path(sandbox: &Sandbox) {
    check_stdio_by_path(&run(sandbox, &stdio_by_path()).await);
}

/// No network: only `lo`, and nothing reachable through it.
pub async fn the_sandbox_has_no_network(sandbox: &Sandbox) {
    assert_isolated(sandbox).await;
    // A server on the host's loopback: the sandbox's 127.0.0.1 is another one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let source = format!(
        "import socket\n\
         for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n\
         \x20   try:\n\
         \x20       socket.create_connection(addr, timeout=1)\n\
         \x20       print('connected')\n\
         \x20   except OSError as e:\n\
         \x20       print('blocked', type(e).__name__)\n\
         print([l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]])\n"
    );
    let result = run(sandbox, &python(&source)).await;
    assert_eq!(
        result.stdout, "blocked ConnectionRefusedError\nblocked OSError\n['lo']\n",
        "{result:?}"
    );
    assert!(
        listener.accept().is_err(),
        "the host's listener got a connection"
    );
}

/// Without cgroups, RLIMIT_AS makes an allocation past the limit fail inside the program: a
/// `runtime_error`, not `memory_limit`.
pub async fn without_cgroups_allocating_past_the_memory_limit_fails_inside_the_program(
    sandbox: &Sandbox,
) {
    assert_eq!(sandbox.cgroups(), None);
    let mut job = python("x = bytearray(512 * 1024 * 1024)\nprint('allocated')\n");
    job.limits.memory_mb = 128;
    let result = run(sandbox, &job).await;
    assert_eq!(result.outcome, Outcome::RuntimeError, "{result:?}");
    assert!(result.stderr.contains("MemoryError"), "{result:?}");
}
