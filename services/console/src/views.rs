//! The HTML: one layout, and the pieces the pages are made of.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};
use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use prost_types::Timestamp;

/// Which page of the navigation is open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Jobs,
    Upload,
    Spend,
    None,
}

/// A whole page. `live` is the part that `/events` refreshes (`data-events` names the stream);
/// it is what a fragment request (`X-Fragment: 1`) gets back alone.
pub(crate) fn page(title: &str, nav: Nav, head: Markup, live: Option<(&str, Markup)>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mediamesh" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/" { "mediamesh" }
                    @if nav != Nav::None {
                        nav aria-label="Main" {
                            (nav_link("/", "Overview", nav == Nav::Overview))
                            (nav_link("/jobs", "Jobs", nav == Nav::Jobs))
                            (nav_link("/upload", "Upload", nav == Nav::Upload))
                            (nav_link("/spend", "AI spend", nav == Nav::Spend))
                        }
                        form method="post" action="/logout" class="logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" {
                    (head)
                    @if let Some((events, live)) = live {
                        p id="live-status" class="live-status" role="status" aria-live="polite" { "" }
                        div id="live" data-events=(events) { (live) }
                    }
                }
            }
        }
    }
}

fn nav_link(href: &str, label: &str, current: bool) -> Markup {
    html! {
        @if current {
            a href=(href) aria-current="page" { (label) }
        } @else {
            a href=(href) { (label) }
        }
    }
}

pub(crate) fn login(next: &str, error: Option<&str>, notice: Option<&str>) -> Markup {
    page(
        "Log in",
        Nav::None,
        html! {
            h1 { "Log in" }
            @if let Some(error) = error {
                p class="error" role="alert" { (error) }
            }
            @if let Some(notice) = notice {
                p class="notice" role="status" { (notice) }
            }
            form method="post" action="/login" class="login" {
                input type="hidden" name="next" value=(next);
                label for="key" { "API key" }
                input id="key" name="key" type="password" autocomplete="current-password" required
                    autofocus placeholder="mm_…";
                button type="submit" { "Log in" }
            }
            p class="hint" {
                "Your tenant's API key (" code { "meshctl keys create" } ", or the "
                code { "api-key" } " file that " code { "meshctl dev" } " writes). "
                "It is kept in an HTTP-only cookie and sent only to the mediamesh API."
            }
        },
        None,
    )
}

pub(crate) fn message_page(title: &str, message: &str, code: Option<ErrorCode>) -> Markup {
    page(
        title,
        Nav::Overview,
        html! {
            h1 { (title) }
            p class="error" role="alert" {
                @if let Some(code) = code { code class="code" { (code.as_str()) } " " }
                (message)
            }
            p { a href="/" { "Back to the overview" } }
        },
        None,
    )
}

/// `JOB_STATE_SUCCEEDED` -> `SUCCEEDED`.
pub(crate) fn state_name(state: i32) -> &'static str {
    pb::JobState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_"))
        .unwrap_or("UNKNOWN")
}

pub(crate) fn error_name(code: i32) -> &'static str {
    pb::ErrorCode::try_from(code)
        .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_"))
        .unwrap_or("UNKNOWN")
}

pub(crate) fn state_badge(state: i32) -> Markup {
    let name = state_name(state);
    html! { span class={ "badge state-" (name.to_ascii_lowercase()) } { (name) } }
}

