//! Retries, timeouts, failover, circuit breaker, invalid answers, refusals, budgets and records.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mediamesh_core::ErrorCode;
use mediamesh_fakeai::{Fault, Route};
use mediamesh_gateway::{BreakerState, TextRequest};
use serde_json::json;

fn text(prompt: &str) -> TextRequest {
    TextRequest {
        prompt: prompt.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn rate_limited_429_honours_retry_after() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
        },
    );
    let ledger = Arc::new(MemoryLedger::default());
    let out = gw
        .generate_text(&call_with(ledger.clone()), &text("hello"))
        .await
        .unwrap();
    assert_eq!(out.usage.calls, 2);
    let seen = ai.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    assert_eq!(ledger.outcomes(), vec![Some(ErrorCode::RateLimited), None]);
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::ServerError);
    let out = gw.generate_text(&call(), &text("hello")).await.unwrap();
    assert!(out.text.starts_with("[alpha]"));
    assert_eq!(ai.count(Route::ChatCompletions), 2);
    assert_eq!(out.usage.calls, 2);
}

#[tokio::test]
async fn persistent_server_error_gives_provider_down_after_max_retries_plus_one_calls() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| p.max_retries = 2);
    ai.set_persistent_fault(Some(Route::ChatCompletions), Some(Fault::ServerError));
    let err = gw.generate_text(&call(), &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ProviderDown);
    assert!(err.message.contains("p1"), "{}", err.message);
    assert_eq!(ai.count(Route::ChatCompletions), 3);
}

#[tokio::test]
async fn slow_answer_times_out() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| {
        p.timeout = Duration::from_millis(300);
        p.max_retries = 0;
    });
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let err = gw.generate_text(&call(), &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_calls_deadline_bounds_the_attempt() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::Slow(Duration::from_secs(5)));
    let c = call().with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = gw.generate_text(&c, &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(ai.count(Route::ChatCompletions), 1, "no retry past the deadline");
}

#[tokio::test]
async fn cancel_stops_the_call_at_once() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::Slow(Duration::from_secs(5)));
    let c = call();
    let token = c.cancel.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel();
    });
    let started = Instant::now();
    let err = gw.generate_text(&c, &text("hello")).await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(err.code, ErrorCode::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn malformed_json_is_retried() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::MalformedJson);
    let out = gw.generate_text(&call(), &text("hello")).await.unwrap();
    assert!(out.text.starts_with("[alpha]"));
    assert_eq!(ai.count(Route::ChatCompletions), 2);
}

#[tokio::test]
async fn connection_reset_gives_network() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| p.max_retries = 1);
    ai.set_persistent_fault(Some(Route::ChatCompletions), Some(Fault::ConnectionReset));
    let err = gw.generate_text(&call(), &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Network, "{err}");
    assert_eq!(ai.count(Route::ChatCompletions), 2);
}

#[tokio::test]
async fn bad_request_is_bad_input_without_retry_or_failover() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let gw = gateway(vec![provider("a", &a), provider("b", &b)]);
    a.fail_next(Some(Route::ChatCompletions), 1, Fault::BadRequest);
    let err = gw.generate_text(&call(), &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert_eq!(a.count(Route::ChatCompletions), 1);
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn fails_over_to_the_second_provider() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let mut pa = provider("a", &a);
    pa.max_retries = 1;
    let gw = gateway(vec![pa, provider("b", &b)]);
    a.set_persistent_fault(None, Some(Fault::ServerError));
    let ledger = Arc::new(MemoryLedger::default());
    let out = gw
        .generate_text(&call_with(ledger.clone()), &text("hello"))
        .await
        .unwrap();
    assert!(out.text.starts_with("[beta]"), "{}", out.text);
    assert_eq!(out.usage.provider, "b");
    assert_eq!(out.usage.calls, 3);
    assert_eq!(a.count(Route::ChatCompletions), 2);
    assert_eq!(b.count(Route::ChatCompletions), 1);
    let providers: Vec<String> = ledger.records().iter().map(|r| r.provider.clone()).collect();
    assert_eq!(providers, ["a", "a", "b"]);
    assert_eq!(
        ledger.outcomes(),
        vec![Some(ErrorCode::ProviderDown), Some(ErrorCode::ProviderDown), None]
    );
}

