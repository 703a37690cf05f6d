//! The seccomp filter on the real bubblewrap of this machine: what it denies, and that the
//! runtimes still work under it.
//!
//! Each test builds its own [`Sandbox`] on its own uid range (62700–62800, see `uids`). The
//! calls that probe the kernel run only after [`assert_isolated`] proved the sandbox runs them
//! as a non-root uid, with only `lo` and a process limit: should the filter be missing, they
//! still meet a sandbox, not the host.

use crate::common::{assert_isolated, run};

use warmpool_agent::sandbox::{Sandbox, SandboxConfig};
use warmpool_core::model::{FileSpec, Job, Limits, Outcome};

/// One uid range per test (one slot each).
mod uids {
    pub const IN_FORCE: u32 = 62_700;
    pub const EPERM: u32 = 62_710;
    pub const KILLED: u32 = 62_720;
    pub const FOREIGN_ABI: u32 = 62_730;
    pub const PYTHON: u32 = 62_740;
    pub const NODE: u32 = 62_750;
    pub const BASH: u32 = 62_760;
    pub const OFF: u32 = 62_770;
    pub const FDS: u32 = 62_780;
}

/// `SIGSYS`: what a `KILL_PROCESS` verdict ends a program with.
const SIGSYS: i32 = 31;

fn job(language: &str, name: &str, source: &str) -> Job {
    Job {
        execution_id: "seccomp-test".into(),
        game_id: "seccomp-test".into(),
        language: language.into(),
        files: vec![FileSpec {
            name: name.into(),
            content: source.into(),
        }],
        stdin: String::new(),
        args: Vec::new(),
        limits: Limits {
            wall_time_ms: 10_000,
            cpu_time_ms: 10_000,
            // V8 reserves ~800 MB of address space, which RLIMIT_AS counts on a host without a
            // memory cgroup.
            memory_mb: 2_048,
            max_output_bytes: 64 * 1024,
        },
    }
}

fn python(source: &str) -> Job {
    job("python", "main.py", source)
}

fn bash(script: &str) -> Job {
    job("bash", "main.sh", script)
}

