//! Configuration loading and its errors.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use mediamesh_core::ErrorCode;
use mediamesh_gateway::{GatewayConfig, ModerationMode, ProviderKind, Task};

const FULL: &str = r#"
[settings]
default_language = "en"
describe_prompt = "Describe it."
enhance_prompt = "Improve lighting and sharpness; keep the person's identity unchanged."
moderation = "provider"

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
timeout_ms = 60000
max_retries = 2
requests_per_minute = 500
tokens_per_minute = 200000
max_audio_bytes = 26214400
breaker_failures = 5
breaker_cooldown_ms = 30000
[providers.models]
transcribe = "whisper-1"
describe_image = "gpt-4o-mini"
extract = "gpt-4o-mini"
generate_text = "gpt-4o-mini"
generate_image = "dall-e-3"
enhance_image = "gpt-image-1"
moderate = "omni-moderation-latest"
[providers.prices."gpt-4o-mini"]
input_per_1m_tokens = 0.15
output_per_1m_tokens = 0.60
[providers.prices."whisper-1"]
per_audio_minute = 0.006
[providers.prices."dall-e-3"]
per_image = 0.04

[[providers]]
name = "azure-eu"
kind = "azure"
base_url = "https://x.openai.azure.com"
api_version = "2024-10-21"
burst = 3
[providers.models]
generate_text = "gpt-4o-mini"
[providers.deployments]
"gpt-4o-mini" = "dep-mini"
"#;

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-gateway-test-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn the_documented_example_parses() {
    let config = GatewayConfig::from_toml_str(FULL).unwrap();
    assert_eq!(config.providers.len(), 2);
    let openai = &config.providers[0];
    assert_eq!(openai.base_url, "https://api.openai.com/v1");
    assert_eq!(openai.models.len(), 7);
    assert_eq!(openai.model(Task::EnhanceImage), Some("gpt-image-1"));
    assert_eq!(openai.burst, 83, "default burst = rpm / 6");
    assert_eq!(openai.breaker_cooldown, Duration::from_secs(30));
    assert!((openai.price("whisper-1").per_audio_minute - 0.006).abs() < 1e-12);
    let azure = &config.providers[1];
    assert_eq!(azure.kind, ProviderKind::Azure);
    assert_eq!(azure.burst, 3);
    assert_eq!(azure.deployments["gpt-4o-mini"], "dep-mini");
    assert_eq!(config.settings.moderation, ModerationMode::Provider);
    assert_eq!(config.settings.default_language, "en");
    mediamesh_gateway::Gateway::new(config).unwrap();
}

#[test]
fn load_puts_the_env_default_first() {
    let path = temp_file("gateway.toml", FULL);
    let config = GatewayConfig::load(Some("sk-env".into()), None, Some(&path)).unwrap();
    let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "openai", "azure-eu"]);
    assert_eq!(config.providers[0].base_url, "https://api.openai.com/v1");
    assert_eq!(config.providers[0].models.len(), 7);
    let gw = mediamesh_gateway::Gateway::new(config).unwrap();
    assert_eq!(gw.fingerprint(Task::Transcribe).as_deref(), Some("default/whisper-1"));
    assert_eq!(
        gw.fingerprint(Task::DescribeImage).as_deref(),
        Some("default/gpt-4o-mini")
    );
}

#[test]
fn load_without_anything_is_empty_and_a_base_url_alone_is_enough() {
    assert!(GatewayConfig::load(None, None, None).unwrap().is_empty());
    assert!(
        GatewayConfig::load(Some(String::new()), Some("  ".into()), None)
            .unwrap()
            .is_empty()
    );
    let local = GatewayConfig::load(None, Some("http://127.0.0.1:11434/v1".into()), None).unwrap();
    assert_eq!(local.providers.len(), 1);
    assert!(local.providers[0].api_key.is_none());
}

