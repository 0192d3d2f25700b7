//! `JobService` and `InferenceService` on ingest: forward each call to the scheduler or the
//! inference service with the caller's tenant, so a client talks to one address.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use mediamesh_core::tenant_of;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::inference_service_server::InferenceService;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_proto::v1::job_service_server::JobService;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::forward;

#[derive(Clone)]
pub struct JobProxy {
    scheduler: JobServiceClient<Channel>,
    shutdown: CancellationToken,
}

impl JobProxy {
    pub fn new(channel: Channel, shutdown: CancellationToken) -> Self {
        Self {
            scheduler: JobServiceClient::new(channel),
            shutdown,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobProxy {
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .get_job(forward(&tenant, request.into_inner()))
            .await
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .list_jobs(forward(&tenant, request.into_inner()))
            .await
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let tenant = tenant_of(&request);
        let response = self
            .scheduler
            .clone()
            .watch_job(forward(&tenant, request.into_inner()))
            .await?;
        // On shutdown the stream ends with UNAVAILABLE so that the server can drain; the client
        // resumes with the last seq it saw.
        let mut upstream = response.into_inner();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; resume with after_seq"))).await;
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
        Ok(Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as WatchStream
        ))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .cancel_job(forward(&tenant, request.into_inner()))
            .await
    }

    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .retry_job(forward(&tenant, request.into_inner()))
            .await
    }

    async fn retry_jobs(
        &self,
        request: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .retry_jobs(forward(&tenant, request.into_inner()))
            .await
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let tenant = tenant_of(&request);
        self.scheduler
            .clone()
            .get_queue_stats(forward(&tenant, request.into_inner()))
            .await
    }
}

/// `InferenceService` on ingest: forwards each call to the inference service with the caller's
/// tenant and deadline.
#[derive(Clone)]
pub struct InferenceProxy {
    inference: InferenceServiceClient<Channel>,
}

impl InferenceProxy {
    pub fn new(channel: Channel) -> Self {
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