async fn sandbox(uid_base: u32, seccomp: bool) -> Sandbox {
    Sandbox::new(SandboxConfig {
        uid_base,
        slots: 1,
        work_dir_mb: 16,
        seccomp,
        // Warm (the agent's default) unless the cold pass (see `crate::common::warm_mode`): the
        // filter must hold on both paths, and on the warm one it also binds the stub.
        warm: crate::common::warm_mode(),
        stub: Some(env!("CARGO_BIN_EXE_warmpool-agent").into()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the bwrap sandbox does not start on this machine: {e:?}"))
}

/// The `Seccomp:` and `NoNewPrivs:` lines of the program's own `/proc/self/status`.
const STATUS: &str = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status";

#[tokio::test]
async fn the_filter_is_in_force_for_the_program() {
    let sandbox = sandbox(uids::IN_FORCE, true).await;
    let result = run(&sandbox, &bash(STATUS)).await;
    // Mode 2 is a BPF filter; bwrap sets no_new_privs, which loading one requires.
    assert_eq!(result.stdout, "NoNewPrivs:\t1\nSeccomp:\t2\n", "{result:?}");
}

#[tokio::test]
async fn without_the_switch_no_filter_is_loaded() {
    let sandbox = sandbox(uids::OFF, false).await;
    let result = run(&sandbox, &bash(STATUS)).await;
    assert!(result.stdout.contains("Seccomp:\t0\n"), "{result:?}");
}

/// A python program that makes each `(name, number, args)` call through libc's `syscall` and
/// prints `name ERRNO-NAME` (or `name ok`). A `clone` that returned 0 is the child of a call
/// that should have failed: it leaves at once.
fn syscalls_program(calls: &[(&str, i64, &[i64])]) -> String {
    let mut source = String::from(
        "import ctypes, errno, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         def call(name, nr, *args):\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n\
         \x20   if r == 0 and name == 'clone':\n\
         \x20       os._exit(0)\n\
         \x20   print(name, 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno()), flush=True)\n",
    );
    for (name, nr, args) in calls {
        let args: Vec<String> = args.iter().map(i64::to_string).collect();
        source.push_str(&format!("call({name:?}, {nr}, {})\n", args.join(", ")));
    }
    source
}

#[tokio::test]
async fn denied_calls_fail_with_eperm_and_clone3_with_enosys() {
    let sandbox = sandbox(uids::EPERM, true).await;
    assert_isolated(&sandbox).await;
    const PTRACE_TRACEME: i64 = 0;
    const PTRACE_ATTACH: i64 = 16;
    const CLONE_NEWUSER: i64 = 0x1000_0000;
    const CLONE_NEWNET: i64 = 0x4000_0000;
    const SIGCHLD: i64 = 17;
    const KEYCTL_GET_KEYRING_ID: i64 = 0;
    const KEY_SPEC_SESSION_KEYRING: i64 = -3;
    // Arguments that would be harmless, or fail for another reason, without the filter.
    let calls: &[(&str, i64, &[i64])] = &[
        ("ptrace", libc::SYS_ptrace, &[PTRACE_TRACEME, 0, 0, 0]),
        // The sandbox's own init (bwrap, same uid): the one process a program could reach.
        ("ptrace", libc::SYS_ptrace, &[PTRACE_ATTACH, 1, 0, 0]),
        (
            "process_vm_readv",
            libc::SYS_process_vm_readv,
            &[1, 0, 0, 0, 0, 0],
        ),
        ("unshare", libc::SYS_unshare, &[CLONE_NEWUSER]),
        (
            "clone",
            libc::SYS_clone,
            &[CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
        ),
        (
            "clone",
            libc::SYS_clone,
            &[CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0],
        ),
        ("setns", libc::SYS_setns, &[0, 0]),
        ("mount", libc::SYS_mount, &[0, 0, 0, 0, 0]),
        ("umount2", libc::SYS_umount2, &[0, 0]),
        ("chroot", libc::SYS_chroot, &[0]),
        ("fsopen", libc::SYS_fsopen, &[0, 0]),
        (
            "keyctl",
            libc::SYS_keyctl,
            &[KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0],
        ),
        ("add_key", libc::SYS_add_key, &[0, 0, 0, 0, 0]),
        ("io_uring_setup", libc::SYS_io_uring_setup, &[1, 0]),
        ("bpf", libc::SYS_bpf, &[0, 0, 0]),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            &[0, 0, -1, -1, 0],
        ),
        ("userfaultfd", libc::SYS_userfaultfd, &[0]),
        ("open_by_handle_at", libc::SYS_open_by_handle_at, &[0, 0, 0]),
        ("syslog", libc::SYS_syslog, &[3, 0, 0]),
        ("clock_settime", libc::SYS_clock_settime, &[0, 0]),
        ("clone3", libc::SYS_clone3, &[0, 0]),
    ];
    let result = run(&sandbox, &python(&syscalls_program(calls))).await;
    let mut expected: String = calls[..calls.len() - 1]
        .iter()
        .map(|(name, _, _)| format!("{name} EPERM\n"))
        .collect();
    expected.push_str("clone3 ENOSYS\n");
    assert_eq!(result.stdout, expected, "{result:?}");
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

#[tokio::test]
async fn loading_or_replacing_the_kernel_kills_the_program() {
    let sandbox = sandbox(uids::KILLED, true).await;
    assert_isolated(&sandbox).await;
    for (name, nr) in [
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("reboot", libc::SYS_reboot),
    ] {
        let source = format!(
            "print('before', flush=True)\n{}print('after')\n",
            syscalls_program(&[(name, nr, &[0, 0, 0, 0])])
        );
        let result = run(&sandbox, &python(&source)).await;
        assert_eq!(result.stdout, "before\n", "{name}: {result:?}");
        assert_eq!(result.outcome, Outcome::RuntimeError, "{name}: {result:?}");
        assert_eq!(result.signal, Some(SIGSYS), "{name}: {result:?}");
    }
}

/// Machine code run from python through ctypes: a syscall through another ABI than x86_64's.
#[cfg(target_arch = "x86_64")]
fn machine_code_program(hex: &str) -> String {
    format!(
        "import ctypes, mmap\n\
         buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
         buf.write(bytes.fromhex('{hex}'))\n\
         addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n\
         print('before', flush=True)\n\
         print('returned', ctypes.CFUNCTYPE(ctypes.c_long)(addr)())\n"
    )
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn a_syscall_through_the_32_bit_or_x32_abi_kills_the_program() {
    let sandbox = sandbox(uids::FOREIGN_ABI, true).await;
    assert_isolated(&sandbox).await;
    for (abi, hex) in [
        // mov eax, 20 (i386 getpid); int 0x80; ret
        ("int 0x80", "b814000000cd80c3"),
        // mov eax, 0x40000027 (x32 getpid); syscall; ret
        ("x32", "b8270000400f05c3"),
    ] {
        let result = run(&sandbox, &python(&machine_code_program(hex))).await;
        assert_eq!(result.stdout, "before\n", "{abi}: {result:?}");
        assert_eq!(result.signal, Some(SIGSYS), "{abi}: {result:?}");
    }
}

#[tokio::test]
async fn python_threads_fork_subprocess_and_mmap_still_work() {
    let sandbox = sandbox(uids::PYTHON, true).await;
    let source = "\
import concurrent.futures, mmap, os, subprocess, threading
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    print('threads', sum(pool.map(lambda x: x * x, range(10))))
pid = os.fork()
if pid == 0:
    os._exit(7)
print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(subprocess.run(['/bin/echo', 'subprocess'], capture_output=True, text=True).stdout, end='')
pid = os.posix_spawn('/bin/true', ['true'], {})
print('posix_spawn', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
m = mmap.mmap(-1, 1 << 20)
m[:5] = b'hello'
print('mmap', m[:5].decode())
";
    let result = run(&sandbox, &python(source)).await;
    assert_eq!(
        result.stdout, "threads 285\nfork 7\nsubprocess\nposix_spawn 0\nmmap hello\n",
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

#[tokio::test]
async fn node_workers_child_processes_and_async_files_still_work() {
    if !std::path::Path::new("/usr/bin/node").exists() {
        eprintln!("SKIPPED: /usr/bin/node is missing");
        return;
    }
    let sandbox = sandbox(uids::NODE, true).await;
    // fs.promises goes through libuv, which tries io_uring first (denied: it falls back to
    // its thread pool).
    let source = "\
const { Worker } = require('worker_threads');
const { execFileSync } = require('child_process');
const fs = require('fs');
(async () => {
  const doubled = await new Promise((resolve, reject) => {
    const w = new Worker('require(\"worker_threads\").parentPort.postMessage(21 * 2)', { eval: true });
    w.on('message', resolve);
    w.on('error', reject);
  });
  console.log('worker', doubled);
  console.log('child', execFileSync('/bin/echo', ['hi']).toString().trim());
  await fs.promises.writeFile('/tmp/x', 'async');
  console.log('fs', await fs.promises.readFile('/tmp/x', 'utf8'));
})().catch((e) => { console.error(e); process.exit(1); });
";
    let result = run(&sandbox, &job("javascript", "main.js", source)).await;
    assert_eq!(
        result.stdout, "worker 42\nchild hi\nfs async\n",
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

#[tokio::test]
async fn bash_pipelines_subshells_and_background_jobs_still_work() {
    let sandbox = sandbox(uids::BASH, true).await;
    let script = "\
seq 1 100 | sort -rn | head -1
echo \"$(echo nested $(echo twice))\"
(exit 3); echo subshell $?
sleep 0.01 & wait $!; echo background $?
";
    let result = run(&sandbox, &bash(script)).await;
    assert_eq!(
        result.stdout, "100\nnested twice\nsubshell 3\nbackground 0\n",
        "{result:?}"
    );
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
}

#[tokio::test]
async fn the_program_inherits_no_memfd() {
    let sandbox = sandbox(uids::FDS, true).await;
    // bwrap read the filter and the job files from memfds: none of them is left open.
    let result = run(
        &sandbox,
        &bash("for f in /proc/$$/fd/*; do echo \"${f##*/} $(readlink $f)\"; done"),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Ok, "{result:?}");
    assert!(!result.stdout.contains("memfd:"), "{result:?}");
}
