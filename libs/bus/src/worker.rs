//! The worker loop every job-running service shares: pulls jobs from one queue's durable
//! consumer as slots free up, runs each through the service's [`Executor`] with a
//! per-attempt timeout, heartbeats (in-progress acks) and cancellation, and reports each
//! outcome to `MM_EVENTS` before acking the job message.
//!
//! What it costs the broker per job: the pull, one in-progress ack per `ack_wait / 3` of a
//! long job (one task sends them all), a share of one report message (outcomes ready
//! together go as one batch on `mm.events.<queue>`), and a plain ack. Cancellations come to
//! it (`mm.cancel.*`, and `MM_CANCELLED` read once at start and after a reconnect); it asks
//! JetStream nothing per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use futures::StreamExt;
use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{Bus, JobMessage, Report, ReportBatch, WorkerEvent};

/// What a service does with one job attempt. The future must stop soon after `attempt.cancel`
/// fires (cancel or timeout): it gets [`STOP_GRACE`] before it is dropped.
pub trait Executor: Send + Sync + 'static {
    fn execute(&self, job: JobMessage, attempt: Attempt) -> BoxFuture<'static, Result<serde_json::Value, Error>>;
}

/// One attempt's limits.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Fires on a cancel request and when the attempt's timeout runs out.
    pub cancel: CancellationToken,
    /// When the attempt's timeout runs out.
    pub deadline: std::time::Instant,
}

/// Which queue a worker serves and how many jobs it runs at once.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The queue (`media`, `inference`): its durable consumer is pulled.
    pub queue: String,
    pub concurrency: usize,
    /// An attempt reports its start only once it has run this long (zero: before it runs);
    /// a shorter one reports once, its outcome carrying the start. Saves a report, a broker
    /// round trip and a row update per short job.
    pub start_report_after: Duration,
    /// Told when attempts start and finish (metrics).
    pub observer: Option<Arc<dyn JobObserver>>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("start_report_after", &self.start_report_after)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Watches the attempts a worker runs (metrics). `outcome` is `OK` or the error code.
pub trait JobObserver: Send + Sync + 'static {
    fn started(&self, queue: &str, kind: &str);
    fn finished(&self, queue: &str, kind: &str, outcome: &str, elapsed: Duration);
}

/// A job this worker runs: its cancellation token, the attempt it was dispatched as, and its
/// message (for heartbeats).
struct RunningJob {
    token: CancellationToken,
    dispatched_attempt: u32,
    message: Arc<Message>,
}

type Running = Arc<Mutex<HashMap<Uuid, RunningJob>>>;

/// How long a cancelled or timed-out job may take to stop its subprocesses and clean up.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Reports in one message to `MM_EVENTS`, at most.
const REPORT_BATCH: usize = 256;

#[derive(Clone)]
struct Ctx {
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    worker_id: String,
    running: Running,
    reports: mpsc::Sender<Outgoing>,
}

/// A report on its way to `MM_EVENTS`, with the job message to ack once it is stored (an
/// outcome) or none (a start).
struct Outgoing {
    report: Report,
    ack: Option<Arc<Message>>,
}

/// `<host>-<pid>-<random>`: names the worker in attempts and logs.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    let short = Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &short[..8])
}

