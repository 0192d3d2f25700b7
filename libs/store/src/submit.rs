//! Submits: the jobs of many callers committed in one transaction (group commit), each
//! caller's all or none and within its tenant's job quotas. Quotas count jobs in buckets per
//! tenant (a minute's for the hour, an hour's for the day) updated in the same transaction, so
//! a check adds up at most 60 + 24 rows instead of counting the tenant's jobs.

use std::collections::{HashMap, HashSet};

use crate::jobs::{JobRow, NewJob, insert_jobs};
use crate::{Result, Store};

/// A tenant's job quotas as the scheduler enforces them (0: no limit).
#[derive(Clone, Copy, Debug, Default)]
pub struct JobQuota {
    pub jobs_per_hour: u64,
    pub jobs_per_day: u64,
    pub running_jobs: u64,
}

/// A job quota that refused a submit.
#[derive(Clone, Debug)]
pub struct QuotaHit {
    /// `jobs_per_hour` or `jobs_per_day`.
    pub quota: &'static str,
    pub limit: i64,
    /// Jobs already in the window.
    pub used: i64,
    /// When enough jobs will have left the window for this submit to fit.
    pub retry_after_secs: f64,
}

/// One caller's jobs, all of one tenant, to be stored all or none.
#[derive(Clone, Debug)]
pub struct Submit {
    pub tenant: String,
    pub jobs: Vec<NewJob>,
    /// The tenant's job quotas. None: no limit, and the tenant's running-jobs limit is left
    /// as it is.
    pub quota: Option<JobQuota>,
}

/// What became of a submit.
#[derive(Clone, Debug)]
pub enum Submitted {
    /// Its jobs in order, each with whether it is new (false: its idempotency key names a job
    /// the tenant submitted before, which is returned instead).
    Created(Vec<(JobRow, bool)>),
    /// A quota refused it; nothing of it was stored.
    Refused(QuotaHit),
}

/// A quota window: its name, its length in seconds and the span of its buckets.
struct Window {
    quota: &'static str,
    secs: f64,
    span: &'static str,
}

const HOUR: Window = Window {
    quota: "jobs_per_hour",
    secs: 3600.0,
    span: "minute",
};
const DAY: Window = Window {
    quota: "jobs_per_day",
    secs: 86_400.0,
    span: "hour",
};

