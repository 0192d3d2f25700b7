//! Who may call a service. A tower layer on every gRPC server asks an [`Authenticator`] about
//! each call before it reaches the service: ingest checks tenants' API keys (and the admin
//! token for `AdminService`), the services behind it check the internal token that ingest
//! sends. Health and reflection stay open, so that probes and `grpcurl` work.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};

/// Whether the public API asks for API keys. `off` trusts the `mm-tenant` header: only for
/// development, or behind a proxy that authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    On,
    Off,
}

/// A secret from the environment: compared by digest, never printed.
#[derive(Clone)]
pub struct Token {
    value: String,
    digest: [u8; 32],
}

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let digest = Sha256::digest(value.as_bytes()).into();
        Self { value, digest }
    }

    /// A fresh random token (256 bits, URL-safe).
    pub fn generate() -> Self {
        Self::new(random_secret("mmt_"))
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() < 16 {
            return Err("a token needs at least 16 characters".to_owned());
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is printable ASCII without spaces".to_owned());
        }
        Ok(Self::new(s))
    }
}

/// `prefix` and 256 random bits in URL-safe base64.
pub fn random_secret(prefix: &str) -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Settings every service reads about authentication.
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// API keys on the public API: on (default) or off (trust the mm-tenant header; development only)
    #[arg(long = "auth", env = "MM_AUTH", value_enum, default_value = "on")]
    pub auth: AuthMode,
    /// The secret the services send each other (the same on every service); required unless MM_AUTH=off
    #[arg(long, env = "MM_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<Token>,
}

impl Default for AuthArgs {
    fn default() -> Self {
        Self {
            auth: AuthMode::On,
            internal_token: None,
        }
    }
}

impl AuthArgs {
    /// The check for a service that only other services call: the internal token when one
    /// is set. Without one, only `MM_AUTH=off` lets the service start.
    pub fn internal(&self) -> Result<InternalAuth, crate::Error> {
        if self.internal_token.is_none() && self.auth == AuthMode::On {
            return Err(crate::Error::Startup(
                "MM_INTERNAL_TOKEN is not set: give every service the same secret (or MM_AUTH=off in development)"
                    .to_owned(),
            ));
        }
        Ok(InternalAuth {
            token: self.internal_token.clone(),
        })
    }

    /// What this service sends when it calls another one.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.internal_token.as_ref())
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What a caller proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A tenant's API key: the request acts for this tenant, whatever it claims.
    Tenant(String),
    /// Another service (or auth is off): the request's `mm-tenant` stands.
    Trusted,
}

/// Decides about one call from its method path and headers.
pub trait Authenticator: Clone + Send + Sync + 'static {
    fn authenticate(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> impl Future<Output = Result<Caller, Status>> + Send;
}

/// The services behind ingest: the internal token, when one is configured.
#[derive(Clone, Debug)]
pub struct InternalAuth {
    token: Option<Token>,
}

impl Authenticator for InternalAuth {
    fn authenticate(
        &self,
        _path: &str,
        headers: &http::HeaderMap,
    ) -> impl Future<Output = Result<Caller, Status>> + Send {
        let verdict = match (&self.token, bearer(headers)) {
            (None, _) => Ok(Caller::Trusted),
            (Some(token), Some(presented)) if token.matches(presented) => Ok(Caller::Trusted),
            (Some(_), Some(_)) => Err(unauthenticated("wrong internal token")),
            (Some(_), None) => Err(unauthenticated(
                "this service is internal: calls need the internal token (clients call ingest)",
            )),
        };
        std::future::ready(verdict)
    }
}

/// `UNAUTHENTICATED` with the stable code.
pub fn unauthenticated(message: impl Into<String>) -> Status {
    let mut status = Status::unauthenticated(message.into());
    status
        .metadata_mut()
        .insert("mm-error-code", MetadataValue::from_static("UNAUTHENTICATED"));
    status
}

/// Calls nobody needs a key for: health checks and reflection.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// Adds authentication to a tonic server (`Server::builder().layer(AuthLayer::new(..))`).
#[derive(Clone, Debug)]
pub struct AuthLayer<A> {
    authenticator: A,
}

impl<A> AuthLayer<A> {
    pub fn new(authenticator: A) -> Self {
        Self { authenticator }
    }
}

impl<S, A: Clone> tower::Layer<S> for AuthLayer<A> {
    type Service = AuthService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S, A> {
    inner: S,
    authenticator: A,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, A, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S, A>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: Authenticator,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The ready service goes with this call; its clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if is_open(&path) {
                return inner.call(request).await;
            }
            match authenticator.authenticate(&path, request.headers()).await {
                Ok(Caller::Tenant(tenant)) => {
                    match http::HeaderValue::from_str(&tenant) {
                        Ok(value) => {
                            request
                                .headers_mut()
                                .insert(http::HeaderName::from_static("mm-tenant"), value);
                        }
                        Err(_) => return Ok(Status::internal("tenant name is not a header value").into_http()),
                    }
                    // The key's secret goes no further than this layer.
                    request.headers_mut().remove(http::header::AUTHORIZATION);
                    inner.call(request).await
                }
                Ok(Caller::Trusted) => inner.call(request).await,
                Err(status) => {
                    tracing::debug!(path, code = ?status.code(), message = status.message(), "call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Adds `authorization: Bearer <internal token>` to every call a client makes.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    header: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    pub fn new(token: Option<&Token>) -> Self {
        Self {
            header: token.and_then(|t| format!("Bearer {}", t.expose()).parse().ok()),
        }
    }

    /// Sends `secret` (an API key, say) as the bearer token.
    pub fn bearer(secret: &str) -> Self {
        Self {
            header: format!("Bearer {secret}").parse().ok(),
        }
    }

    /// A channel whose calls carry these credentials.
    pub fn channel(&self, channel: tonic::transport::Channel) -> AuthedChannel {
        tonic::service::interceptor::InterceptedService::new(channel, self.clone())
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the internal token.
pub type AuthedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_never_print() {
        let token: Token = "a-long-enough-secret".parse().unwrap();
        assert!(token.matches("a-long-enough-secret"));
        assert!(!token.matches("a-long-enough-secreT"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "\"<redacted>\"");
        assert!("short".parse::<Token>().is_err());
        assert!("has a space in the middle".parse::<Token>().is_err());
    }

    #[test]
    fn bearer_is_read_case_insensitively() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[tokio::test]
    async fn the_internal_check_wants_the_token() {
        let auth = AuthArgs {
            auth: AuthMode::On,
            internal_token: Some(Token::new("internal-token-123456")),
        }
        .internal()
        .unwrap();
        let mut headers = http::HeaderMap::new();
        assert!(auth.authenticate("/x", &headers).await.is_err());
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer nope-nope-nope-nope".parse().unwrap(),
        );
        assert_eq!(
            auth.authenticate("/x", &headers).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer internal-token-123456".parse().unwrap(),
        );
        assert_eq!(auth.authenticate("/x", &headers).await.unwrap(), Caller::Trusted);
        assert!(AuthArgs::default().internal().is_err());
    }
}
