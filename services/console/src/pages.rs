//! The pages and actions. Each page reads the API with the viewer's key; its live part is
//! rendered alone for a fragment request (`X-Fragment: 1`), which the script makes when
//! `/events` says something changed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Form;
use axum::body::Body;
use axum::extract::{FromRequestParts, Multipart, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::{Stream, StreamExt};
use maud::{Markup, html};
use mediamesh_proto::v1 as pb;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Viewer;
use crate::error::ConsoleError;
use crate::views::{self, Nav};

type PageResult = Result<Response, ConsoleError>;

/// Jobs per page of the list.
const PAGE_SIZE: u32 = 50;
/// JSON outputs up to this size are read to be drawn (waveform peaks, transcripts).
const FETCH_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// Upload chunks sent to ingest.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// Whether the request wants only the live part of the page.
pub(crate) struct Fragment(bool);

impl<S: Send + Sync> FromRequestParts<S> for Fragment {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get("x-fragment").is_some_and(|v| v == "1")))
    }
}

fn render(fragment: Fragment, title: &str, nav: Nav, head: Markup, events: &str, live: Markup) -> Response {
    let mut response = if fragment.0 {
        live.into_response()
    } else {
        views::page(title, nav, head, Some((events, live))).into_response()
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---- overview ----

pub(crate) async fn overview(viewer: Viewer, fragment: Fragment) -> PageResult {
    let mut stats = viewer
        .jobs()
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await?
        .into_inner()
        .stats;
    stats.sort_by(|a, b| (&a.queue, &a.kind).cmp(&(&b.queue, &b.kind)));
    let total = |f: fn(&pb::QueueStats) -> u64| stats.iter().map(f).sum::<u64>();
    let totals = [
        ("QUEUED", total(|s| s.queued)),
        ("SCHEDULED", total(|s| s.scheduled)),
        ("RUNNING", total(|s| s.running)),
        ("SUCCEEDED", total(|s| s.succeeded)),
        ("FAILED", total(|s| s.failed)),
        ("CANCELLED", total(|s| s.cancelled)),
    ];
    let oldest = stats.iter().map(|s| s.oldest_wait_seconds).fold(0.0_f64, f64::max);
    let link = |kind: &str, state: &str| format!("/jobs?{}", views::query(&[("kind", kind), ("state", state)]));
    let live = html! {
        ul class="totals" aria-label="Jobs by state" {
            @for (state, n) in &totals {
                li class={ "total state-" (state.to_ascii_lowercase()) } {
                    a href=(link("", state)) { span class="n" { (n) } span class="label" { (state) } }
                }
            }
            li class="total" {
                span class="n" { (if oldest > 0.0 { views::duration(oldest) } else { "—".to_owned() }) }
                span class="label" { "oldest waiting" }
            }
        }
        @if stats.is_empty() {
            div class="empty" {
                p { "No jobs yet." }
                p { a href="/upload" { "Upload a file" } " and the jobs of its pipeline appear here as they run." }
            }
        } @else {
            div class="table-wrap" {
                table class="queues" {
                    caption { "Queues, with the rates of the last five minutes" }
                    thead { tr {
                        th scope="col" { "Queue" } th scope="col" { "Kind" }
                        th scope="col" class="num" { "Queued" } th scope="col" class="num" { "Scheduled" }
                        th scope="col" class="num" { "Running" } th scope="col" class="num" { "Succeeded" }
                        th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Cancelled" }
                        th scope="col" class="num" { "Done/min" } th scope="col" class="num" { "Failed/min" }
                        th scope="col" class="num" { "Oldest wait" } th scope="col" class="num" { "Mean run" }
                    } }
                    tbody {
                        @for s in &stats {
                            tr data-kind=(s.kind) {
                                td { (s.queue) }
                                th scope="row" { a href=(link(&s.kind, "")) { (s.kind) } }
                                td class="num" { a href=(link(&s.kind, "QUEUED")) { (s.queued) } }
                                td class="num" { a href=(link(&s.kind, "SCHEDULED")) { (s.scheduled) } }
                                td class="num" { a href=(link(&s.kind, "RUNNING")) { (s.running) } }
                                td class="num" { a href=(link(&s.kind, "SUCCEEDED")) { (s.succeeded) } }
                                td class="num" { a href=(link(&s.kind, "FAILED")) { (s.failed) } }
                                td class="num" { a href=(link(&s.kind, "CANCELLED")) { (s.cancelled) } }
                                td class="num" { (format!("{:.1}", s.succeeded_per_minute)) }
                                td class="num" { (format!("{:.1}", s.failed_per_minute)) }
                                td class="num" { (if s.oldest_wait_seconds > 0.0 { views::duration(s.oldest_wait_seconds) } else { "—".to_owned() }) }
                                td class="num" { (if s.mean_run_seconds > 0.0 { views::duration(s.mean_run_seconds) } else { "—".to_owned() }) }
                            }
                        }
                    }
                }
            }
        }
    };
    let head = html! { h1 { "Overview" } };
    Ok(render(fragment, "Overview", Nav::Overview, head, "/events", live))
}

// ---- job list ----

#[derive(Deserialize, Default, Clone)]
pub(crate) struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    media: String,
    /// UTC, `YYYY-MM-DDTHH:MM` (a datetime-local input) or RFC 3339.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    notice: String,
}

impl JobsQuery {
    fn filters(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("state", self.state.as_str()),
            ("kind", self.kind.as_str()),
            ("media", self.media.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
            ("code", self.code.as_str()),
        ]
    }

    fn state(&self) -> Result<pb::JobState, ConsoleError> {
        parse_state(&self.state)
    }

    fn code(&self) -> Result<pb::ErrorCode, ConsoleError> {
        if self.code.is_empty() {
            return Ok(pb::ErrorCode::Unspecified);
        }
        pb::ErrorCode::from_str_name(&format!("ERROR_CODE_{}", self.code.to_ascii_uppercase()))
            .ok_or_else(|| ConsoleError::bad_input(format!("unknown error code {:?}", self.code)))
    }
}

fn parse_state(state: &str) -> Result<pb::JobState, ConsoleError> {
    if state.is_empty() {
        return Ok(pb::JobState::Unspecified);
    }
    pb::JobState::from_str_name(&format!("JOB_STATE_{}", state.to_ascii_uppercase()))
        .ok_or_else(|| ConsoleError::bad_input(format!("unknown state {state:?}")))
}

/// A time from a filter field, in UTC.
fn parse_time(field: &str, value: &str) -> Result<Option<prost_types::Timestamp>, ConsoleError> {
    if value.is_empty() {
        return Ok(None);
    }
    let at = chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S"))
                .map(|t| t.and_utc())
        })
        .map_err(|_| ConsoleError::bad_input(format!("{field}: {value:?} is not a time (YYYY-MM-DDTHH:MM, UTC)")))?;
    Ok(Some(mediamesh_core::to_timestamp(at)))
}

