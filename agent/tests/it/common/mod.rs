//! What the agent's test suites share: jobs, the isolation proof, leftovers and cgroups of a
//! uid range. Waits, processes and Redis are the testkit's.
#![allow(dead_code)]

pub mod behaviour;

use std::path::{Path, PathBuf};
use std::time::Duration;

use warmpool_agent::sandbox::{CgroupProtections, Sandbox};
use warmpool_core::model::{ExecutionResult, FileSpec, Job, Limits, Outcome};
pub use warmpool_testkit::eventually;
pub use warmpool_testkit::process::processes_of;

pub fn limits() -> Limits {
    Limits {
        wall_time_ms: 5_000,
        cpu_time_ms: 5_000,
        memory_mb: 512,
        max_output_bytes: 64 * 1024,
    }
}

pub fn job(language: &str, files: &[(&str, &str)]) -> Job {
    Job {
        execution_id: "test-execution".into(),
        game_id: "test-game".into(),
        language: language.into(),
        files: files
            .iter()
            .map(|(name, content)| FileSpec {
                name: name.to_string(),
                content: content.to_string(),
            })
            .collect(),
        stdin: String::new(),
        args: Vec::new(),
        limits: limits(),
    }
}

pub fn bash(script: &str) -> Job {
    job("bash", &[("main.sh", script)])
}

pub fn python(source: &str) -> Job {
    job("python", &[("main.py", source)])
}

/// A program that reopens its stdio by path (`/dev/stdin`, `/dev/stdout`, `/dev/stderr`, as
/// node's `readFileSync('/dev/stdin')` does), given stdin `"in"`; its result must pass
/// [`check_stdio_by_path`].
pub fn stdio_by_path() -> Job {
    let mut job = python(
        "print('read', open('/dev/stdin').read(), flush=True)\n\
         open('/dev/stdout', 'w').write('out\\n')\n\
         open('/dev/stderr', 'w').write('err\\n')\n",
    );
    job.stdin = "in".into();
    job
}
pub fn check_stdio_by_path(result: &ExecutionResult) {
    assert_eq!(
        (result.stdout.as_str(), result.stderr.as_str()),
        ("read in\nout\n", "err\n"),
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

/// Whether the sandbox suites run warm, as the agent does by default: yes unless
/// `WARMPOOL_TEST_SANDBOX_WARM=off`, which `make test` sets for a second, cold pass of the
/// sandbox and nsjail suites (so both ways are tested on every run).
pub fn warm_mode() -> bool {
    std::env::var("WARMPOOL_TEST_SANDBOX_WARM").map_or(true, |v| v != "off")
}

/// Runs `job`, which must start (and end within a minute).
pub async fn run(sandbox: &Sandbox, job: &Job) -> ExecutionResult {
    tokio::time::timeout(Duration::from_secs(60), sandbox.run(job))
        .await
        .expect("the run ended within its limits")
        .unwrap_or_else(|e| panic!("the job did not run: {e:?}"))
}

/// Proves, through the public API, what the hostile tests rely on: the program runs as one of
/// the sandbox's (non-root) slot uids, under a process limit and the seccomp filter, and sees
/// no network interface but `lo`. Panics (so the hostile test refuses to run) otherwise.
pub async fn assert_isolated(sandbox: &Sandbox) {
    let result = run(
        sandbox,
        &bash(
            "id -u; ulimit -u; grep '^Seccomp:' /proc/self/status | tr -d ' \\t'; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        ),
    )
    .await;
    let refuse = |why: &str| -> ! {
        panic!(
            "REFUSING to run a hostile test: the sandbox is not isolated ({why}); \
             result: {result:?}"
        )
    };
    if result.outcome != Outcome::Ok {
        refuse("the isolation probe did not run cleanly");
    }
    let mut lines = result.stdout.lines();
    match lines.next().and_then(|l| l.parse::<u32>().ok()) {
        Some(0) | None => refuse("it runs as root, or its uid is unknown"),
        Some(uid) if !sandbox.uids().contains(&uid) => refuse("it runs as another uid"),
        Some(_) => {}
    }
    match lines.next().and_then(|l| l.parse::<u64>().ok()) {
        Some(n) if n <= 1024 => {}
        _ => refuse("no process limit is in force"),
    }
    if lines.next() != Some("Seccomp:2") {
        refuse("no seccomp filter is in force");
    }
    if lines.collect::<Vec<_>>() != ["lo"] {
        refuse("it sees a network interface other than lo");
    }
}

/// Waits (with a deadline) until no process of the uids `uid_base..uid_base + 4` exists; the
/// leftovers if some remain.
pub async fn leftovers_of(uid_base: u32) -> Vec<u32> {
    warmpool_testkit::settled(
        Duration::from_secs(3),
        || async move { (uid_base..uid_base + 4).flat_map(processes_of).collect() },
        Vec::is_empty,
    )
    .await
}

/// Every cgroup directory under /sys/fs/cgroup (all hierarchies) named `wp-<uid>-…` for a uid
/// of `uid_base..uid_base + 4`.
pub fn cgroups_of(uid_base: u32) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, prefixes: &[String], found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            // Not following symlinks (cpu,cpuacct aliases): each directory is seen once.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p)) {
                found.push(entry.path());
            } else if depth > 0 {
                walk(&entry.path(), depth - 1, prefixes, found);
            }
        }
    }
    let prefixes: Vec<String> = (0..4).map(|i| format!("wp-{}-", uid_base + i)).collect();
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 6, &prefixes, &mut found);
    found
}

/// `true` if the sandbox has the cgroup controller `test` needs; else prints why the test is
/// skipped, so that a machine without cgroups never looks like a pass.
pub fn cgroups_or_skip(
    sandbox: &Sandbox,
    test: &str,
    needs: fn(&CgroupProtections) -> bool,
) -> bool {
    match sandbox.cgroups() {
        Some(p) if needs(&p) => true,
        other => {
            eprintln!(
                "SKIPPED: {test}: the per-execution cgroup it needs is not available on this \
                 machine (probe found {other:?}; run as root with a writable cgroup filesystem; \
                 the agent's log says why)"
            );
            false
        }
    }
}
