//! The binaries as an operator runs them: `warmpool-tools demo` (which drives `warmpool dev`),
//! `warmpool exec`, and start-up errors that name the missing setting.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;
use warmpool_testkit::process::processes_matching;

#[test]
fn the_demo_plays_a_game_through_a_cold_start_and_cleans_up() {
    let out = Command::new(sibling_bin("warmpool-tools"))
        .args(["demo", "--boot-delay-ms", "1500"])
        .env("WARMPOOL_AGENT_BIN", agent_bin())
        .env("WARMPOOL_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ready: http://127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("\"state\": \"pending\""),
        "the game waited for the cold start:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("\"finished\" on \"default-").count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("network: none"), "{stdout}");
    assert!(stdout.contains("stopped:"), "{stdout}");
    assert!(stdout.contains("scaled to zero: no VM left"), "{stdout}");
    // `dev` stopped its agent (its VM id is on its command line).
    assert!(
        processes_matching("--pool default").is_empty(),
        "an agent outlived `warmpool dev`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_prints_the_programs_output_and_exits_with_its_code() {
    let port = warmpool_testkit::free_port().unwrap();
    let mut dev = Command::new(warmpool_bin())
        .arg("dev")
        .env("WARMPOOL_LISTEN", format!("127.0.0.1:{port}"))
        .env("WARMPOOL_POOL", "cli")
        .env("WARMPOOL_AGENT_BIN", agent_bin())
        .env("WARMPOOL_LOG", "warn")
        .env_remove("WARMPOOL_REDIS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert_eq!(ready, format!("ready: http://127.0.0.1:{port}"));

    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("hello.py");
    std::fs::write(
        &program,
        "import sys\nprint('hi', sys.stdin.read())\nsys.exit(7)\n",
    )
    .unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "there").unwrap();
    let out = Command::new(warmpool_bin())
        .args(["exec", "--game", "cli-game"])
        .arg(&program)
        .arg("--stdin")
        .arg(&input)
        .env("WARMPOOL_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(processes_matching("--pool cli").is_empty());
}

#[test]
fn serve_names_what_is_missing() {
    let out = Command::new(warmpool_bin())
        .arg("serve")
        .env_remove("WARMPOOL_REDIS_URL")
        .env("WARMPOOL_API_TOKENS", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARMPOOL_REDIS_URL"), "{err}");

    let out = Command::new(warmpool_bin())
        .arg("serve")
        .env("WARMPOOL_REDIS_URL", "redis://127.0.0.1:1")
        .env("WARMPOOL_PLACEMENT", "random")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARMPOOL_PLACEMENT") || err.contains("--placement"),
        "{err}"
    );
    assert!(err.contains("random"), "{err}");

    let out = Command::new(warmpool_bin())
        .arg("serve")
        .env("WARMPOOL_REDIS_URL", "redis://127.0.0.1:1")
        .env("WARMPOOL_API_TOKENS", "t")
        .env("WARMPOOL_POOL", "Bad Pool")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARMPOOL_POOL"));

    // The gce provider: each missing required value is named, on one line, before anything
    // is started.
    for (unset, named) in [
        ("WARMPOOL_GCE_PROJECT", "WARMPOOL_GCE_PROJECT"),
        ("WARMPOOL_GCE_ZONES", "WARMPOOL_GCE_ZONES"),
        ("WARMPOOL_GCE_AGENT_IMAGE", "WARMPOOL_GCE_AGENT_IMAGE"),
    ] {
        let mut cmd = Command::new(warmpool_bin());
        cmd.arg("serve")
            .env("WARMPOOL_REDIS_URL", "redis://127.0.0.1:1")
            .env("WARMPOOL_API_TOKENS", "t")
            .env("WARMPOOL_PROVIDER", "gce")
            .env("WARMPOOL_GCE_PROJECT", "p")
            .env("WARMPOOL_GCE_ZONES", "europe-west1-b")
            .env("WARMPOOL_GCE_AGENT_IMAGE", "img")
            .env_remove(unset);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(named), "{err}");
    }
}

#[test]
fn worker_threads_follow_the_setting() {
    let redis = RedisServer::start().unwrap();
    for setting in ["1", "3"] {
        let port = warmpool_testkit::free_port().unwrap();
        let mut serve = Command::new(warmpool_bin())
            .arg("serve")
            .env("WARMPOOL_REDIS_URL", redis.url())
            .env("WARMPOOL_API_TOKENS", "t")
            .env("WARMPOOL_PROVIDER", "none")
            .env("WARMPOOL_LISTEN", format!("127.0.0.1:{port}"))
            .env("WARMPOOL_WORKER_THREADS", setting)
            .env("WARMPOOL_LOG", "warn,warmpool=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The replica logs its worker count when it starts listening.
        let stderr = BufReader::new(serve.stderr.take().unwrap());
        let line = stderr
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening"))
            .expect("a listening line");
        let _ = serve.kill();
        let _ = serve.wait();
        assert_eq!(
            line_value(&line, "worker_threads").as_deref(),
            Some(setting),
            "WARMPOOL_WORKER_THREADS={setting}: {line}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "no colour codes when stderr is not a terminal: {line:?}"
        );
    }
}

/// The value of `name=value` in a log line (ANSI colour codes stripped).
fn line_value(line: &str, name: &str) -> Option<String> {
    let mut clean = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            clean.push(c);
        }
    }
    let at = clean.find(&format!("{name}="))? + name.len() + 1;
    Some(clean[at..].split_whitespace().next()?.to_string())
}

#[test]
fn the_tools_commands_of_old_still_answer_through_warmpool_tools() {
    for command in ["bench", "demo"] {
        let out = Command::new(warmpool_bin())
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Usage: warmpool-tools {command}")),
            "`warmpool {command}` runs `warmpool-tools {command}`: {help}"
        );
    }
}
