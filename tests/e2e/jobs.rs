//! Job semantics through the public API: budgets and backoff, timeouts and heartbeats,
//! cancellation, delays, retry by filter, retention, dependencies and aggregates, per-kind
//! defaults, fairness between tenants, caps and priority aging. The `test.sleep` kind (enabled
//! by the test kit) stands in for work whose length and outcome a test must control.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_testkit::{Mesh, Service, blob_files, read_fixture, upload, wait_job, watch_to_end};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{JOB_DEADLINE, as_tenant, code_of, submit};

fn sleep_spec(payload: Value) -> pb::JobSpec {
    pb::JobSpec {
        kind: "test.sleep".to_owned(),
        payload_json: payload.to_string(),
        ..Default::default()
    }
}

/// Submits the specs in one `SubmitJobs` call as `tenant`; returns the job ids in order.
async fn submit_all(ingest: &mut IngestServiceClient<Channel>, tenant: &str, specs: Vec<pb::JobSpec>) -> Vec<String> {
    ingest
        .submit_jobs(as_tenant(pb::SubmitJobsRequest { jobs: specs }, tenant))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|c| c.job.unwrap().id)
        .collect()
}

async fn get(jobs: &mut JobServiceClient<Channel>, job_id: &str) -> pb::Job {
    jobs.get_job(pb::GetJobRequest {
        job_id: job_id.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
    .job
    .unwrap()
}

fn at(ts: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    mediamesh_core::from_timestamp(ts.as_ref().unwrap()).unwrap()
}

fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap()
}

fn metadata(job: &pb::Job) -> Value {
    serde_json::from_str(&job.result.as_ref().unwrap().metadata_json).unwrap()
}

/// Waits until `check` holds for the job (GetJob every 20 ms), within `deadline`.
async fn wait_until(
    jobs: &mut JobServiceClient<Channel>,
    job_id: &str,
    deadline: Duration,
    check: impl Fn(&Result<pb::Job, tonic::Status>) -> bool,
) -> Result<pb::Job, tonic::Status> {
    let started = std::time::Instant::now();
    loop {
        let job = jobs
            .get_job(pb::GetJobRequest {
                job_id: job_id.to_owned(),
            })
            .await
            .map(|r| r.into_inner().job.unwrap());
        if check(&job) {
            return job;
        }
        assert!(started.elapsed() < deadline, "job {job_id}: condition not met: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job that always fails with a retryable code runs exactly its budget of attempts, each
/// after the backoff (base 200 ms doubling, +-20% jitter, in the test kit), then ends FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_job_uses_its_budget_with_backoff_between_attempts() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut spec = sleep_spec(json!({ "fail": "PROVIDER_DOWN" }));
    spec.max_attempts = 3;
    let job = submit(&mut ingest, spec).await;
    let history = watch_to_end(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    let states: Vec<_> = history
        .iter()
        .filter(|m| m.seq > 0)
        .map(|m| pb::JobState::try_from(m.state).unwrap())
        .collect();
    use pb::JobState::{Failed, Queued, Running, Scheduled};
    // The recorded history: each failed attempt waits SCHEDULED (backoff), the last one fails.
    assert_eq!(
        states,
        [Queued, Running, Scheduled, Running, Scheduled, Running, Failed]
    );
    let job = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&job), Failed);
    assert_eq!(job.attempt, 3);
    assert_eq!(job.attempts.len(), 3, "{:?}", job.attempts);
    assert_eq!(code_of_job(&job), pb::ErrorCode::ProviderDown);
    for attempt in &job.attempts {
        assert_eq!(attempt.outcome, Failed as i32);
        assert_eq!(attempt.error.as_ref().unwrap().code, pb::ErrorCode::ProviderDown as i32);
    }
    let gap = |i: usize| at(&job.attempts[i + 1].started_at) - at(&job.attempts[i].finished_at);
    let (first, second) = (gap(0), gap(1));
    assert!(first.num_milliseconds() >= 160, "first backoff {first}");
    assert!(second.num_milliseconds() >= 320, "second backoff {second}");
    assert!(second > first, "backoff grows: {first} then {second}");
    mesh.shutdown().await.unwrap();
}

fn code_of_job(job: &pb::Job) -> pb::ErrorCode {
    pb::ErrorCode::try_from(job.error.as_ref().unwrap().code).unwrap()
}

/// A job that hangs past its timeout fails TIMEOUT and is retried; a long job whose worker
/// heartbeats runs past several ack_waits without being handed to anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_job_times_out_and_retries_while_a_heartbeating_job_is_left_alone() {
    let mesh = Mesh::start_with(|c| c.media.ack_wait_ms = 400).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut hanging = sleep_spec(json!({ "ms": 60_000 }));
    hanging.timeout_ms = 300;
    hanging.max_attempts = 2;
    let hanging = submit(&mut ingest, hanging).await;
    let mut long = sleep_spec(json!({ "ms": 1_600 }));
    long.timeout_ms = 20_000;
    let long = submit(&mut ingest, long).await;

    let hanging = wait_job(&mut jobs, &hanging.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&hanging), pb::JobState::Failed);
    assert_eq!(hanging.attempts.len(), 2);
    for attempt in &hanging.attempts {
        assert_eq!(attempt.error.as_ref().unwrap().code, pb::ErrorCode::Timeout as i32);
        let ran = at(&attempt.finished_at) - at(&attempt.started_at);
        assert!(
            ran.num_milliseconds() >= 290 && ran.num_milliseconds() < 5_000,
            "the attempt was stopped at its timeout: {ran}"
        );
    }

    let long = wait_job(&mut jobs, &long.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&long), pb::JobState::Succeeded);
    assert_eq!(long.attempts.len(), 1, "no redelivery: {:?}", long.attempts);
    let ran = at(&long.attempts[0].finished_at) - at(&long.attempts[0].started_at);
    assert!(ran.num_milliseconds() >= 1_600, "ran {ran}, 4 ack_waits");
    mesh.shutdown().await.unwrap();
}

