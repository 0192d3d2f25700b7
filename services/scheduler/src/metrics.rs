//! The scheduler's Prometheus metrics.

use mediamesh_bus::{Bus, WorkerEvent};
use mediamesh_server::metrics::{Counter, Histogram, LATENCY_BUCKETS, Registry};
use mediamesh_store::{CompletedTransition, Store};

/// A job's kind and when its attempt started.
type KindAndStart = (String, Option<chrono::DateTime<chrono::Utc>>);

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub submitted: Counter,
    pub submit_latency: Histogram,
    outcomes: Counter,
    run_duration: Histogram,
    retries: Counter,
}

impl SchedulerMetrics {
    /// Registers the metrics; job counts and consumer lag are read from PostgreSQL and
    /// JetStream on every scrape.
    pub fn new(registry: &Registry, store: Store, bus: Bus) -> Self {
        let jobs = registry.gauge(
            "mediamesh_scheduler_jobs",
            "Jobs by queue, kind and state",
            &["queue", "kind", "state"],
        );
        let lag = registry.gauge(
            "mediamesh_jetstream_consumer_pending",
            "Job messages waiting in JetStream for a worker, by queue",
            &["queue"],
        );
        registry.on_scrape(move || {
            let (store, bus, jobs, lag) = (store.clone(), bus.clone(), jobs.clone(), lag.clone());
            async move {
                let rows: Result<Vec<(String, String, String, i64)>, _> = sqlx::query_as(
                    "SELECT queue, kind, state, count(*) FROM scheduler.jobs GROUP BY queue, kind, state",
                )
                .fetch_all(store.pool())
                .await;
                match rows {
                    Ok(rows) => jobs.replace(
                        rows.into_iter()
                            .map(|(queue, kind, state, n)| (vec![queue, kind, state], n as f64)),
                    ),
                    Err(err) => tracing::debug!(error = %err, "job counts for metrics"),
                }
                for queue in ["media", "inference"] {
                    if let Ok(mut consumer) = bus.job_consumer(queue).await
                        && let Ok(info) = consumer.info().await
                    {
                        lag.set(&[queue], info.num_pending as f64);
                    }
                }
            }
        });
        Self {
            submitted: registry.counter(
                "mediamesh_scheduler_jobs_submitted_total",
                "Jobs created, by kind",
                &["kind"],
            ),
            submit_latency: registry.histogram(
                "mediamesh_scheduler_submit_duration_seconds",
                "How long CreateJobs took",
                &[],
                LATENCY_BUCKETS,
            ),
            outcomes: registry.counter(
                "mediamesh_scheduler_job_outcomes_total",
                "Finished jobs, by kind, final state and error code (empty on success)",
                &["kind", "state", "code"],
            ),
            run_duration: registry.histogram(
                "mediamesh_scheduler_job_run_duration_seconds",
                "How long attempts ran (started to reported), by kind and outcome (OK or an error code)",
                &["kind", "outcome"],
                LATENCY_BUCKETS,
            ),
            retries: registry.counter(
                "mediamesh_scheduler_job_retries_total",
                "Failed attempts scheduled for a retry, by kind",
                &["kind"],
            ),
        }
    }

    /// Records a worker report the scheduler applied.
    pub async fn applied(&self, store: &Store, event: &WorkerEvent, transition: &CompletedTransition) {
        let (job_id, attempt, at, outcome) = match event {
            WorkerEvent::Started { .. } => return,
            WorkerEvent::Succeeded {
                job_id, attempt, at, ..
            } => (*job_id, *attempt, *at, "OK".to_owned()),
            WorkerEvent::Failed {
                job_id,
                attempt,
                at,
                code,
                ..
            } => (*job_id, *attempt, *at, code.clone()),
        };
        let row: Result<Option<KindAndStart>, _> = sqlx::query_as(
            "SELECT j.kind, a.started_at FROM scheduler.jobs j \
             LEFT JOIN scheduler.attempts a ON a.job_id = j.id AND a.attempt = $2 WHERE j.id = $1",
        )
        .bind(job_id)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .fetch_optional(store.pool())
        .await;
        let Ok(Some((kind, started_at))) = row else { return };
        if let Some(started_at) = started_at
            && let Ok(d) = (at - started_at).to_std()
        {
            self.run_duration.observe_duration(&[&kind, &outcome], d);
        }
        let state = transition.event.state.as_str();
        match state {
            "SUCCEEDED" => self.outcomes.inc(&[&kind, state, ""]),
            "FAILED" => self.outcomes.inc(&[&kind, state, &outcome]),
            _ if outcome != "OK" => self.retries.inc(&[&kind]),
            _ => {}
        }
    }
}
