//! `JobService` and `SchedulerInternalService`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};
use mediamesh_bus::{Bus, Update};

use mediamesh_core::{
    DEFAULT_PRIORITY, Error, ErrorCode, JobKind, JobState, from_timestamp, parse_id, tenant_of, to_timestamp,
};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::job_service_server::JobService;
use mediamesh_proto::v1::scheduler_internal_service_server::SchedulerInternalService;
use mediamesh_store::{
    FeedFilter, JobEventRow, JobFilter, JobQuota, JobRow, NewJob, RetryFilter, Store, Submit, Submitted,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::SchedulerConfig;
use crate::convert::{job_to_proto, policy_str};
use crate::dispatch::Dispatcher;
use crate::feed::{FeedSignal, ProgressBook, cursor, parse_cursor};

/// Dependencies of one job, at most.
const MAX_DEPENDENCIES: usize = 1000;

#[derive(Clone)]
pub struct JobApi {
    store: Store,
    bus: Bus,
    dispatcher: Dispatcher,
    config: SchedulerConfig,
    shutdown: CancellationToken,
    /// The `inference.*` kinds some configured provider serves; the others are refused.
    ai_kinds: Arc<std::collections::HashSet<JobKind>>,
    metrics: Option<crate::metrics::SchedulerMetrics>,
    progress: ProgressBook,
    /// Commits `CreateJobs` calls in groups.
    submitter: crate::submit::Submitter,
}

impl JobApi {
    pub fn new(
        store: Store,
        bus: Bus,
        dispatcher: Dispatcher,
        config: SchedulerConfig,
        shutdown: CancellationToken,
        ai_kinds: std::collections::HashSet<JobKind>,
    ) -> Self {
        Self {
            submitter: crate::submit::Submitter::spawn(store.clone(), None),
            store,
            bus,
            dispatcher,
            config,
            shutdown,
            ai_kinds: Arc::new(ai_kinds),
            metrics: None,
            progress: ProgressBook::new(),
        }
    }

    /// Where running jobs' latest progress comes from.
    pub fn with_progress(mut self, progress: ProgressBook) -> Self {
        self.progress = progress;
        self
    }

    pub fn with_metrics(mut self, metrics: crate::metrics::SchedulerMetrics) -> Self {
        // The submit task counts its groups (the one started without metrics ends with its
        // handle).
        self.submitter = crate::submit::Submitter::spawn(self.store.clone(), Some(metrics.submit_group.clone()));
        self.metrics = Some(metrics);
        self
    }

    async fn load(&self, tenant: &str, id: Uuid) -> Result<pb::Job, Error> {
        let row = self
            .store
            .get_job(tenant, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("job {id} not found")))?;
        self.to_proto(&row).await
    }

    async fn to_proto(&self, row: &JobRow) -> Result<pb::Job, Error> {
        let mut jobs = self.to_protos(std::slice::from_ref(row)).await?;
        jobs.pop().ok_or_else(|| Error::internal("job vanished while loading"))
    }

    /// The API form of the rows, with their attempts and dependencies (two queries in all).
    async fn to_protos(&self, rows: &[JobRow]) -> Result<Vec<pb::Job>, Error> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let attempts = self.store.attempts_of(&ids).await?;
        let dependencies = self.store.dependencies_of(&ids).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let own: Vec<_> = attempts.iter().filter(|a| a.job_id == row.id).cloned().collect();
                let mut job = job_to_proto(row, &own);
                self.add_progress(&mut job, row);
                job.depends_on = dependencies
                    .iter()
                    .filter(|(job_id, _)| *job_id == row.id)
                    .map(|(_, dependency)| dependency.to_string())
                    .collect();
                job
            })
            .collect())
    }

    fn validate(&self, tenant: &str, spec: pb::JobSpec) -> Result<NewJob, Error> {
        let pb::JobSpec {
            kind,
            media_id,
            payload_json,
            priority,
            max_attempts,
            timeout_ms,
            run_at,
            idempotency_key,
            depends_on,
            on_dependency_failure,
        } = spec;
        let kind = JobKind::parse(&kind)?;
        if kind.is_test() && !self.config.enable_test_kinds {
            return Err(Error::unsupported(format!(
                "job kind {kind} is for tests and is disabled (MM_ENABLE_TEST_KINDS)"
            )));
        }
        if kind == JobKind::Noop && !self.config.enable_noop {
            return Err(Error::unsupported(
                "job kind noop is for benchmarks and is disabled (MM_ENABLE_NOOP)",
            ));
        }
        if !kind.is_available() && !kind.is_test() && kind != JobKind::Noop {
            return Err(Error::unsupported(format!(
                "job kind {kind} has no worker in this release"
            )));
        }
        if kind.is_inference() && !self.ai_kinds.contains(&kind) {
            return Err(Error::unsupported(format!(
                "no AI provider is configured for {kind} (set MM_OPENAI_API_KEY, MM_OPENAI_BASE_URL or MM_CONFIG)"
            )));
        }
        let media_id = if media_id.is_empty() {
            if kind.needs_media() {
                return Err(Error::bad_input(format!("job kind {kind} needs a media_id")));
            }
            None
        } else {
            Some(parse_id("media_id", &media_id)?)
        };
        if depends_on.len() > MAX_DEPENDENCIES {
            return Err(Error::bad_input(format!(
                "{} dependencies; at most {MAX_DEPENDENCIES}",
                depends_on.len()
            )));
        }
        let depends_on = depends_on
            .iter()
            .map(|id| parse_id("depends_on", id))
            .collect::<Result<Vec<_>, _>>()?;
        if kind == JobKind::Aggregate && depends_on.is_empty() {
            return Err(Error::bad_input(
                "an aggregate job needs depends_on: the jobs it combines",
            ));
        }
        let on_dependency_failure = pb::DependencyPolicy::try_from(on_dependency_failure)
            .map_err(|_| Error::bad_input(format!("unknown on_dependency_failure {on_dependency_failure}")))?;
        let payload: serde_json::Value = if payload_json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&payload_json)
                .map_err(|e| Error::bad_input(format!("payload_json is not valid JSON: {e}")))?
        };
        if !payload.is_object() {
            return Err(Error::bad_input("payload_json must be a JSON object"));
        }
        if kind == JobKind::Aggregate {
            crate::aggregate::Plan::parse(&payload)?;
        }
        let defaults = self.config.kind_defaults(kind);
        let priority = match priority {
            0 => defaults.priority.unwrap_or(DEFAULT_PRIORITY),
            1..=10 => priority,
            other => return Err(Error::bad_input(format!("priority {other} is outside 1..=10"))),
        };
        let max_attempts = match max_attempts {
            0 => defaults.max_attempts.unwrap_or(3),
            1..=100 => max_attempts,
            other => return Err(Error::bad_input(format!("max_attempts {other} is outside 1..=100"))),
        };
        let timeout_ms = match timeout_ms {
            0 => defaults.timeout_ms.unwrap_or(300_000),
            1..=86_400_000 => timeout_ms,
            other => return Err(Error::bad_input(format!("timeout_ms {other} is over one day"))),
        };
        let run_at = match run_at {
            Some(ts) => from_timestamp(&ts).ok_or_else(|| Error::bad_input("run_at is not a valid time"))?,
            None => Utc::now(),
        };
        if idempotency_key.len() > 256 {
            return Err(Error::bad_input("idempotency_key is longer than 256 bytes"));
        }
        Ok(NewJob {
            id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            kind: kind.as_str().to_owned(),
            queue: kind.queue().as_str().to_owned(),
            priority: i16::try_from(priority).unwrap_or(5),
            media_id,
            payload,
            max_attempts: i32::try_from(max_attempts).unwrap_or(3),
            timeout_ms: i64::try_from(timeout_ms).unwrap_or(i64::MAX),
            run_at,
            idempotency_key: (!idempotency_key.is_empty()).then_some(idempotency_key),
            depends_on,
            on_dependency_failure: policy_str(on_dependency_failure).to_owned(),
            traceparent: mediamesh_telemetry::current_traceparent(),
        })
    }

    /// The latest progress of a running job; 1 for a finished one.
    fn add_progress(&self, job: &mut pb::Job, row: &JobRow) {
        match JobState::parse(&row.state) {
            Ok(JobState::Running) => {
                if let Some((progress, message)) = self.progress.latest(row.id, u32::try_from(row.attempt).unwrap_or(0))
                {
                    job.progress = progress;
                    job.progress_message = message;
                }
            }
            Ok(JobState::Succeeded) => job.progress = 1.0,
            _ => {}
        }
    }

    async fn transition_done(&self, event: &JobEventRow) {
        crate::events::announce(&self.bus, event).await;
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let id = parse_id("job_id", &request.get_ref().job_id)?;
        let job = self.load(&tenant, id).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        let pb::ListJobsRequest {
            media_id,
            state,
            kind,
            page_size,
            page_token,
            created_after,
            created_before,
            error_code,
            newest_first,
        } = request.into_inner();
        let limit = match page_size {
            0 => 100,
            1..=1000 => i64::from(page_size),
            other => return Err(Error::bad_input(format!("page_size {other} is over 1000")).into()),
        };
        let state = pb::JobState::try_from(state).map_err(|_| Error::bad_input(format!("unknown state {state}")))?;
        let filter = JobFilter {
            tenant,
            media_id: if media_id.is_empty() {
                None
            } else {
                Some(parse_id("media_id", &media_id)?)
            },
            state: JobState::from_proto(state),
            kind: if kind.is_empty() {
                None
            } else {
                Some(JobKind::parse(&kind)?.as_str().to_owned())
            },
            after: if page_token.is_empty() {
                None
            } else {
                Some(parse_id("page_token", &page_token)?)
            },
            created_after: time_filter("created_after", created_after.as_ref())?,
            created_before: time_filter("created_before", created_before.as_ref())?,
            error_code: error_code_filter(error_code)?,
            newest_first,
            limit,
        };
        let rows = self.store.list_jobs(&filter).await.map_err(Error::from)?;
        let next_page_token = if rows.len() as i64 == limit {
            rows.last().map(|r| r.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let jobs = self.to_protos(&rows).await?;
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = tenant_of(&request);
        let pb::WatchJobRequest { job_id, after_seq } = request.into_inner();
        let id = parse_id("job_id", &job_id)?;
        // Subscribe before reading the history, so that nothing falls between the two.
        let mut updates = self.bus.subscribe_updates(id).await.map_err(Error::from)?;
        let job = self.load(&tenant, id).await?;
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last_seq = i64::try_from(after_seq).unwrap_or(0);
            let mut current = job;
            let mut catch_up = tokio::time::interval(Duration::from_secs(2));
            loop {
                // Replay what is recorded after last_seq (first the history, later anything a
                // lost live update left out).
                let events = match api.store.job_events(id, last_seq).await {
                    Ok(events) => events,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(Error::from(err)))).await;
                        return;
                    }
                };
                if !events.is_empty() {
                    if let Ok(job) = api.load(&tenant, id).await {
                        current = job;
                    }
                    let count = events.len();
                    let ended = pb::JobState::try_from(current.state)
                        .ok()
                        .and_then(JobState::from_proto)
                        .is_some_and(JobState::is_terminal);
                    for (i, event) in events.into_iter().enumerate() {
                        last_seq = event.seq;
                        // A terminal state in the history ends the stream only when it is where
                        // the job is now (a retried job goes on after CANCELLED or FAILED).
                        let terminal =
                            ended && i + 1 == count && JobState::parse(&event.state).is_ok_and(JobState::is_terminal);
                        let message = transition_message(&event, &current);
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                        if terminal {
                            return;
                        }
                    }
                }
                // Wait for the next live update, a catch-up tick, the client leaving or shutdown.
                loop {
                    tokio::select! {
                        () = api.shutdown.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("server shutting down; resume with after_seq"))).await;
                            return;
                        }
                        () = tx.closed() => return,
                        _ = catch_up.tick() => break,
                        message = updates.next() => {
                            let Some(message) = message else { return };
                            match serde_json::from_slice::<Update>(&message.payload) {
                                Ok(Update::Transition { seq, .. }) if seq > last_seq => break,
                                Ok(Update::Progress { attempt, progress, message }) => {
                                    let reply = progress_message(id, attempt, progress, message);
                                    if tx.send(Ok(reply)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(Update::Transition { .. }) | Err(_) => {}
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as WatchStream))
    }

    type WatchJobsStream = WatchStream;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let tenant = tenant_of(&request);
        let pb::WatchJobsRequest {
            kind,
            state,
            media_id,
            cursor: after,
        } = request.into_inner();
        let state = pb::JobState::try_from(state).map_err(|_| Error::bad_input(format!("unknown state {state}")))?;
        let filter = FeedFilter {
            tenant,
            kind: if kind.is_empty() {
                None
            } else {
                Some(JobKind::parse(&kind)?.as_str().to_owned())
            },
            state: JobState::from_proto(state),
            media_id: if media_id.is_empty() {
                None
            } else {
                Some(parse_id("media_id", &media_id)?)
            },
        };
        // Listen before reading, so that nothing falls between the two.
        let mut signals = self.progress.subscribe();
        let mut position = if after.is_empty() {
            (self.store.feed_start().await.map_err(Error::from)?, 0)
        } else {
            parse_cursor(&after)
                .ok_or_else(|| Error::bad_input(format!("cursor {after:?} is not one WatchJobs gave")))?
        };
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            // Jobs whose progress this feed carries (tenant and filters checked once per job).
            let mut followed: std::collections::HashMap<Uuid, bool> = std::collections::HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                // Read until caught up.
                loop {
                    let events = match api.store.feed(&filter, position, 500).await {
                        Ok(events) => events,
                        Err(err) => {
                            let _ = tx.send(Err(Status::from(Error::from(err)))).await;
                            return;
                        }
                    };
                    let full = events.len() == 500;
                    let ids: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
                    let jobs = match api.store.jobs_by_id(&filter.tenant, &ids).await {
                        Ok(rows) => match api.to_protos(&rows).await {
                            Ok(jobs) => jobs,
                            Err(err) => {
                                let _ = tx.send(Err(Status::from(err))).await;
                                return;
                            }
                        },
                        Err(err) => {
                            let _ = tx.send(Err(Status::from(Error::from(err)))).await;
                            return;
                        }
                    };
                    for event in events {
                        position = (event.xid, event.seq);
                        let job = jobs.iter().find(|j| j.id == event.job_id.to_string());
                        let state = JobState::parse(&event.state).map_or(pb::JobState::Unspecified, JobState::to_proto);
                        let message = pb::WatchJobResponse {
                            seq: u64::try_from(event.seq).unwrap_or(0),
                            job_id: event.job_id.to_string(),
                            state: state as i32,
                            attempt: u32::try_from(event.attempt).unwrap_or(0),
                            at: Some(to_timestamp(event.at)),
                            progress: if state == pb::JobState::Succeeded { 1.0 } else { 0.0 },
                            message: String::new(),
                            job: job.cloned(),
                            cursor: cursor(event.xid, event.seq),
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                // Wait for a change, a progress report, a tick, the client leaving or shutdown.
                loop {
                    tokio::select! {
                        () = api.shutdown.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("server shutting down; resume with the last cursor"))).await;
                            return;
                        }
                        () = tx.closed() => return,
                        _ = tick.tick() => break,
                        signal = signals.recv() => match signal {
                            Ok(FeedSignal::Changed) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            Ok(FeedSignal::Progress(p)) => {
                                let carried = match followed.get(&p.job_id) {
                                    Some(carried) => *carried,
                                    None => {
                                        let carried = api
                                            .store
                                            .get_job(&filter.tenant, p.job_id)
                                            .await
                                            .ok()
                                            .flatten()
                                            .is_some_and(|row| {
                                                filter.kind.as_ref().is_none_or(|k| *k == row.kind)
                                                    && filter.media_id.is_none_or(|m| row.media_id == Some(m))
                                                    && filter.state.is_none_or(|s| s == JobState::Running)
                                            });
                                        if followed.len() > 10_000 {
                                            followed.clear();
                                        }
                                        followed.insert(p.job_id, carried);
                                        carried
                                    }
                                };
                                if carried {
                                    let reply = progress_message(p.job_id, p.attempt, p.progress, p.message);
                                    if tx.send(Ok(reply)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        },
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as WatchStream))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let id = parse_id("job_id", &request.get_ref().job_id)?;
        match self.store.cancel_job(&tenant, id).await.map_err(Error::from)? {
            Some((transition, covered)) => {
                self.dispatcher.changed([&transition]);
                let attempt = u32::try_from(covered).unwrap_or(0);
                if let Err(err) = self.bus.cancel(id, attempt).await {
                    tracing::warn!(error = %err, job_id = %id, "cancel signal not sent");
                }
                for event in transition.events() {
                    self.transition_done(event).await;
                }
                tracing::info!(job_id = %id, "job cancelled");
            }
            None => {
                let job = self.load(&tenant, id).await?;
                let state = pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified);
                if state != pb::JobState::Cancelled {
                    return Err(Error::bad_input(format!(
                        "job {id} has already ended ({})",
                        state.as_str_name().trim_start_matches("JOB_STATE_")
                    ))
                    .into());
                }
            }
        }
        let job = self.load(&tenant, id).await?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
    }

    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let id = parse_id("job_id", &request.get_ref().job_id)?;
        let retried = match self.store.retry_job(&tenant, id).await.map_err(Error::from)? {
            Some((row, transition)) => {
                self.dispatcher.changed([&transition]);
                self.transition_done(&transition.event).await;
                self.to_proto(&row).await?
            }
            None => {
                let job = self.load(&tenant, id).await?;
                let state = pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified);
                return Err(Error::bad_input(format!(
                    "job {id} is {}; only FAILED or CANCELLED jobs can be retried",
                    state.as_str_name().trim_start_matches("JOB_STATE_")
                ))
                .into());
            }
        };
        Ok(Response::new(pb::RetryJobResponse { job: Some(retried) }))
    }

    async fn retry_jobs(
        &self,
        request: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        let pb::RetryJobsRequest {
            state,
            kind,
            error_code,
            finished_after,
            finished_before,
            limit,
            dry_run,
            media_id,
            created_after,
            created_before,
        } = request.into_inner();
        let state = match pb::JobState::try_from(state) {
            Ok(pb::JobState::Unspecified | pb::JobState::Failed) => JobState::Failed,
            Ok(pb::JobState::Cancelled) => JobState::Cancelled,
            _ => return Err(Error::bad_input("state must be FAILED or CANCELLED").into()),
        };
        let error_code = error_code_filter(error_code)?;
        let time = |ts: Option<prost_types::Timestamp>, name: &str| -> Result<_, Error> {
            ts.map(|ts| from_timestamp(&ts).ok_or_else(|| Error::bad_input(format!("{name} is not a valid time"))))
                .transpose()
        };
        let filter = RetryFilter {
            tenant,
            state,
            kind: if kind.is_empty() {
                None
            } else {
                Some(JobKind::parse(&kind)?.as_str().to_owned())
            },
            error_code,
            finished_after: time(finished_after, "finished_after")?,
            finished_before: time(finished_before, "finished_before")?,
            media_id: if media_id.is_empty() {
                None
            } else {
                Some(parse_id("media_id", &media_id)?)
            },
            created_after: time_filter("created_after", created_after.as_ref())?,
            created_before: time_filter("created_before", created_before.as_ref())?,
            limit: match limit {
                0 => 1000,
                1..=1000 => i64::from(limit),
                other => return Err(Error::bad_input(format!("limit {other} is over 1000")).into()),
            },
            dry_run,
        };
        let retried = self.store.retry_jobs(&filter).await.map_err(Error::from)?;
        if !dry_run && !retried.is_empty() {
            self.dispatcher.reread(retried.iter().map(|(id, _)| *id).collect());
            tracing::info!(count = retried.len(), "jobs retried by filter");
        }
        let mut job_ids = Vec::with_capacity(retried.len());
        for (id, event) in retried {
            if let Some(event) = event {
                self.transition_done(&event).await;
            }
            job_ids.push(id.to_string());
        }
        Ok(Response::new(pb::RetryJobsResponse { job_ids }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let tenant = tenant_of(&request);
        let counts = self.store.queue_counts(&tenant).await.map_err(Error::from)?;
        let rates = self.store.queue_rates(&tenant).await.map_err(Error::from)?;
        let mut stats: Vec<pb::QueueStats> = Vec::new();
        fn entry<'a>(stats: &'a mut Vec<pb::QueueStats>, queue: &str, kind: &str) -> &'a mut pb::QueueStats {
            let index = match stats.iter().position(|s| s.queue == queue && s.kind == kind) {
                Some(index) => index,
                None => {
                    stats.push(pb::QueueStats {
                        queue: queue.to_owned(),
                        kind: kind.to_owned(),
                        ..Default::default()
                    });
                    stats.len() - 1
                }
            };
            &mut stats[index]
        }
        for row in counts {
            let entry = entry(&mut stats, &row.queue, &row.kind);
            let n = u64::try_from(row.count).unwrap_or(0);
            match JobState::parse(&row.state) {
                Ok(JobState::Queued) => entry.queued += n,
                Ok(JobState::Scheduled) => entry.scheduled += n,
                Ok(JobState::Running) => entry.running += n,
                Ok(JobState::Succeeded) => entry.succeeded += n,
                Ok(JobState::Failed) => entry.failed += n,
                Ok(JobState::Cancelled) => entry.cancelled += n,
                Err(_) => {}
            }
        }
        for row in rates {
            let entry = entry(&mut stats, &row.queue, &row.kind);
            entry.succeeded_per_minute = row.succeeded_5m as f64 / 5.0;
            entry.failed_per_minute = row.failed_5m as f64 / 5.0;
            entry.oldest_wait_seconds = row.oldest_wait_secs.unwrap_or(0.0).max(0.0);
            entry.mean_run_seconds = row.mean_run_secs.unwrap_or(0.0);
        }
        stats.sort_by(|a, b| (&a.queue, &a.kind).cmp(&(&b.queue, &b.kind)));
        Ok(Response::new(pb::GetQueueStatsResponse { stats }))
    }
}