const STATES: [&str; 6] = ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

fn error_codes() -> impl Iterator<Item = &'static str> {
    (1..=15).filter_map(|c| {
        pb::ErrorCode::try_from(c)
            .ok()
            .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_"))
    })
}

pub(crate) async fn jobs(viewer: Viewer, fragment: Fragment, Query(q): Query<JobsQuery>) -> PageResult {
    let request = pb::ListJobsRequest {
        media_id: q.media.clone(),
        state: q.state()? as i32,
        kind: q.kind.clone(),
        page_size: PAGE_SIZE,
        page_token: q.page.clone(),
        created_after: parse_time("from", &q.from)?,
        created_before: parse_time("to", &q.to)?,
        error_code: q.code()? as i32,
        newest_first: true,
    };
    let response = viewer.jobs().list_jobs(request).await?.into_inner();
    let filters = q.filters();
    let filtered = filters.iter().any(|(_, v)| !v.is_empty());
    let retry_state = match q.state()? {
        pb::JobState::Cancelled => Some("CANCELLED"),
        pb::JobState::Unspecified | pb::JobState::Failed => Some("FAILED"),
        _ => None,
    };
    let retry_link = retry_state.map(|state| {
        let mut pairs: Vec<(&str, &str)> = filters.iter().copied().filter(|(k, _)| *k != "state").collect();
        pairs.push(("state", state));
        (state, format!("/jobs/retry?{}", views::query(&pairs)))
    });
    let head = html! {
        h1 { "Jobs" }
        (views::notice(Some(&q.notice)))
        form method="get" action="/jobs" class="filters" aria-label="Filter jobs" {
            div {
                label for="f-state" { "State" }
                select id="f-state" name="state" {
                    option value="" { "any" }
                    @for s in STATES { option value=(s) selected[q.state.eq_ignore_ascii_case(s)] { (s) } }
                }
            }
            div {
                label for="f-kind" { "Kind" }
                input id="f-kind" name="kind" value=(q.kind) placeholder="media.thumbnails" list="kinds";
                datalist id="kinds" {
                    @for k in ["media.probe", "media.thumbnails", "media.waveform", "media.video_thumbnail",
                        "media.video_preview", "inference.transcribe", "inference.describe_image",
                        "inference.enhance_image", "inference.extract"] { option value=(k) {} }
                }
            }
            div {
                label for="f-media" { "Media id" }
                input id="f-media" name="media" value=(q.media) size="12";
            }
            div {
                label for="f-from" { "Created from (UTC)" }
                input id="f-from" name="from" type="datetime-local" value=(q.from);
            }
            div {
                label for="f-to" { "to (UTC)" }
                input id="f-to" name="to" type="datetime-local" value=(q.to);
            }
            div {
                label for="f-code" { "Error code" }
                select id="f-code" name="code" {
                    option value="" { "any" }
                    @for c in error_codes() { option value=(c) selected[q.code.eq_ignore_ascii_case(c)] { (c) } }
                }
            }
            div class="buttons" {
                button type="submit" { "Filter" }
                @if filtered { a href="/jobs" { "Clear" } }
            }
        }
        @if let Some((state, href)) = &retry_link {
            p {
                a class="button secondary" href=(href) {
                    "Retry every " (state.to_ascii_lowercase()) " job matching these filters…"
                }
            }
        }
    };
    let mut page_pairs = filters.clone();
    page_pairs.push(("page", response.next_page_token.as_str()));
    let live = html! {
        (views::job_table("Jobs, newest first", &response.jobs, html! {
            @if filtered { p { "No jobs match these filters." } }
            @else { p { "No jobs yet. " a href="/upload" { "Upload a file" } " to start its pipeline." } }
        }))
        nav class="pager" aria-label="Pages" {
            @if !q.page.is_empty() { a href={ "/jobs?" (views::query(&filters)) } { "← Newest" } }
            @if !response.next_page_token.is_empty() { a href={ "/jobs?" (views::query(&page_pairs)) } rel="next" { "Older →" } }
        }
    };
    let events = format!("/events?{}", views::query(&[("kind", &q.kind), ("media", &q.media)]));
    Ok(render(fragment, "Jobs", Nav::Jobs, head, &events, live))
}

