use std::net::SocketAddr;

/// Ingest settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct IngestConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen_addr: SocketAddr,
    /// Prometheus metrics, /livez and /readyz over HTTP (empty: off)
    #[arg(long, env = "MM_METRICS_ADDR", default_value = "0.0.0.0:9101", value_parser = mediamesh_server::metrics::parse_metrics_addr)]
    pub metrics_addr: ::std::option::Option<SocketAddr>,
    /// PostgreSQL URL
    #[arg(long, env = "MM_DATABASE_URL")]
    pub database_url: String,
    /// Blob store: file:///dir or s3://bucket
    #[arg(long, env = "MM_BLOB_URL")]
    pub blob_url: String,
    /// The scheduler's gRPC address
    #[arg(long, env = "MM_SCHEDULER_ADDR", default_value = "http://127.0.0.1:50052")]
    pub scheduler_addr: String,
    /// Largest upload, in bytes
    #[arg(long, env = "MM_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest image, in pixels (refused from the header, before anything decodes it)
    #[arg(long, env = "MM_MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// Database connections
    #[arg(long, env = "MM_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// How often health re-checks PostgreSQL and the blob store
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
    /// Jobs per upload, JSON: {"image": [kinds], "audio": [..], "video": [..],
    /// "categories": {"name": {"image": [extra kinds], ..}}}; empty: the defaults
    #[arg(long, env = "MM_PIPELINES", default_value = "")]
    pub pipelines: String,
    /// The inference service's gRPC address (`InferenceService` is forwarded to it)
    #[arg(long, env = "MM_INFERENCE_ADDR", default_value = "http://127.0.0.1:50054")]
    pub inference_addr: String,
    /// The AI providers: which `inference.*` pipeline jobs can exist
    #[command(flatten)]
    pub providers: mediamesh_gateway::ProviderArgs,
}

impl IngestConfig {
    pub fn new(listen_addr: SocketAddr, database_url: String, blob_url: String, scheduler_addr: String) -> Self {
        Self {
            listen_addr,
            metrics_addr: None,
            database_url,
            blob_url,
            scheduler_addr,
            max_upload_bytes: 256 * 1024 * 1024,
            max_pixels: 100_000_000,
            db_pool_size: 8,
            health_interval_ms: 1_000,
            pipelines: String::new(),
            inference_addr: "http://127.0.0.1:50054".to_owned(),
            providers: mediamesh_gateway::ProviderArgs::default(),
        }
    }

    /// Largest single gRPC message: a chunk of an upload (clients send 1 MiB or less).
    pub fn max_message_bytes(&self) -> usize {
        8 * 1024 * 1024
    }
}