#[tokio::test]
async fn unauthorized_fails_over_without_retry() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let gw = gateway(vec![provider("a", &a), provider("b", &b)]);
    a.set_persistent_fault(None, Some(Fault::Unauthorized));
    let d = gw.describe_image(&call(), photo(), None).await.unwrap();
    assert!(d.caption.contains("[beta]"), "{}", d.caption);
    assert_eq!(a.count(Route::ChatCompletions), 1);
}

#[tokio::test]
async fn all_providers_failing_names_each_of_them() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let mut pa = provider("a", &a);
    pa.max_retries = 0;
    let mut pb = provider("b", &b);
    pb.max_retries = 0;
    let gw = gateway(vec![pa, pb]);
    a.set_persistent_fault(None, Some(Fault::Unauthorized));
    b.set_persistent_fault(None, Some(Fault::RateLimited { retry_after: None }));
    let err = gw.generate_text(&call(), &text("hello")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited, "the last provider's error: {err}");
    assert!(
        err.message.contains("provider a rejected the credentials"),
        "{}",
        err.message
    );
    assert!(err.message.contains("provider b"), "{}", err.message);
}

#[tokio::test]
async fn breaker_opens_after_failures_and_closes_after_the_cooldown() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let mut pa = provider("a", &a);
    pa.max_retries = 0;
    pa.breaker_failures = 3;
    pa.breaker_cooldown = Duration::from_millis(300);
    let gw = gateway(vec![pa, provider("b", &b)]);
    a.set_persistent_fault(Some(Route::ChatCompletions), Some(Fault::ServerError));
    for _ in 0..3 {
        let out = gw.generate_text(&call(), &text("hello")).await.unwrap();
        assert_eq!(out.usage.provider, "b");
    }
    assert_eq!(gw.breaker_state("a"), Some(BreakerState::Open));
    assert_eq!(gw.breaker_state("b"), Some(BreakerState::Closed));
    assert_eq!(gw.breaker_state("nope"), None);
    // While open, no call reaches the failing provider.
    for _ in 0..3 {
        let out = gw.generate_text(&call(), &text("hello")).await.unwrap();
        assert_eq!(out.usage.provider, "b");
        assert_eq!(out.usage.calls, 1);
    }
    assert_eq!(a.count(Route::ChatCompletions), 3);

    // The provider recovers; after the cooldown one trial call goes through and closes it.
    a.set_persistent_fault(Some(Route::ChatCompletions), None);
    await_breaker(&gw, "a", BreakerState::HalfOpen, Duration::from_secs(3)).await;
    let out = gw.generate_text(&call(), &text("hello")).await.unwrap();
    assert_eq!(out.usage.provider, "a");
    assert_eq!(gw.breaker_state("a"), Some(BreakerState::Closed));
    assert_eq!(a.count(Route::ChatCompletions), 4);
}

#[tokio::test]
async fn a_failed_trial_opens_the_circuit_again_and_all_open_is_provider_down() {
    let a = fake("alpha").await;
    let mut pa = provider("a", &a);
    pa.max_retries = 0;
    pa.breaker_failures = 1;
    pa.breaker_cooldown = Duration::from_millis(200);
    let gw = gateway(vec![pa]);
    a.set_persistent_fault(None, Some(Fault::ServerError));
    assert_eq!(
        gw.generate_text(&call(), &text("x")).await.unwrap_err().code,
        ErrorCode::ProviderDown
    );
    let err = gw.generate_text(&call(), &text("x")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ProviderDown);
    assert!(err.message.contains("circuit open for a"), "{}", err.message);
    assert_eq!(a.count(Route::ChatCompletions), 1);
    await_breaker(&gw, "a", BreakerState::HalfOpen, Duration::from_secs(3)).await;
    gw.generate_text(&call(), &text("x")).await.unwrap_err();
    assert_eq!(a.count(Route::ChatCompletions), 2);
    assert_eq!(gw.breaker_state("a"), Some(BreakerState::Open));
}