/// Cancelling a running job stops its work within a second: the subprocess it started is
/// killed, the job ends CANCELLED, and the worker's slot is free for the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_its_subprocess_within_a_second() {
    let mesh = Mesh::start_with(|c| c.media.worker_concurrency = 1).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let job = submit(&mut ingest, sleep_spec(json!({ "ms": 60_000, "subprocess": true }))).await;
    // The job reports its subprocess as progress, which GetJob carries once the scheduler has
    // recorded the attempt RUNNING (so the cancel hits a RUNNING job). A watch started after
    // the submit could miss it: the worker can start the job before the watch listens.
    let running = wait_until(&mut jobs, &job.id, JOB_DEADLINE, |j| {
        j.as_ref().is_ok_and(|j| j.progress_message.starts_with("pid "))
    })
    .await
    .unwrap();
    let pid: i32 = running.progress_message["pid ".len()..].parse().unwrap();
    assert!(alive(pid), "the subprocess {pid} runs");
    assert!(!running.attempts.is_empty(), "{running:?}");

    let cancelled_at = std::time::Instant::now();
    assert_eq!(state(&cancel(&mut jobs, &job.id).await), pb::JobState::Cancelled);
    while alive(pid) {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "subprocess {pid} still alive 1 s after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&job), pb::JobState::Cancelled);
    // The attempt closes when the worker reports how it stopped.
    let job = wait_until(&mut jobs, &job.id, JOB_DEADLINE, |j| {
        j.as_ref()
            .is_ok_and(|j| j.attempts.first().is_some_and(|a| a.finished_at.is_some()))
    })
    .await
    .unwrap();
    assert_eq!(job.attempts[0].outcome, pb::JobState::Cancelled as i32);
    // The only slot is free again.
    let next = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
    assert_eq!(
        state(&wait_job(&mut jobs, &next.id, JOB_DEADLINE).await.unwrap()),
        pb::JobState::Succeeded
    );
    mesh.shutdown().await.unwrap();
}

