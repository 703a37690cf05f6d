//! The agent process of each fake VM, with stand-in agents written as shell scripts: how it
//! is started, and that it is stopped (and nothing of it left) on delete, preemption,
//! shutdown and drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{client, eventually, fast_backoff, instance, request_id, ZONE};
use google_cloud_compute_v1::model;
use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_lro::Poller as _;
use warmpool_fake_gce::{live_processes_in_groups, FakeGce, FakeGceConfig, InstanceStatus};

/// Records its arguments and environment, then idles like an agent (with a child, as a real
/// agent has sandboxes) until SIGTERM, which it also records. Its `args` file is the sign that
/// it is up, so it is written last: once it exists, the trap is set and the child runs (a
/// SIGTERM between the two would otherwise kill the shell unrecorded).
const POLITE_AGENT: &str = r#"#!/bin/sh
log="$AGENT_LOG_DIR/$$"
trap 'echo TERM > "$log.term"; kill $child 2>/dev/null; exit 0' TERM
env > "$log.env.tmp" && mv "$log.env.tmp" "$log.env"
sleep 300 &
child=$!
printf '%s\n' "$@" > "$log.args.tmp" && mv "$log.args.tmp" "$log.args"
wait $child
"#;

/// Ignores SIGTERM (its child inherits that), so only the SIGKILL ends it. Marks itself up
/// once its child runs.
const STUBBORN_AGENT: &str = r#"#!/bin/sh
trap '' TERM
sleep 300 &
echo started > "$AGENT_LOG_DIR/$$.args"
wait
"#;

/// Crashes at once.
const CRASHING_AGENT: &str = "#!/bin/sh\nexit 3\n";

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    gce: FakeGce,
    dir: tempfile::TempDir,
}

