//! What a dead agent left running as its slot uids, killed when the next agent starts.
//!
//! An agent killed (SIGKILL) while bwrap or nsjail sets a sandbox up can leave the sandbox's
//! inner process behind: the outer one dies by its parent-death signal before it releases the
//! inner one, which has no parent-death signal yet and blocks for ever (see `warm`'s caveats).
//! On a VM the container's pid namespace dies with the agent and takes it along; with cgroups
//! the next agent's start kills what is left in a dead agent's cgroups (`cgroup`). This covers
//! the rest (an agent outside a container, without cgroups) by shape rather than by cgroup.
//!
//! # What counts as a leftover
//! A process running as one of this agent's slot uids, whose command is `bwrap` or `nsjail`,
//! and whose parent is **not** of those uids. In a live sandbox every such process has a parent
//! of the slot uids: the outer bwrap or nsjail is the child of the reaper shim (which runs as
//! the slot uid), the inner one the child of the outer one, or of the shim (a child subreaper)
//! once the outer one exited. Only once the shim is dead (and with it the agent, whose death
//! killed it) is a bwrap or nsjail reparented outside. So a second agent started on the same
//! uids while another runs (a misconfiguration, but one the tests make) kills nothing of it.
//! Programs themselves are never matched by name: under the `process` backend a program is the
//! agent's own child (root, not of the range) and must not be killed by a neighbour.

use std::collections::HashMap;
use std::path::Path;

use warmpool_core::procfs;

/// What `/proc` says of one process, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub pid: i32,
    pub uid: u32,
    pub parent_uid: Option<u32>,
    pub argv0: String,
}

/// Whether `p` is a leftover of a dead agent whose slot uids are `uids` (see the module docs).
pub(super) fn is_leftover(p: &Seen, uids: std::ops::Range<u32>) -> bool {
    let launcher = Path::new(&p.argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "bwrap" || n == "nsjail");
    // A parent that could not be read (it exited as we looked) decides nothing: a real
    // leftover's parent (init, or a subreaper) stays.
    uids.contains(&p.uid) && launcher && p.parent_uid.is_some_and(|u| !uids.contains(&u))
}

/// Kills every leftover of a dead agent on `uids`; returns how many it killed.
pub(super) fn kill(uids: std::ops::Range<u32>) -> usize {
    let processes = procfs::processes();
    let uid_of: HashMap<i32, u32> = processes.iter().map(|p| (p.pid, p.uid)).collect();
    let mut killed = 0;
    for p in &processes {
        let seen = Seen {
            pid: p.pid,
            uid: p.uid,
            parent_uid: uid_of.get(&p.ppid).copied(),
            argv0: p.program().to_string(),
        };
        if is_leftover(&seen, uids.clone()) {
            // SAFETY: kill on a pid; one that exited meanwhile fails with ESRCH.
            if unsafe { libc::kill(seen.pid, libc::SIGKILL) } == 0 {
                tracing::info!(pid = seen.pid, uid = seen.uid, command = %seen.argv0,
                    "killed a sandbox process a dead agent left behind");
                killed += 1;
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(uid: u32, parent_uid: Option<u32>, argv0: &str) -> Seen {
        Seen {
            pid: 7,
            uid,
            parent_uid,
            argv0: argv0.into(),
        }
    }

    #[test]
    fn only_a_launcher_of_the_range_reparented_outside_it_is_a_leftover() {
        let uids = 60_000..60_004;
        // The blocked inner bwrap of a dead agent, reparented to init; nsjail's likewise.
        assert!(is_leftover(&seen(60_001, Some(0), "bwrap"), uids.clone()));
        assert!(is_leftover(
            &seen(60_001, Some(1000), "/usr/bin/bwrap"),
            uids.clone()
        ));
        // A parent gone while we looked (an outer bwrap that just exited): not decided on.
        assert!(!is_leftover(&seen(60_001, None, "bwrap"), uids.clone()));
        assert!(is_leftover(
            &seen(60_003, Some(0), "/opt/nsjail"),
            uids.clone()
        ));
        // A live sandbox: its launchers' parents are of the range (the shim, the outer one).
        assert!(!is_leftover(
            &seen(60_001, Some(60_001), "bwrap"),
            uids.clone()
        ));
        assert!(!is_leftover(
            &seen(60_002, Some(60_002), "nsjail"),
            uids.clone()
        ));
        // A program under the `process` backend: the agent's (root's) child.
        assert!(!is_leftover(
            &seen(60_001, Some(0), "/usr/bin/python3"),
            uids.clone()
        ));
        // Another agent's sandboxes, on other uids.
        assert!(!is_leftover(&seen(61_000, Some(0), "bwrap"), uids.clone()));
        // Names that merely contain the word.
        assert!(!is_leftover(&seen(60_000, Some(0), "/tmp/bwrap-ish"), uids));
    }
}
