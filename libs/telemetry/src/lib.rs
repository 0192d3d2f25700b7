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
pub fn init(config: &TelemetryConfig) -> Result<Guard, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_new(config.filter.as_deref().unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(true).boxed(),
    };
    let (otel, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| Error::Exporter(e.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(config.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer(config.service_name.clone());
            opentelemetry::global::set_tracer_provider(provider.clone());
            (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(provider))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    Ok(Guard {
        provider: if installed { provider } else { None },
    })
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