// ---- retry all matching ----

#[derive(Deserialize, Default)]
pub(crate) struct RetryForm {
    #[serde(flatten)]
    filters: JobsQuery,
}

fn retry_request(q: &JobsQuery, dry_run: bool) -> Result<pb::RetryJobsRequest, ConsoleError> {
    let state = match q.state()? {
        pb::JobState::Unspecified | pb::JobState::Failed => pb::JobState::Failed,
        pb::JobState::Cancelled => pb::JobState::Cancelled,
        other => {
            return Err(ConsoleError::bad_input(format!(
                "only FAILED or CANCELLED jobs can be retried, not {}",
                views::state_name(other as i32)
            )));
        }
    };
    Ok(pb::RetryJobsRequest {
        state: state as i32,
        kind: q.kind.clone(),
        error_code: q.code()? as i32,
        limit: 1000,
        dry_run,
        media_id: q.media.clone(),
        created_after: parse_time("from", &q.from)?,
        created_before: parse_time("to", &q.to)?,
        ..Default::default()
    })
}

fn describe_filters(q: &JobsQuery) -> String {
    let parts: Vec<String> = [
        ("kind", &q.kind),
        ("media", &q.media),
        ("error code", &q.code),
        ("created from", &q.from),
        ("created before", &q.to),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k} {v}"))
    .collect();
    if parts.is_empty() {
        "any kind".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(crate) async fn retry_confirm(viewer: Viewer, Query(q): Query<JobsQuery>) -> PageResult {
    let request = retry_request(&q, true)?;
    let state = views::state_name(request.state);
    let ids = viewer.jobs().retry_jobs(request).await?.into_inner().job_ids;
    let back = format!("/jobs?{}", views::query(&q.filters()));
    let head = html! {
        h1 { "Retry " (state.to_ascii_lowercase()) " jobs" }
        @if ids.is_empty() {
            p class="empty" { "No " (state) " jobs match: " (describe_filters(&q)) "." }
            p { a href=(back) { "Back to the jobs" } }
        } @else {
            form method="post" action="/jobs/retry" class="confirm" {
                p id="retry-count" {
                    "Retry " strong { (ids.len()) } " " (state) " job" @if ids.len() != 1 { "s" }
                    " matching " (describe_filters(&q)) "?"
                    @if ids.len() >= 1000 { " (At most 1000 at a time: the oldest first.)" }
                }
                @for (k, v) in q.filters() { input type="hidden" name=(k) value=(v); }
                button type="submit" { "Retry " (ids.len()) " job" @if ids.len() != 1 { "s" } }
                " " a href=(back) { "Cancel" }
            }
        }
    };
    Ok(views::page("Retry jobs", Nav::Jobs, head, None).into_response())
}

pub(crate) async fn retry_matching(viewer: Viewer, Form(form): Form<RetryForm>) -> PageResult {
    let q = form.filters;
    let request = retry_request(&q, false)?;
    let ids = viewer.jobs().retry_jobs(request).await?.into_inner().job_ids;
    let mut pairs: Vec<(&str, &str)> = q.filters().into_iter().filter(|(k, _)| *k != "state").collect();
    let notice = format!("Retried {} job{}.", ids.len(), if ids.len() == 1 { "" } else { "s" });
    pairs.push(("notice", &notice));
    Ok(Redirect::to(&format!("/jobs?{}", views::query(&pairs))).into_response())
}

// ---- one job ----

#[derive(Deserialize, Default)]
pub(crate) struct NoticeQuery {
    #[serde(default)]
    notice: String,
}

fn parse_uuid(what: &str, id: &str) -> Result<(), ConsoleError> {
    if id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        Ok(())
    } else {
        Err(ConsoleError::not_found(format!("{id:?} is not a {what} id")))
    }
}

/// Reads the small JSON outputs that the page draws (waveform peaks, transcripts).
async fn fetch_json(viewer: &Viewer, media_id: &str, outputs: &[pb::Output]) -> BTreeMap<String, serde_json::Value> {
    let mut fetched = BTreeMap::new();
    for output in outputs {
        if output.content_type != "application/json" || output.bytes > FETCH_JSON_BYTES {
            continue;
        }
        match download(viewer, media_id, &output.name).await {
            Ok((_, data)) => {
                if let Ok(value) = serde_json::from_slice(&data) {
                    fetched.insert(output.name.clone(), value);
                }
            }
            Err(err) => tracing::debug!(error = %err, name = %output.name, "output not read"),
        }
    }
    fetched
}

async fn download(viewer: &Viewer, media_id: &str, name: &str) -> Result<(pb::DownloadHeader, Vec<u8>), ConsoleError> {
    let stream = viewer
        .ingest()
        .download_media(pb::DownloadMediaRequest {
            media_id: media_id.to_owned(),
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    Ok(mediamesh_proto::read_download(stream).await?)
}

pub(crate) async fn job(
    State(state): State<AppState>,
    viewer: Viewer,
    fragment: Fragment,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    parse_uuid("job", &id)?;
    let job = viewer
        .jobs()
        .get_job(pb::GetJobRequest { job_id: id.clone() })
        .await?
        .into_inner()
        .job
        .ok_or_else(|| ConsoleError::not_found("no such job"))?;
    let outputs = job.result.as_ref().map(|r| r.outputs.clone()).unwrap_or_default();
    let fetched = fetch_json(&viewer, &job.media_id, &outputs).await;
    let terminal = views::is_terminal(job.state);
    let head = html! {
        h1 { "Job " code { (views::short_id(&job.id)) } " · " (job.kind) }
        (views::notice(Some(&q.notice)))
    };
    let live = html! {
        div class="job-state" {
            (views::state_badge(job.state))
            @if job.state == pb::JobState::Running as i32 { " " (views::progress(job.progress, &job.progress_message)) }
            @if job.pending_dependencies > 0 { " " span class="muted" { "waiting for " (job.pending_dependencies) " dependencies" } }
            div class="actions" {
                @if !terminal {
                    form method="post" action={ "/jobs/" (job.id) "/cancel" } {
                        button type="submit" class="danger" id="cancel" { "Cancel job" }
                    }
                }
                @if job.state == pb::JobState::Failed as i32 || job.state == pb::JobState::Cancelled as i32 {
                    form method="post" action={ "/jobs/" (job.id) "/retry" } {
                        button type="submit" id="retry" { "Retry job" }
                    }
                }
            }
        }
        @if let Some(error) = job.error.as_ref().filter(|e| e.code != 0) {
            p class="error" role="alert" id="job-error" {
                code class="code" { (views::error_name(error.code)) } " " (error.message)
                @if error.retryable && !terminal { " (will be retried)" }
            }
        }
        dl class="details" {
            dt { "Id" } dd { code { (job.id) } }
            dt { "Queue" } dd { (job.queue) " · priority " (job.priority) }
            dt { "Media" } dd {
                @if job.media_id.is_empty() { span class="muted" { "—" } }
                @else { a href={ "/media/" (job.media_id) } { code { (job.media_id) } } }
            }
            dt { "Attempts" } dd { (job.attempt) " of " (job.max_attempts) " · timeout " (views::duration(job.timeout_ms as f64 / 1000.0)) }
            dt { "Created" } dd { (views::time(job.created_at.as_ref())) }
            dt { "Run at" } dd { (views::time(job.run_at.as_ref())) }
            dt { "Updated" } dd { (views::time(job.updated_at.as_ref())) }
            dt { "Finished" } dd { (views::time(job.finished_at.as_ref())) }
            @if !job.depends_on.is_empty() {
                dt { "Depends on" } dd {
                    @for dep in &job.depends_on { a href={ "/jobs/" (dep) } { code { (views::short_id(dep)) } } " " }
                }
            }
            @if !job.idempotency_key.is_empty() { dt { "Idempotency key" } dd { code { (job.idempotency_key) } } }
            dt { "Trace" } dd { (views::trace_link(&state.config.trace_url, &job.trace_id)) }
        }
        h2 { "Attempts" }
        @if job.attempts.is_empty() {
            p class="muted" { "No attempt has started yet." }
        } @else {
            ol class="timeline" aria-label="Attempts" {
                @for a in &job.attempts {
                    li class={ "attempt state-" (views::state_name(a.outcome).to_ascii_lowercase()) } {
                        div { strong { "#" (a.attempt) } " " (views::state_badge(a.outcome)) }
                        div class="muted" {
                            "worker " code { (if a.worker_id.is_empty() { "—" } else { a.worker_id.as_str() }) }
                            " · started " (views::time(a.started_at.as_ref()))
                            @if let Some(d) = views::between(a.started_at.as_ref(), a.finished_at.as_ref()) {
                                " · took " (views::duration(d))
                            }
                        }
                        @if let Some(error) = a.error.as_ref().filter(|e| e.code != 0) {
                            div class="error" { code class="code" { (views::error_name(error.code)) } " " (error.message) }
                        }
                    }
                }
            }
        }
        h2 { "Payload" }
        (views::json_block(if job.payload_json.is_empty() { "{}" } else { &job.payload_json }))
        h2 { "Result" }
        @match &job.result {
            None => {
                p class="muted" { (if terminal { "No result." } else { "Not finished yet." }) }
            }
            Some(result) => {
                @if result.reused { p class="notice" { "Reused: the same bytes were processed before." } }
                @if !result.metadata_json.is_empty() { (views::metadata(&result.metadata_json)) }
                (views::outputs(&job.media_id, &result.outputs, &fetched))
            }
        }
    };
    // A finished job changes only when retried (a POST that renders the page again).
    let events = if terminal {
        String::new()
    } else {
        format!("/events?job={}", job.id)
    };
    Ok(render(
        fragment,
        &format!("Job {}", views::short_id(&job.id)),
        Nav::Jobs,
        head,
        &events,
        live,
    ))
}

pub(crate) async fn cancel(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    parse_uuid("job", &id)?;
    let job = viewer
        .jobs()
        .cancel_job(pb::CancelJobRequest { job_id: id.clone() })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    let notice = format!("Cancel requested: the job is {}.", views::state_name(job.state));
    Ok(Redirect::to(&format!("/jobs/{id}?{}", views::query(&[("notice", &notice)]))).into_response())
}

pub(crate) async fn retry(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    parse_uuid("job", &id)?;
    viewer
        .jobs()
        .retry_job(pb::RetryJobRequest { job_id: id.clone() })
        .await?;
    Ok(Redirect::to(&format!(
        "/jobs/{id}?{}",
        views::query(&[("notice", "Retried: the job is queued again.")])
    ))
    .into_response())
}

// ---- media ----

pub(crate) async fn media(
    viewer: Viewer,
    fragment: Fragment,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    parse_uuid("media", &id)?;
    let response = viewer
        .ingest()
        .get_media(pb::GetMediaRequest { media_id: id.clone() })
        .await?
        .into_inner();
    let media = response.media.ok_or_else(|| ConsoleError::not_found("no such media"))?;
    let mut jobs = response.jobs;
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    let fetched = fetch_json(&viewer, &media.id, &media.derivatives).await;
    let original = format!("/media/{}/files/original", media.id);
    let kind = pb::MediaKind::try_from(media.kind).unwrap_or(pb::MediaKind::Unspecified);
    let head = html! {
        h1 { "Media " code { (views::short_id(&media.id)) } " · " (media.filename) }
        (views::notice(Some(&q.notice)))
        dl class="details" {
            dt { "Id" } dd { code { (media.id) } }
            dt { "Type" } dd { (media.content_type) " · " (views::bytes(media.bytes))
                @if media.width > 0 { " · " (media.width) "×" (media.height) } }
            dt { "SHA-256" } dd { code class="hash" { (media.sha256) } }
            dt { "Uploaded" } dd { (views::time(media.created_at.as_ref())) }
            @if !media.parent_id.is_empty() {
                dt { "Made from" } dd { a href={ "/media/" (media.parent_id) } { code { (media.parent_id) } } }
            }
            dt { "Original" } dd { a href=(original) download=(media.filename) { "download" } }
        }
        @if !media.origin_json.is_empty() { details { summary { "How it was made" } (views::json_block(&media.origin_json)) } }
        @if kind == pb::MediaKind::Image && media.bytes < 20 * 1024 * 1024 && media.derivatives.is_empty() {
            img class="original" src=(original) alt={ "Original: " (media.filename) } loading="lazy";
        }
        @if kind == pb::MediaKind::Audio {
            audio class="original" controls preload="metadata" src=(original) aria-label={ "Original: " (media.filename) } {}
        }
    };
    let live = html! {
        h2 { "Jobs" }
        (views::job_table("Jobs of this media", &jobs, html! { p { "No jobs for this media." } }))
        h2 { "Outputs" }
        (views::outputs(&media.id, &media.derivatives, &fetched))
    };
    let events = format!("/events?media={}", media.id);
    Ok(render(
        fragment,
        &format!("Media {}", views::short_id(&media.id)),
        Nav::Jobs,
        head,
        &events,
        live,
    ))
}

/// The original or a derivative, streamed from the API.
pub(crate) async fn file(viewer: Viewer, Path((id, name)): Path<(String, String)>) -> PageResult {
    parse_uuid("media", &id)?;
    let mut stream = viewer
        .ingest()
        .download_media(pb::DownloadMediaRequest { media_id: id, name })
        .await?
        .into_inner();
    let header = match stream.message().await? {
        Some(pb::DownloadMediaResponse {
            part: Some(pb::download_media_response::Part::Header(header)),
        }) => header,
        _ => {
            return Err(ConsoleError::from(tonic::Status::internal(
                "the download did not start with its header",
            )));
        }
    };
    let body = Body::from_stream(stream.map(|m| match m {
        Ok(pb::DownloadMediaResponse {
            part: Some(pb::download_media_response::Part::Chunk(chunk)),
        }) => Ok(bytes::Bytes::from(chunk)),
        Ok(_) => Ok(bytes::Bytes::new()),
        Err(status) => Err(std::io::Error::other(status.message().to_owned())),
    }));
    let mut headers = HeaderMap::new();
    let content_type = if header.content_type.is_empty() {
        "application/octet-stream"
    } else {
        &header.content_type
    };
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| content_type.starts_with(p))
        || content_type == "application/json";
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if header.bytes > 0 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(header.bytes));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Uploaded bytes never run as a page of this site.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'; media-src 'self'"),
    );
    if !inline {
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    Ok((StatusCode::OK, headers, body).into_response())
}

// ---- AI spend ----

pub(crate) async fn spend(viewer: Viewer) -> PageResult {
    let spend = viewer
        .inference()
        .get_spend(pb::GetSpendRequest { days: 30 })
        .await?
        .into_inner();
    let meter = |label: &str, used: f64, budget: f64| {
        html! {
            div class="budget" {
                h2 { (label) }
                p class="n" { (format!("${used:.4}")) }
                @if budget > 0.0 {
                    meter min="0" max=(budget) value=(used.min(budget)) high=(budget * 0.8) optimum="0" aria-label={ (label) " against its budget" } {}
                    p class="muted" { "of $" (format!("{budget:.2}")) " budget (" (format!("{:.0}", used / budget * 100.0)) "%)" }
                } @else {
                    p class="muted" { "no budget set" }
                }
            }
        }
    };
    let mut by_model: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for line in &spend.lines {
        let entry = by_model.entry((line.provider.clone(), line.model.clone())).or_default();
        entry.0 += line.calls;
        entry.1 += line.cost_usd;
    }
    let head = html! {
        h1 { "AI spend" }
        div class="budgets" {
            (meter("Today", spend.today_usd, spend.daily_budget_usd))
            (meter("This month", spend.month_usd, spend.monthly_budget_usd))
        }
        @if spend.lines.is_empty() {
            div class="empty" { p { "No AI calls in the last 30 days." } }
        } @else {
            h2 { "By model, last 30 days" }
            div class="table-wrap" { table {
                caption class="sr-only" { "Spend by provider and model" }
                thead { tr { th scope="col" { "Provider" } th scope="col" { "Model" } th scope="col" class="num" { "Calls" } th scope="col" class="num" { "Cost" } } }
                tbody { @for ((provider, model), (calls, cost)) in &by_model {
                    tr { td { (provider) } td { (model) } td class="num" { (calls) } td class="num" { (format!("${cost:.4}")) } }
                } }
            } }
            h2 { "By day" }
            div class="table-wrap" { table class="spend" {
                caption class="sr-only" { "Spend per day, provider and model" }
                thead { tr {
                    th scope="col" { "Day (UTC)" } th scope="col" { "Provider" } th scope="col" { "Model" }
                    th scope="col" class="num" { "Calls" } th scope="col" class="num" { "Failed" }
                    th scope="col" class="num" { "Tokens in" } th scope="col" class="num" { "Tokens out" } th scope="col" class="num" { "Cost" }
                } }
                tbody { @for line in &spend.lines {
                    tr {
                        td { (line.day) } td { (line.provider) } td { (line.model) }
                        td class="num" { (line.calls) } td class="num" { (line.failed_calls) }
                        td class="num" { (line.tokens_in) } td class="num" { (line.tokens_out) }
                        td class="num" { (format!("${:.4}", line.cost_usd)) }
                    }
                } }
            } }
        }
    };
    Ok(views::page("AI spend", Nav::Spend, head, None).into_response())
}

// ---- upload ----

fn upload_form(error: Option<&str>) -> Markup {
    views::page(
        "Upload",
        Nav::Upload,
        html! {
            h1 { "Upload" }
            @if let Some(error) = error { p class="error" role="alert" { (error) } }
            form method="post" action="/upload" enctype="multipart/form-data" class="upload" {
                div {
                    label for="category" { "Category " span class="muted" { "(optional: adds its configured jobs)" } }
                    input id="category" name="category" placeholder="product";
                }
                div {
                    label for="file" { "Photo, audio or video" }
                    input id="file" name="file" type="file" required accept="image/*,audio/*,video/*";
                }
                button type="submit" { "Upload and run its pipeline" }
            }
            p class="hint" { "The upload page of the media then shows its jobs as they run." }
        },
        None,
    )
}

pub(crate) async fn upload_page(_viewer: Viewer) -> Response {
    upload_form(None).into_response()
}

pub(crate) async fn upload(viewer: Viewer, mut multipart: Multipart) -> Response {
    match upload_inner(&viewer, &mut multipart).await {
        Ok(response) => {
            let media = response.media.unwrap_or_default();
            let mut notice = if response.deduplicated {
                "These bytes were uploaded before: this is the earlier media.".to_owned()
            } else {
                format!(
                    "Uploaded; {} job{} queued.",
                    response.jobs.len(),
                    if response.jobs.len() == 1 { "" } else { "s" }
                )
            };
            for skipped in &response.skipped {
                notice.push_str(&format!(" {} skipped: {}.", skipped.kind, skipped.reason));
            }
            Redirect::to(&format!("/media/{}?{}", media.id, views::query(&[("notice", &notice)]))).into_response()
        }
        Err(err) if err.is_unauthenticated() => err.into_response(),
        Err(err) => {
            let status = match err.code {
                mediamesh_core::ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                mediamesh_core::ErrorCode::QuotaExceeded | mediamesh_core::ErrorCode::RateLimited => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                mediamesh_core::ErrorCode::Internal | mediamesh_core::ErrorCode::Unavailable => StatusCode::BAD_GATEWAY,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, upload_form(Some(&format!("{}: {}", err.code, err.message)))).into_response()
        }
    }
}

/// Streams the form's file to `UploadMedia` as it arrives: the header, then chunks.
async fn upload_inner(viewer: &Viewer, multipart: &mut Multipart) -> Result<pb::UploadMediaResponse, ConsoleError> {
    let mut category = String::new();
    let bad = |err: axum::extract::multipart::MultipartError| {
        ConsoleError::bad_input(format!("the form could not be read: {}", err.body_text()))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("category") => category = field.text().await.map_err(bad)?.trim().to_owned(),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload").to_owned();
                let content_type = field.content_type().unwrap_or("").to_owned();
                let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadMediaRequest>(4);
                let header = pb::UploadMediaRequest {
                    part: Some(pb::upload_media_request::Part::Header(pb::UploadHeader {
                        filename,
                        content_type,
                        category: category.clone(),
                        ..Default::default()
                    })),
                };
                let _ = tx.send(header).await;
                let mut ingest = viewer.ingest();
                let call = tokio::spawn(async move {
                    ingest
                        .upload_media(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await
                });
                let mut pending = Vec::with_capacity(UPLOAD_CHUNK);
                let mut read_error = None;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            pending.extend_from_slice(&chunk);
                            if pending.len() >= UPLOAD_CHUNK {
                                let part = pb::upload_media_request::Part::Chunk(std::mem::take(&mut pending));
                                if tx.send(pb::UploadMediaRequest { part: Some(part) }).await.is_err() {
                                    break; // ingest answered early (a refusal): its answer says why
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            read_error = Some(bad(err));
                            break;
                        }
                    }
                }
                if let Some(err) = read_error {
                    call.abort();
                    return Err(err);
                }
                if !pending.is_empty() {
                    let part = pb::upload_media_request::Part::Chunk(pending);
                    let _ = tx.send(pb::UploadMediaRequest { part: Some(part) }).await;
                }
                drop(tx);
                let response = call
                    .await
                    .map_err(|err| ConsoleError::from(tonic::Status::internal(format!("upload task: {err}"))))??;
                return Ok(response.into_inner());
            }
            _ => {}
        }
    }
    Err(ConsoleError::bad_input("choose a file to upload"))
}

