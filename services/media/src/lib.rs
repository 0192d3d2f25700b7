//! The media service: runs `media.*` jobs from JetStream (probe, thumbnails, waveform, video
//! thumbnail and preview) and serves `MediaService` for small synchronous operations. It owns
//! nothing durable.

mod api;
mod config;
mod jobs;
mod test_kind;
mod worker;

use std::time::Duration;

pub use config::MediaConfig;
use mediamesh_blob::Blob;
use mediamesh_bus::{Bus, BusConfig};
use mediamesh_proto::v1::media_service_server::MediaServiceServer;
use mediamesh_server::check;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Blob(#[from] mediamesh_blob::Error),
    #[error(transparent)]
    Bus(#[from] mediamesh_bus::Error),
    #[error(transparent)]
    Server(#[from] mediamesh_server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(String),
}

const SERVICES: &[&str] = &["mediamesh.v1.MediaService"];

/// Runs the media service until `shutdown`; jobs under way finish (within the grace period)
/// before it returns.
pub async fn serve(config: MediaConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let registry = mediamesh_server::metrics::Registry::new();
    config.validate().map_err(Error::Config)?;
    match config.av_tools().check().await {
        Ok(version) => tracing::info!(ffmpeg = %version, "ffmpeg found"),
        Err(err) => tracing::warn!(error = %err.message, "audio and video jobs will fail until ffmpeg is installed"),
    }
    let blob = Blob::from_url(&config.blob_url)?;
    let bus = Bus::connect(
        &config.nats_url,
        "mediamesh-media",
        BusConfig {
            ack_wait: std::time::Duration::from_millis(config.ack_wait_ms.max(100)),
            replicas: usize::from(config.stream_replicas),
            ..BusConfig::default()
        },
    )
    .await?;
    bus.ensure_streams_when_ready(Duration::from_secs(60)).await?;

    let worker_stop = CancellationToken::new();
    let executor = worker::MediaExecutor {
        bus: bus.clone(),
        blob: blob.clone(),
        config: config.clone(),
    };
    let worker = tokio::spawn(mediamesh_bus::worker::run(
        bus.clone(),
        std::sync::Arc::new(executor),
        mediamesh_bus::worker::WorkerOptions {
            queue: "media".to_owned(),
            concurrency: config.concurrency(),
            start_report_after: Duration::from_millis(config.start_report_after_ms),
            observer: Some(std::sync::Arc::new(mediamesh_server::metrics::WorkerMetrics::new(
                &registry,
            ))),
        },
        worker_stop.clone(),
    ));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = mediamesh_server::metrics::Readiness::new();
    let health = {
        let bus = bus.clone();
        let blob = blob.clone();
        mediamesh_server::spawn_health_with(
            reporter,
            SERVICES,
            vec![
                (
                    "nats",
                    check(move || {
                        let bus = bus.clone();
                        async move { bus.is_connected() }
                    }),
                ),
                (
                    "blob",
                    check(move || {
                        let blob = blob.clone();
                        async move { blob.size("health").await.is_ok() }
                    }),
                ),
            ],
            Duration::from_millis(config.health_interval_ms),
            shutdown.clone(),
            readiness.clone(),
        )
    };

    let api = api::MediaApi::new(blob, config.clone());
    mediamesh_server::metrics::serve_metrics(config.metrics_addr, registry.clone(), readiness, shutdown.clone())
        .await?;
    let incoming = mediamesh_server::bind(config.listen_addr).await?;
    tracing::info!(addr = %config.listen_addr, concurrency = config.concurrency(), "media service listening");
    let server = tonic::transport::Server::builder()
        .trace_fn(mediamesh_telemetry::grpc_server_span)
        .layer(mediamesh_server::auth::AuthLayer::new(config.auth.internal()?))
        .add_service(health_service)
        .add_service(mediamesh_server::reflection()?)
        .add_service(MediaServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled());
    let result = server.await;
    // Stop taking jobs, let the ones under way finish.
    worker_stop.cancel();
    let grace = Duration::from_millis(config.grace_ms);
    if tokio::time::timeout(grace, worker).await.is_err() {
        tracing::warn!("jobs still running after the grace period; JetStream will redeliver them");
    }
    let _ = health.await;
    result?;
    Ok(())
}
