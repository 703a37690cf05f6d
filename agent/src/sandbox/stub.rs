//! The stub of a warm sandbox (see `warm`), and the message that hands it its job.
//!
//! The agent writes the job ([`encode_job`]) down a pipe the stub inherited; the stub
//! ([`stub_main`], the agent binary run as `warmpool-agent sandbox-stub FD` inside the sandbox)
//! reads it to end-of-file, checks it as untrusted input ([`decode_job`]: names, sizes,
//! NULs), writes the job's files into `/work` with `O_CREAT|O_EXCL|O_NOFOLLOW`, lowers
//! `RLIMIT_CPU` (and `RLIMIT_AS` without a memory cgroup) to the job's, marks every fd but
//! 0-2 close-on-exec, resets every signal to its default action, and execs the program. The
//! encoder and the decoder sit together so that one test holds them to one format.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use warmpool_core::model::FileSpec;
use warmpool_core::rules::check_file_name;

use super::rlimits::Rlimits;

/// The agent's subcommand that runs the stub (`main` dispatches on it before anything else).
pub const STUB_COMMAND: &str = "sandbox-stub";
/// The stub's ready byte, on its stdout before it reads its job.
pub(super) const READY: u8 = b'R';
/// The message's first bytes; anything else is refused.
const MAGIC: &[u8; 4] = b"WPJ1";
/// The stub reads at most this much: more than any valid job (files are capped by the work
/// directory's size, which the agent checked), far less than the cgroup allows.
const MAX_MESSAGE: u64 = 1 << 30;
/// Stub exit statuses: a refused or failed hand-over, and a program that could not be exec'd.
const STUB_FAILED: i32 = 125;
const EXEC_FAILED: i32 = 127;

