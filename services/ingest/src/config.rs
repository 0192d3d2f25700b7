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
    /// API keys and the internal token
    #[command(flatten)]
    pub auth: mediamesh_server::auth::AuthArgs,
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
    /// The media service's gRPC address (`MediaService` is forwarded to it)
    #[arg(long, env = "MM_MEDIA_ADDR", default_value = "http://127.0.0.1:50053")]
    pub media_addr: String,
    /// The AI providers: which `inference.*` pipeline jobs can exist
    #[command(flatten)]
    pub providers: mediamesh_gateway::ProviderArgs,
    /// The token for AdminService (API keys, quotas); unset: the admin API is off
    #[arg(long, env = "MM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<mediamesh_server::auth::Token>,
    /// Every tenant's quotas unless set for it (AdminService.SetQuotas, `meshctl quotas set`)
    #[command(flatten)]
    pub quotas: QuotaArgs,
}

/// The default quotas; 0 is no limit.
#[derive(Clone, Debug, clap::Args)]
pub struct QuotaArgs {
    /// New jobs per tenant in any hour
    #[arg(
        long = "quota-jobs-per-hour",
        env = "MM_QUOTA_JOBS_PER_HOUR",
        default_value_t = 100_000
    )]
    pub jobs_per_hour: u64,
    /// New jobs per tenant in any day
    #[arg(
        long = "quota-jobs-per-day",
        env = "MM_QUOTA_JOBS_PER_DAY",
        default_value_t = 1_000_000
    )]
    pub jobs_per_day: u64,
    /// Largest upload of a tenant, in bytes (never above MM_MAX_UPLOAD_BYTES)
    #[arg(long = "quota-upload-bytes", env = "MM_QUOTA_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub upload_bytes: u64,
    /// Largest payload_json of a job, in bytes
    #[arg(long = "quota-payload-bytes", env = "MM_QUOTA_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub payload_bytes: u64,
    /// Bytes of originals a tenant may keep
    #[arg(long = "quota-stored-bytes", env = "MM_QUOTA_STORED_BYTES", default_value_t = 100 * 1024 * 1024 * 1024)]
    pub stored_bytes: u64,
    /// Jobs of a tenant running at once (more wait QUEUED)
    #[arg(long = "quota-running-jobs", env = "MM_QUOTA_RUNNING_JOBS", default_value_t = 0)]
    pub running_jobs: u64,
    /// Upload and submit calls per second per tenant (token bucket refill)
    #[arg(
        long = "quota-submits-per-second",
        env = "MM_QUOTA_SUBMITS_PER_SECOND",
        default_value_t = 500.0
    )]
    pub submits_per_second: f64,
    /// Token bucket size: calls a tenant may make at once
    #[arg(long = "quota-submit-burst", env = "MM_QUOTA_SUBMIT_BURST", default_value_t = 1_000)]
    pub submit_burst: u64,
}

impl Default for QuotaArgs {
    fn default() -> Self {
        Self {
            jobs_per_hour: 100_000,
            jobs_per_day: 1_000_000,
            upload_bytes: 256 * 1024 * 1024,
            payload_bytes: 1024 * 1024,
            stored_bytes: 100 * 1024 * 1024 * 1024,
            running_jobs: 0,
            submits_per_second: 500.0,
            submit_burst: 1_000,
        }
    }
}

impl QuotaArgs {
    pub fn quotas(&self) -> crate::quota::Quotas {
        crate::quota::Quotas {
            jobs_per_hour: self.jobs_per_hour,
            jobs_per_day: self.jobs_per_day,
            upload_bytes: self.upload_bytes,
            payload_bytes: self.payload_bytes,
            stored_bytes: self.stored_bytes,
            running_jobs: self.running_jobs,
            submits_per_second: self.submits_per_second,
            submit_burst: self.submit_burst,
        }
    }
}

impl IngestConfig {
    pub fn new(listen_addr: SocketAddr, database_url: String, blob_url: String, scheduler_addr: String) -> Self {
        Self {
            listen_addr,
            metrics_addr: None,
            auth: mediamesh_server::auth::AuthArgs::default(),
            database_url,
            blob_url,
            scheduler_addr,
            max_upload_bytes: 256 * 1024 * 1024,
            max_pixels: 100_000_000,
            db_pool_size: 8,
            health_interval_ms: 1_000,
            pipelines: String::new(),
            inference_addr: "http://127.0.0.1:50054".to_owned(),
            media_addr: "http://127.0.0.1:50053".to_owned(),
            providers: mediamesh_gateway::ProviderArgs::default(),
            admin_token: None,
            quotas: QuotaArgs::default(),
        }
    }

    /// Largest single gRPC message: a chunk of an upload (clients send 1 MiB or less).
    pub fn max_message_bytes(&self) -> usize {
        8 * 1024 * 1024
    }
}
