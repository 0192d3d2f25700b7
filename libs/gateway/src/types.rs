//! The inputs and outputs of gateway calls, the per-call context and the spend ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Task;

/// The context of one gateway call: who pays, when to give up, and the ledger to ask and tell.
#[derive(Clone)]
pub struct Call {
    /// The tenant the ledger checks and charges.
    pub tenant: String,
    /// The job this call works for, copied into the records.
    pub job_id: Option<uuid::Uuid>,
    /// Cancelling stops the call at once with `Cancelled`.
    pub cancel: CancellationToken,
    /// No attempt, retry or rate-limit wait goes past this instant (`Timeout`).
    pub deadline: Option<Instant>,
    /// Asked before every provider call and told after each.
    pub ledger: Arc<dyn Ledger>,
}

impl Call {
    /// A call for `tenant` with no job, deadline or budget ([`NoLedger`]).
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            job_id: None,
            cancel: CancellationToken::new(),
            deadline: None,
            ledger: Arc::new(NoLedger),
        }
    }

    /// The same call with a deadline `timeout` from now.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// The same call with another ledger.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Time left before the deadline (`None` = no deadline).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("tenant", &self.tenant)
            .field("job_id", &self.job_id)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Budget checks and spend records, implemented by the service (PostgreSQL) or [`NoLedger`].
pub trait Ledger: Send + Sync {
    /// Before every provider call; an Err (BudgetExceeded) stops the call and is returned as
    /// is (no failover, not retried).
    fn check(&self, tenant: &str) -> BoxFuture<'_, Result<(), Error>>;
    /// After every provider call, successful or not (one record per HTTP call, retries
    /// included).
    fn record(&self, record: CallRecord) -> BoxFuture<'_, ()>;
}

/// A ledger that allows everything and drops records (for tests and tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLedger;

impl Ledger for NoLedger {
    fn check(&self, _tenant: &str) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn record(&self, _record: CallRecord) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One HTTP call to a provider, as told to the ledger.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// Who pays.
    pub tenant: String,
    /// The job the call worked for.
    pub job_id: Option<uuid::Uuid>,
    /// Provider name.
    pub provider: String,
    /// Model sent.
    pub model: String,
    /// The task.
    pub operation: Task,
    /// Time from sending the request to the end of the answer (or the failure).
    pub latency: Duration,
    /// Input tokens the provider reported.
    pub tokens_in: u64,
    /// Output tokens the provider reported.
    pub tokens_out: u64,
    /// Cost from the configured prices.
    pub cost_usd: f64,
    /// `None` = success; else the class of the failure.
    pub outcome: Option<ErrorCode>,
}

/// Audio to transcribe.
#[derive(Clone)]
pub struct AudioIn {
    /// The encoded file (wav, mp3, ogg, flac, m4a, webm, ...).
    pub bytes: bytes::Bytes,
    /// File name; its extension tells the provider the format (one is derived from `mime`
    /// when missing).
    pub filename: String,
    /// MIME type (`audio/mpeg`, ...).
    pub mime: String,
}

/// An image to describe or enhance: jpeg, png, webp or gif.
#[derive(Clone)]
pub struct ImageIn {
    /// The encoded image.
    pub bytes: bytes::Bytes,
    /// `image/jpeg`, `image/png`, `image/webp` or `image/gif`.
    pub mime: String,
}

impl std::fmt::Debug for AudioIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioIn")
            .field("bytes", &self.bytes.len())
            .field("filename", &self.filename)
            .field("mime", &self.mime)
            .finish()
    }
}

impl std::fmt::Debug for ImageIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageIn")
            .field("bytes", &self.bytes.len())
            .field("mime", &self.mime)
            .finish()
    }
}

/// A text generation request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TextRequest {
    /// What to write.
    pub prompt: String,
    /// Tone, sent as a `Tone: X` line of the system message.
    pub tone: Option<String>,
    /// Audience, sent as an `Audience: Y` line of the system message.
    pub audience: Option<String>,
    /// Upper bound of output tokens.
    pub max_tokens: Option<u32>,
}

/// An image generation request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageRequest {
    /// What to draw.
    pub prompt: String,
    /// `WIDTHxHEIGHT` (`1024x1024`) or `auto`.
    pub size: Option<String>,
    /// `vivid` / `natural` (the dall-e-3 parameter), or any style words, added to the prompt.
    pub style: Option<String>,
}

/// Who answered and what it cost, summed over the HTTP calls the operation took (retries,
/// failovers and invalid answers included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The provider that gave the answer.
    pub provider: String,
    /// The model that gave the answer.
    pub model: String,
    /// Input tokens over every call.
    pub tokens_in: u64,
    /// Output tokens over every call.
    pub tokens_out: u64,
    /// Cost over every call, from the configured prices.
    pub cost_usd: f64,
    /// HTTP calls made.
    pub calls: u32,
}

/// A transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The whole text.
    pub text: String,
    /// ISO-639-1 code when known (the provider's name for the language otherwise).
    pub language: String,
    /// Duration of the audio in seconds, when the provider says.
    pub duration_s: Option<f64>,
    /// Timed segments (may be empty).
    pub segments: Vec<Segment>,
    /// Who answered and what it cost.
    pub usage: Usage,
}

/// A timed piece of a transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start in seconds.
    pub start_s: f64,
    /// End in seconds.
    pub end_s: f64,
    /// Text of the segment.
    pub text: String,
}

/// What an image shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// One sentence.
    pub caption: String,
    /// Short tags.
    pub tags: Vec<String>,
    /// Objects seen.
    pub objects: Vec<DetectedObject>,
    /// A short scene label.
    pub scene: String,
    /// Who answered and what it cost.
    pub usage: Usage,
}

/// An object seen in an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectedObject {
    /// What it is.
    pub name: String,
    /// Confidence between 0 and 1.
    pub confidence: f32,
    /// How many.
    pub count: u32,
}

/// An image made or edited by a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageOut {
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// Its MIME type, from its magic bytes.
    pub mime: String,
    /// The prompt the model actually used, when it says.
    pub revised_prompt: Option<String>,
    /// Who answered and what it cost.
    pub usage: Usage,
}

/// Generated text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextOut {
    /// The text.
    pub text: String,
    /// Who answered and what it cost.
    pub usage: Usage,
}

/// A value extracted from text, valid against the caller's schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extracted {
    /// The value.
    pub value: serde_json::Value,
    /// Who answered and what it cost.
    pub usage: Usage,
}