/// A progress report for watchers: no seq, no cursor (it is not part of the history).
fn progress_message(job_id: Uuid, attempt: u32, progress: f32, message: String) -> pb::WatchJobResponse {
    pb::WatchJobResponse {
        seq: 0,
        job_id: job_id.to_string(),
        state: pb::JobState::Running as i32,
        attempt,
        at: Some(to_timestamp(Utc::now())),
        progress,
        message,
        job: None,
        cursor: String::new(),
    }
}

/// A time filter of a request: absent, or a valid time.
/// An error-code filter from a request: unspecified means any.
fn error_code_filter(code: i32) -> Result<Option<String>, Error> {
    match pb::ErrorCode::try_from(code) {
        Ok(pb::ErrorCode::Unspecified) => Ok(None),
        Ok(code) => Ok(Some(ErrorCode::try_from(code)?.as_str().to_owned())),
        Err(_) => Err(Error::bad_input(format!("unknown error_code {code}"))),
    }
}

fn time_filter(field: &str, at: Option<&prost_types::Timestamp>) -> Result<Option<chrono::DateTime<Utc>>, Error> {
    at.map(|ts| from_timestamp(ts).ok_or_else(|| Error::bad_input(format!("{field} is not a valid time"))))
        .transpose()
}

fn transition_message(event: &JobEventRow, job: &pb::Job) -> pb::WatchJobResponse {
    let state = JobState::parse(&event.state).map_or(pb::JobState::Unspecified, JobState::to_proto);
    pb::WatchJobResponse {
        seq: u64::try_from(event.seq).unwrap_or(0),
        job_id: event.job_id.to_string(),
        state: state as i32,
        attempt: u32::try_from(event.attempt).unwrap_or(0),
        at: Some(to_timestamp(event.at)),
        progress: if state == pb::JobState::Succeeded { 1.0 } else { 0.0 },
        message: String::new(),
        job: Some(job.clone()),
        cursor: String::new(),
    }
}

