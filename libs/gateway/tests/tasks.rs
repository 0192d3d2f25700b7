//! Each task succeeds against a fake provider, with the right model sent and usage computed.

mod common;

use std::sync::Arc;

use common::*;
use mediamesh_core::ErrorCode;
use mediamesh_fakeai::Route;
use mediamesh_gateway::{ImageRequest, ModerationMode, Settings, Task, TextRequest};
use serde_json::json;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn transcribe_sends_whisper_and_prices_the_minutes() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let ledger = Arc::new(MemoryLedger::default());
    let t = gw
        .transcribe(&call_with(ledger.clone()), speech(), Some("en"))
        .await
        .unwrap();
    assert!(t.text.contains("transcript [alpha] of"), "{}", t.text);
    assert_eq!(t.language, "en");
    let duration = t.duration_s.unwrap();
    assert!((7.0..8.0).contains(&duration), "{duration}");
    assert!(!t.segments.is_empty());
    assert!(t.segments.windows(2).all(|w| w[0].end_s <= w[1].start_s + 1e-6));
    assert_eq!(t.usage.provider, "p1");
    assert_eq!(t.usage.model, "whisper-1");
    assert_eq!(t.usage.calls, 1);
    assert!(close(t.usage.cost_usd, duration / 60.0 * 0.006), "{}", t.usage.cost_usd);
    let seen = ai.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].route, Route::Transcriptions);
    assert_eq!(seen[0].model.as_deref(), Some("whisper-1"));
    let records = ledger.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].operation, Task::Transcribe);
    assert_eq!(records[0].outcome, None);
    assert!(close(records[0].cost_usd, t.usage.cost_usd));
}

#[tokio::test]
async fn transcribe_rejects_audio_over_the_limit_before_any_call() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| p.max_audio_bytes = 1_000);
    assert_eq!(gw.max_audio_bytes(), 1_000);
    let err = gw.transcribe(&call(), speech(), None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(ai.requests().is_empty());
}

#[tokio::test]
async fn describe_image_sends_a_data_url_and_validates_the_answer() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let d = gw.describe_image(&call(), photo(), None).await.unwrap();
    assert!(d.caption.contains("[alpha]"), "{}", d.caption);
    assert!(
        d.caption.contains("3088x2048") || d.caption.contains("2048x3088"),
        "{}",
        d.caption
    );
    assert!(!d.scene.is_empty());
    assert!(d.objects.iter().all(|o| (0.0..=1.0).contains(&o.confidence)));
    assert_eq!(d.usage.model, "gpt-4o-mini");
    assert!(d.usage.tokens_in > 0 && d.usage.tokens_out > 0);
    let expected = d.usage.tokens_in as f64 * 0.15 / 1e6 + d.usage.tokens_out as f64 * 0.60 / 1e6;
    assert!(close(d.usage.cost_usd, expected));
    let seen = ai.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].route, Route::ChatCompletions);
    assert_eq!(seen[0].model.as_deref(), Some("gpt-4o-mini"));
    // The image went as a base64 data URL: the body is larger than the JPEG.
    assert!(seen[0].body_bytes > photo().bytes.len());
}

#[tokio::test]
async fn describe_image_rejects_unknown_formats() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let mut image = photo();
    image.mime = "image/tiff".into();
    let err = gw.describe_image(&call(), image, None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(ai.requests().is_empty());
}

#[tokio::test]
async fn enhance_image_returns_png_bytes() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let out = gw.enhance_image(&call(), png(), "brighter please").await.unwrap();
    assert_eq!(out.mime, "image/png");
    assert!(out.bytes.starts_with(&[0x89, b'P', b'N', b'G']));
    assert_eq!(out.usage.model, "gpt-image-1");
    assert!(out.usage.tokens_in > 0);
    let expected = out.usage.tokens_in as f64 * 10.0 / 1e6 + out.usage.tokens_out as f64 * 40.0 / 1e6;
    assert!(close(out.usage.cost_usd, expected));
    let seen = ai.requests();
    assert_eq!(seen[0].route, Route::ImageEdits);
    assert_eq!(seen[0].model.as_deref(), Some("gpt-image-1"));
    assert_eq!(seen[0].prompt.as_deref(), Some("brighter please"));
}

