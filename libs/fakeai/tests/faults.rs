//! Fault injection, request log, auth and limits, observed with plain reqwest.

mod common;

use std::time::{Duration, Instant};

use mediamesh_fakeai::{FakeAi, Fault, Options, Route};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

fn chat_body(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn chat(client: &reqwest::Client, ai: &FakeAi, text: &str) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/chat/completions", ai.base_url()))
        .json(&chat_body(text))
        .send()
        .await
}

async fn models(client: &reqwest::Client, ai: &FakeAi) -> reqwest::Result<reqwest::Response> {
    client.get(format!("{}/models", ai.base_url())).send().await
}

async fn error_json(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn rate_limited_answers_429_with_retry_after_rounded_up() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    ai.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited {
            retry_after: Some(Duration::from_millis(1500)),
        },
    );
    ai.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        },
    );
    ai.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited { retry_after: None },
    );

    let first = chat(&client, &ai, "hi").await.expect("response");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers()["retry-after"], "2");
    let error = error_json(first).await;
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");

    let second = chat(&client, &ai, "hi").await.expect("response");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "3");

    let third = chat(&client, &ai, "hi").await.expect("response");
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().get("retry-after").is_none());

    let fourth = chat(&client, &ai, "hi").await.expect("response");
    assert_eq!(fourth.status(), StatusCode::OK);
    assert_eq!(ai.count(Route::ChatCompletions), 4);
}

#[tokio::test]
async fn error_faults_have_their_status_and_openai_error_json() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    let cases = [
        (Fault::ServerError, StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        (Fault::Unauthorized, StatusCode::UNAUTHORIZED, "invalid_request_error"),
        (Fault::BadRequest, StatusCode::BAD_REQUEST, "invalid_request_error"),
    ];
    for (fault, status, kind) in cases {
        ai.fail_next(None, 1, fault.clone());
        let response = models(&client, &ai).await.expect("response");
        assert_eq!(response.status(), status, "{fault:?}");
        assert_eq!(error_json(response).await["type"], kind, "{fault:?}");
    }
    ai.fail_next(Some(Route::Moderations), 1, Fault::Refusal);
    let response = client
        .post(format!("{}/moderations", ai.base_url()))
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_json(response).await["code"], "content_policy_violation");
}

#[tokio::test]
async fn malformed_json_and_non_chat_invalid_answer_are_200_with_a_non_json_body() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::MalformedJson);
    ai.fail_next(Some(Route::Models), 1, Fault::InvalidAnswer);

    let response = chat(&client, &ai, "hi").await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.bytes().await.expect("body");
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "body must not be JSON");

    let response = models(&client, &ai).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "body must not be JSON");

    let response = models(&client, &ai).await.expect("response");
    let body: Value = response.json().await.expect("normal answer is JSON");
    assert_eq!(body["object"], "list");
}

