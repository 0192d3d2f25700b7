//! The API key never appears in Debug output, errors or records.

mod common;

use std::sync::Arc;

use common::*;
use mediamesh_core::ErrorCode;
use mediamesh_fakeai::{FakeAi, Options, Route};
use mediamesh_gateway::{Gateway, GatewayConfig, Settings, TextRequest};

const SECRET: &str = "sk-test-VERY-SECRET-0123456789";

#[tokio::test]
async fn the_key_is_absent_from_debug_errors_and_records() {
    let ai = FakeAi::start_with(Options {
        api_key: Some("the-right-key".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut p = provider("p1", &ai);
    p.api_key = key(SECRET);
    let config = GatewayConfig {
        providers: vec![p],
        settings: Settings::default(),
    };
    let gw = Gateway::new(config.clone()).unwrap();
    let mut captured = vec![format!("{config:?}"), format!("{config:#?}"), format!("{gw:?}")];

    let ledger = Arc::new(MemoryLedger::default());
    let c = call_with(ledger.clone());
    let req = TextRequest {
        prompt: "hello".into(),
        ..Default::default()
    };
    let errors = vec![
        gw.generate_text(&c, &req).await.unwrap_err(),
        gw.describe_image(&c, photo(), None).await.unwrap_err(),
        gw.transcribe(&c, speech(), None).await.unwrap_err(),
        gw.enhance_image(&c, png(), "").await.unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(err.code, ErrorCode::ProviderDown, "{err}");
        assert!(err.message.contains("provider p1 rejected the credentials"), "{err}");
        captured.push(format!("{err}"));
        captured.push(format!("{err:?}"));
    }
    for record in ledger.records() {
        captured.push(format!("{record:?}"));
    }
    // The key was sent (so it could have leaked), once per call: 401 is not retried.
    let seen = ai.requests();
    assert_eq!(seen.len(), 4);
    assert_eq!(ai.count(Route::ChatCompletions), 2);
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some(&*format!("Bearer {SECRET}")))
    );
    for text in &captured {
        assert!(!text.contains(SECRET), "the key leaked: {text}");
        assert!(!text.contains("VERY-SECRET"), "part of the key leaked: {text}");
    }
}

#[tokio::test]
async fn a_provider_without_a_key_sends_no_authorization() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| p.api_key = None);
    gw.generate_text(
        &call(),
        &TextRequest {
            prompt: "x".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ai.requests()[0].authorization, None);
}

#[test]
fn config_errors_do_not_print_a_key_pasted_in_the_file() {
    let toml = format!(
        r#"
[[providers]]
name = "p"
timeout_ms = "{SECRET}"
[providers.models]
generate_text = "m"
"#
    );
    let err = GatewayConfig::from_toml_str(&toml).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(!err.message.contains(SECRET), "{}", err.message);
    let toml = format!("[[providers]]\nname = \"p\"\napi_key = \"{SECRET}\"\n");
    let err = GatewayConfig::from_toml_str(&toml).unwrap_err();
    assert!(!err.message.contains(SECRET), "{}", err.message);
    assert!(err.message.contains("api_key"), "{}", err.message);
}
