//! Start-up checks: a sandbox that does not isolate must never take a job, and a runtime is
//! offered only if it starts inside the sandbox and tells its version.

use warmpool_core::model::Limits;

/// Limits of the probe programs. Generous memory: V8 (node) reserves about 800 MB of address
/// space at start, which RLIMIT_AS counts.
pub(super) const PROBE_LIMITS: Limits = Limits {
    wall_time_ms: 10_000,
    cpu_time_ms: 5_000,
    memory_mb: 2_048,
    max_output_bytes: 64 * 1024,
};

/// Prints what the sandbox looks like from inside, using shell builtins only so that the
/// probe needs nothing but `/bin/sh`: the process's credentials and capabilities, its limits,
/// the network interfaces, and the processes it can see.
const ISOLATION_SCRIPT: &str = r#"
dump() { while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < "$1"; }
echo '== status'; dump /proc/self/status
echo '== limits'; dump /proc/self/limits
echo '== net'; dump /proc/net/dev
echo '== pids'; for p in /proc/[0-9]*; do printf '%s\n' "${p#/proc/}"; done
"#;

pub(super) fn isolation_command() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), ISOLATION_SCRIPT.into()]
}

/// What the probe program saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct IsolationReport {
    /// Real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    pub effective_capabilities: Option<u64>,
    /// Soft limit of "Max processes", as /proc prints it.
    pub max_processes: Option<String>,
    pub interfaces: Vec<String>,
    pub visible_pids: usize,
}

pub(super) fn parse_isolation(stdout: &str) -> IsolationReport {
    let mut report = IsolationReport::default();
    let mut section = "";
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            section = name;
            continue;
        }
        match section {
            "status" => {
                if let Some(rest) = line.strip_prefix("Uid:") {
                    report.uids = rest
                        .split_whitespace()
                        .filter_map(|u| u.parse().ok())
                        .collect();
                } else if let Some(rest) = line.strip_prefix("CapEff:") {
                    report.effective_capabilities = u64::from_str_radix(rest.trim(), 16).ok();
                }
            }
            "limits" => {
                if let Some(rest) = line.strip_prefix("Max processes") {
                    report.max_processes = rest.split_whitespace().next().map(str::to_string);
                }
            }
            // Two header lines, then "  lo: 0 0 ...".
            "net" => {
                if let Some((name, _)) = line.split_once(':') {
                    let name = name.trim();
                    if !name.is_empty() && !name.contains('|') {
                        report.interfaces.push(name.to_string());
                    }
                }
            }
            "pids" if line.parse::<u32>().is_ok() => report.visible_pids += 1,
            _ => {}
        }
    }
    report
}

impl IsolationReport {
    /// `Err` with every failed check, or `Ok` if the sandbox isolates as designed.
    pub fn check(&self, nproc: u64) -> Result<(), String> {
        let mut failures = Vec::new();
        if self.uids.len() != 4 || self.uids.contains(&0) {
            failures.push(format!("uids {:?}: must be 4 uids, none root", self.uids));
        }
        if self.effective_capabilities != Some(0) {
            failures.push(format!(
                "effective capabilities {:?}: must be none",
                self.effective_capabilities
            ));
        }
        if self.interfaces != ["lo"] {
            failures.push(format!(
                "network interfaces {:?}: must be only lo",
                self.interfaces
            ));
        }
        // bwrap's init and the shell; a host pid namespace shows dozens.
        if self.visible_pids == 0 || self.visible_pids > 3 {
            failures.push(format!(
                "{} processes visible: a fresh pid namespace shows at most 3",
                self.visible_pids
            ));
        }
        if self.max_processes.as_deref() != Some(nproc.to_string().as_str()) {
            failures.push(format!(
                "process limit {:?}: must be {nproc}",
                self.max_processes
            ));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the sandbox does not isolate: {} (does this kernel allow unprivileged user \
                 namespaces? see `sysctl user.max_user_namespaces`)",
                failures.join("; ")
            ))
        }
    }
}

