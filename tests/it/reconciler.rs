//! The leader's reconcile pass on a real redis-server, with a provider that records what it
//! is asked to do: what the leader does with records it cannot read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use warmpool::pool::leader::Leadership;
use warmpool::pool::provider::{
    BoxFuture, InstanceState, Provider, ProviderError, VmInstance, VmSpec,
};
use warmpool::pool::reconciler::Reconciler;
use warmpool::pool::sizing::Formula;
use warmpool_core::store::vms::{self, Registration, Transition, TransitionResult};
use warmpool_testkit::redis::{publish_default_settings, store};

use crate::common::*;

/// Lists the instances it is given as running, and records every delete and create.
#[derive(Default)]
struct Recording {
    instances: Vec<String>,
    deleted: Mutex<Vec<String>>,
    created: Mutex<Vec<String>>,
}

impl Provider for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(spec.vm_id.clone());
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, vm_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(vm_id.to_string());
        Box::pin(async { Ok(()) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmInstance>, ProviderError>> {
        let listed = self
            .instances
            .iter()
            .map(|vm_id| VmInstance {
                vm_id: vm_id.clone(),
                state: InstanceState::Running,
                detail: "recorded".into(),
            })
            .collect();
        Box::pin(async move { Ok(listed) })
    }
}

#[tokio::test]
async fn a_vm_whose_state_the_leader_does_not_understand_is_left_alone() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis.url(), "rec").await;
    publish_default_settings(&s).await;
    let leadership = Leadership::new(s.clone(), "me".into(), Duration::from_secs(10));
    let token = leadership
        .try_lead()
        .await
        .unwrap()
        .expect("the only replica leads");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let TransitionResult::Ok { vm_id, .. } =
            vms::transition(&s, token, "rec", Transition::Add { capacity: 4 })
                .await
                .unwrap()
        else {
            panic!("the add goes through");
        };
        let registered = vms::register(&s, &vm_id, 4, &[], "test", "").await.unwrap();
        assert!(
            matches!(registered, Registration::Ok { .. }),
            "{registered:?}"
        );
        ids.push(vm_id);
    }
    let (strange, silent) = (ids[0].clone(), ids[1].clone());
    // Both agents fell silent long ago; one VM is in a state a newer build wrote.
    for vm in &ids {
        let _: i64 = s
            .client()
            .zadd(&s.keys.vm_hb, None, None, false, false, (0.0, vm.as_str()))
            .await
            .unwrap();
    }
    let _: i64 = s
        .client()
        .hset(&s.keys.vm_state, (strange.as_str(), "hibernating"))
        .await
        .unwrap();
    let unreadable_before = warmpool_core::store::corrupt_reads();

    let provider = Arc::new(Recording {
        instances: ids.clone(),
        ..Recording::default()
    });
    let mut settings = warmpool::config::Config::defaults().reconciler_settings(Formula::Default);
    // Even with no grace at all, an instance whose record exists is not an orphan.
    settings.orphan_grace_ms = 0;
    let reconciler = Reconciler::new(
        s.clone(),
        provider.clone(),
        leadership,
        settings,
        Arc::new(tokio::sync::Notify::new()),
    );
    reconciler.pass(token).await.unwrap();

    let deleted = provider.deleted.lock().unwrap().clone();
    assert_eq!(
        deleted,
        std::slice::from_ref(&silent),
        "only the silent, readable VM goes"
    );
    let state: Option<String> = s.client().hget(&s.keys.vm_state, &strange).await.unwrap();
    assert_eq!(
        state.as_deref(),
        Some("hibernating"),
        "its record is untouched"
    );
    let snapshot = vms::snapshot(&s).await.unwrap();
    assert_eq!(
        snapshot
            .unreadable
            .iter()
            .map(|u| &u.vm_id)
            .collect::<Vec<_>>(),
        [&strange]
    );
    assert!(snapshot.unreadable[0].problem.contains("hibernating"));
    assert!(
        warmpool_core::store::corrupt_reads() > unreadable_before,
        "counted"
    );

    // The API does not pretend the pool is readable either.
    let replica = Replica::start(test_config("rec"), &redis.url()).await;
    let r = replica.api().get("/v1/pool").await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "internal");
    replica.stop().await;
}
