//! What the agent's test suites share: jobs, processes of a uid, polling with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use warmpool::model::{ExecutionResult, FileSpec, Job, Limits, Outcome};

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

/// Pids of every process whose real uid is `uid`, zombies included.
pub fn processes_of(uid: u32) -> Vec<u32> {
    warmpool::procfs::processes()
        .into_iter()
        .filter(|p| p.uid == uid)
        .map(|p| p.pid as u32)
        .collect()
}

/// Polls `check` until it yields `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the sandbox suites run warm, as the agent does by default: yes unless
/// `WARMPOOL_TEST_SANDBOX_WARM=off`, which `make test` sets for a second, cold pass of the
/// sandbox and nsjail suites (so both ways are tested on every run).
pub fn warm_mode() -> bool {
    std::env::var("WARMPOOL_TEST_SANDBOX_WARM").map_or(true, |v| v != "off")
}
