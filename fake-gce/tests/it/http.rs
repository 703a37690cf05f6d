//! The wire format, read raw: what a client without the Google library would see.

use std::time::{Duration, Instant};

use crate::common::ZONE;
use serde_json::{json, Value};
use warmpool_fake_gce::{FakeGce, FakeGceConfig, Method};

struct Raw {
    http: reqwest::Client,
    zone_url: String,
}

impl Raw {
    fn new(gce: &FakeGce) -> Self {
        Raw {
            http: reqwest::Client::new(),
            zone_url: format!(
                "{}/compute/v1/projects/warmpool-test/zones/{ZONE}",
                gce.endpoint()
            ),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn insert(&self, query: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}/instances?{query}", self.zone_url);
        self.send(self.http.post(url).json(&body)).await
    }
}

fn vm(name: &str) -> Value {
    json!({"name": name, "machineType": format!("zones/{ZONE}/machineTypes/e2-micro")})
}

#[tokio::test]
async fn wait_returns_when_the_operation_is_done_or_after_two_seconds() -> anyhow::Result<()> {
    let gce = FakeGce::start(FakeGceConfig {
        op_delay: Duration::from_millis(300),
        ..FakeGceConfig::default()
    })
    .await?;
    let raw = Raw::new(&gce);
    let (status, op) = raw.insert("requestId=", vm("vm-wait")).await?;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "RUNNING");
    let name = op["name"].as_str().unwrap_or_default();
    let wait_url = format!("{}/operations/{name}/wait", raw.zone_url);
    let (status, done) = raw.send(raw.http.post(&wait_url)).await?;
    assert_eq!(status, 200);
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["progress"], 100);
    assert!(done.get("error").is_none());

    // A long operation: wait gives up after about 2 s and answers it as it is.
    gce.set_op_delay(Duration::from_secs(30));
    let (_, op) = raw.insert("", vm("vm-slow")).await?;
    let name = op["name"].as_str().unwrap_or_default();
    let started = Instant::now();
    let (status, still) = raw
        .send(
            raw.http
                .post(format!("{}/operations/{name}/wait", raw.zone_url)),
        )
        .await?;
    let waited = started.elapsed();
    assert_eq!((status, still["status"].as_str()), (200, Some("RUNNING")));
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let (status, _) = raw
        .send(
            raw.http
                .get(format!("{}/operations/operation-nope", raw.zone_url)),
        )
        .await?;
    assert_eq!(status, 404);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bodies_have_the_compute_engine_shape() -> anyhow::Result<()> {
    let gce = FakeGce::start(FakeGceConfig::default()).await?;
    let raw = Raw::new(&gce);

    let (status, empty) = raw
        .send(raw.http.get(format!("{}/instances", raw.zone_url)))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(empty["kind"], "compute#instanceList");
    assert!(
        empty.get("items").is_none(),
        "no items key when empty: {empty}"
    );
    assert!(empty.get("nextPageToken").is_none());

    let (status, op) = raw
        .insert(
            "requestId=1b4e28ba-2fa1-11d2-883f-0016d3cca427&$alt=json&unknown=1",
            vm("vm-1"),
        )
        .await?;
    assert_eq!(status, 200, "{op}");
    for key in [
        "kind",
        "id",
        "name",
        "zone",
        "operationType",
        "targetLink",
        "targetId",
    ] {
        assert!(op.get(key).is_some(), "operation lacks {key}: {op}");
    }
    assert_eq!(op["kind"], "compute#operation");
    assert!(op["id"]
        .as_str()
        .is_some_and(|id| id.parse::<u64>().is_ok()));
    assert!(op["zone"]
        .as_str()
        .is_some_and(|z| z.ends_with("/projects/warmpool-test/zones/us-central1-a")));

    let (_, instance) = raw
        .send(raw.http.get(format!("{}/instances/vm-1", raw.zone_url)))
        .await?;
    assert_eq!(instance["kind"], "compute#instance");
    assert_eq!(instance["status"], "PROVISIONING");
    assert!(instance["creationTimestamp"].as_str().is_some());
    assert_eq!(instance["id"].as_str(), op["targetId"].as_str());

    let (status, error) = raw.insert("requestId=not-a-uuid", vm("vm-2")).await?;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], 400);
    assert_eq!(error["error"]["errors"][0]["reason"], "invalid");
    assert_eq!(error["error"]["errors"][0]["domain"], "global");
    assert!(error["error"].get("status").is_none());

    let (status, error) = raw.insert("", vm("vm-1")).await?;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["errors"][0]["reason"], "alreadyExists");

    let (status, _) = raw
        .send(
            raw.http
                .post(format!("{}/instances", raw.zone_url))
                .body("{not json"),
        )
        .await?;
    assert_eq!(status, 400);

    let (status, error) = raw
        .send(
            raw.http
                .get(format!("{}/instances?maxResults=501", raw.zone_url)),
        )
        .await?;
    assert_eq!(status, 400, "{error}");

    gce.fail_next(Method::Any, 1, 503);
    let (status, error) = raw
        .send(raw.http.get(format!("{}/instances/vm-1", raw.zone_url)))
        .await?;
    assert_eq!(status, 503);
    assert_eq!(error["error"]["errors"][0]["reason"], "backendError");

    let (status, _) = raw
        .send(
            raw.http
                .get(format!("{}/compute/v1/nothing/here", gce.endpoint())),
        )
        .await?;
    assert_eq!(status, 404);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_delete_retried_with_its_request_id_gets_the_same_operation() -> anyhow::Result<()> {
    let gce = FakeGce::start(FakeGceConfig::default()).await?;
    let raw = Raw::new(&gce);
    raw.insert("", vm("vm-del")).await?;
    let url = format!(
        "{}/instances/vm-del?requestId=6f1c0a5e-8a4b-4d47-9c53-2a0c1a1d3e4f",
        raw.zone_url
    );
    let (status, first) = raw.send(raw.http.delete(&url)).await?;
    assert_eq!(
        (status, first["operationType"].as_str()),
        (200, Some("delete"))
    );
    let (_, done) = raw
        .send(raw.http.post(format!(
            "{}/operations/{}/wait",
            raw.zone_url,
            first["name"].as_str().unwrap_or_default()
        )))
        .await?;
    assert_eq!(done["status"], "DONE");
    // The instance is gone, yet the retry is answered from the request id, not with a 404.
    let (status, again) = raw.send(raw.http.delete(&url)).await?;
    assert_eq!((status, &again["name"]), (200, &first["name"]));
    let (status, _) = raw
        .send(
            raw.http
                .delete(format!("{}/instances/vm-del", raw.zone_url)),
        )
        .await?;
    assert_eq!(status, 404);
    gce.shutdown().await;
    Ok(())
}
