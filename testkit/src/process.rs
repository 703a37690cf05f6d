//! The processes of this machine as a test checks them (through `warmpool_core::procfs`), and
//! stopping a child a test started.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// Pids of every process whose real uid is `uid`, zombies included.
pub fn processes_of(uid: u32) -> Vec<u32> {
    warmpool_core::procfs::processes()
        .into_iter()
        .filter(|p| p.uid == uid)
        .map(|p| p.pid as u32)
        .collect()
}

/// Command lines (joined by spaces) of the processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<String> {
    warmpool_core::procfs::processes()
        .into_iter()
        .map(|p| p.argv.join(" "))
        .filter(|line| line.contains(needle))
        .collect()
}

/// SIGTERM, then up to `grace` for the child to exit, then SIGKILL; always reaped.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill has no memory effects; a pid that is gone gets ESRCH.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let exited =
        crate::wait::settled_blocking(grace, || child.try_wait().ok().flatten(), Option::is_some);
    match exited {
        Some(status) => Some(status),
        None => {
            let _ = child.kill();
            child.wait().ok()
        }
    }
}
