//! Login by API key: the key is checked against the API, then kept in an HTTP-only,
//! same-site cookie and sent as the bearer token of every call made for that browser.

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, http};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_server::auth::{AuthedChannel, Credentials};
use serde::Deserialize;

use crate::AppState;
use crate::error::ConsoleError;
use crate::views;

pub(crate) const COOKIE: &str = "mm_console_key";
/// How long a login lasts (the key itself may be revoked sooner: the next call then fails).
const COOKIE_SECONDS: u32 = 12 * 3600;

/// The person looking at the console, as their API key: every call is made with it.
pub(crate) struct Viewer {
    channel: AuthedChannel,
}

impl Viewer {
    fn new(state: &AppState, key: &str) -> Self {
        Self {
            channel: Credentials::bearer(key).channel(state.channel.clone()),
        }
    }

    pub(crate) fn jobs(&self) -> JobServiceClient<AuthedChannel> {
        JobServiceClient::new(self.channel.clone())
    }

    pub(crate) fn ingest(&self) -> IngestServiceClient<AuthedChannel> {
        IngestServiceClient::new(self.channel.clone()).max_decoding_message_size(32 * 1024 * 1024)
    }

    pub(crate) fn inference(&self) -> InferenceServiceClient<AuthedChannel> {
        InferenceServiceClient::new(self.channel.clone())
    }
}

/// The key in the request's cookie, if any.
fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| plausible_key(value))
}

/// API keys are short ASCII tokens; anything else is not one (and could not sit in a cookie).
fn plausible_key(key: &str) -> bool {
    (8..=256).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match key_of(&parts.headers) {
            Some(key) => Ok(Self::new(state, &key)),
            None => Err(to_login(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))),
        }
    }
}

/// A redirect to the login page that comes back to `next`.
pub(crate) fn to_login(next: &str) -> Response {
    let next = if safe_next(next) { next } else { "/" };
    let mut target = String::from("/login");
    if next != "/" {
        target.push_str("?next=");
        target.push_str(&views::url_encode(next));
    }
    Redirect::to(&target).into_response()
}

/// Only paths of this site: no scheme, no `//host`.
fn safe_next(next: &str) -> bool {
    next.starts_with('/') && !next.starts_with("//") && !next.contains('\\')
}

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: String,
}

pub(crate) async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    views::login(&q.next, None, None).into_response()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    key: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let key = form.key.trim();
    if !plausible_key(key) {
        return (
            StatusCode::UNAUTHORIZED,
            views::login(
                &form.next,
                Some("That is not an API key: keys are letters, digits, '_' and '-'."),
                None,
            ),
        )
            .into_response();
    }
    // The cheapest call every key may make says whether the API takes it.
    let viewer = Viewer::new(&state, key);
    match viewer.jobs().get_queue_stats(pb::GetQueueStatsRequest {}).await {
        Ok(_) => {
            let next = if safe_next(&form.next) { form.next.as_str() } else { "/" };
            let mut response = Redirect::to(next).into_response();
            let cookie = format!(
                "{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_SECONDS}{}",
                if state.config.secure_cookie { "; Secure" } else { "" }
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            tracing::info!("console login");
            response
        }
        Err(status) => {
            let err = ConsoleError::from(status);
            let (code, message) = if err.is_unauthenticated() {
                (
                    StatusCode::UNAUTHORIZED,
                    "The API did not accept that key (UNAUTHENTICATED).".to_owned(),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("The API could not check the key: {err}"),
                )
            };
            (code, views::login(&form.next, Some(&message), None)).into_response()
        }
    }
}

pub(crate) async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Refuses a POST sent from another site (besides the same-site cookie, which browsers
/// already withhold from cross-site requests).
pub(crate) async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == http::Method::POST && !same_origin(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            views::message_page("Refused", "This form was sent from another site.", None),
        )
            .into_response();
    }
    next.run(request).await
}

fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser form post (curl, a test client): the cookie is what authorizes it.
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_its_cookie_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; mm_console_key=mmk_abcdef123456; c=d".parse().unwrap(),
        );
        assert_eq!(key_of(&headers).as_deref(), Some("mmk_abcdef123456"));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "mm_console_key=<script>".parse().unwrap());
        assert_eq!(key_of(&headers), None);
        assert_eq!(key_of(&HeaderMap::new()), None);
    }

    #[test]
    fn login_returns_only_to_this_site() {
        assert!(safe_next("/jobs?state=FAILED"));
        assert!(!safe_next("//evil.example/x"));
        assert!(!safe_next("https://evil.example/"));
        assert!(!safe_next("/\\evil.example"));
    }

    #[test]
    fn posts_from_other_origins_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&headers));
    }
}