#[tokio::test]
async fn slow_delays_the_answer() {
    let ai = FakeAi::start().await.expect("start");
    ai.fail_next(Some(Route::Models), 1, Fault::Slow(Duration::from_secs(5)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let error = models(&impatient, &ai).await.expect_err("times out");
    assert!(error.is_timeout(), "{error:?}");

    ai.fail_next(Some(Route::Models), 1, Fault::Slow(Duration::from_millis(300)));
    let patient = reqwest::Client::new();
    let started = Instant::now();
    let response = models(&patient, &ai).await.expect("answers after the delay");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("normal answer");
    assert_eq!(body["object"], "list");
}

fn is_connection_reset(error: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[tokio::test]
async fn connection_reset_fails_at_the_transport_level_even_on_a_kept_alive_connection() {
    let ai = FakeAi::start().await.expect("start");
    // One pooled connection, reused for every request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let warm = chat(&client, &ai, "warm up").await.expect("first request");
    assert_eq!(warm.status(), StatusCode::OK);
    warm.bytes()
        .await
        .expect("drain body so the connection goes back to the pool");

    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::ConnectionReset);
    let error = chat(&client, &ai, "reset me").await.expect_err("no HTTP response");
    assert!(error.status().is_none());
    assert!(!error.is_timeout());
    assert!(error.is_request() || error.is_connect(), "{error:?}");
    assert!(is_connection_reset(&error), "expected ECONNRESET in {error:?}");

    // Not retried behind the caller's back: exactly one request reached the fake.
    assert_eq!(ai.count(Route::ChatCompletions), 2);
    let after = chat(&client, &ai, "again").await.expect("a new connection works");
    assert_eq!(after.status(), StatusCode::OK);
    let faults: Vec<_> = ai.requests().into_iter().map(|s| s.fault).collect();
    assert_eq!(faults, [None, Some(Fault::ConnectionReset), None]);
}

#[tokio::test]
async fn connection_reset_of_a_large_upload() {
    let ai = FakeAi::start().await.expect("start");
    ai.fail_next(Some(Route::Transcriptions), 1, Fault::ConnectionReset);
    let form = Form::new()
        .part(
            "file",
            Part::bytes(common::read_fixture("speech_en.wav")).file_name("speech.wav"),
        )
        .text("model", "whisper-1");
    let error = reqwest::Client::new()
        .post(format!("{}/audio/transcriptions", ai.base_url()))
        .multipart(form)
        .send()
        .await
        .expect_err("no HTTP response");
    assert!(error.status().is_none(), "{error:?}");
    assert_eq!(ai.requests()[0].model.as_deref(), Some("whisper-1"));
}

#[tokio::test]
async fn fail_next_faults_are_taken_in_order_by_matching_requests() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    ai.fail_next(Some(Route::ChatCompletions), 1, Fault::ServerError);
    ai.fail_next(None, 1, Fault::BadRequest);
    ai.fail_next(Some(Route::ChatCompletions), 2, Fault::Unauthorized);

    // The oldest fault matching a models request is the route-less one.
    assert_eq!(
        models(&client, &ai).await.expect("models").status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(models(&client, &ai).await.expect("models").status(), StatusCode::OK);
    let statuses = [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::UNAUTHORIZED,
        StatusCode::UNAUTHORIZED,
        StatusCode::OK,
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        let response = chat(&client, &ai, &format!("request {i}")).await.expect("chat");
        assert_eq!(response.status(), status, "chat request {i}");
    }

    assert_eq!(ai.count(Route::Models), 2);
    assert_eq!(ai.count(Route::ChatCompletions), 4);
    assert_eq!(ai.count(Route::Moderations), 0);
    let seen = ai.requests();
    let log: Vec<_> = seen.iter().map(|s| (s.route, s.fault.clone())).collect();
    assert_eq!(
        log,
        [
            (Route::Models, Some(Fault::BadRequest)),
            (Route::Models, None),
            (Route::ChatCompletions, Some(Fault::ServerError)),
            (Route::ChatCompletions, Some(Fault::Unauthorized)),
            (Route::ChatCompletions, Some(Fault::Unauthorized)),
            (Route::ChatCompletions, None),
        ]
    );
    assert_eq!(
        seen[2].prompt.as_deref(),
        Some("request 0"),
        "faulted requests are parsed too"
    );
    assert_eq!(seen[2].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        seen[2].body_bytes,
        serde_json::to_vec(&chat_body("request 0")).expect("json").len()
    );
    assert!(seen.windows(2).all(|w| w[0].at <= w[1].at));

    ai.clear_log();
    assert!(ai.requests().is_empty());
    assert_eq!(ai.count(Route::ChatCompletions), 0);
}

#[tokio::test]
async fn persistent_faults_apply_until_cleared() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    let moderate = || {
        client
            .post(format!("{}/moderations", ai.base_url()))
            .json(&json!({"input": "hello"}))
            .send()
    };
    ai.set_persistent_fault(Some(Route::Moderations), Some(Fault::ServerError));
    ai.set_persistent_fault(None, Some(Fault::BadRequest));
    for _ in 0..3 {
        let status = moderate().await.expect("moderation").status();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "the route's own fault wins");
    }
    assert_eq!(
        models(&client, &ai).await.expect("models").status(),
        StatusCode::BAD_REQUEST
    );

    ai.fail_next(Some(Route::Moderations), 1, Fault::Unauthorized);
    assert_eq!(
        moderate().await.expect("moderation").status(),
        StatusCode::UNAUTHORIZED,
        "queued wins"
    );
    assert_eq!(
        moderate().await.expect("moderation").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    ai.set_persistent_fault(Some(Route::Moderations), None);
    assert_eq!(
        moderate().await.expect("moderation").status(),
        StatusCode::BAD_REQUEST,
        "falls back to any-route"
    );
    ai.set_persistent_fault(None, None);
    let response = moderate().await.expect("moderation");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["results"][0]["flagged"], false);
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let ai = FakeAi::start_with(Options {
        api_key: Some("sk-secret".to_owned()),
        ..Options::default()
    })
    .await
    .expect("start");
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", ai.base_url());

    let missing = client.post(&url).json(&chat_body("hi")).send().await.expect("response");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_json(missing).await["code"], "invalid_api_key");

    let wrong = client
        .post(&url)
        .bearer_auth("sk-other")
        .json(&chat_body("hi"))
        .send()
        .await
        .expect("response");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let right = client
        .post(&url)
        .bearer_auth("sk-secret")
        .json(&chat_body("hi"))
        .send()
        .await
        .expect("response");
    assert_eq!(right.status(), StatusCode::OK);
    let body: Value = right.json().await.expect("json");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "[fake] Generated text for: hi"
    );

    let authorizations: Vec<_> = ai.requests().into_iter().map(|s| s.authorization).collect();
    assert_eq!(
        authorizations,
        [
            None,
            Some("Bearer sk-other".to_owned()),
            Some("Bearer sk-secret".to_owned())
        ]
    );
}

