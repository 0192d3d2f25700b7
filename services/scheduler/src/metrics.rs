//! The scheduler's Prometheus metrics.

use mediamesh_bus::{Bus, WorkerEvent};
use mediamesh_server::metrics::{Counter, Histogram, LATENCY_BUCKETS, Registry};
use mediamesh_store::{CompletedTransition, Store};

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub submitted: Counter,
    pub submit_latency: Histogram,
    /// `CreateJobs` calls committed together, per commit.
    pub submit_group: Histogram,
    outcomes: Counter,
    run_duration: Histogram,
    dispatch_wait: Histogram,
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
            submit_group: registry.histogram(
                "mediamesh_scheduler_submit_group_calls",
                "CreateJobs calls committed in one transaction (group commit)",
                &[],
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
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
            dispatch_wait: registry.histogram(
                "mediamesh_scheduler_dispatch_wait_seconds",
                "How long due attempts waited for the dispatcher (from due to sent to JetStream), by kind",
                &["kind"],
                LATENCY_BUCKETS,
            ),
            retries: registry.counter(
                "mediamesh_scheduler_job_retries_total",
                "Failed attempts scheduled for a retry, by kind",
                &["kind"],
            ),
        }
    }

    /// Records an attempt the dispatcher claimed.
    /// Records a dispatch of `kind` that waited `waited_secs` since it became due.
    pub fn dispatched(&self, kind: &str, waited_secs: f64) {
        self.dispatch_wait.observe(&[kind], waited_secs);
    }

    /// Records a worker report the scheduler applied.
    pub fn applied(&self, event: &WorkerEvent, transition: &CompletedTransition) {
        let (at, outcome) = match event {
            WorkerEvent::Started { .. } => return,
            WorkerEvent::Succeeded { at, .. } => (*at, "OK"),
            WorkerEvent::Failed { at, code, .. } => (*at, code.as_str()),
        };
        let Some(run) = &transition.attempt_run else { return };
        let kind = run.kind.as_str();
        if let Ok(d) = (at - run.started_at).to_std() {
            self.run_duration.observe_duration(&[kind, outcome], d);
        }
        let state = transition.event.state.as_str();
        match state {
            "SUCCEEDED" => self.outcomes.inc(&[kind, state, ""]),
            "FAILED" => self.outcomes.inc(&[kind, state, outcome]),
            _ if outcome != "OK" => self.retries.inc(&[kind]),
            _ => {}
        }
    }
}
