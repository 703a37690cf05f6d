//! `warmpool-agent-env`: the agent settings an instance's metadata carries, one contract for
//! the Compute Engine provider that writes them (checked at start, so a typo stops the
//! orchestrator rather than every VM) and the agent that reads them (its `metadata` module).
//!
//! One `KEY=VALUE` per line (the value runs to the end of the line, `=` included); blank lines
//! and lines starting with `#` are skipped. Only agent settings are accepted: keys starting
//! with `WARMPOOL_AGENT_` or `WARMPOOL_SANDBOX_`, and the few listed in [`ALLOWED_KEYS`];
//! nothing that reaches another program (`PATH`, `LD_PRELOAD`) or the VM's identity (which has
//! its own attributes).

pub const ALLOWED_PREFIXES: [&str; 2] = ["WARMPOOL_AGENT_", "WARMPOOL_SANDBOX_"];
/// The pool settings both sides follow are not here: the agent receives the placement when it
/// registers (see `store::settings`), and each execution record carries its retention.
pub const ALLOWED_KEYS: [&str; 5] = [
    "WARMPOOL_HEARTBEAT_INTERVAL_MS",
    "RUST_LOG",
    "WARMPOOL_LOG",
    "WARMPOOL_LOG_FORMAT",
    "WARMPOOL_LOG_PROJECT",
];
/// Match an allowed prefix, but the agent's bootstrap sets or reads them itself.
pub const BOOTSTRAP_KEYS: [&str; 3] = [
    "WARMPOOL_AGENT_INSTANCE",
    "WARMPOOL_AGENT_FROM_METADATA",
    "WARMPOOL_AGENT_METADATA_TIMEOUT_S",
];

/// Why `key` may not be set through `warmpool-agent-env` (`Ok`: it may).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!("{key:?} is not a variable name"));
    }
    if BOOTSTRAP_KEYS.contains(&key) {
        return Err(format!(
            "{key} is set by the bootstrap itself and cannot come from warmpool-agent-env"
        ));
    }
    if !(ALLOWED_PREFIXES.iter().any(|p| key.starts_with(p)) || ALLOWED_KEYS.contains(&key)) {
        return Err(format!(
            "{key} is not an agent setting (allowed: WARMPOOL_AGENT_*, WARMPOOL_SANDBOX_*, {})",
            ALLOWED_KEYS.join(", ")
        ));
    }
    Ok(())
}

/// Parses the lines; `Err((line, problem))` names the first bad line (1-based).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_end_matches('\r').trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err((i + 1, "not KEY=VALUE".into()));
        };
        let key = key.trim();
        check_key(key).map_err(|p| (i + 1, p))?;
        if value.contains('\0') {
            return Err((i + 1, format!("the value of {key} contains a NUL byte")));
        }
        vars.push((key.to_string(), value.to_string()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_settings_only() {
        let vars = parse("# slots\nWARMPOOL_AGENT_SLOTS=3\n\nWARMPOOL_LOG=warn,warmpool_agent=debug\r\nWARMPOOL_AGENT_X=a=b\n").unwrap();
        assert_eq!(
            vars,
            [
                ("WARMPOOL_AGENT_SLOTS".to_string(), "3".to_string()),
                ("WARMPOOL_LOG".into(), "warn,warmpool_agent=debug".into()),
                ("WARMPOOL_AGENT_X".into(), "a=b".into()),
            ]
        );
        for (text, line, names) in [
            ("LD_PRELOAD=/x.so", 1, "LD_PRELOAD"),
            (
                "WARMPOOL_AGENT_SLOTS=1\nWARMPOOL_REDIS_URL=redis://x",
                2,
                "WARMPOOL_REDIS_URL",
            ),
            ("WARMPOOL_AGENT_INSTANCE=projects/p", 1, "bootstrap"),
            ("lowercase=1", 1, "lowercase"),
            ("NOEQUALS", 1, "KEY=VALUE"),
        ] {
            let (l, problem) = parse(text).unwrap_err();
            assert_eq!(l, line, "{text}");
            assert!(problem.contains(names), "{text}: {problem}");
        }
    }
}