#[tonic::async_trait]
impl SchedulerInternalService for JobApi {
    async fn create_jobs(
        &self,
        request: Request<pb::CreateJobsRequest>,
    ) -> Result<Response<pb::CreateJobsResponse>, Status> {
        let timer = std::time::Instant::now();
        let pb::CreateJobsRequest { tenant, jobs, quota } = request.into_inner();
        let tenant = if tenant.is_empty() {
            mediamesh_core::DEFAULT_TENANT.to_owned()
        } else {
            tenant
        };
        if jobs.is_empty() {
            return Ok(Response::new(pb::CreateJobsResponse { jobs: Vec::new() }));
        }
        let new_jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                self.validate(&tenant, spec)
                    .map_err(|e| e.context(&format!("jobs[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quota = quota.map(|q| JobQuota {
            jobs_per_hour: q.jobs_per_hour,
            jobs_per_day: q.jobs_per_day,
            running_jobs: q.running_jobs,
        });
        let no_dependencies: Vec<bool> = new_jobs.iter().map(|job| job.depends_on.is_empty()).collect();
        let count = new_jobs.len();
        let submitted = self
            .submitter
            .submit(Submit {
                tenant: tenant.clone(),
                jobs: new_jobs,
                quota,
            })
            .await
            .map_err(Error::from)?;
        let created = match submitted {
            Submitted::Created(created) => created,
            Submitted::Refused(hit) => {
                let window = if hit.quota == "jobs_per_hour" { "hour" } else { "day" };
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "tenant {tenant:?} is over its {} quota: {} jobs in the last {window}, at most {}; \
                         these {} would not fit (retry in {:.0} s)",
                        hit.quota,
                        hit.used,
                        hit.limit,
                        count,
                        hit.retry_after_secs.ceil()
                    ),
                )
                .retry_after(hit.retry_after_secs)
                .into());
            }
        };
        let created: Vec<_> = created.into_iter().zip(no_dependencies).collect();
        let inserted: Vec<&JobRow> = created
            .iter()
            .filter(|((_, new), _)| *new)
            .map(|((row, _), _)| row)
            .collect();
        self.dispatcher
            .submitted(&inserted, quota.map(|q| (tenant.as_str(), q.running_jobs)));
        let mut out = Vec::with_capacity(created.len());
        for ((row, inserted), no_dependencies) in created {
            if inserted {
                tracing::info!(job_id = %row.id, kind = %row.kind, media_id = ?row.media_id, "job queued");
                if let Some(metrics) = &self.metrics {
                    metrics.submitted.inc(&[&row.kind]);
                }
            }
            let job = if inserted && no_dependencies {
                // Nothing recorded yet beyond the row itself.
                job_to_proto(&row, &[])
            } else {
                self.to_proto(&row).await?
            };
            out.push(pb::CreatedJob {
                job: Some(job),
                existing: !inserted,
            });
        }
        if let Some(metrics) = &self.metrics {
            metrics.submit_latency.observe_duration(&[], timer.elapsed());
        }
        Ok(Response::new(pb::CreateJobsResponse { jobs: out }))
    }
}
