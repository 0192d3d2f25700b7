//! A local, deterministic, OpenAI-compatible HTTP server with fault injection, for tests.
//!
//! `FakeAi` binds `127.0.0.1:0` and serves the subset of the OpenAI REST API that the
//! mediamesh AI provider gateway uses (through `async-openai`):
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | a `chat.completion`; with a `json_schema` response format the content is an instance of the schema whose values are derived from the input (image dimensions, words of the text) |
//! | `POST /v1/audio/transcriptions` | `json`, `verbose_json`, `text`, `srt`, `vtt` or `diarized_json`; the duration comes from the WAV header, a constant-bit-rate MP3's frame header, or else the file size (16 kB a second) |
//! | `POST /v1/images/edits` | the uploaded image, slightly brightened, as a PNG |
//! | `POST /v1/images/generations` | a PNG gradient whose colours depend on the sha256 of the prompt |
//! | `POST /v1/moderations` | flags inputs containing [`Options::flagged_word`] |
//! | `GET /v1/models`, `GET /v1/models/{id}` | a fixed list of models |
//!
//! Every answer is a pure function of the request (plus [`Options::name`], which is embedded in
//! the answers so that a test can tell two fake providers apart), so tests can assert on it.
//!
//! Failures are injected per route with [`FakeAi::fail_next`] (one-shot, queued in order) and
//! [`FakeAi::set_persistent_fault`] (until cleared). Every request to a known route is recorded
//! and can be inspected with [`FakeAi::requests`] and [`FakeAi::count`].
//!
//! Requests to other paths get a 404 OpenAI error JSON and are not recorded (except
//! `GET /files/{id}`, which serves the images answered with `response_format: "url"`).
//!
//! Note for tests using `async-openai` 0.43: its default client retries 429 and 5xx answers up
//! to 3 times (waiting `Retry-After` whole seconds, else 100/200/400 ms) and connect errors; so
//! a single queued 429/500 is invisible to a typed call. Queue 4 (or use a persistent fault) to
//! make the call fail, or give the client an HTTP service without the retry layer.
//!
//! Order of checks for a request to a known route: the whole body is read (so that error
//! answers are always seen by the client), the request is recorded, then an injected fault (if
//! any) wins over everything else (including the API key check), then the API key is checked,
//! then the request is validated and answered. A body larger than `max_audio_bytes + 64 MiB`
//! is drained and answered with 413 on any route, without consuming a fault.
//!
//! ```ignore
//! let ai = FakeAi::start().await?;
//! ai.fail_next(Some(Route::ChatCompletions), 1, Fault::RateLimited { retry_after: Some(Duration::from_secs(2)) });
//! let config = async_openai::config::OpenAIConfig::new().with_api_base(ai.base_url()).with_api_key("k");
//! // The first chat request gets a 429 with `Retry-After: 2`; async-openai's default client
//! // waits 2 s and retries, and the retry succeeds. `ai.count(Route::ChatCompletions)` is then 2.
//! ```

mod audio;
mod chat;
mod errors;
mod images;
mod media;
mod models;
mod moderation;
mod schema;
mod server;
mod state;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::Shared;

/// A running fake OpenAI-compatible server. It stops serving (listener closed, open connections
/// dropped) when this value is dropped.
pub struct FakeAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Configuration of a [`FakeAi`].
#[derive(Clone, Debug)]
pub struct Options {
    /// When `Some`, every `/v1` request without the header `Authorization: Bearer <key>` gets
    /// a 401 with an OpenAI error JSON (`code: "invalid_api_key"`).
    pub api_key: Option<String>,
    /// Transcription uploads whose `file` part is larger than this get a 413 (default 25 MiB).
    pub max_audio_bytes: usize,
    /// Moderation flags every input that contains this word, case-insensitively (default
    /// `"forbidden"`).
    pub flagged_word: String,
    /// Name of this fake provider, embedded in answers (chat content starts with `[name]`,
    /// captions end with `[name]`, transcripts contain it, models are `owned_by` it), so tests
    /// can tell two fake providers apart (default `"fake"`).
    pub name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: None,
            max_audio_bytes: 25 * 1024 * 1024,
            flagged_word: "forbidden".to_owned(),
            name: "fake".to_owned(),
        }
    }
}

/// The API routes that are recorded and can be faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/audio/transcriptions`
    Transcriptions,
    /// `POST /v1/images/edits`
    ImageEdits,
    /// `POST /v1/images/generations`
    ImageGenerations,
    /// `POST /v1/moderations`
    Moderations,
    /// `GET /v1/models` and `GET /v1/models/{id}`
    Models,
}

impl Route {
    /// All routes.
    pub const ALL: [Route; 6] = [
        Route::ChatCompletions,
        Route::Transcriptions,
        Route::ImageEdits,
        Route::ImageGenerations,
        Route::Moderations,
        Route::Models,
    ];