#[test]
fn a_key_file_is_read_and_trimmed() {
    let key = temp_file("key", "  sk-from-file\n");
    let toml = format!(
        "[[providers]]\nname = \"p\"\napi_key_file = {:?}\n[providers.models]\ngenerate_text = \"m\"\n",
        key.display().to_string()
    );
    let config = GatewayConfig::from_toml_str(&toml).unwrap();
    assert_eq!(config.providers[0].api_key.as_ref().unwrap().expose(), "sk-from-file");
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-from-file"), "{debug}");
}

fn error_of(toml: &str) -> String {
    let err = GatewayConfig::from_toml_str(toml).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    err.message
}

#[test]
fn errors_name_the_provider_and_the_field() {
    let m = error_of("[[providers]]\nname = \"p\"\n[providers.models]\nsummarize = \"m\"\n");
    assert!(
        m.contains("provider \"p\"") && m.contains("unknown task \"summarize\""),
        "{m}"
    );

    let m = error_of("[[providers]]\nname = \"p\"\n");
    assert!(m.contains("provider \"p\"") && m.contains("models"), "{m}");

    let m = error_of(
        "[[providers]]\nname = \"p\"\napi_key_env = \"MM_GATEWAY_TEST_SURELY_UNSET\"\n[providers.models]\ngenerate_text = \"m\"\n",
    );
    assert!(
        m.contains("MM_GATEWAY_TEST_SURELY_UNSET") && m.contains("not set"),
        "{m}"
    );

    let m = error_of(
        "[[providers]]\nname = \"p\"\n[providers.models]\ngenerate_text = \"m\"\n[[providers]]\nname = \"p\"\n[providers.models]\ngenerate_text = \"m\"\n",
    );
    assert!(m.contains("provider \"p\"") && m.contains("name"), "{m}");

    for field in [
        "requests_per_minute",
        "tokens_per_minute",
        "timeout_ms",
        "breaker_failures",
        "burst",
        "max_audio_bytes",
    ] {
        let m = error_of(&format!(
            "[[providers]]\nname = \"p\"\n{field} = 0\n[providers.models]\ngenerate_text = \"m\"\n"
        ));
        assert!(m.contains(field) && m.contains("greater than zero"), "{m}");
    }

    let m = error_of(
        "[[providers]]\nname = \"az\"\nkind = \"azure\"\nbase_url = \"https://x\"\n[providers.models]\ngenerate_text = \"m\"\n",
    );
    assert!(m.contains("api_version"), "{m}");

    let m = error_of("[settings]\nmoderation = \"maybe\"\n");
    assert!(m.contains("settings") && m.contains("moderation"), "{m}");

    let m = error_of("[[providers]\nname = ");
    assert!(m.contains("line 1"), "{m}");
}

#[test]
fn file_errors_name_the_file() {
    let missing = PathBuf::from("/nonexistent/mm/gateway.toml");
    let err = GatewayConfig::load(None, None, Some(&missing)).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(err.message.contains("/nonexistent/mm/gateway.toml"), "{}", err.message);

    let bad = temp_file(
        "bad.toml",
        "[[providers]]\nname = \"p\"\ntimeout_ms = 0\n[providers.models]\ngenerate_text = \"m\"\n",
    );
    let err = GatewayConfig::load(None, None, Some(&bad)).unwrap_err();
    assert!(
        err.message.contains("bad.toml") && err.message.contains("timeout_ms"),
        "{}",
        err.message
    );

    let dup = temp_file(
        "dup.toml",
        "[[providers]]\nname = \"default\"\n[providers.models]\ngenerate_text = \"m\"\n",
    );
    let err = GatewayConfig::load(Some("k".into()), None, Some(&dup)).unwrap_err();
    assert!(err.message.contains("used twice"), "{}", err.message);
}

#[test]
fn moderation_by_provider_needs_a_moderation_model() {
    let config = GatewayConfig::from_toml_str(
        "[settings]\nmoderation = \"provider\"\n[[providers]]\nname = \"p\"\n[providers.models]\ngenerate_text = \"m\"\n",
    )
    .unwrap();
    let err = mediamesh_gateway::Gateway::new(config).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(err.message.contains("moderate"), "{}", err.message);
}
