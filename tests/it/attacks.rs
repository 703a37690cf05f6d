//! Hostile programs through the real API, to a real agent, in a real bwrap (or nsjail) sandbox. Before any
//! attack fires, a probe run through the same path proves isolation (non-root uid, no network
//! interface but `lo`, a process limit in force); without it the suite refuses to run, since a
//! fork or memory bomb outside a sandbox takes the machine down. After every attack the agent
//! must still serve.
//!
//! One test per attack, each on its own pool, agent and uid range, so that the runner's summary
//! gives the count: `cargo nextest run -p warmpool --test it -- attacks::` (after
//! `cargo build --workspace --bins`) ends with "N tests run: N passed", of which three test the
//! "nothing left" check itself (`leftover_check::*`) and the rest are attacks tried /
//! contained (the figure in `docs/BENCHMARKS.md`). Outcomes are those the agent must get with
//! its defaults: per-execution cgroups (`WARMPOOL_SANDBOX_CGROUPS=auto`), the seccomp filter
//! (`WARMPOOL_SANDBOX_SECCOMP=on`) and warm spares (`WARMPOOL_SANDBOX_WARM=on`), on bwrap, and
//! on nsjail with `WARMPOOL_TEST_ATTACK_SANDBOX=nsjail`; and the same cold, with
//! `WARMPOOL_SANDBOX_WARM=off` (the agents inherit it). `make test` runs all four.
//!
//! | test | attack | must end |
//! | --- | --- | --- |
//! | `fork_bomb` | `:(){ :\|:& };:` kept alive by its parent | `time_limit` within the wall time; no process of it left |
//! | `memory_bomb` | 16 MiB allocations forever, `memory_mb` 128 | `memory_limit` (SIGKILL, peak 96–128 MiB); without a memory cgroup, `runtime_error` with `MemoryError` |
//! | `cpu_spin` | `while True: pass`, `cpu_time_ms` 500 | `time_limit`, ≥ 400 ms CPU measured |
//! | `sleep_past_the_wall_time` | `sleep 30`, `wall_time_ms` 300 | `time_limit` at once |
//! | `stdout_floods` | 50 MB in one write; 100 bytes forever | `output_limit`, cut at exactly the cap |
//! | `stderr_flood` | `yes 1>&2` | `output_limit`, stderr truncated |
//! | `disk_fill` | 200 MB into `/work` | the write fails (sized tmpfs, `RLIMIT_FSIZE`) |
//! | `a_daemon_that_tries_to_survive` | `setsid` and `nohup` sleepers | no process left after the execution |
//! | `network` | loopback, the Redis port, the metadata server, the outside | all four blocked |
//! | `environment_and_secrets` | `env`, `/proc/1/environ` | nothing of the agent's (`WARMPOOL_*`, the Redis URL) |
//! | `another_executions_files` | plant files, look for them concurrently and afterwards | never seen |
//! | `a_planted_symlink_and_writes_outside` | link `/work/main.py` to `/etc/passwd` (Judge0 CVE-2024-28185/28189); write `/usr`, `/etc` | gone by the next execution; nothing written on the host |
//! | `shell_metacharacters_in_args` | `$(id)`, `; rm -rf /`, backticks | plain arguments |
//! | `path_traversal_in_file_names` | `../escape.py`, `/etc/cron.d/x`, NUL, `..` | 422 `invalid_file_name`, no agent reached |
//! | `ptrace_the_sandboxs_own_init` | `PTRACE_ATTACH` and `process_vm_readv` on pid 1 (bwrap's init, same uid) | `EPERM` (seccomp; without it both succeed here), and the execution ends normally |
//! | `a_user_namespace` | `unshare(CLONE_NEWUSER)`, `clone(CLONE_NEWUSER)`, `unshare -Ur` | `EPERM` (seccomp; without it bwrap's `--disable-userns` still refuses, with `ENOSPC`) |
//! | `mount_a_filesystem` | `mount("none", "/tmp", "tmpfs")`, `/usr/bin/mount` | `EPERM` (seccomp; the missing capability refuses it too) |
//! | `kernel_attack_surface` | `io_uring_setup`, `bpf`, `userfaultfd` (user-mode), `perf_event_open`, `keyctl` (join a session keyring), with valid arguments | `EPERM` each (seccomp; without it io_uring, userfaultfd and keyctl succeed here) |
//! | `a_kernel_module_or_kexec` | `init_module`, `finit_module`, `kexec_load` | the program killed by `SIGSYS` (seccomp) |
//! | `a_syscall_through_the_32_bit_abi` | `int 0x80` and an x32 call from machine code (x86_64 hosts only) | the program killed by `SIGSYS` (seccomp) |

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const POOL: &str = "attacks";
/// One uid range per attack (16 uids each, the agent using 2), apart from other tests'
/// sandboxes: a fork bomb's process limit is per uid, and "nothing left" looks at the range.
mod uids {
    pub const FORK_BOMB: u32 = 63_000;
    pub const MEMORY_BOMB: u32 = 63_016;
    pub const CPU_SPIN: u32 = 63_032;
    pub const SLEEP: u32 = 63_048;
    pub const STDOUT_FLOODS: u32 = 63_064;
    pub const STDERR_FLOOD: u32 = 63_080;
    pub const DISK_FILL: u32 = 63_096;
    pub const DAEMON: u32 = 63_112;
    pub const NETWORK: u32 = 63_128;
    pub const ENVIRONMENT: u32 = 63_144;
    pub const FILES: u32 = 63_160;
    pub const SYMLINK: u32 = 63_176;
    pub const SHELL_ARGS: u32 = 63_192;
    pub const PATH_TRAVERSAL: u32 = 63_208;
    pub const PTRACE: u32 = 63_224;
    pub const USER_NAMESPACE: u32 = 63_240;
    pub const MOUNT: u32 = 63_256;
    pub const KERNEL_SURFACE: u32 = 63_272;
    pub const KERNEL_MODULE: u32 = 63_288;
    pub const FOREIGN_ABI: u32 = 63_304;
}
/// uids a range may use, from its base.
const RANGE_WIDTH: u32 = 16;
/// Sandboxes each attack's agent runs at once (and warm spares it keeps).
const SLOTS: usize = 2;
/// What a seccomp `KILL_PROCESS` verdict ends a program with.
const SIGSYS: i64 = 31;

