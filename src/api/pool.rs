//! `/v1/pool` and `/v1/languages`.

use axum::extract::State;
use axum::Json;

use super::{ApiError, AppState};
use crate::model::{GameCounts, LanguageInfo, PoolStatus};
use crate::{pool, routing, runtimes};

pub(super) async fn status(State(state): State<AppState>) -> Result<Json<PoolStatus>, ApiError> {
    let vms = pool::vms::list(&state.store).await?;
    let (placed, pending) = routing::game_counts(&state.store).await?;
    Ok(Json(PoolStatus {
        pool: state.store.pool_name().to_string(),
        vms,
        games: GameCounts { placed, pending },
    }))
}

/// The offered languages, with the version VMs report (`unknown` before any VM registered).
pub(super) async fn languages(
    State(state): State<AppState>,
) -> Result<Json<Vec<LanguageInfo>>, ApiError> {
    let versions = pool::vms::language_versions(&state.store).await?;
    Ok(Json(
        state
            .config
            .language_list()
            .iter()
            .filter_map(|name| runtimes::lookup(name))
            .map(|spec| LanguageInfo {
                name: spec.name.to_string(),
                version: versions
                    .get(spec.name)
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_string()),
                aliases: spec.aliases.iter().map(|a| a.to_string()).collect(),
            })
            .collect(),
    ))
}
