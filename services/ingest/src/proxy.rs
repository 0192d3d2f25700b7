//! `JobService`, `InferenceService` and `MediaService` on ingest: forward each call to the
//! scheduler, the inference or the media service with the caller's tenant and deadline, so a
//! client talks to one address.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use mediamesh_core::{Error, parse_id, tenant_of};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::inference_service_server::InferenceService;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_proto::v1::job_service_server::JobService;
use mediamesh_proto::v1::media_service_client::MediaServiceClient;
use mediamesh_proto::v1::media_service_server::MediaService;
use mediamesh_server::auth::AuthedChannel;
use mediamesh_store::Store;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::api::forward;

#[derive(Clone)]
pub struct JobProxy {
    scheduler: JobServiceClient<AuthedChannel>,
    shutdown: CancellationToken,
}

impl JobProxy {
    pub fn new(channel: AuthedChannel, shutdown: CancellationToken) -> Self {
        Self {
            scheduler: JobServiceClient::new(channel),
            shutdown,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

impl JobProxy {
    /// Relays a watch stream; on shutdown it ends with UNAVAILABLE so that the server can
    /// drain, and the client resumes from the last seq or cursor it saw.
    /// With a client deadline, the stream ends with DEADLINE_EXCEEDED when it passes.
    fn relay(
        &self,
        mut upstream: tonic::Streaming<pb::WatchJobResponse>,
        deadline: Option<std::time::Duration>,
    ) -> WatchStream {
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let expiry = tokio::time::sleep(deadline.unwrap_or(std::time::Duration::from_secs(u32::MAX.into())));
            tokio::pin!(expiry);
            loop {
                let item = tokio::select! {
                    () = &mut expiry => {
                        let _ = tx.send(Err(Status::deadline_exceeded("the client's deadline passed"))).await;
                        return;
                    }
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; resume from the last seq or cursor"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    item = upstream.next() => item,
                };
                let Some(item) = item else { return };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl JobService for JobProxy {
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        self.scheduler.clone().get_job(onward(request)).await
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.scheduler.clone().list_jobs(onward(request)).await
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let deadline = mediamesh_core::client_timeout(&request);
        let response = self.scheduler.clone().watch_job(onward(request)).await?;
        Ok(Response::new(self.relay(response.into_inner(), deadline)))
    }

    type WatchJobsStream = WatchStream;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let deadline = mediamesh_core::client_timeout(&request);
        let response = self.scheduler.clone().watch_jobs(onward(request)).await?;
        Ok(Response::new(self.relay(response.into_inner(), deadline)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        self.scheduler.clone().cancel_job(onward(request)).await
    }

    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        self.scheduler.clone().retry_job(onward(request)).await
    }

    async fn retry_jobs(
        &self,
        request: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        self.scheduler.clone().retry_jobs(onward(request)).await
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        self.scheduler.clone().get_queue_stats(onward(request)).await
    }
}

/// `InferenceService` on ingest: forwards each call to the inference service with the caller's
/// tenant and deadline.
#[derive(Clone)]
pub struct InferenceProxy {
    inference: InferenceServiceClient<AuthedChannel>,
}

impl InferenceProxy {
    pub fn new(channel: AuthedChannel) -> Self {
        Self {
            inference: InferenceServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        }
    }
}

/// The forwarded request: tenant, trace context and the client's deadline.
fn onward<T>(request: Request<T>) -> Request<T> {
    let tenant = tenant_of(&request);
    let timeout = mediamesh_core::client_timeout(&request);
    let mut onward = forward(&tenant, request.into_inner());
    if let Some(timeout) = timeout {
        onward.set_timeout(timeout);
    }
    onward
}

#[tonic::async_trait]
impl InferenceService for InferenceProxy {
    async fn transcribe(
        &self,
        request: Request<pb::TranscribeRequest>,
    ) -> Result<Response<pb::TranscribeResponse>, Status> {
        self.inference.clone().transcribe(onward(request)).await
    }

    async fn describe_image(
        &self,
        request: Request<pb::DescribeImageRequest>,
    ) -> Result<Response<pb::DescribeImageResponse>, Status> {
        self.inference.clone().describe_image(onward(request)).await
    }

    async fn enhance_image(
        &self,
        request: Request<pb::EnhanceImageRequest>,
    ) -> Result<Response<pb::EnhanceImageResponse>, Status> {
        self.inference.clone().enhance_image(onward(request)).await
    }

    async fn generate_text(
        &self,
        request: Request<pb::GenerateTextRequest>,
    ) -> Result<Response<pb::GenerateTextResponse>, Status> {
        self.inference.clone().generate_text(onward(request)).await
    }

    async fn generate_image(
        &self,
        request: Request<pb::GenerateImageRequest>,
    ) -> Result<Response<pb::GenerateImageResponse>, Status> {
        self.inference.clone().generate_image(onward(request)).await
    }

    async fn extract(&self, request: Request<pb::ExtractRequest>) -> Result<Response<pb::ExtractResponse>, Status> {
        self.inference.clone().extract(onward(request)).await
    }

    async fn get_spend(&self, request: Request<pb::GetSpendRequest>) -> Result<Response<pb::GetSpendResponse>, Status> {
        self.inference.clone().get_spend(onward(request)).await
    }
}

/// `MediaService` on ingest: a probe by media id only for the tenant's own media.
#[derive(Clone)]
pub struct MediaProxy {
    media: MediaServiceClient<AuthedChannel>,
    store: Store,
}

impl MediaProxy {
    pub fn new(channel: AuthedChannel, store: Store) -> Self {
        Self {
            media: MediaServiceClient::new(channel),
            store,
        }
    }
}

#[tonic::async_trait]
impl MediaService for MediaProxy {
    async fn probe(&self, request: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        if let Some(pb::probe_request::Source::MediaId(media_id)) = &request.get_ref().source {
            let tenant = tenant_of(&request);
            let id = parse_id("media_id", media_id)?;
            self.store
                .get_media(&tenant, id)
                .await
                .map_err(Error::from)?
                .ok_or_else(|| Error::not_found(format!("media {id} not found")))?;
        }
        self.media.clone().probe(onward(request)).await
    }
}
