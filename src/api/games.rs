//! `/v1/games/{game_id}`: start or refresh, read, delete.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::model::{ErrorDetail, ExecutionState, Game};
use crate::routing::{self, Deleted};

pub(super) fn check_game_id(game_id: &str) -> Result<(), ApiError> {
    if routing::valid_game_id(game_id) {
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
    let body: PutGameBody = if body.iter().all(u8::is_ascii_whitespace) {
        PutGameBody::default()
    } else {
        parse_json(&body)?
    };
    let max = state.config.max_game_ttl_s;
    let ttl_s = match body.ttl_s {
        None => None,
        Some(t) if (1..=max).contains(&t) => Some(t),
        Some(t) => {
            return Err(ApiError::unprocessable(
                "invalid_ttl",
                format!("ttl_s is {t}; allowed: 1..={max}"),
            ))
        }
    };
    let (game, created) = routing::put_game(
        &state.store,
        &game_id,
        ttl_s.map(|t| t * 1000),
        state.config.game_ttl_s * 1000,
        state.config.placement,
    )
    .await?;
    if game.state == crate::model::GameState::Pending {
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
    routing::get_game(&state.store, &game_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("game_not_found", format!("no game {game_id}")))
}

pub(super) async fn delete_game(
    State(state): State<AppState>,
    Path(game_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_game_id(&game_id)?;
    match routing::delete_game(&state.store, &game_id, false).await? {
        Deleted::Deleted { queued, vm_id } => {
            end_game_queue(&state, &queued, "game_deleted", "the game was deleted").await?;
            if vm_id.is_some() {
                // A slot freed: the next pending game may take it.
                routing::place_pending(&state.store, state.config.placement, None).await?;
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Deleted::Gone | Deleted::Alive => Err(ApiError::not_found(
            "game_not_found",
            format!("no game {game_id}"),
        )),
    }
}

/// Cancels the queued executions of a game that ended.
pub(crate) async fn end_game_queue(
    state: &AppState,
    queued: &[String],
    code: &str,
    message: &str,
) -> Result<(), crate::store::StoreError> {
    let error = ErrorDetail {
        code: code.to_string(),
        message: message.to_string(),
    };
    for id in queued {
        crate::executions::end_queued(
            &state.store,
            id,
            ExecutionState::Cancelled,
            &error,
            state.config.result_ttl_s * 1000,
            false,
        )
        .await?;
    }
    Ok(())
}
