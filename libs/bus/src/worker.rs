//! The worker loop every job-running service shares: pulls jobs from one queue's durable
//! consumer as slots free up, runs each through the service's [`Executor`] with a
//! per-attempt timeout, heartbeats (in-progress acks) and cancellation, and reports each
//! outcome to `MM_EVENTS` before acking the job message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use futures::StreamExt;
use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{Bus, JobMessage, WorkerEvent};

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

type Running = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

/// How long a cancelled or timed-out job may take to stop its subprocesses and clean up.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Ctx {
    bus: Bus,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    worker_id: String,
    running: Running,
}

/// `<host>-<pid>-<random>`: names the worker in attempts and logs.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    let short = Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &short[..8])
}

/// Runs jobs from `options.queue` until `stop`, then waits for the jobs under way.
pub async fn run(bus: Bus, executor: Arc<dyn Executor>, options: WorkerOptions, stop: CancellationToken) {
    let concurrency = options.concurrency.max(1);
    let ctx = Ctx {
        worker_id: worker_id(),
        running: Arc::new(Mutex::new(HashMap::new())),
        bus,
        executor,
        options,
    };
    let cancels = tokio::spawn(listen_for_cancels(ctx.clone(), stop.clone()));
    let slots = Arc::new(Semaphore::new(concurrency));
    let queue = ctx.options.queue.clone();
    tracing::info!(worker_id = %ctx.worker_id, queue = %queue, concurrency, "worker started");
    'outer: while !stop.is_cancelled() {
        let consumer = match ctx.bus.job_consumer(&queue).await {
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
                () = stop.cancelled() => break 'outer,
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
            while let Some(message) = messages.next().await {
                match message {
                    Ok(message) => {
                        let Some(permit) = permits.pop() else { break };
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            handle(&ctx, message).await;
                            drop(permit);
                        });
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "pull ended");
                        break;
                    }
                }
            }
        }
    }
    // Drain: wait until every slot is free again, i.e. every job under way has finished.
    let total = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(total).await;
    cancels.abort();
    tracing::info!(queue = %queue, "worker stopped");
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

async fn listen_for_cancels(ctx: Ctx, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match ctx.bus.subscribe_cancels().await {
            Ok(mut subscriber) => {
                while let Some(message) = subscriber.next().await {
                    let id = message
                        .subject
                        .as_str()
                        .rsplit('.')
                        .next()
                        .and_then(|s| Uuid::parse_str(s).ok());
                    if let Some(id) = id
                        && let Ok(running) = ctx.running.lock()
                        && let Some(token) = running.get(&id)
                    {
                        tracing::info!(job_id = %id, "cancelling running job");
                        token.cancel();
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot subscribe to cancellations");
                pause(&stop, Duration::from_millis(500)).await;
            }
        }
    }
}

async fn handle(ctx: &Ctx, message: Message) {
    let job: JobMessage = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(err) => {
            tracing::error!(error = %err, subject = %message.subject, "dropping malformed job message");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
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
    run_job(ctx, message, job).instrument(span).await;
}

async fn run_job(ctx: &Ctx, message: Message, mut job: JobMessage) {
    // A message JetStream delivers again (its worker died or went silent past ack_wait) is a
    // new attempt: the scheduler closes the lost one and the attempt budget counts both.
    let delivered = message.info().map_or(1, |info| info.delivered.max(1));
    let dispatched_attempt = job.attempt;
    job.attempt = job
        .attempt
        .saturating_add(u32::try_from(delivered - 1).unwrap_or(u32::MAX));
    let message = Arc::new(message);
    let token = CancellationToken::new();
    // Registered before the cancellation check, so that a cancel arriving after the check
    // reaches the token.
    if let Ok(mut running) = ctx.running.lock() {
        running.insert(job.job_id, token.clone());
    }
    match ctx.bus.is_cancelled(job.job_id, dispatched_attempt).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!("job was cancelled while queued; not running it");
            forget(ctx, job.job_id);
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot check for cancellation; leaving the job for redelivery");
            forget(ctx, job.job_id);
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    }
    let started_wall = Utc::now();
    let started = WorkerEvent::Started {
        job_id: job.job_id,
        attempt: job.attempt,
        worker_id: ctx.worker_id.clone(),
        at: started_wall,
    };
    let defer_start = !ctx.options.start_report_after.is_zero();
    if !defer_start && let Err(err) = ctx.bus.publish_event(&started).await {
        tracing::warn!(error = %err, "cannot report start; leaving the job for redelivery");
        forget(ctx, job.job_id);
        let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        return;
    }
    // Whether the scheduler has been told of the start; if not, the outcome tells it.
    let mut start_reported = !defer_start;
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
        report(ctx, &message, &job, Err(err), false, start).await;
        return;
    }
    let heartbeat = {
        let message = Arc::clone(&message);
        let every = ctx.bus.config().ack_wait / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if message.ack_with(AckKind::Progress).await.is_err() {
                    tracing::debug!("heartbeat failed");
                }
            }
        })
    };
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
    let mut start_pending = defer_start;
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
                match ctx.bus.publish_event(&started).await {
                    Ok(()) => start_reported = true,
                    // The outcome will carry the start instead.
                    Err(err) => tracing::warn!(error = %err, "cannot report start; the outcome will"),
                }
            }
        }
    };
    heartbeat.abort();
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
    report(ctx, &message, &job, outcome, true, start).await;
}

fn forget(ctx: &Ctx, job_id: Uuid) {
    if let Ok(mut running) = ctx.running.lock() {
        running.remove(&job_id);
    }
}

/// Reports the outcome to `MM_EVENTS`, then acks the job message. A failure is retryable when
/// its code is and `retryable` allows it. `started_at`: the attempt's start, when no start
/// report was sent.
async fn report(
    ctx: &Ctx,
    message: &Message,
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
    for attempt in 0..5u32 {
        match ctx.bus.publish_event(&event).await {
            Ok(()) => {
                let _ = message.double_ack().await;
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, attempt, "cannot report outcome, retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
        }
    }
    // The outcome could not be recorded: let JetStream redeliver the job; running it again is
    // harmless (outputs go to the same keys).
    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
}