struct Range {
    uid_base: u32,
    redis: RedisServer,
    replica: Replica,
    _agent: Agent,
    api: Api,
}

async fn range(uid_base: u32) -> Range {
    let redis = RedisServer::start().unwrap();
    let replica = Replica::start(test_config(POOL), &redis.url()).await;
    let api = replica.api();
    let agent = Agent::spawn(
        &redis.url(),
        POOL,
        "target",
        AgentOptions {
            uid_base,
            slots: SLOTS as u32,
            sandbox: backend(),
            ..Default::default()
        },
    );
    wait_ready(&api, "target").await;
    prove_isolation(&api, uid_base).await;
    Range {
        uid_base,
        redis,
        replica,
        _agent: agent,
        api,
    }
}

impl Range {
    /// The agent still serves after the attack; then the range is taken down.
    async fn still_serving_then_stop(self) {
        still_serving(&self.api).await;
        self.replica.stop().await;
    }

    /// Waits until nothing of this range's uids is left on the machine but the agent's idle
    /// warm spares (see [`leftovers`]); on a timeout, says what is left.
    async fn nothing_left(&self, what: &str) {
        let (lo, hi) = (self.uid_base, self.uid_base + RANGE_WIDTH);
        let slot_uids = self.uid_base..self.uid_base + SLOTS as u32;
        until_ok(Duration::from_secs(10), what, || {
            let left = leftovers(
                &processes_of_uids(lo, hi),
                slot_uids.clone(),
                agent_runs_warm(),
            );
            async move { left }
        })
        .await;
    }
}

/// The agent's sandbox backend: bwrap unless `WARMPOOL_TEST_ATTACK_SANDBOX=nsjail` (`make test`
/// runs the suite once more so, with `WARMPOOL_SANDBOX_NSJAIL` naming the pinned binary).
fn backend() -> &'static str {
    match std::env::var("WARMPOOL_TEST_ATTACK_SANDBOX").as_deref() {
        Err(_) | Ok("bwrap") => "bwrap",
        Ok("nsjail") => "nsjail",
        Ok(other) => panic!("WARMPOOL_TEST_ATTACK_SANDBOX={other}: expected bwrap or nsjail"),
    }
}

/// Whether the agents keep warm spares: yes unless `WARMPOOL_SANDBOX_WARM=off` (which they
/// inherit; `make test` runs the suite so too).
fn agent_runs_warm() -> bool {
    std::env::var("WARMPOOL_SANDBOX_WARM").map_or(true, |v| v != "off")
}