pub(crate) fn is_terminal(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

pub(crate) fn to_chrono(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

pub(crate) fn time(ts: Option<&Timestamp>) -> Markup {
    match ts.and_then(to_chrono) {
        Some(at) => html! {
            time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
                (at.format("%Y-%m-%d %H:%M:%S"))
            }
        },
        None => html! { span class="muted" { "—" } },
    }
}

/// 1.234 s, 87 ms, 3 min 2 s.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        "—".to_owned()
    } else if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 120.0 {
        format!("{seconds:.2} s")
    } else if seconds < 7200.0 {
        format!("{} min {} s", (seconds / 60.0).floor(), (seconds % 60.0).floor())
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

pub(crate) fn between(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<f64> {
    let from = from.and_then(to_chrono)?;
    let to = to.and_then(to_chrono)?;
    Some((to - from).num_milliseconds() as f64 / 1000.0)
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(crate) fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A query string from pairs, skipping empty values.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

/// The last 8 hex digits of an id: the random end of a UUIDv7 (its start is the time, the
/// same for every job made in the same few weeks).
pub(crate) fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// The jobs as a table, with a caption for screen readers.
pub(crate) fn job_table(caption: &str, jobs: &[pb::Job], empty: Markup) -> Markup {
    html! {
        @if jobs.is_empty() {
            div class="empty" { (empty) }
        } @else {
            div class="table-wrap" {
                table class="jobs" {
                    caption class="sr-only" { (caption) }
                    thead { tr {
                        th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "State" }
                        th scope="col" { "Attempt" } th scope="col" { "Media" } th scope="col" { "Created" }
                        th scope="col" { "Error" }
                    } }
                    tbody {
                        @for job in jobs {
                            tr data-job=(job.id) data-state=(state_name(job.state)) {
                                td { a href={ "/jobs/" (job.id) } title=(job.id) { code { (short_id(&job.id)) } } }
                                td { (job.kind) }
                                td {
                                    (state_badge(job.state))
                                    @if job.state == pb::JobState::Running as i32 && job.progress > 0.0 {
                                        " " (progress(job.progress, &job.progress_message))
                                    }
                                }
                                td { (job.attempt) "/" (job.max_attempts) }
                                td {
                                    @if job.media_id.is_empty() { span class="muted" { "—" } }
                                    @else { a href={ "/media/" (job.media_id) } title=(job.media_id) { code { (short_id(&job.media_id)) } } }
                                }
                                td { (time(job.created_at.as_ref())) }
                                td {
                                    @if let Some(error) = &job.error {
                                        @if error.code != 0 {
                                            code class="code" title=(error.message) { (error_name(error.code)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn progress(value: f32, message: &str) -> Markup {
    let pct = (value.clamp(0.0, 1.0) * 100.0).round();
    html! {
        span class="progress" {
            progress max="100" value=(pct) aria-label="Progress" { (pct) "%" }
            " " (pct) "%"
            @if !message.is_empty() { " · " (message) }
        }
    }
}

/// What a job or a media made, shown as what it is: images, the waveform drawn from its
/// peaks, the transcript, playable video and audio, anything else as a download link.
/// `fetched` holds the small JSON outputs (waveform peaks, transcripts) read for drawing.
pub(crate) fn outputs(media_id: &str, outputs: &[pb::Output], fetched: &BTreeMap<String, serde_json::Value>) -> Markup {
    html! {
        @if outputs.is_empty() {
            p class="muted" { "No outputs." }
        } @else {
            ul class="outputs" {
                @for output in outputs {
                    @let href = format!("/media/{media_id}/files/{}", url_encode(&output.name));
                    li class="output" data-output=(output.name) {
                        h3 { (output.name) }
                        p class="muted" {
                            (output.content_type) " · " (bytes(output.bytes))
                            @if output.width > 0 { " · " (output.width) "×" (output.height) }
                            " · " a href=(href) download=(output.name) { "download" }
                        }
                        @if output.content_type.starts_with("image/") {
                            img src=(href) alt={ (output.name) " of media " (media_id) } loading="lazy"
                                width=[(output.width > 0).then_some(output.width.min(480))];
                        } @else if output.content_type.starts_with("video/") {
                            video controls preload="metadata" src=(href) aria-label={ "Video " (output.name) } {}
                        } @else if output.content_type.starts_with("audio/") {
                            audio controls preload="metadata" src=(href) aria-label={ "Audio " (output.name) } {}
                        } @else if let Some(value) = fetched.get(&output.name) {
                            @if output.name.contains("waveform") {
                                (waveform(value))
                            } @else if let Some(text) = value.get("text").and_then(serde_json::Value::as_str) {
                                blockquote class="transcript" { (text) }
                            } @else {
                                pre { (serde_json::to_string_pretty(value).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An audiowaveform JSON (`data`: min, max pairs per column) as an SVG of at most 600 bars.
pub(crate) fn waveform(value: &serde_json::Value) -> Markup {
    let data: Vec<f64> = value
        .get("data")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let channels = value
        .get("channels")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        .max(1) as usize;
    let bits = value.get("bits").and_then(serde_json::Value::as_u64).unwrap_or(8);
    let full = if bits == 16 { 32768.0 } else { 128.0 };
    // The first channel's (min, max) per column.
    let pairs: Vec<(f64, f64)> = data
        .chunks_exact(2 * channels)
        .map(|c| (c[0] / full, c[1] / full))
        .collect();
    if pairs.is_empty() {
        return html! { p class="muted" { "The waveform has no peaks." } };
    }
    let columns = pairs.len().min(600);
    let per = pairs.len().div_ceil(columns);
    let mut path = String::new();
    for (x, group) in pairs.chunks(per).enumerate() {
        let min = group.iter().map(|p| p.0).fold(0.0_f64, f64::min).clamp(-1.0, 0.0);
        let max = group.iter().map(|p| p.1).fold(0.0_f64, f64::max).clamp(0.0, 1.0);
        let top = 50.0 - max * 50.0;
        let bottom = 50.0 - min * 50.0;
        path.push_str(&format!("M{x} {top:.1}V{:.1}", bottom.max(top + 0.5)));
    }
    let width = pairs.len().div_ceil(per);
    html! {
        svg class="waveform" viewBox={ "0 0 " (width) " 100" } preserveAspectRatio="none" role="img"
            aria-label={ "Waveform, " (pairs.len()) " columns" } data-columns=(pairs.len()) {
            path d=(path) {}
        }
    }
}

/// Inline JSON, pretty, for payloads and results.
pub(crate) fn json_block(raw: &str) -> Markup {
    let pretty = serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| raw.to_owned());
    html! { pre class="json" { (pretty) } }
}

/// A job's structured result (tags, a caption, a transcript) as a reader would want it.
pub(crate) fn metadata(raw: &str) -> Markup {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
        return json_block(raw);
    };
    let tags: Vec<&str> = value
        .get("tags")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let caption = ["caption", "description", "summary"]
        .iter()
        .find_map(|k| value.get(*k).and_then(serde_json::Value::as_str));
    html! {
        @if let Some(caption) = caption { p class="caption" { (caption) } }
        @if !tags.is_empty() {
            ul class="tags" aria-label="Tags" { @for tag in &tags { li { (tag) } } }
        }
        details open[caption.is_none() && tags.is_empty()] {
            summary { "Result metadata" }
            (json_block(raw))
        }
    }
}

pub(crate) fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text.filter(|t| !t.is_empty()) {
            p class="notice" role="status" { (text) }
        }
    }
}

pub(crate) fn trace_link(template: &str, trace_id: &str) -> Markup {
    html! {
        @if trace_id.is_empty() {
            span class="muted" { "not traced" }
        } @else if template.is_empty() {
            code { (trace_id) }
        } @else {
            a href=(template.replace("{trace_id}", trace_id)) rel="noopener" target="_blank" { code { (trace_id) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waveform_draws_one_bar_per_column_up_to_600() {
        let small = serde_json::json!({"version": 2, "channels": 1, "bits": 8, "length": 3,
            "data": [-10, 20, -128, 127, 0, 0]});
        let svg = waveform(&small).into_string();
        assert!(svg.contains("viewBox=\"0 0 3 100\""), "{svg}");
        assert_eq!(svg.matches('M').count(), 3);
        let big: Vec<i64> = (0..5000).flat_map(|i| [-(i % 100), i % 100]).collect();
        let svg = waveform(&serde_json::json!({"channels": 1, "bits": 8, "data": big})).into_string();
        assert!(svg.matches('M').count() <= 600, "{}", svg.matches('M').count());
        let none = waveform(&serde_json::json!({"data": []})).into_string();
        assert!(none.contains("no peaks"));
    }

    #[test]
    fn text_is_escaped() {
        let job = pb::Job {
            id: "0192f3a0-0000-7000-8000-000000000000".to_owned(),
            kind: "<script>alert(1)</script>".to_owned(),
            ..Default::default()
        };
        let html = job_table("jobs", &[job], html! {}).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(duration(0.0871), "87 ms");
        assert_eq!(duration(1.5), "1.50 s");
        assert_eq!(duration(182.0), "3 min 2 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KB");
        assert_eq!(
            query(&[("state", "FAILED"), ("kind", ""), ("q", "a b")]),
            "state=FAILED&q=a+b"
        );
        assert_eq!(short_id("01a209eb-511d-7586-811c-e8528c5c727f"), "8c5c727f");
    }
}