#[tokio::test]
async fn an_invalid_answer_is_asked_again_once() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::InvalidAnswer);
    let d = gw.describe_image(&call(), photo(), None).await.unwrap();
    assert!(d.caption.contains("[alpha]"));
    assert_eq!(d.usage.calls, 2);

    ai.clear_log();
    ai.fail_next(Some(Route::ChatCompletions), 2, Fault::InvalidAnswer);
    let err = gw.describe_image(&call(), photo(), None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ProviderDown);
    assert!(
        err.message.contains("the model's answer did not match the schema"),
        "{}",
        err.message
    );
    assert_eq!(ai.count(Route::ChatCompletions), 2);
}

#[tokio::test]
async fn an_invalid_extraction_is_asked_again_once() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": false
    });
    ai.fail_next(Some(Route::ChatCompletions), 2, Fault::InvalidAnswer);
    let err = gw.extract(&call(), "Ann wrote this.", &schema).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ProviderDown);
    assert!(err.message.contains("did not match the schema"), "{}", err.message);
    assert_eq!(ai.count(Route::ChatCompletions), 2);
}

#[tokio::test]
async fn a_refusal_is_bad_input() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::Refusal);
    let err = gw.describe_image(&call(), photo(), None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput);
    assert!(err.message.contains("I can't help with that"), "{}", err.message);
    assert_eq!(ai.count(Route::ChatCompletions), 1);
}

#[tokio::test]
async fn a_budget_error_stops_the_call_before_any_request() {
    let a = fake("alpha").await;
    let b = fake("beta").await;
    let gw = gateway(vec![provider("a", &a), provider("b", &b)]);
    let ledger = Arc::new(MemoryLedger {
        refuse: true,
        ..MemoryLedger::default()
    });
    let err = gw
        .generate_text(&call_with(ledger.clone()), &text("hello"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BudgetExceeded);
    assert!(a.requests().is_empty() && b.requests().is_empty());
    assert!(ledger.records().is_empty());
    assert_eq!(*ledger.checks.lock().unwrap(), 1);
}

#[tokio::test]
async fn the_ledger_gets_one_record_per_http_call() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |_| {});
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::ServerError);
    ai.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited { retry_after: None },
    );
    let ledger = Arc::new(MemoryLedger::default());
    let mut c = call_with(ledger.clone());
    let job = uuid::Uuid::new_v4();
    c.job_id = Some(job);
    let out = gw.generate_text(&c, &text("hello")).await.unwrap();
    let records = ledger.records();
    assert_eq!(records.len(), 3);
    assert_eq!(*ledger.checks.lock().unwrap(), 3, "checked before every call");
    assert_eq!(
        ledger.outcomes(),
        vec![Some(ErrorCode::ProviderDown), Some(ErrorCode::RateLimited), None]
    );
    for r in &records {
        assert_eq!(r.tenant, "tenant-a");
        assert_eq!(r.job_id, Some(job));
        assert_eq!(r.provider, "p1");
        assert_eq!(r.model, "gpt-4o-mini");
        assert!(r.latency > Duration::ZERO);
    }
    let ok = &records[2];
    assert!(ok.tokens_in > 0 && ok.tokens_out > 0 && ok.cost_usd > 0.0);
    assert_eq!(out.usage.tokens_in, ok.tokens_in);
    assert!((out.usage.cost_usd - ok.cost_usd).abs() < 1e-12);
    assert_eq!(out.usage.calls, 3);
}
