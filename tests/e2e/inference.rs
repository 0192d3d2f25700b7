//! The inference gateway through the public gRPC API: pipelines that add AI jobs to uploads
//! of the real fixtures, the synchronous `InferenceService`, the cache, moderation, budgets,
//! tenancy, provider faults as stable codes, failover, the circuit breaker, the shared rate
//! limit, and the API key kept out of logs. The provider is `mediamesh-fakeai`, a local
//! OpenAI-compatible server that injects faults (no test needs the internet).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mediamesh_fakeai::{FakeAi, Fault, Options, Route};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_testkit::{Configs, Mesh, download, read_fixture, upload, upload_as, wait_job};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::{JOB_DEADLINE, as_tenant, by_kind, code_of, failed_with, finish_all, metadata, submit};
use mediamesh_core::ErrorCode;

pub(crate) const KEY: &str = "sk-mm-test-4f9c2e7d-SECRET";

pub(crate) async fn fake(name: &str, key: Option<&str>) -> FakeAi {
    FakeAi::start_with(Options {
        api_key: key.map(str::to_owned),
        name: name.to_owned(),
        ..Options::default()
    })
    .await
    .unwrap()
}

/// The default provider (MM_OPENAI_*) on every service that reads it.
pub(crate) fn default_provider(c: &mut Configs, fake: &FakeAi, key: &str) {
    let args = mediamesh_gateway::ProviderArgs {
        openai_api_key: Some(mediamesh_gateway::SecretArg(key.to_owned())),
        openai_base_url: Some(fake.base_url()),
        config_file: None,
    };
    c.ingest.providers = args.clone();
    c.scheduler.providers = args.clone();
    c.inference.providers = args;
}

