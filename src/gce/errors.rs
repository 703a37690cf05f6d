//! What a Compute Engine failure means for the pool: retry here, try the next zone, or stop
//! and tell the operator.
//!
//! Compute Engine reports a failure in two places: the HTTP answer to a call (bad request,
//! permission, rate limit, backend error) and, for a create accepted at first, the error of its
//! zone operation (a stockout or a quota discovered while placing the VM). Both are classified
//! here, as pure functions, so the table below is the whole policy.
//!
//! | Where | What | Class |
//! |-------|------|-------|
//! | HTTP | no answer, timeout, 429, 5xx, 403 rate limit or API request quota | `Transient`: back off, retry the same request id |
//! | HTTP | 409 `alreadyExists` on insert | `Exists`: our earlier attempt made it |
//! | HTTP | 403 quota | `Capacity`: next zone |
//! | HTTP | other 4xx (bad image, machine type, permission) | `Config`: the VM fails, creates pause |
//! | operation | `ZONE_RESOURCE_POOL_EXHAUSTED*`, `*STOCKOUT*`, `QUOTA_EXCEEDED`, `*_QUOTA_*` | `Capacity`: next zone |
//! | operation | rate exceeded, internal or unavailable | `Transient`: insert again (a new request id) |
//! | operation | `RESOURCE_ALREADY_EXISTS` | `Exists` |
//! | operation | anything else | `Config` |

/// The class of a Compute Engine failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Passing: wait and retry.
    Transient(String),
    /// The zone cannot take the VM now (stockout, zone or regional quota): try the next zone.
    Capacity(String),
    /// The request itself is wrong (image, machine type, permission): retrying cannot help
    /// until an operator changes something.
    Config(String),
    /// The insert found an instance of that name: an earlier attempt of ours made it.
    Exists,
}

/// Classifies a failed HTTP call from its status (`None`: no answer at all) and message.
pub fn classify_http(status: Option<u16>, message: &str) -> Failure {
    let lower = message.to_ascii_lowercase();
    match status {
        None | Some(408) | Some(429) | Some(500..=599) => Failure::Transient(message.into()),
        Some(409) => Failure::Exists,
        // API request quotas ("Quota exceeded for quota metric 'Queries'…") pass with time;
        // resource quotas (CPUs, addresses in a region) do not.
        Some(403)
            if lower.contains("ratelimit")
                || lower.contains("rate limit")
                || lower.contains("quota metric") =>
        {
            Failure::Transient(message.into())
        }
        Some(403) if lower.contains("quota") => Failure::Capacity(message.into()),
        Some(_) => Failure::Config(message.into()),
    }
}

/// Classifies the error of a finished zone operation from its `(code, message)` entries.
pub fn classify_operation(errors: &[(String, String)]) -> Failure {
    let text = errors
        .iter()
        .map(|(c, m)| format!("{c}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let codes = || errors.iter().map(|(c, _)| c.as_str());
    if codes().any(|c| c == "RESOURCE_ALREADY_EXISTS") {
        return Failure::Exists;
    }
    if codes().any(|c| {
        c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED")
            || c.contains("STOCKOUT")
            || c.contains("QUOTA")
            || c == "RESOURCE_POOL_EXHAUSTED"
    }) {
        return Failure::Capacity(text);
    }
    if codes().any(|c| {
        matches!(
            c,
            "RESOURCE_OPERATION_RATE_EXCEEDED"
                | "RATE_LIMIT_EXCEEDED"
                | "INTERNAL_ERROR"
                | "SERVICE_UNAVAILABLE"
                | "TIMEOUT"
        )
    }) {
        return Failure::Transient(text);
    }
    Failure::Config(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_are_classified_by_status_and_reason() {
        let cases: &[(Option<u16>, &str, &str)] = &[
            (None, "connection refused", "transient"),
            (Some(429), "Rate Limit Exceeded", "transient"),
            (Some(503), "backendError", "transient"),
            (Some(500), "internal", "transient"),
            (
                Some(403),
                "rateLimitExceeded: too many requests",
                "transient",
            ),
            (
                Some(403),
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute'",
                "transient",
            ),
            (
                Some(403),
                "Quota 'CPUS' exceeded. Limit: 8.0 in region europe-west1.",
                "capacity",
            ),
            (
                Some(403),
                "Required 'compute.instances.create' permission",
                "config",
            ),
            (
                Some(400),
                "Invalid value for field 'resource.machineType'",
                "config",
            ),
            (
                Some(404),
                "The resource 'projects/x/global/images/y' was not found",
                "config",
            ),
            (
                Some(409),
                "The resource 'wp-games-1' already exists",
                "exists",
            ),
        ];
        for (status, message, want) in cases {
            let got = match classify_http(*status, message) {
                Failure::Transient(_) => "transient",
                Failure::Capacity(_) => "capacity",
                Failure::Config(_) => "config",
                Failure::Exists => "exists",
            };
            assert_eq!(got, *want, "{status:?} {message}");
        }
    }

    #[test]
    fn operation_errors_are_classified_by_code() {
        let one = |code: &str| vec![(code.to_string(), "m".to_string())];
        for (code, want) in [
            ("ZONE_RESOURCE_POOL_EXHAUSTED", "capacity"),
            ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "capacity"),
            ("QUOTA_EXCEEDED", "capacity"),
            ("RESOURCE_OPERATION_RATE_EXCEEDED", "transient"),
            ("INTERNAL_ERROR", "transient"),
            ("RESOURCE_NOT_FOUND", "config"),
            ("RESOURCE_ALREADY_EXISTS", "exists"),
            ("INVALID_FIELD_VALUE", "config"),
        ] {
            let got = match classify_operation(&one(code)) {
                Failure::Transient(_) => "transient",
                Failure::Capacity(_) => "capacity",
                Failure::Config(_) => "config",
                Failure::Exists => "exists",
            };
            assert_eq!(got, want, "{code}");
        }
        match classify_operation(&[("QUOTA_EXCEEDED".into(), "Quota 'CPUS' exceeded".into())]) {
            Failure::Capacity(text) => assert_eq!(text, "QUOTA_EXCEEDED: Quota 'CPUS' exceeded"),
            other => panic!("{other:?}"),
        }
    }
}