/// Refuses to continue unless the sandbox is proven: uid, network, process limit.
async fn prove_isolation(api: &Api, uid_base: u32) {
    let probe = "import os, socket, resource\n\
        print(os.getuid(), os.getgid())\n\
        print(sorted(n for _, n in socket.if_nameindex()))\n\
        print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n";
    let r = api.submit("probe", python(probe), 30).await;
    let out = r.body["result"]["stdout"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let lines: Vec<&str> = out.lines().collect();
    let refuse = |why: &str| panic!("REFUSING to fire attacks: {why}; probe said {}", r.body);
    let Some(ids) = lines.first() else {
        refuse("the probe did not run")
    };
    let uid: u32 = ids
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    if uid < uid_base || uid >= uid_base + RANGE_WIDTH {
        refuse("the program does not run as the sandbox uid");
    }
    if lines.get(1) != Some(&"['lo']") {
        refuse("the sandbox has a network interface");
    }
    let nproc: i64 = lines.get(2).and_then(|n| n.parse().ok()).unwrap_or(-1);
    if !(1..=1024).contains(&nproc) {
        refuse("no process limit in force");
    }
}

async fn run(api: &Api, game: &str, body: Value) -> Value {
    let r = api.submit(game, body, 60).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "finished", "{}", r.body);
    r.body["result"].clone()
}

fn bash(code: &str, limits: Value) -> Value {
    json!({"language": "bash", "files": [{"name": "a.sh", "content": code}], "limits": limits})
}

fn py(code: &str, limits: Value) -> Value {
    json!({"language": "python", "files": [{"name": "a.py", "content": code}], "limits": limits})
}

/// The agent still answers with a correct result.
async fn still_serving(api: &Api) {
    let r = run(api, "after", python("print(6 * 7)")).await;
    assert_eq!(r["stdout"], "42\n", "{r}");
}

