use std::net::SocketAddr;
use std::path::PathBuf;

use mediamesh_gateway::ProviderArgs;

/// Inference service settings, from flags or `MM_*` variables. The provider settings
/// (`MM_OPENAI_API_KEY`, `MM_OPENAI_BASE_URL`, `MM_CONFIG`) are in [`ProviderArgs`].
#[derive(Clone, Debug, clap::Args)]
pub struct InferenceConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50054")]
    pub listen_addr: SocketAddr,
    /// Prometheus metrics, /livez and /readyz over HTTP (empty: off)
    #[arg(long, env = "MM_METRICS_ADDR", default_value = "0.0.0.0:9104", value_parser = mediamesh_server::metrics::parse_metrics_addr)]
    pub metrics_addr: ::std::option::Option<SocketAddr>,
    /// API keys and the internal token
    #[command(flatten)]
    pub auth: mediamesh_server::auth::AuthArgs,
    /// PostgreSQL URL
    #[arg(long, env = "MM_DATABASE_URL")]
    pub database_url: String,
    /// NATS URL
    #[arg(long, env = "MM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Replicas of the JetStream streams the service creates when they are missing (3 on a
    /// three-node NATS cluster; an existing stream keeps its own)
    #[arg(long, env = "MM_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// Blob store: file:///dir or s3://bucket
    #[arg(long, env = "MM_BLOB_URL")]
    pub blob_url: String,
    #[command(flatten)]
    pub providers: ProviderArgs,
    /// Inference jobs run at once (they mostly wait on the provider)
    #[arg(long, env = "MM_INFERENCE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// A job reports that it started only once it has run this long (0: before it runs); a
    /// shorter job reports once, when it ends, with its start time
    #[arg(long, env = "MM_START_REPORT_AFTER_MS", default_value_t = 50)]
    pub start_report_after_ms: u64,
    /// Default daily AI budget per tenant in USD (0: none); `inference.budgets` overrides it
    #[arg(long, env = "MM_AI_DAILY_BUDGET_USD", default_value_t = 0.0)]
    pub daily_budget_usd: f64,
    /// Default monthly AI budget per tenant in USD (0: none)
    #[arg(long, env = "MM_AI_MONTHLY_BUDGET_USD", default_value_t = 0.0)]
    pub monthly_budget_usd: f64,
    /// Reuse stored answers for the same content, model and prompt
    #[arg(long, env = "MM_AI_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cache: bool,
    /// How long JetStream waits for an ack or a heartbeat before it gives a job to another
    /// worker (set when the `inference` consumer is created)
    #[arg(long, env = "MM_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// Time given to jobs under way to finish on shutdown
    #[arg(long, env = "MM_GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,
    /// Where audio is split for providers with an upload limit
    #[arg(long, env = "MM_TMP_DIR")]
    pub tmp_dir: Option<PathBuf>,
    /// The ffmpeg program (splits long audio, extracts the sound of videos)
    #[arg(long, env = "MM_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
    /// The ffprobe program
    #[arg(long, env = "MM_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,
    /// How often health re-checks PostgreSQL and NATS
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
}

impl InferenceConfig {
    pub fn new(listen_addr: SocketAddr, database_url: String, nats_url: String, blob_url: String) -> Self {
        Self {
            listen_addr,
            metrics_addr: None,
            auth: mediamesh_server::auth::AuthArgs::default(),
            database_url,
            nats_url,
            stream_replicas: 1,
            blob_url,
            providers: ProviderArgs::default(),
            concurrency: 16,
            start_report_after_ms: 50,
            daily_budget_usd: 0.0,
            monthly_budget_usd: 0.0,
            cache: true,
            ack_wait_ms: 30_000,
            grace_ms: 30_000,
            tmp_dir: None,
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            health_interval_ms: 1_000,
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.tmp_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}
