//! What a page shows when the API refuses or fails: the stable code and its message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mediamesh_core::ErrorCode;

use crate::views;

#[derive(Debug)]
pub struct ConsoleError {
    pub code: ErrorCode,
    pub message: String,
}

impl ConsoleError {
    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadInput,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::NotFound,
            message: message.into(),
        }
    }

    pub(crate) fn is_unauthenticated(&self) -> bool {
        self.code == ErrorCode::Unauthenticated
    }

    fn http_status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadInput | ErrorCode::Unsupported => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::QuotaExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Network => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl From<tonic::Status> for ConsoleError {
    fn from(status: tonic::Status) -> Self {
        Self {
            code: ErrorCode::from_status(&status),
            message: status.message().to_owned(),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if self.is_unauthenticated() {
            // The key was revoked (or the cookie is stale): log in again.
            return crate::auth::to_login("/");
        }
        if self.http_status().is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "console page failed");
        }
        let title = match self.code {
            ErrorCode::NotFound => "Not found",
            ErrorCode::BadInput => "Not understood",
            _ => "The API refused or failed",
        };
        (
            self.http_status(),
            views::message_page(title, &self.message, Some(self.code)),
        )
            .into_response()
    }
}
