//! The Compute Engine v1 routes: `instances` insert/get/list/delete and zone operations
//! get/wait, under `/compute/v1/projects/{project}/zones/{zone}/`.
//!
//! Each handler counts the call, consumes an injected fault if one matches (and then stops,
//! with no other side effect), checks, changes the state under the lock, and hands what takes
//! time to `lifecycle`. Query parameters the fake does not know (`$alt`, `$apiVersion`, …) are
//! ignored, as the client sends several.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};

use crate::errors::ApiError;
use crate::filter;
use crate::lifecycle;
use crate::resources::{
    instance_path, now_rfc3339, Instance, InstanceStatus, OpStatus, OpType, Operation, API_ROOT,
};
use crate::state::{Method, Settings, Shared, State as FakeState};

/// Compute Engine's own cap on `maxResults`.
const MAX_RESULTS_LIMIT: u32 = 500;

/// How long `operations/{op}/wait` holds a request before answering with the operation as it
/// is (Compute Engine's is up to 2 minutes; tests want it short).
const WAIT_LIMIT: Duration = Duration::from_secs(2);

type Answer = Result<Json<Value>, ApiError>;
type Params = Query<HashMap<String, String>>;

pub(crate) fn router() -> Router<Arc<Shared>> {
    let zone = "/compute/v1/projects/{project}/zones/{zone}";
    Router::new()
        .route(&format!("{zone}/instances"), get(list).post(insert))
        .route(
            &format!("{zone}/instances/{{name}}"),
            get(get_instance).delete(delete),
        )
        .route(
            &format!("{zone}/operations/{{operation}}"),
            get(get_operation),
        )
        .route(
            &format!("{zone}/operations/{{operation}}/wait"),
            post(wait_operation),
        )
}

/// Records every request (method, path and query as received) in the request log.
pub(crate) async fn log_request(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let line = format!("{} {}", request.method(), request.uri());
    shared.lock().log_request(line);
    next.run(request).await
}

/// Answers an unknown path as a Google front end does, in its JSON shape.
pub(crate) async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "notFound",
        "The requested URL was not found on this server.",
    )
}

async fn insert(
    State(shared): State<Arc<Shared>>,
    Path((project, zone)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> Answer {
    {
        let mut state = shared.lock();
        state.counters.insert_calls += 1;
        state.take_fault(Method::Insert)?;
    }
    shared.check_project(&project)?;
    let request_id = request_id(&params)?;
    let resource: Map<String, Value> = serde_json::from_slice(&body).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "parseError",
            format!("Invalid JSON payload received. {err}"),
        )
    })?;
    let name = resource
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();

    let mut guard = shared.lock();
    let state = &mut *guard;
    if state.knobs.deny_inserts {
        state.counters.rejected_by_knob += 1;
        return Err(ApiError::forbidden(format!(
            "Required 'compute.instances.create' permission for '{}'",
            instance_path(&project, &zone, &name)
        )));
    }
    if let Some(existing) = request_id
        .as_ref()
        .and_then(|rid| state.request_ids.get(&(zone.clone(), rid.clone())))
    {
        let op = state
            .operations
            .get(existing)
            .map(|op| op.to_json(&project))
            .ok_or_else(|| ApiError::not_found(&format!("operations/{existing}")))?;
        state.counters.duplicate_inserts_deduplicated += 1;
        return answer_insert(state, op);
    }
    let checked = check_insert(&shared.settings, &project, &zone, &name, &resource)?;
    if let Some(image) = checked
        .images
        .iter()
        .find(|image| state.knobs.image_is_missing(image))
    {
        state.counters.rejected_by_knob += 1;
        return Err(ApiError::not_found(strip_api_root(image)));
    }
    let key = (zone.clone(), name.clone());
    if state.instances.contains_key(&key) {
        return Err(ApiError::already_exists(&instance_path(
            &project, &zone, &name,
        )));
    }

    let id = state.next_id();
    state.instances.insert(
        key.clone(),
        Instance {
            id,
            zone: zone.clone(),
            name: name.clone(),
            status: InstanceStatus::Provisioning,
            resource,
            machine_type_url: checked.machine_type_url,
            labels: checked.labels,
            metadata: checked.metadata,
            creation_timestamp: now_rfc3339(),
            token: new_token(),
            agent: None,
        },
    );
    state.counters.instances_created += 1;
    *state
        .counters
        .created_per_zone
        .entry(zone.clone())
        .or_default() += 1;
    let op = new_operation(state, &zone, OpType::Insert, &name, id, request_id);
    let op_json = op.to_json(&project);
    lifecycle::spawn(
        &shared,
        lifecycle::run_insert(shared.clone(), op.name, key, id),
    );
    answer_insert(state, op_json)
}

