//! The inference service. `InferenceService` is declared and served; its methods answer
//! UNIMPLEMENTED (with the stable code `UNSUPPORTED`) until the provider gateway lands.
//! Health, reflection, configuration and shutdown behave as in every other service.

use std::net::SocketAddr;
use std::time::Duration;

use mediamesh_bus::{Bus, BusConfig};
use mediamesh_core::Error as ApiError;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_server::{InferenceService, InferenceServiceServer};
use mediamesh_server::check;
use mediamesh_store::Store;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] mediamesh_store::Error),
    #[error(transparent)]
    Bus(#[from] mediamesh_bus::Error),
    #[error(transparent)]
    Server(#[from] mediamesh_server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Inference service settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct InferenceConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50054")]
    pub listen_addr: SocketAddr,
    /// PostgreSQL URL
    #[arg(long, env = "MM_DATABASE_URL")]
    pub database_url: String,
    /// NATS URL
    #[arg(long, env = "MM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How often health re-checks PostgreSQL and NATS
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
}

impl InferenceConfig {
    pub fn new(listen_addr: SocketAddr, database_url: String, nats_url: String) -> Self {
        Self {
            listen_addr,
            database_url,
            nats_url,
            health_interval_ms: 1_000,
        }
    }
}

const SERVICES: &[&str] = &["mediamesh.v1.InferenceService"];

pub async fn serve(config: InferenceConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let store = Store::connect_lazy(&config.database_url, 4)?;
    store.migrate_when_ready(Duration::from_secs(60)).await?;
    let bus = Bus::connect(&config.nats_url, "mediamesh-inference", BusConfig::default()).await?;
    bus.ensure_streams_when_ready(Duration::from_secs(60)).await?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = {
        let store = store.clone();
        let bus = bus.clone();
        mediamesh_server::spawn_health(
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
        )
    };
    let incoming = mediamesh_server::bind(config.listen_addr).await?;
    tracing::info!(addr = %config.listen_addr, "inference listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(mediamesh_server::reflection()?)
        .add_service(InferenceServiceServer::new(InferenceApi))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    let _ = health.await;
    store.close().await;
    Ok(())
}

#[derive(Clone, Copy)]
struct InferenceApi;

fn not_yet(method: &str) -> Status {
    ApiError::unsupported(format!("{method} is not available in this release")).into()
}

#[tonic::async_trait]
impl InferenceService for InferenceApi {
    async fn transcribe(&self, _: Request<pb::TranscribeRequest>) -> Result<Response<pb::TranscribeResponse>, Status> {
        Err(not_yet("Transcribe"))
    }

    async fn describe_image(
        &self,
        _: Request<pb::DescribeImageRequest>,
    ) -> Result<Response<pb::DescribeImageResponse>, Status> {
        Err(not_yet("DescribeImage"))
    }

    async fn enhance_image(
        &self,
        _: Request<pb::EnhanceImageRequest>,
    ) -> Result<Response<pb::EnhanceImageResponse>, Status> {
        Err(not_yet("EnhanceImage"))
    }

    async fn generate_text(
        &self,
        _: Request<pb::GenerateTextRequest>,
    ) -> Result<Response<pb::GenerateTextResponse>, Status> {
        Err(not_yet("GenerateText"))
    }

    async fn generate_image(
        &self,
        _: Request<pb::GenerateImageRequest>,
    ) -> Result<Response<pb::GenerateImageResponse>, Status> {
        Err(not_yet("GenerateImage"))
    }

    async fn extract(&self, _: Request<pb::ExtractRequest>) -> Result<Response<pb::ExtractResponse>, Status> {
        Err(not_yet("Extract"))
    }
}