/// Runs jobs from `options.queue` until `stop`, then waits for the jobs under way and for
/// their reports to be stored.
pub async fn run(bus: Bus, executor: Arc<dyn Executor>, options: WorkerOptions, stop: CancellationToken) {
    let concurrency = options.concurrency.max(1);
    let queue = options.queue.clone();
    let (reports, outbox) = mpsc::channel(concurrency * 2 + REPORT_BATCH);
    let reporter = tokio::spawn(send_reports(bus.clone(), queue.clone(), outbox));
    let ctx = Ctx {
        worker_id: worker_id(),
        running: Arc::new(Mutex::new(HashMap::new())),
        executor,
        options,
        reports,
    };
    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&ctx.running), bus.config().ack_wait / 3));
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut cancels = Cancellations::default();
    tracing::info!(worker_id = %ctx.worker_id, queue = %queue, concurrency, "worker started");
    'outer: while !stop.is_cancelled() {
        if let Err(err) = cancels.follow(&bus).await {
            tracing::warn!(error = %err, "cannot follow cancellations, retrying");
            pause(&stop, Duration::from_millis(500)).await;
            continue;
        }
        let consumer = match bus.job_consumer(&queue).await {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(error = %err, queue = %queue, "job consumer unavailable, retrying");
                pause(&stop, Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            // Ask for as many jobs as there are free slots, so no job waits in this process
            // while its ack_wait runs.
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break 'outer,
                cancel = cancels.next() => match cancel {
                    Some(cancel) => {
                        cancels.apply(cancel, &ctx.running);
                        continue;
                    }
                    None => continue 'outer,
                },
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'outer,
                },
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "pulling jobs failed, reconnecting");
                    pause(&stop, Duration::from_millis(500)).await;
                    continue 'outer;
                }
            };
            loop {
                let message = tokio::select! {
                    biased;
                    cancel = cancels.next() => match cancel {
                        Some(cancel) => {
                            cancels.apply(cancel, &ctx.running);
                            continue;
                        }
                        None => continue 'outer,
                    },
                    message = messages.next() => message,
                };
                match message {
                    Some(Ok(message)) => {
                        let Some(permit) = permits.pop() else { break };
                        // Whatever cancellation reached this connection before the message
                        // is applied first, and one missed while disconnected is read back.
                        cancels.apply_ready(&ctx.running);
                        if cancels.missed_some(&bus)
                            && let Err(err) = cancels.follow(&bus).await
                        {
                            tracing::warn!(error = %err, "cannot read cancellations; leaving the job for redelivery");
                            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                            continue 'outer;
                        }
                        if let Some((message, job, token)) = admit(&ctx, &cancels, message).await {
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                handle(&ctx, message, job, token).await;
                                drop(permit);
                            });
                        }
                    }
                    Some(Err(err)) => {
                        tracing::debug!(error = %err, "pull ended");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    // Drain: wait until every slot is free again, i.e. every job under way has finished, then
    // until their reports are stored.
    let total = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(total).await;
    heartbeat.abort();
    drop(ctx);
    let _ = reporter.await;
    tracing::info!(queue = %queue, "worker stopped");
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// What this worker knows of cancellations: each job cancelled by request, with the attempt
/// it was at. Fed by `mm.cancel.*` and by `MM_CANCELLED`, read when following starts and
/// again whenever the connection was lost meanwhile.
#[derive(Default)]
struct Cancellations {
    subscriber: Option<async_nats::Subscriber>,
    cancelled: HashMap<Uuid, (u32, std::time::Instant)>,
    /// The client's connection count when `MM_CANCELLED` was last read.
    read_at_connect: u64,
}

/// How long a cancellation is remembered: as long as `MM_CANCELLED` keeps it.
const REMEMBER: Duration = Duration::from_secs(24 * 3600);

impl Cancellations {
    /// Subscribes to `mm.cancel.*` (if not yet) and reads `MM_CANCELLED`, in that order, so
    /// that no cancellation falls between the two.
    async fn follow(&mut self, bus: &Bus) -> crate::Result<()> {
        let connects = bus.connects();
        if self.subscriber.is_none() {
            self.subscriber = Some(bus.subscribe_cancels().await?);
        }
        for (job_id, attempt) in bus.recorded_cancellations().await? {
            self.remember(job_id, attempt);
        }
        self.read_at_connect = connects;
        Ok(())
    }

    /// Whether the client reconnected since `MM_CANCELLED` was read: a core message sent
    /// while it was away is lost.
    fn missed_some(&self, bus: &Bus) -> bool {
        bus.connects() != self.read_at_connect
    }

    /// The next cancellation message; None when the subscription ended (it is made again).
    async fn next(&mut self) -> Option<async_nats::Message> {
        let message = match self.subscriber.as_mut() {
            Some(subscriber) => subscriber.next().await,
            None => None,
        };
        if message.is_none() {
            self.subscriber = None;
        }
        message
    }

    /// Applies the cancellations already received, without waiting.
    fn apply_ready(&mut self, running: &Running) {
        use futures::FutureExt;
        while let Some(Some(message)) = self.subscriber.as_mut().and_then(|s| s.next().now_or_never()) {
            self.apply(message, running);
        }
    }

    /// Remembers a cancellation and stops the job if it runs here at that attempt or before.
    fn apply(&mut self, message: async_nats::Message, running: &Running) {
        let Some((job_id, attempt)) = crate::parse_cancel(message.subject.as_str(), &message.payload) else {
            tracing::debug!(subject = %message.subject, "ignoring a malformed cancellation");
            return;
        };
        self.remember(job_id, attempt);
        if let Ok(running) = running.lock()
            && let Some(job) = running.get(&job_id)
            && job.dispatched_attempt <= attempt
        {
            tracing::info!(job_id = %job_id, "cancelling running job");
            job.token.cancel();
        }
    }

    fn remember(&mut self, job_id: Uuid, attempt: u32) {
        if self.cancelled.len() >= 100_000 {
            self.cancelled.retain(|_, (_, at)| at.elapsed() < REMEMBER);
        }
        let entry = self
            .cancelled
            .entry(job_id)
            .or_insert((attempt, std::time::Instant::now()));
        entry.0 = entry.0.max(attempt);
    }

    /// Whether the job was cancelled at or after `attempt` (a retry after the cancel runs a
    /// later attempt, which is not cancelled).
    fn is_cancelled(&self, job_id: Uuid, attempt: u32) -> bool {
        self.cancelled
            .get(&job_id)
            .is_some_and(|(cancelled_at, _)| *cancelled_at >= attempt)
    }
}

/// Decodes a delivered job and registers it as running (from here on a cancellation reaches
/// its token), unless it is malformed or was cancelled while its message waited: then the
/// message is terminated and nothing runs.
async fn admit(
    ctx: &Ctx,
    cancels: &Cancellations,
    message: Message,
) -> Option<(Arc<Message>, JobMessage, CancellationToken)> {
    let job: JobMessage = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(err) => {
            tracing::error!(error = %err, subject = %message.subject, "dropping malformed job message");
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        }
    };
    if cancels.is_cancelled(job.job_id, job.attempt) {
        tracing::info!(job_id = %job.job_id, attempt = job.attempt, "job was cancelled while queued; not running it");
        let _ = message.ack_with(AckKind::Term).await;
        return None;
    }
    let message = Arc::new(message);
    let token = CancellationToken::new();
    if let Ok(mut running) = ctx.running.lock() {
        running.insert(
            job.job_id,
            RunningJob {
                token: token.clone(),
                dispatched_attempt: job.attempt,
                message: Arc::clone(&message),
            },
        );
    }
    Some((message, job, token))
}

