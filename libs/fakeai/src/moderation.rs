//! `POST /v1/moderations`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::errors::{bad_request, preflight};
use crate::state::{Ctx, Shared};

/// Every category `async-openai`'s `Categories` requires.
const CATEGORIES: [&str; 13] = [
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// Categories flagged when the input contains the flagged word.
const FLAGGED: [&str; 2] = ["harassment", "violence"];

/// Categories that also apply to images.
const IMAGE_CATEGORIES: [&str; 6] = [
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "violence",
    "violence/graphic",
];

/// One moderated input: its texts and whether it contains images.
struct Item {
    texts: Vec<String>,
    has_image: bool,
}

/// A string is one item, an array of strings is one item per string, an array of multi-modal
/// parts is a single item.
fn items(input: &Value) -> Result<Vec<Item>, String> {
    match input {
        Value::String(s) => Ok(vec![Item {
            texts: vec![s.clone()],
            has_image: false,
        }]),
        Value::Array(values) if values.iter().all(Value::is_string) => Ok(values
            .iter()
            .filter_map(Value::as_str)
            .map(|s| Item {
                texts: vec![s.to_owned()],
                has_image: false,
            })
            .collect()),
        Value::Array(parts) => {
            let mut item = Item {
                texts: Vec::new(),
                has_image: false,
            };
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => item
                        .texts
                        .extend(part.get("text").and_then(Value::as_str).map(str::to_owned)),
                    Some("image_url") => item.has_image = true,
                    _ => return Err(format!("invalid input part {part}")),
                }
            }
            Ok(vec![item])
        }
        _ => Err("'input' must be a string, an array of strings or an array of parts".to_owned()),
    }
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>, body: Bytes) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let input = parsed
        .as_ref()
        .map_err(|e| format!("We could not parse the JSON body of your request: {e}"))
        .and_then(|body| {
            body.get("input")
                .ok_or_else(|| "'input' is required".to_owned())
                .and_then(items)
        });
    if let Ok(body) = &parsed {
        let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
        let prompt = input.as_ref().ok().map(|items| {
            items
                .iter()
                .flat_map(|item| item.texts.iter().cloned())
                .collect::<Vec<_>>()
                .join("\n")
        });
        shared.annotate(ctx.seq, model, prompt);
    }
    if let Some(response) = preflight(&shared, &ctx, false).await {
        return response;
    }
    let (body, items) = match (parsed, input) {
        (Ok(body), Ok(items)) => (body, items),
        (_, Err(message)) => return bad_request(message, Some("input")),
        (Err(error), _) => return bad_request(error.to_string(), None),
    };
    let word = shared.options.flagged_word.to_lowercase();
    let results: Vec<Value> = items
        .iter()
        .map(|item| {
            let flagged = !word.is_empty() && item.texts.iter().any(|t| t.to_lowercase().contains(&word));
            let mut categories = Map::new();
            let mut scores = Map::new();
            let mut applied = Map::new();
            for category in CATEGORIES {
                let hit = flagged && FLAGGED.contains(&category);
                categories.insert(category.to_owned(), Value::Bool(hit));
                scores.insert(category.to_owned(), json!(if hit { 0.97 } else { 0.0001 }));
                let mut types = vec!["text"];
                if item.has_image && IMAGE_CATEGORIES.contains(&category) {
                    types.push("image");
                }
                applied.insert(category.to_owned(), json!(types));
            }
            json!({
                "flagged": flagged,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": applied,
            })
        })
        .collect();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    Json(json!({
        "id": format!("modr-{}-{}", shared.options.name, ctx.seq),
        "model": model,
        "results": results,
    }))
    .into_response()
}