impl Store {
    /// Commits the jobs of `submits` in one transaction (one insert for all of them) and
    /// answers each in order. A submit that would take its tenant over a jobs-per-hour or
    /// jobs-per-day quota stores nothing and is refused; the others are stored. Submits of
    /// one tenant serialize on the tenant's current buckets (row locks taken first, in tenant
    /// order), so two schedulers never both let the last job of a quota in.
    ///
    /// An error (a dependency that does not exist, the database) fails every submit of the
    /// call: the caller may try them one by one to find the one that fails.
    pub async fn submit(&self, submits: &[Submit]) -> Result<Vec<Submitted>> {
        if submits.iter().all(|s| s.jobs.is_empty()) {
            return Ok(submits.iter().map(|_| Submitted::Created(Vec::new())).collect());
        }
        let mut tx = self.pool().begin().await?;
        let mut tenants: Vec<&str> = submits.iter().map(|s| s.tenant.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        // Lock the tenants' current buckets (made if missing), then read the windows: the
        // reads see whatever a submit that held the locks before committed.
        sqlx::query(
            "INSERT INTO scheduler.submit_counts (tenant, span, start, jobs) \
             SELECT t.tenant, s.span, date_trunc(s.span, now()), 0 \
             FROM unnest($1::text[]) AS t(tenant) CROSS JOIN (VALUES ('hour'), ('minute')) AS s(span) \
             ORDER BY 1, 2 \
             ON CONFLICT (tenant, span, start) DO UPDATE SET jobs = scheduler.submit_counts.jobs",
        )
        .bind(&tenants)
        .execute(&mut *tx)
        .await?;
        let used: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT tenant, \
               coalesce(sum(jobs) FILTER (WHERE span = 'minute' AND start > now() - interval '1 hour'), 0)::int8, \
               coalesce(sum(jobs) FILTER (WHERE span = 'hour' AND start > now() - interval '1 day'), 0)::int8 \
             FROM scheduler.submit_counts WHERE tenant = ANY($1) GROUP BY tenant",
        )
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await?;
        let mut used: HashMap<String, (i64, i64)> = used.into_iter().map(|(t, h, d)| (t, (h, d))).collect();

        // Idempotency keys already taken: those jobs are not new and count for nothing.
        let keyed: Vec<(&str, &str)> = submits
            .iter()
            .flat_map(|s| s.jobs.iter())
            .filter_map(|j| Some((j.tenant.as_str(), j.idempotency_key.as_deref()?)))
            .collect();
        let mut taken: HashSet<(String, String)> = if keyed.is_empty() {
            HashSet::new()
        } else {
            let (key_tenants, keys): (Vec<&str>, Vec<&str>) = keyed.into_iter().unzip();
            sqlx::query_as::<_, (String, String)>(
                "SELECT j.tenant, j.idempotency_key FROM scheduler.jobs j \
                 JOIN unnest($1::text[], $2::text[]) AS k(tenant, key) \
                   ON j.tenant = k.tenant AND j.idempotency_key = k.key",
            )
            .bind(&key_tenants)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };

        // Decide, in order: each submit fits its tenant's quotas with those before it, or is
        // refused whole.
        let mut decisions: Vec<Option<QuotaHit>> = Vec::with_capacity(submits.len());
        let mut added: HashMap<&str, i64> = HashMap::new();
        for submit in submits {
            let mut keys = HashSet::new();
            let mut new = 0i64;
            for job in &submit.jobs {
                match &job.idempotency_key {
                    Some(key) => {
                        let key = (job.tenant.clone(), key.clone());
                        if !taken.contains(&key) && keys.insert(key) {
                            new += 1;
                        }
                    }
                    None => new += 1,
                }
            }
            let (hour_used, day_used) = used.get(&submit.tenant).copied().unwrap_or_default();
            let quota = submit.quota.unwrap_or_default();
            let mut hit = None;
            if new > 0 {
                for (window, limit, in_window) in [
                    (&HOUR, quota.jobs_per_hour, hour_used),
                    (&DAY, quota.jobs_per_day, day_used),
                ] {
                    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                    if limit > 0 && in_window + new > limit {
                        let retry_after_secs =
                            retry_after(&mut tx, &submit.tenant, window, in_window + new - limit).await?;
                        hit = Some(QuotaHit {
                            quota: window.quota,
                            limit,
                            used: in_window,
                            retry_after_secs,
                        });
                        break;
                    }
                }
            }
            if hit.is_none() {
                let entry = used.entry(submit.tenant.clone()).or_default();
                entry.0 += new;
                entry.1 += new;
                *added.entry(submit.tenant.as_str()).or_default() += new;
                taken.extend(keys);
            }
            decisions.push(hit);
        }

        // One insert for the jobs of every submit let in.
        let accepted: Vec<&NewJob> = submits
            .iter()
            .zip(&decisions)
            .filter(|(_, hit)| hit.is_none())
            .flat_map(|(s, _)| s.jobs.iter())
            .collect();
        let mut rows = insert_jobs(&mut tx, &accepted).await?.into_iter();

        let (count_tenants, counts): (Vec<&str>, Vec<i64>) = added.into_iter().filter(|(_, n)| *n > 0).unzip();
        if !count_tenants.is_empty() {
            sqlx::query(
                "UPDATE scheduler.submit_counts c SET jobs = c.jobs + n.jobs \
                 FROM unnest($1::text[], $2::int8[]) AS n(tenant, jobs) \
                 WHERE c.tenant = n.tenant AND c.start = date_trunc(c.span, now())",
            )
            .bind(&count_tenants)
            .bind(&counts)
            .execute(&mut *tx)
            .await?;
        }
        // The running-jobs limit the dispatcher applies, as the latest quota says (0: none).
        let limits: HashMap<&str, i32> = submits
            .iter()
            .filter_map(|s| {
                let running = s.quota?.running_jobs;
                Some((s.tenant.as_str(), i32::try_from(running).unwrap_or(i32::MAX)))
            })
            .collect();
        if !limits.is_empty() {
            let (limit_tenants, limits): (Vec<&str>, Vec<i32>) = limits.into_iter().unzip();
            sqlx::query(
                "WITH l AS (SELECT * FROM unnest($1::text[], $2::int4[]) AS l(tenant, running_jobs)), \
                 unlimited AS ( \
                   DELETE FROM scheduler.tenant_limits t USING l WHERE t.tenant = l.tenant AND l.running_jobs = 0) \
                 INSERT INTO scheduler.tenant_limits (tenant, running_jobs) \
                 SELECT tenant, running_jobs FROM l WHERE running_jobs > 0 \
                 ON CONFLICT (tenant) DO UPDATE SET running_jobs = EXCLUDED.running_jobs, updated_at = now() \
                 WHERE scheduler.tenant_limits.running_jobs <> EXCLUDED.running_jobs",
            )
            .bind(&limit_tenants)
            .bind(&limits)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        Ok(submits
            .iter()
            .zip(decisions)
            .map(|(submit, hit)| match hit {
                Some(hit) => Submitted::Refused(hit),
                None => Submitted::Created(rows.by_ref().take(submit.jobs.len()).collect()),
            })
            .collect())
    }

    /// Buckets of job counts older than a day, which no quota window reaches any more.
    pub async fn prune_submit_counts(&self) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM scheduler.submit_counts WHERE start < now() - interval '25 hours'")
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}

/// How long until `over` jobs have left the tenant's window (its oldest buckets first): when a
/// refused submit would fit. The whole window when it never would.
async fn retry_after(tx: &mut sqlx::PgConnection, tenant: &str, window: &Window, over: i64) -> Result<f64> {
    let buckets: Vec<(f64, i64)> = sqlx::query_as(
        "SELECT extract(epoch FROM start + make_interval(secs => $3) - now())::float8, jobs \
         FROM scheduler.submit_counts \
         WHERE tenant = $1 AND span = $2 AND start > now() - make_interval(secs => $3) AND jobs > 0 \
         ORDER BY start",
    )
    .bind(tenant)
    .bind(window.span)
    .bind(window.secs)
    .fetch_all(&mut *tx)
    .await?;
    let mut left = 0;
    for (expires_in, jobs) in buckets {
        left += jobs;
        if left >= over {
            return Ok(expires_in.max(1.0));
        }
    }
    Ok(window.secs)
}
