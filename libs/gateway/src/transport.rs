//! The HTTP layer under async-openai and the classification of its failures.
//!
//! async-openai's default executor retries 429s on its own; the gateway installs its own tower
//! service instead ([`StatusService`] around [`ReqwestService`]) so that retries follow the
//! gateway's policy. The service turns every non-2xx response into an [`HttpFailure`] that
//! keeps the status, the `Retry-After` delay and the start of the body; it reaches the gateway
//! as `OpenAIError::Boxed` and is downcast in [`classify`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::{AzureConfig, Config, OpenAIConfig};
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use futures::future::BoxFuture;
use mediamesh_core::{Error, ErrorCode};
use reqwest::StatusCode;
use tower::ServiceExt;

use crate::config::{ProviderConfig, ProviderKind};

/// The async-openai client type used for every provider.
pub(crate) type Api = async_openai::Client<Arc<dyn Config>>;

/// Most of an error body kept for the message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A non-2xx answer.
#[derive(Debug)]
pub(crate) struct HttpFailure {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)
    }
}

impl std::error::Error for HttpFailure {}

/// `ReqwestService` plus: non-2xx answers become [`HttpFailure`], and the empty
/// `Authorization` header is dropped for providers without a key.
#[derive(Clone)]
pub(crate) struct StatusService {
    inner: ReqwestService,
    strip_authorization: bool,
}

impl tower::Service<HttpRequestFactory> for StatusService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let inner = self.inner.clone();
        let factory = if self.strip_authorization {
            HttpRequestFactory::new(move || {
                let factory = factory.clone();
                async move {
                    let mut request = factory.build().await?;
                    request.headers_mut().remove(reqwest::header::AUTHORIZATION);
                    Ok(request)
                }
            })
        } else {
            factory
        };
        Box::pin(async move {
            let response = inner.oneshot(factory).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            let body = read_limited(response).await?;
            Err(OpenAIError::Boxed(Box::new(HttpFailure {
                status,
                retry_after,
                body,
            })))
        })
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<bytes::Bytes, OpenAIError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(OpenAIError::Reqwest)? {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Ok(body.into())
}

/// `Retry-After` (seconds, possibly fractional) or OpenAI's `retry-after-ms`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The async-openai client of one provider and model (Azure has a deployment per model).
pub(crate) fn client(provider: &ProviderConfig, model: &str, http: &reqwest::Client) -> Api {
    let key = provider
        .api_key
        .as_ref()
        .map(|k| k.expose().to_owned())
        .unwrap_or_default();
    let config: Arc<dyn Config> = match provider.kind {
        ProviderKind::OpenAi => Arc::new(
            OpenAIConfig::new()
                .with_api_base(provider.base_url.clone())
                .with_api_key(key)
                .with_org_id("")
                .with_project_id(""),
        ),
        ProviderKind::Azure => Arc::new(
            AzureConfig::new()
                .with_api_base(provider.base_url.clone())
                .with_api_key(key)
                .with_api_version(provider.api_version.clone().unwrap_or_default())
                .with_deployment_id(
                    provider
                        .deployments
                        .get(model)
                        .cloned()
                        .unwrap_or_else(|| model.to_owned()),
                ),
        ),
    };
    let service = StatusService {
        inner: ReqwestService::new(http.clone()),
        strip_authorization: provider.api_key.is_none() && provider.kind == ProviderKind::OpenAi,
    };
    async_openai::Client::build(http.clone(), config).with_http_service(service)
}

/// What to do after a failed HTTP call.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Try the same provider again (after `retry_after` if given), then fail over.
    Retry {
        error: Error,
        retry_after: Option<Duration>,
    },
    /// Do not retry this provider; try the next one.
    Failover(Error),
    /// Stop the whole call with this error (no retry, no failover).
    Abort(Error),
}

impl Verdict {
    pub(crate) fn error(&self) -> &Error {
        match self {
            Verdict::Retry { error, .. } | Verdict::Failover(error) | Verdict::Abort(error) => error,
        }
    }

    /// Whether the failure counts against the provider's circuit.
    pub(crate) fn is_provider_failure(&self) -> bool {
        !matches!(self, Verdict::Abort(_))
    }
}

/// Classifies a failed call of provider `name`. `secret` is scrubbed from any text quoted.
pub(crate) fn classify(name: &str, error: OpenAIError, secret: Option<&str>) -> Verdict {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
            Ok(failure) => classify_status(name, &failure, secret),
            Err(other) => match other.downcast::<reqwest::Error>() {
                Ok(e) => classify_reqwest(name, &e),
                Err(other) => Verdict::Retry {
                    error: Error::new(
                        ErrorCode::Network,
                        redact(&format!("provider {name}: transport error: {other}"), secret),
                    ),
                    retry_after: None,
                },
            },
        },
        OpenAIError::Reqwest(e) => classify_reqwest(name, &e),
        OpenAIError::JSONDeserialize(e, _) => Verdict::Retry {
            error: Error::new(
                ErrorCode::ProviderDown,
                format!("provider {name} sent malformed JSON ({})", e.classify_str()),
            ),
            retry_after: None,
        },
        OpenAIError::ApiError(api) => {
            let failure = HttpFailure {
                status: api.status_code,
                retry_after: None,
                body: bytes::Bytes::from(
                    serde_json::to_vec(&serde_json::json!({"error": {"message": api.api_error.message}}))
                        .unwrap_or_default(),
                ),
            };
            classify_status(name, &failure, secret)
        }
        OpenAIError::StreamError(_) => Verdict::Retry {
            error: Error::new(ErrorCode::ProviderDown, format!("provider {name}: broken stream")),
            retry_after: None,
        },
        OpenAIError::InvalidArgument(message) => {
            Verdict::Abort(Error::bad_input(redact(&format!("invalid request: {message}"), secret)))
        }
        other => Verdict::Abort(Error::internal(redact(&format!("provider {name}: {other}"), secret))),
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

