//! Ingest, the front door: streams uploads into the blob store with a size cap and sha256,
//! sniffs and validates the content, records the media and has the scheduler commit its
//! pipeline's jobs. Serves `IngestService`, and `JobService` by forwarding to the scheduler so
//! that clients need one address.

mod admin;
mod api;
mod auth;
mod config;
mod pipeline;
mod proxy;
mod quota;
mod upload;

use std::time::Duration;

pub use admin::check_tenant;
pub use auth::{NewKey, new_api_key};
pub use config::{IngestConfig, QuotaArgs};
use mediamesh_blob::Blob;
use mediamesh_proto::v1::admin_service_server::AdminServiceServer;
use mediamesh_proto::v1::inference_service_server::InferenceServiceServer;
use mediamesh_proto::v1::ingest_service_server::IngestServiceServer;
use mediamesh_proto::v1::job_service_server::JobServiceServer;
use mediamesh_proto::v1::media_service_server::MediaServiceServer;
use mediamesh_server::check;
use mediamesh_store::Store;
pub use pipeline::Pipelines;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] mediamesh_store::Error),
    #[error(transparent)]
    Blob(#[from] mediamesh_blob::Error),
    #[error(transparent)]
    Server(#[from] mediamesh_server::Error),
    #[error("grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid scheduler address {0:?}")]
    SchedulerAddr(String),
    #[error("{0}")]
    Config(String),
}

const SERVICES: &[&str] = &[
    "mediamesh.v1.IngestService",
    "mediamesh.v1.JobService",
    "mediamesh.v1.InferenceService",
    "mediamesh.v1.MediaService",
    "mediamesh.v1.AdminService",
];

/// Request metadata (headers) in bytes, at most.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;
/// Messages of the services that carry no file, at most.
const SMALL_MESSAGE_BYTES: usize = 1024 * 1024;

/// Runs ingest until `shutdown`; uploads under way finish before it returns.
pub async fn serve(config: IngestConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let registry = mediamesh_server::metrics::Registry::new();
    let pipelines = Pipelines::parse(&config.pipelines).map_err(Error::Config)?;
    let ai_kinds = ai_kinds(&config.providers).map_err(Error::Config)?;
    let store = Store::connect_lazy(&config.database_url, config.db_pool_size)?;
    store.migrate_when_ready(Duration::from_secs(60)).await?;
    let blob = Blob::from_url(&config.blob_url)?;
    // Everything ingest calls behind it gets the internal token.
    let credentials = config.auth.credentials();
    if config.auth.internal_token.is_none() && config.auth.auth == mediamesh_server::auth::AuthMode::On {
        return Err(Error::Config(
            "MM_INTERNAL_TOKEN is not set: give every service the same secret (or MM_AUTH=off in development)"
                .to_owned(),
        ));
    }
    let scheduler = credentials.channel(
        tonic::transport::Endpoint::from_shared(config.scheduler_addr.clone())
            .map_err(|_| Error::SchedulerAddr(config.scheduler_addr.clone()))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    );

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = mediamesh_server::metrics::Readiness::new();
    let health = {
        let store = store.clone();
        let blob = blob.clone();
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

    let inference = credentials.channel(
        tonic::transport::Endpoint::from_shared(config.inference_addr.clone())
            .map_err(|_| Error::Config(format!("MM_INFERENCE_ADDR {:?} is not a URL", config.inference_addr)))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    let media = credentials.channel(
        tonic::transport::Endpoint::from_shared(config.media_addr.clone())
            .map_err(|_| Error::Config(format!("MM_MEDIA_ADDR {:?} is not a URL", config.media_addr)))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    let quotas = quota::QuotaBook::new(config.quotas.quotas(), store.clone());
    let public_auth = auth::PublicAuth::new(config.auth.auth, config.admin_token.clone(), store.clone());
    let api = api::IngestApi::new(
        store.clone(),
        blob,
        scheduler.clone(),
        config.clone(),
        pipelines,
        ai_kinds,
        quotas.clone(),
    )
    .with_metrics(&registry);
    let proxy = proxy::JobProxy::new(scheduler, shutdown.clone());
    let inference_proxy = proxy::InferenceProxy::new(inference);
    let media_proxy = proxy::MediaProxy::new(media, store.clone());
    let admin = admin::AdminApi::new(store.clone(), public_auth.clone(), quotas);
    mediamesh_server::metrics::serve_metrics(config.metrics_addr, registry.clone(), readiness, shutdown.clone())
        .await?;
    let incoming = mediamesh_server::bind(config.listen_addr).await?;
    tracing::info!(addr = %config.listen_addr, "ingest listening");
    let max_message = config.max_message_bytes();
    tonic::transport::Server::builder()
        .trace_fn(mediamesh_telemetry::grpc_server_span)
        // Request headers (metadata) beyond this are refused before any service sees them.
        .http2_max_header_list_size(Some(MAX_HEADER_BYTES))
        .layer(mediamesh_server::auth::AuthLayer::new(public_auth))
        .add_service(health_service)
        .add_service(mediamesh_server::reflection()?)
        .add_service(IngestServiceServer::new(api).max_decoding_message_size(max_message))
        .add_service(JobServiceServer::new(proxy).max_decoding_message_size(SMALL_MESSAGE_BYTES))
        .add_service(
            InferenceServiceServer::new(inference_proxy)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .add_service(MediaServiceServer::new(media_proxy).max_decoding_message_size(max_message))
        .add_service(AdminServiceServer::new(admin).max_decoding_message_size(SMALL_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    let _ = health.await;
    store.close().await;
    Ok(())
}

/// The `inference.*` kinds the configured providers serve; an unreadable provider
/// configuration stops the service.
pub fn ai_kinds(
    providers: &mediamesh_gateway::ProviderArgs,
) -> Result<std::collections::HashSet<mediamesh_core::JobKind>, String> {
    let tasks = providers.tasks().map_err(|e| e.message)?;
    Ok(tasks
        .into_iter()
        .filter_map(mediamesh_gateway::Task::job_kind)
        .collect())
}
