use mediamesh_core::{ErrorCode, JobState, to_timestamp};
use mediamesh_proto::v1 as pb;
use mediamesh_store::{AttemptRow, JobRow};

fn error_of(code: Option<&str>, message: Option<&str>) -> Option<pb::JobError> {
    let code = code?;
    let parsed = ErrorCode::parse(code).unwrap_or(ErrorCode::Internal);
    Some(pb::JobError {
        code: parsed.to_proto() as i32,
        message: message.unwrap_or_default().to_owned(),
        retryable: parsed.is_retryable(),
    })
}

fn state_of(s: &str) -> i32 {
    JobState::parse(s).map_or(pb::JobState::Unspecified, JobState::to_proto) as i32
}

/// The API form of a job row and its attempts.
pub fn job_to_proto(row: &JobRow, attempts: &[AttemptRow]) -> pb::Job {
    let result = row.result.as_ref().map(|value| {
        let outputs = value
            .get("outputs")
            .and_then(|o| serde_json::from_value::<Vec<OutputJson>>(o.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|o| pb::Output {
                name: o.name,
                blob_key: o.blob_key,
                content_type: o.content_type,
                width: o.width,
                height: o.height,
                bytes: o.bytes,
            })
            .collect();
        let metadata = value.get("metadata").cloned().unwrap_or(serde_json::Value::Null);
        pb::JobResult {
            outputs,
            metadata_json: if metadata.is_null() {
                String::new()
            } else {
                metadata.to_string()
            },
            reused: value
                .get("reused")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        }
    });
    pb::Job {
        id: row.id.to_string(),
        tenant: row.tenant.clone(),
        kind: row.kind.clone(),
        queue: row.queue.clone(),
        state: state_of(&row.state),
        priority: u32::try_from(row.priority).unwrap_or(0),
        media_id: row.media_id.map(|id| id.to_string()).unwrap_or_default(),
        payload_json: row.payload.to_string(),
        attempt: u32::try_from(row.attempt).unwrap_or(0),
        max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
        timeout_ms: u64::try_from(row.timeout_ms).unwrap_or(0),
        run_at: Some(to_timestamp(row.run_at)),
        idempotency_key: row.idempotency_key.clone().unwrap_or_default(),
        result,
        error: error_of(row.error_code.as_deref(), row.error_message.as_deref()),
        attempts: attempts
            .iter()
            .map(|a| pb::Attempt {
                attempt: u32::try_from(a.attempt).unwrap_or(0),
                worker_id: a.worker_id.clone(),
                started_at: Some(to_timestamp(a.started_at)),
                finished_at: a.finished_at.map(to_timestamp),
                outcome: state_of(&a.outcome),
                error: error_of(a.error_code.as_deref(), a.error_message.as_deref()),
            })
            .collect(),
        created_at: Some(to_timestamp(row.created_at)),
        updated_at: Some(to_timestamp(row.updated_at)),
        finished_at: row.finished_at.map(to_timestamp),
        depends_on: Vec::new(),
        on_dependency_failure: policy_of(&row.on_dependency_failure) as i32,
        pending_dependencies: u32::try_from(row.pending_deps).unwrap_or(0),
        progress: 0.0,
        progress_message: String::new(),
        trace_id: row.traceparent.as_deref().and_then(trace_id_of).unwrap_or_default(),
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

fn policy_of(s: &str) -> pb::DependencyPolicy {
    match s {
        "SKIP" => pb::DependencyPolicy::Skip,
        "CONTINUE" => pb::DependencyPolicy::Continue,
        _ => pb::DependencyPolicy::Fail,
    }
}

/// The stored form of a dependency policy (UNSPECIFIED means FAIL).
pub fn policy_str(policy: pb::DependencyPolicy) -> &'static str {
    match policy {
        pb::DependencyPolicy::Unspecified | pb::DependencyPolicy::Fail => "FAIL",
        pb::DependencyPolicy::Skip => "SKIP",
        pb::DependencyPolicy::Continue => "CONTINUE",
    }
}

/// An output as workers put it in a job's result JSON.
#[derive(serde::Deserialize)]
struct OutputJson {
    name: String,
    blob_key: String,
    content_type: String,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default)]
    bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn a_trace_id_comes_from_a_valid_traceparent_only() {
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(""), None);
    }
}
