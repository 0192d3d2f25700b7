use std::net::SocketAddr;

/// Scheduler settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct SchedulerConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50052")]
    pub listen_addr: SocketAddr,
    /// PostgreSQL URL
    #[arg(long, env = "MM_DATABASE_URL")]
    pub database_url: String,
    /// NATS URL
    #[arg(long, env = "MM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Database connections
    #[arg(long, env = "MM_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Jobs of one queue dispatched to JetStream and not finished, at most
    #[arg(long, env = "MM_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: u32,
    /// First retry delay; doubles per attempt, with +-20% jitter
    #[arg(long, env = "MM_RETRY_BASE_MS", default_value_t = 2_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay
    #[arg(long, env = "MM_RETRY_CAP_MS", default_value_t = 300_000)]
    pub retry_cap_ms: u64,
    /// A dispatched job no worker started after this long is published again
    #[arg(long, env = "MM_REDISPATCH_AFTER_SECS", default_value_t = 120)]
    pub redispatch_after_secs: u64,
    /// How often the dispatcher looks for due jobs when nothing wakes it
    #[arg(long, env = "MM_DISPATCH_INTERVAL_MS", default_value_t = 250)]
    pub dispatch_interval_ms: u64,
    /// How often health re-checks PostgreSQL and NATS
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
}

impl SchedulerConfig {
    /// The defaults, listening on `listen_addr`.
    pub fn new(listen_addr: SocketAddr, database_url: String, nats_url: String) -> Self {
        Self {
            listen_addr,
            database_url,
            nats_url,
            db_pool_size: 16,
            max_in_flight: 256,
            retry_base_ms: 2_000,
            retry_cap_ms: 300_000,
            redispatch_after_secs: 120,
            dispatch_interval_ms: 250,
            health_interval_ms: 1_000,
        }
    }

    /// The delay before attempt `attempt + 1`, after `attempt` failed.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.retry_base_ms.saturating_mul(1u64 << exp).min(self.retry_cap_ms);
        let jitter = rand::random_range(0.8..1.2);
        std::time::Duration::from_millis((base as f64 * jitter) as u64)
    }
}