/// Providers from an MM_CONFIG file on every service that reads it.
fn config_file(c: &mut Configs, path: &Path) {
    let args = mediamesh_gateway::ProviderArgs {
        openai_api_key: None,
        openai_base_url: None,
        config_file: Some(path.to_owned()),
    };
    c.ingest.providers = args.clone();
    c.scheduler.providers = args.clone();
    c.inference.providers = args;
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("mediamesh.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn text_job(prompt: &str, max_attempts: u32) -> pb::JobSpec {
    pb::JobSpec {
        kind: "inference.generate_text".to_owned(),
        payload_json: json!({ "prompt": prompt }).to_string(),
        max_attempts,
        ..Default::default()
    }
}

/// Waits for a job of `tenant` to end (watching as that tenant) and returns it.
async fn wait_job_as(jobs: &mut JobServiceClient<Channel>, tenant: &str, job_id: &str) -> pb::Job {
    let get = |jobs: &mut JobServiceClient<Channel>| {
        let request = as_tenant(
            pb::GetJobRequest {
                job_id: job_id.to_owned(),
            },
            tenant,
        );
        let mut jobs = jobs.clone();
        async move { jobs.get_job(request).await.unwrap().into_inner().job.unwrap() }
    };
    let mut stream = jobs
        .watch_job(as_tenant(
            pb::WatchJobRequest {
                job_id: job_id.to_owned(),
                ..Default::default()
            },
            tenant,
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(JOB_DEADLINE, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await
    .unwrap();
    let job = get(jobs).await;
    assert!(job.finished_at.is_some(), "{job:?}");
    job
}

/// WAV duration from its header (byte rate and data size).
fn wav_duration(data: &[u8]) -> f64 {
    let byte_rate = u32::from_le_bytes(data[28..32].try_into().unwrap());
    let mut i = 12;
    while i + 8 <= data.len() {
        let size = u32::from_le_bytes(data[i + 4..i + 8].try_into().unwrap()) as usize;
        if &data[i..i + 4] == b"data" {
            return size as f64 / f64::from(byte_rate);
        }
        i += 8 + size + (size & 1);
    }
    panic!("no data chunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_get_their_ai_jobs_and_the_answers_land() {
    let fake = fake("alpha", Some(KEY)).await;
    let mesh = Mesh::start_with(|c| {
        default_provider(c, &fake, KEY);
        c.ingest.pipelines = r#"{"categories": {"portrait": {"image": ["inference.enhance_image"]}}}"#.to_owned();
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();

    // A portrait: described, and enhanced because its category asks for it.
    let photo = read_fixture("friends_by_Aitzol_Berasategi_orient6.jpg");
    let uploaded = upload_as(&mut ingest, "", "portrait", "friends.jpg", &photo)
        .await
        .unwrap();
    assert!(uploaded.skipped.is_empty(), "{:?}", uploaded.skipped);
    let kinds: BTreeSet<&str> = uploaded.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "media.probe",
            "media.thumbnails",
            "inference.describe_image",
            "inference.enhance_image"
        ])
    );
    let photo_id = uploaded.media.as_ref().unwrap().id.clone();
    let done = finish_all(&mut jobs, &uploaded.jobs).await;
    let (stored_w, stored_h) = image::ImageReader::new(std::io::Cursor::new(&photo))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    // EXIF orientation 6: the photo is shown turned, portrait.
    let (w, h) = (stored_h, stored_w);
    let described = metadata(by_kind(&done, "inference.describe_image"));
    let caption = described["caption"].as_str().unwrap();
    assert!(
        caption.contains("alpha") && caption.contains(&format!("{w}x{h}")),
        "{caption}"
    );
    assert!(
        described["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &json!(format!("{w}x{h}"))),
        "{described}"
    );
    let objects = described["objects"].as_array().unwrap();
    assert!(!objects.is_empty());
    for object in objects {
        let confidence = object["confidence"].as_f64().unwrap();
        assert!(confidence > 0.0 && confidence <= 1.0, "{object}");
    }
    assert_eq!(described["usage"]["provider"], "default");
    assert_eq!(described["usage"]["model"], "gpt-4o-mini");
    assert!(described["usage"]["cost_usd"].as_f64().unwrap() > 0.0, "{described}");

    let enhance_job = by_kind(&done, "inference.enhance_image");
    let enhanced = metadata(enhance_job);
    let enhanced_id = enhanced["media_id"].as_str().unwrap().to_owned();
    assert_ne!(enhanced_id, photo_id);
    let media = ingest
        .get_media(pb::GetMediaRequest {
            media_id: enhanced_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .media
        .unwrap();
    assert_eq!(media.parent_id, photo_id);
    let origin: Value = serde_json::from_str(&media.origin_json).unwrap();
    assert_eq!(origin["task"], "enhance_image");
    assert_eq!(origin["model"], "gpt-image-1");
    assert!(!origin["prompt"].as_str().unwrap().is_empty());
    assert!(origin["processing_ms"].as_u64().is_some());
    let bytes = download(&mut ingest, &enhanced_id, "original").await.unwrap();
    let picture = image::load_from_memory(&bytes).unwrap();
    assert_eq!((picture.width(), picture.height()), (media.width, media.height));
    assert!(picture.height() > picture.width(), "still a portrait");
    assert_eq!(enhance_job.result.as_ref().unwrap().outputs[0].name, "enhanced");

    // Speech, with fields to extract from what was said.
    let wav = read_fixture("speech_en.wav");
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "needs": {"type": "string"}
        },
        "required": ["name", "age", "needs"],
        "additionalProperties": false
    });
    let mut parts = vec![pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Header(pb::UploadHeader {
            filename: "speech.wav".to_owned(),
            content_type: "audio/wav".to_owned(),
            category: String::new(),
            extract_schema_json: schema.to_string(),
        })),
    }];
    parts.push(pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Chunk(wav.clone())),
    });
    let audio = ingest
        .upload_media(futures::stream::iter(parts))
        .await
        .unwrap()
        .into_inner();
    let audio_id = audio.media.as_ref().unwrap().id.clone();
    let transcribe = audio
        .jobs
        .iter()
        .find(|j| j.kind == "inference.transcribe")
        .unwrap()
        .clone();
    let extract = audio
        .jobs
        .iter()
        .find(|j| j.kind == "inference.extract")
        .unwrap()
        .clone();
    assert_eq!(extract.depends_on, vec![transcribe.id.clone()]);
    let done = finish_all(&mut jobs, &audio.jobs).await;
    let transcript = metadata(by_kind(&done, "inference.transcribe"));
    let duration = wav_duration(&wav);
    assert!(
        transcript["text"]
            .as_str()
            .unwrap()
            .starts_with("transcript [alpha] of"),
        "{transcript}"
    );
    assert!(
        (transcript["duration_s"].as_f64().unwrap() - duration).abs() < 0.05,
        "{transcript} vs {duration}"
    );
    assert_eq!(transcript["language"], "en");
    let stored: Value = serde_json::from_slice(&download(&mut ingest, &audio_id, "transcript").await.unwrap()).unwrap();
    assert_eq!(stored["text"], transcript["text"]);
    assert!(stored["segments"].as_array().unwrap().len() >= 2, "{stored}");
    let fields = &metadata(by_kind(&done, "inference.extract"))["fields"];
    assert_eq!(fields["age"].as_i64().unwrap(), duration.trunc() as i64, "{fields}");
    assert!(fields["name"].is_string() && fields["needs"].is_string(), "{fields}");

    // Every call carried the key; the spend is on record per model.
    let seen = fake.requests();
    assert!(seen.len() >= 4);
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}") as &str))
    );
    let spend = mesh
        .inference()
        .get_spend(pb::GetSpendRequest { days: 1 })
        .await
        .unwrap()
        .into_inner();
    let models: BTreeSet<&str> = spend.lines.iter().map(|l| l.model.as_str()).collect();
    assert!(
        models.contains("gpt-4o-mini") && models.contains("whisper-1") && models.contains("gpt-image-1"),
        "{models:?}"
    );
    let total: f64 = spend.lines.iter().map(|l| l.cost_usd).sum();
    assert!(
        spend.today_usd > 0.0 && (spend.today_usd - total).abs() < 1e-9,
        "{spend:?}"
    );
    assert_eq!(
        spend.lines.iter().map(|l| l.calls).sum::<u64>(),
        seen.len() as u64,
        "one ai_metrics row per provider call"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_cached_moderated_budgeted_and_kept_to_their_tenant() {
    let fake = fake("local", None).await;
    let dir = tempfile::tempdir().unwrap();
    // A local server without a key (like Ollama or vLLM), its own model names, moderation on.
    let path = write_config(
        &dir,
        &format!(
            r#"
[settings]
moderation = "provider"

[[providers]]
name = "local"
base_url = "{}"

[providers.models]
generate_text = "llama3"
generate_image = "sd-xl"
describe_image = "llava"
extract = "llama3"
moderate = "omni-moderation-latest"

[providers.prices."llama3"]
input_per_1m_tokens = 1.0
output_per_1m_tokens = 2.0
"#,
            fake.base_url()
        ),
    );
    let mesh = Mesh::start_with(|c| config_file(c, &path)).await.unwrap();
    let mut ai = mesh.inference();

    let request = pb::GenerateTextRequest {
        prompt: "Write a welcome email for new members".to_owned(),
        tone: "friendly".to_owned(),
        audience: "customers".to_owned(),
        max_tokens: 200,
    };
    let first = ai.generate_text(request.clone()).await.unwrap().into_inner();
    assert!(
        first.text.contains("tone: friendly") && first.text.contains("audience: customers"),
        "{}",
        first.text
    );
    let usage = first.usage.unwrap();
    assert_eq!(
        (usage.provider.as_str(), usage.model.as_str(), usage.cached),
        ("local", "llama3", false)
    );
    assert!(usage.cost_usd > 0.0);
    assert_eq!(
        (fake.count(Route::ChatCompletions), fake.count(Route::Moderations)),
        (1, 1)
    );
    let again = ai.generate_text(request).await.unwrap().into_inner();
    assert_eq!(again.text, first.text);
    assert!(again.usage.unwrap().cached);
    assert_eq!(
        (fake.count(Route::ChatCompletions), fake.count(Route::Moderations)),
        (1, 1),
        "a cache hit makes no call"
    );

    let flagged = ai
        .generate_text(pb::GenerateTextRequest {
            prompt: "Something FORBIDDEN please".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&flagged), ErrorCode::BadInput);
    assert!(flagged.message().contains("moderation"), "{}", flagged.message());
    assert_eq!(fake.count(Route::ChatCompletions), 1);

    let generated = ai
        .generate_image(pb::GenerateImageRequest {
            prompt: "a lighthouse at dusk".to_owned(),
            size: "256x256".to_owned(),
            style: "vivid".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let media = generated.media.unwrap();
    assert_eq!((media.width, media.height), (256, 256));
    assert!(generated.revised_prompt.contains("vivid"));
    let png = download(&mut mesh.ingest(), &media.id, "original").await.unwrap();
    let picture = image::load_from_memory(&png).unwrap();
    assert_eq!((picture.width(), picture.height()), (256, 256));

    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "needs": {"type": "string"}},
        "required": ["name", "age", "needs"]
    });
    let extracted = ai
        .extract(pb::ExtractRequest {
            text: "Maria Lopez is 34 years old. She needs a ramp at the entrance.".to_owned(),
            schema_json: schema.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let fields: Value = serde_json::from_str(&extracted.fields_json).unwrap();
    assert_eq!(fields["name"], "Maria");
    assert_eq!(fields["age"], 34);
    let chats = fake.count(Route::ChatCompletions);
    let bad_schema = ai
        .extract(pb::ExtractRequest {
            text: "anything".to_owned(),
            schema_json: r#"{"type": 12}"#.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&bad_schema), ErrorCode::BadInput);
    assert_eq!(
        fake.count(Route::ChatCompletions),
        chats,
        "an invalid schema makes no call"
    );

    // Transcription has no model here.
    let unsupported = ai
        .transcribe(pb::TranscribeRequest {
            media_id: media.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&unsupported), ErrorCode::Unsupported);

    // Tenancy: tenant b cannot describe tenant a's photo; the answer does not reveal it exists.
    let photo = read_fixture("Dragonfly_by_Bolly.jpg");
    let mine = upload_as(&mut mesh.ingest(), "tenant-a", "", "dragonfly.jpg", &photo)
        .await
        .unwrap();
    let photo_id = mine.media.unwrap().id;
    let stranger = ai
        .describe_image(as_tenant(
            pb::DescribeImageRequest {
                media_id: photo_id.clone(),
                ..Default::default()
            },
            "tenant-b",
        ))
        .await
        .unwrap_err();
    assert_eq!(code_of(&stranger), ErrorCode::NotFound);
    let missing = ai
        .describe_image(as_tenant(
            pb::DescribeImageRequest {
                media_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            },
            "tenant-b",
        ))
        .await
        .unwrap_err();
    assert_eq!(stranger.message(), format!("media {photo_id} not found"));
    assert!(missing.message().starts_with("media ") && missing.message().ends_with(" not found"));
    let own = ai
        .describe_image(as_tenant(
            pb::DescribeImageRequest {
                media_id: photo_id,
                ..Default::default()
            },
            "tenant-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.usage.unwrap().model, "llava");
    assert!(!own.tags.is_empty());

    // A tenant over its daily budget gets BUDGET_EXCEEDED and the provider sees nothing.
    let pool = sqlx::PgPool::connect(&mesh.postgres.url("mediamesh")).await.unwrap();
    sqlx::query("INSERT INTO inference.budgets (tenant, daily_usd) VALUES ('frugal', 0.0000001)")
        .execute(&pool)
        .await
        .unwrap();
    let call = |prompt: &str| {
        as_tenant(
            pb::GenerateTextRequest {
                prompt: prompt.to_owned(),
                ..Default::default()
            },
            "frugal",
        )
    };
    ai.generate_text(call("first note")).await.unwrap();
    let chats = fake.count(Route::ChatCompletions);
    let over = ai.generate_text(call("second note")).await.unwrap_err();
    assert_eq!(code_of(&over), ErrorCode::BudgetExceeded);
    assert!(over.message().contains("daily AI budget"), "{}", over.message());
    assert_eq!(fake.count(Route::ChatCompletions), chats);
    let mut jobs = mesh.jobs();
    let job = mesh
        .ingest()
        .submit_job(as_tenant(
            pb::SubmitJobRequest {
                job: Some(text_job("third note", 3)),
            },
            "frugal",
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let job = wait_job_as(&mut jobs, "frugal", &job.id).await;
    let (code, _) = failed_with(&job);
    assert_eq!(code, ErrorCode::BudgetExceeded);
    assert_eq!(job.attempts.len(), 1, "BUDGET_EXCEEDED is not retried");
    assert_eq!(fake.count(Route::ChatCompletions), chats);
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_faults_end_as_stable_codes_with_the_right_retries() {
    let fake = fake("flaky", None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"
[[providers]]
name = "flaky"
base_url = "{}"
timeout_ms = 1500
max_retries = 1
breaker_failures = 1000

[providers.models]
generate_text = "gpt-4o-mini"
"#,
            fake.base_url()
        ),
    );
    let mesh = Mesh::start_with(|c| config_file(c, &path)).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let mut run = async |prompt: &str, max_attempts: u32| {
        fake.clear_log();
        let job = submit(&mut ingest, text_job(prompt, max_attempts)).await;
        let job = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        (job, fake.requests())
    };

    // 429 with Retry-After: waited for, then answered.
    fake.fail_next(
        Some(Route::ChatCompletions),
        1,
        Fault::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
        },
    );
    let (job, seen) = run("rate limited once", 1).await;
    assert!(metadata(&job)["text"].as_str().unwrap().contains("rate limited once"));
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1),
        "Retry-After honoured"
    );

    // 500s that do not stop: PROVIDER_DOWN after the provider's retries, retryable.
    fake.set_persistent_fault(Some(Route::ChatCompletions), Some(Fault::ServerError));
    let (job, seen) = run("always 500", 1).await;
    let (code, message) = failed_with(&job);
    assert_eq!(code, ErrorCode::ProviderDown, "{message}");
    assert!(job.error.as_ref().unwrap().retryable);
    assert_eq!(seen.len(), 2, "one call and max_retries = 1");
    fake.set_persistent_fault(Some(Route::ChatCompletions), None);

    // 400: BAD_INPUT, neither retried by the gateway nor by the job system.
    fake.fail_next(Some(Route::ChatCompletions), 1, Fault::BadRequest);
    let (job, seen) = run("refused as bad", 3).await;
    assert_eq!(failed_with(&job).0, ErrorCode::BadInput);
    assert_eq!((seen.len(), job.attempts.len()), (1, 1));

    // Slower than the provider's timeout: TIMEOUT.
    fake.fail_next(Some(Route::ChatCompletions), 2, Fault::Slow(Duration::from_secs(4)));
    let (job, _) = run("too slow", 1).await;
    assert_eq!(failed_with(&job).0, ErrorCode::Timeout);

    // The connection drops: NETWORK.
    fake.fail_next(Some(Route::ChatCompletions), 2, Fault::ConnectionReset);
    let (job, seen) = run("connection reset", 1).await;
    assert_eq!(failed_with(&job).0, ErrorCode::Network);
    assert_eq!(seen.len(), 2);

    // Malformed JSON once: retried and answered.
    fake.fail_next(Some(Route::ChatCompletions), 1, Fault::MalformedJson);
    let (job, seen) = run("garbled once", 1).await;
    assert!(metadata(&job)["text"].as_str().unwrap().contains("garbled once"));
    assert_eq!(seen.len(), 2);

    // A failing job attempt is retried by the job system when the code is retryable.
    fake.fail_next(Some(Route::ChatCompletions), 2, Fault::ServerError);
    let (job, seen) = run("second attempt works", 2).await;
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(seen.len(), 3);
    assert!(
        metadata(&job)["text"]
            .as_str()
            .unwrap()
            .contains("second attempt works")
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_breaker_and_one_rate_limit_for_all_jobs() {
    let primary = fake("alpha", None).await;
    let secondary = fake("beta", None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"
[[providers]]
name = "primary"
base_url = "{}"
max_retries = 0
breaker_failures = 2
breaker_cooldown_ms = 600000

[providers.models]
generate_text = "gpt-4o-mini"

[[providers]]
name = "secondary"
base_url = "{}"
requests_per_minute = 600
burst = 2

[providers.models]
generate_text = "gpt-4o-mini"
"#,
            primary.base_url(),
            secondary.base_url()
        ),
    );
    let mesh = Mesh::start_with(|c| config_file(c, &path)).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    primary.set_persistent_fault(None, Some(Fault::ServerError));
    // One at a time until the breaker opens (two failures), then eight at once.
    let mut submitted = Vec::new();
    for i in 0..2 {
        let job = submit(&mut ingest, text_job(&format!("first note {i}"), 1)).await;
        submitted.extend(finish_all(&mut jobs, &[job]).await);
    }
    assert_eq!(primary.count(Route::ChatCompletions), 2);
    let mut burst = Vec::new();
    for i in 0..8 {
        burst.push(submit(&mut ingest, text_job(&format!("note number {i}"), 1)).await);
    }
    submitted.extend(finish_all(&mut jobs, &burst).await);
    for job in submitted {
        let answer = metadata(&job);
        assert!(answer["text"].as_str().unwrap().starts_with("[beta]"), "{answer}");
        assert_eq!(answer["usage"]["provider"], "secondary");
    }
    // The breaker opened after two failures: the primary saw no more calls.
    assert_eq!(primary.count(Route::ChatCompletions), 2);
    // The secondary's limit (10/s, burst 2) held across all jobs in the worker.
    let at: Vec<_> = secondary.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 10);
    for i in 0..at.len() {
        for j in i..at.len() {
            let window = at[j].duration_since(at[i]).as_secs_f64();
            let allowed = 2.0 + window * 10.0 + 0.5;
            assert!(
                ((j - i + 1) as f64) <= allowed,
                "{} calls within {window:.3} s",
                j - i + 1
            );
        }
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_provider_the_mesh_runs_and_says_why() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let uploaded = upload(
        &mut ingest,
        "friends.jpg",
        &read_fixture("friends_by_Aitzol_Berasategi_orient6.jpg"),
    )
    .await
    .unwrap();
    let kinds: Vec<&str> = uploaded.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["media.probe", "media.thumbnails"]);
    assert_eq!(uploaded.skipped.len(), 1);
    assert_eq!(uploaded.skipped[0].kind, "inference.describe_image");
    assert!(
        uploaded.skipped[0].reason.contains("MM_OPENAI_API_KEY"),
        "{:?}",
        uploaded.skipped
    );
    let refused = ingest
        .submit_job(pb::SubmitJobRequest {
            job: Some(text_job("hello", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&refused), ErrorCode::Unsupported);
    assert!(refused.message().contains("no AI provider"), "{}", refused.message());
    let call = mesh
        .inference()
        .generate_text(pb::GenerateTextRequest {
            prompt: "hello".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&call), ErrorCode::Unsupported);
    let spend = mesh
        .inference()
        .get_spend(pb::GetSpendRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(spend.lines.is_empty() && spend.today_usd == 0.0);
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_key_never_reaches_logs_errors_or_results() {
    let fake = fake("alpha", Some(KEY)).await;
    let base_url = fake.base_url();
    let mesh = mediamesh_testkit::process::ProcessMesh::launch_with(1, |env| {
        for vars in [&mut env.ingest, &mut env.scheduler, &mut env.inference] {
            vars.insert("MM_OPENAI_API_KEY".to_owned(), KEY.to_owned());
            vars.insert("MM_OPENAI_BASE_URL".to_owned(), base_url.clone());
            vars.insert(
                "MM_LOG".to_owned(),
                "debug,h2=info,hyper=info,hyper_util=info,tower=info,sqlx=info,async_nats=info,tonic=info".to_owned(),
            );
        }
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let uploaded = upload(&mut ingest, "dragonfly.jpg", &read_fixture("Dragonfly_by_Bolly.jpg"))
        .await
        .unwrap();
    let done = finish_all(&mut jobs, &uploaded.jobs).await;
    metadata(by_kind(&done, "inference.describe_image"));
    // The provider rejects the key: the error names the provider, never the key.
    fake.set_persistent_fault(None, Some(Fault::Unauthorized));
    let job = submit(&mut ingest, text_job("hello", 1)).await;
    let job = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    let (code, message) = failed_with(&job);
    assert_eq!(code, ErrorCode::ProviderDown);
    assert!(message.contains("credentials") && !message.contains(KEY), "{message}");
    let mut ai = mediamesh_proto::v1::inference_service_client::InferenceServiceClient::new(
        mesh.channel(mediamesh_testkit::process::Process::Ingest).unwrap(),
    );
    let call = ai
        .generate_text(pb::GenerateTextRequest {
            prompt: "hello again".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(!call.message().contains(KEY));
    let described = serde_json::to_string(&done.iter().map(|j| format!("{j:?}")).collect::<Vec<_>>()).unwrap();
    assert!(!described.contains(KEY));
    let mut checked = 0;
    for entry in std::fs::read_dir(mesh.dir().unwrap().join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(KEY), "{} contains the API key", path.display());
        checked += text.len();
    }
    assert!(checked > 3_000, "the logs are there ({checked} bytes)");
    let inference_log = std::fs::read_to_string(mesh.dir().unwrap().join("logs/inference.log")).unwrap();
    assert!(
        inference_log.contains("ai.call") && inference_log.contains("rejected the credentials"),
        "the provider calls and the 401 were logged"
    );
    // --print-config shows that a key is set, not the key.
    let output = std::process::Command::new(
        mediamesh_testkit::process::bin_dir()
            .unwrap()
            .join("mediamesh-inference"),
    )
    .arg("--print-config")
    .env("MM_OPENAI_API_KEY", KEY)
    .env("MM_DATABASE_URL", "postgres://unused")
    .env("MM_BLOB_URL", "file:///tmp/unused")
    .output()
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.contains("redacted") && !printed.contains(KEY),
        "{printed}"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_audio_is_split_under_the_provider_limit_and_joined_with_progress() {
    // The provider takes at most 20 kB per upload: the 7.4 s WAV (325 kB) goes as MP3 parts.
    let fake = FakeAi::start_with(Options {
        name: "whisper".to_owned(),
        max_audio_bytes: 20_000,
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            r#"
[[providers]]
name = "whisper"
base_url = "{}"
max_audio_bytes = 20000

[providers.models]
transcribe = "whisper-1"
"#,
            fake.base_url()
        ),
    );
    let mesh = Mesh::start_with(|c| config_file(c, &path)).await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    // The first part answers slowly, so the watcher is there for the stages.
    fake.fail_next(Some(Route::Transcriptions), 1, Fault::Slow(Duration::from_millis(1500)));
    let wav = read_fixture("speech_en.wav");
    let uploaded = upload(&mut ingest, "speech.wav", &wav).await.unwrap();
    let transcribe = uploaded.jobs.iter().find(|j| j.kind == "inference.transcribe").unwrap();
    let seen = mediamesh_testkit::watch_to_end(&mut jobs, &transcribe.id, JOB_DEADLINE)
        .await
        .unwrap();
    let stages: Vec<String> = seen.iter().filter(|m| m.seq == 0).map(|m| m.message.clone()).collect();
    assert!(
        stages.iter().any(|s| s == "calling the model: part 2 of 2"),
        "{stages:?}"
    );
    assert!(stages.iter().any(|s| s == "storing"), "{stages:?}");
    let job = wait_job(&mut jobs, &transcribe.id, JOB_DEADLINE).await.unwrap();
    let transcript = metadata(&job);
    let parts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Transcriptions)
        .collect();
    assert_eq!(parts.len(), 2, "two parts");
    assert!(
        parts.iter().all(|p| p.body_bytes < 20_000 + 2_000),
        "each part under the limit (plus the form)"
    );
    let duration = wav_duration(&wav);
    assert!(
        (transcript["duration_s"].as_f64().unwrap() - duration).abs() < 0.3,
        "{transcript} vs {duration}"
    );
    assert_eq!(transcript["usage"]["calls"], 2);
    let text = transcript["text"].as_str().unwrap();
    assert_eq!(text.matches("transcript [whisper] of").count(), 2, "{text}");
    let stored: Value = serde_json::from_slice(
        &download(&mut ingest, &uploaded.media.unwrap().id, "transcript")
            .await
            .unwrap(),
    )
    .unwrap();
    let segments = stored["segments"].as_array().unwrap();
    let ends: Vec<f64> = segments.iter().map(|s| s["end_s"].as_f64().unwrap()).collect();
    assert!(
        ends.windows(2).all(|w| w[0] <= w[1]),
        "times increase across parts: {ends:?}"
    );
    assert!(
        *ends.last().unwrap() > 5.0,
        "the second part's segments are shifted: {ends:?}"
    );
    mesh.shutdown().await.unwrap();
}
