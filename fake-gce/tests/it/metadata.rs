//! The per-instance metadata server, over plain HTTP as an agent reads it.

use std::collections::BTreeMap;

use crate::common::ZONE;
use warmpool_fake_gce::{FakeGce, FakeGceConfig};

async fn fake_with_vm() -> anyhow::Result<(FakeGce, String)> {
    let gce = FakeGce::start(FakeGceConfig::default()).await?;
    gce.insert_unmanaged(
        ZONE,
        "vm-meta",
        BTreeMap::from([("pool".to_string(), "warm".to_string())]),
        BTreeMap::from([
            (
                "warmpool-redis-url".to_string(),
                "redis://10.0.0.1:6379".to_string(),
            ),
            ("warmpool-pool".to_string(), "default".to_string()),
        ]),
    )?;
    let base = format!(
        "{}/metadata/{ZONE}/vm-meta/computeMetadata/v1",
        gce.endpoint()
    );
    Ok((gce, base))
}

async fn read(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("{base}/{path}"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await?;
    let status = response.status().as_u16();
    anyhow::ensure!(
        response
            .headers()
            .get("metadata-flavor")
            .is_some_and(|v| v == "Google"),
        "answers carry Metadata-Flavor: Google"
    );
    Ok((status, response.text().await?))
}

#[tokio::test]
async fn requests_without_the_flavor_header_are_refused() -> anyhow::Result<()> {
    let (gce, base) = fake_with_vm().await?;
    let response = reqwest::get(format!("{base}/instance/name")).await?;
    assert_eq!(response.status().as_u16(), 403);
    let wrong = reqwest::Client::new()
        .get(format!("{base}/instance/name"))
        .header("Metadata-Flavor", "google-ish")
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 403);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_instance_reads_its_identity_and_attributes() -> anyhow::Result<()> {
    let (gce, base) = fake_with_vm().await?;
    let id = gce
        .instance(ZONE, "vm-meta")
        .map(|i| i.id.to_string())
        .unwrap_or_default();
    let expect = [
        ("instance/name", "vm-meta".to_string()),
        (
            "instance/zone",
            "projects/123456789012/zones/us-central1-a".to_string(),
        ),
        ("instance/id", id),
        ("project/project-id", "warmpool-test".to_string()),
        ("project/numeric-project-id", "123456789012".to_string()),
        (
            "instance/attributes/warmpool-redis-url",
            "redis://10.0.0.1:6379".to_string(),
        ),
        (
            "instance/attributes/",
            "warmpool-pool\nwarmpool-redis-url\n".to_string(),
        ),
    ];
    for (path, value) in expect {
        assert_eq!(read(&base, path).await?, (200, value), "{path}");
    }
    assert_eq!(read(&base, "instance/attributes/absent").await?.0, 404);
    assert_eq!(read(&base, "instance/no-such-thing").await?.0, 404);
    let other_vm = base.replace("vm-meta", "vm-other");
    assert_eq!(read(&other_vm, "instance/name").await?.0, 404);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_token_is_per_instance_and_marks_a_self_delete() -> anyhow::Result<()> {
    let (gce, base) = fake_with_vm().await?;
    gce.insert_unmanaged(ZONE, "vm-other", BTreeMap::new(), BTreeMap::new())?;
    let (status, body) = read(&base, "instance/service-accounts/default/token").await?;
    assert_eq!(status, 200);
    let token: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(token["expires_in"], 3599);
    assert_eq!(token["token_type"], "Bearer");
    let access_token = token["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!access_token.is_empty());
    let other_base = base.replace("vm-meta", "vm-other");
    let (_, other) = read(&other_base, "instance/service-accounts/default/token").await?;
    assert!(!other.contains(&access_token), "tokens differ per instance");

    // vm-meta's token deleting vm-other is not a self-delete; vm-meta deleting itself is.
    // (This is the request the agent sends: no requestId, its own token.)
    let http = reqwest::Client::new();
    let instances = format!(
        "{}/compute/v1/projects/warmpool-test/zones/{ZONE}/instances",
        gce.endpoint()
    );
    let other = http
        .delete(format!("{instances}/vm-other"))
        .bearer_auth(&access_token)
        .send()
        .await?;
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(gce.counters().self_deletes, 0);
    let own = http
        .delete(format!("{instances}/vm-meta"))
        .bearer_auth(&access_token)
        .send()
        .await?;
    assert_eq!(own.status().as_u16(), 200);
    let counters = gce.counters();
    assert_eq!((counters.delete_calls, counters.self_deletes), (2, 1));
    gce.shutdown().await;
    Ok(())
}
