//! The official `google-cloud-compute-v1` client against the fake: what it sends, how its
//! operation poller, pagination and retries behave, and the fake's answers to each.

use std::time::Duration;

use crate::common::{client, eventually, fast_backoff, instance, request_id, ZONE};
use google_cloud_compute_v1::client::Instances;
use google_cloud_compute_v1::model;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder as _;
use google_cloud_gax::paginator::{ItemPaginator as _, Paginator as _};
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt as _, TooManyRequests};
use google_cloud_lro::Poller as _;
use warmpool_fake_gce::{FakeGce, FakeGceConfig, InstanceStatus, Method};

const PROJECT: &str = "warmpool-test";

async fn fake() -> anyhow::Result<FakeGce> {
    FakeGce::start(FakeGceConfig::default()).await
}

/// An insert of `body` into the test project's zone with `request_id`, to be sent or polled.
fn insert(
    client: &Instances,
    request_id: impl Into<String>,
    body: model::Instance,
) -> google_cloud_compute_v1::builder::instances::Insert {
    client
        .insert()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_request_id(request_id)
        .set_body(body)
}

#[tokio::test]
async fn insert_poll_get_list_delete_with_the_real_client() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    let rid = request_id();

    let op = insert(&client, &rid, instance("vm-1", &[("pool", "warm")]))
        .send()
        .await?;
    assert_eq!(op.status, Some(model::operation::Status::Running));
    assert_eq!(op.operation_type.as_deref(), Some("insert"));
    assert!(
        op.target_link.as_deref().is_some_and(
            |l| l.ends_with("/projects/warmpool-test/zones/us-central1-a/instances/vm-1")
        )
    );
    // The instance exists from the moment the insert is accepted.
    let provisioning = client
        .get()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-1")
        .send()
        .await?;
    assert_eq!(
        provisioning.status,
        Some(model::instance::Status::Provisioning)
    );

    // Poll the operation by hand, as a reconciler that does not block on it would.
    let op_name = op.name.clone().unwrap_or_default();
    let done = eventually(Duration::from_secs(5), "the insert operation", || async {
        let op = client
            .get_operation()
            .set_project(PROJECT)
            .set_zone(ZONE)
            .set_operation(&op_name)
            .send()
            .await
            .ok()?;
        (op.status == Some(model::operation::Status::Done)).then_some(op)
    })
    .await?;
    assert!(done.error.is_none() && done.http_error_status_code.is_none());
    assert_eq!(done.progress, Some(100));
    assert!(done.end_time.is_some());

    eventually(Duration::from_secs(5), "vm-1 RUNNING", || async {
        let vm = client
            .get()
            .set_project(PROJECT)
            .set_zone(ZONE)
            .set_instance("vm-1")
            .send()
            .await
            .ok()?;
        (vm.status == Some(model::instance::Status::Running)).then_some(())
    })
    .await?;
    let vm = client
        .get()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-1")
        .send()
        .await?;
    assert_eq!(vm.labels.get("pool").map(String::as_str), Some("warm"));
    assert!(vm.id.is_some_and(|id| id > 0));
    assert!(vm
        .machine_type
        .as_deref()
        .is_some_and(|t| t.ends_with("/machineTypes/e2-small")));
    let items = vm.metadata.map(|m| m.items).unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key.as_deref(), Some("warmpool-pool"));

    let page = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_filter("labels.pool = \"warm\"")
        .send()
        .await?;
    assert_eq!(page.items.len(), 1);

    // Delete and wait with the client's own poller.
    client
        .delete()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-1")
        .set_request_id(request_id())
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    let gone = client
        .get()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-1")
        .send()
        .await;
    assert_eq!(gone.err().and_then(|e| e.http_status_code()), Some(404));
    let empty = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .send()
        .await?;
    assert!(empty.items.is_empty());

    // What the client really sent.
    let log = gce.request_log();
    let zone_path = "/compute/v1/projects/warmpool-test/zones/us-central1-a";
    // `$alt` arrives percent-encoded; `$apiVersion` is a date the client pins.
    let expected_prefixes = [
        format!("POST {zone_path}/instances?requestId={rid}&%24alt=json&%24apiVersion="),
        format!("GET {zone_path}/instances/vm-1?%24alt=json&%24apiVersion="),
        format!("GET {zone_path}/operations/{op_name}?%24alt=json"),
        format!("GET {zone_path}/instances?filter=labels.pool+%3D+%22warm%22&%24alt=json"),
        format!("DELETE {zone_path}/instances/vm-1?requestId="),
    ];
    for prefix in expected_prefixes {
        assert!(
            log.iter().any(|line| line.starts_with(&prefix)),
            "no request starting with {prefix} in {log:#?}"
        );
    }
    let counters = gce.counters();
    assert_eq!(counters.insert_calls, 1);
    assert_eq!(counters.instances_created, 1);
    assert_eq!(counters.delete_calls, 1);
    assert_eq!(counters.created_per_zone.get(ZONE), Some(&1));
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_poller_returns_the_finished_insert_operation() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    let op = insert(&client, request_id(), instance("vm-poller", &[]))
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    assert_eq!(op.status, Some(model::operation::Status::Done));
    assert_eq!(op.operation_type.as_deref(), Some("insert"));
    // DONE means accepted and placed: the VM is STAGING or already RUNNING.
    let status = gce.instance(ZONE, "vm-poller").map(|i| i.status);
    assert!(
        matches!(
            status,
            Some(InstanceStatus::Staging | InstanceStatus::Running)
        ),
        "{status:?}"
    );
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_same_request_id_twice_makes_one_instance() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    let rid = request_id();
    let same = || insert(&client, &rid, instance("vm-dup", &[])).send();
    let first = same().await?;
    let second = same().await?;
    assert_eq!(first.name, second.name);
    assert_eq!(first.id, second.id);

    // A different request id for the same name is a conflict.
    let conflict = insert(&client, request_id(), instance("vm-dup", &[]))
        .send()
        .await
        .err();
    assert_eq!(conflict.and_then(|e| e.http_status_code()), Some(409));

    let counters = gce.counters();
    assert_eq!(counters.insert_calls, 3);
    assert_eq!(counters.instances_created, 1);
    assert_eq!(counters.duplicate_inserts_deduplicated, 1);
    assert_eq!(gce.instances().len(), 1);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_lost_insert_answer_is_not_retried_unless_the_request_is_marked_idempotent(
) -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;

    // By default a POST is not idempotent: the client gives up on the 503 at once, although
    // the instance was created.
    gce.lose_next_insert_responses(1);
    let err = insert(&client, request_id(), instance("vm-lost-1", &[]))
        .send()
        .await
        .err();
    assert_eq!(err.and_then(|e| e.http_status_code()), Some(503));
    assert_eq!(gce.counters().insert_calls, 1);
    assert!(gce.instance(ZONE, "vm-lost-1").is_some());

    // Marked idempotent (safe: the request id makes it so), the client's default policy
    // (AIP-194 strict) retries the 503 with the same request id, and gets the operation of
    // the insert that was carried out.
    gce.lose_next_insert_responses(1);
    let op = insert(&client, request_id(), instance("vm-lost-2", &[]))
        .with_idempotency(true)
        .with_backoff_policy(fast_backoff()?)
        .send()
        .await?;
    assert_eq!(
        op.target_link.map(|l| l.ends_with("/vm-lost-2")),
        Some(true)
    );
    let counters = gce.counters();
    assert_eq!(counters.insert_calls, 3);
    assert_eq!(counters.instances_created, 2);
    assert_eq!(counters.duplicate_inserts_deduplicated, 1);
    assert_eq!(counters.insert_responses_lost, 2);
    assert_eq!(gce.instances().len(), 2);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_stocked_out_zone_fails_the_operation_not_the_insert() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    gce.set_stockout(ZONE, true);

    let op = insert(&client, request_id(), instance("vm-stockout", &[]))
        .send()
        .await?;
    let op_name = op.name.unwrap_or_default();
    let done = eventually(Duration::from_secs(5), "the failed operation", || async {
        let op = client
            .get_operation()
            .set_project(PROJECT)
            .set_zone(ZONE)
            .set_operation(&op_name)
            .send()
            .await
            .ok()?;
        (op.status == Some(model::operation::Status::Done)).then_some(op)
    })
    .await?;
    let first_error = done.error.as_ref().and_then(|e| e.errors.first());
    assert_eq!(
        first_error.and_then(|e| e.code.as_deref()),
        Some("ZONE_RESOURCE_POOL_EXHAUSTED")
    );
    assert!(first_error
        .and_then(|e| e.message.as_deref())
        .is_some_and(|m| m.starts_with(
            "The zone 'projects/warmpool-test/zones/us-central1-a' does not have enough resources"
        )));
    assert_eq!(done.http_error_status_code, Some(503));
    assert!(gce.instance(ZONE, "vm-stockout").is_none());

    // The poller does NOT turn a failed operation into an Err (google-cloud-lro 1.11's
    // discovery poller completes with Ok(op) once op.status is DONE): check op.error.
    let op = insert(&client, request_id(), instance("vm-stockout-2", &[]))
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    assert_eq!(first_error_code(&op), Some("ZONE_RESOURCE_POOL_EXHAUSTED"));
    assert_eq!(op.http_error_status_code, Some(503));
    // The crate does map a finished operation to an rpc Status, through a doc-hidden trait.
    use google_cloud_lro::internal::DiscoveryOperation as _;
    assert_eq!(op.error().map(|s| s.code), Some(Code::Unavailable));

    // Quota works the same way, with QUOTA_EXCEEDED and 403.
    gce.set_stockout(ZONE, false);
    gce.set_quota_exceeded(ZONE, true);
    let op = insert(&client, request_id(), instance("vm-quota", &[]))
        .with_polling_backoff_policy(fast_backoff()?)
        .poller()
        .until_done()
        .await?;
    assert_eq!(first_error_code(&op), Some("QUOTA_EXCEEDED"));
    assert_eq!(op.http_error_status_code, Some(403));
    assert_eq!(op.error().map(|s| s.code), Some(Code::ResourceExhausted));
    assert!(op
        .error()
        .is_some_and(|s| s.message == "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1."));
    let counters = gce.counters();
    assert_eq!((counters.stockouts, counters.quota_failures), (2, 1));
    assert!(gce.instances().is_empty());
    gce.shutdown().await;
    Ok(())
}

