//! The rate limiter, checked against the fake provider's request log, and provider-side size
//! limits.

mod common;

use std::time::Duration;

use common::*;
use mediamesh_core::ErrorCode;
use mediamesh_fakeai::{FakeAi, Options, Route};
use mediamesh_gateway::TextRequest;

/// Every window between two requests holds at most `burst + W × rate` requests.
fn check_windows(ats: &[std::time::Instant], burst: f64, per_second: f64) {
    for i in 0..ats.len() {
        for j in i..ats.len() {
            let window = ats[j].duration_since(ats[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            assert!(
                count <= burst + window * per_second,
                "{count} requests in {window:.4}s (requests {i}..={j}): more than {burst} + W x {per_second}"
            );
        }
    }
}

#[tokio::test]
async fn the_rate_limiter_holds_against_the_request_log() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| {
        p.requests_per_minute = 600;
        p.burst = 2;
    });
    let c = call();
    let requests: Vec<TextRequest> = (0..12)
        .map(|i| TextRequest {
            prompt: format!("request {i}"),
            ..Default::default()
        })
        .collect();
    let calls = requests.iter().map(|r| gw.generate_text(&c, r));
    let started = std::time::Instant::now();
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    let mut ats: Vec<_> = ai.requests().iter().map(|s| s.at).collect();
    ats.sort();
    assert_eq!(ats.len(), 12);
    check_windows(&ats, 2.0, 10.0);
    // The limiter does not starve either: 10 requests after the burst take about a second.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_rate_limit_wait_stops_at_the_deadline() {
    let ai = fake("alpha").await;
    let gw = gateway_one(&ai, |p| {
        p.requests_per_minute = 6;
        p.burst = 1;
    });
    let req = TextRequest {
        prompt: "x".into(),
        ..Default::default()
    };
    gw.generate_text(&call(), &req).await.unwrap();
    let c = call().with_timeout(Duration::from_millis(200));
    let err = gw.generate_text(&c, &req).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);
    assert_eq!(ai.count(Route::ChatCompletions), 1);
}

#[tokio::test]
async fn a_413_from_the_provider_is_too_large_without_retry() {
    let ai = FakeAi::start_with(Options {
        max_audio_bytes: 1_000,
        ..Options::default()
    })
    .await
    .unwrap();
    let gw = gateway_one(&ai, |_| {});
    let err = gw.transcribe(&call(), speech(), None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert_eq!(ai.count(Route::Transcriptions), 1);
}
