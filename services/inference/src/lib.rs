//! The inference service: runs the `inference.*` jobs from JetStream and serves
//! `InferenceService`, both through one provider gateway (`mediamesh-gateway`): rate limits,
//! retries, failover, circuit breakers, a cache keyed by content, model and prompt, budgets
//! and one `inference.ai_metrics` row per provider call. Without a configured provider it
//! still starts (health, `GetSpend`), and every task answers `UNSUPPORTED` naming what to set.

mod api;
mod config;
mod ledger;
mod tasks;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use config::InferenceConfig;
use mediamesh_blob::Blob;
use mediamesh_bus::{Bus, BusConfig};
use mediamesh_gateway::Gateway;
use mediamesh_proto::v1::inference_service_server::InferenceServiceServer;
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
    Blob(#[from] mediamesh_blob::Error),
    #[error(transparent)]
    Server(#[from] mediamesh_server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("AI provider configuration: {0}")]
    Config(String),
}

const SERVICES: &[&str] = &["mediamesh.v1.InferenceService"];

pub async fn serve(config: InferenceConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let registry = mediamesh_server::metrics::Registry::new();
    let providers = config.providers.load().map_err(|e| Error::Config(e.message))?;
    let gateway = Gateway::new(providers).map_err(|e| Error::Config(e.message))?;
    let tasks: Vec<&str> = gateway.configured_tasks().iter().map(|t| t.as_str()).collect();
    if tasks.is_empty() {
        tracing::warn!(
            "no AI provider is configured: inference jobs and calls answer UNSUPPORTED (set MM_OPENAI_API_KEY, MM_OPENAI_BASE_URL or MM_CONFIG)"
        );
    } else {
        tracing::info!(tasks = %tasks.join(","), "AI providers configured");
    }
    let store = Store::connect_lazy(&config.database_url, 8)?;
    store.migrate_when_ready(Duration::from_secs(60)).await?;
    let blob = Blob::from_url(&config.blob_url)?;
    let bus = Bus::connect(
        &config.nats_url,
        "mediamesh-inference",
        BusConfig {
            ack_wait: Duration::from_millis(config.ack_wait_ms.max(100)),
            replicas: usize::from(config.stream_replicas),
            ..BusConfig::default()
        },
    )
    .await?;
    bus.ensure_streams_when_ready(Duration::from_secs(60)).await?;

    let ledger = Arc::new(ledger::StoreLedger {
        store: store.clone(),
        daily_usd: config.daily_budget_usd,
        monthly_usd: config.monthly_budget_usd,
        metrics: Some(ledger::AiMetrics::new(&registry)),
    });
    let inference = Arc::new(tasks::Inference {
        store: store.clone(),
        blob,
        bus: bus.clone(),
        gateway,
        ledger,
        config: config.clone(),
    });

    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(mediamesh_bus::worker::run(
        bus.clone(),
        Arc::new(worker::InferenceExecutor {
            inference: Arc::clone(&inference),
        }),
        mediamesh_bus::worker::WorkerOptions {
            queue: "inference".to_owned(),
            concurrency: config.concurrency,
            start_report_after: Duration::from_millis(config.start_report_after_ms),
            observer: Some(Arc::new(mediamesh_server::metrics::WorkerMetrics::new(&registry))),
        },
        worker_stop.clone(),
    ));

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
    mediamesh_server::metrics::serve_metrics(config.metrics_addr, registry.clone(), readiness, shutdown.clone())
        .await?;
    let incoming = mediamesh_server::bind(config.listen_addr).await?;
    tracing::info!(addr = %config.listen_addr, concurrency = config.concurrency, "inference listening");
    let result = tonic::transport::Server::builder()
        .trace_fn(mediamesh_telemetry::grpc_server_span)
        .layer(mediamesh_server::auth::AuthLayer::new(config.auth.internal()?))
        .add_service(health_service)
        .add_service(mediamesh_server::reflection()?)
        .add_service(InferenceServiceServer::new(api::InferenceApi::new(inference)))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    worker_stop.cancel();
    if tokio::time::timeout(Duration::from_millis(config.grace_ms), worker)
        .await
        .is_err()
    {
        tracing::warn!("inference jobs still running after the grace period; JetStream will redeliver them");
    }
    let _ = health.await;
    store.close().await;
    result?;
    Ok(())
}
