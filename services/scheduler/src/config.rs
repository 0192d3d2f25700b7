use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mediamesh_core::JobKind;

/// Scheduler settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct SchedulerConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50052")]
    pub listen_addr: SocketAddr,
    /// Prometheus metrics, /livez and /readyz over HTTP (empty: off)
    #[arg(long, env = "MM_METRICS_ADDR", default_value = "0.0.0.0:9102", value_parser = mediamesh_server::metrics::parse_metrics_addr)]
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
    /// Database connections
    #[arg(long, env = "MM_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Jobs of one queue dispatched to JetStream and not finished, at most
    #[arg(long, env = "MM_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: u32,
    /// Jobs of one queue waiting in JetStream for a worker, at most: the dispatcher keeps the
    /// rest in PostgreSQL, where priority and fairness still apply
    #[arg(long, env = "MM_PREFETCH", default_value_t = 32)]
    pub prefetch: u32,
    /// Jobs of one tenant in one queue dispatched and not finished, at most (0: no cap)
    #[arg(long, env = "MM_MAX_IN_FLIGHT_PER_TENANT", default_value_t = 0)]
    pub max_in_flight_per_tenant: u32,
    /// A due job gains one priority level per this many seconds waited (0: no aging)
    #[arg(long, env = "MM_PRIORITY_AGING_SECS", default_value_t = 60)]
    pub priority_aging_secs: u64,
    /// Attempt budget of a job whose spec and kind defaults name none
    #[arg(long, env = "MM_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    pub default_max_attempts: u32,
    /// Per-attempt timeout of a job whose spec and kind defaults name none
    #[arg(long, env = "MM_DEFAULT_TIMEOUT_MS", default_value_t = 300_000)]
    pub default_timeout_ms: u64,
    /// Per-kind defaults as JSON, e.g. {"media.thumbnails":{"max_attempts":5,"timeout_ms":60000,"priority":7}}
    #[arg(long, env = "MM_JOB_DEFAULTS", default_value = "{}", value_parser = parse_job_defaults)]
    pub job_defaults: JobDefaults,
    /// The AI providers: which `inference.*` kinds are accepted
    #[command(flatten)]
    pub providers: mediamesh_gateway::ProviderArgs,
    /// Accept the test.sleep kind (fault tests only; never in production)
    #[arg(long, env = "MM_ENABLE_TEST_KINDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_test_kinds: bool,
    /// Accept the noop kind (benchmarks: what the queue itself costs)
    #[arg(long, env = "MM_ENABLE_NOOP", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_noop: bool,
    /// SUCCEEDED jobs kept per tenant; older ones are deleted with their outputs
    #[arg(long, env = "MM_RETAIN_SUCCEEDED", default_value_t = 10_000)]
    pub retain_succeeded: u32,
    /// FAILED jobs kept per tenant
    #[arg(long, env = "MM_RETAIN_FAILED", default_value_t = 10_000)]
    pub retain_failed: u32,
    /// CANCELLED jobs kept per tenant
    #[arg(long, env = "MM_RETAIN_CANCELLED", default_value_t = 10_000)]
    pub retain_cancelled: u32,
    /// Finished jobs older than this are deleted with their outputs, whatever their count
    #[arg(long, env = "MM_RETAIN_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub retain_max_age_secs: u64,
    /// How often retention runs
    #[arg(long, env = "MM_RETENTION_INTERVAL_MS", default_value_t = 60_000)]
    pub retention_interval_ms: u64,
    /// Blob store the outputs of pruned jobs are deleted from (file:///dir or s3://bucket);
    /// empty: outputs are left in place
    #[arg(long, env = "MM_BLOB_URL", default_value = "")]
    pub blob_url: String,
    /// First retry delay; doubles per attempt, with +-20% jitter
    #[arg(long, env = "MM_RETRY_BASE_MS", default_value_t = 2_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay
    #[arg(long, env = "MM_RETRY_CAP_MS", default_value_t = 300_000)]
    pub retry_cap_ms: u64,
    /// A dispatched job no worker started after this long is published again
    #[arg(long, env = "MM_REDISPATCH_AFTER_SECS", default_value_t = 120)]
    pub redispatch_after_secs: u64,
    /// How often health re-checks PostgreSQL and NATS
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
}

