//! The composition root of one orchestrator replica: API, background loops and provider,
//! started by [`run`] with its listener and shutdown token passed in, so tests start it on
//! `127.0.0.1:0` and stop it at will.

use std::sync::Arc;

use fred::prelude::ClientLike;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::{Config, ProviderKind};
use crate::pool::leader::Leadership;
use crate::pool::local::{LocalProvider, LocalSettings};
use crate::pool::provider::{Counted, NoProvider, Provider};
use crate::pool::reconciler::Reconciler;
use crate::waiters::{self, Waiters};
use warmpool_core::model::{ErrorDetail, ExecutionState};
use warmpool_core::store::{executions, games, settings, Store, StoreError};

/// Most executions one sweep ends, so a backlog is worked through in bounded steps.
const SWEEP_BATCH: i64 = 256;

/// Runs one replica until `shutdown` is cancelled, then stops what it started.
pub async fn run(
    config: Config,
    redis_url: String,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    crate::metrics::install();
    let formula = config.formula()?;
    let settings = config.redis_settings(redis_url.clone());
    let store = Store::connect(&settings, &config.pool).await?;
    // The settings agents follow come from the replicas, through Redis: publish ours.
    if let Some(before) = settings::publish(&store, &config.pool_settings()).await? {
        tracing::warn!(
            ?before,
            now = ?config.pool_settings(),
            "this replica's pool settings differ from those another replica published; \
             agents registering from now on follow this replica's"
        );
    }
    let waiters = Waiters::default();
    let reconcile = Arc::new(tokio::sync::Notify::new());
    let subscriber =
        waiters::subscribe(&settings, &store, waiters.clone(), reconcile.clone()).await?;
    let state = AppState {
        store: store.clone(),
        tokens: Arc::new(config.tokens()),
        config: Arc::new(config.clone()),
        waiters,
        reconcile,
    };

    let provider: Arc<dyn Provider> = match config.provider {
        ProviderKind::Local => Arc::new(LocalProvider::new(LocalSettings {
            agent_bin: config
                .agent_bin
                .clone()
                .unwrap_or_else(LocalProvider::default_agent_bin),
            redis_url,
            pool: config.pool.clone(),
            boot_delay: config.local_boot_delay,
            sandbox: config.agent_sandbox,
            slots: config.agent_slots,
        })),
        ProviderKind::Gce => {
            let settings = config.gce.settings(&config.pool, &redis_url)?;
            Arc::new(crate::gce::GceProvider::new(settings).await?)
        }
        ProviderKind::None => Arc::new(NoProvider),
    };
    // Every call counted in the pool's stats, for /metrics.
    let provider: Arc<dyn Provider> = Arc::new(Counted::new(provider, store.clone()));
    let tasks = TaskTracker::new();
    tasks.spawn(sweep_loop(state.clone(), shutdown.clone()));
    let replica_id = config.replica_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            hostname(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let leadership = Leadership::new(store.clone(), replica_id, config.leader_ttl);
    // Wakes the reconciler at once: on gaining leadership, on a pending game, on demand.
    let wake = state.reconcile.clone();
    tasks.spawn(leadership.clone().run(shutdown.clone(), wake.clone()));
    let reconciler = Reconciler::new(
        store.clone(),
        provider.clone(),
        leadership,
        config.reconciler_settings(formula),
        wake,
    );
    tasks.spawn(reconciler.run(shutdown.clone()));

    if let Some(addr) = config.metrics_listen {
        let metrics = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding WARMPOOL_METRICS_LISTEN={addr}: {e}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "metrics at /metrics");
        let stop = shutdown.clone();
        let router = crate::metrics::router(store.clone());
        tasks.spawn(async move {
            let served = axum::serve(metrics, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "the metrics listener stopped");
            }
        });
    }
    let app = api::router(state);
    tracing::info!(
        addr = %listener.local_addr()?,
        pool = %config.pool,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "listening"
    );
    let serve_shutdown = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { serve_shutdown.cancelled().await })
        .await?;

    tasks.close();
    tasks.wait().await;
    provider.shutdown().await;
    let _ = subscriber.quit().await;
    store.quit().await;
    Ok(())
}

/// Ends overdue queued executions, expires idle games, and places pending games, on a tick.
/// Every replica runs it; every step is a script that is safe to run concurrently.
async fn sweep_loop(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = sweep(&state).await {
            tracing::warn!(error = %err, "sweep failed; retrying next tick");
        }
    }
}

/// One pass of the sweeper.
pub async fn sweep(state: &AppState) -> Result<(), StoreError> {
    let store = &state.store;
    let config = &state.config;
    let now = store.now_ms().await?;
    let expired = ErrorDetail {
        code: "queue_timeout".into(),
        message: format!(
            "no VM took the execution within {} s",
            config.queue_timeout.as_secs_f64()
        ),
    };
    for id in executions::overdue(store, now, SWEEP_BATCH).await? {
        executions::end_queued(store, &id, ExecutionState::Expired, &expired, true).await?;
    }
    config.leases().expire_games(store, now).await?;
    // Reconnected agents free slots: hand them to pending games.
    games::place_pending(store, config.placement, None).await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".into())
}
