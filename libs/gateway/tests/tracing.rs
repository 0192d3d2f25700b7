//! The `ai.call` spans, captured with a subscriber. Alone in its test binary: tracing caches
//! callsite interest process-wide, so concurrent tests without a subscriber would hide events.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use mediamesh_fakeai::{FakeAi, Options};
use mediamesh_gateway::{Gateway, GatewayConfig, Settings, TextRequest};

const SECRET: &str = "sk-test-VERY-SECRET-0123456789";

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn tracing_has_an_ai_call_span_per_attempt_and_no_key() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_env_filter("mediamesh_gateway=trace,async_openai=trace,reqwest=trace,hyper_util=trace")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ai = FakeAi::start_with(Options {
        api_key: Some("the-right-key".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut p = provider("p1", &ai);
    p.api_key = key(SECRET);
    let gw = Gateway::new(GatewayConfig {
        providers: vec![p],
        settings: Settings::default(),
    })
    .unwrap();
    let req = TextRequest {
        prompt: "hello".into(),
        ..Default::default()
    };
    gw.generate_text(&call(), &req).await.unwrap_err();
    ai.set_persistent_fault(None, Some(mediamesh_fakeai::Fault::ServerError));
    gw.generate_text(&call(), &req).await.unwrap_err();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("ai.call"), "{text}");
    assert!(
        text.contains("provider=\"p1\"") || text.contains("provider=p1"),
        "{text}"
    );
    assert!(
        text.contains("outcome=\"PROVIDER_DOWN\"") || text.contains("outcome=PROVIDER_DOWN"),
        "{text}"
    );
    assert!(text.contains("attempt=3"), "three attempts on the 500s: {text}");
    assert!(!text.contains(SECRET), "the key leaked into tracing: {text}");
    assert!(
        !text.contains("VERY-SECRET"),
        "part of the key leaked into tracing: {text}"
    );
}