/// The operation, unless the test asked for this answer to be lost.
fn answer_insert(state: &mut FakeState, op: Value) -> Answer {
    if state.knobs.insert_responses_to_lose > 0 {
        state.knobs.insert_responses_to_lose -= 1;
        state.counters.insert_responses_lost += 1;
        return Err(ApiError::backend_error());
    }
    Ok(Json(op))
}

/// Creates a RUNNING operation (and remembers its request id).
fn new_operation(
    state: &mut FakeState,
    zone: &str,
    op_type: OpType,
    target_name: &str,
    target_id: u64,
    request_id: Option<String>,
) -> Operation {
    let id = state.next_id();
    let name = format!("operation-{}-{}", unix_millis(), uuid::Uuid::new_v4());
    let op = Operation {
        id,
        name: name.clone(),
        zone: zone.to_string(),
        op_type,
        target_name: target_name.to_string(),
        target_id,
        status: OpStatus::Running,
        insert_time: now_rfc3339(),
        end_time: None,
        error: None,
    };
    state.operations.insert(name.clone(), op.clone());
    if let Some(rid) = request_id {
        state.request_ids.insert((zone.to_string(), rid), name);
    }
    op
}

/// What an insert body was checked into.
#[derive(Debug)]
struct CheckedInsert {
    machine_type_url: String,
    labels: BTreeMap<String, String>,
    metadata: Vec<(String, String)>,
    /// `disks[].initializeParams.sourceImage`, as written.
    images: Vec<String>,
}

/// The validation Compute Engine does before it accepts an insert (the part the fake models).
fn check_insert(
    settings: &Settings,
    project: &str,
    zone: &str,
    name: &str,
    resource: &Map<String, Value>,
) -> Result<CheckedInsert, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::invalid_field(
            "resource.name",
            name,
            "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'",
        ));
    }
    let machine_type = resource
        .get("machineType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let type_name = machine_type
        .rsplit_once("machineTypes/")
        .map(|(_, t)| t)
        .filter(|t| settings.known_machine_types.contains(*t))
        .ok_or_else(|| {
            let type_name = machine_type.rsplit('/').next().unwrap_or_default();
            ApiError::invalid_field(
                "resource.machineType",
                machine_type,
                &format!("Machine type with name '{type_name}' does not exist in zone '{zone}'."),
            )
        })?;
    let labels = match resource.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(ApiError::invalid_field(
                    &format!("resource.labels.{k}"),
                    &other.to_string(),
                    "Label values must be strings.",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "resource.labels",
                &other.to_string(),
                "Labels must be a map of strings.",
            ))
        }
    };
    let items = resource
        .get("metadata")
        .and_then(|m| m.get("items"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut metadata = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = item.get("key").and_then(Value::as_str);
        let value = match item.get("value") {
            None | Some(Value::Null) => Some(""),
            Some(v) => v.as_str(),
        };
        match (key, value) {
            (Some(key), Some(value)) if !key.is_empty() => {
                metadata.push((key.to_string(), value.to_string()))
            }
            _ => {
                return Err(ApiError::invalid_field(
                    &format!("resource.metadata.items[{i}]"),
                    &item.to_string(),
                    "Metadata items need a string key and a string value.",
                ))
            }
        }
    }
    let images = resource
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|disk| disk.get("initializeParams")?.get("sourceImage")?.as_str())
        .map(str::to_string)
        .collect();
    Ok(CheckedInsert {
        machine_type_url: format!(
            "{API_ROOT}/projects/{project}/zones/{zone}/machineTypes/{type_name}"
        ),
        labels,
        metadata,
        images,
    })
}

/// `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_lowercase()
                && (last.is_ascii_lowercase() || last.is_ascii_digit())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// `requestId`, which Compute Engine requires to be a non-zero UUID.
fn request_id(params: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    let Some(raw) = params.get("requestId").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    match uuid::Uuid::parse_str(raw) {
        Ok(id) if !id.is_nil() => Ok(Some(raw.clone())),
        _ => Err(ApiError::invalid_field(
            "requestId",
            raw,
            "The requestId must be a valid UUID with the exception that zero UUID is not \
             supported (00000000-0000-0000-0000-000000000000).",
        )),
    }
}

fn strip_api_root(link: &str) -> &str {
    [
        "https://www.googleapis.com/compute/v1/",
        "https://compute.googleapis.com/compute/v1/",
    ]
    .iter()
    .find_map(|root| link.strip_prefix(root))
    .unwrap_or(link)
}

