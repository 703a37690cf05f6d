//! Error answers shaped like every Google JSON API's.
//!
//! ```json
//! {"error": {"code": 404, "message": "The resource '…' was not found",
//!            "errors": [{"message": "The resource '…' was not found",
//!                        "domain": "global", "reason": "notFound"}]}}
//! ```
//!
//! Compute Engine leaves `error.status` out of its bodies (the Rust client then reports
//! `Code::Unknown` and callers branch on the HTTP status), so this module does too.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// One refused request: an HTTP status, the `errors[0].reason` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason,
            message: message.into(),
        }
    }

    /// 404 for a resource path such as `projects/p/zones/z/instances/n`.
    pub fn not_found(resource: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("The resource '{resource}' was not found"),
        )
    }

    pub fn already_exists(resource: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "alreadyExists",
            format!("The resource '{resource}' already exists"),
        )
    }

    /// 400 naming the field as Compute Engine does:
    /// `Invalid value for field 'resource.machineType': '…'. <why>`.
    pub fn invalid_field(field: &str, value: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("Invalid value for field '{field}': '{value}'. {why}"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The error an injected fault (`FakeGce::fail_next`) answers with: the reason and message
    /// Google front ends use for that status.
    pub fn injected(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (reason, message) = match status.as_u16() {
            429 => ("rateLimitExceeded", "Rate Limit Exceeded"),
            500 | 502 | 503 | 504 => ("backendError", "Internal error. Please try again."),
            400 => ("invalid", "Invalid request"),
            401 => ("required", "Login Required."),
            403 => ("forbidden", "Forbidden"),
            404 => ("notFound", "Not Found"),
            _ => ("backendError", "Internal error. Please try again."),
        };
        Self::new(status, reason, message)
    }

    /// What a caller sees for an insert that was carried out but whose answer was "lost".
    pub fn backend_error() -> Self {
        Self::injected(503)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.status.as_u16(),
                "message": self.message,
                "errors": [{
                    "message": self.message,
                    "domain": "global",
                    "reason": self.reason,
                }],
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_google_shape() {
        let err = ApiError::not_found("projects/p/zones/z/instances/vm-1");
        assert_eq!(
            err.body(),
            serde_json::json!({"error": {
                "code": 404,
                "message": "The resource 'projects/p/zones/z/instances/vm-1' was not found",
                "errors": [{
                    "message": "The resource 'projects/p/zones/z/instances/vm-1' was not found",
                    "domain": "global",
                    "reason": "notFound",
                }],
            }})
        );
    }

    #[test]
    fn injected_faults_carry_the_front_end_reasons() {
        assert_eq!(ApiError::injected(429).reason, "rateLimitExceeded");
        assert_eq!(ApiError::injected(503).reason, "backendError");
        assert_eq!(
            ApiError::injected(500).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
