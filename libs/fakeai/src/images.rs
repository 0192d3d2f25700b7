//! `POST /v1/images/edits` and `POST /v1/images/generations`.

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use image::DynamicImage;
use serde_json::{Value, json};

use crate::errors::{bad_request, internal, preflight};
use crate::media;
use crate::state::{Ctx, Shared};
use crate::text;

/// Largest side accepted by generations.
const MAX_SIDE: u32 = 2048;
/// Edited images are scaled down to fit in this square when no size is requested.
const EDIT_AUTO_MAX_SIDE: u32 = 1536;
/// Brightness added by an edit.
const EDIT_BRIGHTEN: i32 = 24;

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Parses `"WxH"`; `Ok(None)` for `"auto"`.
fn parse_size(size: &str) -> Result<Option<(u32, u32)>, String> {
    if size == "auto" {
        return Ok(None);
    }
    let parsed = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w == 0 || h == 0 => Err(format!("invalid size '{size}'")),
        Some((w, h)) if w > MAX_SIDE || h > MAX_SIDE => Err(format!(
            "size '{size}' is too large: at most {MAX_SIDE} pixels per side"
        )),
        Some(size) => Ok(Some(size)),
        None => Err(format!("invalid size '{size}': expected 'WIDTHxHEIGHT' or 'auto'")),
    }
}

fn parse_n(n: Option<u64>) -> Result<usize, String> {
    match n {
        None => Ok(1),
        Some(n @ 1..=10) => Ok(n as usize),
        Some(n) => Err(format!("n must be between 1 and 10, got {n}")),
    }
}

/// The `ImagesResponse` JSON: `n` copies of `png`, as `b64_json` or as a URL served by the fake.
fn images_response(
    shared: &Shared,
    png: Vec<u8>,
    n: usize,
    url: bool,
    revised_prompt: &str,
    (width, height): (u32, u32),
    (input_text_tokens, input_image_tokens): (u32, u32),
) -> Response {
    let png = Bytes::from(png);
    let encoded = (!url).then(|| base64::engine::general_purpose::STANDARD.encode(&png));
    let data: Vec<Value> = (0..n)
        .map(|_| match &encoded {
            Some(b64) => json!({ "b64_json": b64, "revised_prompt": revised_prompt }),
            None => json!({ "url": shared.store_file(png.clone(), "png"), "revised_prompt": revised_prompt }),
        })
        .collect();
    let output_tokens = 272u32.saturating_mul(u32::try_from(n).unwrap_or(1));
    let input_tokens = input_text_tokens.saturating_add(input_image_tokens);
    Json(json!({
        "created": now(),
        "data": data,
        "output_format": "png",
        "size": format!("{width}x{height}"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": { "text_tokens": input_text_tokens, "image_tokens": input_image_tokens },
            "output_tokens": output_tokens,
            "total_tokens": input_tokens.saturating_add(output_tokens),
        },
    }))
    .into_response()
}

#[derive(Default)]
struct EditInput {
    images: Vec<Bytes>,
    prompt: Option<String>,
    model: Option<String>,
    size: Option<String>,
    n: Option<String>,
    response_format: Option<String>,
}

async fn read_edit_form(request: Request) -> Result<EditInput, String> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| format!("expected a multipart/form-data body: {e}"))?;
    let mut input = EditInput::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "image" | "image[]" => input.images.push(field.bytes().await.map_err(|e| e.to_string())?),
            "mask" | "markup" => {
                field.bytes().await.map_err(|e| e.to_string())?;
            }
            _ => {
                let value = field.text().await.map_err(|e| e.to_string())?;
                match name.as_str() {
                    "prompt" => input.prompt = Some(value),
                    "model" => input.model = Some(value),
                    "size" => input.size = Some(value),
                    "n" => input.n = Some(value),
                    "response_format" => input.response_format = Some(value),
                    _ => {}
                }
            }
        }
    }
    Ok(input)
}

/// Why an edit failed.
enum EditError {
    /// The upload is not a decodable image (answered with 400).
    BadImage(String),
    /// Encoding failed (answered with 500).
    Internal(String),
}

