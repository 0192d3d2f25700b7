use std::net::SocketAddr;

/// Media service settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct MediaConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50053")]
    pub listen_addr: SocketAddr,
    /// NATS URL
    #[arg(long, env = "MM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Blob store: file:///dir or s3://bucket
    #[arg(long, env = "MM_BLOB_URL")]
    pub blob_url: String,
    /// Jobs run at once (0: one per CPU core)
    #[arg(long, env = "MM_WORKER_CONCURRENCY", default_value_t = 0)]
    pub worker_concurrency: usize,
    /// Largest image, in pixels, that a job will decode
    #[arg(long, env = "MM_MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// How long JetStream waits for an ack or a heartbeat before it gives a job to another
    /// worker (set when the `media` consumer is created)
    #[arg(long, env = "MM_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// Run the test.sleep kind (fault tests only; never in production)
    #[arg(long, env = "MM_ENABLE_TEST_KINDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_test_kinds: bool,
    /// Time given to jobs under way to finish on shutdown
    #[arg(long, env = "MM_GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,
    /// How often health re-checks NATS and the blob store
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
}

impl MediaConfig {
    pub fn new(listen_addr: SocketAddr, nats_url: String, blob_url: String) -> Self {
        Self {
            listen_addr,
            nats_url,
            blob_url,
            worker_concurrency: 0,
            max_pixels: 100_000_000,
            ack_wait_ms: 30_000,
            enable_test_kinds: false,
            grace_ms: 30_000,
            health_interval_ms: 1_000,
        }
    }

    pub fn concurrency(&self) -> usize {
        if self.worker_concurrency > 0 {
            self.worker_concurrency
        } else {
            std::thread::available_parallelism().map_or(2, usize::from)
        }
    }

    pub fn limits(&self) -> crate::image_ops::Limits {
        crate::image_ops::Limits {
            max_pixels: self.max_pixels,
            ..Default::default()
        }
    }
}
