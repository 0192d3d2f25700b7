//! Tenants' quotas: the defaults from configuration, each tenant's overrides from
//! `auth.tenants`, and the token buckets that rate-limit submits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mediamesh_core::{Error, ErrorCode};
use mediamesh_proto::v1 as pb;
use mediamesh_store::Store;
use serde::{Deserialize, Serialize};

/// How long a tenant's quotas are used without reading them again (a change through this
/// ingest applies at once).
const QUOTA_CACHE_TTL: Duration = Duration::from_secs(5);

/// One tenant's limits; 0 is no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quotas {
    pub jobs_per_hour: u64,
    pub jobs_per_day: u64,
    pub upload_bytes: u64,
    pub payload_bytes: u64,
    pub stored_bytes: u64,
    pub running_jobs: u64,
    pub submits_per_second: f64,
    pub submit_burst: u64,
}

/// The overrides stored for a tenant (absent: the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submits_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_burst: Option<u64>,
}

pub const QUOTA_NAMES: [&str; 8] = [
    "jobs_per_hour",
    "jobs_per_day",
    "upload_bytes",
    "payload_bytes",
    "stored_bytes",
    "running_jobs",
    "submits_per_second",
    "submit_burst",
];

impl Quotas {
    pub fn with(self, o: &Overrides) -> Self {
        Self {
            jobs_per_hour: o.jobs_per_hour.unwrap_or(self.jobs_per_hour),
            jobs_per_day: o.jobs_per_day.unwrap_or(self.jobs_per_day),
            upload_bytes: o.upload_bytes.unwrap_or(self.upload_bytes),
            payload_bytes: o.payload_bytes.unwrap_or(self.payload_bytes),
            stored_bytes: o.stored_bytes.unwrap_or(self.stored_bytes),
            running_jobs: o.running_jobs.unwrap_or(self.running_jobs),
            submits_per_second: o.submits_per_second.unwrap_or(self.submits_per_second),
            submit_burst: o.submit_burst.unwrap_or(self.submit_burst),
        }
    }

    pub fn to_proto(self) -> pb::Quotas {
        pb::Quotas {
            jobs_per_hour: Some(self.jobs_per_hour),
            jobs_per_day: Some(self.jobs_per_day),
            upload_bytes: Some(self.upload_bytes),
            payload_bytes: Some(self.payload_bytes),
            stored_bytes: Some(self.stored_bytes),
            running_jobs: Some(self.running_jobs),
            submits_per_second: Some(self.submits_per_second),
            submit_burst: Some(self.submit_burst),
        }
    }

    /// What the scheduler enforces when it commits the tenant's jobs.
    pub fn job_quota(self) -> pb::JobQuota {
        pb::JobQuota {
            jobs_per_hour: self.jobs_per_hour,
            jobs_per_day: self.jobs_per_day,
            running_jobs: self.running_jobs,
        }
    }
}