/// Whether the process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `MM_JOBS` holds at least `n` messages (waiting or being worked on).
async fn wait_for_job_messages(js: &mediamesh_bus::async_nats::jetstream::Context, n: u64) {
    let started = std::time::Instant::now();
    loop {
        let mut stream = js.get_stream("MM_JOBS").await.unwrap();
        if stream.info().await.unwrap().state.messages >= n {
            return;
        }
        assert!(started.elapsed() < JOB_DEADLINE, "jobs never reached JetStream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels the job; returns it as the cancel left it.
async fn cancel(jobs: &mut JobServiceClient<Channel>, job_id: &str) -> pb::Job {
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: job_id.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
    .job
    .unwrap()
}

/// A job cancelled while its message waits in JetStream never runs: the worker that gets the
/// message sees the cancellation and drops it, and the job's outputs never appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_queued_never_runs() {
    let mut mesh = Mesh::start_with(|c| c.media.worker_concurrency = 1).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    mesh.stop_service(Service::Media).await.unwrap();
    let uploaded = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    let media_id = uploaded.media.unwrap().id;
    let thumbnails = uploaded
        .jobs
        .iter()
        .find(|j| j.kind == "media.thumbnails")
        .unwrap()
        .clone();
    let probe = uploaded.jobs.iter().find(|j| j.kind == "media.probe").unwrap().clone();

    // Both jobs are in JetStream, waiting for a worker.
    let nats = mediamesh_bus::async_nats::connect(mesh.nats.url()).await.unwrap();
    let js = mediamesh_bus::async_nats::jetstream::new(nats);
    wait_for_job_messages(&js, 2).await;
    let cancelled = cancel(&mut jobs, &thumbnails.id).await;
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);

    mesh.start_service(Service::Media).await.unwrap();
    // One job at a time, in stream order: once a job submitted now has run, the cancelled
    // job's message has been handled.
    let probe = wait_job(&mut jobs, &probe.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&probe), pb::JobState::Succeeded);
    let sentinel = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
    assert_eq!(
        state(&wait_job(&mut jobs, &sentinel.id, JOB_DEADLINE).await.unwrap()),
        pb::JobState::Succeeded
    );
    let mut stream = js.get_stream("MM_JOBS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "every message was consumed"
    );

    let thumbnails = wait_job(&mut jobs, &thumbnails.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&thumbnails), pb::JobState::Cancelled);
    assert!(thumbnails.attempts.is_empty(), "{:?}", thumbnails.attempts);
    let files = blob_files(&mesh);
    assert!(
        files
            .iter()
            .all(|f| !f.starts_with(&format!("media/{media_id}/")) || f.ends_with("/original")),
        "no thumbnail was written: {files:?}"
    );
    mesh.shutdown().await.unwrap();
}

/// A job cancelled while its message waits behind a running job, on a worker that is up the
/// whole time, never runs: the cancellation reaches the worker before the message does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_worker_is_busy_never_runs() {
    let mesh = Mesh::start_with(|c| c.media.worker_concurrency = 1).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let busy = submit(&mut ingest, sleep_spec(json!({ "ms": 60_000 }))).await;
    wait_until(&mut jobs, &busy.id, JOB_DEADLINE, |j| {
        j.as_ref().is_ok_and(|j| !j.attempts.is_empty())
    })
    .await
    .unwrap();
    let waiting = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
    // Its message is in JetStream (the busy job's is too, unacked), and the worker, with no
    // free slot, has not pulled it.
    let nats = mediamesh_bus::async_nats::connect(mesh.nats.url()).await.unwrap();
    let js = mediamesh_bus::async_nats::jetstream::new(nats.clone());
    wait_for_job_messages(&js, 2).await;
    // The job's body reports progress as soon as it runs: listen for it.
    let mut updates = nats.subscribe(format!("mm.updates.{}", waiting.id)).await.unwrap();
    let cancelled = cancel(&mut jobs, &waiting.id).await;
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);
    // Free the slot: the worker pulls the cancelled job's message next, then the sentinel's.
    cancel(&mut jobs, &busy.id).await;
    let sentinel = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
    assert_eq!(
        state(&wait_job(&mut jobs, &sentinel.id, JOB_DEADLINE).await.unwrap()),
        pb::JobState::Succeeded
    );
    let waiting = get(&mut jobs, &waiting.id).await;
    assert_eq!(state(&waiting), pb::JobState::Cancelled);
    assert!(waiting.attempts.is_empty(), "it never started: {:?}", waiting.attempts);
    // Its body never ran: any progress it published came before the sentinel ran, so the
    // server sent it before the answer to this flush.
    nats.flush().await.unwrap();
    while let Some(Some(message)) = updates.next().now_or_never() {
        let update: mediamesh_bus::Update = serde_json::from_slice(&message.payload).unwrap();
        assert!(
            !matches!(update, mediamesh_bus::Update::Progress { .. }),
            "the cancelled job ran: {update:?}"
        );
    }
    let mut stream = js.get_stream("MM_JOBS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "every message was consumed"
    );
    mesh.shutdown().await.unwrap();
}

