//! Every service serves Prometheus metrics, `/livez` and `/readyz` over HTTP: after one photo
//! goes through the mesh the job, worker and upload metrics have moved, with low-cardinality
//! labels, and `/readyz` follows the gRPC health.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, Service, read_fixture, upload, wait_job};

use crate::JOB_DEADLINE;

const FILE: &str = "Kleiber_by_Lukas_Baubkus.jpg";

/// The sum of the samples of `name` whose labels include every pair of `labels`; None when
/// no sample matches.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        {
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad sample {line:?}"));
            total = Some(total.unwrap_or(0.0) + value);
        }
    }
    total
}

async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Scrapes `/metrics` of `addr` until `ok` holds (the scheduler applies a report just after
/// it commits the transition a client sees), at most 20 s; returns the last scrape.
async fn scrape_until(client: &reqwest::Client, addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = get(client, addr, "/metrics").await;
        assert_eq!(status, 200, "/metrics of {addr}");
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never held; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_readyz(client: &reqwest::Client, addr: SocketAddr, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(client, addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz of {addr} still {status}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_sample_parser_reads_the_text_format() {
    let text = "# TYPE m counter\nm{kind=\"a\",outcome=\"OK\"} 2\nm{kind=\"b\",outcome=\"OK\"} 3\nn 1.5\n";
    assert_eq!(sample(text, "m", &[("outcome", "OK")]), Some(5.0));
    assert_eq!(sample(text, "m", &[("kind", "b")]), Some(3.0));
    assert_eq!(sample(text, "n", &[]), Some(1.5));
    assert_eq!(sample(text, "m", &[("kind", "c")]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_serve_metrics_liveness_and_readiness() {
    let mut mesh = Mesh::start().await.unwrap();
    let client = reqwest::Client::new();
    let addr = |mesh: &Mesh, service| mesh.metrics_addr(service).expect("the test kit turns metrics on");

    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let data = read_fixture(FILE);
    let response = upload(&mut ingest, FILE, &data).await.unwrap();
    let media_id = response.media.as_ref().unwrap().id.clone();
    let kinds: Vec<&str> = response.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["media.probe", "media.thumbnails"]);
    let mut ids = vec![media_id];
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(
            done.state,
            pb::JobState::Succeeded as i32,
            "{}: {:?}",
            job.kind,
            done.error
        );
        ids.push(job.id.clone());
    }

    // Scheduler: outcomes, run durations, submissions, job counts by state, consumer lag.
    let scheduler = scrape_until(&client, addr(&mesh, Service::Scheduler), "scheduler outcomes", |text| {
        ["media.probe", "media.thumbnails"].iter().all(|kind| {
            sample(
                text,
                "mediamesh_scheduler_job_outcomes_total",
                &[("kind", kind), ("state", "SUCCEEDED")],
            )
            .is_some_and(|n| n >= 1.0)
        })
    })
    .await;
    for kind in ["media.probe", "media.thumbnails"] {
        let runs = sample(
            &scheduler,
            "mediamesh_scheduler_job_run_duration_seconds_count",
            &[("kind", kind), ("outcome", "OK")],
        );
        assert!(runs.is_some_and(|n| n >= 1.0), "{kind} run durations: {runs:?}");
        let le_inf = sample(
            &scheduler,
            "mediamesh_scheduler_job_run_duration_seconds_bucket",
            &[("kind", kind), ("outcome", "OK"), ("le", "+Inf")],
        );
        assert_eq!(le_inf, runs, "+Inf bucket equals the count");
        let submitted = sample(
            &scheduler,
            "mediamesh_scheduler_jobs_submitted_total",
            &[("kind", kind)],
        );
        assert!(submitted.is_some_and(|n| n >= 1.0), "{kind} submitted: {submitted:?}");
        let succeeded = sample(
            &scheduler,
            "mediamesh_scheduler_jobs",
            &[("queue", "media"), ("kind", kind), ("state", "SUCCEEDED")],
        );
        assert!(
            succeeded.is_some_and(|n| n >= 1.0),
            "{kind} SUCCEEDED jobs gauge: {succeeded:?}"
        );
    }
    let submits = sample(&scheduler, "mediamesh_scheduler_submit_duration_seconds_count", &[]);
    assert!(submits.is_some_and(|n| n >= 1.0), "submit latency count: {submits:?}");
    for kind in ["media.probe", "media.thumbnails"] {
        let waits = sample(
            &scheduler,
            "mediamesh_scheduler_dispatch_wait_seconds_count",
            &[("kind", kind)],
        );
        assert!(waits.is_some_and(|n| n >= 1.0), "{kind} dispatch waits: {waits:?}");
    }
    assert!(scheduler.contains("# TYPE mediamesh_scheduler_job_retries_total counter"));
    assert_eq!(
        sample(
            &scheduler,
            "mediamesh_jetstream_consumer_pending",
            &[("queue", "media")]
        ),
        Some(0.0),
        "nothing is left waiting in the media consumer"
    );

    // Media worker: runs by kind and outcome, durations, nothing in flight.
    let media = scrape_until(&client, addr(&mesh, Service::Media), "media worker runs", |text| {
        sample(text, "mediamesh_worker_jobs_total", &[("outcome", "OK")]).is_some_and(|n| n >= 2.0)
    })
    .await;
    for kind in ["media.probe", "media.thumbnails"] {
        let runs = sample(
            &media,
            "mediamesh_worker_jobs_total",
            &[("kind", kind), ("outcome", "OK")],
        );
        assert!(runs.is_some_and(|n| n >= 1.0), "media worker {kind}: {runs:?}");
        let durations = sample(
            &media,
            "mediamesh_worker_job_duration_seconds_count",
            &[("kind", kind), ("outcome", "OK")],
        );
        assert!(
            durations.is_some_and(|n| n >= 1.0),
            "media worker {kind} durations: {durations:?}"
        );
    }
    assert_eq!(
        sample(&media, "mediamesh_worker_jobs_in_flight", &[("queue", "media")]),
        Some(0.0)
    );

    // Ingest: the upload, by sniffed kind, and its bytes.
    let ingest_text = scrape_until(&client, addr(&mesh, Service::Ingest), "ingest uploads", |text| {
        sample(
            text,
            "mediamesh_ingest_uploads_total",
            &[("kind", "MEDIA_KIND_IMAGE"), ("outcome", "OK")],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let bytes = sample(
        &ingest_text,
        "mediamesh_ingest_upload_bytes_total",
        &[("kind", "MEDIA_KIND_IMAGE")],
    );
    assert!(bytes.is_some_and(|n| n >= data.len() as f64), "upload bytes: {bytes:?}");

    // Inference: its families are there even before any call.
    let (status, inference) = get(&client, addr(&mesh, Service::Inference), "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "# TYPE mediamesh_ai_calls_total counter",
        "# TYPE mediamesh_ai_tokens_total counter",
        "# TYPE mediamesh_ai_cost_usd_total counter",
        "# TYPE mediamesh_worker_jobs_total counter",
        "# TYPE mediamesh_worker_job_duration_seconds histogram",
    ] {
        assert!(inference.contains(family), "inference lacks {family:?}");
    }

    // No label carries a job or media id.
    for (name, text) in [("scheduler", &scheduler), ("media", &media), ("ingest", &ingest_text)] {
        for id in &ids {
            assert!(!text.contains(id.as_str()), "{name} metrics mention {id}");
        }
    }

    // Content type, liveness and readiness of every service.
    for service in [Service::Ingest, Service::Scheduler, Service::Media, Service::Inference] {
        let addr = addr(&mesh, service);
        let response = client.get(format!("http://{addr}/metrics")).send().await.unwrap();
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{service:?}: {content_type}"
        );
        assert_eq!(get(&client, addr, "/livez").await.0, 200, "{service:?} /livez");
        assert_eq!(get(&client, addr, "/readyz").await.0, 200, "{service:?} /readyz");
    }

    // Readiness follows the dependencies: the scheduler is not ready while NATS is down, and
    // alive all the same.
    let scheduler_addr = addr(&mesh, Service::Scheduler);
    mesh.nats.stop().await.unwrap();
    wait_readyz(&client, scheduler_addr, 503).await;
    assert_eq!(get(&client, scheduler_addr, "/livez").await.0, 200);
    mesh.nats.restart().await.unwrap();
    wait_readyz(&client, scheduler_addr, 200).await;
    mesh.shutdown().await.unwrap();
}
