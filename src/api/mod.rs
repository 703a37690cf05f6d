//! The REST API (v1). Every `/v1` route needs `Authorization: Bearer TOKEN`; `/healthz` and
//! `/readyz` are open. Handlers validate everything a client sends before anything reaches
//! Redis, so a client mistake is a 4xx naming the field and changes nothing.

mod error;
mod executions;
mod games;
mod pool;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use subtle::ConstantTimeEq;
use tracing::Instrument;

pub use error::ApiError;

use crate::config::Config;
use crate::waiters::Waiters;
use warmpool_core::store::Store;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub tokens: Arc<Vec<String>>,
    pub waiters: Waiters,
    /// Wakes this replica's reconciler (it acts only while this replica leads).
    pub reconcile: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Asks the leader, wherever it runs, for a reconcile pass now (a game went pending).
    pub async fn request_reconcile(&self) {
        use fred::prelude::*;
        self.reconcile.notify_one();
        let _: Result<i64, _> = self
            .store
            .client()
            .publish(&self.store.keys.events, crate::waiters::RECONCILE)
            .await;
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/games/{game_id}",
            put(games::put_game)
                .get(games::get_game)
                .delete(games::delete_game),
        )
        .route("/games/{game_id}/executions", post(executions::submit))
        .route("/executions/{execution_id}", get(executions::get))
        .route("/languages", get(pool::languages))
        .route("/pool", get(pool::status))
        .route("/pool/plan", get(pool::plan))
        .route("/pool/reconcile", post(pool::reconcile))
        .route(
            "/pool/reservations",
            post(pool::create_reservation).get(pool::list_reservations),
        )
        .route(
            "/pool/reservations/{reservation_id}",
            axum::routing::delete(pool::delete_reservation),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// The trace a request belongs to: its `X-Cloud-Trace-Context` or `traceparent` header's, or a
/// new one. The execution it submits keeps it, so the agent's lines carry it too.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// One span per request (method, route, trace id; handlers record the game and execution),
/// around everything else.
async fn trace_request(mut req: Request, next: Next) -> Response {
    let trace = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        warmpool_core::telemetry::trace_id(header("x-cloud-trace-context"), header("traceparent"))
            .unwrap_or_else(warmpool_core::telemetry::new_trace_id)
    };
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = %trace,
        game_id = tracing::field::Empty,
        execution_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    req.extensions_mut().insert(TraceId(trace));
    // The route pattern, never the path: bounded labels (no game or execution id).
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    crate::metrics::request(&route, response.status().as_u16(), started.elapsed());
    span.record("status", response.status().as_u16());
    span.in_scope(|| tracing::debug!("request answered"));
    response
}

/// Accepts a request whose bearer token matches one of the configured tokens, comparing in
/// constant time so response timing reveals nothing about a token.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok = presented.is_some_and(|p| {
        // Check every token (no early exit) so the count of tokens checked leaks nothing.
        state
            .tokens
            .iter()
            .fold(0u8, |acc, t| acc | t.as_bytes().ct_eq(p).unwrap_u8())
            == 1
    });
    if !ok {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    next.run(req).await
}

/// Rewrites the framework's own plain-text rejections (body too large, method not allowed, a
/// path that is not UTF-8) into the API's JSON error shape, so every error has one form.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ready")
}
