//! The two resources the fake keeps, instances and zone operations, and their JSON.
//!
//! Links are written as Compute Engine writes them (`https://www.googleapis.com/compute/v1/…`),
//! not as URLs of the fake: clients treat them as names and never follow them.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

use crate::agents::AgentHandle;

/// The root every `selfLink`, `zone` and `targetLink` starts with.
pub(crate) const API_ROOT: &str = "https://www.googleapis.com/compute/v1";

/// An instance's lifecycle, as far as the fake models it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Accepted; the insert operation is still running.
    Provisioning,
    /// The insert operation is done; the VM boots (`boot_delay`).
    Staging,
    /// Booted; the agent was launched (when an agent binary is configured).
    Running,
    /// Being deleted: the agent got SIGTERM; the instance goes away when the delete is done.
    Stopping,
    /// Preempted: the agent was SIGKILLed; the instance stays listed until deleted.
    Terminated,
}

impl InstanceStatus {
    /// The status string of the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Provisioning => "PROVISIONING",
            InstanceStatus::Staging => "STAGING",
            InstanceStatus::Running => "RUNNING",
            InstanceStatus::Stopping => "STOPPING",
            InstanceStatus::Terminated => "TERMINATED",
        }
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM.
#[derive(Debug)]
pub(crate) struct Instance {
    pub id: u64,
    pub zone: String,
    pub name: String,
    pub status: InstanceStatus,
    /// The insert body as the caller sent it; answers echo it, with the output fields set.
    pub resource: Map<String, Value>,
    /// `machineType` as a full URL, as Compute Engine answers it.
    pub machine_type_url: String,
    pub labels: BTreeMap<String, String>,
    /// Metadata items in the caller's order.
    pub metadata: Vec<(String, String)>,
    pub creation_timestamp: String,
    /// The access token the metadata server hands this VM; a delete carrying it is the VM
    /// deleting itself.
    pub token: String,
    pub agent: Option<AgentHandle>,
}

impl Instance {
    pub fn self_link(&self, project: &str) -> String {
        format!(
            "{API_ROOT}/projects/{project}/zones/{}/instances/{}",
            self.zone, self.name
        )
    }