/// The job as the stub reads it; all integers little-endian:
/// `"WPJ1"`, `cpu_soft_s` u64, `cpu_hard_s` u64, `address_space_bytes` u64 (`u64::MAX`: none),
/// `argc` u32 then each argument (u32 length, bytes), `nfiles` u32 then each file (u32 name
/// length, name, u64 content length, content).
pub(super) fn encode_job(argv: &[String], files: &[FileSpec], rlimits: &Rlimits) -> Vec<u8> {
    let size = 64
        + argv.iter().map(|a| 4 + a.len()).sum::<usize>()
        + files
            .iter()
            .map(|f| 12 + f.name.len() + f.content.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&rlimits.cpu_soft_s.to_le_bytes());
    out.extend_from_slice(&rlimits.cpu_hard_s.to_le_bytes());
    out.extend_from_slice(
        &rlimits
            .address_space_bytes
            .unwrap_or(u64::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    for arg in argv {
        out.extend_from_slice(&(arg.len() as u32).to_le_bytes());
        out.extend_from_slice(arg.as_bytes());
    }
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for file in files {
        out.extend_from_slice(&(file.name.len() as u32).to_le_bytes());
        out.extend_from_slice(file.name.as_bytes());
        out.extend_from_slice(&(file.content.len() as u64).to_le_bytes());
        out.extend_from_slice(file.content.as_bytes());
    }
    out
}

/// The job, decoded and checked by the stub.
#[derive(Debug, PartialEq, Eq)]
struct StubJob {
    cpu_soft_s: u64,
    cpu_hard_s: u64,
    address_space_bytes: Option<u64>,
    argv: Vec<Vec<u8>>,
    files: Vec<(String, Vec<u8>)>,
}

fn decode_job(mut bytes: &[u8]) -> Result<StubJob, &'static str> {
    fn take<'a>(bytes: &mut &'a [u8], n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "truncated")?;
        if bytes.len() < n {
            return Err("truncated");
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn u32_of(bytes: &mut &[u8]) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            take(bytes, 4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u64_of(bytes: &mut &[u8]) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            take(bytes, 8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    if take(&mut bytes, 4)? != MAGIC {
        return Err("not a job message");
    }
    let cpu_soft_s = u64_of(&mut bytes)?;
    let cpu_hard_s = u64_of(&mut bytes)?;
    let address_space_bytes = Some(u64_of(&mut bytes)?).filter(|&b| b != u64::MAX);
    let argc = u32_of(&mut bytes)?;
    let mut argv = Vec::new();
    for _ in 0..argc {
        let len = u32_of(&mut bytes)?;
        let arg = take(&mut bytes, len.into())?;
        if arg.contains(&0) {
            return Err("an argument contains NUL");
        }
        argv.push(arg.to_vec());
    }
    if argv
        .first()
        .is_none_or(|program| !program.starts_with(b"/"))
    {
        return Err("the program is not an absolute path");
    }
    let nfiles = u32_of(&mut bytes)?;
    let mut files = Vec::new();
    for _ in 0..nfiles {
        let len = u32_of(&mut bytes)?;
        let name = std::str::from_utf8(take(&mut bytes, len.into())?)
            .map_err(|_| "a file name is not UTF-8")?;
        check_file_name(name).map_err(|_| "a file name could escape /work")?;
        let len = u64_of(&mut bytes)?;
        files.push((name.to_string(), take(&mut bytes, len)?.to_vec()));
    }
    if !bytes.is_empty() {
        return Err("trailing bytes");
    }
    if cpu_soft_s > cpu_hard_s {
        return Err("the CPU soft limit is above the hard one");
    }
    Ok(StubJob {
        cpu_soft_s,
        cpu_hard_s,
        address_space_bytes,
        argv,
        files,
    })
}

/// `warmpool-agent sandbox-stub FD`, inside a warm sandbox: see the module docs. Never
/// returns: it becomes the program, or exits with [`STUB_FAILED`] or [`EXEC_FAILED`] and a
/// line on stderr (the program's stderr, so the job's result shows why).
pub fn stub_main(args: &[OsString]) -> ! {
    let fail = |code: i32, why: &dyn std::fmt::Display| -> ! {
        let _ = writeln!(io::stderr(), "warmpool sandbox stub: {why}");
        std::process::exit(code)
    };
    let fd: RawFd = match args.get(2).and_then(|a| a.to_str()?.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => fail(STUB_FAILED, &"usage: sandbox-stub FD"),
    };
    // SAFETY: the fd was inherited for us alone (see `Preparer::prepare`); we own it from here.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = io::stdout()
        .write_all(&[READY])
        .and_then(|()| io::stdout().flush())
    {
        fail(STUB_FAILED, &format_args!("signalling ready: {e}"));
    }
    let mut message = Vec::new();
    if let Err(e) = (&mut pipe).take(MAX_MESSAGE).read_to_end(&mut message) {
        fail(STUB_FAILED, &format_args!("reading the job: {e}"));
    }
    drop(pipe);
    let job = decode_job(&message).unwrap_or_else(|why| fail(STUB_FAILED, &why));
    drop(message);
    for (name, content) in &job.files {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(Path::new("/work").join(name))
            .and_then(|mut file| file.write_all(content));
        if let Err(e) = written {
            fail(STUB_FAILED, &format_args!("writing /work/{name}: {e}"));
        }
    }
    let limit = |resource, soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid struct. Only lowering: the stub is unprivileged.
        if unsafe { libc::setrlimit(resource, &limit) } == -1 {
            fail(
                STUB_FAILED,
                &format_args!("setting a limit: {}", io::Error::last_os_error()),
            );
        }
    };
    limit(libc::RLIMIT_CPU, job.cpu_soft_s, job.cpu_hard_s);
    if let Some(bytes) = job.address_space_bytes {
        limit(libc::RLIMIT_AS, bytes, bytes);
    }
    if let Err(e) = close_on_exec_from(3) {
        fail(STUB_FAILED, &format_args!("closing inherited fds: {e}"));
    }
    reset_signal_dispositions();
    let program = PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&job.argv[0])));
    // std resets SIGPIPE (which its runtime ignores) and the signal mask before the exec.
    let error = std::process::Command::new(&program)
        .args(job.argv[1..].iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .exec();
    fail(
        EXEC_FAILED,
        &format_args!("exec {}: {error}", program.display()),
    )
}