fn first_error_code(op: &model::Operation) -> Option<&str> {
    op.error.as_ref()?.errors.first()?.code.as_deref()
}

#[tokio::test]
async fn rate_limits_surface_as_429_and_a_policy_can_retry_them() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    gce.fail_next(Method::Get, 1, 429);
    let err = client
        .get()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-none")
        .send()
        .await
        .err();
    assert_eq!(err.as_ref().and_then(|e| e.http_status_code()), Some(429));

    // 429 is not retried by the default policy; TooManyRequests on top of it retries it.
    gce.fail_next(Method::List, 2, 429);
    let list = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .with_retry_policy(TooManyRequests::new(Aip194Strict).with_attempt_limit(5))
        .with_backoff_policy(fast_backoff()?)
        .send()
        .await?;
    assert!(list.items.is_empty());
    assert_eq!(gce.counters().list_calls, 3);

    // 503s on a GET are retried by default (it is idempotent).
    gce.fail_next(Method::Get, 2, 503);
    let err = client
        .get()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-none")
        .with_backoff_policy(fast_backoff()?)
        .send()
        .await
        .err();
    assert_eq!(err.and_then(|e| e.http_status_code()), Some(404));
    let counters = gce.counters();
    assert_eq!(counters.get_calls, 4);
    assert_eq!(counters.rejected_by_knob, 5);
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn list_with_a_label_filter_pages_through_everything() -> anyhow::Result<()> {
    let gce = FakeGce::start(FakeGceConfig {
        max_page_size: 2,
        ..FakeGceConfig::default()
    })
    .await?;
    let client = client(&gce).await?;
    for i in 0..5 {
        let pool = if i % 2 == 0 { "warm" } else { "cold" };
        client
            .insert()
            .set_project(PROJECT)
            .set_zone(ZONE)
            .set_request_id(request_id())
            .set_body(instance(
                &format!("vm-{i}"),
                &[("pool", pool), ("owner", "wp")],
            ))
            .send()
            .await?;
    }
    // Another zone's instances never show up.
    client
        .insert()
        .set_project(PROJECT)
        .set_zone("europe-west4-b")
        .set_request_id(request_id())
        .set_body(
            instance("vm-9", &[("pool", "warm"), ("owner", "wp")])
                .set_machine_type("zones/europe-west4-b/machineTypes/e2-small"),
        )
        .send()
        .await?;

    let mut names = Vec::new();
    let mut items = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_filter("labels.owner = \"wp\" AND labels.pool = \"warm\"")
        .by_item();
    while let Some(item) = items.next().await {
        names.push(item?.name.unwrap_or_default());
    }
    assert_eq!(names, ["vm-0", "vm-2", "vm-4"]);
    assert_eq!(gce.counters().list_calls, 2, "3 items in pages of 2");

    let mut pages = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_max_results(500_u32)
        .by_page();
    let mut sizes = Vec::new();
    while let Some(page) = pages.next().await {
        sizes.push(page?.items.len());
    }
    assert_eq!(sizes, [2, 2, 1], "max_page_size caps maxResults");

    let bad = client
        .list()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_filter("labels.owner = wp OR labels.pool = warm")
        .send()
        .await
        .err();
    assert_eq!(bad.and_then(|e| e.http_status_code()), Some(400));
    gce.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_inserts_are_refused_with_compute_engine_errors() -> anyhow::Result<()> {
    let gce = fake().await?;
    let client = client(&gce).await?;
    let refuse = |body: model::Instance| {
        let client = client.clone();
        async move {
            let err = insert(&client, request_id(), body).send().await.err();
            (
                err.as_ref().and_then(|e| e.http_status_code()),
                err.as_ref()
                    .and_then(|e| e.status())
                    .map(|s| s.message.clone())
                    .unwrap_or_default(),
            )
        }
    };

    let (code, message) =
        refuse(instance("vm-x", &[]).set_machine_type("zones/us-central1-a/machineTypes/e2-huge"))
            .await;
    assert_eq!(code, Some(400));
    assert!(
        message.starts_with("Invalid value for field 'resource.machineType'"),
        "{message}"
    );

    let (code, message) = refuse(instance("VM_X", &[])).await;
    assert_eq!(code, Some(400));
    assert!(
        message.starts_with("Invalid value for field 'resource.name'"),
        "{message}"
    );

    gce.add_missing_image("projects/debian-cloud/global/images/family/debian-12");
    let (code, message) = refuse(instance("vm-x", &[])).await;
    assert_eq!(code, Some(404));
    assert_eq!(
        message,
        "The resource 'projects/debian-cloud/global/images/family/debian-12' was not found"
    );

    gce.set_deny_inserts(true);
    let (code, message) = refuse(instance("vm-x", &[])).await;
    assert_eq!(code, Some(403));
    assert_eq!(
        message,
        "Required 'compute.instances.create' permission for \
         'projects/warmpool-test/zones/us-central1-a/instances/vm-x'"
    );

    let missing = client
        .delete()
        .set_project(PROJECT)
        .set_zone(ZONE)
        .set_instance("vm-x")
        .send()
        .await
        .err();
    assert_eq!(missing.and_then(|e| e.http_status_code()), Some(404));
    let other_project = client
        .get()
        .set_project("someone-else")
        .set_zone(ZONE)
        .set_instance("vm-x")
        .send()
        .await
        .err();
    assert_eq!(other_project.and_then(|e| e.http_status_code()), Some(404));

    let counters = gce.counters();
    assert_eq!(counters.instances_created, 0);
    assert_eq!(counters.rejected_by_knob, 2);
    gce.shutdown().await;
    Ok(())
}