async fn start(script: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("agent.sh");
    write_executable(&bin, script)?;
    let gce = FakeGce::start(FakeGceConfig {
        agent_bin: Some(bin),
        agent_env: vec![
            (
                "AGENT_LOG_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            ("WARMPOOL_TEST_EXTRA".to_string(), "42".to_string()),
        ],
        ..FakeGceConfig::default()
    })
    .await?;
    Ok(Setup { gce, dir })
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Written and closed before anything forks, so no child inherits an open write handle
    // (which would make exec fail with ETXTBSY).
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn log_file(dir: &Path, pid: u32, suffix: &str) -> PathBuf {
    dir.join(format!("{pid}.{suffix}"))
}

/// The agent's pid once the instance runs and the agent has written its start-up record.
async fn running_agent(gce: &FakeGce, dir: &Path, name: &str) -> anyhow::Result<u32> {
    eventually(WAIT, &format!("{name}'s agent to start"), || async {
        let vm = gce.instance(ZONE, name)?;
        let pid = vm
            .agent_pid
            .filter(|_| vm.status == InstanceStatus::Running)?;
        log_file(dir, pid, "args").exists().then_some(pid)
    })
    .await
}

async fn no_process_left(pid: u32) -> anyhow::Result<()> {
    eventually(WAIT, "the agent's process group to be empty", || async {
        (live_processes_in_groups(&[pid]) == 0).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_gets_only_the_allowed_environment_and_is_stopped_by_delete() -> anyhow::Result<()>
{
    let Setup { gce, dir } = start(POLITE_AGENT).await?;
    let client = client(&gce).await?;
    client
        .insert()
        .set_project("warmpool-test")
        .set_zone(ZONE)
        .set_request_id(request_id())
        .set_body(instance("vm-a", &[("pool", "warm")]))
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    let pid = running_agent(&gce, dir.path(), "vm-a").await?;

    let args = std::fs::read_to_string(log_file(dir.path(), pid, "args"))?;
    assert_eq!(args, "--from-metadata\n");
    let env: BTreeMap<String, String> = std::fs::read_to_string(log_file(dir.path(), pid, "env"))?
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let metadata_url = format!("{}/metadata/{ZONE}/vm-a/computeMetadata/v1", gce.endpoint());
    assert_eq!(env.get("WARMPOOL_METADATA_URL"), Some(&metadata_url));
    assert_eq!(
        env.get("WARMPOOL_TEST_EXTRA").map(String::as_str),
        Some("42")
    );
    assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
    assert_eq!(env.get("HOME"), std::env::var("HOME").ok().as_ref());
    // What /bin/sh adds by itself to what it exports.
    let shell_adds = ["PWD", "OLDPWD", "SHLVL", "_"];
    let allowed = [
        "PATH",
        "HOME",
        "WARMPOOL_METADATA_URL",
        "AGENT_LOG_DIR",
        "WARMPOOL_TEST_EXTRA",
    ];
    let unexpected: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()) && !shell_adds.contains(&k.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "leaked into the agent: {unexpected:?}"
    );

    // The URL it was given serves its own metadata.
    let name = reqwest::Client::new()
        .get(format!("{metadata_url}/instance/name"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(name, "vm-a");

    let op = client
        .delete()
        .set_project("warmpool-test")
        .set_zone(ZONE)
        .set_instance("vm-a")
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    assert_eq!(op.status, Some(model::operation::Status::Done));
    // DONE only after the agent was gone: it got SIGTERM, and its whole group is gone.
    assert!(log_file(dir.path(), pid, "term").exists());
    assert_eq!(live_processes_in_groups(&[pid]), 0);
    assert!(gce.instances().is_empty());
    gce.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_kills_the_agent_and_leaves_the_instance_terminated() -> anyhow::Result<()> {
    let Setup { gce, dir } = start(POLITE_AGENT).await?;
    gce.insert_unmanaged(ZONE, "vm-spot", BTreeMap::new(), BTreeMap::new())?;
    let pid = running_agent(&gce, dir.path(), "vm-spot").await?;

    gce.preempt(ZONE, "vm-spot")?;
    let exited = eventually(WAIT, "the preempted agent to exit", || async {
        gce.instance(ZONE, "vm-spot")?.agent_exited
    })
    .await?;
    assert_eq!(exited, 128 + 9, "SIGKILL, no SIGTERM first");
    assert!(!log_file(dir.path(), pid, "term").exists());
    no_process_left(pid).await?;

    // Still listed, TERMINATED, until someone deletes it.
    let client = client(&gce).await?;
    let list = client
        .list()
        .set_project("warmpool-test")
        .set_zone(ZONE)
        .set_filter("status = TERMINATED")
        .send()
        .await?;
    assert_eq!(list.items.len(), 1);
    client
        .delete()
        .set_project("warmpool-test")
        .set_zone(ZONE)
        .set_instance("vm-spot")
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    assert!(gce.instances().is_empty());
    assert_eq!(gce.counters().preemptions, 1);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_exits_by_itself_leaves_the_vm_running() -> anyhow::Result<()> {
    // Keep the directory (and the script in it) alive: `..` would drop it here.
    let Setup { gce, dir: _dir } = start(CRASHING_AGENT).await?;
    gce.insert_unmanaged(ZONE, "vm-crash", BTreeMap::new(), BTreeMap::new())?;
    let exited = eventually(WAIT, "the agent to exit", || async {
        gce.instance(ZONE, "vm-crash")?.agent_exited
    })
    .await?;
    assert_eq!(exited, 3);
    assert_eq!(
        gce.instance(ZONE, "vm-crash").map(|i| i.status),
        Some(InstanceStatus::Running)
    );
    gce.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_deaf_to_sigterm_is_killed_after_the_grace_period() -> anyhow::Result<()> {
    let Setup { gce, dir } = start(STUBBORN_AGENT).await?;
    gce.insert_unmanaged(ZONE, "vm-deaf", BTreeMap::new(), BTreeMap::new())?;
    let pid = running_agent(&gce, dir.path(), "vm-deaf").await?;
    let client = client(&gce).await?;
    let started = Instant::now();
    client
        .delete()
        .set_project("warmpool-test")
        .set_zone(ZONE)
        .set_instance("vm-deaf")
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(live_processes_in_groups(&[pid]), 0);
    gce.shutdown().await;
    Ok(())
}

async fn three_agents(setup: &Setup) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for name in ["vm-1", "vm-2", "vm-3"] {
        setup
            .gce
            .insert_unmanaged(ZONE, name, BTreeMap::new(), BTreeMap::new())?;
    }
    for name in ["vm-1", "vm-2", "vm-3"] {
        pids.push(running_agent(&setup.gce, setup.dir.path(), name).await?);
    }
    Ok(pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_agent_politely() -> anyhow::Result<()> {
    let setup = start(POLITE_AGENT).await?;
    let pids = three_agents(&setup).await?;
    assert_eq!(
        setup.gce.live_agent_processes(),
        6,
        "3 shells and their sleeps"
    );
    setup.gce.shutdown().await;
    assert_eq!(live_processes_in_groups(&pids), 0);
    for pid in pids {
        assert!(log_file(setup.dir.path(), pid, "term").exists());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_fake_stops_every_agent() -> anyhow::Result<()> {
    let setup = start(POLITE_AGENT).await?;
    let pids = three_agents(&setup).await?;
    let Setup { gce, dir } = setup;
    let clone = gce.clone();
    drop(gce);
    assert_eq!(
        live_processes_in_groups(&pids),
        3 * 2,
        "a clone keeps it running"
    );
    drop(clone);
    assert_eq!(live_processes_in_groups(&pids), 0);
    for pid in pids {
        assert!(log_file(dir.path(), pid, "term").exists());
    }
    Ok(())
}
