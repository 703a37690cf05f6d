//! `/v1/pool`, `/v1/pool/plan`, `/v1/pool/reconcile`, `/v1/pool/reservations` and
//! `/v1/languages`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::games::parse_json;
use super::{ApiError, AppState};
use crate::pool::control;
use crate::pool::sizing::SizingInputs;
use warmpool_core::model::{
    GameCounts, LanguageInfo, LeaderInfo, PoolStatus, ScalingNote, VmStatus,
};
use warmpool_core::runtimes;
use warmpool_core::store::reservations::{self, Added, Reservation};
use warmpool_core::store::{games, leader, vms};

/// Inputs with the operator's settings, as `GET /v1/pool` and `/v1/pool/plan` show them.
fn inputs_json(state: &AppState, i: &SizingInputs) -> serde_json::Value {
    json!({
        "games": i.games,
        "pending": i.pending,
        "reserved": i.reserved,
        "arrivals_per_s": (i.arrivals_per_s * 1000.0).round() / 1000.0,
        "boot_s": (i.boot_s * 10.0).round() / 10.0,
        "games_per_vm": state.config.games_per_vm,
        "headroom_games": state.config.headroom_games,
        "z": state.config.headroom_z,
        "min_vms": state.config.min_vms,
        "max_vms": state.config.max_vms,
    })
}

pub(super) async fn status(State(state): State<AppState>) -> Result<Json<PoolStatus>, ApiError> {
    // Games first, VMs second: a VM takes games only once it is ready, so every game counted
    // as placed is on a VM the later list shows (at least) ready. The other order could show
    // 24 games placed on 5 ready VMs of 4 (a sixth turned ready and took 4 between the reads).
    let (placed, pending) = games::game_counts(&state.store).await?;
    let vms = vm_statuses(&state.store).await?;
    let control = control::read(&state.store).await?;
    let leader = leader::current(&state.store).await?;
    let formula = state
        .config
        .formula()
        .map(|f| f.text().to_string())
        .unwrap_or_default();
    Ok(Json(PoolStatus {
        pool: state.store.pool_name().to_string(),
        vms,
        games: GameCounts { placed, pending },
        desired_vms: control.as_ref().map(|c| c.desired_vms),
        formula,
        inputs: control.as_ref().map(|c| inputs_json(&state, &c.inputs)),
        last_scaling: control.as_ref().and_then(|c| {
            Some(ScalingNote {
                reason: c.last_scaling.clone()?,
                at: c.last_scaling_at.clone()?,
            })
        }),
        provider: control.as_ref().map(|c| {
            let p = &c.provider;
            warmpool_core::model::ProviderHealth {
                name: state.config.provider.as_str().to_string(),
                creates_paused_until: p
                    .paused_until_ms
                    .filter(|t| *t > c.measured_ms)
                    .map(warmpool_core::model::rfc3339_ms),
                last_error: p.last_error.clone(),
                creates_failed: p.creates_failed,
                vms_lost: p.vms_lost,
                orphans_deleted: p.orphans_deleted,
                last_sync: p.last_sync_ms.map(warmpool_core::model::rfc3339_ms),
                last_sync_error: p.last_sync_error.clone(),
            }
        }),
        status: control.map(|c| c.status),
        leader: leader.map(|(replica, token)| LeaderInfo { replica, token }),
    }))
}

#[derive(Deserialize)]
pub(super) struct PlanQuery {
    games: Option<String>,
    pending: Option<String>,
    reserved: Option<String>,
    arrivals_per_s: Option<String>,
    boot_s: Option<String>,
}

fn number(name: &str, raw: Option<&str>, default: f64) -> Result<f64, ApiError> {
    match raw {
        None => Ok(default),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && (0.0..=1e9).contains(&x) => Ok(x),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                format!("{name} must be a number in 0..=1e9, got {v:?}"),
            )),
        },
    }
}

/// What the formula would ask for with these inputs (unset ones: as last measured), without
/// doing anything.
pub(super) async fn plan(
    State(state): State<AppState>,
    Query(q): Query<PlanQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let measured = control::read(&state.store)
        .await?
        .map(|c| c.inputs)
        .unwrap_or(SizingInputs {
            boot_s: 45.0,
            ..Default::default()
        });
    let inputs = SizingInputs {
        games: number("games", q.games.as_deref(), measured.games)?,
        pending: number("pending", q.pending.as_deref(), measured.pending)?,
        reserved: number("reserved", q.reserved.as_deref(), measured.reserved)?,
        arrivals_per_s: number(
            "arrivals_per_s",
            q.arrivals_per_s.as_deref(),
            measured.arrivals_per_s,
        )?,
        boot_s: number("boot_s", q.boot_s.as_deref(), measured.boot_s)?,
    };
    let formula = state
        .config
        .formula()
        .unwrap_or(crate::pool::sizing::Formula::Default);
    let desired = formula.desired(&inputs, &state.config.sizing_params());
    Ok(Json(json!({
        "desired_vms": desired,
        "formula": formula.text(),
        "inputs": inputs_json(&state, &inputs),
    })))
}