fn classify_reqwest(name: &str, e: &reqwest::Error) -> Verdict {
    let (code, what) = if e.is_timeout() {
        (ErrorCode::Timeout, "timed out")
    } else if e.is_connect() {
        (ErrorCode::Network, "connection failed")
    } else if e.is_decode() {
        (ErrorCode::ProviderDown, "sent an undecodable body")
    } else {
        (ErrorCode::Network, "connection reset or closed")
    };
    Verdict::Retry {
        error: Error::new(code, format!("provider {name}: {what}")),
        retry_after: None,
    }
}

/// The provider's own error message (`{"error": {"message": ...}}`), shortened and scrubbed.
fn body_message(body: &[u8], secret: Option<&str>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("error").filter(|e| e.is_string()))?
        .as_str()?;
    let mut short: String = message.chars().take(300).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    let message = short;
    Some(redact(&message, secret))
}

fn body_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_owned)
}

fn classify_status(name: &str, failure: &HttpFailure, secret: Option<&str>) -> Verdict {
    let status = failure.status;
    let detail = body_message(&failure.body, secret)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status.as_u16() {
        401 | 403 => Verdict::Failover(Error::new(
            ErrorCode::ProviderDown,
            format!("provider {name} rejected the credentials (HTTP {})", status.as_u16()),
        )),
        413 => Verdict::Abort(Error::new(
            ErrorCode::TooLarge,
            format!("provider {name}: the input is too large (HTTP 413){detail}"),
        )),
        408 => Verdict::Retry {
            error: Error::new(
                ErrorCode::Timeout,
                format!("provider {name}: request timeout (HTTP 408)"),
            ),
            retry_after: failure.retry_after,
        },
        429 if body_code(&failure.body).as_deref() == Some("insufficient_quota") => Verdict::Failover(Error::new(
            ErrorCode::RateLimited,
            format!("provider {name}: quota exhausted (HTTP 429)"),
        )),
        429 => Verdict::Retry {
            error: Error::new(
                ErrorCode::RateLimited,
                format!("provider {name}: rate limited (HTTP 429)"),
            ),
            retry_after: failure.retry_after,
        },
        400..=499 => Verdict::Abort(Error::new(
            ErrorCode::BadInput,
            format!("provider {name} refused the request (HTTP {}){detail}", status.as_u16()),
        )),
        _ => Verdict::Retry {
            error: Error::new(
                ErrorCode::ProviderDown,
                format!("provider {name}: server error (HTTP {})", status.as_u16()),
            ),
            retry_after: failure.retry_after,
        },
    }
}

/// `text` with every occurrence of `secret` replaced.
pub(crate) fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() && text.contains(secret) => text.replace(secret, "[redacted]"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, body: &str) -> HttpFailure {
        HttpFailure {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn statuses_map_to_codes() {
        let code = |s| classify_status("p", &failure(s, "{}"), None).error().code;
        assert_eq!(code(400), ErrorCode::BadInput);
        assert_eq!(code(404), ErrorCode::BadInput);
        assert_eq!(code(413), ErrorCode::TooLarge);
        assert_eq!(code(422), ErrorCode::BadInput);
        assert_eq!(code(401), ErrorCode::ProviderDown);
        assert_eq!(code(429), ErrorCode::RateLimited);
        assert_eq!(code(503), ErrorCode::ProviderDown);
        assert!(matches!(
            classify_status("p", &failure(401, ""), None),
            Verdict::Failover(_)
        ));
        assert!(matches!(
            classify_status("p", &failure(500, ""), None),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn messages_are_scrubbed() {
        let v = classify_status(
            "p",
            &failure(400, r#"{"error":{"message":"bad key sk-123 here"}}"#),
            Some("sk-123"),
        );
        assert!(!v.error().message.contains("sk-123"));
        assert!(v.error().message.contains("[redacted]"));
        let v = classify_status(
            "p",
            &failure(401, r#"{"error":{"message":"Incorrect API key sk-123"}}"#),
            Some("sk-123"),
        );
        assert_eq!(v.error().message, "provider p rejected the credentials (HTTP 401)");
    }

    #[test]
    fn azure_clients_use_the_models_deployment() {
        let mut provider = crate::config::ProviderConfig::openai_default("az", None, Some("https://x.example.com"));
        provider.kind = ProviderKind::Azure;
        provider.api_version = Some("2024-10-21".into());
        provider.deployments.insert("gpt-4o-mini".into(), "dep-mini".into());
        provider.api_key = Some(crate::config::ApiKey::new("azure-key").unwrap());
        let api = client(&provider, "gpt-4o-mini", &reqwest::Client::new());
        assert_eq!(
            api.config().url("/chat/completions"),
            "https://x.example.com/openai/deployments/dep-mini/chat/completions"
        );
        assert_eq!(api.config().query(), vec![("api-version", "2024-10-21")]);
        assert_eq!(api.config().headers().get("api-key").unwrap(), "azure-key");
    }

    #[test]
    fn retry_after_headers() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
    }
}
