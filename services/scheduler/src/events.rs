//! Applies workers' reports (stream `MM_EVENTS`, a batch of a worker's reports per message)
//! as guarded transitions, then tells live watchers. Messages that arrive together are applied
//! together: up to [`BATCH`] messages in one transaction, one commit for the lot. A message is
//! acked only after its reports' transitions committed; a report that changes nothing (late,
//! repeated, for another attempt) is dropped.

use std::time::Duration;

use futures::StreamExt;
use mediamesh_bus::async_nats::jetstream::AckKind;
use mediamesh_bus::{Bus, ReportBatch, Update, WorkerEvent};
use mediamesh_store::{CompletedTransition, JobEventRow, Report, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics::SchedulerMetrics;
use tracing::Instrument;

use crate::SchedulerConfig;
use crate::dispatch::Dispatcher;

/// Reports applied in one transaction, at most.
pub const BATCH: usize = 256;

pub async fn run(
    store: Store,
    bus: Bus,
    dispatcher: Dispatcher,
    config: SchedulerConfig,
    shutdown: CancellationToken,
    metrics: SchedulerMetrics,
) {
    while !shutdown.is_cancelled() {
        let consumer = match bus.events_consumer().await {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(error = %err, "events consumer unavailable, retrying");
                pause(&shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        let messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "events stream unavailable, retrying");
                pause(&shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        // Whatever has arrived, up to BATCH, goes in one transaction.
        let mut batches = messages.ready_chunks(BATCH);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = batches.next() => next,
            };
            let Some(batch) = next else { break };
            let mut broken = false;
            let mut ready = Vec::with_capacity(batch.len());
            for item in batch {
                match item {
                    Ok(message) => ready.push(message),
                    Err(err) => {
                        tracing::warn!(error = %err, "events stream error, reconnecting");
                        broken = true;
                    }
                }
            }
            if !ready.is_empty() {
                handle_batch(&store, &bus, &dispatcher, &config, &metrics, ready).await;
            }
            if broken {
                break;
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// A worker's report as it arrived: the report, the message that carried it (with others of
/// the same worker), and the span that applies it.
struct Arrived {
    event: WorkerEvent,
    message: usize,
    span: tracing::Span,
}

/// Applies the reports of a batch of messages (each a worker's batch of reports) in one
/// transaction, and tells the dispatcher what changed. A message is acked once all of its
/// reports are applied, and asked for again when any of them failed (applying a report twice
/// changes nothing).
async fn handle_batch(
    store: &Store,
    bus: &Bus,
    dispatcher: &Dispatcher,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    messages: Vec<mediamesh_bus::async_nats::jetstream::Message>,
) {
    let mut arrived = Vec::with_capacity(messages.len());
    let mut carriers = Vec::with_capacity(messages.len());
    for message in messages {
        let header_traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        match ReportBatch::decode(&message.payload, header_traceparent.as_deref()) {
            Ok(batch) => {
                for report in batch.reports {
                    let span = tracing::info_span!("apply_event", job_id = %report.event.job_id());
                    if let Some(traceparent) = &report.traceparent {
                        mediamesh_telemetry::set_parent(&span, |key| {
                            (key == "traceparent").then(|| traceparent.clone())
                        });
                    }
                    arrived.push(Arrived {
                        event: report.event,
                        message: carriers.len(),
                        span,
                    });
                }
                carriers.push(message);
            }
            Err(err) => {
                tracing::error!(error = %err, subject = %message.subject, "dropping malformed worker reports");
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
    if arrived.is_empty() {
        for message in &carriers {
            let _ = message.ack().await;
        }
        return;
    }
    // An outcome that carries its start (the attempt was too short to report it) stands for
    // two reports: the start first.
    let mut reports: Vec<Report<'_>> = Vec::with_capacity(arrived.len() + 1);
    let mut owner: Vec<usize> = Vec::with_capacity(arrived.len() + 1);
    for (i, a) in arrived.iter().enumerate() {
        if let Some(at) = a.event.unreported_start() {
            reports.push(Report::Started {
                job_id: a.event.job_id(),
                attempt: to_i32(a.event.attempt()),
                worker_id: a.event.worker_id(),
                at,
            });
            owner.push(i);
        }
        reports.push(report(config, &a.event));
        owner.push(i);
    }
    let results: Vec<mediamesh_store::Result<Option<CompletedTransition>>> = match store.apply_reports(&reports).await {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(err) if reports.len() > 1 => {
            // One bad report (or a deadlock with another scheduler) must not hold up the rest.
            tracing::debug!(error = %err, reports = reports.len(), "batch failed; applying its reports one by one");
            let mut results = Vec::with_capacity(reports.len());
            for report in &reports {
                results.push(
                    store
                        .apply_reports(std::slice::from_ref(report))
                        .await
                        .map(|mut r| r.pop().flatten()),
                );
            }
            results
        }
        // A single report: its error is its result.
        Err(err) => vec![Err(err)],
    };
    let mut per_report: Vec<Vec<mediamesh_store::Result<Option<CompletedTransition>>>> =
        arrived.iter().map(|_| Vec::new()).collect();
    for (i, result) in owner.into_iter().zip(results) {
        per_report[i].push(result);
    }
    // Slots freed, retries and released dependents: the dispatcher first.
    dispatcher.changed(
        per_report
            .iter()
            .flatten()
            .filter_map(|r| r.as_ref().ok().and_then(Option::as_ref)),
    );
    let mut failed = vec![false; carriers.len()];
    for (a, results) in arrived.iter().zip(per_report) {
        // Instrumented, never entered across an await: a span entered in an async fn leaks
        // onto whatever else the thread runs meanwhile.
        let report_failed = conclude(bus, metrics, &a.event, results)
            .instrument(a.span.clone())
            .await;
        failed[a.message] |= report_failed;
    }
    for (message, failed) in carriers.iter().zip(failed) {
        if failed {
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
        } else {
            let _ = message.ack().await;
        }
    }
}

/// Tells watchers of what a report changed (a start and an outcome, or one of them); returns
/// whether any of it could not be applied.
async fn conclude(
    bus: &Bus,
    metrics: &SchedulerMetrics,
    event: &WorkerEvent,
    results: Vec<mediamesh_store::Result<Option<CompletedTransition>>>,
) -> bool {
    let mut failed = false;
    for result in results {
        match result {
            Ok(Some(transition)) => {
                for event in transition.events() {
                    tracing::info!(job_id = %event.job_id, state = %event.state, attempt = event.attempt, "job transition");
                    announce(bus, event).await;
                }
                metrics.applied(event, &transition);
            }
            Ok(None) => tracing::debug!(job_id = %event.job_id(), "report changed nothing"),
            Err(err) => {
                tracing::warn!(error = %err, job_id = %event.job_id(), "applying report failed, will retry");
                failed = true;
            }
        }
    }
    failed
}

/// Tells live watchers of a recorded transition (core NATS, best effort: a watcher that
/// misses it catches up from `job_events`).
pub async fn announce(bus: &Bus, event: &JobEventRow) {
    let update = Update::Transition {
        seq: event.seq,
        state: event.state.clone(),
        attempt: u32::try_from(event.attempt).unwrap_or(0),
    };
    if let Err(err) = bus.publish_update(event.job_id, &update).await {
        tracing::debug!(error = %err, "live update not sent");
    }
}

/// The store's form of a worker's report.
fn report<'a>(config: &SchedulerConfig, event: &'a WorkerEvent) -> Report<'a> {
    match event {
        WorkerEvent::Started {
            job_id,
            attempt,
            worker_id,
            at,
        } => Report::Started {
            job_id: *job_id,
            attempt: to_i32(*attempt),
            worker_id,
            at: *at,
        },
        WorkerEvent::Succeeded {
            job_id,
            attempt,
            worker_id,
            at,
            result,
            ..
        } => Report::Succeeded {
            job_id: *job_id,
            attempt: to_i32(*attempt),
            worker_id,
            result,
            at: *at,
        },
        WorkerEvent::Failed {
            job_id,
            attempt,
            worker_id,
            at,
            code,
            message,
            retryable,
            ..
        } => Report::Failed {
            job_id: *job_id,
            attempt: to_i32(*attempt),
            worker_id,
            code,
            message,
            retryable: *retryable,
            backoff: config.backoff(*attempt),
            at: *at,
        },
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