/// Workers ask JetStream nothing per job (no stream or message look-up to learn of
/// cancellations), and send their reports in as few messages as are ready together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_make_no_jetstream_api_call_per_job() {
    const JOBS: usize = 200;
    let mesh = Mesh::start_with(|c| c.media.worker_concurrency = 16).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let nats = mediamesh_bus::async_nats::connect(mesh.nats.url()).await.unwrap();
    let js = mediamesh_bus::async_nats::jetstream::new(nats);
    // Warm: the worker has its consumer and has read the cancellations.
    let first = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
    assert_eq!(
        state(&wait_job(&mut jobs, &first.id, JOB_DEADLINE).await.unwrap()),
        pb::JobState::Succeeded
    );
    let api_before = js.query_account().await.unwrap().requests.total;
    let reports_before = js
        .get_stream("MM_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let ids = submit_all(
        &mut ingest,
        "default",
        (0..JOBS).map(|_| sleep_spec(json!({ "ms": 1 }))).collect(),
    )
    .await;
    for id in &ids {
        assert_eq!(
            state(&wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap()),
            pb::JobState::Succeeded
        );
    }
    let api_calls = js.query_account().await.unwrap().requests.total - api_before;
    let messages = js
        .get_stream("MM_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
        - reports_before;
    println!("{JOBS} jobs: {api_calls} JetStream API calls, {messages} report messages");
    // Before, two per job (the stream's info and its last cancellation).
    assert!(api_calls < 20, "{api_calls} JetStream API calls for {JOBS} jobs");
    assert!(messages as usize <= JOBS, "{messages} report messages for {JOBS} jobs");
    mesh.shutdown().await.unwrap();
}

/// A job submitted with a run_at in the future waits SCHEDULED and starts no earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_waits_scheduled_until_its_run_at() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let run_at = Utc::now() + chrono::Duration::milliseconds(1_500);
    let mut spec = sleep_spec(json!({ "ms": 1 }));
    spec.run_at = Some(mediamesh_core::to_timestamp(run_at));
    let job = submit(&mut ingest, spec).await;
    assert_eq!(state(&job), pb::JobState::Scheduled);
    let job = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&job), pb::JobState::Succeeded);
    assert!(at(&job.attempts[0].started_at) >= run_at, "started before its run_at");
    mesh.shutdown().await.unwrap();
}