async fn get_instance(
    State(shared): State<Arc<Shared>>,
    Path((project, zone, name)): Path<(String, String, String)>,
) -> Answer {
    let mut state = shared.lock();
    state.counters.get_calls += 1;
    state.take_fault(Method::Get)?;
    shared.check_project(&project)?;
    state
        .instances
        .get(&(zone.clone(), name.clone()))
        .map(|instance| Json(instance.to_json(&project)))
        .ok_or_else(|| ApiError::not_found(&instance_path(&project, &zone, &name)))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path((project, zone)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let state = {
        let mut state = shared.lock();
        state.counters.list_calls += 1;
        state.take_fault(Method::List)?;
        state
    };
    shared.check_project(&project)?;
    let raw_filter = params.get("filter").map(String::as_str).unwrap_or_default();
    let terms = filter::parse(raw_filter).map_err(|why| {
        ApiError::invalid_field(
            "filter",
            raw_filter,
            &format!("Invalid list filter expression: {why}."),
        )
    })?;
    let max_results = match params.get("maxResults").filter(|s| !s.is_empty()) {
        None => MAX_RESULTS_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(0) => MAX_RESULTS_LIMIT,
            Ok(n) if n <= MAX_RESULTS_LIMIT => n,
            _ => {
                return Err(ApiError::invalid_field(
                    "maxResults",
                    raw,
                    "Must be less than or equal to 500",
                ))
            }
        },
    };
    let page_size = max_results.min(shared.settings.max_page_size.max(1)) as usize;
    let after =
        match params.get("pageToken").filter(|s| !s.is_empty()) {
            None => None,
            Some(token) => Some(decode_page_token(token).ok_or_else(|| {
                ApiError::invalid_field("pageToken", token, "Invalid page token.")
            })?),
        };

    let mut matching = state
        .instances
        .range((zone.clone(), String::new())..)
        .take_while(|((z, _), _)| *z == zone)
        .filter(|((_, name), _)| after.as_ref().is_none_or(|after| name > after))
        .map(|(_, instance)| instance)
        .filter(|instance| {
            filter::matches(
                &terms,
                &filter::Subject {
                    name: &instance.name,
                    status: instance.status.as_str(),
                    labels: &instance.labels,
                },
            )
        });
    let page: Vec<&Instance> = matching.by_ref().take(page_size).collect();
    let more = matching.next().is_some();

    let list_path = format!("projects/{project}/zones/{zone}/instances");
    let mut out = Map::new();
    out.insert("kind".into(), "compute#instanceList".into());
    out.insert("id".into(), list_path.clone().into());
    if !page.is_empty() {
        let items = page.iter().map(|i| i.to_json(&project)).collect();
        out.insert("items".into(), Value::Array(items));
    }
    if let (true, Some(last)) = (more, page.last()) {
        out.insert("nextPageToken".into(), encode_page_token(&last.name).into());
    }
    out.insert("selfLink".into(), format!("{API_ROOT}/{list_path}").into());
    Ok(Json(Value::Object(out)))
}

/// Page tokens are the hex of the last name returned: opaque to the client, stable across
/// inserts and deletes in between (a page starts after that name).
fn encode_page_token(last_name: &str) -> String {
    last_name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_page_token(token: &str) -> Option<String> {
    if token.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Answer {
    let mut guard = shared.lock();
    let state = &mut *guard;
    state.counters.delete_calls += 1;
    state.take_fault(Method::Delete)?;
    shared.check_project(&project)?;
    let request_id = request_id(&params)?;
    if let Some(existing) = request_id
        .as_ref()
        .and_then(|rid| state.request_ids.get(&(zone.clone(), rid.clone())))
        .and_then(|op| state.operations.get(op))
    {
        return Ok(Json(existing.to_json(&project)));
    }
    let key = (zone.clone(), name.clone());
    let Some(instance) = state.instances.get_mut(&key) else {
        return Err(ApiError::not_found(&instance_path(&project, &zone, &name)));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer == Some(instance.token.as_str()) {
        state.counters.self_deletes += 1;
    }
    instance.status = InstanceStatus::Stopping;
    let agent_gone = instance.agent.as_ref().map(|agent| {
        agent.stop();
        agent.wait_exited()
    });
    let id = instance.id;
    let op = new_operation(state, &zone, OpType::Delete, &name, id, request_id);
    let op_json = op.to_json(&project);
    lifecycle::spawn(
        &shared,
        lifecycle::run_delete(shared.clone(), op.name, key, id, agent_gone),
    );
    Ok(Json(op_json))
}

async fn get_operation(
    State(shared): State<Arc<Shared>>,
    Path((project, zone, operation)): Path<(String, String, String)>,
) -> Answer {
    let mut state = shared.lock();
    state.counters.operation_calls += 1;
    state.take_fault(Method::Operation)?;
    shared.check_project(&project)?;
    find_operation(&state, &project, &zone, &operation).map(Json)
}

/// Answers when the operation is DONE, or after [`WAIT_LIMIT`] with it as it is, as Compute
/// Engine's `wait` may return early.
async fn wait_operation(
    State(shared): State<Arc<Shared>>,
    Path((project, zone, operation)): Path<(String, String, String)>,
) -> Answer {
    {
        let mut state = shared.lock();
        state.counters.operation_calls += 1;
        state.take_fault(Method::Operation)?;
        shared.check_project(&project)?;
    }
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        // Registered before the check, so a finish between the check and the await wakes it.
        let changed = shared.op_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let op = find_operation(&shared.lock(), &project, &zone, &operation)?;
        if op["status"] == "DONE" {
            return Ok(Json(op));
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(op)),
            () = shared.cancel.cancelled() => return Ok(Json(op)),
        }
    }
}

fn find_operation(
    state: &FakeState,
    project: &str,
    zone: &str,
    operation: &str,
) -> Result<Value, ApiError> {
    state
        .operations
        .get(operation)
        .filter(|op| op.zone == zone)
        .map(|op| op.to_json(project))
        .ok_or_else(|| {
            ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}/operations/{operation}"
            ))
        })
}

