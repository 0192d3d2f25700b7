//! OpenAI-style error answers and the application of injected faults.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Fault;
use crate::state::{Ctx, Shared};

/// Marker put in a response's extensions by a handler that wants the connection reset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResetMarker;

/// An OpenAI error JSON: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({
        "error": { "message": message.into(), "type": kind, "param": param, "code": code }
    });
    (status, Json(body)).into_response()
}

/// 400 `invalid_request_error`.
pub(crate) fn bad_request(message: impl Into<String>, param: Option<&str>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message, param, None)
}

/// 500 for an internal failure of the fake itself.
pub(crate) fn internal(message: impl std::fmt::Display) -> Response {
    tracing::error!(%message, "fake AI internal error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("internal error of the fake provider: {message}"),
        None,
        None,
    )
}

pub(crate) fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        None,
        Some("invalid_api_key"),
    )
}

pub(crate) fn payload_too_large(message: impl Into<String>) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        message,
        Some("file"),
        Some("file_too_large"),
    )
}

pub(crate) fn not_found(message: impl Into<String>) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        message,
        None,
        Some("unknown_url"),
    )
}

/// 200 with a JSON content type and a body that is not JSON.
pub(crate) fn malformed_json(name: &str) -> Response {
    let body = format!(
        "{{\"id\": \"malformed-{name}\", \"object\": \"chat.completion\", \"choices\": [{{\"index\": 0, <<not json"
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn reset() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(ResetMarker);
    response
}

/// Applies the request's injected fault and the API key check.
///
/// Returns the answer to send instead of the normal one, or `None` to answer normally (after
/// the delay of [`Fault::Slow`]). With `chat` true, [`Fault::InvalidAnswer`] and
/// [`Fault::Refusal`] are left to the caller, which must check `ctx.fault` itself.
pub(crate) async fn preflight(shared: &Shared, ctx: &Ctx, chat: bool) -> Option<Response> {
    let name = &shared.options.name;
    match &ctx.fault {
        None => {}
        Some(Fault::Slow(delay)) => tokio::time::sleep(*delay).await,
        Some(Fault::ConnectionReset) => return Some(reset()),
        Some(Fault::RateLimited { retry_after }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("Rate limit reached (fault injected by fake provider {name})."),
                None,
                Some("rate_limit_exceeded"),
            );
            if let Some(delay) = retry_after {
                let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return Some(response);
        }
        Some(Fault::ServerError) => {
            return Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!(
                    "The server had an error while processing your request (fault injected by fake provider {name})."
                ),
                None,
                None,
            ));
        }
        Some(Fault::Unauthorized) => return Some(unauthorized()),
        Some(Fault::BadRequest) => {
            return Some(bad_request(
                format!("Invalid request (fault injected by fake provider {name})."),
                None,
            ));
        }
        Some(Fault::MalformedJson) => return Some(malformed_json(name)),
        Some(Fault::InvalidAnswer) if !chat => return Some(malformed_json(name)),
        Some(Fault::Refusal) if !chat => {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Your request was rejected as a result of our safety system.",
                None,
                Some("content_policy_violation"),
            ));
        }
        Some(Fault::InvalidAnswer | Fault::Refusal) => return None,
    }
    if !ctx.authorized {
        return Some(unauthorized());
    }
    None
}
