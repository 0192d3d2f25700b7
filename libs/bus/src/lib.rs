//! NATS JetStream plumbing: the JOBS and EVENTS streams, their durable consumers, the message
//! formats workers and the scheduler exchange, and the core subjects for live updates and
//! cancellation.
//!
//! | subject | carried by | what |
//! | --- | --- | --- |
//! | `mm.jobs.<queue>` | stream `MM_JOBS` (work queue) | a job attempt to run, `Nats-Msg-Id` = `<job id>:<attempt>` |
//! | `mm.events.<queue>` | stream `MM_EVENTS` (work queue) | batches of started / succeeded / failed reports from a queue's workers |
//! | `mm.updates.<job id>` | core NATS | state changes and progress for `WatchJob` |
//! | `mm.cancel.<job id>` | core NATS | a job cancelled at an attempt (the payload): stop it, or never start it |
//! | `mm.cancelled.<job id>` | stream `MM_CANCELLED` (last per subject) | the same, kept a day: what a worker reads when it starts or reconnects |

mod messages;
pub mod worker;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
pub use messages::{JobMessage, Report, ReportBatch, Update, WorkerEvent};
use uuid::Uuid;

pub use async_nats;

pub const JOBS_STREAM: &str = "MM_JOBS";
pub const EVENTS_STREAM: &str = "MM_EVENTS";
pub const EVENTS_CONSUMER: &str = "scheduler-events";
pub const CANCELLED_STREAM: &str = "MM_CANCELLED";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("nats publish: {0}")]
    Publish(String),
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error("message: {0}")]
    Decode(#[from] serde_json::Error),
}

