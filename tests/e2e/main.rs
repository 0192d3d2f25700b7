//! End-to-end tests of the mesh through its public gRPC API, over a real nats-server and a
//! real PostgreSQL started by the test kit. One test binary for the whole suite.

#![allow(clippy::unwrap_used)]

mod bad_input;
mod console;
mod control;
mod faults;
mod inference;
mod jobs;
mod k8s;
mod media;
mod metrics;
mod photos;
mod restart;
mod semantics;
mod surface;
mod tenancy;
mod traces;

use std::time::Duration;

use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

/// Long enough for the slowest fixture on a loaded 2-core machine; a job that takes longer
/// is a failure, not a flake.
pub const JOB_DEADLINE: Duration = Duration::from_secs(120);

pub fn code_of(status: &tonic::Status) -> ErrorCode {
    ErrorCode::from_status(status)
}

/// A request made as `tenant` (the `mm-tenant` metadata an internal hop sets).
pub fn as_tenant<T>(message: T, tenant: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(mediamesh_core::TENANT_METADATA, tenant.parse().unwrap());
    request
}

/// Submits one job through the public API.
pub async fn submit(ingest: &mut IngestServiceClient<Channel>, spec: pb::JobSpec) -> pb::Job {
    ingest
        .submit_job(pb::SubmitJobRequest { job: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

/// Waits for each job to end; returns them as they ended, in the same order.
pub async fn finish_all(jobs: &mut JobServiceClient<Channel>, list: &[pb::Job]) -> Vec<pb::Job> {
    let mut done = Vec::with_capacity(list.len());
    for job in list {
        done.push(mediamesh_testkit::wait_job(jobs, &job.id, JOB_DEADLINE).await.unwrap());
    }
    done
}

pub fn by_kind<'a>(done: &'a [pb::Job], kind: &str) -> &'a pb::Job {
    done.iter().find(|j| j.kind == kind).unwrap_or_else(|| {
        panic!(
            "no {kind} job among {:?}",
            done.iter().map(|j| &j.kind).collect::<Vec<_>>()
        )
    })
}

/// The result of a job that must have succeeded.
pub fn succeeded(job: &pb::Job) -> &pb::JobResult {
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "{} ended {:?}: {:?}",
        job.kind,
        job.state,
        job.error
    );
    job.result.as_ref().unwrap()
}

/// The result metadata of a job that must have succeeded.
pub fn metadata(job: &pb::Job) -> Value {
    serde_json::from_str(&succeeded(job).metadata_json).unwrap()
}

/// The stable code and message of a job that must have failed.
pub fn failed_with(job: &pb::Job) -> (ErrorCode, String) {
    assert_eq!(
        job.state,
        pb::JobState::Failed as i32,
        "{} did not fail: {:?}",
        job.kind,
        job.result
    );
    let error = job.error.as_ref().unwrap();
    let code = pb::ErrorCode::try_from(error.code)
        .ok()
        .and_then(|c| ErrorCode::parse(c.as_str_name().trim_start_matches("ERROR_CODE_")))
        .unwrap_or(ErrorCode::Internal);
    (code, error.message.clone())
}