// ---- Resources ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb() {
    let t = range(uids::FORK_BOMB).await;
    // Kept alive by its parent: the process limit stops it, the wall clock ends it, and
    // nothing of it survives.
    let started = Instant::now();
    let r = run(
        &t.api,
        "a",
        bash(":(){ :|:& };: ; sleep 30", json!({"wall_time_ms": 2000})),
    )
    .await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(started.elapsed() < Duration::from_secs(20));
    t.nothing_left("no fork-bomb process left").await;
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb() {
    let t = range(uids::MEMORY_BOMB).await;
    // Its cgroup OOM-kills it at the limit: memory_limit, peak at the limit. (On a host without
    // a usable memory cgroup the agent falls back to RLIMIT_AS: allocations then fail inside
    // the program, a runtime_error with MemoryError.)
    let r = run(
        &t.api,
        "a",
        py(
            "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n",
            json!({"memory_mb": 128}),
        ),
    )
    .await;
    match r["outcome"].as_str() {
        Some("memory_limit") => {
            assert_eq!(r["signal"], 9, "{r}");
            let kb = r["memory_kb"].as_u64().unwrap();
            assert!((96 * 1024..=128 * 1024).contains(&kb), "{r}");
        }
        Some("runtime_error") if !memory_cgroup_available() => {
            eprintln!("NOTE: no memory cgroup on this host; the RLIMIT_AS fallback was tested");
            assert!(r["stderr"].as_str().unwrap().contains("MemoryError"), "{r}");
        }
        _ => panic!("the memory bomb was not contained as expected: {r}"),
    }
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spin() {
    let t = range(uids::CPU_SPIN).await;
    let r = run(
        &t.api,
        "a",
        py(
            "while True:\n    pass\n",
            json!({"cpu_time_ms": 500, "wall_time_ms": 10000}),
        ),
    )
    .await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(r["cpu_time_ms"].as_u64().unwrap() >= 400, "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_past_the_wall_time() {
    let t = range(uids::SLEEP).await;
    let started = Instant::now();
    let r = run(&t.api, "a", bash("sleep 30", json!({"wall_time_ms": 300}))).await;
    assert_eq!(r["outcome"], "time_limit", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_floods() {
    let t = range(uids::STDOUT_FLOODS).await;
    // In one write and in many: cut exactly at the cap.
    for code in [
        "import sys\nsys.stdout.write('x' * 50_000_000)\n",
        "import sys\nwhile True:\n    sys.stdout.write('y' * 100)\n",
    ] {
        let r = run(&t.api, "a", py(code, json!({"max_output_bytes": 4096}))).await;
        assert_eq!(r["outcome"], "output_limit", "{r}");
        assert_eq!(r["stdout"].as_str().unwrap().len(), 4096);
        assert_eq!(r["stdout_truncated"], true);
    }
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_flood() {
    let t = range(uids::STDERR_FLOOD).await;
    let r = run(
        &t.api,
        "a",
        bash("yes 1>&2", json!({"max_output_bytes": 1000})),
    )
    .await;
    assert_eq!(r["outcome"], "output_limit", "{r}");
    assert_eq!(r["stderr_truncated"], true);
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_fill() {
    let t = range(uids::DISK_FILL).await;
    // The sized tmpfs and RLIMIT_FSIZE stop it.
    let r = run(
        &t.api,
        "a",
        bash(
            "head -c 200000000 /dev/zero > /work/fill; echo rc=$?; df -k /work | tail -1",
            json!({}),
        ),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("rc=0"), "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_tries_to_survive() {
    let t = range(uids::DAEMON).await;
    let r = run(
        &t.api,
        "a",
        bash(
            "setsid sh -c 'sleep 60' & nohup sleep 60 & echo started",
            json!({"wall_time_ms": 2000}),
        ),
    )
    .await;
    assert!(r["stdout"].as_str().unwrap().contains("started"), "{r}");
    t.nothing_left("no sandbox process left").await;
    t.still_serving_then_stop().await;
}

// ---- Escape and leaks ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network() {
    let t = range(uids::NETWORK).await;
    // Loopback, the Redis port, the metadata server, the outside. All fail.
    let net = format!(
        "import socket\nfor host, port in [('127.0.0.1', 22), ('127.0.0.1', {}), ('169.254.169.254', 80), ('1.1.1.1', 443)]:\n    try:\n        socket.create_connection((host, port), timeout=1)\n        print(host, 'OPEN')\n    except OSError as e:\n        print(host, 'blocked')\n",
        t.redis.port()
    );
    let r = run(&t.api, "b", py(&net, json!({}))).await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("OPEN"), "{r}");
    assert_eq!(out.matches("blocked").count(), 4, "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_secrets() {
    let t = range(uids::ENVIRONMENT).await;
    // Nothing of the agent's (its Redis URL) is visible.
    let r = run(
        &t.api,
        "b",
        bash(
            "env; cat /proc/1/environ /proc/self/environ 2>/dev/null | tr '\\0' '\\n'",
            json!({}),
        ),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("WARMPOOL"), "{r}");
    assert!(!out.contains("redis://"), "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_executions_files() {
    let t = range(uids::FILES).await;
    let api = &t.api;
    // Planted, then looked for, concurrently and afterwards.
    let plant = bash(
        "echo secret-42 > /work/loot; echo secret-42 > /tmp/loot; sleep 1",
        json!({}),
    );
    let look = bash("cat /work/loot /tmp/loot 2>&1; ls -a /work /tmp", json!({}));
    let (a, b) = tokio::join!(run(api, "c", plant.clone()), run(api, "d", look.clone()));
    assert_eq!(a["outcome"], "ok");
    assert!(!b["stdout"].as_str().unwrap().contains("secret-42"), "{b}");
    let later = run(api, "d", look).await;
    assert!(
        !later["stdout"].as_str().unwrap().contains("secret-42"),
        "{later}"
    );
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_and_writes_outside() {
    let t = range(uids::SYMLINK).await;
    // A symlink planted where a later file would be written (Judge0 CVE-2024-28185/28189):
    // each execution gets a fresh tmpfs, so the link is gone; and nothing outside is writable.
    let r = run(&t.api, "e", bash("ln -s /etc/passwd /work/main.py; touch /usr/pwned 2>&1; echo > /etc/pwned 2>&1; echo done", json!({}))).await;
    assert!(r["stdout"].as_str().unwrap().contains("done"), "{r}");
    assert!(!std::path::Path::new("/usr/pwned").exists());
    let r = run(&t.api, "e", json!({"language": "python", "files": [{"name": "main.py", "content": "print(open(__file__).read()[:5])"}]})).await;
    assert_eq!(r["stdout"], "print\n", "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_args() {
    let t = range(uids::SHELL_ARGS).await;
    let r = run(&t.api, "f", json!({"language": "bash", "files": [{"name": "a.sh", "content": "printf '%s|' \"$@\""}], "args": ["$(id)", "; rm -rf /", "`whoami`", "a b"]})).await;
    assert_eq!(r["stdout"], "$(id)|; rm -rf /|`whoami`|a b|", "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_file_names() {
    let t = range(uids::PATH_TRAVERSAL).await;
    // Refused by the API: they never reach an agent.
    for name in ["../escape.py", "/etc/cron.d/x", "a\u{0}b", ".."] {
        let r = t
            .api
            .submit(
                "g",
                json!({"language": "python", "files": [{"name": name, "content": ""}]}),
                0,
            )
            .await;
        assert_eq!(r.status, 422, "{name:?}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_file_name");
    }
    t.still_serving_then_stop().await;
}

// ---- The kernel (the seccomp filter) ----

/// Python that makes raw system calls through libc's `syscall(2)`. `PRELUDE` defines
/// `call(name, nr, *args)`, which prints `name ok` or `name ERRNO`; arguments are integers or
/// bytes (passed as pointers). A `clone` that returned 0 is a child that should not exist: it
/// leaves at once.
const PRELUDE: &str = "\
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(a):
    return ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a)
def call(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    if r == 0 and name == 'clone':
        os._exit(0)
    print(name, 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno()), flush=True)
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptrace_the_sandboxs_own_init() {
    let t = range(uids::PTRACE).await;
    // bwrap's init is pid 1 of the sandbox and runs as its uid: without the filter, attaching
    // to it succeeds (and stops it).
    let code = format!(
        "{PRELUDE}\
         iov = ctypes.create_string_buffer(16)\n\
         call('ptrace', {ptrace}, 16, 1, 0, 0)\n\
         call('process_vm_readv', {readv}, 1, ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0)\n\
         print('still running')\n",
        ptrace = libc::SYS_ptrace,
        readv = libc::SYS_process_vm_readv,
    );
    let r = run(&t.api, "h", py(&code, json!({}))).await;
    assert_eq!(
        r["stdout"], "ptrace EPERM\nprocess_vm_readv EPERM\nstill running\n",
        "{r}"
    );
    assert_eq!(r["outcome"], "ok", "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace() {
    let t = range(uids::USER_NAMESPACE).await;
    // The classic first step from an unprivileged uid to kernel attack surface.
    const CLONE_NEWUSER: i64 = 0x1000_0000;
    const SIGCHLD: i64 = 17;
    let code = format!(
        "{PRELUDE}\
         call('unshare', {unshare}, {CLONE_NEWUSER})\n\
         call('clone', {clone}, {flags}, 0, 0, 0, 0)\n",
        unshare = libc::SYS_unshare,
        clone = libc::SYS_clone,
        flags = CLONE_NEWUSER | SIGCHLD,
    );
    let r = run(&t.api, "i", py(&code, json!({}))).await;
    assert_eq!(r["stdout"], "unshare EPERM\nclone EPERM\n", "{r}");
    // The util-linux tool, mapping the caller to root inside.
    let r = run(
        &t.api,
        "i",
        bash("unshare -Ur id -u 2>&1; echo rc=$?", json!({})),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("Operation not permitted"), "{r}");
    assert!(out.ends_with("rc=1\n"), "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_a_filesystem() {
    let t = range(uids::MOUNT).await;
    let code = format!(
        "{PRELUDE}call('mount', {mount}, b'none', b'/tmp', b'tmpfs', 0, 0)\n",
        mount = libc::SYS_mount,
    );
    let r = run(&t.api, "j", py(&code, json!({}))).await;
    assert_eq!(r["stdout"], "mount EPERM\n", "{r}");
    let r = run(
        &t.api,
        "j",
        bash("mount -t tmpfs none /tmp 2>&1; echo rc=$?", json!({})),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("rc=0"), "{r}");
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_attack_surface() {
    let t = range(uids::KERNEL_SURFACE).await;
    // Arguments with which each call works for an unprivileged process on a default kernel
    // (an io_uring, a user-mode userfaultfd, a software perf counter on itself, a session
    // keyring): what refuses them is the filter.
    let code = format!(
        "{PRELUDE}\
         params = ctypes.create_string_buffer(120)\n\
         call('io_uring_setup', {io_uring}, 8, ctypes.addressof(params))\n\
         attr = ctypes.create_string_buffer(72)\n\
         call('bpf', {bpf}, 0, ctypes.addressof(attr), 72)\n\
         call('userfaultfd', {uffd}, 1)\n\
         pattr = ctypes.create_string_buffer(128)\n\
         ctypes.c_uint32.from_buffer(pattr, 0).value = 1\n\
         ctypes.c_uint32.from_buffer(pattr, 4).value = 128\n\
         call('perf_event_open', {perf}, ctypes.addressof(pattr), 0, -1, -1, 0)\n\
         call('keyctl', {keyctl}, 1, 0)\n",
        io_uring = libc::SYS_io_uring_setup,
        bpf = libc::SYS_bpf,
        uffd = libc::SYS_userfaultfd,
        perf = libc::SYS_perf_event_open,
        keyctl = libc::SYS_keyctl,
    );
    let r = run(&t.api, "k", py(&code, json!({}))).await;
    assert_eq!(
        r["stdout"],
        "io_uring_setup EPERM\nbpf EPERM\nuserfaultfd EPERM\nperf_event_open EPERM\nkeyctl EPERM\n",
        "{r}"
    );
    t.still_serving_then_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_module_or_kexec() {
    let t = range(uids::KERNEL_MODULE).await;
    for (name, nr) in [
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("kexec_load", libc::SYS_kexec_load),
    ] {
        let code =
            format!("{PRELUDE}print('before', flush=True)\ncall('{name}', {nr}, 0, 0, 0, 0)\n");
        let r = run(&t.api, "l", py(&code, json!({}))).await;
        assert_eq!(r["stdout"], "before\n", "{name}: {r}");
        assert_eq!(r["outcome"], "runtime_error", "{name}: {r}");
        assert_eq!(r["signal"], SIGSYS, "{name}: {r}");
    }
    t.still_serving_then_stop().await;
}

#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syscall_through_the_32_bit_abi() {
    let t = range(uids::FOREIGN_ABI).await;
    // A second syscall table that a filter written for x86_64 numbers would not cover.
    for (abi, hex) in [
        // mov eax, 20 (i386 getpid); int 0x80; ret
        ("int 0x80", "b814000000cd80c3"),
        // mov eax, 0x40000027 (x32 getpid); syscall; ret
        ("x32", "b8270000400f05c3"),
    ] {
        let code = format!(
            "import ctypes, mmap\n\
             buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
             buf.write(bytes.fromhex('{hex}'))\n\
             addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n\
             print('before', flush=True)\n\
             print('returned', ctypes.CFUNCTYPE(ctypes.c_long)(addr)())\n"
        );
        let r = run(&t.api, "m", py(&code, json!({}))).await;
        assert_eq!(r["stdout"], "before\n", "{abi}: {r}");
        assert_eq!(r["outcome"], "runtime_error", "{abi}: {r}");
        assert_eq!(r["signal"], SIGSYS, "{abi}: {r}");
    }
    t.still_serving_then_stop().await;
}

/// Whether this host offers a memory cgroup controller (v1 hierarchy or v2 controller).
fn memory_cgroup_available() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
}

use warmpool_core::procfs::Process;

/// Every process on this machine running as a uid in `lo..hi`.
fn processes_of_uids(lo: u32, hi: u32) -> Vec<Process> {
    warmpool_core::procfs::processes()
        .into_iter()
        .filter(|p| (lo..hi).contains(&p.uid))
        .collect()
}

/// The agent's warm-spare stub as it waits for a job: `warmpool-agent sandbox-stub FD`, bound
/// at the agent's `bwrap::STUB_PATH` under bwrap, exec'd through its fd under nsjail.
fn is_waiting_stub(p: &Process) -> bool {
    p.argv
        .first()
        .is_some_and(|a| a == "/.warmpool-stub" || a.starts_with("/proc/self/fd/"))
        && p.argv.get(1).is_some_and(|a| a == "sandbox-stub")
        && p.argv.len() == 3
}

/// A sandbox's init: bwrap's own, or nsjail's loader (`bash -c SCRIPT warmpool-init …`).
fn is_sandbox_init(p: &Process) -> bool {
    let bwrap = p
        .argv
        .first()
        .is_some_and(|a| a.ends_with("/bwrap") || a == "bwrap");
    let nsjail_loader = p.argv.first().is_some_and(|a| a == "/bin/bash")
        && p.argv.get(1).is_some_and(|a| a == "-c")
        && p.argv.get(3).is_some_and(|a| a == "warmpool-init");
    bwrap || nsjail_loader
}

/// `Ok` when the processes of a uid range (`processes`) are exactly the idle warm spares of
/// an agent whose slots run as `slot_uids`, one per slot (`expect_spares`: every slot's, or
/// none when the agent runs cold); else what is wrong, to print. A spare is a pid namespace of
/// its own holding exactly the sandbox's init and the waiting stub, both of one slot uid, plus,
/// outside it, the chain of launcher processes (the agent's reaper shim and the outer bwrap or
/// nsjail) that leads to it. A process an execution left behind is in that execution's pid
/// namespace (every sandbox has its own), which holds something other than an init and a
/// waiting stub, or in no spare's chain at all; and one that poses as a spare is a second
/// spare of its slot's uid: each way it is reported.
fn leftovers(
    processes: &[Process],
    slot_uids: std::ops::Range<u32>,
    expect_spares: bool,
) -> Result<(), String> {
    let report = |why: &str| {
        let list: Vec<String> = processes
            .iter()
            .map(|p| {
                format!(
                    "  {} (parent {}, uid {}, {:?}): {:?}",
                    p.pid, p.ppid, p.uid, p.pid_ns, p.argv
                )
            })
            .collect();
        Err(format!(
            "{why}; processes of the range:\n{}",
            list.join("\n")
        ))
    };
    let mut namespaces: std::collections::BTreeMap<&str, Vec<&Process>> = Default::default();
    for p in processes {
        namespaces
            .entry(p.pid_ns.as_deref().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let own_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut accounted = std::collections::HashSet::new();
    let mut spare_uids = std::collections::BTreeSet::new();
    for (ns, members) in &namespaces {
        if *ns == own_ns {
            continue; // launchers: accounted for below, through the spares they lead to
        }
        let stubs: Vec<&&Process> = members.iter().filter(|p| is_waiting_stub(p)).collect();
        let spare = members.len() == 2
            && stubs.len() == 1
            && members
                .iter()
                .any(|p| is_sandbox_init(p) && stubs[0].ppid == p.pid)
            && members.iter().all(|p| p.uid == stubs[0].uid);
        if !spare {
            return report(&format!("pid namespace {ns} is not an idle warm spare"));
        }
        if !slot_uids.contains(&stubs[0].uid) || !spare_uids.insert(stubs[0].uid) {
            return report(&format!(
                "a second spare of uid {}, or one of no slot",
                stubs[0].uid
            ));
        }
        // The spare and its launcher chain, up to the first process not of the range.
        let mut next = Some(stubs[0].pid);
        while let Some(pid) = next.filter(|pid| accounted.insert(*pid)) {
            next = processes.iter().find(|p| p.pid == pid).map(|p| p.ppid);
        }
    }
    if let Some(p) = processes.iter().find(|p| !accounted.contains(&p.pid)) {
        return report(&format!("process {} belongs to no idle warm spare", p.pid));
    }
    let expected = if expect_spares { slot_uids.len() } else { 0 };
    if spare_uids.len() != expected {
        // Not yet: a refill is still under way.
        return report(&format!(
            "{} idle spares where the agent keeps {expected}",
            spare_uids.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod leftover_check {
    //! The check itself, on made-up process lists: it must see what it is there to see.
    use super::*;

    /// Slot uids of the made-up agent: two slots.
    const UIDS: std::ops::Range<u32> = 60_000..60_002;

    fn p(pid: i32, ppid: i32, uid: u32, ns: &str, argv: &[&str]) -> Process {
        Process {
            pid,
            ppid,
            uid,
            pid_ns: Some(ns.into()),
            argv: argv.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn own() -> String {
        std::fs::read_link("/proc/self/ns/pid")
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// One bwrap spare of `uid`: the shim (the agent binary), the outer bwrap, then in its own
    /// pid namespace bwrap's init and the stub.
    fn spare(base: i32, uid: u32, ns: &str) -> Vec<Process> {
        let own = own();
        let agent = ["/work/target/debug/warmpool-agent", "--vm-id", "x"];
        vec![
            p(base, 1, uid, &own, &agent),
            p(
                base + 1,
                base,
                uid,
                &own,
                &["/usr/bin/bwrap", "--unshare-all"],
            ),
            p(
                base + 2,
                base + 1,
                uid,
                ns,
                &["/usr/bin/bwrap", "--unshare-all"],
            ),
            p(
                base + 3,
                base + 2,
                uid,
                ns,
                &["/.warmpool-stub", "sandbox-stub", "5"],
            ),
        ]
    }

    fn two_spares() -> Vec<Process> {
        [spare(100, 60_000, "pid:[1]"), spare(200, 60_001, "pid:[2]")].concat()
    }

    #[test]
    fn idle_spares_are_not_leftovers() {
        assert!(leftovers(&[], UIDS, false).is_ok());
        let two = two_spares();
        assert!(
            leftovers(&two, UIDS.clone(), true).is_ok(),
            "{:?}",
            leftovers(&two, UIDS, true)
        );
        // nsjail's: the shim, nsjail, then its loader (bash) and the stub exec'd by its fd.
        let own = own();
        let agent = ["/work/target/debug/warmpool-agent", "--vm-id", "x"];
        let loader = ["/bin/bash", "-c", "umask 022", "warmpool-init", "4"];
        let mut nsjail = spare(100, 60_000, "pid:[1]");
        nsjail.extend([
            p(300, 1, 60_001, &own, &agent),
            p(
                301,
                300,
                60_001,
                &own,
                &["/opt/nsjail", "--config", "/proc/self/fd/5"],
            ),
            p(302, 301, 60_001, "pid:[3]", &loader),
            p(
                303,
                302,
                60_001,
                "pid:[3]",
                &["/proc/self/fd/9", "sandbox-stub", "10"],
            ),
        ]);
        assert!(
            leftovers(&nsjail, UIDS, true).is_ok(),
            "{:?}",
            leftovers(&nsjail, UIDS, true)
        );
    }

    #[test]
    fn survivors_are_leftovers() {
        // A daemon left in a finished execution's namespace, next to its init.
        let mut daemon = two_spares();
        daemon.push(p(300, 102, 60_000, "pid:[9]", &["/usr/bin/bwrap"]));
        daemon.push(p(301, 300, 60_000, "pid:[9]", &["sleep", "60"]));
        assert!(leftovers(&daemon, UIDS, true).is_err());
        // A daemon that joined a spare's namespace, or took the stub's name there.
        let mut joined = two_spares();
        joined.push(p(301, 102, 60_000, "pid:[1]", &["sleep", "60"]));
        assert!(leftovers(&joined, UIDS, true).is_err());
        let mut posing = two_spares();
        let stub = ["/.warmpool-stub", "sandbox-stub", "5"];
        posing.push(p(301, 102, 60_000, "pid:[1]", &stub));
        assert!(leftovers(&posing, UIDS, true).is_err());
        // A survivor that re-exec'd itself as a stub in its own (dead execution's) namespace,
        // next to its init: the shape of a spare, but a second one of its slot's uid.
        let mut second = two_spares();
        second.extend(spare(400, 60_000, "pid:[4]"));
        assert!(leftovers(&second, UIDS, true).is_err());
        // A process outside any namespace that leads to no spare.
        let mut stray = two_spares();
        stray.push(p(400, 1, 60_000, &own(), &["sleep", "60"]));
        assert!(leftovers(&stray, UIDS, true).is_err());
        // A lone stub-shaped namespace whose stub is not the init's child.
        let orphan = vec![
            p(500, 1, 60_000, "pid:[3]", &["/usr/bin/bwrap"]),
            p(501, 1, 60_000, "pid:[3]", &stub),
        ];
        assert!(leftovers(&orphan, UIDS, true).is_err());
        // A spare of a uid that is no slot's, and a namespace of two uids.
        let foreign = [spare(100, 60_000, "pid:[1]"), spare(200, 60_009, "pid:[2]")].concat();
        assert!(leftovers(&foreign, UIDS, true).is_err());
        let mut mixed = two_spares();
        mixed[3].uid = 60_001;
        assert!(leftovers(&mixed, UIDS, true).is_err());
    }

    #[test]
    fn the_check_waits_for_every_spare_and_for_none_when_cold() {
        // A refill still under way: one spare of two, or none yet.
        assert!(leftovers(&spare(100, 60_000, "pid:[1]"), UIDS, true).is_err());
        assert!(leftovers(&[], UIDS, true).is_err());
        // An agent running cold keeps none.
        assert!(leftovers(&two_spares(), UIDS, false).is_err());
    }
}