impl SchedulerConfig {
    /// The defaults, listening on `listen_addr`.
    pub fn new(listen_addr: SocketAddr, database_url: String, nats_url: String) -> Self {
        Self {
            listen_addr,
            metrics_addr: None,
            auth: mediamesh_server::auth::AuthArgs::default(),
            database_url,
            nats_url,
            stream_replicas: 1,
            db_pool_size: 16,
            max_in_flight: 256,
            prefetch: 32,
            max_in_flight_per_tenant: 0,
            priority_aging_secs: 60,
            default_max_attempts: 3,
            default_timeout_ms: 300_000,
            job_defaults: JobDefaults::default(),
            providers: mediamesh_gateway::ProviderArgs::default(),
            enable_test_kinds: false,
            enable_noop: false,
            retain_succeeded: 10_000,
            retain_failed: 10_000,
            retain_cancelled: 10_000,
            retain_max_age_secs: 7 * 24 * 3600,
            retention_interval_ms: 60_000,
            blob_url: String::new(),
            retry_base_ms: 2_000,
            retry_cap_ms: 300_000,
            redispatch_after_secs: 120,
            health_interval_ms: 1_000,
        }
    }

    /// The delay before attempt `attempt + 1`, after `attempt` failed: base * 2^(attempt-1),
    /// at most the cap, times a jitter of +-20%.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.retry_base_ms.saturating_mul(1u64 << exp).min(self.retry_cap_ms);
        let jitter = rand::random_range(0.8..1.2);
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    /// What a spec that leaves a field at 0 gets for `kind`: the kind's configured default,
    /// else the service-wide one.
    pub fn kind_defaults(&self, kind: JobKind) -> KindDefaults {
        let configured = self.job_defaults.0.get(kind.as_str()).copied().unwrap_or_default();
        KindDefaults {
            max_attempts: configured.max_attempts.or(Some(self.default_max_attempts)),
            timeout_ms: configured.timeout_ms.or(Some(self.default_timeout_ms)),
            priority: configured.priority.or(Some(mediamesh_core::DEFAULT_PRIORITY)),
        }
    }
}

/// Defaults of one job kind; a field left out falls back to the service-wide default.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindDefaults {
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub priority: Option<u32>,
}

/// `MM_JOB_DEFAULTS`: kind name -> defaults.
#[derive(Clone, Debug, Default)]
pub struct JobDefaults(pub BTreeMap<String, KindDefaults>);

fn parse_job_defaults(text: &str) -> Result<JobDefaults, String> {
    let map: BTreeMap<String, KindDefaults> =
        serde_json::from_str(text).map_err(|e| format!("MM_JOB_DEFAULTS is not valid: {e}"))?;
    for (kind, defaults) in &map {
        JobKind::parse(kind).map_err(|e| format!("MM_JOB_DEFAULTS: {}", e.message))?;
        if defaults.max_attempts.is_some_and(|n| !(1..=100).contains(&n)) {
            return Err(format!("MM_JOB_DEFAULTS: {kind}.max_attempts is outside 1..=100"));
        }
        if defaults.priority.is_some_and(|n| !(1..=10).contains(&n)) {
            return Err(format!("MM_JOB_DEFAULTS: {kind}.priority is outside 1..=10"));
        }
        if defaults.timeout_ms.is_some_and(|n| n == 0 || n > 86_400_000) {
            return Err(format!("MM_JOB_DEFAULTS: {kind}.timeout_ms is outside 1..=86400000"));
        }
    }
    Ok(JobDefaults(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_defaults_parse_and_reject_nonsense() {
        let parsed = parse_job_defaults(r#"{"media.thumbnails":{"max_attempts":5,"timeout_ms":1000}}"#).unwrap();
        assert_eq!(parsed.0["media.thumbnails"].max_attempts, Some(5));
        assert!(parse_job_defaults(r#"{"media.nope":{}}"#).is_err());
        assert!(parse_job_defaults(r#"{"media.probe":{"max_attempts":0}}"#).is_err());
        assert!(parse_job_defaults(r#"{"media.probe":{"retries":2}}"#).is_err());
        assert!(parse_job_defaults("[").is_err());
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let mut config = SchedulerConfig::new("127.0.0.1:0".parse().unwrap(), String::new(), String::new());
        config.retry_base_ms = 2_000;
        config.retry_cap_ms = 10_000;
        for (attempt, nominal) in [(1, 2_000u64), (2, 4_000), (3, 8_000), (4, 10_000), (9, 10_000)] {
            let d = config.backoff(attempt).as_millis() as u64;
            assert!(
                d >= nominal * 8 / 10 && d <= nominal * 12 / 10,
                "attempt {attempt}: {d} ms"
            );
        }
    }
}
