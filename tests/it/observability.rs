//! What an operator sees of a running pool: JSON logs with Cloud Logging's fields, one trace
//! id from the request through the agent, no secret in any line.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SECRET_TOKEN: &str = "tok-3f8a9c1d-never-in-a-log";

/// Every line of a JSON log, parsed (a line that is not one JSON object fails the test).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the log");
    assert!(!text.contains('\u{1b}'), "no ANSI escape in a log file");
    assert!(
        !text.contains(SECRET_TOKEN),
        "the API token reached a log line"
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_agent_in_json_and_no_secret_shows() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve_log = dir.path().join("serve.log");
    let agent_log = dir.path().join("agent.log");
    let port = warmpool_testkit::free_port().unwrap();
    let mut serve = Command::new(warmpool_bin())
        .arg("serve")
        .env("WARMPOOL_REDIS_URL", redis.url())
        .env("WARMPOOL_POOL", "logs")
        .env("WARMPOOL_API_TOKENS", SECRET_TOKEN)
        .env("WARMPOOL_PROVIDER", "none")
        .env("WARMPOOL_LISTEN", format!("127.0.0.1:{port}"))
        // Every line any crate writes, to prove the token is in none of them.
        .env("WARMPOOL_LOG", "trace")
        .env("WARMPOOL_LOG_FORMAT", "json")
        .env("WARMPOOL_LOG_PROJECT", "proj")
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut api = Api::new(&format!("http://127.0.0.1:{port}"));
    api.token = Some(SECRET_TOKEN.into());
    eventually(LONG_START, "serve to be ready", || {
        let api = api.clone();
        async move { (api.try_status("/readyz").await == Some(200)).then_some(()) }
    })
    .await;
    let _agent = Agent::spawn(
        &redis.url(),
        "logs",
        "logs-vm",
        AgentOptions {
            uid_base: 60_900,
            env: vec![
                ("WARMPOOL_LOG", "warn,warmpool_agent=debug".into()),
                ("WARMPOOL_LOG_FORMAT", "json".into()),
                ("WARMPOOL_LOG_PROJECT", "proj".into()),
            ],
            log: Some(agent_log.clone()),
            ..Default::default()
        },
    );
    wait_ready(&api, "logs-vm").await;
    let r = api
        .http
        .post(format!(
            "http://127.0.0.1:{port}/v1/games/g-logs/executions?wait_s=30"
        ))
        .bearer_auth(SECRET_TOKEN)
        .header("x-cloud-trace-context", format!("{TRACE}/1;o=1"))
        .json(&python("print('traced')"))
        .send()
        .await
        .unwrap();
    let record: Value = r.json().await.unwrap();
    assert_eq!(record["state"], "finished", "{record}");
    let execution = record["execution_id"].as_str().unwrap().to_string();
    let linked = format!("projects/proj/traces/{TRACE}");
    let _ = serve.kill();
    let _ = serve.wait();

    let accepted = json_lines(&serve_log)
        .into_iter()
        .find(|l| l["message"] == "execution accepted")
        .expect("the replica logged the accept");
    assert_eq!(
        accepted["logging.googleapis.com/trace"], linked,
        "{accepted}"
    );
    assert_eq!(accepted["game_id"], "g-logs");
    assert_eq!(accepted["execution_id"], execution.as_str());
    assert_eq!(accepted["severity"], "DEBUG");
    eventually(Duration::from_secs(10), "the agent's line of it", || {
        let found = json_lines(&agent_log).into_iter().find(|l| {
            l["message"] == "execution started" && l["execution_id"] == execution.as_str()
        });
        async move { found }
    })
    .await;
    let started = json_lines(&agent_log)
        .into_iter()
        .find(|l| l["message"] == "execution started")
        .unwrap();
    assert_eq!(started["logging.googleapis.com/trace"], linked, "{started}");
    assert_eq!(started["vm_id"], "logs-vm");
    assert_eq!(started["attempt"], 1);
    for line in json_lines(&agent_log) {
        assert!(
            line["severity"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
}

const LONG_START: Duration = Duration::from_secs(20);

/// The value of one series (`name{labels}`, written as the exposition writes it) in a scrape.
fn series(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("a scrape")
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_the_same_pool_figures_and_the_agents_travel_with_heartbeats() {
    let redis = RedisServer::start().unwrap();
    let mut ports = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let port = warmpool_testkit::free_port().unwrap();
        let mut config = test_config("metrics");
        config.metrics_listen = Some(([127, 0, 0, 1], port).into());
        replicas.push(Replica::start(config, &redis.url()).await);
        ports.push(port);
    }
    let api = replicas[0].api();
    let _agent = Agent::spawn(
        &redis.url(),
        "metrics",
        "metrics-vm",
        AgentOptions {
            uid_base: 60_910,
            ..Default::default()
        },
    );
    wait_ready(&api, "metrics-vm").await;
    let mut ids = Vec::new();
    for body in [
        python("print('ok')"),
        serde_json::json!({"language": "python", "files": [{"name": "main.py",
            "content": "import time\ntime.sleep(5)"}], "limits": {"wall_time_ms": 300}}),
        python("raise SystemExit(3)"),
    ] {
        let r = api.submit("g-metrics", body, 30).await;
        assert_eq!(r.body["state"], "finished", "{}", r.body);
        ids.push(r.body["execution_id"].as_str().unwrap().to_string());
    }

    for port in &ports {
        // The agent's figures arrive with its next heartbeats (every 200 ms here).
        let text = until_ok(Duration::from_secs(10), "the agent's figures", || async {
            let text = scrape(*port).await;
            let kills = series(&text, "warmpool_sandbox_kills_total{reason=\"time_limit\"}");
            let starts = series(&text, "warmpool_sandbox_start_seconds_count");
            if kills == Some(1.0) && starts == Some(3.0) {
                Ok(text)
            } else {
                Err(format!("kills {kills:?}, starts {starts:?}"))
            }
        })
        .await;
        for (name, want) in [
            ("warmpool_vms{state=\"ready\"}", 1.0),
            ("warmpool_vms{state=\"dead\"}", 0.0),
            ("warmpool_games{state=\"placed\"}", 1.0),
            ("warmpool_executions_queued", 0.0),
            (
                "warmpool_executions_total{state=\"finished\",outcome=\"ok\"}",
                1.0,
            ),
            (
                "warmpool_executions_total{state=\"finished\",outcome=\"time_limit\"}",
                1.0,
            ),
            (
                "warmpool_executions_total{state=\"finished\",outcome=\"runtime_error\"}",
                1.0,
            ),
            ("warmpool_queue_wait_seconds_count", 3.0),
            ("warmpool_run_time_seconds_count", 3.0),
            ("warmpool_sandboxes_busy", 0.0),
        ] {
            assert_eq!(series(&text, name), Some(want), "{name} on :{port}\n{text}");
        }
        // The sleeper ran its 300 ms before it was killed: in the run-time buckets at or
        // above 0.25 s, not below.
        let below = series(&text, "warmpool_run_time_seconds_bucket{le=\"0.25\"}").unwrap();
        assert!(below <= 2.0, "{text}");
        assert!(series(&text, "warmpool_reconcile_passes_total").unwrap_or(0.0) >= 1.0);
        assert!(series(&text, "warmpool_leader_terms_total").unwrap_or(0.0) >= 1.0);
        assert!(
            text.contains("warmpool_http_requests_total{route=\"/v1/games/{game_id}/executions\",status=\"200\"}"),
            "requests counted by route pattern: {text}"
        );
        for id in &ids {
            assert!(!text.contains(id.as_str()), "no execution id in a label");
        }
        assert!(!text.contains("g-metrics") && !text.contains("metrics-vm"));
    }
    // The spares the agent keeps warm (two slots), summed over the live VMs.
    until_ok(Duration::from_secs(10), "two spares ready", || async {
        let n = series(&scrape(ports[1]).await, "warmpool_spares_ready");
        if n == Some(2.0) {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    for replica in replicas {
        replica.stop().await;
    }
}