/// RetryJobs takes the FAILED jobs that match its filters (error code, kind, time), and only
/// those; a dry run lists them and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_by_filter_requeues_only_the_matching_failures() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    // Fail the first attempt only, so that a retry succeeds.
    let failing = |code: &str| sleep_spec(json!({ "fail": code, "fail_attempts": 1 }));
    let specs: Vec<_> = (0..3)
        .map(|_| failing("BAD_INPUT"))
        .chain((0..2).map(|_| failing("NOT_FOUND")))
        .collect();
    let ids = submit_all(&mut ingest, "default", specs).await;
    for id in &ids {
        assert_eq!(
            state(&wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap()),
            pb::JobState::Failed
        );
    }
    let filter = |code: pb::ErrorCode, dry_run: bool| pb::RetryJobsRequest {
        error_code: code as i32,
        dry_run,
        ..Default::default()
    };
    let mut dry = jobs
        .retry_jobs(filter(pb::ErrorCode::BadInput, true))
        .await
        .unwrap()
        .into_inner()
        .job_ids;
    dry.sort();
    let mut bad_input = ids[..3].to_vec();
    bad_input.sort();
    assert_eq!(dry, bad_input);
    for id in &ids {
        let job = get(&mut jobs, id).await;
        assert_eq!(state(&job), pb::JobState::Failed, "a dry run changes nothing");
    }
    // Filters that match nothing.
    let none = pb::RetryJobsRequest {
        error_code: pb::ErrorCode::BadInput as i32,
        finished_before: Some(mediamesh_core::to_timestamp(Utc::now() - chrono::Duration::hours(1))),
        ..Default::default()
    };
    assert!(jobs.retry_jobs(none).await.unwrap().into_inner().job_ids.is_empty());
    let other_kind = pb::RetryJobsRequest {
        kind: "media.probe".to_owned(),
        ..Default::default()
    };
    assert!(
        jobs.retry_jobs(other_kind)
            .await
            .unwrap()
            .into_inner()
            .job_ids
            .is_empty()
    );
    let bad = jobs
        .retry_jobs(pb::RetryJobsRequest {
            state: pb::JobState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&bad), mediamesh_core::ErrorCode::BadInput);

    let mut retried = jobs
        .retry_jobs(filter(pb::ErrorCode::BadInput, false))
        .await
        .unwrap()
        .into_inner()
        .job_ids;
    retried.sort();
    assert_eq!(retried, bad_input);
    for id in &ids[..3] {
        let job = wait_until(&mut jobs, id, JOB_DEADLINE, |j| {
            j.as_ref().is_ok_and(|j| state(j) == pb::JobState::Succeeded)
        })
        .await
        .unwrap();
        assert_eq!(job.attempts.len(), 2);
    }
    for id in &ids[3..] {
        let job = get(&mut jobs, id).await;
        assert_eq!(state(&job), pb::JobState::Failed);
        assert_eq!(job.attempts.len(), 1);
    }
    // The rates count what ended in the last five minutes.
    let stats = jobs
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats;
    let sleep = stats.iter().find(|s| s.kind == "test.sleep").unwrap();
    assert_eq!((sleep.succeeded, sleep.failed), (3, 2));
    assert!((sleep.succeeded_per_minute - 0.6).abs() < 1e-9, "{sleep:?}");
    assert!((sleep.failed_per_minute - 0.4).abs() < 1e-9, "{sleep:?}");
    mesh.shutdown().await.unwrap();
}

