//! The provider gateway: every AI call of the inference service goes through it.
//!
//! A [`Gateway`] holds the configured providers (see [`config`] for the TOML format and a full
//! example) and runs each task (transcribe, describe, enhance, generate text or images,
//! extract, moderate) on the first provider that serves it, with, around every HTTP call:
//!
//! - a rate limiter per provider (requests and tokens per minute, with a burst), shared by
//!   every call of the process; waiting stops at the call's deadline (`Timeout`) or cancel
//!   (`Cancelled`);
//! - a per-attempt timeout (`timeout_ms`, never past the call's deadline);
//! - retries on the same provider (up to `max_retries`) for 429, 5xx, timeouts, connection
//!   errors and malformed JSON, honouring `Retry-After` (capped by the deadline and 60 s), else
//!   exponential backoff with jitter from 200 ms; then failover to the next provider;
//! - no retry and no failover for 400/404/413/422 (`BadInput`, `TooLarge`), budget errors and
//!   cancel; 401/403 fail over at once ("provider X rejected the credentials");
//! - a circuit breaker per provider ([`BreakerState`]);
//! - [`Ledger::check`] before and [`Ledger::record`] after every HTTP call;
//! - a `tracing` span `ai.call` (provider, model, task, attempt, outcome, latency_ms).
//!
//! Structured answers (describe, extract) are validated against their JSON Schema; an invalid
//! answer is asked again once, then the provider counts as failed (`ProviderDown`). API keys
//! never appear in errors, tracing fields, `Debug` output or records.

#![warn(missing_docs)]

mod args;
mod breaker;
pub mod config;
mod limiter;
mod ops;
mod transport;
mod types;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use tracing::Instrument;

pub use args::{ProviderArgs, SecretArg};
pub use breaker::BreakerState;
pub use config::{ApiKey, GatewayConfig, ModelPrice, ModerationMode, ProviderConfig, ProviderKind, Settings, Task};
pub use types::{
    AudioIn, Call, CallRecord, Description, DetectedObject, Extracted, ImageIn, ImageOut, ImageRequest, Ledger,
    NoLedger, Segment, TextOut, TextRequest, Transcript, Usage,
};

use breaker::Breaker;
use limiter::Limiter;
use transport::{Api, Verdict};

/// The longest `Retry-After` the gateway sleeps.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The first backoff delay when the provider gives no `Retry-After`.
const BASE_BACKOFF: Duration = Duration::from_millis(200);

/// The gateway: one per process, cheap to clone, shared by every call.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Vec<Provider>,
    settings: Settings,
    describe_schema: Arc<jsonschema::Validator>,
}

struct Provider {
    config: ProviderConfig,
    /// Model -> client (Azure needs one per deployment).
    clients: HashMap<String, Api>,
    http: reqwest::Client,
    limiter: Limiter,
    breaker: Breaker,
}

impl Provider {
    fn secret(&self) -> Option<&str> {
        self.config.api_key.as_ref().map(ApiKey::expose)
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let providers: Vec<&ProviderConfig> = self.inner.providers.iter().map(|p| &p.config).collect();
        f.debug_struct("Gateway")
            .field("providers", &providers)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// What one HTTP call used, for costs and limits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meter {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub images: u32,
    pub audio_seconds: f64,
}

/// How one HTTP call failed.
pub(crate) enum Failure {
    /// The HTTP call itself failed (status, transport, malformed JSON).
    Http(async_openai::error::OpenAIError),
    /// The provider answered, but not with what was asked (schema mismatch, empty answer).
    Invalid { reason: String, meter: Meter },
    /// The model refused to answer.
    Refused { text: String, meter: Meter },
}

impl From<async_openai::error::OpenAIError> for Failure {
    fn from(error: async_openai::error::OpenAIError) -> Self {
        Failure::Http(error)
    }
}

/// What an operation gets for one HTTP call.
pub(crate) struct Attempt {
    pub api: Api,
    pub model: String,
    pub http: reqwest::Client,
}

pub(crate) type OpFuture<T> = BoxFuture<'static, Result<(T, Meter), Failure>>;

impl Gateway {
    /// Builds the HTTP clients, limiters and breakers of every provider. Fails with `BadInput`
    /// when moderation is `provider` but no provider has a `moderate` model.
    pub fn new(config: GatewayConfig) -> Result<Self, Error> {
        if config.settings.moderation == ModerationMode::Provider
            && !config.providers.iter().any(|p| p.model(Task::Moderate).is_some())
        {
            return Err(Error::bad_input(
                "settings: moderation = \"provider\" but no provider has a model for moderate",
            ));
        }
        let mut providers = Vec::with_capacity(config.providers.len());
        for provider in config.providers {
            let http = reqwest::Client::builder()
                .connect_timeout(provider.timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| {
                    Error::internal(format!("provider {}: cannot build the HTTP client: {e}", provider.name))
                })?;
            let mut clients = HashMap::new();
            for model in provider.models.values() {
                clients
                    .entry(model.clone())
                    .or_insert_with(|| transport::client(&provider, model, &http));
            }
            providers.push(Provider {
                limiter: Limiter::new(
                    &provider.name,
                    provider.requests_per_minute,
                    provider.burst,
                    provider.tokens_per_minute,
                ),
                breaker: Breaker::new(provider.breaker_failures, provider.breaker_cooldown),
                config: provider,
                clients,
                http,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                providers,
                settings: config.settings,
                describe_schema: Arc::new(ops::describe_validator()?),
            }),
        })
    }

