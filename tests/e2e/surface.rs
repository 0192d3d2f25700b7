use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, Service};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::code_of;

/// Every service answers health for itself and its gRPC services, serves reflection, and
/// without an AI provider the inference methods answer UNIMPLEMENTED with the code UNSUPPORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_declared_inference() {
    let mut mesh = Mesh::start().await.unwrap();
    let named = [
        (Service::Ingest, "mediamesh.v1.IngestService"),
        (Service::Scheduler, "mediamesh.v1.JobService"),
        (Service::Media, "mediamesh.v1.MediaService"),
        (Service::Inference, "mediamesh.v1.InferenceService"),
    ];
    for (service, name) in named {
        let mut health = HealthClient::new(mesh.channel(service).unwrap());
        let status = health
            .check(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{name}");

        let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            mesh.channel(service).unwrap(),
        );
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut responses = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            response.message_response
        else {
            panic!("unexpected reflection answer");
        };
        assert!(
            list.service.iter().any(|s| s.name == name),
            "{name} in {:?}",
            list.service
        );
    }

    // The services behind ingest take only calls that carry the internal token.
    let mut direct = mediamesh_proto::v1::inference_service_client::InferenceServiceClient::new(
        mesh.channel(Service::Inference).unwrap(),
    );
    let status = direct
        .transcribe(pb::TranscribeRequest {
            media_id: String::new(),
            language: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(code_of(&status), ErrorCode::Unauthenticated);

    let mut inference = mesh.inference();
    let status = inference
        .transcribe(pb::TranscribeRequest {
            media_id: String::new(),
            language: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(code_of(&status), ErrorCode::Unsupported);

    // MediaService.Probe on inline bytes, and on bad bytes.
    let mut media = mesh.media();
    let probe = media
        .probe(pb::ProbeRequest {
            source: Some(pb::probe_request::Source::Data(mediamesh_testkit::read_fixture(
                "Dragonfly_by_Bolly.jpg",
            ))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((probe.format.as_str(), probe.width, probe.height), ("jpeg", 4224, 3168));
    assert!(probe.progressive, "Dragonfly is a progressive JPEG");
    assert_eq!(probe.color_space, "srgb");
    assert_eq!(probe.phash.len(), 16, "64-bit hash in hex: {:?}", probe.phash);
    assert!(!probe.dominant_colors.is_empty() && probe.dominant_colors.len() <= 5);
    let share: f32 = probe.dominant_colors.iter().map(|c| c.share).sum();
    assert!((share - 1.0).abs() < 0.01, "shares add up: {share}");
    assert!(
        probe
            .dominant_colors
            .iter()
            .all(|c| c.hex.len() == 7 && c.hex.starts_with('#'))
    );
    let status = media
        .probe(pb::ProbeRequest {
            source: Some(pb::probe_request::Source::Data(b"not an image".to_vec())),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);

    // Health follows the dependencies: the scheduler goes NOT_SERVING while NATS is down.
    mesh.nats.stop().await.unwrap();
    let mut health = HealthClient::new(mesh.channel(Service::Scheduler).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scheduler still SERVING without NATS"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    mesh.nats.restart().await.unwrap();
    mediamesh_testkit::wait_serving(mesh.addr(Service::Scheduler), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    mesh.shutdown().await.unwrap();
}
