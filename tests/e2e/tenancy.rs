//! Tenants, API keys, quotas, live feeds and pagination, through the public API with API keys
//! on (`MM_AUTH=on`), as in production.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::admin_service_client::AdminServiceClient;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_proto::v1::media_service_client::MediaServiceClient;
use mediamesh_server::auth::{AuthMode, AuthedChannel, Credentials};
use mediamesh_testkit::{Mesh, Service, read_fixture, upload_parts};
use uuid::Uuid;

use crate::{JOB_DEADLINE, as_tenant, code_of};

struct Client {
    ingest: IngestServiceClient<AuthedChannel>,
    jobs: JobServiceClient<AuthedChannel>,
    media: MediaServiceClient<AuthedChannel>,
    inference: InferenceServiceClient<AuthedChannel>,
}

fn client(mesh: &Mesh, key: &str) -> Client {
    let channel = mesh.with_key(key);
    Client {
        ingest: IngestServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024),
        jobs: JobServiceClient::new(channel.clone()),
        media: MediaServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    }
}

async fn mesh_with_keys() -> Mesh {
    Mesh::start_with(|c| c.ingest.auth.auth = AuthMode::On).await.unwrap()
}

fn sleep_spec(ms: u64) -> pb::JobSpec {
    pb::JobSpec {
        kind: "test.sleep".to_owned(),
        payload_json: format!(r#"{{"ms": {ms}}}"#),
        ..Default::default()
    }
}

async fn submit(c: &mut Client, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
    Ok(c.ingest
        .submit_job(pb::SubmitJobRequest { job: Some(spec) })
        .await?
        .into_inner()
        .job
        .unwrap())
}

pub(crate) async fn wait_done(jobs: &mut JobServiceClient<AuthedChannel>, id: &str) -> pb::Job {
    let deadline = std::time::Instant::now() + JOB_DEADLINE;
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: id.to_owned(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(update) = tokio::time::timeout_at(deadline.into(), stream.next()).await.unwrap() {
        if let Some(job) = update.unwrap().job {
            last = Some(job);
        }
    }
    last.unwrap()
}

async fn upload(c: &mut Client, name: &str, data: &[u8]) -> Result<pb::UploadMediaResponse, tonic::Status> {
    Ok(c.ingest
        .upload_media(futures::stream::iter(upload_parts("", name, data)))
        .await?
        .into_inner())
}

fn retry_after(status: &tonic::Status) -> Option<u64> {
    status.metadata().get("retry-after")?.to_str().ok()?.parse().ok()
}

async fn count_jobs(mesh: &Mesh, tenant: &str) -> i64 {
    sqlx_count(
        mesh,
        &format!("SELECT count(*) FROM scheduler.jobs WHERE tenant = '{tenant}'"),
    )
    .await
}

async fn sqlx_count(mesh: &Mesh, sql: &str) -> i64 {
    let store = mediamesh_store::Store::connect_lazy(&mesh.configs.scheduler.database_url, 1).unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.close().await;
    n
}

async fn execute(mesh: &Mesh, sql: &str) {
    let store = mediamesh_store::Store::connect_lazy(&mesh.configs.scheduler.database_url, 1).unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_gate_every_public_call_and_revocation_is_immediate() {
    let mesh = mesh_with_keys().await;

    // No key, a wrong key: UNAUTHENTICATED on every public service, before anything runs.
    for key in [None, Some("mm_not-a-key-at-all-0000000000000000000000")] {
        let channel = match key {
            Some(key) => mesh.with_key(key),
            None => Credentials::default().channel(mesh.channel(mediamesh_testkit::Service::Ingest).unwrap()),
        };
        let statuses = [
            IngestServiceClient::new(channel.clone())
                .submit_job(pb::SubmitJobRequest {
                    job: Some(sleep_spec(0)),
                })
                .await
                .unwrap_err(),
            JobServiceClient::new(channel.clone())
                .list_jobs(pb::ListJobsRequest::default())
                .await
                .unwrap_err(),
            MediaServiceClient::new(channel.clone())
                .probe(pb::ProbeRequest {
                    source: Some(pb::probe_request::Source::Data(b"x".to_vec())),
                })
                .await
                .unwrap_err(),
            InferenceServiceClient::new(channel.clone())
                .get_spend(pb::GetSpendRequest::default())
                .await
                .unwrap_err(),
            AdminServiceClient::new(channel.clone())
                .list_api_keys(pb::ListApiKeysRequest::default())
                .await
                .unwrap_err(),
        ];
        for status in statuses {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{key:?}: {status:?}");
            assert_eq!(code_of(&status), ErrorCode::Unauthenticated);
        }
    }
    assert_eq!(
        count_jobs(&mesh, "default").await,
        0,
        "nothing ran for the refused calls"
    );

    // Health answers without a key (probes have none).
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(mesh.channel(mediamesh_testkit::Service::Ingest).unwrap());
    health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();

    // A key made through the admin API works, and acts for its tenant only: an mm-tenant
    // header cannot change that.
    let created = mesh
        .admin()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "acme".to_owned(),
            name: "ci".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert!(created.secret.starts_with("mm_") && created.secret.len() > 40);
    assert!(created.secret.starts_with(&key.prefix) && key.prefix.len() < 16);
    let mut acme = client(&mesh, &created.secret);
    let job = acme
        .ingest
        .submit_job(as_tenant(
            pb::SubmitJobRequest {
                job: Some(sleep_spec(0)),
            },
            "someone-else",
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.tenant, "acme");
    assert_eq!(count_jobs(&mesh, "someone-else").await, 0);

    // A tenant's key cannot use the admin API.
    let status = AdminServiceClient::new(mesh.with_key(&created.secret))
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Listed without its secret; revoked, it fails on the very next call.
    let keys = mesh
        .admin()
        .list_api_keys(pb::ListApiKeysRequest {
            tenant: "acme".to_owned(),
            include_revoked: false,
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].id.as_str(), keys[0].name.as_str()), (key.id.as_str(), "ci"));
    assert!(keys[0].last_used_at.is_some(), "the key's use is recorded");
    mesh.admin()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key: key.prefix.clone(),
        })
        .await
        .unwrap();
    let status = acme
        .jobs
        .get_job(pb::GetJobRequest { job_id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{}", status.message());
    let all = mesh
        .admin()
        .list_api_keys(pb::ListApiKeysRequest {
            tenant: "acme".to_owned(),
            include_revoked: true,
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(all[0].revoked_at.is_some());
    mesh.shutdown().await.unwrap();
}

/// The error for an id the caller may not see, with the id blanked out.
fn shape(status: &tonic::Status, id: &str) -> (tonic::Code, ErrorCode, String) {
    (status.code(), code_of(status), status.message().replace(id, "<id>"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_gets_not_found_for_another_tenants_ids() {
    let mesh = mesh_with_keys().await;
    let mut a = client(&mesh, &mesh.create_key("tenant-a").await.unwrap());
    let mut b = client(&mesh, &mesh.create_key("tenant-b").await.unwrap());

    let photo = read_fixture("Arc-Colors-Transparent-Wallpaper.png");
    let uploaded = upload(&mut a, "arc.png", &photo).await.unwrap();
    let media_id = uploaded.media.unwrap().id;
    for job in &uploaded.jobs {
        wait_done(&mut a.jobs, &job.id).await;
    }
    let failing = submit(
        &mut a,
        pb::JobSpec {
            payload_json: r#"{"ms": 0, "fail": "BAD_INPUT"}"#.to_owned(),
            ..sleep_spec(0)
        },
    )
    .await
    .unwrap();
    let failed = wait_done(&mut a.jobs, &failing.id).await;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    let job_id = uploaded.jobs[0].id.clone();

    // For each RPC that takes an id: B gets exactly what it gets for an id that does not
    // exist (code, stable code and message), so nothing says the id is real.
    let unknown_job = Uuid::now_v7().to_string();
    let unknown_media = Uuid::now_v7().to_string();
    macro_rules! same_as_unknown {
        ($what:expr, |$id:ident| $call:expr, $real:expr, $fake:expr) => {{
            let real: tonic::Status = {
                let $id = $real.clone();
                $call.await.expect_err(concat!($what, ": B must not reach A's id"))
            };
            let fake: tonic::Status = {
                let $id = $fake.clone();
                $call.await.expect_err(concat!($what, ": an unknown id fails"))
            };
            assert_eq!(real.code(), tonic::Code::NotFound, "{}: {real:?}", $what);
            assert_eq!(shape(&real, &$real), shape(&fake, &$fake), "{}", $what);
        }};
    }
    same_as_unknown!(
        "GetJob",
        |id| b.jobs.get_job(pb::GetJobRequest { job_id: id }),
        job_id,
        unknown_job
    );
    same_as_unknown!(
        "CancelJob",
        |id| b.jobs.cancel_job(pb::CancelJobRequest { job_id: id }),
        job_id,
        unknown_job
    );
    same_as_unknown!(
        "RetryJob",
        |id| b.jobs.retry_job(pb::RetryJobRequest { job_id: id }),
        failing.id,
        unknown_job
    );
    same_as_unknown!(
        "WatchJob",
        |id| b.jobs.watch_job(pb::WatchJobRequest {
            job_id: id,
            after_seq: 0
        }),
        job_id,
        unknown_job
    );
    same_as_unknown!(
        "GetMedia",
        |id| b.ingest.get_media(pb::GetMediaRequest { media_id: id }),
        media_id,
        unknown_media
    );
    same_as_unknown!(
        "DownloadMedia",
        |id| b.ingest.download_media(pb::DownloadMediaRequest {
            media_id: id,
            name: "thumb".to_owned()
        }),
        media_id,
        unknown_media
    );
    same_as_unknown!(
        "SubmitJob on A's media",
        |id| b.ingest.submit_job(pb::SubmitJobRequest {
            job: Some(pb::JobSpec {
                kind: "media.probe".to_owned(),
                media_id: id,
                ..Default::default()
            })
        }),
        media_id,
        unknown_media
    );
    same_as_unknown!(
        "SubmitJob depending on A's job",
        |id| b.ingest.submit_job(pb::SubmitJobRequest {
            job: Some(pb::JobSpec {
                depends_on: vec![id],
                ..sleep_spec(0)
            })
        }),
        job_id,
        unknown_job
    );
    same_as_unknown!(
        "Probe of A's media",
        |id| b.media.probe(pb::ProbeRequest {
            source: Some(pb::probe_request::Source::MediaId(id))
        }),
        media_id,
        unknown_media
    );

    // Lists, feeds and bulk retries do not carry A's jobs either.
    let listed = b
        .jobs
        .list_jobs(pb::ListJobsRequest {
            media_id: media_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty());
    let all_b = b
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all_b.jobs.is_empty(), "B has no jobs: {:?}", all_b.jobs.len());
    let retried = b
        .jobs
        .retry_jobs(pb::RetryJobsRequest {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(retried.job_ids.is_empty(), "A's failed job is not B's to retry");
    let stats = b
        .jobs
        .get_queue_stats(pb::GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.stats.iter().all(|s| s.succeeded == 0 && s.failed == 0),
        "{stats:?}"
    );
    let spend = b.inference.get_spend(pb::GetSpendRequest::default()).await;
    if let Ok(spend) = spend {
        assert!(spend.into_inner().lines.is_empty());
    }
    // A's own calls still work.
    let got = a
        .jobs
        .get_job(pb::GetJobRequest { job_id: job_id.clone() })
        .await
        .unwrap();
    assert_eq!(got.into_inner().job.unwrap().tenant, "tenant-a");
    mesh.shutdown().await.unwrap();
}

async fn set_quotas(mesh: &Mesh, tenant: &str, quotas: pb::Quotas) {
    mesh.admin()
        .set_quotas(pb::SetQuotasRequest {
            tenant: tenant.to_owned(),
            quotas: Some(quotas),
            reset: Vec::new(),
        })
        .await
        .unwrap();
}

fn assert_quota(status: &tonic::Status, code: ErrorCode, names: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(code_of(status), code, "{status:?}");
    assert!(
        status.message().contains(names),
        "names the limit {names}: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_quota_refuses_with_retry_after_and_stores_nothing() {
    let mesh = mesh_with_keys().await;
    let tenant = "quota";
    let mut c = client(&mesh, &mesh.create_key(tenant).await.unwrap());
    let scheduled = || pb::JobSpec {
        run_at: Some(mediamesh_core::to_timestamp(
            chrono::Utc::now() + chrono::Duration::hours(2),
        )),
        ..sleep_spec(0)
    };

    // Payload size: no retry-after (waiting does not help); a smaller payload goes through.
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            payload_bytes: Some(100),
            ..Default::default()
        },
    )
    .await;
    let status = submit(
        &mut c,
        pb::JobSpec {
            payload_json: format!(r#"{{"ms": 0, "pad": "{}"}}"#, "x".repeat(200)),
            ..scheduled()
        },
    )
    .await
    .unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "payload_bytes");
    assert_eq!(retry_after(&status), None);
    assert_eq!(count_jobs(&mesh, tenant).await, 0);

    // Jobs per hour: the fourth is refused with a retry-after within the hour; once the
    // first jobs are an hour old (their counts moved back, as time would), it goes through.
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            jobs_per_hour: Some(3),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        submit(&mut c, scheduled()).await.unwrap();
    }
    let status = submit(&mut c, scheduled()).await.unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "jobs_per_hour");
    let wait = retry_after(&status).unwrap();
    assert!((3000..=3600).contains(&wait), "retry after about an hour: {wait}");
    // SubmitJobs is all or nothing.
    let status = c
        .ingest
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![scheduled(), scheduled()],
        })
        .await
        .unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "jobs_per_hour");
    assert_eq!(count_jobs(&mesh, tenant).await, 3, "nothing stored for refused submits");
    execute(
        &mesh,
        "UPDATE scheduler.submit_counts SET start = start - interval '61 minutes'",
    )
    .await;
    submit(&mut c, scheduled()).await.unwrap();

    // Jobs per day: four in the day now; the fifth waits for the oldest to be a day old.
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            jobs_per_day: Some(4),
            ..Default::default()
        },
    )
    .await;
    let status = submit(&mut c, scheduled()).await.unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "jobs_per_day");
    // The day counts by the hour: the oldest jobs' hour leaves it within an hour of their
    // being a day old.
    let wait = retry_after(&status).unwrap();
    assert!((79_000..=86_400).contains(&wait), "retry after about a day: {wait}");
    assert_eq!(count_jobs(&mesh, tenant).await, 4);
    execute(
        &mesh,
        "UPDATE scheduler.submit_counts SET start = start - interval '25 hours'",
    )
    .await;
    submit(&mut c, scheduled()).await.unwrap();
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            jobs_per_hour: Some(0),
            jobs_per_day: Some(0),
            ..Default::default()
        },
    )
    .await;

    // The submit rate: a burst of 2 at 2 a second; the third call at once is refused with
    // retry-after 1, and after that second it goes through.
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            submits_per_second: Some(2.0),
            submit_burst: Some(2),
            ..Default::default()
        },
    )
    .await;
    let before = count_jobs(&mesh, tenant).await;
    submit(&mut c, scheduled()).await.unwrap();
    submit(&mut c, scheduled()).await.unwrap();
    let status = submit(&mut c, scheduled()).await.unwrap_err();
    assert_quota(&status, ErrorCode::RateLimited, "submit rate");
    assert_eq!(retry_after(&status), Some(1));
    assert_eq!(count_jobs(&mesh, tenant).await, before + 2);
    tokio::time::sleep(Duration::from_secs(retry_after(&status).unwrap())).await;
    submit(&mut c, scheduled()).await.unwrap();
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            submits_per_second: Some(0.0),
            ..Default::default()
        },
    )
    .await;

    // Upload size: refused while streaming, nothing stored.
    let photo = read_fixture("Arc-Colors-Transparent-Wallpaper.png");
    let audio = read_fixture("speech_en.ogg");
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            upload_bytes: Some(100_000),
            ..Default::default()
        },
    )
    .await;
    let blobs = mediamesh_testkit::blob_files(&mesh).len();
    let status = upload(&mut c, "arc.png", &photo).await.unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "upload_bytes");
    assert_eq!(retry_after(&status), None);
    assert_eq!(mediamesh_testkit::blob_files(&mesh).len(), blobs);
    assert_eq!(sqlx_count(&mesh, "SELECT count(*) FROM ingest.media").await, 0);

    // Stored bytes: the audio fits, the photo beside it does not; raised, it does.
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            upload_bytes: Some(0),
            stored_bytes: Some(audio.len() as u64 + 1000),
            ..Default::default()
        },
    )
    .await;
    upload(&mut c, "speech.ogg", &audio).await.unwrap();
    let jobs_before = count_jobs(&mesh, tenant).await;
    let status = upload(&mut c, "arc.png", &photo).await.unwrap_err();
    assert_quota(&status, ErrorCode::QuotaExceeded, "stored_bytes");
    assert_eq!(sqlx_count(&mesh, "SELECT count(*) FROM ingest.media").await, 1);
    assert_eq!(
        count_jobs(&mesh, tenant).await,
        jobs_before,
        "no pipeline for a refused upload"
    );
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            stored_bytes: Some(0),
            ..Default::default()
        },
    )
    .await;
    upload(&mut c, "arc.png", &photo).await.unwrap();

    // Usage is reported to the admin.
    let t = mesh
        .admin()
        .get_tenant(pb::GetTenantRequest {
            tenant: tenant.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.usage.unwrap().stored_bytes, (audio.len() + photo.len()) as u64);
    assert_eq!(t.overrides.unwrap().stored_bytes, Some(0));
    mesh.shutdown().await.unwrap();
}