    /// The path of the route, e.g. `/v1/chat/completions` (for [`Route::Models`]: `/v1/models`).
    pub fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Transcriptions => "/v1/audio/transcriptions",
            Route::ImageEdits => "/v1/images/edits",
            Route::ImageGenerations => "/v1/images/generations",
            Route::Moderations => "/v1/moderations",
            Route::Models => "/v1/models",
        }
    }

    /// The route a request belongs to, if it is one of the served API routes.
    pub(crate) fn of(method: &axum::http::Method, path: &str) -> Option<Route> {
        use axum::http::Method;
        if *method == Method::GET {
            if path == "/v1/models" {
                return Some(Route::Models);
            }
            return match path.strip_prefix("/v1/models/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Some(Route::Models),
                _ => None,
            };
        }
        if *method != Method::POST {
            return None;
        }
        Route::ALL
            .into_iter()
            .find(|route| *route != Route::Models && route.path() == path)
    }
}

/// A failure to inject (see [`FakeAi::fail_next`] and [`FakeAi::set_persistent_fault`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with an OpenAI error JSON (`type: "rate_limit_error"`, `code: "rate_limit_exceeded"`)
    /// and, when `Some`, a `Retry-After` header in whole seconds (rounded up).
    RateLimited {
        /// Value of the `Retry-After` header (rounded up to whole seconds).
        retry_after: Option<Duration>,
    },
    /// 500 with an OpenAI error JSON (`type: "server_error"`).
    ServerError,
    /// 401 with an OpenAI error JSON (`code: "invalid_api_key"`).
    Unauthorized,
    /// 400 with an OpenAI error JSON (`type: "invalid_request_error"`).
    BadRequest,
    /// Waits that long, then answers normally.
    Slow(Duration),
    /// 200 with `content-type: application/json` and a body that is not JSON.
    MalformedJson,
    /// The connection is reset (TCP RST) without any HTTP response.
    ConnectionReset,
    /// Chat: 200 with a well-formed completion whose message content does not match the
    /// requested format (`{"unexpected": true}` when a `json_schema` was requested, prose
    /// otherwise). Other routes: like [`Fault::MalformedJson`].
    InvalidAnswer,
    /// Chat: 200 with `message.refusal = "I can't help with that"` and `content: null`.
    /// Other routes: 400 with `code: "content_policy_violation"`.
    Refusal,
}

/// A request received by the fake, as recorded in [`FakeAi::requests`].
#[derive(Clone, Debug)]
pub struct Seen {
    /// The route.
    pub route: Route,
    /// When the request head arrived.
    pub at: Instant,
    /// The raw `Authorization` header value.
    pub authorization: Option<String>,
    /// The `model` of the request, if it could be parsed.
    pub model: Option<String>,
    /// Size of the request body.
    pub body_bytes: usize,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
    /// The text prompt/input, where there is one: chat: the text parts of all messages joined
    /// with `\n`; images: `prompt`; transcription: `prompt`; moderation: the input texts joined
    /// with `\n`.
    pub prompt: Option<String>,
}

impl FakeAi {
    /// Starts a fake with [`Options::default`] on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> std::io::Result<FakeAi> {
        FakeAi::start_with(Options::default()).await
    }

    /// Starts a fake with `options` on `127.0.0.1` with an ephemeral port.
    pub async fn start_with(options: Options) -> std::io::Result<FakeAi> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options, format!("http://{addr}")));
        let task = tokio::spawn(server::accept_loop(listener, shared.clone()));
        Ok(FakeAi { addr, shared, task })
    }

    /// The base URL to give to an OpenAI client: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next `n` requests of `route` (of any route when `None`) get `fault`. Calls queue up
    /// in order: a request takes the oldest queued fault that matches it. Queued faults take
    /// precedence over persistent ones.
    pub fn fail_next(&self, route: Option<Route>, n: usize, fault: Fault) {
        self.shared.fail_next(route, n, fault);
    }

    /// Every request of `route` (of any route when `None`) gets `fault` until cleared with
    /// `fault: None`. A persistent fault for a specific route wins over one for `None`.
    pub fn set_persistent_fault(&self, route: Option<Route>, fault: Option<Fault>) {
        self.shared.set_persistent_fault(route, fault);
    }

    /// Every request to a known route received so far, in arrival order, faulted ones included.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.requests()
    }

    /// How many requests of `route` were received (see [`FakeAi::requests`]).
    pub fn count(&self, route: Route) -> usize {
        self.shared.count(route)
    }

    /// Forgets the recorded requests (queued and persistent faults are kept).
    pub fn clear_log(&self) {
        self.shared.clear_log();
    }
}

impl Drop for FakeAi {
    fn drop(&mut self) {
        // The accept loop owns the listener and every connection task: aborting it closes them.
        self.task.abort();
    }
}

impl std::fmt::Debug for FakeAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAi")
            .field("base_url", &self.base_url())
            .field("name", &self.shared.options.name)
            .finish()
    }
}
