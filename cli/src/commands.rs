//! The client commands.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::admin_service_client::AdminServiceClient;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_server::auth::{AuthedChannel, Credentials};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::output::{job_json, job_line, media_json, state_name};
use crate::{Command, KeysCommand, Output, QuotasCommand};

const CHUNK: usize = 512 * 1024;

/// The stable code of a failed call, for JSON output.
pub fn error_code(err: &anyhow::Error) -> &'static str {
    err.chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())
        .map_or("INTERNAL", |s| mediamesh_core::ErrorCode::from_status(s).as_str())
}

struct Clients {
    ingest: IngestServiceClient<AuthedChannel>,
    jobs: JobServiceClient<AuthedChannel>,
    inference: InferenceServiceClient<AuthedChannel>,
}

/// Where `meshctl dev` leaves the dev tenant's key and the admin token (its default data dir).
const DEV_KEY_FILE: &str = ".mediamesh/api-key";
const DEV_ADMIN_FILE: &str = ".mediamesh/admin-token";

/// The API key to send: given, else read from the key file, else the dev key if there is one.
pub fn api_key(key: Option<String>, file: Option<PathBuf>) -> Result<Option<String>> {
    if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
        return Ok(Some(key.trim().to_owned()));
    }
    if let Some(file) = file {
        let key =
            std::fs::read_to_string(&file).with_context(|| format!("reading the API key from {}", file.display()))?;
        return Ok(Some(key.trim().to_owned()));
    }
    Ok(std::fs::read_to_string(DEV_KEY_FILE).ok().map(|k| k.trim().to_owned()))
}

async fn dial(addr: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the mesh at {addr} (is `meshctl dev` running? set MM_ADDR)"))
}

async fn connect(addr: &str, key: Option<&str>) -> Result<Clients> {
    let credentials = key.map(Credentials::bearer).unwrap_or_default();
    let channel = credentials.channel(dial(addr).await?);
    Ok(Clients {
        ingest: IngestServiceClient::new(channel.clone()).max_decoding_message_size(16 * 1024 * 1024),
        jobs: JobServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    })
}

fn print(output: Output, value: &Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Text => println!("{}", text()),
    }
}