/// Many SubmitJob calls at once: the scheduler commits them in groups (fewer commits than
/// calls, as its metrics count them), and a jobs-per-hour quota lets exactly its limit in,
/// refusing the rest whole, however the calls interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_commit_in_groups_and_a_quota_admits_exactly_its_limit() {
    const CALLS: usize = 300;
    const LIMIT: u64 = 120;
    let mesh = mesh_with_keys().await;
    let tenant = "burst";
    let c = client(&mesh, &mesh.create_key(tenant).await.unwrap());
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            jobs_per_hour: Some(LIMIT),
            submits_per_second: Some(100_000.0),
            submit_burst: Some(100_000),
            ..Default::default()
        },
    )
    .await;
    let scheduled = || pb::JobSpec {
        run_at: Some(mediamesh_core::to_timestamp(
            chrono::Utc::now() + chrono::Duration::hours(2),
        )),
        ..sleep_spec(0)
    };
    let calls = (0..CALLS).map(|_| {
        let mut ingest = c.ingest.clone();
        let spec = scheduled();
        tokio::spawn(async move { ingest.submit_job(pb::SubmitJobRequest { job: Some(spec) }).await })
    });
    let mut admitted = HashSet::new();
    let mut refused = 0;
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            Ok(response) => {
                assert!(admitted.insert(response.into_inner().job.unwrap().id), "a job id twice");
            }
            Err(status) => {
                assert_quota(&status, ErrorCode::QuotaExceeded, "jobs_per_hour");
                assert!(retry_after(&status).is_some_and(|s| s <= 3600), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(admitted.len() as u64, LIMIT, "exactly the quota's jobs are admitted");
    assert_eq!(refused, CALLS - LIMIT as usize);
    assert_eq!(
        count_jobs(&mesh, tenant).await,
        LIMIT as i64,
        "nothing stored for refused calls"
    );

    // The scheduler's group commit: calls per commit, as a histogram (count: commits, sum: calls).
    let addr = mesh
        .metrics_addr(Service::Scheduler)
        .expect("the test kit turns metrics on");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let commits = value("mediamesh_scheduler_submit_group_calls_count");
    let calls = value("mediamesh_scheduler_submit_group_calls_sum");
    println!("{calls} CreateJobs calls in {commits} commits");
    assert!(
        calls >= CALLS as f64,
        "every call went through the group commit: {calls}"
    );
    assert!(commits < calls, "{calls} calls took {commits} commits");
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_jobs_quota_caps_concurrency_and_progress_shows_in_get_job() {
    let mesh = mesh_with_keys().await;
    let tenant = "capped";
    let mut c = client(&mesh, &mesh.create_key(tenant).await.unwrap());
    set_quotas(
        &mesh,
        tenant,
        pb::Quotas {
            running_jobs: Some(1),
            ..Default::default()
        },
    )
    .await;
    let mut feed = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&mut c, sleep_spec(800)).await.unwrap().id);
    }
    let mut running: HashSet<String> = HashSet::new();
    let mut done = 0;
    let mut saw_progress = false;
    let deadline = std::time::Instant::now() + JOB_DEADLINE;
    while done < 3 {
        let change = tokio::time::timeout_at(deadline.into(), feed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if change.cursor.is_empty() {
            // A progress report: once the job is RUNNING, GetJob shows the latest one.
            if !saw_progress {
                let mut history = c
                    .jobs
                    .watch_job(pb::WatchJobRequest {
                        job_id: change.job_id.clone(),
                        after_seq: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                while let Some(update) = history.next().await {
                    let update = update.unwrap();
                    if update.seq > 0 && update.state != pb::JobState::Queued as i32 {
                        break;
                    }
                }
                let job = c
                    .jobs
                    .get_job(pb::GetJobRequest {
                        job_id: change.job_id.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                if job.state == pb::JobState::Running as i32 {
                    assert_eq!(job.progress_message, "sleeping");
                    saw_progress = true;
                }
            }
            continue;
        }
        match pb::JobState::try_from(change.state).unwrap() {
            pb::JobState::Running => {
                running.insert(change.job_id.clone());
                assert!(running.len() <= 1, "at most one running at once: {running:?}");
            }
            pb::JobState::Succeeded => {
                running.remove(&change.job_id);
                done += 1;
            }
            _ => {}
        }
    }
    assert!(saw_progress, "GetJob returned a running job's progress");
    let finished = c
        .jobs
        .get_job(pb::GetJobRequest { job_id: ids[0].clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(finished.progress, 1.0);
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_jobs_resumes_from_its_cursor_with_every_change_exactly_once() {
    let mesh = mesh_with_keys().await;
    let mut c = client(&mesh, &mesh.create_key("feed").await.unwrap());
    let mut other = client(&mesh, &mesh.create_key("other").await.unwrap());
    let mut feed = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut only_succeeded = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit(&mut c, sleep_spec(50 * i)).await.unwrap().id);
        submit(&mut other, sleep_spec(0)).await.unwrap();
    }

    // Read a few changes, then go away mid-run.
    let mut seen: Vec<(String, u64, i32)> = Vec::new();
    let mut cursor = String::new();
    while seen.len() < 5 {
        let change = feed.next().await.unwrap().unwrap();
        if !change.cursor.is_empty() {
            seen.push((change.job_id.clone(), change.seq, change.state));
            cursor = change.cursor;
        }
    }
    drop(feed);
    let mut a = c.jobs.clone();
    for id in &ids {
        wait_done(&mut a, id).await;
    }

    // Resumed from the cursor: the rest, nothing twice, nothing missed.
    let mut feed = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            cursor: cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let expected: usize = 6 * 3; // QUEUED, RUNNING, SUCCEEDED each
    let deadline = std::time::Instant::now() + JOB_DEADLINE;
    while seen.len() < expected {
        let change = tokio::time::timeout_at(deadline.into(), feed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !change.cursor.is_empty() {
            assert!(
                ids.contains(&change.job_id),
                "only this tenant's jobs: {}",
                change.job_id
            );
            seen.push((change.job_id.clone(), change.seq, change.state));
        }
    }
    let unique: HashSet<_> = seen.iter().map(|(id, seq, _)| (id.clone(), *seq)).collect();
    assert_eq!(unique.len(), seen.len(), "no change twice: {seen:?}");
    // The feed holds exactly what each job's own history holds.
    let mut per_job: BTreeMap<String, Vec<(u64, i32)>> = BTreeMap::new();
    for (id, seq, state) in &seen {
        per_job.entry(id.clone()).or_default().push((*seq, *state));
    }
    for id in &ids {
        let mut history = Vec::new();
        let mut stream = c
            .jobs
            .watch_job(pb::WatchJobRequest {
                job_id: id.clone(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(update) = stream.next().await {
            let update = update.unwrap();
            if update.seq > 0 {
                history.push((update.seq, update.state));
            }
        }
        assert_eq!(per_job.get(id), Some(&history), "job {id}");
    }
    // Nothing more is pending for this tenant.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), async {
            loop {
                let change = feed.next().await.unwrap().unwrap();
                if !change.cursor.is_empty() {
                    return change;
                }
            }
        })
        .await
        .is_err()
    );

    // The filtered feed saw each SUCCEEDED and nothing else.
    let mut succeeded = HashSet::new();
    while succeeded.len() < 6 {
        let change = tokio::time::timeout_at(deadline.into(), only_succeeded.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !change.cursor.is_empty() {
            assert_eq!(change.state, pb::JobState::Succeeded as i32);
            assert!(succeeded.insert(change.job_id));
        }
    }
    let status = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            cursor: "garbage".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_over_a_thousand_jobs_returns_each_exactly_once() {
    let mesh = mesh_with_keys().await;
    let mut c = client(&mesh, &mesh.create_key("pages").await.unwrap());
    let later = mediamesh_core::to_timestamp(chrono::Utc::now() + chrono::Duration::hours(1));
    let spec = || pb::JobSpec {
        run_at: Some(later),
        ..sleep_spec(0)
    };
    let mut submitted = Vec::new();
    let mut between = None;
    for batch in 0..2 {
        let response = c
            .ingest
            .submit_jobs(pb::SubmitJobsRequest {
                jobs: (0..500).map(|_| spec()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        submitted.extend(response.jobs.into_iter().map(|j| j.job.unwrap().id));
        if batch == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            between = Some(mediamesh_core::to_timestamp(chrono::Utc::now()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(submitted.len(), 1000);

    for page_size in [7, 100, 1000] {
        let mut seen: Vec<String> = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .jobs
                .list_jobs(pb::ListJobsRequest {
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.jobs.len() <= page_size as usize);
            seen.extend(page.jobs.into_iter().map(|j| j.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "page size {page_size}: no job twice");
        assert_eq!(unique, submitted.iter().collect(), "page size {page_size}: every job");
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, seen, "stable order (by id, which grows with time)");
    }

    // A time range: exactly the second batch.
    let second: HashSet<String> = submitted[500..].iter().cloned().collect();
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let page = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: 300,
                page_token: token.clone(),
                created_after: between,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for job in page.jobs {
            assert!(seen.insert(job.id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, second);
    let before = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            created_before: between,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.jobs.len(), 500);
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_cleans_names_checks_types_and_bounds_metadata_and_messages() {
    let mesh = mesh_with_keys().await;
    let mut c = client(&mesh, &mesh.create_key("edge").await.unwrap());
    let photo = read_fixture("Arc-Colors-Transparent-Wallpaper.png");

    // A path in the name keeps only the file's name.
    let uploaded = upload(&mut c, "../../etc/passwd.png", &photo).await.unwrap();
    assert_eq!(uploaded.media.unwrap().filename, "passwd.png");
    // Control characters and names that name no file: BAD_INPUT, nothing stored.
    for name in ["evil\u{7}.png", "line\nbreak.png", "dir/.."] {
        let status = upload(&mut c, name, &photo).await.unwrap_err();
        assert_eq!(code_of(&status), ErrorCode::BadInput, "{name:?}: {status:?}");
    }
    let status = upload(&mut c, &"n".repeat(300), &photo).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    // A declared type that contradicts the bytes.
    let parts = {
        let mut parts = upload_parts("", "x.png", &read_fixture("speech_en.ogg"));
        if let Some(pb::upload_media_request::Part::Header(h)) = &mut parts[0].part {
            h.content_type = "image/png".to_owned();
        }
        parts
    };
    let status = c.ingest.upload_media(futures::stream::iter(parts)).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    assert!(status.message().contains("image/png"), "{}", status.message());
    assert_eq!(sqlx_count(&mesh, "SELECT count(*) FROM ingest.media").await, 1);

    // Oversized metadata is refused before any service sees it.
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(64 * 1024).parse().unwrap());
    assert!(c.jobs.list_jobs(request).await.is_err());
    // A message over the service's limit: a clear error, and the service goes on.
    let big = pb::ListJobsRequest {
        kind: "k".repeat(2 * 1024 * 1024),
        ..Default::default()
    };
    let status = c.jobs.list_jobs(big).await.unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{status:?}"
    );
    c.jobs.list_jobs(pb::ListJobsRequest::default()).await.unwrap();

    // A client deadline shorter than the call: DEADLINE_EXCEEDED, not a hang.
    let mut request = tonic::Request::new(pb::WatchJobRequest {
        job_id: submit(&mut c, sleep_spec(5_000)).await.unwrap().id,
        after_seq: 0,
    });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let result = async {
        let mut stream = c.jobs.watch_job(request).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    mesh.shutdown().await.unwrap();
}
