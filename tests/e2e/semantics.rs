use std::collections::HashSet;

use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, Service, read_fixture, upload, wait_job};

use crate::JOB_DEADLINE;

fn spec(kind: &str, media_id: &str, priority: u32, key: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        job: Some(pb::JobSpec {
            kind: kind.to_owned(),
            media_id: media_id.to_owned(),
            priority,
            idempotency_key: key.to_owned(),
            ..Default::default()
        }),
    }
}

/// Fifty clients submit the same idempotency key at once: one job exists, all fifty get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_makes_one_job_under_50_concurrent_submits() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let media_id = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap()
        .media
        .unwrap()
        .id;
    let submits = (0..50).map(|_| {
        let mut client = mesh.ingest();
        let request = spec("media.probe", &media_id, 0, "order-42");
        tokio::spawn(async move { client.submit_job(request).await.map(tonic::Response::into_inner) })
    });
    let mut ids = HashSet::new();
    let mut created = 0;
    for submit in submits {
        let response = submit.await.unwrap().unwrap();
        ids.insert(response.job.unwrap().id);
        if !response.existing {
            created += 1;
        }
    }
    assert_eq!(ids.len(), 1, "every submit got the same job");
    assert_eq!(created, 1, "exactly one submit created it");
    let id = ids.into_iter().next().unwrap();
    let mut jobs = mesh.jobs();
    assert_eq!(
        wait_job(&mut jobs, &id, JOB_DEADLINE).await.unwrap().state,
        pb::JobState::Succeeded as i32
    );
    mesh.shutdown().await.unwrap();
}

/// With a backlog (one job at a time), a priority-10 job submitted last starts before the
/// priority-1 jobs submitted before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_ten_submitted_last_starts_before_earlier_priority_one() {
    let mut mesh = Mesh::start_with(|c| {
        c.scheduler.max_in_flight = 1;
        c.media.worker_concurrency = 1;
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    mesh.stop_service(Service::Media).await.unwrap();
    let uploaded = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    let media_id = uploaded.media.unwrap().id;
    let mut low = Vec::new();
    for i in 0..4 {
        let job = ingest
            .submit_job(spec("media.probe", &media_id, 1, &format!("low-{i}")))
            .await
            .unwrap();
        low.push(job.into_inner().job.unwrap().id);
    }
    let high = ingest
        .submit_job(spec("media.probe", &media_id, 10, "high"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    mesh.start_service(Service::Media).await.unwrap();

    let mut jobs = mesh.jobs();
    let started = |job: &pb::Job| {
        let at = job.attempts.first().and_then(|a| a.started_at).unwrap();
        (at.seconds, at.nanos)
    };
    let high_job = wait_job(&mut jobs, &high, JOB_DEADLINE).await.unwrap();
    assert_eq!(high_job.state, pb::JobState::Succeeded as i32);
    for id in &low {
        let job = wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap();
        assert_eq!(job.state, pb::JobState::Succeeded as i32);
        assert!(
            started(&high_job) < started(&job),
            "priority 10 started before priority 1 job {id}"
        );
    }
    mesh.shutdown().await.unwrap();
}