    pub fn to_json(&self, project: &str) -> Value {
        let mut out = self.resource.clone();
        let items: Vec<Value> = self
            .metadata
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect();
        let mut metadata = Map::new();
        metadata.insert("kind".into(), json!("compute#metadata"));
        metadata.insert("fingerprint".into(), json!(fingerprint(&self.metadata)));
        if !items.is_empty() {
            metadata.insert("items".into(), Value::Array(items));
        }
        let fields = [
            ("kind", json!("compute#instance")),
            ("id", json!(self.id.to_string())),
            ("name", json!(self.name)),
            ("creationTimestamp", json!(self.creation_timestamp)),
            ("zone", json!(zone_url(project, &self.zone))),
            ("machineType", json!(self.machine_type_url)),
            ("status", json!(self.status.as_str())),
            ("selfLink", json!(self.self_link(project))),
            ("metadata", Value::Object(metadata)),
            ("labelFingerprint", json!(fingerprint(&self.labels))),
            (
                "fingerprint",
                json!(fingerprint(&(self.id, self.status.as_str()))),
            ),
        ];
        for (key, value) in fields {
            out.insert(key.to_string(), value);
        }
        if self.labels.is_empty() {
            out.remove("labels");
        } else {
            out.insert("labels".into(), json!(self.labels));
        }
        Value::Object(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpType {
    Insert,
    Delete,
}

impl OpType {
    fn as_str(self) -> &'static str {
        match self {
            OpType::Insert => "insert",
            OpType::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpStatus {
    Running,
    Done,
}

/// Why an operation failed: `error.errors[0]` plus the HTTP status Compute Engine attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpError {
    pub code: &'static str,
    pub message: String,
    pub http_status: u16,
    pub http_message: &'static str,
}

/// One zone operation.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub id: u64,
    pub name: String,
    pub zone: String,
    pub op_type: OpType,
    pub target_name: String,
    pub target_id: u64,
    pub status: OpStatus,
    pub insert_time: String,
    pub end_time: Option<String>,
    pub error: Option<OpError>,
}

impl Operation {
    pub fn finish(&mut self, error: Option<OpError>) {
        if self.status == OpStatus::Done {
            return;
        }
        self.status = OpStatus::Done;
        self.end_time = Some(now_rfc3339());
        self.error = error;
    }

    pub fn to_json(&self, project: &str) -> Value {
        let zone = zone_url(project, &self.zone);
        let mut out = json!({
            "kind": "compute#operation",
            "id": self.id.to_string(),
            "name": self.name,
            "zone": zone,
            "operationType": self.op_type.as_str(),
            "targetLink": format!("{zone}/instances/{}", self.target_name),
            "targetId": self.target_id.to_string(),
            "status": match self.status {
                OpStatus::Running => "RUNNING",
                OpStatus::Done => "DONE",
            },
            "user": "anonymous",
            "progress": if self.status == OpStatus::Done { 100 } else { 0 },
            "insertTime": self.insert_time,
            "startTime": self.insert_time,
            "selfLink": format!("{zone}/operations/{}", self.name),
        });
        if let (Some(end), Some(obj)) = (&self.end_time, out.as_object_mut()) {
            obj.insert("endTime".into(), json!(end));
        }
        if let (Some(err), Some(obj)) = (&self.error, out.as_object_mut()) {
            obj.insert(
                "error".into(),
                json!({"errors": [{"code": err.code, "message": err.message}]}),
            );
            obj.insert("httpErrorStatusCode".into(), json!(err.http_status));
            obj.insert("httpErrorMessage".into(), json!(err.http_message));
        }
        out
    }
}

pub(crate) fn zone_url(project: &str, zone: &str) -> String {
    format!("{API_ROOT}/projects/{project}/zones/{zone}")
}

/// `projects/P/zones/Z/instances/N`: how error messages name an instance.
pub(crate) fn instance_path(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}

/// The region a zone is in (`us-central1-a` → `us-central1`).
pub(crate) fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An opaque fingerprint like Compute Engine's (URL-safe base64 of 8 bytes, e.g.
/// `--KE24GB4T0=`), stable for equal content. URL-safe matters: the Rust client decodes
/// fingerprints with the URL-safe alphabet and fails on a `+` or `/`.
fn fingerprint(content: &impl Hash) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    content.hash(&mut hasher);
    base64(&hasher.finish().to_be_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_url_safe_and_padded() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff; 8]), "__________8=");
        assert_eq!(base64(&[0xfb; 3]), "-_v7");
    }

    #[test]
    fn region_is_the_zone_without_its_letter() {
        assert_eq!(region_of("us-central1-a"), "us-central1");
        assert_eq!(region_of("europe-west4-b"), "europe-west4");
    }

    #[test]
    fn failed_operation_carries_error_and_http_status() {
        let mut op = Operation {
            id: 7,
            name: "operation-1".into(),
            zone: "us-central1-a".into(),
            op_type: OpType::Insert,
            target_name: "vm-1".into(),
            target_id: 9,
            status: OpStatus::Running,
            insert_time: now_rfc3339(),
            end_time: None,
            error: None,
        };
        let running = op.to_json("p");
        assert_eq!(running["status"], "RUNNING");
        assert!(running.get("error").is_none() && running.get("endTime").is_none());
        op.finish(Some(OpError {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED",
            message: "no room".into(),
            http_status: 503,
            http_message: "SERVICE UNAVAILABLE",
        }));
        let done = op.to_json("p");
        assert_eq!(done["status"], "DONE");
        assert_eq!(
            done["error"]["errors"][0]["code"],
            "ZONE_RESOURCE_POOL_EXHAUSTED"
        );
        assert_eq!(done["httpErrorStatusCode"], 503);
        assert_eq!(
            done["targetLink"],
            "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/vm-1"
        );
    }
}
