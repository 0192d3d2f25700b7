//! Text and JSON forms of API messages. JSON output is one document per command.

use mediamesh_proto::v1 as pb;
use serde_json::{Value, json};

pub fn state_name(state: i32) -> &'static str {
    pb::JobState::try_from(state)
        .unwrap_or(pb::JobState::Unspecified)
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
}

fn code_name(code: i32) -> &'static str {
    pb::ErrorCode::try_from(code)
        .unwrap_or(pb::ErrorCode::Unspecified)
        .as_str_name()
        .trim_start_matches("ERROR_CODE_")
}

fn ts(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(mediamesh_core::from_timestamp)
        .map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn error_json(e: Option<&pb::JobError>) -> Value {
    e.map_or(
        Value::Null,
        |e| json!({ "code": code_name(e.code), "message": e.message, "retryable": e.retryable }),
    )
}

pub fn output_json(o: &pb::Output) -> Value {
    json!({
        "name": o.name, "blob_key": o.blob_key, "content_type": o.content_type,
        "width": o.width, "height": o.height, "bytes": o.bytes,
    })
}

pub fn job_json(job: &pb::Job) -> Value {
    let result = job.result.as_ref().map_or(Value::Null, |r| {
        json!({
            "outputs": r.outputs.iter().map(output_json).collect::<Vec<_>>(),
            "metadata": serde_json::from_str::<Value>(&r.metadata_json).unwrap_or(Value::Null),
            "reused": r.reused,
        })
    });
    json!({
        "id": job.id,
        "tenant": job.tenant,
        "kind": job.kind,
        "queue": job.queue,
        "state": state_name(job.state),
        "priority": job.priority,
        "media_id": job.media_id,
        "payload": serde_json::from_str::<Value>(&job.payload_json).unwrap_or(Value::Null),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "timeout_ms": job.timeout_ms,
        "run_at": ts(job.run_at.as_ref()),
        "idempotency_key": job.idempotency_key,
        "depends_on": job.depends_on,
        "on_dependency_failure": pb::DependencyPolicy::try_from(job.on_dependency_failure)
            .map_or("FAIL", |p| match p {
                pb::DependencyPolicy::Skip => "SKIP",
                pb::DependencyPolicy::Continue => "CONTINUE",
                _ => "FAIL",
            }),
        "pending_dependencies": job.pending_dependencies,
        "result": result,
        "error": error_json(job.error.as_ref()),
        "attempts": job.attempts.iter().map(|a| json!({
            "attempt": a.attempt, "worker_id": a.worker_id, "outcome": state_name(a.outcome),
            "started_at": ts(a.started_at.as_ref()), "finished_at": ts(a.finished_at.as_ref()),
            "error": error_json(a.error.as_ref()),
        })).collect::<Vec<_>>(),
        "created_at": ts(job.created_at.as_ref()),
        "updated_at": ts(job.updated_at.as_ref()),
        "finished_at": ts(job.finished_at.as_ref()),
    })
}

pub fn media_json(media: &pb::Media) -> Value {
    let kind = pb::MediaKind::try_from(media.kind)
        .unwrap_or(pb::MediaKind::Unspecified)
        .as_str_name()
        .trim_start_matches("MEDIA_KIND_")
        .to_lowercase();
    json!({
        "id": media.id, "tenant": media.tenant, "filename": media.filename,
        "content_type": media.content_type, "kind": kind, "bytes": media.bytes,
        "sha256": media.sha256, "width": media.width, "height": media.height,
        "created_at": ts(media.created_at.as_ref()),
        "derivatives": media.derivatives.iter().map(output_json).collect::<Vec<_>>(),
    })
}

/// One line for a job: id, kind, state, and its outputs or error.
pub fn job_line(job: &pb::Job) -> String {
    let mut line = format!("{}  {:<21} {:<10}", job.id, job.kind, state_name(job.state));
    if let Some(error) = &job.error {
        line.push_str(&format!(" {}: {}", code_name(error.code), error.message));
    }
    if let Some(result) = &job.result {
        for o in &result.outputs {
            if o.width > 0 {
                line.push_str(&format!(" {}={}x{}({}B)", o.name, o.width, o.height, o.bytes));
            } else {
                line.push_str(&format!(" {}({}B)", o.name, o.bytes));
            }
        }
        if result.reused {
            line.push_str(" (reused)");
        }
        if !result.metadata_json.is_empty() && result.outputs.is_empty() {
            line.push_str(&format!(" {}", result.metadata_json));
        }
    }
    line
}