pub async fn run(addr: &str, output: Output, key: Option<String>, command: Command) -> Result<ExitCode> {
    let mut c = connect(addr, key.as_deref()).await?;
    match command {
        Command::Dev(_) | Command::Health { .. } | Command::Keys { .. } | Command::Quotas { .. } => {
            bail!("not a client command")
        }
        Command::Upload {
            files,
            watch,
            category,
            extract_schema,
        } => {
            let schema = match extract_schema {
                Some(arg) => read_schema(&arg)?,
                None => String::new(),
            };
            return upload(&mut c, output, &files, watch, &category, &schema).await;
        }
        Command::Submit {
            kind,
            media,
            payload,
            priority,
            idempotency_key,
            max_attempts,
            timeout_ms,
            delay,
            depends_on,
            on_dependency_failure,
            watch,
        } => {
            let on_dependency_failure = match on_dependency_failure.to_ascii_lowercase().as_str() {
                "fail" => pb::DependencyPolicy::Fail,
                "skip" => pb::DependencyPolicy::Skip,
                "continue" => pb::DependencyPolicy::Continue,
                other => bail!("--on-dependency-failure {other:?}: expected fail, skip or continue"),
            };
            let spec = pb::JobSpec {
                kind,
                media_id: media,
                payload_json: payload,
                priority,
                idempotency_key,
                max_attempts,
                timeout_ms,
                run_at: delay.map(|secs| {
                    mediamesh_core::to_timestamp(chrono::Utc::now() + chrono::Duration::seconds(secs as i64))
                }),
                depends_on,
                on_dependency_failure: on_dependency_failure as i32,
            };
            let response = c
                .ingest
                .submit_job(pb::SubmitJobRequest { job: Some(spec) })
                .await?
                .into_inner();
            let job = response.job.ok_or_else(|| anyhow!("no job in the response"))?;
            let job = if watch {
                follow(&mut c.jobs, output, std::slice::from_ref(&job)).await?.remove(0)
            } else {
                job
            };
            print(
                output,
                &json!({ "job": job_json(&job), "existing": response.existing }),
                || job_line(&job),
            );
            // Without --watch the job has only been accepted: that is success.
            return Ok(if watch { exit_for(&[job]) } else { ExitCode::SUCCESS });
        }
        Command::Get { job_id } => {
            let job = c
                .jobs
                .get_job(pb::GetJobRequest { job_id })
                .await?
                .into_inner()
                .job
                .ok_or_else(|| anyhow!("no job"))?;
            print(output, &json!({ "job": job_json(&job) }), || job_detail(&job));
        }
        Command::List {
            media,
            state,
            kind,
            since,
            until,
            limit,
            page_token,
            all,
            code,
            newest,
        } => {
            let mut request = pb::ListJobsRequest {
                media_id: media,
                state: parse_state(state.as_deref())? as i32,
                kind,
                error_code: parse_code(code.as_deref())? as i32,
                newest_first: newest,
                page_size: limit,
                page_token,
                created_after: since
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    .map(mediamesh_core::to_timestamp),
                created_before: until
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    .map(mediamesh_core::to_timestamp),
            };
            let mut jobs = Vec::new();
            let next = loop {
                let response = c.jobs.list_jobs(request.clone()).await?.into_inner();
                jobs.extend(response.jobs);
                if !all || response.next_page_token.is_empty() {
                    break response.next_page_token;
                }
                request.page_token = response.next_page_token;
            };
            let values: Vec<Value> = jobs.iter().map(job_json).collect();
            print(output, &json!({ "jobs": values, "next_page_token": next }), || {
                let mut lines: Vec<String> = jobs.iter().map(job_line).collect();
                if !next.is_empty() {
                    lines.push(format!("more: --page-token {next}"));
                }
                lines.join("\n")
            });
        }
        Command::Watch {
            job_id: None,
            kind,
            state,
            media,
            cursor,
        } => {
            let request = pb::WatchJobsRequest {
                kind,
                state: parse_state(state.as_deref())? as i32,
                media_id: media,
                cursor,
            };
            return watch_all(&mut c.jobs, output, request).await;
        }
        Command::Watch {
            job_id: Some(job_id), ..
        } => {
            let job = c
                .jobs
                .get_job(pb::GetJobRequest { job_id })
                .await?
                .into_inner()
                .job
                .ok_or_else(|| anyhow!("no job"))?;
            let job = follow(&mut c.jobs, output, &[job]).await?.remove(0);
            print(output, &json!({ "job": job_json(&job) }), || job_line(&job));
            return Ok(exit_for(&[job]));
        }
        Command::Cancel { job_id } => {
            let job = c
                .jobs
                .cancel_job(pb::CancelJobRequest { job_id })
                .await?
                .into_inner()
                .job
                .ok_or_else(|| anyhow!("no job"))?;
            print(output, &json!({ "job": job_json(&job) }), || job_line(&job));
        }
        Command::Retry {
            job_id,
            failed: _,
            cancelled,
            kind,
            code,
            since,
            limit,
            dry_run,
        } => {
            if let Some(job_id) = job_id {
                let job = c
                    .jobs
                    .retry_job(pb::RetryJobRequest { job_id })
                    .await?
                    .into_inner()
                    .job
                    .ok_or_else(|| anyhow!("no job"))?;
                print(output, &json!({ "job": job_json(&job) }), || job_line(&job));
            } else {
                let error_code = parse_code(code.as_deref())?;
                let request = pb::RetryJobsRequest {
                    state: if cancelled {
                        pb::JobState::Cancelled
                    } else {
                        pb::JobState::Failed
                    } as i32,
                    kind,
                    error_code: error_code as i32,
                    finished_after: since.map(|secs| {
                        mediamesh_core::to_timestamp(chrono::Utc::now() - chrono::Duration::seconds(secs as i64))
                    }),
                    finished_before: None,
                    limit,
                    dry_run,
                    ..Default::default()
                };
                let ids = c.jobs.retry_jobs(request).await?.into_inner().job_ids;
                print(output, &json!({ "job_ids": ids, "dry_run": dry_run }), || {
                    let verb = if dry_run { "would retry" } else { "retried" };
                    let mut lines = vec![format!("{verb} {} job(s)", ids.len())];
                    lines.extend(ids.iter().cloned());
                    lines.join("\n")
                });
            }
        }
        Command::Stats => {
            let stats = c
                .jobs
                .get_queue_stats(pb::GetQueueStatsRequest {})
                .await?
                .into_inner()
                .stats;
            // AI spend, when the inference service answers (it is optional for the stats).
            let spend = match c.inference.get_spend(pb::GetSpendRequest { days: 7 }).await {
                Ok(response) => Some(response.into_inner()),
                Err(status) => {
                    tracing::debug!(error = %status, "no AI spend");
                    None
                }
            };
            let spend_json = spend.as_ref().map(|s| {
                json!({
                    "today_usd": s.today_usd, "month_usd": s.month_usd,
                    "daily_budget_usd": s.daily_budget_usd, "monthly_budget_usd": s.monthly_budget_usd,
                    "lines": s.lines.iter().map(|l| json!({
                        "day": l.day, "provider": l.provider, "model": l.model, "calls": l.calls,
                        "failed_calls": l.failed_calls, "tokens_in": l.tokens_in, "tokens_out": l.tokens_out,
                        "cost_usd": l.cost_usd,
                    })).collect::<Vec<_>>(),
                })
            });
            let value = json!({ "ai_spend": spend_json, "stats": stats.iter().map(|s| json!({
                "queue": s.queue, "kind": s.kind, "queued": s.queued, "scheduled": s.scheduled,
                "running": s.running, "succeeded": s.succeeded, "failed": s.failed, "cancelled": s.cancelled,
                "succeeded_per_minute": s.succeeded_per_minute, "failed_per_minute": s.failed_per_minute,
                "oldest_wait_seconds": s.oldest_wait_seconds, "mean_run_seconds": s.mean_run_seconds,
            })).collect::<Vec<_>>() });
            print(output, &value, || {
                let header = format!(
                    "{:<10} {:<21} {:>7} {:>9} {:>7} {:>9} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
                    "QUEUE",
                    "KIND",
                    "QUEUED",
                    "SCHEDULED",
                    "RUNNING",
                    "SUCCEEDED",
                    "FAILED",
                    "CANCELLED",
                    "OK/MIN",
                    "FAIL/MIN",
                    "WAIT_S",
                    "RUN_S"
                );
                let mut lines = vec![header];
                for s in &stats {
                    lines.push(format!(
                        "{:<10} {:<21} {:>7} {:>9} {:>7} {:>9} {:>6} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8.2}",
                        s.queue,
                        s.kind,
                        s.queued,
                        s.scheduled,
                        s.running,
                        s.succeeded,
                        s.failed,
                        s.cancelled,
                        s.succeeded_per_minute,
                        s.failed_per_minute,
                        s.oldest_wait_seconds,
                        s.mean_run_seconds
                    ));
                }
                if let Some(spend) = &spend {
                    lines.push(String::new());
                    lines.push(spend_lines(spend));
                }
                lines.join("\n")
            });
        }
        Command::Media { media_id } => {
            let response = c.ingest.get_media(pb::GetMediaRequest { media_id }).await?.into_inner();
            let media = response.media.ok_or_else(|| anyhow!("no media"))?;
            let value =
                json!({ "media": media_json(&media), "jobs": response.jobs.iter().map(job_json).collect::<Vec<_>>() });
            print(output, &value, || {
                let mut lines = vec![format!(
                    "{}  {}  {}  {}x{}  {} bytes",
                    media.id, media.filename, media.content_type, media.width, media.height, media.bytes
                )];
                lines.extend(media.derivatives.iter().map(|d| {
                    format!(
                        "  {:<8} {}x{} {} bytes  {}",
                        d.name, d.width, d.height, d.bytes, d.blob_key
                    )
                }));
                lines.extend(response.jobs.iter().map(|j| format!("  {}", job_line(j))));
                lines.join("\n")
            });
        }
        Command::Download { media_id, name, out } => {
            let stream = c
                .ingest
                .download_media(pb::DownloadMediaRequest {
                    media_id: media_id.clone(),
                    name: name.clone(),
                })
                .await?
                .into_inner();
            let (header, data) = mediamesh_proto::read_download(stream).await?;
            let ext = header
                .content_type
                .rsplit('/')
                .next()
                .unwrap_or("bin")
                .replace("jpeg", "jpg");
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{media_id}-{name}.{ext}")));
            tokio::fs::write(&path, &data)
                .await
                .with_context(|| format!("writing {}", path.display()))?;
            print(
                output,
                &json!({ "path": path.display().to_string(), "name": header.name, "content_type": header.content_type, "bytes": data.len() }),
                || format!("{} ({} bytes, {})", path.display(), data.len(), header.content_type),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A stable error code by its name (`BAD_INPUT`, `timeout`); none means any.
fn parse_code(code: Option<&str>) -> Result<pb::ErrorCode> {
    match code {
        Some(code) => pb::ErrorCode::from_str_name(&format!("ERROR_CODE_{}", code.to_ascii_uppercase()))
            .filter(|c| *c != pb::ErrorCode::Unspecified)
            .ok_or_else(|| anyhow!("unknown error code {code:?}: see the error codes in the README")),
        None => Ok(pb::ErrorCode::Unspecified),
    }
}

fn parse_state(state: Option<&str>) -> Result<pb::JobState> {
    match state {
        Some(s) => pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .ok_or_else(|| anyhow!("unknown state {s:?}: QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED or CANCELLED")),
        None => Ok(pb::JobState::Unspecified),
    }
}

/// A time: RFC 3339, or an age before now (`90s`, `15m`, `2h`, `7d`).
fn parse_when(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| anyhow!("{s:?}: give a time (RFC 3339) or an age such as 90s, 15m, 2h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{s:?}: the units are s, m, h and d"),
    };
    Ok(chrono::Utc::now() - chrono::Duration::seconds(secs))
}

/// A live table of the tenant's jobs (text on a terminal), or one line / JSON document per
/// change, until interrupted.
async fn watch_all(
    jobs: &mut JobServiceClient<AuthedChannel>,
    output: Output,
    request: pb::WatchJobsRequest,
) -> Result<ExitCode> {
    let mut stream = jobs.watch_jobs(request).await?.into_inner();
    let table = output == Output::Text && std::io::stdout().is_terminal();
    // Job id -> (kind, state, progress, message, when), most recent last.
    let mut rows: Vec<(String, String, String, f32, String, String)> = Vec::new();
    while let Some(change) = stream.next().await {
        let change = change?;
        let state = state_name(change.state).to_owned();
        let at = change
            .at
            .as_ref()
            .and_then(mediamesh_core::from_timestamp)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default();
        if output == Output::Json {
            println!(
                "{}",
                json!({
                    "job_id": change.job_id, "state": state, "attempt": change.attempt,
                    "progress": change.progress, "message": change.message, "cursor": change.cursor,
                    "job": change.job.as_ref().map(job_json),
                })
            );
            continue;
        }
        let kind = change.job.as_ref().map(|j| j.kind.clone());
        let index = rows.iter().position(|r| r.0 == change.job_id);
        let mut row = match index {
            Some(i) => rows.remove(i),
            None => (
                change.job_id.clone(),
                String::new(),
                String::new(),
                0.0,
                String::new(),
                String::new(),
            ),
        };
        if let Some(kind) = kind {
            row.1 = kind;
        }
        row.2 = state.clone();
        row.3 = change.progress;
        row.4 = change.message.clone();
        row.5 = at.clone();
        rows.push(row);
        if rows.len() > 200 {
            rows.remove(0);
        }
        if table {
            let height = 30;
            let mut screen = String::from("\x1b[H\x1b[2J");
            screen.push_str(&format!(
                "{:<36}  {:<24} {:<10} {:>5}  {:<8}  {}\n",
                "JOB", "KIND", "STATE", "%", "AT", "STAGE"
            ));
            for (id, kind, state, progress, message, at) in rows.iter().rev().take(height) {
                screen.push_str(&format!(
                    "{id:<36}  {kind:<24} {state:<10} {:>5.0}  {at:<8}  {message}\n",
                    progress * 100.0
                ));
            }
            print!("{screen}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        } else if change.seq > 0 {
            println!(
                "{at}  {}  {:<24} {state}",
                change.job_id,
                rows.last().map_or("", |r| r.1.as_str())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin(addr: &str, token: Option<String>) -> Result<AdminServiceClient<AuthedChannel>> {
    let token = match token.filter(|t| !t.trim().is_empty()) {
        Some(token) => token,
        None => std::fs::read_to_string(DEV_ADMIN_FILE)
            .map(|t| t.trim().to_owned())
            .map_err(|_| anyhow!("the admin token is needed: set MM_ADMIN_TOKEN (or run `meshctl dev`, which writes {DEV_ADMIN_FILE})"))?,
    };
    Ok(AdminServiceClient::new(
        Credentials::bearer(&token).channel(dial(addr).await?),
    ))
}

fn key_json(key: &pb::ApiKey) -> Value {
    let when = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(mediamesh_core::from_timestamp)
            .map(|t| t.to_rfc3339())
    };
    json!({
        "id": key.id, "tenant": key.tenant, "name": key.name, "prefix": key.prefix,
        "created_at": when(&key.created_at), "last_used_at": when(&key.last_used_at),
        "revoked_at": when(&key.revoked_at),
    })
}

fn key_line(key: &pb::ApiKey) -> String {
    let revoked = if key.revoked_at.is_some() { "  REVOKED" } else { "" };
    format!(
        "{}  {:<20} {:<14} {}{revoked}",
        key.id, key.tenant, key.prefix, key.name
    )
}

pub async fn keys(addr: &str, output: Output, token: Option<String>, command: KeysCommand) -> Result<ExitCode> {
    let mut client = admin(addr, token).await?;
    match command {
        KeysCommand::Create { tenant, name } => {
            let response = client
                .create_api_key(pb::CreateApiKeyRequest { tenant, name })
                .await?
                .into_inner();
            let key = response.key.ok_or_else(|| anyhow!("no key in the response"))?;
            let mut value = key_json(&key);
            value["key"] = json!(response.secret);
            print(output, &value, || {
                format!(
                    "{}\n\nkey {} for tenant {:?}: keep it now, it is not shown again (MM_API_KEY=...)",
                    response.secret, key.id, key.tenant
                )
            });
        }
        KeysCommand::List { tenant, all } => {
            let keys = client
                .list_api_keys(pb::ListApiKeysRequest {
                    tenant,
                    include_revoked: all,
                })
                .await?
                .into_inner()
                .keys;
            let values: Vec<Value> = keys.iter().map(key_json).collect();
            print(output, &json!({ "keys": values }), || {
                keys.iter().map(key_line).collect::<Vec<_>>().join("\n")
            });
        }
        KeysCommand::Revoke { key } => {
            let key = client
                .revoke_api_key(pb::RevokeApiKeyRequest { key })
                .await?
                .into_inner()
                .key
                .ok_or_else(|| anyhow!("no key in the response"))?;
            print(output, &key_json(&key), || key_line(&key));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn quotas_json(q: &pb::Quotas) -> Value {
    json!({
        "jobs_per_hour": q.jobs_per_hour, "jobs_per_day": q.jobs_per_day,
        "upload_bytes": q.upload_bytes, "payload_bytes": q.payload_bytes,
        "stored_bytes": q.stored_bytes, "running_jobs": q.running_jobs,
        "submits_per_second": q.submits_per_second, "submit_burst": q.submit_burst,
    })
}

fn quotas_text(effective: &pb::Quotas, overrides: &pb::Quotas) -> String {
    let e = quotas_json(effective);
    let o = quotas_json(overrides);
    let mut lines = Vec::new();
    if let (Some(e), Some(o)) = (e.as_object(), o.as_object()) {
        for (name, value) in e {
            let set = if o.get(name).is_some_and(|v| !v.is_null()) {
                "  (set for this tenant)"
            } else {
                ""
            };
            let shown = if value.as_f64() == Some(0.0) {
                "no limit".to_owned()
            } else {
                value.to_string()
            };
            lines.push(format!("{name:<20} {shown}{set}"));
        }
    }
    lines.join("\n")
}

pub async fn quotas(addr: &str, output: Output, token: Option<String>, command: QuotasCommand) -> Result<ExitCode> {
    let mut client = admin(addr, token).await?;
    match command {
        QuotasCommand::Get { tenant } => {
            let r = client.get_tenant(pb::GetTenantRequest { tenant }).await?.into_inner();
            let (effective, overrides, usage) = (
                r.effective.unwrap_or_default(),
                r.overrides.unwrap_or_default(),
                r.usage.unwrap_or_default(),
            );
            let value = json!({
                "tenant": r.tenant, "effective": quotas_json(&effective), "overrides": quotas_json(&overrides),
                "usage": { "jobs_last_hour": usage.jobs_last_hour, "jobs_last_day": usage.jobs_last_day,
                           "stored_bytes": usage.stored_bytes, "running_jobs": usage.running_jobs },
            });
            print(output, &value, || {
                format!(
                    "tenant {}\n{}\n\nused: {} jobs in the last hour, {} in the last day, {} bytes stored, {} running",
                    r.tenant,
                    quotas_text(&effective, &overrides),
                    usage.jobs_last_hour,
                    usage.jobs_last_day,
                    usage.stored_bytes,
                    usage.running_jobs
                )
            });
        }
        QuotasCommand::Set {
            tenant,
            jobs_per_hour,
            jobs_per_day,
            upload_bytes,
            payload_bytes,
            stored_bytes,
            running_jobs,
            submits_per_second,
            submit_burst,
            reset,
        } => {
            let quotas = pb::Quotas {
                jobs_per_hour,
                jobs_per_day,
                upload_bytes,
                payload_bytes,
                stored_bytes,
                running_jobs,
                submits_per_second,
                submit_burst,
            };
            let r = client
                .set_quotas(pb::SetQuotasRequest {
                    tenant,
                    quotas: Some(quotas),
                    reset,
                })
                .await?
                .into_inner();
            let (effective, overrides) = (r.effective.unwrap_or_default(), r.overrides.unwrap_or_default());
            print(
                output,
                &json!({ "effective": quotas_json(&effective), "overrides": quotas_json(&overrides) }),
                || quotas_text(&effective, &overrides),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks ingest's health service until it says SERVING or `wait` seconds pass.
pub async fn health(addr: &str, output: Output, wait: u64) -> Result<ExitCode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(Duration::from_secs(2));
    loop {
        let status = match endpoint.connect().await {
            Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status)
                .map_err(|s| anyhow!("{}", s.message())),
            Err(err) => Err(anyhow!("cannot reach {addr}: {err}")),
        };
        let serving =
            matches!(status, Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        if serving || std::time::Instant::now() >= deadline {
            let text = match &status {
                Ok(s) => tonic_health::pb::health_check_response::ServingStatus::try_from(*s)
                    .map_or("UNKNOWN", |s| s.as_str_name())
                    .to_owned(),
                Err(err) => format!("{err:#}"),
            };
            print(
                output,
                &json!({ "addr": addr, "serving": serving, "status": text }),
                || format!("{addr}: {text}"),
            );
            return Ok(if serving { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exit_for(jobs: &[pb::Job]) -> ExitCode {
    if jobs.iter().all(|j| j.state == pb::JobState::Succeeded as i32) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn job_detail(job: &pb::Job) -> String {
    let mut lines = vec![job_line(job)];
    lines.push(format!(
        "  media {}  priority {}  attempt {}/{}",
        if job.media_id.is_empty() { "-" } else { &job.media_id },
        job.priority,
        job.attempt,
        job.max_attempts
    ));
    for a in &job.attempts {
        let err = a.error.as_ref().map(|e| format!(" {}", e.message)).unwrap_or_default();
        lines.push(format!(
            "  attempt {} on {}: {}{}",
            a.attempt,
            a.worker_id,
            state_name(a.outcome),
            err
        ));
    }
    lines.join("\n")
}

/// A JSON Schema given inline or as `@file` / a path to a file.
fn read_schema(arg: &str) -> Result<String> {
    let trimmed = arg.trim();
    let text = if trimmed.starts_with('{') {
        trimmed.to_owned()
    } else {
        let path = trimmed.strip_prefix('@').unwrap_or(trimmed);
        std::fs::read_to_string(path).with_context(|| format!("reading the schema {path}"))?
    };
    serde_json::from_str::<Value>(&text).with_context(|| "the extract schema is not JSON")?;
    Ok(text)
}

/// The AI spend block of `meshctl stats`.
fn spend_lines(spend: &pb::GetSpendResponse) -> String {
    let budget = |b: f64| if b > 0.0 { format!(" of ${b:.2}") } else { String::new() };
    let mut lines = vec![format!(
        "AI spend: today ${:.4}{}, this month ${:.4}{}",
        spend.today_usd,
        budget(spend.daily_budget_usd),
        spend.month_usd,
        budget(spend.monthly_budget_usd)
    )];
    if spend.lines.is_empty() {
        lines.push("  no provider calls in the last 7 days".to_owned());
    } else {
        lines.push(format!(
            "  {:<10} {:<12} {:<24} {:>6} {:>6} {:>10} {:>10} {:>10}",
            "DAY", "PROVIDER", "MODEL", "CALLS", "FAILED", "TOKENS_IN", "TOKENS_OUT", "COST_USD"
        ));
        for l in &spend.lines {
            lines.push(format!(
                "  {:<10} {:<12} {:<24} {:>6} {:>6} {:>10} {:>10} {:>10.4}",
                l.day, l.provider, l.model, l.calls, l.failed_calls, l.tokens_in, l.tokens_out, l.cost_usd
            ));
        }
    }
    lines.join("\n")
}

async fn upload(
    c: &mut Clients,
    output: Output,
    files: &[PathBuf],
    watch: bool,
    category: &str,
    extract_schema: &str,
) -> Result<ExitCode> {
    let mut results = Vec::new();
    let mut all_jobs = Vec::new();
    let mut failed = false;
    for file in files {
        match upload_one(&mut c.ingest, file, category, extract_schema).await {
            Ok(response) => {
                let media = response.media.clone().unwrap_or_default();
                if output == Output::Text {
                    println!(
                        "{}  {}  {} {}x{} {} bytes{}",
                        file.display(),
                        media.id,
                        media.content_type,
                        media.width,
                        media.height,
                        media.bytes,
                        if response.deduplicated {
                            "  (same bytes as before)"
                        } else {
                            ""
                        }
                    );
                    for job in &response.jobs {
                        println!("  {}", job_line(job));
                    }
                    for skipped in &response.skipped {
                        println!("  {:<21} not created: {}", skipped.kind, skipped.reason);
                    }
                }
                all_jobs.extend(response.jobs.iter().cloned());
                results.push((file.clone(), Ok(response)));
            }
            Err(err) => {
                failed = true;
                if output == Output::Text {
                    eprintln!("{}: {err:#}", file.display());
                }
                results.push((file.clone(), Err(err)));
            }
        }
    }
    let finished: HashMap<String, pb::Job> = if watch && !all_jobs.is_empty() {
        follow(&mut c.jobs, output, &all_jobs)
            .await?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect()
    } else {
        HashMap::new()
    };
    if watch && output == Output::Text {
        for (file, result) in &results {
            if let Ok(response) = result {
                println!("{}", file.display());
                for job in &response.jobs {
                    let job = finished.get(&job.id).unwrap_or(job);
                    println!("  {}", job_line(job));
                }
            }
        }
    }
    if output == Output::Json {
        let uploads: Vec<Value> = results
            .iter()
            .map(|(file, result)| match result {
                Ok(r) => json!({
                    "file": file.display().to_string(),
                    "media": r.media.as_ref().map(media_json),
                    "deduplicated": r.deduplicated,
                    "skipped": r.skipped.iter().map(|s| json!({"kind": s.kind, "reason": s.reason})).collect::<Vec<_>>(),
                    "jobs": r.jobs.iter().map(|j| job_json(finished.get(&j.id).unwrap_or(j))).collect::<Vec<_>>(),
                }),
                Err(err) => json!({
                    "file": file.display().to_string(),
                    "error": { "code": error_code(err), "message": format!("{err:#}") },
                }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "uploads": uploads }))?);
    }
    let jobs_ok = finished.values().all(|j| j.state == pb::JobState::Succeeded as i32);
    Ok(if failed || !jobs_ok {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn upload_one(
    ingest: &mut IngestServiceClient<AuthedChannel>,
    path: &Path,
    category: &str,
    extract_schema: &str,
) -> Result<pb::UploadMediaResponse> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Header(pb::UploadHeader {
            filename,
            content_type: String::new(),
            category: category.to_owned(),
            extract_schema_json: extract_schema.to_owned(),
        })),
    };
    tx.send(header).await.map_err(|_| anyhow!("upload stream closed"))?;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let part = pb::UploadMediaRequest {
                part: Some(pb::upload_media_request::Part::Chunk(buf[..n].to_vec())),
            };
            if tx.send(part).await.is_err() {
                return Ok(());
            }
        }
    });
    let response = ingest
        .upload_media(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await??;
    Ok(response?.into_inner())
}

/// Watches the jobs until each has ended; returns them as they ended, in the same order.
async fn follow(
    jobs_client: &mut JobServiceClient<AuthedChannel>,
    output: Output,
    jobs: &[pb::Job],
) -> Result<Vec<pb::Job>> {
    let tty = output == Output::Text && std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:.bold} {bar:30} {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut tasks = Vec::new();
    for job in jobs {
        let bar = if tty {
            let bar = bars.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(format!("{} {}", &job.id[..8.min(job.id.len())], job.kind));
            Some(bar)
        } else {
            None
        };
        let mut client = jobs_client.clone();
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_job(pb::WatchJobRequest {
                    job_id: job.id.clone(),
                    after_seq: 0,
                })
                .await?
                .into_inner();
            let mut last = job.clone();
            while let Some(update) = stream.next().await {
                let update = update?;
                if let Some(j) = update.job {
                    last = j;
                }
                let state = state_name(update.state);
                if let Some(bar) = &bar {
                    bar.set_position((update.progress * 100.0) as u64);
                    bar.set_message(if update.message.is_empty() {
                        state.to_owned()
                    } else {
                        format!("{state} {}", update.message)
                    });
                } else if output == Output::Text && update.seq > 0 {
                    println!("  {}  {:<21} {}", job.id, job.kind, state);
                }
            }
            if let Some(bar) = &bar {
                bar.finish_with_message(state_name(last.state).to_owned());
            }
            Ok::<pb::Job, tonic::Status>(last)
        }));
    }
    let mut finished = Vec::with_capacity(tasks.len());
    for task in tasks {
        finished.push(task.await.map_err(|e| anyhow!("watch task failed: {e}"))??);
    }
    Ok(finished)
}
