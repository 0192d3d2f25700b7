//! Domain types shared by every mediamesh service: job kinds and states, the stable error
//! codes and their gRPC mapping, and small conversions at the proto edge.

mod error;
mod job;
mod request;
mod time;

pub use error::{ERROR_CODE_METADATA, Error, ErrorCode, Result};
pub use job::{DEFAULT_PRIORITY, DEFAULT_TENANT, JobKind, JobState, MediaKind, Queue};
pub use request::{TENANT_METADATA, client_timeout, parse_id, tenant_of};
pub use time::{from_timestamp, to_timestamp};