impl Overrides {
    pub fn to_proto(&self) -> pb::Quotas {
        pb::Quotas {
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

    /// These overrides with the fields of `set` changed and those named in `reset` removed.
    pub fn apply(mut self, set: &pb::Quotas, reset: &[String]) -> Result<Self, Error> {
        for name in reset {
            match name.as_str() {
                "jobs_per_hour" => self.jobs_per_hour = None,
                "jobs_per_day" => self.jobs_per_day = None,
                "upload_bytes" => self.upload_bytes = None,
                "payload_bytes" => self.payload_bytes = None,
                "stored_bytes" => self.stored_bytes = None,
                "running_jobs" => self.running_jobs = None,
                "submits_per_second" => self.submits_per_second = None,
                "submit_burst" => self.submit_burst = None,
                other => {
                    return Err(Error::bad_input(format!(
                        "unknown quota {other:?}; the quotas are {}",
                        QUOTA_NAMES.join(", ")
                    )));
                }
            }
        }
        if let Some(rate) = set.submits_per_second
            && !(rate.is_finite() && rate >= 0.0)
        {
            return Err(Error::bad_input("submits_per_second must be a number, 0 or more"));
        }
        if set.running_jobs.is_some_and(|n| n > i32::MAX as u64) {
            return Err(Error::bad_input("running_jobs is too large"));
        }
        self.jobs_per_hour = set.jobs_per_hour.or(self.jobs_per_hour);
        self.jobs_per_day = set.jobs_per_day.or(self.jobs_per_day);
        self.upload_bytes = set.upload_bytes.or(self.upload_bytes);
        self.payload_bytes = set.payload_bytes.or(self.payload_bytes);
        self.stored_bytes = set.stored_bytes.or(self.stored_bytes);
        self.running_jobs = set.running_jobs.or(self.running_jobs);
        self.submits_per_second = set.submits_per_second.or(self.submits_per_second);
        self.submit_burst = set.submit_burst.or(self.submit_burst);
        Ok(self)
    }
}

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Quotas by tenant, and the submit buckets of this ingest.
#[derive(Clone)]
pub struct QuotaBook {
    defaults: Quotas,
    store: Store,
    cache: Arc<Mutex<HashMap<String, (Quotas, Instant)>>>,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl QuotaBook {
    pub fn new(defaults: Quotas, store: Store) -> Self {
        Self {
            defaults,
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn defaults(&self) -> Quotas {
        self.defaults
    }

    /// The tenant's stored overrides.
    pub async fn overrides(&self, tenant: &str) -> Result<Overrides, Error> {
        let value = self.store.tenant_quotas(tenant).await?;
        serde_json::from_value(value).map_err(|e| {
            tracing::error!(tenant, error = %e, "unreadable quota overrides");
            Error::internal("the tenant's quota overrides are unreadable")
        })
    }

    /// The tenant's effective quotas.
    pub async fn of(&self, tenant: &str) -> Result<Quotas, Error> {
        if let Ok(cache) = self.cache.lock()
            && let Some((quotas, at)) = cache.get(tenant)
            && at.elapsed() < QUOTA_CACHE_TTL
        {
            return Ok(*quotas);
        }
        let quotas = self.defaults.with(&self.overrides(tenant).await?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(tenant.to_owned(), (quotas, Instant::now()));
        }
        Ok(quotas)
    }

    /// Stores new overrides and uses them at once.
    pub async fn set(&self, tenant: &str, overrides: &Overrides) -> Result<Quotas, Error> {
        let value = serde_json::to_value(overrides).map_err(|e| Error::internal(e.to_string()))?;
        self.store.set_tenant_quotas(tenant, &value).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(tenant);
        }
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.remove(tenant);
        }
        Ok(self.defaults.with(overrides))
    }

    /// Takes one submit token of the tenant's bucket, or says how long to wait for one.
    pub fn take_submit(&self, tenant: &str, quotas: &Quotas) -> Result<(), Error> {
        let rate = quotas.submits_per_second;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = quotas.submit_burst.max(1) as f64;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets
            .entry(tenant.to_owned())
            .or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / rate;
        Err(Error::new(
            ErrorCode::RateLimited,
            format!(
                "tenant {tenant:?} is over its submit rate ({rate} calls a second, bursts of {}): retry in {wait:.2} s",
                burst as u64
            ),
        )
        .retry_after(wait))
    }
}

/// The error for a size quota (waiting does not help, so no retry-after).
pub fn too_big(tenant: &str, quota: &str, limit: u64, what: &str) -> Error {
    Error::new(
        ErrorCode::QuotaExceeded,
        format!("{what} is over tenant {tenant:?}'s {quota} quota of {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(rate: f64, burst: u64) -> Quotas {
        Quotas {
            jobs_per_hour: 0,
            jobs_per_day: 0,
            upload_bytes: 0,
            payload_bytes: 0,
            stored_bytes: 0,
            running_jobs: 0,
            submits_per_second: rate,
            submit_burst: burst,
        }
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let defaults = quotas(10.0, 20);
        let o = Overrides::default()
            .apply(
                &pb::Quotas {
                    submit_burst: Some(5),
                    ..Default::default()
                },
                &[],
            )
            .unwrap();
        let q = defaults.with(&o);
        assert_eq!(q.submit_burst, 5);
        assert_eq!(q.submits_per_second, 10.0);
        let o = o.apply(&pb::Quotas::default(), &["submit_burst".to_owned()]).unwrap();
        assert_eq!(defaults.with(&o), defaults);
        assert!(o.apply(&pb::Quotas::default(), &["nope".to_owned()]).is_err());
        let json = serde_json::to_value(&Overrides {
            jobs_per_hour: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"jobs_per_hour": 3}));
    }
}