impl From<Error> for mediamesh_core::Error {
    fn from(err: Error) -> Self {
        tracing::error!(error = %err, "bus error");
        mediamesh_core::Error::unavailable("message bus unavailable")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn js_err(err: impl std::fmt::Display) -> Error {
    Error::JetStream(err.to_string())
}

/// Settings of the JetStream objects; the defaults suit production and tests alike.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// How long JetStream waits for an ack (or a heartbeat) before redelivering a job.
    pub ack_wait: Duration,
    /// Window in which a re-published `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Replicas of each stream (1 locally, 3 in a cluster).
    pub replicas: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// A cheap-to-clone handle on NATS and JetStream.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: BusConfig,
}

impl Bus {
    /// Connects, retrying in the background when the server is not up yet.
    pub async fn connect(url: &str, name: &str, config: BusConfig) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await?;
        let js = jetstream::new(client.clone());
        Ok(Self { client, js, config })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the streams and the cancellation bucket if they do not exist (idempotent: every
    /// service calls it at start).
    pub async fn ensure_streams(&self) -> Result<()> {
        self.js
            .get_or_create_stream(stream::Config {
                name: CANCELLED_STREAM.to_owned(),
                subjects: vec!["mm.cancelled.*".to_owned()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_messages_per_subject: 1,
                max_age: Duration::from_secs(24 * 3600),
                num_replicas: self.config.replicas,
                ..Default::default()
            })
            .await
            .map_err(js_err)?;
        for (name, subjects) in [(JOBS_STREAM, "mm.jobs.>"), (EVENTS_STREAM, "mm.events.>")] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subjects.to_owned()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    duplicate_window: self.config.duplicate_window,
                    num_replicas: self.config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(js_err)?;
        }
        Ok(())
    }

    /// Retries `ensure_streams` until JetStream answers or `deadline` passes.
    pub async fn ensure_streams_when_ready(&self, deadline: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            match self.ensure_streams().await {
                Ok(()) => return Ok(()),
                Err(err) if started.elapsed() < deadline => {
                    tracing::warn!(error = %err, "jetstream not ready, retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The durable pull consumer of one queue's jobs (created if missing).
    pub async fn job_consumer(&self, queue: &str) -> Result<consumer::PullConsumer> {
        let stream = self.js.get_stream(JOBS_STREAM).await.map_err(js_err)?;
        stream
            .get_or_create_consumer(
                queue,
                consumer::pull::Config {
                    durable_name: Some(queue.to_owned()),
                    filter_subject: format!("mm.jobs.{queue}"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(js_err)
    }

    /// The scheduler's durable pull consumer of worker events.
    pub async fn events_consumer(&self) -> Result<consumer::PullConsumer> {
        let stream = self.js.get_stream(EVENTS_STREAM).await.map_err(js_err)?;
        stream
            .get_or_create_consumer(
                EVENTS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(EVENTS_CONSUMER.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    // Applying a report is one short transaction; a scheduler that died holding
                    // reports gives them to its successor after this long.
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(js_err)
    }

    /// Publishes a job attempt with `Nats-Msg-Id = <job id>:<attempt>`, so that a re-publish
    /// inside the duplicate window is dropped. Returns the message's stream sequence once
    /// JetStream has stored it.
    pub async fn publish_job(&self, job: &JobMessage) -> Result<u64> {
        let subject = format!("mm.jobs.{}", job.queue);
        let mut headers = trace_headers();
        headers.insert("Nats-Msg-Id", format!("{}:{}", job.job_id, job.attempt).as_str());
        let payload = Bytes::from(serde_json::to_vec(job)?);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| Error::Publish(e.to_string()))?
            .await
            .map_err(|e| Error::Publish(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Whether the job message at `sequence` is still in `MM_JOBS` (waiting or being worked
    /// on: a work queue drops a message once it is acked).
    pub async fn job_message_exists(&self, sequence: u64) -> Result<bool> {
        let stream = self.js.get_stream(JOBS_STREAM).await.map_err(js_err)?;
        match stream.get_raw_message(sequence).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(err) => Err(js_err(err)),
        }
    }

    /// Publishes a batch of a queue's worker reports as one message on `mm.events.<queue>`;
    /// returns once JetStream has stored it.
    pub async fn publish_reports(&self, queue: &str, batch: &ReportBatch) -> Result<()> {
        let payload = Bytes::from(serde_json::to_vec(batch)?);
        self.js
            .publish(format!("mm.events.{queue}"), payload)
            .await
            .map_err(|e| Error::Publish(e.to_string()))?
            .await
            .map_err(|e| Error::Publish(e.to_string()))?;
        Ok(())
    }

    /// How many times the client has connected: a change means core messages sent meanwhile
    /// (cancellations) may have been missed.
    pub fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fans a state change or progress report out to live watchers (core NATS, best effort).
    pub async fn publish_update(&self, job_id: Uuid, update: &Update) -> Result<()> {
        let payload = Bytes::from(serde_json::to_vec(update)?);
        self.client
            .publish(format!("mm.updates.{job_id}"), payload)
            .await
            .map_err(|e| Error::Publish(e.to_string()))
    }

    /// Every job's updates (`mm.updates.*`), for the latest progress and the tenant feeds.
    pub async fn subscribe_all_updates(&self) -> Result<async_nats::Subscriber> {
        self.client
            .subscribe("mm.updates.*")
            .await
            .map_err(|e| Error::JetStream(e.to_string()))
    }

    pub async fn subscribe_updates(&self, job_id: Uuid) -> Result<async_nats::Subscriber> {
        self.client
            .subscribe(format!("mm.updates.{job_id}"))
            .await
            .map_err(|e| Error::JetStream(e.to_string()))
    }

    /// Records that the job was cancelled at `attempt`, then tells the workers. The record
    /// (`mm.cancelled.<job id>`, stream `MM_CANCELLED`, the last message per job, kept a day)
    /// is what a worker reads when it starts or reconnects; `mm.cancel.<job id>` (core NATS,
    /// carrying the attempt) reaches the workers connected now. Returns once the server has
    /// both, so a job message a worker receives after this returns comes after the cancel on
    /// its connection: the worker drops it without starting it.
    pub async fn cancel(&self, job_id: Uuid, attempt: u32) -> Result<()> {
        let payload = Bytes::from(attempt.to_string());
        self.js
            .publish(format!("mm.cancelled.{job_id}"), payload.clone())
            .await
            .map_err(|e| Error::Publish(e.to_string()))?
            .await
            .map_err(|e| Error::Publish(e.to_string()))?;
        self.client
            .publish(format!("mm.cancel.{job_id}"), payload)
            .await
            .map_err(|e| Error::Publish(e.to_string()))?;
        self.client.flush().await.map_err(|e| Error::Publish(e.to_string()))
    }

    /// Every cancellation recorded in `MM_CANCELLED` (the last day's), as (job, attempt): what
    /// a worker must know before it starts jobs, and again after a reconnect.
    pub async fn recorded_cancellations(&self) -> Result<Vec<(Uuid, u32)>> {
        let mut stream = self.js.get_stream(CANCELLED_STREAM).await.map_err(js_err)?;
        let stored = stream.info().await.map_err(js_err)?.state.messages;
        if stored == 0 {
            return Ok(Vec::new());
        }
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(js_err)?;
        let mut messages = consumer.messages().await.map_err(js_err)?;
        let mut out = Vec::with_capacity(usize::try_from(stored).unwrap_or(0));
        let read = async {
            while let Some(message) = messages.next().await {
                let message = message.map_err(js_err)?;
                if let Some(cancel) = parse_cancel(message.subject.as_str(), &message.payload) {
                    out.push(cancel);
                }
                if message.info().map_or(true, |info| info.pending == 0) {
                    break;
                }
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| Error::JetStream("reading MM_CANCELLED timed out".to_owned()))??;
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        Ok(out)
    }

    pub async fn subscribe_cancels(&self) -> Result<async_nats::Subscriber> {
        self.client
            .subscribe("mm.cancel.*")
            .await
            .map_err(|e| Error::JetStream(e.to_string()))
    }
}

/// A cancellation (`mm.cancel.<job id>` or `mm.cancelled.<job id>`, the attempt as payload).
pub fn parse_cancel(subject: &str, payload: &[u8]) -> Option<(Uuid, u32)> {
    let job_id = Uuid::parse_str(subject.rsplit('.').next()?).ok()?;
    let attempt = std::str::from_utf8(payload).ok()?.trim().parse().ok()?;
    Some((job_id, attempt))
}

/// The W3C trace context of the current span as NATS headers.
fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (key, value) in mediamesh_telemetry::current_context_headers() {
        headers.insert(key.as_str(), value.as_str());
    }
    headers
}

/// Makes the trace context carried by a message the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    mediamesh_telemetry::set_parent(span, |key| headers.get(key).map(|v| v.as_str().to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellations_name_the_job_and_the_attempt() {
        let id = Uuid::now_v7();
        assert_eq!(parse_cancel(&format!("mm.cancel.{id}"), b"3"), Some((id, 3)));
        assert_eq!(parse_cancel(&format!("mm.cancelled.{id}"), b"0"), Some((id, 0)));
        assert_eq!(parse_cancel(&format!("mm.cancel.{id}"), b""), None);
        assert_eq!(parse_cancel("mm.cancel.not-a-job", b"1"), None);
    }
}
