//! `/v1/games/{game_id}`: start or refresh, read, delete.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::routing::Ending;
use warmpool_core::model::{Game, GameState};
use warmpool_core::store::games::{self, Deleted};

pub(super) fn check_game_id(game_id: &str) -> Result<(), ApiError> {
    if warmpool_core::rules::valid_game_id(game_id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_game_id",
            "game_id must be 1-128 characters of [A-Za-z0-9._-]",
        ))
    }
}

/// Parses a JSON body; the error names the field (`limits.wall_time_ms: invalid type…`).
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::bad_request("invalid_json", message)
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    Ok(value)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutGameBody {
    ttl_s: Option<u64>,
}

pub(super) async fn put_game(
    State(state): State<AppState>,
    Path(game_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_game_id(&game_id)?;
    tracing::Span::current().record("game_id", game_id.as_str());
    let body: PutGameBody = if body.iter().all(u8::is_ascii_whitespace) {
        PutGameBody::default()
    } else {
        parse_json(&body)?
    };
    let max = state.config.max_game_ttl.as_secs();
    let ttl = match body.ttl_s {
        None => None,
        Some(t) if (1..=max).contains(&t) => Some(Duration::from_secs(t)),
        Some(t) => {
            return Err(ApiError::unprocessable(
                "invalid_ttl",
                format!("ttl_s is {t}; allowed: 1..={max}"),
            ))
        }
    };
    let placing = std::time::Instant::now();
    let (game, created) = games::put_game(
        &state.store,
        &game_id,
        ttl,
        state.config.game_ttl,
        state.config.placement,
    )
    .await?;
    crate::metrics::placement(placing.elapsed());
    if game.state == GameState::Pending {
        state.request_reconcile().await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(game)).into_response())
}

pub(super) async fn get_game(
    State(state): State<AppState>,
    Path(game_id): Path<String>,
) -> Result<Json<Game>, ApiError> {
    check_game_id(&game_id)?;
    tracing::Span::current().record("game_id", game_id.as_str());
    games::get_game(&state.store, &game_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("game_not_found", format!("no game {game_id}")))
}

pub(super) async fn delete_game(
    State(state): State<AppState>,
    Path(game_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_game_id(&game_id)?;
    tracing::Span::current().record("game_id", game_id.as_str());
    match state
        .config
        .leases()
        .end_game(&state.store, &game_id, Ending::Deleted)
        .await?
    {
        Deleted::Deleted { .. } => Ok(StatusCode::NO_CONTENT),
        Deleted::Gone | Deleted::Alive => Err(ApiError::not_found(
            "game_not_found",
            format!("no game {game_id}"),
        )),
    }
}