// ---- live updates ----

#[derive(Deserialize, Default)]
pub(crate) struct EventsQuery {
    #[serde(default)]
    job: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    media: String,
}

/// Server-sent events: `ready` once the API stream is open, `job` for each change (with the
/// feed cursor or the job's seq as the event id, so that a reconnect resumes), `end` when a
/// watched job has ended, `error` with a stable code when the API refuses.
pub(crate) async fn events(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let opened = if q.job.is_empty() {
        viewer
            .jobs()
            .watch_jobs(pb::WatchJobsRequest {
                kind: q.kind.clone(),
                media_id: q.media.clone(),
                cursor: last_id,
                ..Default::default()
            })
            .await
    } else {
        viewer
            .jobs()
            .watch_job(pb::WatchJobRequest {
                job_id: q.job.clone(),
                after_seq: last_id.parse().unwrap_or(0),
            })
            .await
    };
    let watching_job = !q.job.is_empty();
    let stream: futures::stream::BoxStream<'static, Result<Event, Infallible>> = match opened {
        Ok(response) => {
            let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
            let updates = response.into_inner().map(move |message| {
                Ok(match message {
                    Ok(m) => {
                        let id = if watching_job {
                            m.seq.to_string()
                        } else {
                            m.cursor.clone()
                        };
                        let data = serde_json::json!({
                            "job_id": m.job_id,
                            "state": views::state_name(m.state),
                            "attempt": m.attempt,
                            "progress": m.progress,
                            "message": m.message,
                        });
                        let event = Event::default().event("job").data(data.to_string());
                        if id.is_empty() || id == "0" {
                            event
                        } else {
                            event.id(id)
                        }
                    }
                    Err(status) => {
                        let err = ConsoleError::from(status);
                        Event::default()
                            .event("error")
                            .data(serde_json::json!({"code": err.code.as_str(), "message": err.message}).to_string())
                    }
                })
            });
            // A watched job's stream ends with the job: say so, so that the browser does not
            // reconnect to a finished job.
            let end = futures::stream::iter(watching_job.then(|| Ok(Event::default().event("end").data("{}"))));
            ready.chain(updates).chain(end).boxed()
        }
        Err(status) => {
            let err = ConsoleError::from(status);
            futures::stream::once(async move {
                Ok(Event::default()
                    .event("error")
                    .data(serde_json::json!({"code": err.code.as_str(), "message": err.message}).to_string()))
            })
            .boxed()
        }
    };
    let stream = stream.take_until(state.shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        views::message_page("Not found", "There is no such page.", None),
    )
        .into_response()
}