/// The version in an interpreter's `--version` output: the first word that starts with a
/// digit (after an optional `v`), up to its last digit or dot.
///
/// "Python 3.11.2" → "3.11.2"; "v20.19.2" → "20.19.2"; "5.2.15(1)-release" → "5.2.15".
pub(super) fn parse_version(output: &str) -> Option<String> {
    output.split_whitespace().find_map(|word| {
        let word = match word.strip_prefix('v') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
            _ => word,
        };
        if !word.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let end = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        Some(word[..end].trim_end_matches('.').to_string())
    })
}

/// What the isolation probe must show of the seccomp filter, as the program will run:
/// no_new_privs, and with `seccomp` on the filter in force (mode 2). nsjail's probe checks it
/// always, bwrap's with seccomp on (`/proc/self/status` is in the probe's output).
pub(super) fn check_seccomp_and_no_new_privs(
    probe_stdout: &str,
    seccomp: bool,
) -> Result<(), String> {
    let field = |name: &str| {
        probe_stdout.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let mut failures = Vec::new();
    // 2: SECCOMP_MODE_FILTER.
    if seccomp && field("Seccomp").as_deref() != Some("2") {
        failures.push(format!(
            "seccomp mode {:?}: must be 2 (filter)",
            field("Seccomp")
        ));
    }
    if field("NoNewPrivs").as_deref() != Some("1") {
        failures.push(format!("no_new_privs {:?}: must be 1", field("NoNewPrivs")));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the sandbox does not isolate: {}",
            failures.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_each_runtimes_own_format() {
        for (output, want) in [
            ("Python 3.11.2\n", Some("3.11.2")),
            ("v20.19.2\n", Some("20.19.2")),
            ("5.2.15(1)-release\n", Some("5.2.15")),
            ("ruby 3.1.2p20 (2022-04-12)", Some("3.1.2")),
            ("no version here", None),
            ("", None),
        ] {
            assert_eq!(parse_version(output).as_deref(), want, "{output:?}");
        }
    }

    const ISOLATED: &str = "\
== status
Name:\tsh
Uid:\t60000\t60000\t60000\t60000
CapEff:\t0000000000000000
== limits
Max processes             64                   64                   processes
== net
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
== pids
1
2
";

    #[test]
    fn an_isolated_sandbox_passes_the_probe() {
        let report = parse_isolation(ISOLATED);
        assert_eq!(report.uids, [60000; 4]);
        assert_eq!(report.interfaces, ["lo"]);
        assert_eq!(report.visible_pids, 2);
        assert_eq!(report.check(64), Ok(()));
    }

    #[test]
    fn each_missing_isolation_fails_the_probe() {
        let cases = [
            (
                "root",
                ISOLATED.replace("Uid:\t60000\t60000", "Uid:\t0\t0"),
                "uids",
            ),
            (
                "capabilities",
                ISOLATED.replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff"),
                "capabilities",
            ),
            (
                "host network",
                ISOLATED.replace("== pids", "  eth0: 1 2 3\n== pids"),
                "network",
            ),
            (
                "host pids",
                ISOLATED.replace("2\n", "2\n3\n4\n5\n"),
                "processes visible",
            ),
            (
                "no process limit",
                ISOLATED.replace(
                    "Max processes             64",
                    "Max processes             96365",
                ),
                "process limit",
            ),
            ("empty output", String::new(), "uids"),
        ];
        for (name, stdout, wanted) in cases {
            let err = parse_isolation(&stdout).check(64).unwrap_err();
            assert!(err.contains(wanted), "{name}: {err}");
        }
    }

    #[test]
    fn the_probe_must_see_seccomp_and_no_new_privs() {
        let ok = "Name:\tsh\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t2\n";
        assert_eq!(check_seccomp_and_no_new_privs(ok, true), Ok(()));
        let err =
            check_seccomp_and_no_new_privs("NoNewPrivs:\t0\nSeccomp:\t0\n", true).unwrap_err();
        assert!(
            err.contains("seccomp") && err.contains("no_new_privs"),
            "{err}"
        );
        assert!(check_seccomp_and_no_new_privs("", true).is_err());
        // Seccomp off: no filter expected, no_new_privs still.
        assert_eq!(
            check_seccomp_and_no_new_privs("NoNewPrivs:\t1\nSeccomp:\t0\n", false),
            Ok(())
        );
        assert!(check_seccomp_and_no_new_privs("NoNewPrivs:\t0\nSeccomp:\t0\n", false).is_err());
    }
}
