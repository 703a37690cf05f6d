//! The language catalog: which languages warmpool knows, their aliases, and how an agent runs
//! each. The orchestrator validates requests against it (so executions can be accepted during
//! a cold start, before any agent has reported); each agent probes which of these its VM
//! actually has and reports their versions when it registers.

/// How to run one language. The command is `program args… ENTRY user_args…`, where ENTRY is
/// the first file of the request: an argument vector, never a shell string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// Canonical name, as stored in jobs and shown by `GET /v1/languages`.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// Absolute path of the interpreter (inside the sandbox the same path is bound read-only).
    pub program: &'static str,
    /// Arguments before the entry file.
    pub args: &'static [&'static str],
    /// Arguments that make the interpreter print its version.
    pub version_args: &'static [&'static str],
    /// Address space the runtime reserves before running any user code, added to the
    /// execution's `memory_mb` when it becomes RLIMIT_AS: V8 reserves ~800 MB up front and cannot
    /// start below it. (A memory cgroup, which limits what is used, replaces this allowance.)
    pub address_space_extra_mb: u64,
}

/// Every language warmpool knows. An agent offers those whose `program` exists on its VM.
pub const CATALOG: &[RuntimeSpec] = &[
    RuntimeSpec {
        name: "python",
        aliases: &["python3", "py"],
        program: "/usr/bin/python3",
        // -E: ignore PYTHON* env; -s: no user site; -B: no .pyc written. Not -I: it would also
        // drop the script's directory from sys.path, and programs import their other files.
        args: &["-E", "-s", "-B"],
        version_args: &["--version"],
        address_space_extra_mb: 0,
    },
    RuntimeSpec {
        name: "bash",
        aliases: &["sh", "shell"],
        program: "/bin/bash",
        args: &[],
        version_args: &["-c", "echo $BASH_VERSION"],
        address_space_extra_mb: 0,
    },
    RuntimeSpec {
        name: "javascript",
        aliases: &["js", "node", "nodejs"],
        program: "/usr/bin/node",
        args: &[],
        version_args: &["--version"],
        address_space_extra_mb: 1024,
    },
];

/// The catalog entry for a language name or alias (case-insensitive).
pub fn lookup(language: &str) -> Option<&'static RuntimeSpec> {
    CATALOG.iter().find(|spec| {
        spec.name.eq_ignore_ascii_case(language)
            || spec
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(language))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve_to_their_runtime() {
        assert_eq!(lookup("python").map(|s| s.name), Some("python"));
        assert_eq!(lookup("PY").map(|s| s.name), Some("python"));
        assert_eq!(lookup("sh").map(|s| s.name), Some("bash"));
        assert_eq!(lookup("node").map(|s| s.name), Some("javascript"));
        assert_eq!(lookup("cobol"), None);
    }

    #[test]
    fn no_alias_is_claimed_twice() {
        let mut seen = std::collections::HashSet::new();
        for spec in CATALOG {
            assert!(seen.insert(spec.name));
            for alias in spec.aliases {
                assert!(seen.insert(alias), "{alias} is claimed twice");
            }
        }
    }
}
