//! Moves due jobs into JetStream: tenants in turn, highest effective priority first, while the
//! queue has room under its caps (in flight, prefetched, per tenant). The attempt is committed
//! before the message is sent; a message lost between the two (crash, broker down) is sent
//! again after `redispatch_after`. `aggregate` jobs are not sent anywhere: the scheduler runs
//! them itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use mediamesh_bus::{Bus, JobMessage};
use mediamesh_core::Queue;
use mediamesh_store::{DispatchLimits, DueJob, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::SchedulerConfig;
use crate::metrics::SchedulerMetrics;

const BATCH: i64 = 256;
const QUEUES: [Queue; 2] = [Queue::Media, Queue::Inference];

pub async fn run(
    store: Store,
    bus: Bus,
    wake: Arc<Notify>,
    config: SchedulerConfig,
    worker_id: String,
    shutdown: CancellationToken,
    metrics: SchedulerMetrics,
) {
    let interval = Duration::from_millis(config.dispatch_interval_ms);
    let redispatch_after = Duration::from_secs(config.redispatch_after_secs);
    let limits = DispatchLimits {
        batch: BATCH,
        max_in_flight: i64::from(config.max_in_flight),
        prefetch: i64::from(config.prefetch.max(1)),
        per_tenant: i64::from(config.max_in_flight_per_tenant),
        aging_secs: config.priority_aging_secs as f64,
    };
    let mut last_stale_check = Instant::now();
    loop {
        let mut full_batch = false;
        for queue in QUEUES {
            match store.claim_due_jobs(queue.as_str(), limits).await {
                Ok(jobs) => {
                    full_batch |= jobs.len() as i64 == BATCH;
                    for job in &jobs {
                        metrics.dispatched(job);
                    }
                    publish_all(&store, &bus, jobs, true).await;
                }
                Err(err) => tracing::warn!(error = %err, queue = queue.as_str(), "claiming due jobs failed"),
            }
        }
        // Aggregates: few and cheap, run here one after the other.
        let aggregates = DispatchLimits {
            prefetch: BATCH,
            ..limits
        };
        match store.claim_due_jobs(Queue::Scheduler.as_str(), aggregates).await {
            Ok(jobs) => {
                for job in &jobs {
                    match crate::aggregate::run(&store, job, &worker_id).await {
                        Ok(transitions) => {
                            for event in transitions.iter().flat_map(|t| t.events()) {
                                tracing::info!(job_id = %event.job_id, state = %event.state, "job transition");
                                crate::events::announce(&bus, event).await;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, job_id = %job.id, "aggregate failed to run; it will be retried");
                            if let Err(err) = store.undispatch(job.id, job.attempt).await {
                                tracing::warn!(error = %err, job_id = %job.id, "undispatch failed");
                            }
                        }
                    }
                }
                full_batch |= !jobs.is_empty();
            }
            Err(err) => tracing::warn!(error = %err, "claiming aggregates failed"),
        }
        if last_stale_check.elapsed() >= redispatch_after / 4 {
            last_stale_check = Instant::now();
            for queue in QUEUES {
                match store
                    .stale_dispatches(queue.as_str(), redispatch_after.as_secs_f64(), BATCH)
                    .await
                {
                    Ok(jobs) if !jobs.is_empty() => {
                        let lost = lost_messages(&bus, jobs).await;
                        if !lost.is_empty() {
                            tracing::warn!(
                                count = lost.len(),
                                queue = queue.as_str(),
                                "job messages lost from JetStream; publishing them again"
                            );
                            publish_all(&store, &bus, lost, false).await;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "looking for stale dispatches failed"),
                }
            }
        }
        if full_batch {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The stale dispatches whose message is no longer in `MM_JOBS` (or was never recorded as
/// published). One still there is only waiting for a worker, and is left alone.
async fn lost_messages(bus: &Bus, jobs: Vec<DueJob>) -> Vec<DueJob> {
    let checks = jobs.into_iter().map(|job| async move {
        let Some(seq) = job.dispatch_seq.and_then(|s| u64::try_from(s).ok()) else {
            return Some(job);
        };
        match bus.job_message_exists(seq).await {
            Ok(true) => None,
            Ok(false) => Some(job),
            Err(err) => {
                tracing::debug!(error = %err, job_id = %job.id, "cannot check the job message; next round");
                None
            }
        }
    });
    join_all(checks).await.into_iter().flatten().collect()
}

async fn publish_all(store: &Store, bus: &Bus, jobs: Vec<DueJob>, fresh: bool) {
    let sends = jobs.into_iter().map(|job| {
        // The dispatch joins the submitter's trace; the message carries it on to the worker.
        let span = tracing::info_span!(
            "dispatch",
            otel.kind = "producer",
            job_id = %job.id,
            kind = %job.kind,
            tenant = %job.tenant,
            attempt = job.attempt,
        );
        if let Some(traceparent) = &job.traceparent {
            mediamesh_telemetry::set_parent(&span, |key| (key == "traceparent").then(|| traceparent.clone()));
        }
        publish_one(store, bus, job, fresh).instrument(span)
    });
    let published: Vec<_> = join_all(sends).await.into_iter().flatten().collect();
    // Without the sequence the stale check resends the attempt after a while: harmless, the
    // duplicate window or the guarded updates absorb it.
    if let Err(err) = store.record_dispatches(&published).await {
        tracing::warn!(error = %err, "cannot record dispatch sequences");
    }
}

/// Sends one claimed attempt; returns (job id, attempt, stream sequence) once stored.
async fn publish_one(store: &Store, bus: &Bus, job: DueJob, fresh: bool) -> Option<(uuid::Uuid, i32, i64)> {
    {
        let message = JobMessage {
            job_id: job.id,
            tenant: job.tenant,
            kind: job.kind,
            queue: job.queue,
            attempt: u32::try_from(job.attempt).unwrap_or(0),
            media_id: job.media_id,
            payload: job.payload,
            timeout_ms: u64::try_from(job.timeout_ms).unwrap_or(0),
            max_attempts: u32::try_from(job.max_attempts).unwrap_or(0),
        };
        match bus.publish_job(&message).await {
            Ok(seq) => {
                tracing::debug!(job_id = %job.id, attempt = job.attempt, kind = %message.kind, "dispatched");
                i64::try_from(seq).ok().map(|seq| (job.id, job.attempt, seq))
            }
            Err(err) => {
                tracing::warn!(error = %err, job_id = %job.id, attempt = job.attempt, "dispatch failed");
                // Give the attempt back so the next round sends it again at once; if the
                // message did reach JetStream, the same Nats-Msg-Id makes the second send a
                // no-op.
                if fresh && let Err(err) = store.undispatch(job.id, job.attempt).await {
                    tracing::warn!(error = %err, job_id = %job.id, "undispatch failed; the stale check will resend it");
                }
                None
            }
        }
    }
}
