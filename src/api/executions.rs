//! `/v1/games/{game_id}/executions` and `/v1/executions/{execution_id}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;

use super::games::{check_game_id, parse_json};
use super::{ApiError, AppState, TraceId};
use warmpool_core::model::{Execution, ExecutionRequest, ExecutionState, Job};
use warmpool_core::store::executions;
use warmpool_core::{rules, runtimes};

/// Longest `wait_s` a request may hold a connection for.
const MAX_WAIT_S: u64 = 60;
const MAX_FILES: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    wait_s: Option<String>,
}

fn parse_wait(q: &WaitQuery) -> Result<Duration, ApiError> {
    match q.wait_s.as_deref() {
        None => Ok(Duration::ZERO),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n <= MAX_WAIT_S => Ok(Duration::from_secs(n)),
            _ => Err(ApiError::bad_request(
                "invalid_wait_s",
                format!("wait_s must be an integer in 0..={MAX_WAIT_S}"),
            )),
        },
    }
}

/// Turns a request into a job, or the 4xx that names what is wrong.
fn validate(
    state: &AppState,
    game_id: &str,
    execution_id: &str,
    req: ExecutionRequest,
) -> Result<Job, ApiError> {
    let spec = runtimes::lookup(&req.language)
        .filter(|spec| state.config.languages.iter().any(|l| l == spec.name))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unsupported_language",
                format!(
                    "language {:?} is not offered; offered: {}",
                    req.language,
                    state.config.languages.join(",")
                ),
            )
        })?;
    if req.files.is_empty() || req.files.len() > MAX_FILES {
        return Err(ApiError::unprocessable(
            "invalid_files",
            format!("files must hold 1..={MAX_FILES} files; the first is the entry point"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, file) in req.files.iter().enumerate() {
        if let Err(reason) = rules::check_file_name(&file.name) {
            return Err(ApiError::unprocessable(
                "invalid_file_name",
                format!("files[{i}].name {:?}: {reason}", file.name),
            ));
        }
        if !seen.insert(file.name.as_str()) {
            return Err(ApiError::unprocessable(
                "invalid_file_name",
                format!("files[{i}].name {:?} appears twice", file.name),
            ));
        }
    }
    if req.args.len() > MAX_ARGS {
        return Err(ApiError::unprocessable(
            "invalid_args",
            format!("at most {MAX_ARGS} args"),
        ));
    }
    if let Some(i) = req.args.iter().position(|a| a.contains('\0')) {
        return Err(ApiError::unprocessable(
            "invalid_args",
            format!("args[{i}] contains NUL"),
        ));
    }
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
            return Err(ApiError::unprocessable(
                "invalid_idempotency_key",
                format!("idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} bytes without control characters"),
            ));
        }
    }
    let limits = state
        .config
        .limit_rules()
        .resolve(req.limits)
        .map_err(|message| ApiError::unprocessable("invalid_limits", message))?;
    Ok(Job {
        execution_id: execution_id.to_string(),
        game_id: game_id.to_string(),
        language: spec.name.to_string(),
        files: req.files,
        stdin: req.stdin.unwrap_or_default(),
        args: req.args,
        limits,
    })
}

/// 200 with a final record, 202 with `Location` while it is queued or running.
fn respond(record: Execution) -> Response {
    let status = if record.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/executions/{}", record.execution_id);
    let mut response = (status, Json(record)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

pub(super) async fn submit(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    Path(game_id): Path<String>,
    Query(query): Query<WaitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_game_id(&game_id)?;
    tracing::Span::current().record("game_id", game_id.as_str());
    let wait = parse_wait(&query)?;
    let req: ExecutionRequest = parse_json(&body)?;
    let idempotency_key = req.idempotency_key.clone();
    let execution_id = uuid::Uuid::new_v4().simple().to_string();
    let job = validate(&state, &game_id, &execution_id, req)?;
    let job_json = serde_json::to_string(&job)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let placing = std::time::Instant::now();
    let submitted = executions::submit(
        &state.store,
        state.config.submit_params(),
        &game_id,
        &execution_id,
        &job_json,
        idempotency_key.as_deref(),
        &trace.0,
    )
    .await?;
    crate::metrics::placement(placing.elapsed());
    tracing::Span::current().record("execution_id", submitted.execution_id.as_str());
    tracing::debug!(game_id, execution_id = %submitted.execution_id, duplicate = submitted.duplicate, "execution accepted");
    if !submitted.duplicate && submitted.vm_id.is_none() {
        // Its game waits for capacity: the leader sizes the pool now, not at its next tick.
        state.request_reconcile().await;
    }
    let record = match state
        .waiters
        .wait_final(&state.store, &submitted.execution_id, wait)
        .await
    {
        Ok(Some(record)) => record,
        // Only possible if the record's retention ran out between accept and read.
        Ok(None) => {
            return Err(ApiError::not_found(
                "execution_not_found",
                "the execution's record has expired",
            ))
        }
        // A duplicate accepted nothing new, so 503 stays true to the contract.
        Err(err) if submitted.duplicate => return Err(err.into()),
        // Accepted, but Redis went away before the record could be read back: the client
        // must not be told "nothing was accepted". Answer what is known: it is queued.
        Err(err) => {
            tracing::warn!(error = %err, execution_id = %submitted.execution_id, "accepted; reading it back failed");
            Execution {
                execution_id: submitted.execution_id.clone(),
                game_id: game_id.clone(),
                state: ExecutionState::Queued,
                vm_id: None,
                created_at: submitted
                    .created_ms
                    .map(warmpool_core::model::rfc3339_ms)
                    .unwrap_or_default(),
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
            }
        }
    };
    Ok(respond(record))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Path(execution_id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(&query)?;
    let not_found = || {
        ApiError::not_found(
            "execution_not_found",
            format!("no execution {execution_id}"),
        )
    };
    if execution_id.len() != 32 || !execution_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    tracing::Span::current().record("execution_id", execution_id.as_str());
    let record = state
        .waiters
        .wait_final(&state.store, &execution_id, wait)
        .await?
        .ok_or_else(not_found)?;
    let mut response = Json(&record).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/executions/{}", record.execution_id)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}
