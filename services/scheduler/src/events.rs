//! Applies workers' reports (stream `MM_EVENTS`) as guarded transitions, then tells live
//! watchers. A report is acked only after its transition committed; a report that changes
//! nothing (late, repeated, for another attempt) is acked and dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mediamesh_bus::async_nats::jetstream::AckKind;
use mediamesh_bus::{Bus, Update, WorkerEvent};
use mediamesh_store::{CompletedTransition, JobEventRow, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::SchedulerMetrics;
use tracing::Instrument;

use crate::SchedulerConfig;

pub async fn run(
    store: Store,
    bus: Bus,
    wake: Arc<Notify>,
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
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "events stream unavailable, retrying");
                pause(&shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    if handle(&store, &bus, &config, &metrics, message).await {
                        // A slot or a dependency may have freed up.
                        wake.notify_one();
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "events stream error, reconnecting");
                    break;
                }
                None => break,
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

async fn handle(
    store: &Store,
    bus: &Bus,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    message: mediamesh_bus::async_nats::jetstream::Message,
) -> bool {
    let event: WorkerEvent = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::error!(error = %err, subject = %message.subject, "dropping malformed worker event");
            let _ = message.ack_with(AckKind::Term).await;
            return false;
        }
    };
    let span = tracing::info_span!("apply_event", job_id = %event.job_id());
    mediamesh_bus::set_parent_from_headers(&span, message.headers.as_ref());
    // Instrumented, never entered across an await: a span entered in an async fn leaks onto
    // whatever else the thread runs meanwhile.
    apply_and_ack(store, bus, config, metrics, &event, message)
        .instrument(span)
        .await
}

async fn apply_and_ack(
    store: &Store,
    bus: &Bus,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    event: &WorkerEvent,
    message: mediamesh_bus::async_nats::jetstream::Message,
) -> bool {
    match apply(store, config, event).await {
        Ok(Some(transition)) => {
            for event in transition.events() {
                tracing::info!(job_id = %event.job_id, state = %event.state, attempt = event.attempt, "job transition");
                announce(bus, event).await;
            }
            let _ = message.ack().await;
            metrics.applied(event, &transition);
            true
        }
        Ok(None) => {
            tracing::debug!(job_id = %event.job_id(), "report changed nothing");
            let _ = message.ack().await;
            false
        }
        Err(err) => {
            tracing::warn!(error = %err, job_id = %event.job_id(), "applying report failed, will retry");
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
            false
        }
    }
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

pub async fn apply(
    store: &Store,
    config: &SchedulerConfig,
    event: &WorkerEvent,
) -> mediamesh_store::Result<Option<CompletedTransition>> {
    match event {
        WorkerEvent::Started {
            job_id,
            attempt,
            worker_id,
            at,
        } => store.mark_started(*job_id, to_i32(*attempt), worker_id, *at).await,
        WorkerEvent::Succeeded {
            job_id,
            attempt,
            worker_id,
            at,
            result,
        } => {
            store
                .mark_succeeded(*job_id, to_i32(*attempt), worker_id, result, *at)
                .await
        }
        WorkerEvent::Failed {
            job_id,
            attempt,
            worker_id,
            at,
            code,
            message,
            retryable,
        } => {
            store
                .mark_failed(
                    *job_id,
                    to_i32(*attempt),
                    worker_id,
                    code,
                    message,
                    *retryable,
                    config.backoff(*attempt),
                    *at,
                )
                .await
        }
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
