//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::errors::{error, preflight};
use crate::state::{Ctx, Shared};

/// The models the fake lists.
pub(crate) const MODELS: [&str; 9] = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-image-1",
    "dall-e-3",
    "omni-moderation-latest",
    "text-moderation-latest",
];

fn model(shared: &Shared, id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": shared.options.name })
}

pub(crate) async fn list(State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>) -> Response {
    if let Some(response) = preflight(&shared, &ctx, false).await {
        return response;
    }
    let data: Vec<Value> = MODELS.iter().map(|id| model(&shared, id)).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    shared.annotate(ctx.seq, Some(id.clone()), None);
    if let Some(response) = preflight(&shared, &ctx, false).await {
        return response;
    }
    if MODELS.contains(&id.as_str()) {
        Json(model(&shared, &id)).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{id}' does not exist"),
            Some("model"),
            Some("model_not_found"),
        )
    }
}
