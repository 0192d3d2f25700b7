//! The web console: queues, jobs, media and AI spend of one tenant, over HTTP.
//!
//! Everything it shows it reads through the public gRPC API (ingest's address, which also
//! serves `JobService` and `InferenceService`) with the viewer's own API key, kept in an
//! HTTP-only cookie: the console holds no credentials of its own and can show nothing the
//! key could not read. Pages are rendered on the server (maud); a small script swaps the
//! live part of a page when the server-sent events of `/events` (fed by `WatchJobs` or
//! `WatchJob`) say something changed.

mod assets;
mod auth;
mod error;
mod pages;
mod views;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

pub use error::ConsoleError;

/// Console settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsoleConfig {
    /// HTTP listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
    /// The public gRPC API (ingest), read with each viewer's API key
    #[arg(long = "api-addr", env = "MM_ADDR", default_value = "http://127.0.0.1:50051")]
    pub api_addr: String,
    /// Link for a job's trace: a URL with `{trace_id}` in it, for example
    /// `http://jaeger:16686/trace/{trace_id}` or a Grafana Tempo explore URL; empty: no link
    #[arg(long, env = "MM_TRACE_URL", default_value = "")]
    pub trace_url: String,
    /// Mark the login cookie `Secure` (serve the console over HTTPS, or behind a proxy that does)
    #[arg(long, env = "MM_CONSOLE_SECURE_COOKIE", default_value_t = false)]
    pub secure_cookie: bool,
    /// Largest upload through the console, in bytes (ingest's own limits apply as well)
    #[arg(long, env = "MM_CONSOLE_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upload_bytes: usize,
}

impl ConsoleConfig {
    pub fn new(listen_addr: SocketAddr, api_addr: String) -> Self {
        Self {
            listen_addr,
            api_addr,
            trace_url: String::new(),
            secure_cookie: false,
            max_upload_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What every handler shares: the channel to the public API and the settings.
#[derive(Clone)]
pub(crate) struct AppState {
    channel: tonic::transport::Channel,
    config: std::sync::Arc<ConsoleConfig>,
    /// Ends the live streams, so that a graceful shutdown does not wait for browsers.
    shutdown: CancellationToken,
}

/// The console's routes (without the listener), for `serve` and for tests.
pub fn router(config: ConsoleConfig, shutdown: CancellationToken) -> anyhow::Result<Router> {
    let channel = tonic::transport::Endpoint::from_shared(config.api_addr.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let max_upload = config.max_upload_bytes;
    let state = AppState {
        channel,
        config: std::sync::Arc::new(config),
        shutdown,
    };
    Ok(Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/retry", get(pages::retry_confirm).post(pages::retry_matching))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/cancel", post(pages::cancel))
        .route("/jobs/{id}/retry", post(pages::retry))
        .route("/media/{id}", get(pages::media))
        .route("/media/{id}/files/{name}", get(pages::file))
        .route("/spend", get(pages::spend))
        .route(
            "/upload",
            get(pages::upload_page)
                .post(pages::upload)
                .layer(axum::extract::DefaultBodyLimit::max(max_upload)),
        )
        .route("/events", get(pages::events))
        .route("/assets/console.css", get(assets::css))
        .route("/assets/console.js", get(assets::js))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(auth::same_origin_posts))
        .with_state(state))
}

/// Serves the console until `shutdown`.
pub async fn serve(config: ConsoleConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr = config.listen_addr;
    let app = router(config, shutdown.clone())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding {addr}: {err}"))?;
    tracing::info!(addr = %listener.local_addr()?, "console listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