/// Sends an in-progress ack (the heartbeat that keeps JetStream from redelivering) for every
/// running job, every `every`.
async fn heartbeat(running: Running, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let messages: Vec<Arc<Message>> = match running.lock() {
            Ok(running) => running.values().map(|job| Arc::clone(&job.message)).collect(),
            Err(_) => return,
        };
        for message in messages {
            if message.ack_with(AckKind::Progress).await.is_err() {
                tracing::debug!("heartbeat failed");
            }
        }
    }
}

/// Stores reports in `MM_EVENTS`, as many as are ready in one message, and acks the job
/// messages of the outcomes among them once they are stored. Runs until every sender is gone.
async fn send_reports(bus: Bus, queue: String, mut outbox: mpsc::Receiver<Outgoing>) {
    let mut ready = Vec::with_capacity(REPORT_BATCH);
    while outbox.recv_many(&mut ready, REPORT_BATCH).await > 0 {
        let (reports, acks): (Vec<Report>, Vec<Option<Arc<Message>>>) =
            ready.drain(..).map(|o| (o.report, o.ack)).unzip();
        let batch = ReportBatch { reports };
        let mut stored = false;
        for attempt in 0..5u32 {
            match bus.publish_reports(&queue, &batch).await {
                Ok(()) => {
                    stored = true;
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, reports = batch.reports.len(), "cannot store reports, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        for message in acks.into_iter().flatten() {
            if stored {
                let _ = message.ack().await;
            } else {
                // The outcome could not be recorded: let JetStream redeliver the job; running
                // it again is harmless (outputs go to the same keys).
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

async fn handle(ctx: &Ctx, message: Arc<Message>, job: JobMessage, token: CancellationToken) {
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("job {}", job.kind),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        job_id = %job.job_id,
        kind = %job.kind,
        tenant = %job.tenant,
        attempt = job.attempt,
        outcome = tracing::field::Empty,
    );
    crate::set_parent_from_headers(&span, message.headers.as_ref());
    run_job(ctx, message, job, token).instrument(span).await;
}

async fn run_job(ctx: &Ctx, message: Arc<Message>, mut job: JobMessage, token: CancellationToken) {
    // A message JetStream delivers again (its worker died or went silent past ack_wait) is a
    // new attempt: the scheduler closes the lost one and the attempt budget counts both.
    let delivered = message.info().map_or(1, |info| info.delivered.max(1));
    job.attempt = job
        .attempt
        .saturating_add(u32::try_from(delivered - 1).unwrap_or(u32::MAX));
    let started_wall = Utc::now();
    let started = WorkerEvent::Started {
        job_id: job.job_id,
        attempt: job.attempt,
        worker_id: ctx.worker_id.clone(),
        at: started_wall,
    };
    // Whether the start went to the reporter; if not, the outcome carries it.
    let mut start_reported = false;
    if ctx.options.start_report_after.is_zero() {
        start_reported = send(ctx, started.clone(), None).await;
    }
    if job.max_attempts > 0 && job.attempt > job.max_attempts {
        forget(ctx, job.job_id);
        let err = Error::new(
            ErrorCode::Unavailable,
            format!(
                "attempt budget of {} spent: the job was delivered {delivered} times without an outcome (its workers died or went silent)",
                job.max_attempts
            ),
        );
        let start = (!start_reported).then_some(started_wall);
        report(ctx, message, &job, Err(err), false, start).await;
        return;
    }
    let timeout = Duration::from_millis(job.timeout_ms.max(1));
    let started_at = std::time::Instant::now();
    let kind = job.kind.to_string();
    if let Some(observer) = &ctx.options.observer {
        observer.started(&ctx.options.queue, &kind);
    }
    let work = ctx.executor.execute(
        job.clone(),
        Attempt {
            cancel: token.clone(),
            deadline: started_at + timeout,
        },
    );
    tokio::pin!(work);
    // On a cancel or a timeout the work gets a moment to stop its subprocesses and clean up
    // (it watches the same token) before it is dropped.
    let stop = |work| async move {
        let _ = tokio::time::timeout(STOP_GRACE, work).await;
    };
    let expiry = tokio::time::sleep(timeout);
    tokio::pin!(expiry);
    let start_due = tokio::time::sleep(ctx.options.start_report_after);
    tokio::pin!(start_due);
    let mut start_pending = !start_reported;
    let outcome = loop {
        tokio::select! {
            result = &mut work => break result,
            () = &mut expiry => {
                token.cancel();
                stop(work.as_mut()).await;
                break Err(Error::new(ErrorCode::Timeout, format!("attempt timed out after {} ms", job.timeout_ms)));
            }
            () = token.cancelled() => {
                stop(work.as_mut()).await;
                break Err(Error::new(ErrorCode::Cancelled, "cancelled by request"));
            }
            () = &mut start_due, if start_pending => {
                start_pending = false;
                start_reported = send(ctx, started.clone(), None).await;
            }
        }
    };
    forget(ctx, job.job_id);
    let elapsed = started_at.elapsed();
    let elapsed_ms = elapsed.as_millis();
    if let Some(observer) = &ctx.options.observer {
        let code = match &outcome {
            Ok(_) => "OK",
            Err(err) => err.code.as_str(),
        };
        observer.finished(&ctx.options.queue, &kind, code, elapsed);
    }
    match &outcome {
        Ok(_) => tracing::info!(elapsed_ms, "job succeeded"),
        Err(err) => tracing::warn!(elapsed_ms, code = %err.code, error = %err.message, "job failed"),
    }
    let start = (!start_reported).then_some(started_wall);
    report(ctx, message, &job, outcome, true, start).await;
}

fn forget(ctx: &Ctx, job_id: Uuid) {
    if let Ok(mut running) = ctx.running.lock() {
        running.remove(&job_id);
    }
}

/// Hands a report to the reporter, with the current span's trace context; false when the
/// reporter is gone (the worker is stopping).
async fn send(ctx: &Ctx, event: WorkerEvent, ack: Option<Arc<Message>>) -> bool {
    let report = Report {
        event,
        traceparent: mediamesh_telemetry::current_traceparent(),
    };
    ctx.reports.send(Outgoing { report, ack }).await.is_ok()
}

/// Hands the outcome to the reporter, which acks the job message once the outcome is stored
/// in `MM_EVENTS`. A failure is retryable when its code is and `retryable` allows it.
/// `started_at`: the attempt's start, when no start report was sent.
async fn report(
    ctx: &Ctx,
    message: Arc<Message>,
    job: &JobMessage,
    outcome: Result<serde_json::Value, Error>,
    retryable: bool,
    started_at: Option<chrono::DateTime<Utc>>,
) {
    let span = tracing::Span::current();
    match &outcome {
        Ok(_) => {
            span.record("outcome", "OK");
        }
        Err(err) => {
            span.record("outcome", err.code.as_str());
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", format!("{}: {}", err.code.as_str(), err.message));
        }
    }
    let event = match outcome {
        Ok(result) => WorkerEvent::Succeeded {
            job_id: job.job_id,
            attempt: job.attempt,
            worker_id: ctx.worker_id.clone(),
            at: Utc::now(),
            result,
            started_at,
        },
        Err(err) => WorkerEvent::Failed {
            job_id: job.job_id,
            attempt: job.attempt,
            worker_id: ctx.worker_id.clone(),
            at: Utc::now(),
            code: err.code.as_str().to_owned(),
            message: err.message,
            retryable: retryable && err.code.is_retryable(),
            started_at,
        },
    };
    if !send(ctx, event, Some(Arc::clone(&message))).await {
        // No reporter (stopping): JetStream redelivers the job to another worker.
        let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
    }
}