/// A per-instance access token, as the metadata server hands out (`ya29.` like Google's).
pub(crate) fn new_token() -> String {
    format!("ya29.fake-{}", uuid::Uuid::new_v4().simple())
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_compute_engine_regex() {
        for ok in ["a", "vm-1", "wp-us-central1-a-0001", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1vm", "vm-", "Vm", "vm_1", &"a".repeat(64), "vm.1"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let token = encode_page_token("wp-0007");
        assert_eq!(decode_page_token(&token).as_deref(), Some("wp-0007"));
        assert_eq!(decode_page_token("abc"), None);
        assert_eq!(decode_page_token("zz"), None);
    }

    #[test]
    fn request_ids_must_be_non_zero_uuids() {
        let with = |v: &str| HashMap::from([("requestId".to_string(), v.to_string())]);
        assert!(request_id(&with("not-a-uuid")).is_err());
        assert!(request_id(&with("00000000-0000-0000-0000-000000000000")).is_err());
        assert_eq!(
            request_id(&with("6f1c0a5e-8a4b-4d47-9c53-2a0c1a1d3e4f")),
            Ok(Some("6f1c0a5e-8a4b-4d47-9c53-2a0c1a1d3e4f".to_string()))
        );
        assert_eq!(request_id(&HashMap::new()), Ok(None));
    }

    fn settings() -> Settings {
        Settings {
            project: "p".into(),
            project_number: 1,
            agent_bin: None,
            agent_env: vec![],
            max_page_size: 500,
            known_machine_types: ["e2-small".to_string()].into(),
        }
    }

    #[test]
    fn insert_checks_name_the_field_like_compute_engine() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        let ok = body(serde_json::json!({
            "name": "vm-1",
            "machineType": "zones/z/machineTypes/e2-small",
            "labels": {"pool": "warm"},
            "metadata": {"items": [{"key": "k", "value": "v"}]},
            "disks": [{"initializeParams": {"sourceImage": "projects/p/global/images/i"}}],
        }));
        let checked = check_insert(&settings(), "p", "z", "vm-1", &ok);
        let checked = checked.map_err(|e| e.message);
        assert!(checked.is_ok(), "{checked:?}");
        if let Ok(c) = checked {
            assert_eq!(
                c.machine_type_url,
                "https://www.googleapis.com/compute/v1/projects/p/zones/z/machineTypes/e2-small"
            );
            assert_eq!(c.images, vec!["projects/p/global/images/i".to_string()]);
            assert_eq!(c.metadata, vec![("k".to_string(), "v".to_string())]);
        }

        let mut bad_type = ok.clone();
        bad_type.insert("machineType".into(), "zones/z/machineTypes/e2-huge".into());
        let err = check_insert(&settings(), "p", "z", "vm-1", &bad_type).err();
        assert_eq!(
            err.map(|e| (e.status.as_u16(), e.reason, e.message)),
            Some((
                400,
                "invalid",
                "Invalid value for field 'resource.machineType': 'zones/z/machineTypes/e2-huge'. \
                 Machine type with name 'e2-huge' does not exist in zone 'z'."
                    .to_string()
            ))
        );
        let err = check_insert(&settings(), "p", "z", "VM_1", &ok).err();
        assert!(err.is_some_and(|e| e
            .message
            .starts_with("Invalid value for field 'resource.name'")));
    }
}
