//! `POST /v1/audio/transcriptions`.

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::{bad_request, payload_too_large, preflight};
use crate::media;
use crate::state::{Ctx, Shared};

/// Length of a transcript segment, in seconds.
const SEGMENT_SECONDS: f64 = 5.0;

#[derive(Default)]
struct TranscriptionInput {
    file: Option<(Option<String>, Bytes)>,
    model: Option<String>,
    language: Option<String>,
    prompt: Option<String>,
    response_format: Option<String>,
    granularities: Vec<String>,
}

async fn read_form(request: Request) -> Result<TranscriptionInput, String> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| format!("expected a multipart/form-data body: {e}"))?;
    let mut input = TranscriptionInput::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "file" => {
                let file_name = field.file_name().map(str::to_owned);
                let bytes = field.bytes().await.map_err(|e| e.to_string())?;
                input.file = Some((file_name, bytes));
            }
            _ => {
                let value = field.text().await.map_err(|e| e.to_string())?;
                match name.as_str() {
                    "model" => input.model = Some(value),
                    "language" => input.language = Some(value),
                    "prompt" => input.prompt = Some(value),
                    "response_format" => input.response_format = Some(value),
                    "timestamp_granularities[]" | "timestamp_granularities" => input.granularities.push(value),
                    _ => {}
                }
            }
        }
    }
    Ok(input)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    request: Request,
) -> Response {
    let input = read_form(request).await;
    if let Ok(input) = &input {
        shared.annotate(ctx.seq, input.model.clone(), input.prompt.clone());
    }
    if let Some(response) = preflight(&shared, &ctx, false).await {
        return response;
    }
    let input = match input {
        Ok(input) => input,
        Err(message) => return bad_request(message, None),
    };
    let Some((_, file)) = &input.file else {
        return bad_request("the 'file' part is required", Some("file"));
    };
    if input.model.as_deref().is_none_or(str::is_empty) {
        return bad_request("you must provide a model parameter", Some("model"));
    }
    let max = shared.options.max_audio_bytes;
    if file.len() > max {
        return payload_too_large(format!(
            "Maximum content size limit ({max}) exceeded ({} bytes read)",
            file.len()
        ));
    }
    if file.is_empty() {
        return bad_request("Audio file is empty.", Some("file"));
    }
    let duration = media::wav_duration(file)
        .or_else(|| media::mp3_duration(file))
        .unwrap_or(file.len() as f64 / 16_000.0);
    let name = &shared.options.name;
    let text = format!("transcript [{name}] of {duration:.1}s");
    let language = input.language.clone().unwrap_or_else(|| "english".to_owned());
    let seconds = duration.ceil();
    let usage = json!({ "type": "duration", "seconds": seconds });
    let segments = segments(duration);

    match input.response_format.as_deref().unwrap_or("json") {
        "json" => Json(json!({ "text": text, "usage": usage })).into_response(),
        "verbose_json" => {
            let mut body = json!({
                "task": "transcribe",
                "language": language,
                "duration": round3(duration),
                "text": text,
                "segments": segments.iter().map(|s| s.verbose()).collect::<Vec<_>>(),
                "usage": usage,
            });
            if input.granularities.iter().any(|g| g == "word") {
                body["words"] = Value::Array(segments.iter().flat_map(|s| s.words()).collect());
            }
            Json(body).into_response()
        }
        "diarized_json" => Json(json!({
            "task": "transcribe",
            "duration": round3(duration),
            "text": text,
            "segments": segments.iter().map(|s| s.diarized()).collect::<Vec<_>>(),
            "usage": usage,
        }))
        .into_response(),
        "text" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{text}\n"),
        )
            .into_response(),
        "srt" => {
            let body: String = segments
                .iter()
                .map(|s| {
                    format!(
                        "{}\n{} --> {}\n{}\n\n",
                        s.id + 1,
                        timestamp(s.start, ','),
                        timestamp(s.end, ','),
                        s.text()
                    )
                })
                .collect();
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        "vtt" => {
            let mut body = String::from("WEBVTT\n\n");
            for s in &segments {
                body.push_str(&format!(
                    "{} --> {}\n{}\n\n",
                    timestamp(s.start, '.'),
                    timestamp(s.end, '.'),
                    s.text()
                ));
            }
            ([(header::CONTENT_TYPE, "text/vtt; charset=utf-8")], body).into_response()
        }
        other => bad_request(
            format!("response_format '{other}' is not supported"),
            Some("response_format"),
        ),
    }
}

struct Segment {
    id: u32,
    start: f64,
    end: f64,
}

fn segments(duration: f64) -> Vec<Segment> {
    let count = (duration / SEGMENT_SECONDS).ceil().max(1.0) as u32;
    (0..count)
        .map(|id| {
            let start = f64::from(id) * SEGMENT_SECONDS;
            Segment {
                id,
                start,
                end: (start + SEGMENT_SECONDS).min(duration).max(start),
            }
        })
        .collect()
}

impl Segment {
    fn text(&self) -> String {
        format!("segment {}", self.id)
    }

    fn verbose(&self) -> Value {
        json!({
            "id": self.id,
            "seek": (self.start * 100.0).round() as u64,
            "start": round3(self.start),
            "end": round3(self.end),
            "text": self.text(),
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.2,
            "no_speech_prob": 0.01,
        })
    }

    fn diarized(&self) -> Value {
        json!({
            "type": "transcript.text.segment",
            "id": format!("seg_{}", self.id),
            "start": round3(self.start),
            "end": round3(self.end),
            "text": self.text(),
            "speaker": "A",
        })
    }

    fn words(&self) -> Vec<Value> {
        let middle = round3((self.start + self.end) / 2.0);
        vec![
            json!({ "word": "segment", "start": round3(self.start), "end": middle }),
            json!({ "word": self.id.to_string(), "start": middle, "end": round3(self.end) }),
        ]
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(seconds: f64, separator: char) -> String {
    let millis = (seconds * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_every_five_seconds() {
        let s = segments(12.5);
        assert_eq!(s.len(), 3);
        assert_eq!((s[2].start, s[2].end), (10.0, 12.5));
        assert_eq!(segments(0.2).len(), 1);
        assert_eq!(timestamp(3725.5, ','), "01:02:05,500");
    }
}
