//! The scheduler: owns jobs and their history. It commits submitted jobs, dispatches due ones
//! into JetStream by priority under a per-queue in-flight cap, applies the workers' reports as
//! guarded state transitions, and serves `JobService`.

mod aggregate;
mod api;
mod config;
mod convert;
mod dispatch;
mod events;
mod feed;
mod metrics;
mod retention;
mod submit;

use std::time::Duration;

pub use config::{JobDefaults, KindDefaults, SchedulerConfig};
pub use convert::job_to_proto;
use mediamesh_bus::{Bus, BusConfig};
use mediamesh_proto::v1::job_service_server::JobServiceServer;
use mediamesh_proto::v1::scheduler_internal_service_server::SchedulerInternalServiceServer;
use mediamesh_server::check;
use mediamesh_store::Store;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] mediamesh_store::Error),
    #[error(transparent)]
    Bus(#[from] mediamesh_bus::Error),
    #[error(transparent)]
    Server(#[from] mediamesh_server::Error),
    #[error(transparent)]
    Blob(#[from] mediamesh_blob::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("AI provider configuration: {0}")]
    Config(String),
}

/// Who runs aggregates, as their attempts record it.
fn scheduler_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "scheduler".to_owned());
    format!("scheduler@{host}-{}", std::process::id())
}

const SERVICES: &[&str] = &["mediamesh.v1.JobService", "mediamesh.v1.SchedulerInternalService"];

/// Runs the scheduler until `shutdown` is cancelled, then drains and returns.
pub async fn serve(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let registry = mediamesh_server::metrics::Registry::new();
    let store = Store::connect_lazy(&config.database_url, config.db_pool_size)?;
    store.migrate_when_ready(Duration::from_secs(60)).await?;
    let bus = Bus::connect(
        &config.nats_url,
        "mediamesh-scheduler",
        BusConfig {
            replicas: usize::from(config.stream_replicas),
            ..BusConfig::default()
        },
    )
    .await?;
    bus.ensure_streams_when_ready(Duration::from_secs(60)).await?;

    let blob = if config.blob_url.is_empty() {
        tracing::info!("no MM_BLOB_URL: retention deletes jobs but leaves their outputs");
        None
    } else {
        Some(mediamesh_blob::Blob::from_url(&config.blob_url)?)
    };

    let scheduler_metrics = metrics::SchedulerMetrics::new(&registry, store.clone(), bus.clone());
    let dispatch = dispatch::Dispatcher::new();
    let tasks = CancellationToken::new();
    let dispatcher = {
        let (store, bus, dispatch, config, tasks, scheduler_metrics) = (
            store.clone(),
            bus.clone(),
            dispatch.clone(),
            config.clone(),
            tasks.clone(),
            scheduler_metrics.clone(),
        );
        let id = scheduler_id();
        mediamesh_server::supervise("dispatcher", tasks.clone(), move || {
            dispatch::run(
                store.clone(),
                bus.clone(),
                dispatch.clone(),
                config.clone(),
                id.clone(),
                tasks.clone(),
                scheduler_metrics.clone(),
            )
        })
    };
    let events = {
        let (store, bus, dispatch, config, tasks, scheduler_metrics) = (
            store.clone(),
            bus.clone(),
            dispatch.clone(),
            config.clone(),
            tasks.clone(),
            scheduler_metrics.clone(),
        );
        mediamesh_server::supervise("events", tasks.clone(), move || {
            events::run(
                store.clone(),
                bus.clone(),
                dispatch.clone(),
                config.clone(),
                tasks.clone(),
                scheduler_metrics.clone(),
            )
        })
    };
    let retention = {
        let (store, config, tasks) = (store.clone(), config.clone(), tasks.clone());
        mediamesh_server::supervise("retention", tasks.clone(), move || {
            retention::run(store.clone(), blob.clone(), config.clone(), tasks.clone())
        })
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = mediamesh_server::metrics::Readiness::new();
    let health = {
        let store = store.clone();
        let bus = bus.clone();
        mediamesh_server::spawn_health_with(
            reporter,
            SERVICES,
            vec![
                (
                    "postgresql",
                    check(move || {
                        let store = store.clone();
                        async move { store.ping().await }
                    }),
                ),
                (
                    "nats",
                    check(move || {
                        let bus = bus.clone();
                        async move { bus.is_connected() }
                    }),
                ),
            ],
            Duration::from_millis(config.health_interval_ms),
            shutdown.clone(),
            readiness.clone(),
        )
    };

    let ai_kinds: std::collections::HashSet<_> = config
        .providers
        .tasks()
        .map_err(|e| Error::Config(e.message))?
        .into_iter()
        .filter_map(mediamesh_gateway::Task::job_kind)
        .collect();
    let progress = feed::ProgressBook::new();
    let api = api::JobApi::new(
        store.clone(),
        bus.clone(),
        dispatch,
        config.clone(),
        shutdown.clone(),
        ai_kinds,
    )
    .with_metrics(scheduler_metrics)
    .with_progress(progress.clone());
    let progress_task = tokio::spawn(progress.run(bus.clone(), tasks.clone()));
    mediamesh_server::metrics::serve_metrics(config.metrics_addr, registry.clone(), readiness, shutdown.clone())
        .await?;
    let incoming = mediamesh_server::bind(config.listen_addr).await?;
    tracing::info!(addr = %config.listen_addr, "scheduler listening");
    tonic::transport::Server::builder()
        .trace_fn(mediamesh_telemetry::grpc_server_span)
        .layer(mediamesh_server::auth::AuthLayer::new(config.auth.internal()?))
        .add_service(health_service)
        .add_service(mediamesh_server::reflection()?)
        .add_service(JobServiceServer::new(api.clone()))
        .add_service(SchedulerInternalServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;

    tasks.cancel();
    let _ = tokio::join!(dispatcher, events, retention, health, progress_task);
    store.close().await;
    Ok(())
}
