//! This machine's processes as `/proc` shows them: one reader for the local provider (which
//! finds its agents by command line), the agent's start-up clean-up (`sandbox::leftovers`) and
//! the tests that check what is left running.

use std::path::Path;

/// One process. Zombies are listed too (with an empty `argv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// The real uid.
    pub uid: u32,
    /// Its pid namespace (`pid:[inode]`), when readable.
    pub pid_ns: Option<String>,
    /// The command line, each argument lossily as UTF-8.
    pub argv: Vec<String>,
}

impl Process {
    /// The command line's first argument, or "" (a zombie, a kernel thread).
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }
}

/// Every process on this machine; one that exits while it is read is left out.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// One process, if it exists.
pub fn process(pid: i32) -> Option<Process> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()
    };
    let uid = field("Uid:")?.parse().ok()?;
    let ppid = field("PPid:")?.parse().ok()?;
    let argv = std::fs::read(dir.join("cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let pid_ns = std::fs::read_link(dir.join("ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned());
    Some(Process {
        pid,
        ppid,
        uid,
        pid_ns,
        argv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed_as_it_is() {
        let me = std::process::id() as i32;
        let found = processes().into_iter().find(|p| p.pid == me);
        let found = found.expect("this process is listed");
        // SAFETY: getuid and getppid cannot fail.
        assert_eq!(found.uid, unsafe { libc::getuid() });
        assert_eq!(found.ppid, unsafe { libc::getppid() });
        let exe = std::env::args().next().unwrap_or_default();
        assert_eq!(found.program(), exe);
        assert!(found
            .pid_ns
            .as_ref()
            .is_some_and(|ns| ns.starts_with("pid:[")));
        assert_eq!(process(me), Some(found));
        assert_eq!(process(-1), None);
    }
}
