//! One upload is one trace: the client's `traceparent` is carried through ingest, the
//! scheduler (kept with the job until it is dispatched), JetStream, the media and inference
//! workers' attempts and the model call, and back with their reports; the services export their spans over OTLP to a
//! receiver in the test kit, and JSON logs carry the same trace id.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mediamesh_fakeai::FakeAi;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use mediamesh_testkit::process::{Process, ProcessMesh};
use mediamesh_testkit::{read_fixture, upload_parts, wait_job};

use crate::JOB_DEADLINE;

const FILE: &str = "Kleiber_by_Lukas_Baubkus.jpg";
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CLIENT: i32 = 3;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_trace_from_the_client_through_the_scheduler_to_the_worker_and_the_model() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let provider = FakeAi::start().await.unwrap();
    let mesh = ProcessMesh::launch_with(1, |env| {
        env.set_all("MM_OPENAI_BASE_URL", provider.base_url());
        env.set_all("MM_OTLP_ENDPOINT", receiver.endpoint());
        // Export batches every 100 ms instead of every 5 s.
        env.set_all("OTEL_BSP_SCHEDULE_DELAY", 100);
        env.set_all("MM_LOG_FORMAT", "json");
    })
    .await
    .unwrap();

    // The client opens the trace.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let client_span = format!("{:016x}", rand_u64());
    let mut request = tonic::Request::new(futures::stream::iter(upload_parts("", FILE, &read_fixture(FILE))));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{client_span}-01").parse().unwrap(),
    );
    let response = IngestServiceClient::new(mesh.channel(Process::Ingest).unwrap())
        .upload_media(request)
        .await
        .unwrap()
        .into_inner();
    let job_ids: Vec<String> = response.jobs.iter().map(|j| j.id.clone()).collect();
    let kinds: Vec<&str> = response.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["media.probe", "media.thumbnails", "inference.describe_image"]);
    // Which service runs each job.
    let worker_of: HashMap<&str, &str> = response
        .jobs
        .iter()
        .map(|j| {
            let service = if j.kind.starts_with("inference.") {
                "mediamesh-inference"
            } else {
                "mediamesh-media"
            };
            (j.id.as_str(), service)
        })
        .collect();
    let mut jobs = mesh.jobs();
    for id in &job_ids {
        let done = wait_job(&mut jobs, id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{id}: {:?}", done.error);
        // The job names its trace (the console links it to the tracing UI).
        assert_eq!(done.trace_id, trace_id, "{id}");
    }

    // Wait until every job's attempt span and the report the scheduler applied have arrived,
    // and every span of the trace has its parent.
    let complete = |spans: &[ReceivedSpan]| {
        let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let ids: HashSet<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
        let attempts_and_reports = job_ids.iter().all(|id| {
            [worker_of[id.as_str()], "mediamesh-scheduler"].iter().all(|service| {
                ours.iter()
                    .any(|s| s.service == *service && s.attribute("job_id") == Some(id.as_str()) && s.kind != PRODUCER)
            })
        });
        let model_call = ours.iter().any(|s| s.name == "ai.call");
        attempts_and_reports
            && model_call
            && ours
                .iter()
                .all(|s| s.parent_span_id == client_span || ids.contains(s.parent_span_id.as_str()))
    };
    let spans = receiver
        .wait_for(Duration::from_secs(30), complete)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs_report()));
    let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &ReceivedSpan> = ours.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let parent = |span: &ReceivedSpan| by_id.get(span.parent_span_id.as_str()).copied();

    // Nothing of this upload went into another trace.
    for span in spans.iter().filter(|s| s.trace_id != trace_id) {
        assert!(
            span.attribute("job_id")
                .is_none_or(|id| !job_ids.iter().any(|j| j == id)),
            "a span of our jobs in another trace: {span:?}"
        );
    }

    // Ingest: the upload call, a child of the client's span.
    let upload = ours
        .iter()
        .find(|s| s.service == "mediamesh-ingest" && s.name.ends_with("IngestService/UploadMedia"))
        .unwrap_or_else(|| panic!("no ingest upload span: {ours:#?}"));
    assert_eq!(upload.kind, SERVER);
    assert_eq!(upload.parent_span_id, client_span);

    // Scheduler: the job-creating call ingest made, inside the upload.
    let create = ours
        .iter()
        .find(|s| s.service == "mediamesh-scheduler" && s.kind == SERVER)
        .unwrap_or_else(|| panic!("no scheduler server span: {ours:#?}"));
    assert!(
        ancestors(create, &parent).any(|a| a.span_id == upload.span_id),
        "the scheduler's call is not under the upload: {create:?}"
    );

    for id in &job_ids {
        // The dispatch, later and from another task, still joins the trace under the call
        // that created the job.
        let dispatch = ours
            .iter()
            .find(|s| s.name == "dispatch" && s.attribute("job_id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no dispatch span for {id}: {ours:#?}"));
        assert_eq!(dispatch.service, "mediamesh-scheduler");
        assert_eq!(dispatch.kind, PRODUCER);
        assert!(
            ancestors(dispatch, &parent).any(|a| a.span_id == create.span_id),
            "dispatch of {id} is not under the scheduler call: {dispatch:?}"
        );
        // The worker's attempt: a child of the dispatch, across JetStream.
        let attempt = ours
            .iter()
            .find(|s| s.service == worker_of[id.as_str()] && s.attribute("job_id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no worker span for {id}: {ours:#?}"));
        assert_eq!(attempt.kind, CONSUMER);
        assert_eq!(attempt.parent_span_id, dispatch.span_id, "{attempt:?}");
        assert_eq!(attempt.attribute("outcome"), Some("OK"));
        assert_eq!(attempt.attribute("tenant"), Some("default"));
        let kind = attempt.attribute("kind").unwrap_or_default();
        assert!(
            kind.starts_with("media.") || kind.starts_with("inference."),
            "{attempt:?}"
        );
        // The model call, under the inference attempt.
        if kind.starts_with("inference.") {
            let call = ours
                .iter()
                .find(|s| s.name == "ai.call" && ancestors(s, &parent).any(|a| a.span_id == attempt.span_id))
                .unwrap_or_else(|| panic!("no provider call under {id}'s attempt: {ours:#?}"));
            assert_eq!(call.service, "mediamesh-inference");
            assert_eq!(call.kind, CLIENT);
            assert_eq!(call.attribute("task"), Some("describe_image"));
            assert_eq!(call.attribute("outcome"), Some("ok"));
            assert_eq!(call.attribute("provider"), Some("default"));
        }
        // The report, applied by the scheduler under the attempt.
        let applied = ours
            .iter()
            .find(|s| {
                s.name == "apply_event"
                    && s.attribute("job_id") == Some(id.as_str())
                    && parent(s).is_some_and(|p| p.span_id == attempt.span_id)
            })
            .unwrap_or_else(|| panic!("no report of {id} applied under its attempt: {ours:#?}"));
        assert_eq!(applied.service, "mediamesh-scheduler");
    }

    // The media worker's JSON log lines carry the trace and the job.
    let log = std::fs::read_to_string(mesh.log_path(Process::Media(0))).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines:\n{log}");
    let traced: Vec<&serde_json::Value> = lines.iter().filter(|l| l["trace_id"] == trace_id.as_str()).collect();
    assert!(
        traced.iter().any(
            |l| l["job_id"].as_str().is_some_and(|id| job_ids.iter().any(|j| j == id))
                && l["span_id"].as_str().is_some_and(|s| s.len() == 16)
        ),
        "no media log line with the trace and a job id:\n{log}"
    );
    mesh.shutdown().await.unwrap();
}

fn ancestors<'a>(
    span: &'a ReceivedSpan,
    parent: &'a impl Fn(&ReceivedSpan) -> Option<&'a ReceivedSpan>,
) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
    std::iter::successors(parent(span), move |s| parent(s))
}

fn rand_u64() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) | 1
}
