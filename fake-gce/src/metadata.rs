//! The metadata server each fake VM's agent reads, on the fake's own listener.
//!
//! A real VM reaches `http://metadata.google.internal/computeMetadata/v1/`; here every
//! instance has its own prefix, `/metadata/{zone}/{name}/computeMetadata/v1/`, which its agent
//! gets as `WARMPOOL_METADATA_URL`. As on GCE, requests need `Metadata-Flavor: Google` (else
//! 403) and answers carry `Metadata-Flavor: Google` and `Content-Type: application/text`.
//!
//! Served: `instance/attributes/` (key list) and `instance/attributes/{key}`, `instance/name`,
//! `instance/hostname`, `instance/id`, `instance/zone` (`projects/<number>/zones/<zone>`),
//! `instance/machine-type`, `project/project-id`, `project/numeric-project-id`,
//! `instance/service-accounts/default/email` and `…/default/token` (a per-instance token;
//! a delete carrying it counts as a self-delete). Not served: `?recursive=true`, `?alt=json`,
//! `?wait_for_change=true` (the query is ignored), guest attributes, identity tokens.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::Shared;

const FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new().route(
        "/metadata/{zone}/{name}/computeMetadata/v1/{*path}",
        get(serve),
    )
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    Path((zone, name, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = shared.lock();
    state.counters.metadata_calls += 1;
    if headers.get(FLAVOR).and_then(|v| v.to_str().ok()) != Some("Google") {
        return text(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n",
        );
    }
    let Some(instance) = state.instances.get(&(zone.clone(), name.clone())) else {
        return not_found();
    };
    let settings = &shared.settings;
    let number = settings.project_number;
    let answer = match path.as_str() {
        "instance/attributes/" => Some(
            instance
                .metadata
                .iter()
                .map(|(key, _)| format!("{key}\n"))
                .collect(),
        ),
        "instance/name" => Some(instance.name.clone()),
        "instance/hostname" => Some(format!(
            "{}.{}.c.{}.internal",
            instance.name, instance.zone, settings.project
        )),
        "instance/id" => Some(instance.id.to_string()),
        "instance/zone" => Some(format!("projects/{number}/zones/{}", instance.zone)),
        "instance/machine-type" => instance
            .machine_type_url
            .rsplit_once("/machineTypes/")
            .map(|(_, t)| format!("projects/{number}/machineTypes/{t}")),
        "project/project-id" => Some(settings.project.clone()),
        "project/numeric-project-id" => Some(number.to_string()),
        "instance/service-accounts/default/email" => {
            Some(format!("{number}-compute@developer.gserviceaccount.com"))
        }
        "instance/service-accounts/default/token" => {
            let body = serde_json::json!({
                "access_token": instance.token,
                "expires_in": 3599,
                "token_type": "Bearer",
            });
            return with_flavor(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response(),
            );
        }
        other => other
            .strip_prefix("instance/attributes/")
            .and_then(|key| instance.metadata.iter().find(|(k, _)| k == key))
            .map(|(_, value)| value.clone()),
    };
    match answer {
        Some(body) => text(StatusCode::OK, body),
        None => not_found(),
    }
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not Found\n")
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    with_flavor(
        (
            status,
            [(header::CONTENT_TYPE, "application/text")],
            body.into(),
        )
            .into_response(),
    )
}

fn with_flavor(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(FLAVOR, HeaderValue::from_static("Google"));
    response
}
