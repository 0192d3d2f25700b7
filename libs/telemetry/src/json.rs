//! `MM_LOG_FORMAT=json`: one JSON object per line, with the OpenTelemetry trace and span ids of
//! the span the event happened in, so that a log line leads to its trace and back.

use std::io::Write;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Writes each event as a JSON line: `timestamp`, `level`, `target`, `message` and the event's
/// fields, the fields of the spans it happened in (innermost wins), `span` (the innermost
/// span's name), `trace_id` and `span_id` (hex, as in `traceparent`).
pub struct JsonLayer<W> {
    make_writer: W,
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    pub fn new(make_writer: W) -> Self {
        Self {
            make_writer,
            dispatch: OnceLock::new(),
        }
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// Span fields that steer the OpenTelemetry layer, not worth a log column.
fn is_otel_field(name: &str) -> bool {
    name.starts_with("otel.")
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut Visitor(&mut fields));
        fields.retain(|name, _| !is_otel_field(name));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Visitor(fields));
            fields.retain(|name, _| !is_otel_field(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".to_owned(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".to_owned(), Value::from(meta.level().as_str()));
        line.insert("target".to_owned(), Value::from(meta.target()));
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.event_span(event) {
            // Outermost first, so that inner spans and then the event itself win.
            for scope in span.scope().from_root() {
                if let Some(SpanFields(span_fields)) = scope.extensions().get::<SpanFields>() {
                    for (name, value) in span_fields {
                        line.insert(name.clone(), value.clone());
                    }
                }
            }
            line.insert("span".to_owned(), Value::from(span.name()));
            // No extensions may be held here: the OpenTelemetry layer takes them.
            if let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade)
                && let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
            {
                let otel_span = cx.span();
                let span_context = otel_span.span_context();
                if span_context.is_valid() {
                    line.insert("trace_id".to_owned(), Value::from(span_context.trace_id().to_string()));
                    line.insert("span_id".to_owned(), Value::from(span_context.span_id().to_string()));
                }
            }
        }
        line.extend(fields);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut writer = self.make_writer.make_writer_for(meta);
        let _ = writer.write_all(text.as_bytes());
    }
}
