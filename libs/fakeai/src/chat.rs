//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::{bad_request, preflight};
use crate::media::{self, Dimensions};
use crate::schema::{self, Facts};
use crate::state::{Ctx, Shared};
use crate::{Fault, text};

/// The refusal text answered for [`Fault::Refusal`].
pub(crate) const REFUSAL: &str = "I can't help with that";

/// What the fake needs from a chat request.
#[derive(Default)]
struct ChatInput {
    model: Option<String>,
    /// Text parts of every message, in order.
    all_text: Vec<String>,
    /// Text of system and developer messages.
    system_text: Vec<String>,
    /// Text of user messages.
    user_text: Vec<String>,
    /// Text of the last user message.
    last_user_text: String,
    /// URLs of `image_url` parts.
    images: Vec<String>,
}

fn content_parts(content: &Value, text: &mut Vec<String>, images: &mut Vec<String>) {
    match content {
        Value::String(s) => text.push(s.clone()),
        Value::Array(parts) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(s) = part.get("text").and_then(Value::as_str) {
                            text.push(s.to_owned());
                        }
                    }
                    Some("image_url") => {
                        let url = part.get("image_url").and_then(|u| u.get("url").or(Some(u)));
                        if let Some(url) = url.and_then(Value::as_str) {
                            images.push(url.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn parse(body: &Value) -> Result<ChatInput, String> {
    let mut input = ChatInput {
        model: body.get("model").and_then(Value::as_str).map(str::to_owned),
        ..ChatInput::default()
    };
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| "'messages' must be an array".to_owned())?;
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let mut text = Vec::new();
        let mut images = Vec::new();
        if let Some(content) = message.get("content") {
            content_parts(content, &mut text, &mut images);
        }
        match role {
            "system" | "developer" => input.system_text.extend(text.iter().cloned()),
            "user" => {
                input.user_text.extend(text.iter().cloned());
                input.last_user_text = text.join("\n");
            }
            _ => {}
        }
        input.all_text.extend(text);
        input.images.extend(images);
    }
    Ok(input)
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>, body: Bytes) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let input = match &parsed {
        Ok(value) => parse(value),
        Err(error) => Err(format!("We could not parse the JSON body of your request: {error}")),
    };
    if let Ok(input) = &input {
        shared.annotate(ctx.seq, input.model.clone(), Some(input.all_text.join("\n")));
    }
    if let Some(response) = preflight(&shared, &ctx, true).await {
        return response;
    }
    let (body, input) = match (parsed, input) {
        (Ok(body), Ok(input)) => (body, input),
        (_, Err(message)) => return bad_request(message, None),
        (Err(error), _) => return bad_request(error.to_string(), None),
    };
    let Some(model) = input.model.clone() else {
        return bad_request("you must provide a model parameter", Some("model"));
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return bad_request("streaming is not supported by the fake provider", Some("stream"));
    }
    let response_format = body.get("response_format");
    let format_type = response_format
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("text");
    let choices = body
        .get("n")
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, 8) as usize);
    let prompt_tokens = input.all_text.iter().map(|t| text::tokens(t)).sum::<u32>()
        + 85 * u32::try_from(input.images.len()).unwrap_or(u32::MAX / 85);
    let name = shared.options.name.as_str();

    let (content, refusal) = match &ctx.fault {
        Some(Fault::Refusal) => (None, Some(REFUSAL.to_owned())),
        Some(Fault::InvalidAnswer) => {
            let content = if format_type == "json_schema" {
                json!({ "unexpected": true }).to_string()
            } else {
                format!("[{name}] Sorry, I will not answer in the format you asked for.")
            };
            (Some(content), None)
        }
        _ => {
            let mut dimensions: Vec<Dimensions> = Vec::new();
            for url in &input.images {
                let bytes = match media::data_url_bytes(url) {
                    Ok(bytes) => bytes,
                    Err(error) => return bad_request(format!("could not process image: {error}"), Some("messages")),
                };
                let decoded = tokio::task::spawn_blocking(move || media::dimensions(&bytes)).await;
                match decoded {
                    Ok(Ok(d)) => dimensions.push(d),
                    Ok(Err(error)) => {
                        return bad_request(format!("could not process image: {error}"), Some("messages"));
                    }
                    Err(error) => return crate::errors::internal(error),
                }
            }
            let content = match format_type {
                "json_schema" => {
                    let Some(schema) = response_format
                        .and_then(|f| f.get("json_schema"))
                        .and_then(|s| s.get("schema"))
                    else {
                        return bad_request(
                            "response_format.json_schema.schema is required",
                            Some("response_format"),
                        );
                    };
                    let user_text = input.user_text.join("\n");
                    let facts = Facts {
                        text: &user_text,
                        image: dimensions.first().copied(),
                        name,
                    };
                    schema::instance(schema, &facts).to_string()
                }
                "json_object" => json!({ "answer": plain_answer(&input, &dimensions, name) }).to_string(),
                _ => plain_answer(&input, &dimensions, name),
            };
            (Some(content), None)
        }
    };
    let completion_tokens = text::tokens(content.as_deref().or(refusal.as_deref()).unwrap_or(""));
    let message = json!({
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    });
    let choices: Vec<Value> = (0..choices)
        .map(|index| {
            json!({
                "index": index,
                "message": message,
                "finish_reason": "stop",
                "logprobs": null,
            })
        })
        .collect();
    let completion_tokens_all = completion_tokens.saturating_mul(u32::try_from(choices.len()).unwrap_or(1));
    Json(json!({
        "id": format!("chatcmpl-{name}-{}", ctx.seq),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens_all,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens_all),
        },
        "system_fingerprint": format!("fp_{name}"),
    }))
    .into_response()
}

/// `[name] Generated text for: <first 60 chars of the last user message>`, plus `tone: X` /
/// `audience: Y` lines taken from `Tone: X` / `Audience: Y` lines of the system messages and an
/// `image: <caption>` line per image.
fn plain_answer(input: &ChatInput, images: &[Dimensions], name: &str) -> String {
    let prompt = input.last_user_text.trim();
    let mut answer = format!("[{name}] Generated text for: {}", text::prefix(prompt, 60));
    let system = input.system_text.join("\n");
    for key in ["tone", "audience"] {
        if let Some(value) = text::labelled_line(&system, key) {
            answer.push_str(&format!("\n{key}: {value}"));
        }
    }
    for image in images {
        answer.push_str(&format!("\nimage: {}", image.caption(name)));
    }
    answer
}