/// Retention keeps the newest finished jobs per state and deletes the rest with the outputs
/// no remaining job refers to; the media and its original stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_finished_jobs_and_their_outputs() {
    let mesh = Mesh::start_with(|c| {
        c.scheduler.retain_succeeded = 2;
        c.scheduler.retention_interval_ms = 100;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let uploaded = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    let media_id = uploaded.media.unwrap().id;
    for job in &uploaded.jobs {
        assert_eq!(
            state(&wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap()),
            pb::JobState::Succeeded
        );
    }
    let derivatives = |files: &[String]| {
        files
            .iter()
            .filter(|f| f.starts_with(&format!("media/{media_id}/")) && !f.ends_with("/original"))
            .count()
    };
    assert_eq!(derivatives(&blob_files(&mesh)), 3, "three thumbnails written");
    let mut newer = Vec::new();
    for _ in 0..2 {
        let job = submit(&mut ingest, sleep_spec(json!({ "ms": 1 }))).await;
        wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        newer.push(job.id);
    }
    for job in &uploaded.jobs {
        let gone = wait_until(&mut jobs, &job.id, JOB_DEADLINE, |j| {
            j.as_ref().is_err_and(|s| s.code() == tonic::Code::NotFound)
        })
        .await;
        assert!(gone.is_err());
    }
    for id in &newer {
        assert!(jobs.get_job(pb::GetJobRequest { job_id: id.clone() }).await.is_ok());
    }
    // Their history went with them, and the newer jobs' stayed.
    let db = sqlx::PgPool::connect(&mesh.postgres.url("mediamesh")).await.unwrap();
    let history = async |ids: Vec<uuid::Uuid>| -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM scheduler.job_events WHERE job_id = ANY($1)), \
                    (SELECT count(*) FROM scheduler.attempts WHERE job_id = ANY($1))",
        )
        .bind(ids)
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let ids = |ids: Vec<&String>| {
        ids.into_iter()
            .map(|id| id.parse().unwrap())
            .collect::<Vec<uuid::Uuid>>()
    };
    assert_eq!(
        history(ids(uploaded.jobs.iter().map(|j| &j.id).collect())).await,
        (0, 0),
        "no events or attempts of the pruned jobs left"
    );
    let (events, attempts) = history(ids(newer.iter().collect())).await;
    assert!(
        events >= 6 && attempts == 2,
        "the kept jobs keep theirs: {events} events, {attempts} attempts"
    );
    db.close().await;
    let files = blob_files(&mesh);
    assert_eq!(derivatives(&files), 0, "outputs of pruned jobs deleted: {files:?}");
    assert!(files.contains(&format!("media/{media_id}/original")), "{files:?}");
    let media = ingest
        .get_media(pb::GetMediaRequest {
            media_id: media_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(media.jobs.is_empty());
    mesh.shutdown().await.unwrap();
}

/// An aggregate over 20 jobs waits for all of them, then sums and counts their results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_over_twenty_jobs_combines_their_results() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let children: Vec<_> = (0..20u64)
        .map(|i| {
            let items: Vec<String> = (0..i % 4).map(|n| format!("item-{i}-{n}")).collect();
            sleep_spec(json!({ "ms": 20 + i * 5, "result": { "items": items, "total": i } }))
        })
        .collect();
    let children: Vec<String> = submit_all(&mut ingest, "default", children).await;
    let aggregate = submit(
        &mut ingest,
        pb::JobSpec {
            kind: "aggregate".to_owned(),
            payload_json: json!({ "sum": ["/total"], "count": ["/items"] }).to_string(),
            depends_on: children.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(aggregate.depends_on.len(), 20);
    assert!(
        aggregate.pending_dependencies > 0,
        "submitted while its dependencies run"
    );
    let aggregate = wait_job(&mut jobs, &aggregate.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&aggregate), pb::JobState::Succeeded, "{aggregate:?}");
    let result = metadata(&aggregate);
    let total: u64 = (0..20).sum();
    let items: u64 = (0..20).map(|i| i % 4).sum();
    assert_eq!(result["sum"]["/total"], json!(total));
    assert_eq!(result["count"]["/items"], json!(items));
    assert_eq!(result["dependencies"], json!(20));
    assert_eq!(result["succeeded"], json!(20));
    let started = at(&aggregate.attempts[0].started_at);
    for id in &children {
        let child = get(&mut jobs, id).await;
        assert!(at(&child.finished_at) <= started, "the aggregate ran after every child");
    }
    mesh.shutdown().await.unwrap();
}

/// A failed dependency fails (FAIL, the default) or skips (SKIP) the job that waits for it,
/// down the graph; with CONTINUE the job runs anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dependency_fails_or_skips_its_dependents_as_their_policy_says() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut bad = sleep_spec(json!({ "ms": 200, "fail": "BAD_INPUT" }));
    bad.max_attempts = 1;
    let bad = submit(&mut ingest, bad).await;
    let good = submit(&mut ingest, sleep_spec(json!({ "ms": 1, "result": { "n": 1 } }))).await;
    let over = |policy: pb::DependencyPolicy, depends_on: Vec<String>| pb::JobSpec {
        kind: "aggregate".to_owned(),
        payload_json: json!({ "sum": ["/n"] }).to_string(),
        depends_on,
        on_dependency_failure: policy as i32,
        ..Default::default()
    };
    let both = vec![bad.id.clone(), good.id.clone()];
    let fail = submit(&mut ingest, over(pb::DependencyPolicy::Unspecified, both.clone())).await;
    let skip = submit(&mut ingest, over(pb::DependencyPolicy::Skip, both.clone())).await;
    let cont = submit(&mut ingest, over(pb::DependencyPolicy::Continue, both)).await;
    let grandparent = submit(&mut ingest, over(pb::DependencyPolicy::Fail, vec![fail.id.clone()])).await;

    let fail = wait_job(&mut jobs, &fail.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&fail), pb::JobState::Failed);
    assert_eq!(code_of_job(&fail), pb::ErrorCode::DependencyFailed);
    assert!(fail.attempts.is_empty(), "it never ran");
    let skip = wait_job(&mut jobs, &skip.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&skip), pb::JobState::Cancelled);
    assert!(skip.error.as_ref().unwrap().message.starts_with("skipped"));
    let cont = wait_job(&mut jobs, &cont.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&cont), pb::JobState::Succeeded);
    let result = metadata(&cont);
    assert_eq!(
        (result["succeeded"].clone(), result["failed"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(result["sum"]["/n"], json!(1));
    let grandparent = wait_job(&mut jobs, &grandparent.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(state(&grandparent), pb::JobState::Failed);

    // A dependency that ended FAILED before the job was submitted ends it at once.
    let late = submit(&mut ingest, over(pb::DependencyPolicy::Fail, vec![bad.id.clone()])).await;
    assert_eq!(state(&late), pb::JobState::Failed);
    // Bad dependencies are refused.
    let missing = ingest
        .submit_job(pb::SubmitJobRequest {
            job: Some(over(pb::DependencyPolicy::Fail, vec![uuid::Uuid::now_v7().to_string()])),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&missing), mediamesh_core::ErrorCode::NotFound);
    let other_tenant = ingest
        .submit_job(as_tenant(
            pb::SubmitJobRequest {
                job: Some(over(pb::DependencyPolicy::Fail, vec![good.id.clone()])),
            },
            "someone-else",
        ))
        .await
        .unwrap_err();
    assert_eq!(code_of(&other_tenant), mediamesh_core::ErrorCode::NotFound);
    let empty = ingest
        .submit_job(pb::SubmitJobRequest {
            job: Some(over(pb::DependencyPolicy::Fail, Vec::new())),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&empty), mediamesh_core::ErrorCode::BadInput);
    mesh.shutdown().await.unwrap();
}

/// A spec that leaves budget, timeout and priority at 0 gets the kind's configured defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_kind_defaults_come_from_configuration() {
    let mesh = Mesh::start_with(|c| {
        c.scheduler.job_defaults = mediamesh_testkit::JobDefaults(
            [(
                "test.sleep".to_owned(),
                mediamesh_testkit::KindDefaults {
                    max_attempts: Some(7),
                    timeout_ms: Some(1_234),
                    priority: Some(9),
                },
            )]
            .into_iter()
            .collect(),
        );
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let job = submit(&mut ingest, sleep_spec(json!({}))).await;
    assert_eq!((job.max_attempts, job.timeout_ms, job.priority), (7, 1_234, 9));
    let mut spec = sleep_spec(json!({}));
    spec.max_attempts = 2;
    let job = submit(&mut ingest, spec).await;
    assert_eq!(
        (job.max_attempts, job.timeout_ms),
        (2, 1_234),
        "the spec wins over the default"
    );
    mesh.shutdown().await.unwrap();
}

/// One tenant's 10,000 queued jobs do not hold back another tenant's 10: tenants take turns
/// at every dispatch, so the second tenant's jobs finish while the first tenant's backlog has
/// barely moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_ten_thousand_queued_jobs_does_not_delay_another_tenants_ten() {
    let mesh = Mesh::start_with(|c| {
        c.scheduler.max_in_flight = 4;
        c.scheduler.prefetch = 4;
        c.media.worker_concurrency = 4;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    for _ in 0..10 {
        let batch = (0..1000).map(|_| sleep_spec(json!({ "ms": 20 }))).collect();
        ingest
            .submit_jobs(as_tenant(pb::SubmitJobsRequest { jobs: batch }, "big"))
            .await
            .unwrap();
    }
    let big_done = |stats: &[pb::QueueStats]| stats.iter().map(|s| s.succeeded).sum::<u64>();
    let before = big_done(
        &jobs
            .get_queue_stats(as_tenant(pb::GetQueueStatsRequest {}, "big"))
            .await
            .unwrap()
            .into_inner()
            .stats,
    );
    let small = submit_all(
        &mut ingest,
        "small",
        (0..10).map(|_| sleep_spec(json!({ "ms": 20 }))).collect(),
    )
    .await;
    for id in &small {
        let mut stream = jobs
            .watch_job(as_tenant(
                pb::WatchJobRequest {
                    job_id: id.clone(),
                    after_seq: 0,
                },
                "small",
            ))
            .await
            .unwrap()
            .into_inner();
        let mut last = pb::JobState::Unspecified;
        tokio::time::timeout(JOB_DEADLINE, async {
            while let Some(message) = stream.next().await {
                last = pb::JobState::try_from(message.unwrap().state).unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(last, pb::JobState::Succeeded);
    }
    let after = big_done(
        &jobs
            .get_queue_stats(as_tenant(pb::GetQueueStatsRequest {}, "big"))
            .await
            .unwrap()
            .into_inner()
            .stats,
    );
    // Alone, the small tenant's jobs would wait for ~10,000 others; taking turns, they wait
    // for about as many of the big tenant's jobs as their own number, plus what was in flight.
    assert!(
        after - before < 100,
        "the big tenant finished {} jobs while the small tenant's 10 waited",
        after - before
    );
    mesh.shutdown().await.unwrap();
}

/// The per-tenant cap bounds how many of one tenant's jobs run at once, even with idle
/// workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_tenant_cap_bounds_concurrent_jobs() {
    let mesh = Mesh::start_with(|c| {
        c.scheduler.max_in_flight_per_tenant = 2;
        c.media.worker_concurrency = 6;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let ids = submit_all(
        &mut ingest,
        "default",
        (0..6).map(|_| sleep_spec(json!({ "ms": 300 }))).collect(),
    )
    .await;
    let mut spans = Vec::new();
    for id in &ids {
        let job = wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap();
        assert_eq!(state(&job), pb::JobState::Succeeded);
        let attempt = &job.attempts[0];
        spans.push((at(&attempt.started_at), at(&attempt.finished_at)));
    }
    let overlap = |t: DateTime<Utc>| spans.iter().filter(|(s, e)| *s <= t && t < *e).count();
    let most = spans.iter().map(|(s, _)| overlap(*s)).max().unwrap();
    assert_eq!(most, 2, "at most two at once, and the cap is used: {spans:?}");
    mesh.shutdown().await.unwrap();
}

/// Aging: a priority-1 job that has been due for two minutes goes before fresh priority-10
/// jobs (one level per 10 s waited here), so low priorities are never starved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_low_priority_job_ages_past_fresh_high_priority_ones() {
    let mesh = Mesh::start_with(|c| {
        c.scheduler.priority_aging_secs = 10;
        c.scheduler.max_in_flight = 1;
        c.media.worker_concurrency = 1;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut specs: Vec<_> = (0..3)
        .map(|_| {
            let mut spec = sleep_spec(json!({ "ms": 20 }));
            spec.priority = 10;
            spec
        })
        .collect();
    let mut old = sleep_spec(json!({ "ms": 20 }));
    old.priority = 1;
    old.run_at = Some(mediamesh_core::to_timestamp(
        Utc::now() - chrono::Duration::seconds(120),
    ));
    specs.push(old);
    let ids: Vec<String> = submit_all(&mut ingest, "default", specs).await;
    let mut starts = Vec::new();
    for id in &ids {
        let job = wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap();
        starts.push(at(&job.attempts[0].started_at));
    }
    let old_start = starts[3];
    assert!(
        starts[..3].iter().all(|s| *s > old_start),
        "the aged job started first: {starts:?}"
    );
    mesh.shutdown().await.unwrap();
}

/// SubmitJobs commits all or nothing: one bad spec refuses the whole batch, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_jobs_is_all_or_nothing() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut specs: Vec<_> = (0..3).map(|_| sleep_spec(json!({ "ms": 1 }))).collect();
    specs.push(pb::JobSpec {
        kind: "media.nonsense".to_owned(),
        ..Default::default()
    });
    let err = ingest
        .submit_jobs(pb::SubmitJobsRequest { jobs: specs })
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), mediamesh_core::ErrorCode::BadInput);
    assert!(err.message().contains("jobs[3]"), "{}", err.message());
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(listed.is_empty(), "nothing was created: {listed:?}");
    let too_many = ingest
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: (0..1001).map(|_| sleep_spec(json!({}))).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&too_many), mediamesh_core::ErrorCode::BadInput);
    mesh.shutdown().await.unwrap();
}
