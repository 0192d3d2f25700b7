use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, Service, read_fixture, upload, wait_job};

use crate::JOB_DEADLINE;

/// Jobs submitted while no media worker runs wait in QUEUED; when the worker comes back,
/// every one of them completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_complete_after_the_media_service_restarts() {
    let mut mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();

    // One photo through first, so the worker has pulled before it stops.
    let first = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    for job in &first.jobs {
        assert_eq!(
            wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap().state,
            pb::JobState::Succeeded as i32
        );
    }

    mesh.stop_service(Service::Media).await.unwrap();
    let mut queued = Vec::new();
    for file in [
        "friends_by_Aitzol_Berasategi_orient6.jpg",
        "Arc-Colors-Transparent-Wallpaper.png",
        "Kleiber_by_Lukas_Baubkus.jpg",
    ] {
        let response = upload(&mut ingest, file, &read_fixture(file)).await.unwrap();
        queued.extend(response.jobs);
    }
    assert_eq!(queued.len(), 6);
    for job in &queued {
        let now = jobs
            .get_job(pb::GetJobRequest { job_id: job.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(
            now.state,
            pb::JobState::Queued as i32,
            "no worker, so {} waits",
            job.kind
        );
    }

    mesh.start_service(Service::Media).await.unwrap();
    for job in &queued {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(
            done.state,
            pb::JobState::Succeeded as i32,
            "{} {:?}",
            job.kind,
            done.error
        );
        assert_eq!(done.attempt, 1);
    }
    mesh.shutdown().await.unwrap();
}

/// A service stopping drains: an open WatchJob stream through ingest ends with UNAVAILABLE
/// (resume with the last seq) instead of holding the shutdown, and a job that was waiting
/// still completes once everything is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_watch_streams_and_work_resumes() {
    let mut mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    mesh.stop_service(Service::Media).await.unwrap();
    let response = upload(&mut ingest, "d.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    let job = response.jobs[0].clone();
    let mut watch = mesh
        .jobs()
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.state, pb::JobState::Queued as i32);

    tokio::time::timeout(std::time::Duration::from_secs(20), mesh.stop_service(Service::Ingest))
        .await
        .expect("ingest drains promptly with a watch open")
        .unwrap();
    let status = watch.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    mesh.start_service(Service::Ingest).await.unwrap();
    mesh.start_service(Service::Media).await.unwrap();
    let mut jobs = mesh.jobs();
    let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    mesh.shutdown().await.unwrap();
}
