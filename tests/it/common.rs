//! The orchestrator suites' harness: in-process orchestrator replicas, a client of their API,
//! real agent processes. Redis and the waits are the testkit's.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use warmpool::config::Config;
use warmpool::config::ProviderKind;
pub use warmpool_testkit::redis::store;
pub use warmpool_testkit::{eventually, until_ok, RedisServer};

pub const TOKEN: &str = "test-token";

/// A configuration for tests: no provider (tests start agents themselves), fast sweeps.
pub fn test_config(pool: &str) -> Config {
    let mut c = Config::defaults();
    c.pool = pool.to_string();
    c.api_tokens = Some(TOKEN.to_string());
    c.provider = ProviderKind::None;
    c.min_vms = 0;
    c.sweep_interval = Duration::from_millis(100);
    c.redis_timeout = Duration::from_secs(1);
    c
}

/// One orchestrator replica running in this process.
pub struct Replica {
    pub url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub async fn start(config: Config, redis_url: &str) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(warmpool::server::run(
            config,
            redis_url.to_string(),
            listener,
            shutdown.clone(),
        ));
        let replica = Replica {
            url,
            shutdown,
            task,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/readyz", replica.url);
        eventually(Duration::from_secs(10), "the replica to be ready", || {
            let client = client.clone();
            let ready = ready.clone();
            async move {
                let r = client.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        replica
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A small client of the REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            // Longer than any wait_s a test asks for; a hung replica fails the test, not CI.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(75))
                .build()
                .unwrap(),
            token: Some(TOKEN.to_string()),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    /// A GET that answers `None` when nothing listens (a replica still starting or killed).
    pub async fn try_status(&self, path: &str) -> Option<u16> {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    pub async fn put_game(&self, game: &str) -> Reply {
        self.send("PUT", &format!("/v1/games/{game}"), None).await
    }

    pub async fn submit(&self, game: &str, body: Value, wait_s: u64) -> Reply {
        self.send(
            "POST",
            &format!("/v1/games/{game}/executions?wait_s={wait_s}"),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    pub async fn execution(&self, id: &str, wait_s: u64) -> Reply {
        self.get(&format!("/v1/executions/{id}?wait_s={wait_s}"))
            .await
    }

    /// Waits (with the API's wait_s) until the execution is final, up to `timeout`.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execution(id, 5).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let state = r.body["state"].as_str().unwrap_or("").to_string();
            if !matches!(state.as_str(), "queued" | "running") {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} still {state} after {timeout:?}"
            );
        }
    }
}

/// A python program as an execution request body.
pub fn python(code: &str) -> Value {
    serde_json::json!({"language": "python", "files": [{"name": "main.py", "content": code}]})
}

/// Path of the agent binary (built by `make test` / `cargo build --workspace --bins`).
pub fn agent_bin() -> PathBuf {
    match std::env::var("WARMPOOL_AGENT_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => sibling_bin("warmpool-agent"),
    }
}

/// A binary of another workspace crate, built beside the tests (`cargo build --workspace
/// --bins`, which `make test` runs first).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, or `make test`)",
        bin.display()
    );
    bin
}

/// Path of the `warmpool` binary.
pub fn warmpool_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warmpool"))
}

/// A real agent process; killed (and reaped) on drop.
pub struct Agent {
    pub vm_id: String,
    child: Option<Child>,
}

pub struct AgentOptions {
    pub capacity: u32,
    pub slots: u32,
    pub boot_delay_ms: u64,
    pub sandbox: &'static str,
    /// Sandbox uids: hostile tests use their own range, so a fork bomb's process limit is not
    /// shared with other tests' sandboxes.
    pub uid_base: u32,
    /// More environment, last (it overrides the above).
    pub env: Vec<(&'static str, String)>,
    /// Where its stderr (its log) goes; `None`: the test's.
    pub log: Option<PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            capacity: 8,
            slots: 2,
            boot_delay_ms: 0,
            sandbox: "bwrap",
            uid_base: 60_000,
            env: Vec::new(),
            log: None,
        }
    }
}

impl Agent {
    pub fn spawn(redis_url: &str, pool: &str, vm_id: &str, opts: AgentOptions) -> Agent {
        let stderr = match &opts.log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("the agent's log file")),
            None => Stdio::inherit(),
        };
        let child = Command::new(agent_bin())
            .arg("--vm-id")
            .arg(vm_id)
            .env("WARMPOOL_REDIS_URL", redis_url)
            .env("WARMPOOL_POOL", pool)
            .env("WARMPOOL_VM_CAPACITY", opts.capacity.to_string())
            .env("WARMPOOL_AGENT_SLOTS", opts.slots.to_string())
            .env(
                "WARMPOOL_AGENT_BOOT_DELAY_MS",
                opts.boot_delay_ms.to_string(),
            )
            .env("WARMPOOL_AGENT_SANDBOX", opts.sandbox)
            .env("WARMPOOL_HEARTBEAT_INTERVAL_MS", "200")
            .env("WARMPOOL_SANDBOX_UID_BASE", opts.uid_base.to_string())
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the agent");
        Agent {
            vm_id: vm_id.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then wait for a clean exit (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        warmpool_testkit::process::stop(&mut child, Duration::from_secs(10))
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

/// Waits until the pool shows `vm_id` Ready.
pub async fn wait_ready(api: &Api, vm_id: &str) {
    eventually(
        Duration::from_secs(15),
        &format!("{vm_id} to be ready"),
        || {
            let api = api.clone();
            let vm_id = vm_id.to_string();
            async move {
                let r = api.get("/v1/pool").await;
                r.body["vms"]
                    .as_array()?
                    .iter()
                    .any(|vm| vm["vm_id"] == vm_id.as_str() && vm["state"] == "ready")
                    .then_some(())
            }
        },
    )
    .await;
}
