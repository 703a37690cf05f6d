//! `warmpool-tools demo`: the real thing, narrated. Starts `warmpool dev` (its own redis-server, an
//! orchestrator, local VMs that take a few seconds to boot) as a child process with an empty
//! pool, plays a game through the REST API across the cold start, adds games until the pool
//! scales up, ends them, waits for the pool to scale back to zero, and stops everything.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Simulated VM boot time: executions submitted before it wait, queued, in Redis.
    #[arg(long, default_value_t = 4_000)]
    boot_delay_ms: u64,
    /// Sandbox backend of the demo's agent.
    #[arg(long, default_value = "bwrap")]
    sandbox: String,
}

const TOKEN: &str = "dev-token";

fn show(title: &str, value: &Value) {
    println!("\n== {title}");
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = client.request(method, &url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.with_context(|| url.clone())?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut dev = Command::new(crate::bench::sibling("warmpool"))
        .arg("dev")
        .env("WARMPOOL_LISTEN", "127.0.0.1:0")
        .env("WARMPOOL_MIN_VMS", "0")
        .env("WARMPOOL_GAMES_PER_VM", "4")
        .env("WARMPOOL_HEADROOM_GAMES", "2")
        .env("WARMPOOL_RECONCILE_INTERVAL_S", "1")
        .env("WARMPOOL_SCALE_DOWN_DELAY_S", "3")
        .env("WARMPOOL_IDLE_TIMEOUT_S", "5")
        .env(
            "WARMPOOL_LOCAL_BOOT_DELAY_MS",
            args.boot_delay_ms.to_string(),
        )
        .env("WARMPOOL_AGENT_SANDBOX", &args.sandbox)
        // The narration plus the leader's scaling decisions; WARMPOOL_LOG overrides.
        .env(
            "WARMPOOL_LOG",
            std::env::var("WARMPOOL_LOG")
                .unwrap_or_else(|_| "warn,warmpool::pool::reconciler=info".into()),
        )
        .env_remove("WARMPOOL_REDIS_URL")
        .env_remove("WARMPOOL_API_TOKENS")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting `warmpool dev`")?;
    let stdout = dev.stdout.take().context("dev stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("ready: ") {
                    println!("{line}");
                    break addr.to_string();
                }
            }
            Err(_) => {
                let _ = dev.kill();
                bail!("`warmpool dev` did not print its ready line");
            }
        }
    };
    let result = play(&base, args.boot_delay_ms).await;
    // Stop everything dev started (redis-server, agents) the way an operator would.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let status = dev.wait()?;
    println!("\n== stopped: `warmpool dev` exited ({status}), its redis-server and agents with it");
    result
}

