//! The agent on a "fresh VM": the real `warmpool-agent` binary with nothing but instance
//! metadata, a real redis-server, and a small in-test HTTP server playing both the metadata
//! server and the Compute API's instance DELETE.
//!
//! Every test owns its redis-server (a free loopback port), its pool, and a uid range from
//! 62000 up (see `uids`), and kills what it started on drop, also when it fails. Tests wait for
//! conditions with deadlines, never for time.

use crate::common::eventually;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use fred::prelude::*;
use warmpool_core::store::Keys;
use warmpool_testkit::RedisServer;

/// One uid range per test (4 slots at most).
mod uids {
    pub const BOOT: u32 = 62_000;
    pub const DISALLOWED: u32 = 62_010;
    pub const MISSING: u32 = 62_020;
    pub const ORPHAN: u32 = 62_030;
    pub const ORPHAN_AT_BOOT: u32 = 62_040;
    pub const DEAD: u32 = 62_050;
    pub const DELETE_FAILS: u32 = 62_060;
    pub const SIGTERM: u32 = 62_070;
}

const PROJECT: &str = "test-project";
const ZONE: &str = "europe-west1-b";
const TOKEN: &str = "ya29.test-token";
/// The exit statuses documented on `lifecycle::Exit`.
const STATUS_POWER_OFF: i32 = 3;
const STATUS_DELETED: i32 = 4;

// ---------------------------------------------------------------------------------------------
// The fake metadata server and Compute API

#[derive(Default)]
struct Gce {
    attributes: HashMap<String, String>,
    /// The next this many metadata requests answer 503 (a metadata server slow after boot).
    unavailable: u32,
    /// What the instance DELETE answers.
    delete_status: u16,
    /// Every DELETE: (path, Authorization header).
    deletes: Vec<(String, String)>,
    /// Metadata requests that came without `Metadata-Flavor: Google`.
    without_flavor: u32,
}

type Shared = Arc<Mutex<Gce>>;

fn lock(gce: &Shared) -> std::sync::MutexGuard<'_, Gce> {
    gce.lock().unwrap_or_else(|e| e.into_inner())
}

