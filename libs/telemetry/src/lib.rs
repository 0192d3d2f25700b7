//! Logging and tracing for every mediamesh binary: a `tracing` subscriber (text or JSON), OTLP
//! export when an endpoint is configured, and the W3C trace-context propagation used on gRPC
//! metadata and NATS headers alike.

use std::collections::HashMap;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod json;
pub use json::JsonLayer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("otlp exporter: {0}")]
    Exporter(String),
    #[error("invalid log format {0:?} (use text or json)")]
    LogFormat(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(Error::LogFormat(other.to_owned())),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint (`http://collector:4317`); no export when `None`.
    pub otlp_endpoint: Option<String>,
    /// `RUST_LOG`-style filter; `info` when `None`.
    pub filter: Option<String>,
}

/// Flushes and stops trace export when dropped: keep it alive in `main`.
#[must_use]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("otlp shutdown: {err}");
        }
    }
}

/// Installs the global subscriber. A second call in the same process (tests, `meshctl dev`)
/// keeps the first subscriber and returns an inert guard.
///
/// Spans always get OpenTelemetry trace and span ids (so that `traceparent` goes out on gRPC
/// and NATS hops, and JSON logs carry the ids); they are exported only when an OTLP endpoint
/// is configured, in batches off the request path.
pub fn init(config: &TelemetryConfig) -> Result<Guard, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_new(config.filter.as_deref().unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    let exporting = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| Error::Exporter(e.to_string()))?;
            builder = builder.with_batch_exporter(exporter);
            true
        }
        None => false,
    };
    let provider = builder.build();
    let tracer = provider.tracer(config.service_name.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => JsonLayer::new(std::io::stdout).boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init()
        .is_ok();
    if installed && exporting {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(Guard {
        provider: (installed && exporting).then_some(provider),
    })
}

/// The OTLP endpoint: `MM_OTLP_ENDPOINT` when given, else the standard
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn otlp_endpoint(explicit: Option<&str>) -> Option<String> {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The current span's trace context as header pairs (`traceparent`, `tracestate`).
pub fn current_context_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
    map.into_iter().collect()
}

/// The current span's W3C `traceparent`, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    current_context_headers()
        .into_iter()
        .find_map(|(key, value)| (key == "traceparent").then_some(value))
}

/// The span of one incoming gRPC call (for `Server::trace_fn`), a child of the caller's trace
/// when the request carries a `traceparent`. Health checks and reflection get none.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return tracing::Span::none();
    }
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    set_parent(&span, |key| {
        request
            .headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    span
}

/// Makes the trace context found through `get` (a header lookup) the parent of `span`.
pub fn set_parent(span: &tracing::Span, get: impl Fn(&str) -> Option<String>) {
    let mut map = HashMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = get(key) {
            map.insert(key.to_owned(), value);
        }
    }
    if map.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&map);
    let _ = span.set_parent(cx);
}

/// A tonic client interceptor that carries the current trace context in request metadata.
pub fn inject_grpc(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    for (key, value) in current_context_headers() {
        if let (Ok(key), Ok(value)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            request.metadata_mut().insert(key, value);
        }
    }
    Ok(request)
}

/// Makes the trace context in a gRPC request's metadata the parent of `span`.
pub fn set_parent_from_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    set_parent(span, |key| {
        metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_carries_across_a_hop() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("hop");
            set_parent(&span, |key| (key == "traceparent").then(|| incoming.to_owned()));
            let _entered = span.enter();
            let outgoing = current_context_headers()
                .into_iter()
                .find(|(key, _)| key == "traceparent")
                .map(|(_, value)| value)
                .expect("a traceparent goes out");
            assert!(
                outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "same trace: {outgoing}"
            );
            assert!(!outgoing.contains("00f067aa0ba902b7"), "a span of its own: {outgoing}");
        });
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_trace_and_span_ids_and_span_fields() {
        use opentelemetry::trace::TraceContextExt;
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(JsonLayer::new(buffer.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("attempt", otel.kind = "consumer", job_id = "j-1", attempt = 2_u32);
            let ids = {
                let cx = span.context();
                let otel = cx.span();
                let sc = otel.span_context();
                (sc.trace_id().to_string(), sc.span_id().to_string())
            };
            span.in_scope(|| {
                let inner = tracing::info_span!("call", attempt = 3_u32);
                inner.in_scope(|| tracing::warn!(code = "TIMEOUT", "provider slow"));
            });
            ids
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert!(lines[0].get("trace_id").is_none(), "no span, no trace id: {}", lines[0]);
        let line = &lines[1];
        assert_eq!(line["message"], "provider slow");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["code"], "TIMEOUT");
        assert_eq!(line["job_id"], "j-1", "outer span's field: {line}");
        assert_eq!(line["attempt"], 3, "the inner span wins: {line}");
        assert_eq!(line["span"], "call");
        assert!(line.get("otel.kind").is_none(), "{line}");
        assert_eq!(line["trace_id"], trace_id.as_str(), "the span's trace: {line}");
        assert_eq!(trace_id.len(), 32);
        let inner_span_id = line["span_id"].as_str().expect("span id");
        assert_eq!(inner_span_id.len(), 16);
        assert_ne!(inner_span_id, span_id, "the inner span's own id: {line}");
    }

    #[test]
    fn grpc_server_spans_join_the_callers_trace_but_health_checks_get_none() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("http://x/mediamesh.v1.JobService/CreateJobs")
                .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .body(())
                .expect("request");
            let span = grpc_server_span(&request);
            let traceparent = span.in_scope(current_traceparent).expect("a traceparent");
            assert!(
                traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{traceparent}"
            );
            let health = http::Request::builder()
                .uri("http://x/grpc.health.v1.Health/Check")
                .body(())
                .expect("request");
            assert!(grpc_server_span(&health).is_none());
        });
    }

    #[tokio::test]
    async fn otlp_export_is_configured_from_an_endpoint() {
        let guard = init(&TelemetryConfig {
            service_name: "test".to_owned(),
            log_format: LogFormat::Json,
            otlp_endpoint: Some("http://127.0.0.1:4317".to_owned()),
            filter: None,
        });
        assert!(guard.is_ok());
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
