use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, Service, read_fixture, upload, wait_job};

use crate::{JOB_DEADLINE, code_of};

/// Cancel a job before a worker takes it, retry it, and watch it run; the same bytes
/// uploaded twice give the same media and no new jobs; stats count it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_dedup_and_stats() {
    let mut mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();

    mesh.stop_service(Service::Media).await.unwrap();
    let data = read_fixture("Dragonfly_by_Bolly.jpg");
    let first = upload(&mut ingest, "d.jpg", &data).await.unwrap();
    let thumbs = first
        .jobs
        .iter()
        .find(|j| j.kind == "media.thumbnails")
        .unwrap()
        .clone();

    let cancelled = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: thumbs.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    let again = upload(&mut ingest, "same-bytes.jpg", &data).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.media.unwrap().id, first.media.as_ref().unwrap().id);
    assert_eq!(again.jobs.len(), 2, "the earlier jobs, no new ones");

    mesh.start_service(Service::Media).await.unwrap();
    let probe = first.jobs.iter().find(|j| j.kind == "media.probe").unwrap();
    assert_eq!(
        wait_job(&mut jobs, &probe.id, JOB_DEADLINE).await.unwrap().state,
        pb::JobState::Succeeded as i32
    );
    // The cancelled job stays cancelled even though its message may still reach the worker.
    let still = jobs
        .get_job(pb::GetJobRequest {
            job_id: thumbs.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(still.state, pb::JobState::Cancelled as i32);
    let status = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: probe.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&status),
        ErrorCode::BadInput,
        "a finished job cannot be cancelled"
    );

    let retried = jobs
        .retry_job(pb::RetryJobRequest {
            job_id: thumbs.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(retried.state, pb::JobState::Queued as i32);
    let done = wait_job(&mut jobs, &thumbs.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{:?}", done.error);
    let status = jobs
        .retry_job(pb::RetryJobRequest {
            job_id: thumbs.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&status),
        ErrorCode::BadInput,
        "a succeeded job cannot be retried"
    );

    let stats = jobs
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats;
    let by_kind = |kind: &str| stats.iter().find(|s| s.kind == kind).cloned().unwrap();
    assert_eq!(by_kind("media.probe").succeeded, 1);
    assert_eq!(by_kind("media.thumbnails").succeeded, 1);
    assert!(stats.iter().all(|s| s.queue == "media"));

    let listed = jobs
        .list_jobs(pb::ListJobsRequest {
            media_id: first.media.unwrap().id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 2);
    mesh.shutdown().await.unwrap();
}

/// The `noop` kind is refused unless enabled; enabled, hundreds of them finish through the
/// batched report path with one attempt and one event per state each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noop_jobs_are_gated_and_their_batched_reports_record_each_state_once() {
    let mesh = Mesh::start().await.unwrap();
    let noop = || pb::JobSpec {
        kind: "noop".to_owned(),
        ..Default::default()
    };
    let status = mesh
        .ingest()
        .submit_job(pb::SubmitJobRequest { job: Some(noop()) })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::Unsupported, "{status:?}");
    mesh.shutdown().await.unwrap();

    let mesh = Mesh::start_with(|c| {
        c.scheduler.enable_noop = true;
        c.media.enable_noop = true;
        c.media.worker_concurrency = 64;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = ingest
            .submit_jobs(pb::SubmitJobsRequest {
                jobs: (0..100).map(|_| noop()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(response.jobs.into_iter().map(|j| j.job.unwrap().id));
    }
    for id in &ids {
        let job = wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap();
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "{job:?}");
        let attempt = &job.attempts[0];
        assert_eq!(attempt.outcome, pb::JobState::Succeeded as i32);
        let (started, finished) = (attempt.started_at.unwrap(), attempt.finished_at.unwrap());
        assert!((started.seconds, started.nanos) <= (finished.seconds, finished.nanos));
    }
    for id in ids.iter().step_by(15) {
        let mut history = jobs
            .watch_job(pb::WatchJobRequest {
                job_id: id.clone(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut states = Vec::new();
        while let Some(update) = history.message().await.unwrap() {
            if update.seq > 0 {
                states.push(update.state);
            }
        }
        assert_eq!(
            states,
            [pb::JobState::Queued, pb::JobState::Running, pb::JobState::Succeeded].map(|s| s as i32),
            "job {id}"
        );
    }
    mesh.shutdown().await.unwrap();
}