async fn play(base: &str, boot_delay_ms: u64) -> anyhow::Result<()> {
    use reqwest::Method;
    let client = reqwest::Client::new();
    let started = Instant::now();
    show(
        "the pool right after start: empty, scaled to zero",
        &call(&client, Method::GET, format!("{base}/v1/pool"), None).await?,
    );
    let game = call(
        &client,
        Method::PUT,
        format!("{base}/v1/games/demo-match"),
        Some(json!({"ttl_s": 600})),
    )
    .await?;
    show(
        "PUT /v1/games/demo-match: no VM is Ready, so the game is pending",
        &game,
    );

    let programs = [
        ("python", "main.py", "import sys, platform\nprint('hello from', platform.python_version(), 'as uid', __import__('os').getuid())\n"),
        ("bash", "main.sh", "echo \"bash $BASH_VERSION\"; ls /work\n"),
        ("python", "net.py", "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('network: reachable')\nexcept OSError as e:\n    print('network: none (', e.__class__.__name__, ')')\n"),
    ];
    let mut ids = Vec::new();
    for (language, name, content) in programs {
        let r = call(
            &client,
            Method::POST,
            format!("{base}/v1/games/demo-match/executions"),
            Some(json!({"language": language, "files": [{"name": name, "content": content}]})),
        )
        .await?;
        println!(
            "\nsubmitted {name} during the cold start -> {} ({})",
            r["execution_id"], r["state"]
        );
        ids.push(r["execution_id"].as_str().unwrap_or_default().to_string());
    }
    println!(
        "\n... the VM boots for {} ms; the executions wait durably in Redis ...",
        boot_delay_ms
    );
    for id in &ids {
        let r = call(
            &client,
            Method::GET,
            format!("{base}/v1/executions/{id}?wait_s=60"),
            None,
        )
        .await?;
        let result = &r["result"];
        println!(
            "\n{id}: {} on {} after {:.1} s | outcome {} | exit {}\n{}",
            r["state"],
            r["vm_id"],
            started.elapsed().as_secs_f64(),
            result["outcome"],
            result["exit_code"],
            result["stdout"].as_str().unwrap_or("").trim_end()
        );
        if r["state"] != "finished" {
            bail!("execution {id} ended {}", r["state"]);
        }
    }
    // A warm VM now: the next execution runs at once.
    let t = Instant::now();
    let r = call(
        &client,
        Method::POST,
        format!("{base}/v1/games/demo-match/executions?wait_s=30"),
        Some(json!({"language": "python", "files": [{"name": "main.py", "content": "print(sum(range(10**6)))"}]})),
    )
    .await?;
    println!(
        "\nwarm run: {} in {} ms round trip (sandbox wall {} ms): {}",
        r["state"],
        t.elapsed().as_millis(),
        r["result"]["wall_time_ms"],
        r["result"]["stdout"].as_str().unwrap_or("").trim_end()
    );
    show(
        "GET /v1/games/demo-match: placed, sticky on its VM",
        &call(
            &client,
            Method::GET,
            format!("{base}/v1/games/demo-match"),
            None,
        )
        .await?,
    );
    show(
        "GET /v1/pool",
        &call(&client, Method::GET, format!("{base}/v1/pool"), None).await?,
    );

    // More games than the pool holds: the leader scales it up.
    for i in 1..=10 {
        call(
            &client,
            Method::PUT,
            format!("{base}/v1/games/rush-{i}"),
            None,
        )
        .await?;
    }
    println!("\nstarted 10 more games (4 per VM): the formula asks for more VMs ...");
    let pool = wait_pool(&client, base, "3 or more Ready VMs", |p| {
        p["vms"]
            .as_array()
            .is_some_and(|v| v.iter().filter(|vm| vm["state"] == "ready").count() >= 3)
            && p["games"]["pending"] == 0
    })
    .await?;
    summary(&pool);

    // Everything ends: after the idle timeout the pool goes back to zero.
    call(
        &client,
        Method::DELETE,
        format!("{base}/v1/games/demo-match"),
        None,
    )
    .await?;
    for i in 1..=10 {
        call(
            &client,
            Method::DELETE,
            format!("{base}/v1/games/rush-{i}"),
            None,
        )
        .await?;
    }
    println!("\nall games ended; the pool waits out its idle timeout (5 s in the demo) ...");
    let pool = wait_pool(&client, base, "an empty pool", |p| {
        p["vms"].as_array().is_some_and(|v| v.is_empty())
    })
    .await?;
    summary(&pool);
    println!("scaled to zero: no VM left");
    Ok(())
}

/// Polls the pool (every 200 ms, up to 90 s) until `done` holds.
async fn wait_pool(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pool = call(
            client,
            reqwest::Method::GET,
            format!("{base}/v1/pool"),
            None,
        )
        .await?;
        if done(&pool) {
            return Ok(pool);
        }
        if Instant::now() > deadline {
            bail!("the pool did not reach {what} within 90 s: {pool}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn summary(pool: &Value) {
    let vms: Vec<String> = pool["vms"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|vm| {
                    format!(
                        "{} {} {}/{}",
                        vm["vm_id"].as_str().unwrap_or(""),
                        vm["state"].as_str().unwrap_or(""),
                        vm["games"],
                        vm["capacity"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "pool: desired {} | VMs: [{}] | games {} | last scaling: {}",
        pool["desired_vms"],
        vms.join(", "),
        pool["games"],
        pool["last_scaling"]["reason"].as_str().unwrap_or("-")
    );
}