/// Orients, resizes (to the requested size, or to fit in 1536×1536 for `auto`), brightens and
/// encodes the edited image; returns the PNG and its dimensions.
fn edit_image(bytes: &[u8], size: Option<(u32, u32)>) -> Result<(Vec<u8>, (u32, u32)), EditError> {
    let image = media::decode(bytes).map_err(EditError::BadImage)?;
    let image: DynamicImage = match size {
        Some((w, h)) if (w, h) != (image.width(), image.height()) => {
            image.resize_exact(w, h, image::imageops::FilterType::Triangle)
        }
        Some(_) => image,
        None if image.width() > EDIT_AUTO_MAX_SIDE || image.height() > EDIT_AUTO_MAX_SIDE => {
            image.thumbnail(EDIT_AUTO_MAX_SIDE, EDIT_AUTO_MAX_SIDE)
        }
        None => image,
    };
    let image = image.brighten(EDIT_BRIGHTEN);
    let dimensions = (image.width(), image.height());
    Ok((media::png(&image).map_err(EditError::Internal)?, dimensions))
}

pub(crate) async fn edit(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    request: Request,
) -> Response {
    let input = read_edit_form(request).await;
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
    let Some(image) = input.images.first().cloned() else {
        return bad_request("the 'image' part is required", Some("image"));
    };
    let Some(prompt) = input.prompt.clone().filter(|p| !p.is_empty()) else {
        return bad_request("the 'prompt' part is required", Some("prompt"));
    };
    let size = match input.size.as_deref().map(parse_size).transpose() {
        Ok(size) => size.flatten(),
        Err(message) => return bad_request(message, Some("size")),
    };
    let n = match input.n.as_deref().map(str::parse::<u64>).transpose() {
        Ok(n) => match parse_n(n) {
            Ok(n) => n,
            Err(message) => return bad_request(message, Some("n")),
        },
        Err(error) => return bad_request(format!("invalid n: {error}"), Some("n")),
    };
    let url = input.response_format.as_deref() == Some("url");
    let edited = tokio::task::spawn_blocking(move || edit_image(&image, size)).await;
    let (png, dimensions) = match edited {
        Ok(Ok(edited)) => edited,
        Ok(Err(EditError::BadImage(error))) => {
            return bad_request(format!("could not process image: {error}"), Some("image"));
        }
        Ok(Err(EditError::Internal(error))) => return internal(error),
        Err(error) => return internal(error),
    };
    let image_tokens = 85 * u32::try_from(input.images.len()).unwrap_or(1);
    images_response(
        &shared,
        png,
        n,
        url,
        &prompt,
        dimensions,
        (text::tokens(&prompt), image_tokens),
    )
}

pub(crate) async fn generate(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    if let Ok(body) = &parsed {
        let get = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        shared.annotate(ctx.seq, get("model"), get("prompt"));
    }
    if let Some(response) = preflight(&shared, &ctx, false).await {
        return response;
    }
    let body = match parsed {
        Ok(body) => body,
        Err(error) => {
            return bad_request(
                format!("We could not parse the JSON body of your request: {error}"),
                None,
            );
        }
    };
    let Some(prompt) = body.get("prompt").and_then(Value::as_str).filter(|p| !p.is_empty()) else {
        return bad_request("you must provide a prompt", Some("prompt"));
    };
    let size = match body.get("size") {
        None | Some(Value::Null) => None,
        Some(Value::String(size)) => match parse_size(size) {
            Ok(size) => size,
            Err(message) => return bad_request(message, Some("size")),
        },
        Some(other) => return bad_request(format!("invalid size {other}"), Some("size")),
    };
    let (width, height) = size.unwrap_or((256, 256));
    let n = match body.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(n) => match n.as_u64() {
            Some(n) => parse_n(Some(n)),
            None => Err(format!("invalid n {n}")),
        },
    };
    let n = match n {
        Ok(n) => n,
        Err(message) => return bad_request(message, Some("n")),
    };
    let revised_prompt = match body.get("style").and_then(Value::as_str) {
        Some(style) => format!("{prompt} (style: {style})"),
        None => prompt.to_owned(),
    };
    let url = body.get("response_format").and_then(Value::as_str) == Some("url");
    let seed = prompt.to_owned();
    let rendered = tokio::task::spawn_blocking(move || {
        media::png(&DynamicImage::ImageRgb8(media::gradient(&seed, width, height)))
    })
    .await;
    let png = match rendered {
        Ok(Ok(png)) => png,
        Ok(Err(error)) => return internal(error),
        Err(error) => return internal(error),
    };
    images_response(
        &shared,
        png,
        n,
        url,
        &revised_prompt,
        (width, height),
        (text::tokens(prompt), 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("auto"), Ok(None));
        assert_eq!(parse_size("1024x512"), Ok(Some((1024, 512))));
        assert!(parse_size("4096x4096").is_err());
        assert!(parse_size("big").is_err());
        assert!(parse_size("0x10").is_err());
        assert_eq!(parse_n(None), Ok(1));
        assert!(parse_n(Some(11)).is_err());
    }
}
