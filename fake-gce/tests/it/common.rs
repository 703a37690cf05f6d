//! Helpers shared by the integration suites: a real Compute Engine client pointed at the
//! fake, instance bodies, and polling with a deadline.

#![allow(dead_code)] // each suite uses a different part

use std::future::Future;
use std::time::Duration;

use google_cloud_compute_v1::client::Instances;
use google_cloud_compute_v1::model;
use warmpool_fake_gce::FakeGce;

pub const ZONE: &str = "us-central1-a";

/// The official client, anonymous, at the fake's endpoint.
pub async fn client(gce: &FakeGce) -> anyhow::Result<Instances> {
    Ok(Instances::builder()
        .with_endpoint(gce.endpoint())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await?)
}

/// An instance body as the orchestrator would send it.
pub fn instance(name: &str, labels: &[(&str, &str)]) -> model::Instance {
    model::Instance::new()
        .set_name(name)
        .set_machine_type(format!("zones/{ZONE}/machineTypes/e2-small"))
        .set_labels(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .set_metadata(
            model::Metadata::new().set_items([model::metadata::Items::new()
                .set_key("warmpool-pool")
                .set_value("default")]),
        )
        .set_disks([model::AttachedDisk::new()
            .set_boot(true)
            .set_auto_delete(true)
            .set_initialize_params(
                model::AttachedDiskInitializeParams::new()
                    .set_source_image("projects/debian-cloud/global/images/family/debian-12"),
            )])
}

/// A fresh request id, as the orchestrator makes one per intended insert.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Polls `probe` until it returns `Some`, failing the test after `limit` (the testkit's wait,
/// in the `Result` these suites return).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    Ok(warmpool_testkit::eventually(limit, what, probe).await)
}

/// A backoff for tests (retries or operation polls): 10 ms, then up to 50 ms, instead of the
/// default 1 s start.
pub fn fast_backoff() -> anyhow::Result<google_cloud_gax::exponential_backoff::ExponentialBackoff> {
    Ok(
        google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(10))
            .with_maximum_delay(Duration::from_millis(50))
            .build()?,
    )
}
