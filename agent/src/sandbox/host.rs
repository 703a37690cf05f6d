//! What both backends take from the host, in one place so that neither imports the other: the
//! read-only view of the host's filesystem every sandbox gets, the environment allow-list, the
//! launchers' lookup on PATH, and the fd plumbing (memfds, pipes, pidfds) that the backends,
//! the supervisor and the cgroups share.
//!
//! bwrap renders the binds as command-line options, nsjail as `mount` entries of its
//! configuration; both iterate [`READ_ONLY`] and [`ROOT_LINKS`] in order, so the two sandboxes
//! see the same host files (a unit test in `sandbox` compares the two renderings).

use std::ffi::{CStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use warmpool_core::model::FileSpec;

use super::error::SandboxError;

/// One host path the sandbox sees read-only, at the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadOnly {
    pub path: &'static str,
    /// A missing path fails the sandbox's start; an optional one is skipped (bwrap's
    /// `--ro-bind-try`; nsjail's configuration leaves it out when absent at start-up).
    pub required: bool,
}

/// Everything of the host a sandbox sees, all read-only. `/usr` holds every runtime of the
/// catalog; `/etc/ld.so.cache` saves the dynamic loader a directory search;
/// `/etc/alternatives` is where Debian points some `/usr/bin` names.
pub(super) const READ_ONLY: &[ReadOnly] = &[
    ReadOnly {
        path: "/usr",
        required: true,
    },
    ReadOnly {
        path: "/etc/ld.so.cache",
        required: false,
    },
    ReadOnly {
        path: "/etc/alternatives",
        required: false,
    },
];

/// Top-level names that are links into `/usr` on a merged-usr host, directories otherwise.
pub(super) const ROOT_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// The only environment inside the sandbox (the process backend keeps the names, with its own
/// directory for `HOME` and `TMPDIR`).
pub(super) const ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/bin:/bin"),
    ("HOME", "/work"),
    ("LANG", "C.UTF-8"),
    ("TMPDIR", "/tmp"),
];

/// The job's directory inside the sandbox: a sized tmpfs holding its files.
pub(super) const WORK_DIR: &str = "/work";

/// How one of [`ROOT_LINKS`] appears in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RootEntry {
    /// A symlink on the host (`/lib64 -> usr/lib64`): the same symlink inside.
    Symlink {
        path: &'static str,
        target: OsString,
    },
    /// A real directory on the host (split-usr): bound read-only.
    Bind(&'static str),
}

/// How each of [`ROOT_LINKS`] that exists on this host appears in the sandbox, read now (once,
/// at start-up: the layout of `/` does not change under a running agent).
pub(super) fn root_layout() -> Vec<RootEntry> {
    ROOT_LINKS
        .iter()
        .filter_map(|&path| {
            let meta = std::fs::symlink_metadata(path).ok()?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).ok()?;
                Some(RootEntry::Symlink {
                    path,
                    target: target.into_os_string(),
                })
            } else if meta.is_dir() {
                Some(RootEntry::Bind(path))
            } else {
                None
            }
        })
        .collect()
}

/// One job file in a memfd: its content never touches the host's disk.
pub(super) struct MemFile {
    pub fd: OwnedFd,
    pub name: String,
}

impl MemFile {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Writes each file into its own close-on-exec memfd (bwrap's `--file FD /work/NAME`, nsjail's
/// loader copying it into `/work`).
pub(super) fn memfds(files: &[FileSpec]) -> Result<Vec<MemFile>, SandboxError> {
    files
        .iter()
        .map(|spec| {
            let fd = memfd(c"warmpool-job-file", spec.content.as_bytes()).map_err(|source| {
                SandboxError::Prepare {
                    context: "writing a job file to a memfd",
                    source,
                }
            })?;
            Ok(MemFile {
                fd,
                name: spec.name.clone(),
            })
        })
        .collect()
}

/// A close-on-exec memfd holding `content`, its offset at 0 (where a reader of an inherited fd
/// starts: bwrap, nsjail, `cat` in nsjail's loader).
pub(super) fn memfd(name: &CStr, content: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    // Positional write: the offset stays at 0.
    file.write_all_at(content, 0)?;
    Ok(OwnedFd::from(file))
}

/// A pipe, `(read, write)`, with `flags` (`O_CLOEXEC`, and `O_NONBLOCK` for nsjail's log) on
/// both ends.
pub(super) fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pidfd (close-on-exec) on `pid`: a handle that can never signal a recycled pid.
pub(super) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd (close-on-exec) that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILL through a pidfd; `false` if it could not be sent (the process is gone).
pub(super) fn pidfd_kill(pidfd: &OwnedFd) -> bool {
    // SAFETY: plain syscall on a pidfd we own.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

/// The first executable file named `name` on PATH (or the usual directories).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