    /// Whether some provider has a model for `task`.
    pub fn supports(&self, task: Task) -> bool {
        self.inner.providers.iter().any(|p| p.config.model(task).is_some())
    }

    /// The tasks some provider serves, in [`Task::ALL`] order.
    pub fn configured_tasks(&self) -> Vec<Task> {
        Task::ALL.into_iter().filter(|t| self.supports(*t)).collect()
    }

    /// The shared settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// "provider/model" of the first provider for the task: part of the inference cache key.
    pub fn fingerprint(&self, task: Task) -> Option<String> {
        self.inner
            .providers
            .iter()
            .find_map(|p| p.config.model(task).map(|m| format!("{}/{m}", p.config.name)))
    }

    /// Smallest `max_audio_bytes` among the transcribe providers (the service splits longer
    /// audio); the default (25 MiB) when none transcribes.
    pub fn max_audio_bytes(&self) -> u64 {
        self.inner
            .providers
            .iter()
            .filter(|p| p.config.model(Task::Transcribe).is_some())
            .map(|p| p.config.max_audio_bytes)
            .min()
            .unwrap_or(config::DEFAULT_MAX_AUDIO_BYTES)
    }

    /// The circuit state of the provider named `provider` (`None` when there is no such
    /// provider).
    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.inner
            .providers
            .iter()
            .find(|p| p.config.name == provider)
            .map(|p| p.breaker.state())
    }

    /// The names of the providers, in failover order.
    pub fn provider_names(&self) -> Vec<String> {
        self.inner.providers.iter().map(|p| p.config.name.clone()).collect()
    }

    /// Runs one operation with limits, retries, failover, breaker, ledger and tracing.
    /// `allowed` filters the providers of the task (e.g. by audio size).
    async fn run<T: Send + 'static>(
        &self,
        call: &Call,
        task: Task,
        estimate: u64,
        allowed: &(dyn Fn(&ProviderConfig) -> bool + Sync),
        op: &(dyn Fn(Attempt) -> OpFuture<T> + Send + Sync),
    ) -> Result<(T, Usage), Error> {
        let route: Vec<&Provider> = self
            .inner
            .providers
            .iter()
            .filter(|p| p.config.model(task).is_some() && allowed(&p.config))
            .collect();
        if route.is_empty() {
            return Err(Error::unsupported(format!("no AI provider is configured for {task}")));
        }
        let mut usage = Usage::default();
        let mut notes: Vec<String> = Vec::new();
        let mut open: Vec<&str> = Vec::new();
        let mut last: Option<Error> = None;
        for provider in &route {
            let name = provider.config.name.as_str();
            let (Some(model), Some(api)) = (
                provider.config.model(task),
                provider.config.model(task).and_then(|m| provider.clients.get(m)),
            ) else {
                continue;
            };
            let mut retries = 0u32;
            let mut invalid = 0u32;
            let mut calls_here = 0u32;
            loop {
                live(call)?;
                let Some(permit) = provider.breaker.try_acquire() else {
                    let error = Error::new(ErrorCode::ProviderDown, format!("circuit open for {name}"));
                    if calls_here == 0 {
                        open.push(name);
                        notes.push(format!("{name}: circuit open"));
                    } else {
                        notes.push(format!("{name}: circuit opened after {calls_here} calls"));
                    }
                    last = Some(error);
                    break;
                };
                tokio::select! {
                    _ = call.cancel.cancelled() => {
                        return Err(Error::new(ErrorCode::Cancelled, "the call was cancelled"));
                    }
                    checked = call.ledger.check(&call.tenant) => checked?,
                }
                let charged = provider.limiter.acquire(estimate, call).await?;
                calls_here += 1;
                usage.calls += 1;
                let deadline_bound = call.remaining().is_some_and(|left| left < provider.config.timeout);
                let timeout = call
                    .remaining()
                    .map_or(provider.config.timeout, |left| left.min(provider.config.timeout));
                let span = tracing::info_span!(
                    "ai.call",
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    provider = name,
                    model,
                    task = task.as_str(),
                    attempt = calls_here,
                    outcome = tracing::field::Empty,
                    latency_ms = tracing::field::Empty,
                );
                let attempt = Attempt {
                    api: api.clone(),
                    model: model.to_owned(),
                    http: provider.http.clone(),
                };
                let started = Instant::now();
                let result = async {
                    tokio::select! {
                        _ = call.cancel.cancelled() => None,
                        result = tokio::time::timeout(timeout, op(attempt)) => Some(result),
                    }
                }
                .instrument(span.clone())
                .await;
                let latency = started.elapsed();
                let price = provider.config.price(model);
                let record = |meter: Meter, outcome: Option<ErrorCode>| {
                    span.record("outcome", outcome.map_or("ok", ErrorCode::as_str));
                    if outcome.is_some() {
                        span.record("otel.status_code", "ERROR");
                    }
                    span.record("latency_ms", latency.as_millis() as u64);
                    CallRecord {
                        tenant: call.tenant.clone(),
                        job_id: call.job_id,
                        provider: name.to_owned(),
                        model: model.to_owned(),
                        operation: task,
                        latency,
                        tokens_in: meter.tokens_in,
                        tokens_out: meter.tokens_out,
                        cost_usd: price.cost(meter.tokens_in, meter.tokens_out, meter.images, meter.audio_seconds),
                        outcome,
                    }
                };
                let add = |usage: &mut Usage, record: &CallRecord| {
                    usage.tokens_in += record.tokens_in;
                    usage.tokens_out += record.tokens_out;
                    usage.cost_usd += record.cost_usd;
                };
                let verdict = match result {
                    None => {
                        call.ledger
                            .record(record(Meter::default(), Some(ErrorCode::Cancelled)))
                            .await;
                        drop(permit);
                        return Err(Error::new(ErrorCode::Cancelled, "the call was cancelled"));
                    }
                    Some(Err(_elapsed)) if deadline_bound => {
                        call.ledger
                            .record(record(Meter::default(), Some(ErrorCode::Timeout)))
                            .await;
                        drop(permit);
                        return Err(Error::new(
                            ErrorCode::Timeout,
                            format!("{task}: the deadline passed while waiting for provider {name}"),
                        ));
                    }
                    Some(Err(_elapsed)) => Verdict::Retry {
                        error: Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "provider {name} did not answer within {} ms",
                                provider.config.timeout.as_millis()
                            ),
                        ),
                        retry_after: None,
                    },
                    Some(Ok(Ok((value, meter)))) => {
                        let record = record(meter, None);
                        provider.limiter.settle(charged, meter.tokens_in + meter.tokens_out);
                        permit.success();
                        add(&mut usage, &record);
                        call.ledger.record(record).await;
                        usage.provider = name.to_owned();
                        usage.model = model.to_owned();
                        return Ok((value, usage));
                    }
                    Some(Ok(Err(Failure::Invalid { reason, meter }))) => {
                        let record = record(meter, Some(ErrorCode::ProviderDown));
                        provider.limiter.settle(charged, meter.tokens_in + meter.tokens_out);
                        permit.success();
                        add(&mut usage, &record);
                        call.ledger.record(record).await;
                        invalid += 1;
                        tracing::warn!(provider = name, model, task = task.as_str(), %reason, "invalid answer");
                        if invalid >= 2 {
                            let error = Error::new(
                                ErrorCode::ProviderDown,
                                format!("the model's answer did not match the schema: {reason}"),
                            );
                            notes.push(format!("{} (provider {name})", error.message));
                            last = Some(error);
                            break;
                        }
                        continue;
                    }
                    Some(Ok(Err(Failure::Refused { text, meter }))) => {
                        let record = record(meter, Some(ErrorCode::BadInput));
                        provider.limiter.settle(charged, meter.tokens_in + meter.tokens_out);
                        permit.success();
                        add(&mut usage, &record);
                        call.ledger.record(record).await;
                        return Err(Error::bad_input(format!("the model refused: {text}")));
                    }
                    Some(Ok(Err(Failure::Http(error)))) => transport::classify(name, error, provider.secret()),
                };
                call.ledger
                    .record(record(Meter::default(), Some(verdict.error().code)))
                    .await;
                if verdict.is_provider_failure() {
                    permit.failure();
                } else {
                    permit.success();
                }
                let again =
                    retry_or_move_on(call, provider, verdict, &mut retries, calls_here, &mut notes, &mut last).await?;
                if !again {
                    break;
                }
            }
        }
        if open.len() == route.len() {
            return Err(Error::new(
                ErrorCode::ProviderDown,
                format!("{task}: circuit open for {}", open.join(", ")),
            ));
        }
        let code = last.map_or(ErrorCode::ProviderDown, |e| e.code);
        let message = match notes.as_slice() {
            [only] => only.clone(),
            _ => format!("{task} failed on every provider: {}", notes.join("; ")),
        };
        Err(Error::new(code, message))
    }
}

