//! `test.sleep`: a job kind for the fault tests, run only when `MM_ENABLE_TEST_KINDS=true`.
//!
//! Payload (every field optional):
//! - `ms`: how long to work (default 0);
//! - `subprocess`: sleep in a `sleep` child process, killed on cancel or timeout, and report
//!   its pid as progress (`"pid <n>"`);
//! - `fail`: an error code to fail with after sleeping;
//! - `fail_attempts`: fail only while the attempt is at most this (default: every attempt);
//! - `result`: returned as the job's result metadata (default `{"slept_ms": ms}`);
//! - `crash`: abort the whole worker process after sleeping, like an OOM kill would (the
//!   poison-job test runs the worker as a separate process);
//! - `run_log`: a file to which each run appends `<job id> <attempt>` as it begins, so that a
//!   test can count how many times each job's body ran (at least once is the promise).

use std::time::Duration;

use mediamesh_bus::{Bus, JobMessage, Update};
use mediamesh_core::{Error, ErrorCode};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Payload {
    ms: u64,
    subprocess: bool,
    fail: Option<String>,
    fail_attempts: Option<u32>,
    result: Option<serde_json::Value>,
    crash: bool,
    run_log: Option<std::path::PathBuf>,
}

pub async fn sleep(bus: &Bus, job: &JobMessage, cancel: CancellationToken) -> Result<serde_json::Value, Error> {
    let payload: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| Error::bad_input(format!("test.sleep payload: {e}")))?;
    let fail = match payload.fail.as_deref() {
        None => None,
        Some(code) => Some(
            ErrorCode::parse(code)
                .ok_or_else(|| Error::bad_input(format!("test.sleep: unknown error code {code:?}")))?,
        ),
    };
    if let Some(path) = &payload.run_log {
        log_run(path, job).await?;
    }
    let duration = Duration::from_millis(payload.ms);
    if payload.subprocess {
        let mut child = tokio::process::Command::new("sleep")
            .arg(format!("{:.3}", duration.as_secs_f64()))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::internal(format!("cannot start sleep: {e}")))?;
        let pid = child.id().unwrap_or(0);
        progress(bus, job, 0.0, format!("pid {pid}")).await;
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Error::internal(format!("sleep: {e}")))?;
                if !status.success() {
                    return Err(Error::internal(format!("sleep exited with {status}")));
                }
            }
            () = cancel.cancelled() => {
                let _ = child.kill().await;
                return Err(Error::new(ErrorCode::Cancelled, "cancelled by request"));
            }
        }
    } else {
        progress(bus, job, 0.0, "sleeping".to_owned()).await;
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = cancel.cancelled() => return Err(Error::new(ErrorCode::Cancelled, "cancelled by request")),
        }
    }
    if payload.crash {
        tracing::error!(job_id = %job.job_id, "test.sleep: aborting the worker process as asked");
        std::process::abort();
    }
    if let Some(code) = fail
        && payload.fail_attempts.is_none_or(|n| job.attempt <= n)
    {
        return Err(Error::new(
            code,
            format!("test.sleep failing attempt {} as asked", job.attempt),
        ));
    }
    let metadata = payload.result.unwrap_or_else(|| json!({ "slept_ms": payload.ms }));
    Ok(json!({ "outputs": [], "metadata": metadata }))
}

/// Appends `<job id> <attempt>` to `path`: one write of one short line in append mode, whole
/// even when several worker processes append at once.
async fn log_run(path: &std::path::Path, job: &JobMessage) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| Error::internal(format!("test.sleep run_log {}: {e}", path.display())))?;
    file.write_all(format!("{} {}\n", job.job_id, job.attempt).as_bytes())
        .await
        .map_err(|e| Error::internal(format!("test.sleep run_log {}: {e}", path.display())))
}

async fn progress(bus: &Bus, job: &JobMessage, progress: f32, message: String) {
    let update = Update::Progress {
        attempt: job.attempt,
        progress,
        message,
    };
    let _ = bus.publish_update(job.job_id, &update).await;
}
