//! Budgets and `ai_metrics`: the gateway asks before every provider call whether the tenant
//! may spend, and reports every call (retries included) after it.

use chrono::{Datelike, TimeZone, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use mediamesh_gateway::{CallRecord, Ledger};
use mediamesh_server::metrics::{Counter, Registry};
use mediamesh_store::{AiCall, Store};

pub struct StoreLedger {
    pub store: Store,
    pub daily_usd: f64,
    pub monthly_usd: f64,
    pub metrics: Option<AiMetrics>,
}

/// Provider calls, tokens and cost, by provider and model.
#[derive(Clone)]
pub struct AiMetrics {
    calls: Counter,
    tokens: Counter,
    cost: Counter,
}

impl AiMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            calls: registry.counter(
                "mediamesh_ai_calls_total",
                "AI provider calls (retries included), by provider, model and outcome (OK or an error code)",
                &["provider", "model", "outcome"],
            ),
            tokens: registry.counter(
                "mediamesh_ai_tokens_total",
                "AI tokens, by provider, model and direction (in, out)",
                &["provider", "model", "direction"],
            ),
            cost: registry.counter(
                "mediamesh_ai_cost_usd_total",
                "AI spend in US dollars, by provider and model",
                &["provider", "model"],
            ),
        }
    }

    fn record(&self, call: &AiCall) {
        let (p, m) = (call.provider.as_str(), call.model.as_str());
        self.calls.inc(&[p, m, &call.outcome]);
        self.tokens.inc_by(&[p, m, "in"], call.tokens_in as f64);
        self.tokens.inc_by(&[p, m, "out"], call.tokens_out as f64);
        if call.cost_usd.is_finite() && call.cost_usd > 0.0 {
            self.cost.inc_by(&[p, m], call.cost_usd);
        }
    }
}

/// A tenant's budgets: the overrides in `inference.budgets`, else the defaults; 0 is none.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budgets {
    pub daily_usd: f64,
    pub monthly_usd: f64,
}

impl StoreLedger {
    pub async fn budgets(&self, tenant: &str) -> Result<Budgets, Error> {
        let row = self.store.ai_budget(tenant).await.map_err(Error::from)?;
        Ok(Budgets {
            daily_usd: row.daily_usd.unwrap_or(self.daily_usd),
            monthly_usd: row.monthly_usd.unwrap_or(self.monthly_usd),
        })
    }

    /// Today's and this month's spend (UTC).
    pub async fn spend(&self, tenant: &str) -> Result<(f64, f64), Error> {
        let now = Utc::now();
        let today = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .unwrap_or(now);
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        let day_spend = self.store.ai_spend_since(tenant, today).await.map_err(Error::from)?;
        let month_spend = self.store.ai_spend_since(tenant, month).await.map_err(Error::from)?;
        Ok((day_spend, month_spend))
    }

    async fn check_budget(&self, tenant: &str) -> Result<(), Error> {
        let budgets = self.budgets(tenant).await?;
        if budgets.daily_usd <= 0.0 && budgets.monthly_usd <= 0.0 {
            return Ok(());
        }
        let (today, month) = self.spend(tenant).await?;
        if budgets.daily_usd > 0.0 && today >= budgets.daily_usd {
            return Err(Error::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "tenant {tenant:?} has spent ${today:.4} of its daily AI budget of ${:.2}; it resets at 00:00 UTC",
                    budgets.daily_usd
                ),
            ));
        }
        if budgets.monthly_usd > 0.0 && month >= budgets.monthly_usd {
            return Err(Error::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "tenant {tenant:?} has spent ${month:.4} of its monthly AI budget of ${:.2}; it resets on the 1st (UTC)",
                    budgets.monthly_usd
                ),
            ));
        }
        Ok(())
    }
}

impl Ledger for StoreLedger {
    fn check(&self, tenant: &str) -> BoxFuture<'_, Result<(), Error>> {
        let tenant = tenant.to_owned();
        async move { self.check_budget(&tenant).await }.boxed()
    }

    fn record(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        async move {
            let call = AiCall {
                tenant: record.tenant,
                job_id: record.job_id,
                provider: record.provider,
                model: record.model,
                operation: record.operation.as_str().to_owned(),
                latency_ms: i32::try_from(record.latency.as_millis()).unwrap_or(i32::MAX),
                tokens_in: i64::try_from(record.tokens_in).unwrap_or(i64::MAX),
                tokens_out: i64::try_from(record.tokens_out).unwrap_or(i64::MAX),
                cost_usd: record.cost_usd,
                outcome: record.outcome.map_or("OK", ErrorCode::as_str).to_owned(),
            };
            if let Some(metrics) = &self.metrics {
                metrics.record(&call);
            }
            if let Err(err) = self.store.record_ai_call(&call).await {
                tracing::warn!(error = %err, provider = %call.provider, "cannot record the provider call in ai_metrics");
            }
        }
        .boxed()
    }
}