/// Decides what follows a failed HTTP call: `true` = retry the provider (after the delay, slept
/// here), `false` = next provider, Err = stop the whole call.
async fn retry_or_move_on(
    call: &Call,
    provider: &Provider,
    verdict: Verdict,
    retries: &mut u32,
    calls_here: u32,
    notes: &mut Vec<String>,
    last: &mut Option<Error>,
) -> Result<bool, Error> {
    let name = provider.config.name.as_str();
    match verdict {
        Verdict::Abort(error) => Err(error),
        Verdict::Failover(error) => {
            notes.push(error.message.clone());
            *last = Some(error);
            Ok(false)
        }
        Verdict::Retry { error, retry_after } => {
            *retries += 1;
            if *retries > provider.config.max_retries {
                notes.push(format!("{} ({calls_here} calls)", error.message));
                *last = Some(error);
                return Ok(false);
            }
            let delay = retry_after.map_or_else(|| backoff(*retries), |d| d.min(MAX_RETRY_AFTER));
            if call.remaining().is_some_and(|left| left <= delay) {
                notes.push(format!("{} (no time left to retry {name})", error.message));
                *last = Some(error);
                return Ok(false);
            }
            tracing::debug!(provider = name, delay_ms = delay.as_millis() as u64, "retrying");
            tokio::select! {
                _ = call.cancel.cancelled() => Err(Error::new(ErrorCode::Cancelled, "the call was cancelled")),
                _ = tokio::time::sleep(delay) => Ok(true),
            }
        }
    }
}

/// Fails when the call is cancelled or past its deadline.
fn live(call: &Call) -> Result<(), Error> {
    if call.cancel.is_cancelled() {
        return Err(Error::new(ErrorCode::Cancelled, "the call was cancelled"));
    }
    if call.deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(Error::new(ErrorCode::Timeout, "the call's deadline passed"));
    }
    Ok(())
}

/// Exponential backoff from [`BASE_BACKOFF`] with up to 50% jitter, capped at 10 s.
fn backoff(retry: u32) -> Duration {
    let base = BASE_BACKOFF.saturating_mul(1u32 << retry.saturating_sub(1).min(6));
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    let jitter = (hasher.finish() % 1000) as f64 / 2000.0;
    base.mul_f64(1.0 + jitter).min(Duration::from_secs(10))
}