/// Marks every fd from `first` on close-on-exec, so that the program inherits only stdin,
/// stdout and stderr (under nsjail the stub runs from an inherited fd on the agent binary).
fn close_on_exec_from(first: libc::c_uint) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's fds.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return Ok(());
    }
    // Kernels before 5.11: one by one. Collected first: the directory's own fd is among them.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on an fd number; one that closed meanwhile fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Every signal back to its default action: the program must start as a cold run's does,
/// whatever the stub inherited (bash ignores SIGINT and SIGQUIT for a background command, as
/// under nsjail's loader). Signals that cannot be changed are skipped.
fn reset_signal_dispositions() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: installs the default disposition; no handler code is involved.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_core::model::Limits;

    /// The message of a job running `argv` with `files`.
    fn encode(argv: &[&str], files: &[FileSpec], rlimits: &Rlimits) -> Vec<u8> {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        encode_job(&argv, files, rlimits)
    }

    fn rlimits(address_space_mb: Option<u64>) -> Rlimits {
        let limits = Limits {
            wall_time_ms: 1000,
            cpu_time_ms: 1500,
            memory_mb: 64,
            max_output_bytes: 1024,
        };
        Rlimits::for_limits(&limits, 64, address_space_mb, true)
    }

    #[test]
    fn a_job_decodes_to_what_was_encoded() {
        let files = [
            FileSpec {
                name: "main.py".into(),
                content: "print(1)\n".into(),
            },
            FileSpec {
                name: "-c".into(),
                content: String::new(),
            },
        ];
        let argv = ["/usr/bin/python3", "main.py", "a b"];
        let job = decode_job(&encode(&argv, &files, &rlimits(Some(100)))).unwrap();
        assert_eq!(
            job,
            StubJob {
                cpu_soft_s: 2,
                cpu_hard_s: 3,
                address_space_bytes: Some(100 * 1024 * 1024),
                argv: vec![
                    b"/usr/bin/python3".to_vec(),
                    b"main.py".to_vec(),
                    b"a b".to_vec()
                ],
                files: vec![
                    ("main.py".into(), b"print(1)\n".to_vec()),
                    ("-c".into(), Vec::new())
                ],
            }
        );
        let job = decode_job(&encode(&argv, &files, &rlimits(None))).unwrap();
        assert_eq!(job.address_space_bytes, None);
    }

    #[test]
    fn the_stub_refuses_messages_it_should_not_trust() {
        let files = |name: &str| {
            vec![FileSpec {
                name: name.into(),
                content: "x".into(),
            }]
        };
        for (argv, files, why) in [
            (vec!["relative"], files("a"), "a relative program"),
            (vec!["/bin/x\0y"], files("a"), "a NUL in an argument"),
            (vec!["/bin/x"], files("../escape"), "a path in a name"),
            (vec!["/bin/x"], files(".."), "a dot-dot name"),
            (vec!["/bin/x"], files(""), "an empty name"),
        ] {
            let message = encode(&argv, &files, &rlimits(None));
            assert!(decode_job(&message).is_err(), "accepted {why}");
        }
        let good = encode(&["/bin/x"], &files("a"), &rlimits(None));
        assert!(decode_job(&good).is_ok());
        for cut in 0..good.len() {
            assert!(decode_job(&good[..cut]).is_err(), "accepted a cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_job(&long).is_err(), "accepted trailing bytes");
        let mut forged = good;
        forged[0] = b'X';
        assert!(decode_job(&forged).is_err(), "accepted a wrong magic");
    }
}