/// Wakes the leader's reconciler now (for platforms that throttle idle CPU between requests).
pub(super) async fn reconcile(State(state): State<AppState>) -> Response {
    state.request_reconcile().await;
    (StatusCode::ACCEPTED, Json(json!({"requested": true}))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationRequest {
    games: u64,
    start_at: String,
    duration_s: u64,
}

/// Bounds of a reservation: it announces a burst, not a standing pool.
const MAX_RESERVED_GAMES: u64 = 100_000;
const MAX_RESERVATION_S: u64 = 7 * 86_400;
const MAX_LEAD_S: i64 = 30 * 86_400;
const MAX_RESERVATIONS: u32 = 1_000;

pub(super) async fn create_reservation(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ReservationRequest = parse_json(&body)?;
    if !(1..=MAX_RESERVED_GAMES).contains(&req.games) {
        return Err(ApiError::unprocessable(
            "invalid_reservation",
            format!("games is {}; allowed: 1..={MAX_RESERVED_GAMES}", req.games),
        ));
    }
    if !(1..=MAX_RESERVATION_S).contains(&req.duration_s) {
        return Err(ApiError::unprocessable(
            "invalid_reservation",
            format!(
                "duration_s is {}; allowed: 1..={MAX_RESERVATION_S}",
                req.duration_s
            ),
        ));
    }
    let start = time::OffsetDateTime::parse(
        &req.start_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| {
        ApiError::unprocessable(
            "invalid_reservation",
            format!("start_at {:?} is not RFC 3339: {e}", req.start_at),
        )
    })?;
    let start_ms = start.unix_timestamp_nanos() / 1_000_000;
    let now_ms = i128::from(state.store.now_ms().await?);
    let end_ms = start_ms + i128::from(req.duration_s) * 1000;
    if end_ms <= now_ms || start_ms > now_ms + i128::from(MAX_LEAD_S) * 1000 {
        return Err(ApiError::unprocessable(
            "invalid_reservation",
            "start_at + duration_s must end in the future, and start_at be within 30 days",
        ));
    }
    let reservation = Reservation {
        reservation_id: uuid::Uuid::new_v4().simple().to_string(),
        games: req.games as u32,
        start_ms: start_ms.max(0) as u64,
        duration_ms: req.duration_s * 1000,
        arrived: 0,
        starts_at_start: None,
    };
    if reservations::add(&state.store, &reservation, MAX_RESERVATIONS).await? == Added::Full {
        return Err(ApiError::unprocessable(
            "too_many_reservations",
            format!("at most {MAX_RESERVATIONS} reservations at once"),
        ));
    }
    state.request_reconcile().await;
    Ok((StatusCode::CREATED, Json(reservation_json(&reservation))).into_response())
}

fn reservation_json(r: &Reservation) -> serde_json::Value {
    json!({
        "reservation_id": r.reservation_id,
        "games": r.games,
        "start_at": warmpool_core::model::rfc3339_ms(r.start_ms),
        "duration_s": r.duration_ms / 1000,
        "arrived": r.arrived,
    })
}

pub(super) async fn list_reservations(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let all = reservations::list(&state.store).await?;
    Ok(Json(json!(all
        .iter()
        .map(reservation_json)
        .collect::<Vec<_>>())))
}

pub(super) async fn delete_reservation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !reservations::delete(&state.store, &id).await? {
        return Err(ApiError::not_found(
            "reservation_not_found",
            format!("no reservation {id}"),
        ));
    }
    state.request_reconcile().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The offered languages, with the version VMs report (`unknown` before any VM registered).
pub(super) async fn languages(
    State(state): State<AppState>,
) -> Result<Json<Vec<LanguageInfo>>, ApiError> {
    let versions = vms::language_versions(&state.store).await?;
    Ok(Json(
        state
            .config
            .languages
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

/// Every VM as `GET /v1/pool` shows it. A record that cannot be read fails the answer (it is
/// logged and counted where it is read): the list would otherwise hide a VM.
async fn vm_statuses(store: &warmpool_core::store::Store) -> Result<Vec<VmStatus>, ApiError> {
    let snapshot = vms::snapshot(store).await?;
    if let Some(u) = snapshot.unreadable.first() {
        return Err(warmpool_core::store::StoreError::Corrupt {
            what: format!("VM {}", u.vm_id),
            problem: u.problem.clone(),
        }
        .into());
    }
    let now_ms = snapshot.now_ms;
    Ok(snapshot
        .vms
        .into_iter()
        .map(|vm| VmStatus {
            heartbeat_age_s: vm
                .heartbeat_ms
                .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
            vm_id: vm.vm_id,
            state: vm.state,
            games: u64::from(vm.games),
            capacity: u64::from(vm.capacity),
            running: u64::from(vm.running),
            languages: vm.languages,
        })
        .collect())
}
