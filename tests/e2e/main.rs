//! End-to-end tests of the mesh through its public gRPC API, over a real nats-server and a
//! real PostgreSQL started by the test kit. One test binary for the whole suite.

#![allow(clippy::unwrap_used)]

mod bad_input;
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
mod traces;

use std::time::Duration;

use mediamesh_core::ErrorCode;

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