async fn metadata(
    State(gce): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut gce = lock(&gce);
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        gce.without_flavor += 1;
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header",
        )
            .into_response();
    }
    if gce.unavailable > 0 {
        gce.unavailable -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let value = match path.as_str() {
        "instance/zone" => Some(format!("projects/123456/zones/{ZONE}")),
        "project/project-id" => Some(PROJECT.to_string()),
        "instance/service-accounts/default/token" => Some(
            serde_json::json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})
                .to_string(),
        ),
        other => other
            .strip_prefix("instance/attributes/")
            .or_else(|| (other == "instance/name").then_some("__name"))
            .and_then(|key| gce.attributes.get(key).cloned()),
    };
    match value {
        Some(v) => v.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete_instance(
    State(gce): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut gce = lock(&gce);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    gce.deletes.push((format!("/compute/v1/{path}"), auth));
    let status = StatusCode::from_u16(gce.delete_status).unwrap_or(StatusCode::OK);
    (status, r#"{"kind":"compute#operation","status":"RUNNING"}"#).into_response()
}

/// The fake, serving on a free loopback port until the test's runtime ends.
struct FakeGce {
    state: Shared,
    origin: String,
}

impl FakeGce {
    async fn start(instance_name: &str, attributes: &[(&str, &str)]) -> FakeGce {
        let mut gce = Gce {
            delete_status: 200,
            ..Gce::default()
        };
        gce.attributes
            .insert("__name".into(), instance_name.to_string());
        for (k, v) in attributes {
            gce.attributes.insert(k.to_string(), v.to_string());
        }
        let state = Arc::new(Mutex::new(gce));
        let app = Router::new()
            .route("/computeMetadata/v1/{*path}", get(metadata))
            .route("/compute/v1/{*path}", delete(delete_instance))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake");
        let origin = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGce { state, origin }
    }

    fn metadata_url(&self) -> String {
        format!("{}/computeMetadata/v1", self.origin)
    }

    fn deletes(&self) -> Vec<(String, String)> {
        lock(&self.state).deletes.clone()
    }
}

fn instance_path(name: &str) -> String {
    format!("/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{name}")
}

// ---------------------------------------------------------------------------------------------
// The agent process

/// A `warmpool-agent` process, killed on drop; its stderr is kept (and echoed for the test log).
struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Set once stderr reached its end (every line is in `stderr`).
    drained: Arc<AtomicBool>,
}

impl Agent {
    /// Starts the agent with only the given variables (plus PATH): nothing of the test's own
    /// environment that could configure it leaks in.
    fn spawn(args: &[&str], env: &[(&str, String)]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmpool-agent"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("WARMPOOL_AGENT_SANDBOX", "bwrap")
            .env("WARMPOOL_SANDBOX_CGROUPS", "off")
            // The agent's default (on) unless the suite runs cold (see `crate::common::warm_mode`).
            .env(
                "WARMPOOL_SANDBOX_WARM",
                if crate::common::warm_mode() {
                    "on"
                } else {
                    "off"
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn warmpool-agent");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let drained = Arc::new(AtomicBool::new(false));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            let drained = drained.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("agent: {line}");
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
                drained.store(true, Ordering::SeqCst);
            });
        }
        Agent {
            child: Some(child),
            stderr,
            drained,
        }
    }

    fn log(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn sigterm(&self) {
        if let Some(child) = &self.child {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// Waits for the agent to exit on its own.
    async fn exit(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("the agent runs");
        let status = eventually(timeout, what, || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        let drained = self.drained.clone();
        eventually(
            Duration::from_secs(10),
            "the agent's stderr to close",
            || {
                let done = drained.load(Ordering::SeqCst);
                async move { done.then_some(()) }
            },
        )
        .await;
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

async fn redis_client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("redis url"))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .build()
        .expect("redis client");
    client.init().await.expect("connect to the test redis");
    client
}

async fn vm_state(redis: &Client, pool: &str, vm_id: &str) -> Option<String> {
    redis
        .hget::<Option<String>, _, _>(Keys::new(pool).vm_state, vm_id)
        .await
        .ok()
        .flatten()
}

async fn wait_ready(redis: &Client, pool: &str, vm_id: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{vm_id} to be ready in pool {pool}"),
        || async { (vm_state(redis, pool, vm_id).await.as_deref() == Some("ready")).then_some(()) },
    )
    .await;
}

/// The usual metadata of a VM of `pool`.
fn attributes<'a>(vm_id: &'a str, pool: &'a str, redis_url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("warmpool-vm-id", vm_id),
        ("warmpool-pool", pool),
        ("warmpool-redis-url", redis_url),
    ]
}

/// The environment of an agent booted from `gce`'s metadata.
fn boot_env(gce: &FakeGce, uid_base: u32) -> Vec<(&'static str, String)> {
    vec![
        ("WARMPOOL_AGENT_FROM_METADATA", "true".into()),
        ("WARMPOOL_METADATA_URL", gce.metadata_url()),
        ("WARMPOOL_AGENT_COMPUTE_ENDPOINT", gce.origin.clone()),
        ("WARMPOOL_AGENT_METADATA_TIMEOUT_S", "20".into()),
        ("WARMPOOL_HEARTBEAT_INTERVAL_MS", "200".into()),
        ("WARMPOOL_SANDBOX_UID_BASE", uid_base.to_string()),
    ]
}

fn error_lines(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| l.starts_with("error:"))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread")]
async fn boots_from_instance_metadata_alone() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let mut attrs = attributes("vm-boot", "pool-boot", &url);
    let agent_env = format!(
        "# written by the orchestrator\n\nWARMPOOL_AGENT_SLOTS=3\nWARMPOOL_SANDBOX_UID_BASE={}\n",
        uids::BOOT
    );
    attrs.extend([
        ("warmpool-capacity", "5"),
        ("warmpool-vm-secret", "s3cret-never-logged"),
        ("warmpool-agent-env", agent_env.as_str()),
    ]);
    let gce = FakeGce::start("wp-vm-boot", &attrs).await;
    // The metadata server is slow right after boot.
    lock(&gce.state).unavailable = 3;
    let mut env = boot_env(&gce, uids::BOOT);
    env.retain(|(k, _)| *k != "WARMPOOL_SANDBOX_UID_BASE" && *k != "WARMPOOL_AGENT_FROM_METADATA");
    // Metadata wins over the process environment.
    env.push(("WARMPOOL_POOL", "not-this-pool".into()));
    env.push(("WARMPOOL_AGENT_SLOTS", "1".into()));

    // Every log line the agent can write, to prove the secret is in none.
    env.push(("WARMPOOL_LOG", "trace".into()));
    // The pool recorded this VM with its secret: only an agent that presents it registers.
    let client = redis_client(&url).await;
    let keys = Keys::new("pool-boot");
    let _: () = client
        .hset(&keys.vm_state, ("vm-boot", "provisioning"))
        .await
        .expect("HSET vm:state");
    let _: () = client
        .hset(
            &keys.vm_info,
            (
                "vm-boot",
                r#"{"created":0,"languages":[],"secret":"s3cret-never-logged"}"#,
            ),
        )
        .await
        .expect("HSET vm:info");

    let mut agent = Agent::spawn(&["--from-metadata"], &env);
    wait_ready(&client, "pool-boot", "vm-boot").await;

    let capacity: Option<String> = client
        .hget(Keys::new("pool-boot").vm_cap, "vm-boot")
        .await
        .expect("HGET vm:cap");
    assert_eq!(capacity.as_deref(), Some("5"), "warmpool-capacity");
    let log = agent.log();
    assert!(
        log.iter()
            .any(|l| l.contains("agent up") && l.contains("slots=3")),
        "warmpool-agent-env's WARMPOOL_AGENT_SLOTS=3 applied: {log:#?}"
    );
    assert!(
        log.iter().all(|l| !l.contains("s3cret-never-logged")),
        "the VM secret reached the log"
    );
    assert_eq!(lock(&gce.state).without_flavor, 0);

    agent.sigterm();
    let status = agent
        .exit(Duration::from_secs(20), "the agent to stop on SIGTERM")
        .await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_outside_the_allow_list_stops_the_agent_at_boot() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let mut attrs = attributes("vm-bad-env", "pool-bad-env", &url);
    attrs.push((
        "warmpool-agent-env",
        "WARMPOOL_AGENT_SLOTS=2\nLD_PRELOAD=/tmp/evil.so\n",
    ));
    let gce = FakeGce::start("wp-vm-bad-env", &attrs).await;
    let mut agent = Agent::spawn(&[], &boot_env(&gce, uids::DISALLOWED));

    let status = agent
        .exit(Duration::from_secs(20), "the agent to refuse to start")
        .await;
    assert_eq!(status.code(), Some(1));
    let errors = error_lines(&agent.log());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("LD_PRELOAD") && errors[0].contains("warmpool-agent-env"),
        "{errors:#?}"
    );
    let client = redis_client(&url).await;
    assert_eq!(vm_state(&client, "pool-bad-env", "vm-bad-env").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_redis_url_stops_the_agent_at_boot() {
    let gce = FakeGce::start(
        "wp-vm-no-redis",
        &[("warmpool-vm-id", "vm-x"), ("warmpool-pool", "pool-x")],
    )
    .await;
    let mut agent = Agent::spawn(&[], &boot_env(&gce, uids::MISSING));

    let status = agent
        .exit(Duration::from_secs(20), "the agent to refuse to start")
        .await;
    assert_eq!(status.code(), Some(1));
    let errors = error_lines(&agent.log());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("warmpool-redis-url"), "{errors:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_deletes_its_own_instance() {
    let mut redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let gce = FakeGce::start(
        "wp-vm-orphan",
        &attributes("vm-orphan", "pool-orphan", &url),
    )
    .await;
    let mut env = boot_env(&gce, uids::ORPHAN);
    env.push(("WARMPOOL_AGENT_ORPHAN_TIMEOUT_S", "2".into()));
    env.push(("WARMPOOL_AGENT_ON_EXIT", "delete-instance".into()));
    let mut agent = Agent::spawn(&[], &env);
    let client = redis_client(&url).await;
    wait_ready(&client, "pool-orphan", "vm-orphan").await;
    let _ = client.quit().await;
    assert!(gce.deletes().is_empty());

    redis.kill();
    let deletes = eventually(Duration::from_secs(30), "the instance DELETE", || {
        let d = gce.deletes();
        async move { (!d.is_empty()).then_some(d) }
    })
    .await;
    assert_eq!(
        deletes,
        vec![(instance_path("wp-vm-orphan"), format!("Bearer {TOKEN}"))]
    );
    let status = agent
        .exit(Duration::from_secs(20), "the orphan to exit")
        .await;
    assert_eq!(status.code(), Some(STATUS_DELETED));
    assert!(agent.log().iter().any(|l| l.contains("orphaned")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_reaches_redis_is_an_orphan_too() {
    let closed = format!(
        "redis://127.0.0.1:{}",
        warmpool_testkit::free_port().expect("a free port")
    );
    let gce = FakeGce::start(
        "wp-vm-lonely",
        &attributes("vm-lonely", "pool-lonely", &closed),
    )
    .await;
    let mut env = boot_env(&gce, uids::ORPHAN_AT_BOOT);
    env.push(("WARMPOOL_AGENT_ORPHAN_TIMEOUT_S", "2".into()));
    env.push(("WARMPOOL_AGENT_ON_EXIT", "delete-instance".into()));
    let mut agent = Agent::spawn(&[], &env);

    let status = agent
        .exit(Duration::from_secs(30), "the orphan to exit")
        .await;
    assert_eq!(status.code(), Some(STATUS_DELETED));
    assert_eq!(
        gce.deletes(),
        vec![(instance_path("wp-vm-lonely"), format!("Bearer {TOKEN}"))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_the_pool_declared_dead_deletes_its_own_instance() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let gce = FakeGce::start("wp-vm-dead", &attributes("vm-dead", "pool-dead", &url)).await;
    let mut env = boot_env(&gce, uids::DEAD);
    env.push(("WARMPOOL_AGENT_ON_EXIT", "delete-instance".into()));
    let mut agent = Agent::spawn(&[], &env);
    let client = redis_client(&url).await;
    wait_ready(&client, "pool-dead", "vm-dead").await;

    let _: i64 = client
        .hset(Keys::new("pool-dead").vm_state, ("vm-dead", "dead"))
        .await
        .expect("HSET vm:state");
    let status = agent
        .exit(Duration::from_secs(30), "the retired agent to exit")
        .await;
    assert_eq!(status.code(), Some(STATUS_DELETED));
    assert_eq!(
        gce.deletes(),
        vec![(instance_path("wp-vm-dead"), format!("Bearer {TOKEN}"))]
    );
}

/// A script that records that it ran, as the poweroff command.
fn poweroff_script(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let script = dir.join("poweroff.sh");
    let marker = dir.join("powered-off");
    std::fs::write(&script, "#!/bin/sh\necho \"$@\" > \"$1\"\n").expect("write the script");
    (
        format!("/bin/sh {} {}", script.display(), marker.display()),
        marker,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_delete_powers_off_instead() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let gce = FakeGce::start(
        "wp-vm-forbidden",
        &attributes("vm-forbidden", "pool-forbidden", &url),
    )
    .await;
    lock(&gce.state).delete_status = 403;
    let dir = tempfile::tempdir().expect("tempdir");
    let (poweroff, marker) = poweroff_script(dir.path());
    let mut env = boot_env(&gce, uids::DELETE_FAILS);
    env.push(("WARMPOOL_AGENT_ON_EXIT", "delete-instance".into()));
    env.push(("WARMPOOL_AGENT_POWEROFF_CMD", poweroff));
    let mut agent = Agent::spawn(&[], &env);
    let client = redis_client(&url).await;
    wait_ready(&client, "pool-forbidden", "vm-forbidden").await;

    let _: i64 = client
        .hset(
            Keys::new("pool-forbidden").vm_state,
            ("vm-forbidden", "dead"),
        )
        .await
        .expect("HSET vm:state");
    let status = agent
        .exit(Duration::from_secs(30), "the retired agent to exit")
        .await;
    assert_eq!(status.code(), Some(STATUS_POWER_OFF));
    assert_eq!(gce.deletes().len(), 1, "a 403 is not retried");
    assert!(marker.exists(), "the poweroff command ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_agent_and_leaves_the_vm() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let gce = FakeGce::start("wp-vm-term", &attributes("vm-term", "pool-term", &url)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (poweroff, marker) = poweroff_script(dir.path());
    let mut env = boot_env(&gce, uids::SIGTERM);
    env.push(("WARMPOOL_AGENT_ON_EXIT", "delete-instance".into()));
    env.push(("WARMPOOL_AGENT_POWEROFF_CMD", poweroff));
    let mut agent = Agent::spawn(&[], &env);
    let client = redis_client(&url).await;
    wait_ready(&client, "pool-term", "vm-term").await;

    agent.sigterm();
    let status = agent
        .exit(Duration::from_secs(20), "the agent to stop on SIGTERM")
        .await;
    assert_eq!(status.code(), Some(0));
    assert!(gce.deletes().is_empty(), "{:?}", gce.deletes());
    assert!(!marker.exists(), "the poweroff command ran");
}
