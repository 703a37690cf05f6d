//! The rules a request must follow, in one place for the API that checks them first and the
//! agent that checks them again before it trusts a job with a path.

use crate::model::{Limits, LimitsRequest};

/// Why a file name may not name a new entry of the work directory (`Ok`: it may). "a..b" is an
/// ordinary name; only "." and ".." name something other than a new entry.
pub fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("must not contain '/' or NUL");
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"");
    }
    Ok(())
}

/// A game id: 1–128 of `[A-Za-z0-9._-]` (never ':', which the key schema uses as separator).
pub fn valid_game_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A pool name: 1–32 of `[a-z0-9-]` (it is part of every key, instance name and label).
pub fn valid_pool_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The default and the largest value of each limit (the operator's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRules {
    pub default: Limits,
    pub max: Limits,
}

impl LimitRules {
    /// A client's limits with the defaults filled in; `Err` names the field out of range.
    pub fn resolve(&self, req: Option<LimitsRequest>) -> Result<Limits, String> {
        let req = req.unwrap_or_default();
        let pick = |field: &str, asked: Option<u64>, default: u64, max: u64| match asked {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!("limits.{field} is {v}; allowed: 1..={max}")),
        };
        let (d, m) = (&self.default, &self.max);
        Ok(Limits {
            wall_time_ms: pick(
                "wall_time_ms",
                req.wall_time_ms,
                d.wall_time_ms,
                m.wall_time_ms,
            )?,
            cpu_time_ms: pick("cpu_time_ms", req.cpu_time_ms, d.cpu_time_ms, m.cpu_time_ms)?,
            memory_mb: pick("memory_mb", req.memory_mb, d.memory_mb, m.memory_mb)?,
            max_output_bytes: pick(
                "max_output_bytes",
                req.max_output_bytes,
                d.max_output_bytes,
                m.max_output_bytes,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_could_escape_the_work_dir_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc/passwd",
            "../x",
            "a\0b",
            &"x".repeat(256),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            "main.py",
            "-c",
            ".hidden",
            "a..b",
            "x".repeat(255).as_str(),
            "ünï.js",
        ] {
            assert!(check_file_name(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn game_ids_follow_the_contract() {
        assert!(valid_game_id("g"));
        assert!(valid_game_id("Match_42.round-3"));
        assert!(valid_game_id(&"a".repeat(128)));
        for bad in ["", "a b", "a/b", "a:b", "é", "a\0b", "{x}"] {
            assert!(!valid_game_id(bad), "{bad:?}");
        }
        assert!(!valid_game_id(&"a".repeat(129)));
    }

    #[test]
    fn pool_names_are_short_lowercase_words() {
        assert!(valid_pool_name("games-eu-1"));
        for bad in ["", "Bad Pool", "a_b", "{x}", &"a".repeat(33)] {
            assert!(!valid_pool_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn limits_take_defaults_and_refuse_values_out_of_range_by_name() {
        let l = |n| Limits {
            wall_time_ms: n,
            cpu_time_ms: n,
            memory_mb: n,
            max_output_bytes: n,
        };
        let rules = LimitRules {
            default: l(5),
            max: l(10),
        };
        assert_eq!(rules.resolve(None), Ok(l(5)));
        let asked = LimitsRequest {
            memory_mb: Some(10),
            ..Default::default()
        };
        assert_eq!(rules.resolve(Some(asked)).map(|l| l.memory_mb), Ok(10));
        for (asked, field) in [
            (
                LimitsRequest {
                    wall_time_ms: Some(0),
                    ..Default::default()
                },
                "limits.wall_time_ms",
            ),
            (
                LimitsRequest {
                    max_output_bytes: Some(11),
                    ..Default::default()
                },
                "limits.max_output_bytes",
            ),
        ] {
            let err = rules.resolve(Some(asked)).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