#[tokio::test]
async fn generate_text_puts_tone_and_audience_in_the_system_message() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let req = TextRequest {
        prompt: "Write a caption for a beach photo".into(),
        tone: Some("playful".into()),
        audience: Some("kids".into()),
        max_tokens: Some(100),
    };
    let out = gw.generate_text(&call(), &req).await.unwrap();
    assert!(out.text.starts_with("[alpha]"), "{}", out.text);
    assert!(out.text.contains("tone: playful"), "{}", out.text);
    assert!(out.text.contains("audience: kids"), "{}", out.text);
    assert_eq!(out.usage.model, "gpt-4o-mini");
    assert_eq!(out.usage.calls, 1);
    let prompt = ai.requests()[0].prompt.clone().unwrap();
    assert!(
        prompt.contains("Tone: playful") && prompt.contains("Audience: kids"),
        "{prompt}"
    );
}

#[tokio::test]
async fn generate_image_prices_per_image() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let req = ImageRequest {
        prompt: "a lighthouse at dawn".into(),
        size: Some("1024x1024".into()),
        style: Some("natural".into()),
    };
    let out = gw.generate_image(&call(), &req).await.unwrap();
    assert_eq!(out.mime, "image/png");
    assert!(!out.bytes.is_empty());
    assert_eq!(out.usage.model, "dall-e-3");
    assert!(close(out.usage.cost_usd, 0.04), "{}", out.usage.cost_usd);
    let seen = ai.requests();
    assert_eq!(seen[0].route, Route::ImageGenerations);
    assert_eq!(seen[0].model.as_deref(), Some("dall-e-3"));
    let bad = ImageRequest {
        prompt: "x".into(),
        size: Some("huge".into()),
        style: None,
    };
    assert_eq!(
        gw.generate_image(&call(), &bad).await.unwrap_err().code,
        ErrorCode::BadInput
    );
}

#[tokio::test]
async fn extract_returns_a_value_valid_against_the_callers_schema() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100}
        },
        "required": ["city", "year"],
        "additionalProperties": false
    });
    let out = gw
        .extract(&call(), "We moved to Lisbon in 2019.", &schema)
        .await
        .unwrap();
    assert!(jsonschema::is_valid(&schema, &out.value), "{}", out.value);
    assert_eq!(out.usage.model, "gpt-4o-mini");
    assert_eq!(ai.requests()[0].route, Route::ChatCompletions);
}

#[tokio::test]
async fn extract_rejects_an_invalid_schema_before_any_call() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let schema = json!({"type": "object", "properties": {"a": {"type": "no-such-type"}}});
    let err = gw.extract(&call(), "text", &schema).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(err.message.contains("not a valid JSON Schema"), "{}", err.message);
    assert!(ai.requests().is_empty());
}

#[tokio::test]
async fn moderation_flags_and_passes() {
    let ai = fake("alpha").await;
    let mut settings = Settings::default();
    let gw_off = gateway_one(&ai, |_| {});
    gw_off.moderate(&call(), "this is forbidden").await.unwrap();
    assert!(ai.requests().is_empty(), "moderation off makes no call");

    settings.moderation = ModerationMode::Provider;
    let gw = mediamesh_gateway::Gateway::new(mediamesh_gateway::GatewayConfig {
        providers: vec![provider("p1", &ai)],
        settings,
    })
    .unwrap();
    gw.moderate(&call(), "a nice day at the beach").await.unwrap();
    let err = gw.moderate(&call(), "this is FORBIDDEN content").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(
        err.message
            .starts_with("the prompt was rejected by moderation (categories: "),
        "{}",
        err.message
    );
    let seen = ai.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.route == Route::Moderations));
    assert_eq!(seen[0].model.as_deref(), Some("omni-moderation-latest"));
}

#[tokio::test]
async fn introspection() {
    let ai = fake("alpha").await;
    let mut p = provider("p1", &ai);
    p.models.remove(&Task::Moderate);
    let gw = gateway(vec![p]);
    assert!(gw.supports(Task::Transcribe));
    assert!(!gw.supports(Task::Moderate));
    assert_eq!(gw.configured_tasks().len(), 6);
    assert_eq!(gw.fingerprint(Task::GenerateText).as_deref(), Some("p1/gpt-4o-mini"));
    assert_eq!(gw.fingerprint(Task::Moderate), None);
    let empty = gateway(vec![]);
    let err = empty
        .generate_text(
            &call(),
            &TextRequest {
                prompt: "x".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
}

#[test]
fn gateway_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let gw = gateway(vec![]);
    let c = call();
    let req = TextRequest::default();
    let schema = json!({});
    assert_send(&gw.generate_text(&c, &req));
    assert_send(&gw.transcribe(&c, speech(), None));
    assert_send(&gw.describe_image(&c, photo(), None));
    assert_send(&gw.enhance_image(&c, photo(), ""));
    assert_send(&gw.generate_image(&c, &ImageRequest::default()));
    assert_send(&gw.extract(&c, "", &schema));
    assert_send(&gw.moderate(&c, ""));
}
