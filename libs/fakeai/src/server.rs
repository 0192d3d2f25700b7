//! Connection handling: every accepted connection is served by hyper directly (not by
//! `axum::serve`) so that a request can end with a TCP reset and no HTTP response at all.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::errors::{self, ResetMarker};
use crate::state::Shared;
use crate::{Route, Seen};

/// Error returned to hyper to make it drop the connection without answering.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for ResetConnection {}

/// Accepts connections until aborted; aborting drops the listener and every connection task.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let router = router(shared.clone());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shared.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "fake AI: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A TCP stream that, when dropped after a reset was requested, closes with an RST.
struct ResettableStream {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst)
            && let Err(error) = self.stream.set_zero_linger()
        {
            tracing::debug!(%error, "fake AI: could not set SO_LINGER 0");
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No FIN before the RST.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shared: Arc<Shared>) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "fake AI: set_nodelay failed");
    }
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream {
        stream,
        reset: reset.clone(),
    });
    let service =
        hyper::service::service_fn(move |request| handle(request, router.clone(), shared.clone(), reset.clone()));
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%error, "fake AI: connection ended with an error");
    }
}

struct ReadBody {
    bytes: Bytes,
    total: usize,
    overflow: bool,
}

/// Reads the whole body; past `cap` bytes the rest is drained and dropped.
async fn read_body(mut body: Incoming, cap: usize) -> Result<ReadBody, hyper::Error> {
    let mut buffer = BytesMut::new();
    let mut total = 0usize;
    let mut overflow = false;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if !overflow {
            if buffer.len() + data.len() > cap {
                overflow = true;
                buffer = BytesMut::new();
            } else {
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(ReadBody {
        bytes: buffer.freeze(),
        total,
        overflow,
    })
}

async fn handle(
    request: Request<Incoming>,
    router: Router,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> Result<Response, ResetConnection> {
    let at = Instant::now();
    let (mut parts, body) = request.into_parts();
    let route = Route::of(&parts.method, parts.uri.path());
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let body = match read_body(body, shared.body_cap()).await {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(%error, "fake AI: could not read request body");
            return Err(ResetConnection);
        }
    };
    let Some(route) = route else {
        if parts.uri.path().starts_with("/v1") && !shared.authorized(authorization.as_deref()) {
            return Ok(errors::unauthorized());
        }
        return Ok(forward(router, parts, body.bytes).await);
    };
    let seen = Seen {
        route,
        at,
        authorization,
        model: None,
        body_bytes: body.total,
        fault: None,
        prompt: None,
    };
    if body.overflow {
        shared.record(seen);
        return Ok(errors::payload_too_large(format!(
            "request body of {} bytes is larger than the fake provider accepts ({} bytes)",
            body.total,
            shared.body_cap()
        )));
    }
    let ctx = shared.admit(seen);
    parts.extensions.insert(ctx);
    let response = forward(router, parts, body.bytes).await;
    if response.extensions().get::<ResetMarker>().is_some() {
        reset.store(true, Ordering::SeqCst);
        return Err(ResetConnection);
    }
    Ok(response)
}

async fn forward(router: Router, parts: axum::http::request::Parts, bytes: Bytes) -> Response {
    let request = Request::from_parts(parts, Body::from(bytes));
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(crate::chat::handle))
        .route("/v1/audio/transcriptions", post(crate::audio::handle))
        .route("/v1/images/edits", post(crate::images::edit))
        .route("/v1/images/generations", post(crate::images::generate))
        .route("/v1/moderations", post(crate::moderation::handle))
        .route("/v1/models", get(crate::models::list))
        .route("/v1/models/{id}", get(crate::models::retrieve))
        .route("/files/{id}", get(file))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn fallback(request: Request<Body>) -> Response {
    errors::not_found(format!("Invalid URL ({} {})", request.method(), request.uri().path()))
}

/// Serves images answered with `response_format: "url"`.
async fn file(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.file(&id) {
        Some(bytes) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