fn audio_form(bytes: Vec<u8>) -> Form {
    Form::new()
        .part("file", Part::bytes(bytes).file_name("clip.mp3"))
        .text("model", "whisper-1")
}

#[tokio::test]
async fn transcription_size_limits() {
    let ai = FakeAi::start_with(Options {
        max_audio_bytes: 32_000,
        ..Options::default()
    })
    .await
    .expect("start");
    let client = reqwest::Client::new();
    let url = format!("{}/audio/transcriptions", ai.base_url());

    let too_big = client
        .post(&url)
        .multipart(audio_form(vec![7; 32_001]))
        .send()
        .await
        .expect("response");
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_json(too_big).await["type"], "invalid_request_error");

    let at_limit = client
        .post(&url)
        .multipart(audio_form(vec![7; 32_000]))
        .send()
        .await
        .expect("response");
    assert_eq!(at_limit.status(), StatusCode::OK);
    let body: Value = at_limit.json().await.expect("json");
    assert_eq!(body["text"], "transcript [fake] of 2.0s");
    assert_eq!(body["usage"], json!({"type": "duration", "seconds": 2.0}));

    let empty = client
        .post(&url)
        .multipart(audio_form(Vec::new()))
        .send()
        .await
        .expect("response");
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn default_audio_limit_is_25_mib() {
    let ai = FakeAi::start().await.expect("start");
    let response = reqwest::Client::new()
        .post(format!("{}/audio/transcriptions", ai.base_url()))
        .multipart(audio_form(vec![0; 25 * 1024 * 1024 + 1]))
        .send()
        .await
        .expect("the 413 reaches the client");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(ai.requests()[0].route, Route::Transcriptions);
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_not_recorded() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/embeddings", ai.base_url()))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_json(response).await["type"], "invalid_request_error");
    let wrong_method = client
        .get(format!("{}/chat/completions", ai.base_url()))
        .send()
        .await
        .expect("response");
    assert_eq!(wrong_method.status(), StatusCode::NOT_FOUND);
    assert!(ai.requests().is_empty());
}

#[tokio::test]
async fn bad_request_bodies_are_400() {
    let ai = FakeAi::start().await.expect("start");
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/chat/completions", ai.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_json(response).await["type"], "invalid_request_error");

    let response = client
        .post(format!("{}/images/generations", ai.base_url()))
        .json(&json!({"prompt": "x", "size": "1024x4096"}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ai.count(Route::ChatCompletions), 1);
    assert_eq!(ai.count(Route::ImageGenerations), 1);
}

#[tokio::test]
async fn stops_serving_when_dropped() {
    let ai = FakeAi::start().await.expect("start");
    let url = format!("{}/models", ai.base_url());
    let client = reqwest::Client::new();
    assert_eq!(client.get(&url).send().await.expect("up").status(), StatusCode::OK);
    drop(ai);
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).send().await.is_err(), "nothing listens any more");
}
