//! `IngestService`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mediamesh_blob::Blob;
use mediamesh_core::{Error, JobKind, MediaKind, parse_id, tenant_of};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::ingest_service_server::IngestService;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_proto::v1::scheduler_internal_service_client::SchedulerInternalServiceClient;
use mediamesh_server::auth::AuthedChannel;
use mediamesh_store::{MediaRow, NewMedia, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::quota::{QuotaBook, Quotas, too_big};
use crate::upload::{self, Staged};
use crate::{IngestConfig, Pipelines};

const DOWNLOAD_CHUNK: usize = 256 * 1024;
/// Jobs in one `SubmitJobs` call, at most.
const MAX_SUBMIT: usize = 1000;

/// A request to the scheduler on behalf of `tenant`, carrying the trace context.
pub fn forward<T>(tenant: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = tenant.parse() {
        request.metadata_mut().insert(mediamesh_core::TENANT_METADATA, value);
    }
    for (key, value) in mediamesh_telemetry::current_context_headers() {
        if let (Ok(key), Ok(value)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

#[derive(Clone)]
pub struct IngestApi {
    /// Uploads by media kind and outcome, and upload bytes.
    metrics: Option<(mediamesh_server::metrics::Counter, mediamesh_server::metrics::Counter)>,
    store: Store,
    blob: Blob,
    jobs: JobServiceClient<AuthedChannel>,
    internal: SchedulerInternalServiceClient<AuthedChannel>,
    config: IngestConfig,
    quotas: QuotaBook,
    pipelines: Pipelines,
    /// The `inference.*` kinds some configured provider serves.
    ai_kinds: Arc<HashSet<JobKind>>,
}

/// Why an inference job is not created.
pub fn no_provider(kind: JobKind) -> String {
    format!("no AI provider is configured for {kind} (set MM_OPENAI_API_KEY, MM_OPENAI_BASE_URL or MM_CONFIG)")
}

impl IngestApi {
    pub fn new(
        store: Store,
        blob: Blob,
        scheduler: AuthedChannel,
        config: IngestConfig,
        pipelines: Pipelines,
        ai_kinds: HashSet<JobKind>,
        quotas: QuotaBook,
    ) -> Self {
        Self {
            quotas,
            store,
            blob,
            jobs: JobServiceClient::new(scheduler.clone()),
            internal: SchedulerInternalServiceClient::new(scheduler),
            config,
            pipelines,
            ai_kinds: Arc::new(ai_kinds),
            metrics: None,
        }
    }

    /// Counts uploads into `registry`.
    pub fn with_metrics(mut self, registry: &mediamesh_server::metrics::Registry) -> Self {
        self.metrics = Some((
            registry.counter(
                "mediamesh_ingest_uploads_total",
                "Uploads, by media kind and outcome (OK or an error code)",
                &["kind", "outcome"],
            ),
            registry.counter(
                "mediamesh_ingest_upload_bytes_total",
                "Bytes of accepted uploads, by media kind",
                &["kind"],
            ),
        ));
        self
    }

    /// Checks that each spec's media belongs to the tenant, then has the scheduler commit all
    /// the jobs in one transaction.
    async fn submit(&self, tenant: &str, specs: Vec<pb::JobSpec>) -> Result<Vec<pb::SubmitJobResponse>, Status> {
        let quotas = self.quotas.of(tenant).await?;
        self.quotas.take_submit(tenant, &quotas)?;
        let mut seen = std::collections::HashSet::new();
        for (i, spec) in specs.iter().enumerate() {
            mediamesh_core::JobKind::parse(&spec.kind).map_err(|e| e.context(&format!("jobs[{i}]")))?;
            if quotas.payload_bytes > 0 && spec.payload_json.len() as u64 > quotas.payload_bytes {
                return Err(too_big(
                    tenant,
                    "payload_bytes",
                    quotas.payload_bytes,
                    &format!("jobs[{i}]: payload_json ({} bytes)", spec.payload_json.len()),
                )
                .into());
            }
            if !spec.media_id.is_empty() {
                let media_id = parse_id("media_id", &spec.media_id).map_err(|e| e.context(&format!("jobs[{i}]")))?;
                if seen.insert(media_id) {
                    self.store
                        .get_media(tenant, media_id)
                        .await
                        .map_err(Error::from)?
                        .ok_or_else(|| Error::not_found(format!("jobs[{i}]: media {media_id} not found")))?;
                }
            }
        }
        let count = specs.len();
        let request = pb::CreateJobsRequest {
            tenant: tenant.to_owned(),
            jobs: specs,
            quota: Some(quotas.job_quota()),
        };
        let created = self
            .internal
            .clone()
            .create_jobs(forward(tenant, request))
            .await?
            .into_inner();
        if created.jobs.len() != count {
            return Err(Error::internal("scheduler created a different number of jobs").into());
        }
        Ok(created
            .jobs
            .into_iter()
            .map(|c| pb::SubmitJobResponse {
                job: c.job,
                existing: c.existing,
            })
            .collect())
    }

    /// The most an upload of this tenant may be: the service's limit, the tenant's upload
    /// quota, and what is left of its stored bytes; each with its own error.
    async fn upload_limit(&self, tenant: &str, quotas: &Quotas) -> Result<upload::Limit, Status> {
        let max = self.config.max_upload_bytes;
        let mut limit = upload::Limit {
            bytes: max,
            error: Error::new(
                mediamesh_core::ErrorCode::TooLarge,
                format!("upload is over the {max} byte limit"),
            ),
        };
        if quotas.upload_bytes > 0 && quotas.upload_bytes < limit.bytes {
            limit = upload::Limit {
                bytes: quotas.upload_bytes,
                error: too_big(tenant, "upload_bytes", quotas.upload_bytes, "the upload"),
            };
        }
        if quotas.stored_bytes > 0 {
            let stored = u64::try_from(self.store.stored_bytes(tenant).await.map_err(Error::from)?).unwrap_or(0);
            let left = quotas.stored_bytes.saturating_sub(stored);
            if left < limit.bytes {
                limit = upload::Limit {
                    bytes: left,
                    error: too_big(
                        tenant,
                        "stored_bytes",
                        quotas.stored_bytes,
                        &format!("the upload beside the {stored} bytes stored"),
                    ),
                };
            }
        }
        Ok(limit)
    }

    async fn media_jobs(&self, tenant: &str, media_id: Uuid) -> Result<Vec<pb::Job>, Status> {
        let request = pb::ListJobsRequest {
            media_id: media_id.to_string(),
            page_size: 1000,
            ..Default::default()
        };
        Ok(self
            .jobs
            .clone()
            .list_jobs(forward(tenant, request))
            .await?
            .into_inner()
            .jobs)
    }

    /// Validates what was staged and records it. Errors leave nothing behind.
    async fn finish_upload(
        &self,
        tenant: &str,
        staged: &Staged,
        quotas: &Quotas,
    ) -> Result<pb::UploadMediaResponse, Status> {
        if staged.bytes == 0 {
            return Err(Error::bad_input("upload is empty").into());
        }
        let sniffed = mediamesh_sniff::sniff(&staged.head).ok_or_else(|| {
            Error::bad_input(format!(
                "content is not a recognised image, audio or video format (declared {:?})",
                staged.declared_type
            ))
        })?;
        upload::check_declared(&staged.declared_type, sniffed.content_type, sniffed.kind)?;
        let (mut kinds, mut skipped) = self.runnable(self.pipelines.kinds_for(sniffed.kind, &staged.category)?);
        let extract_schema = match (&staged.extract_schema, sniffed.kind) {
            (None, _) => None,
            (Some(_), MediaKind::Image) => {
                return Err(Error::bad_input(
                    "extract_schema_json needs audio or a video: fields are extracted from the transcript",
                )
                .into());
            }
            (Some(schema), _) => {
                let needed = [JobKind::InferenceTranscribe, JobKind::InferenceExtract];
                if let Some(missing) = needed.iter().find(|k| !self.ai_kinds.contains(k)) {
                    skipped.push(pb::SkippedJob {
                        kind: JobKind::InferenceExtract.as_str().to_owned(),
                        reason: no_provider(*missing),
                    });
                    None
                } else {
                    let transcribe = JobKind::InferenceTranscribe.as_str().to_owned();
                    if !kinds.contains(&transcribe) {
                        kinds.push(transcribe);
                    }
                    Some(schema.clone())
                }
            }
        };
        let (mut width, mut height) = (None, None);
        if sniffed.kind == MediaKind::Image {
            let (w, h) = mediamesh_sniff::image_dimensions(&staged.head)?;
            mediamesh_sniff::check_pixels(w, h, self.config.max_pixels)?;
            width = i32::try_from(w).ok();
            height = i32::try_from(h).ok();
        }
        if mediamesh_sniff::is_truncated(sniffed.format, &staged.tail) {
            return Err(Error::bad_input(format!(
                "{} is truncated: the file ends before its end marker",
                sniffed.format
            ))
            .into());
        }
        if let Some(existing) = self
            .store
            .media_by_sha256(tenant, &staged.sha256)
            .await
            .map_err(Error::from)?
        {
            return self.deduplicated(tenant, existing).await;
        }
        let media_id = Uuid::now_v7();
        let key = mediamesh_blob::original_key(&media_id);
        self.blob.rename(&staged.key, &key).await.map_err(Error::from)?;
        let new = NewMedia {
            id: media_id,
            tenant: tenant.to_owned(),
            filename: staged.filename.clone(),
            content_type: sniffed.content_type.to_owned(),
            kind: sniffed.kind.as_str().to_owned(),
            bytes: i64::try_from(staged.bytes).unwrap_or(i64::MAX),
            sha256: staged.sha256.clone(),
            width,
            height,
            blob_key: key.clone(),
            parent_id: None,
            origin: None,
        };
        let max_stored = i64::try_from(quotas.stored_bytes).unwrap_or(i64::MAX);
        let (row, inserted) = match self.store.insert_media_within(&new, max_stored).await {
            Ok(Ok(result)) => result,
            Ok(Err(stored)) => {
                let _ = self.blob.delete(&key).await;
                return Err(too_big(
                    tenant,
                    "stored_bytes",
                    quotas.stored_bytes,
                    &format!("storing {} more bytes beside the {stored} stored", staged.bytes),
                )
                .into());
            }
            Err(err) => {
                let _ = self.blob.delete(&key).await;
                return Err(Error::from(err).into());
            }
        };
        if !inserted {
            // The same bytes arrived twice at once; the other upload won.
            let _ = self.blob.delete(&key).await;
            return self.deduplicated(tenant, row).await;
        }
        let specs = pipeline(&kinds, media_id);
        let jobs = if specs.is_empty() {
            Vec::new()
        } else {
            let request = pb::CreateJobsRequest {
                tenant: tenant.to_owned(),
                jobs: specs,
                quota: Some(quotas.job_quota()),
            };
            match self.internal.clone().create_jobs(forward(tenant, request)).await {
                Ok(response) => response.into_inner().jobs.into_iter().filter_map(|c| c.job).collect(),
                Err(status) => {
                    tracing::error!(error = %status, media_id = %media_id, "creating pipeline jobs failed; undoing upload");
                    let _ = self.store.delete_media(media_id).await;
                    let _ = self.blob.delete(&key).await;
                    return Err(status);
                }
            }
        };
        let mut jobs = jobs;
        if let Some(schema) = extract_schema {
            match self.create_extract(tenant, media_id, &jobs, schema, quotas).await {
                Ok(job) => jobs.push(job),
                Err(status) => {
                    tracing::error!(error = %status, media_id = %media_id, "creating the extract job failed");
                    skipped.push(pb::SkippedJob {
                        kind: JobKind::InferenceExtract.as_str().to_owned(),
                        reason: format!("could not be created: {}", status.message()),
                    });
                }
            }
        }
        tracing::info!(media_id = %media_id, content_type = sniffed.content_type, bytes = staged.bytes, jobs = jobs.len(), skipped = skipped.len(), "media uploaded");
        Ok(pb::UploadMediaResponse {
            media: Some(media_to_proto(&row, &[])),
            jobs,
            deduplicated: false,
            skipped,
        })
    }

    async fn deduplicated(&self, tenant: &str, row: MediaRow) -> Result<pb::UploadMediaResponse, Status> {
        let jobs = self.media_jobs(tenant, row.id).await?;
        tracing::info!(media_id = %row.id, "same bytes uploaded before; returning the earlier media");
        Ok(pb::UploadMediaResponse {
            media: Some(media_to_proto(&row, &jobs)),
            jobs,
            deduplicated: true,
            skipped: Vec::new(),
        })
    }

    /// Splits a pipeline into the kinds that can run and the inference kinds no provider is
    /// configured for (with the reason).
    fn runnable(&self, kinds: Vec<String>) -> (Vec<String>, Vec<pb::SkippedJob>) {
        let mut run = Vec::with_capacity(kinds.len());
        let mut skipped = Vec::new();
        for name in kinds {
            match JobKind::parse(&name) {
                Ok(kind) if kind.is_inference() && !self.ai_kinds.contains(&kind) => {
                    skipped.push(pb::SkippedJob {
                        kind: name,
                        reason: no_provider(kind),
                    });
                }
                _ => run.push(name),
            }
        }
        (run, skipped)
    }

    /// The upload's `inference.extract` job, after its transcription.
    async fn create_extract(
        &self,
        tenant: &str,
        media_id: Uuid,
        jobs: &[pb::Job],
        schema: serde_json::Value,
        quotas: &Quotas,
    ) -> Result<pb::Job, Status> {
        let transcribe = jobs
            .iter()
            .find(|job| job.kind == JobKind::InferenceTranscribe.as_str())
            .ok_or_else(|| Error::internal("the transcription job is missing"))?;
        let kind = JobKind::InferenceExtract.as_str();
        let spec = pb::JobSpec {
            kind: kind.to_owned(),
            media_id: media_id.to_string(),
            payload_json: serde_json::json!({ "schema": schema }).to_string(),
            idempotency_key: format!("pipeline:{media_id}:{kind}"),
            depends_on: vec![transcribe.id.clone()],
            ..Default::default()
        };
        let request = pb::CreateJobsRequest {
            tenant: tenant.to_owned(),
            jobs: vec![spec],
            quota: Some(quotas.job_quota()),
        };
        self.internal
            .clone()
            .create_jobs(forward(tenant, request))
            .await?
            .into_inner()
            .jobs
            .into_iter()
            .find_map(|c| c.job)
            .ok_or_else(|| Error::internal("the scheduler created no extract job").into())
    }
}

/// The pipeline's jobs on a new media; the idempotency key makes a retried upload harmless.
fn pipeline(kinds: &[String], media_id: Uuid) -> Vec<pb::JobSpec> {
    kinds
        .iter()
        .map(|kind| pb::JobSpec {
            kind: kind.clone(),
            media_id: media_id.to_string(),
            idempotency_key: format!("pipeline:{media_id}:{kind}"),
            ..Default::default()
        })
        .collect()
}

fn derivatives(jobs: &[pb::Job]) -> Vec<pb::Output> {
    jobs.iter()
        .filter(|job| job.state == pb::JobState::Succeeded as i32)
        .filter_map(|job| job.result.as_ref())
        .flat_map(|result| result.outputs.iter().cloned())
        .collect()
}

fn media_to_proto(row: &MediaRow, jobs: &[pb::Job]) -> pb::Media {
    row.to_proto(derivatives(jobs))
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadMediaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn upload_media(
        &self,
        request: Request<Streaming<pb::UploadMediaRequest>>,
    ) -> Result<Response<pb::UploadMediaResponse>, Status> {
        let tenant = tenant_of(&request);
        let quotas = self.quotas.of(&tenant).await?;
        self.quotas.take_submit(&tenant, &quotas)?;
        let limit = self.upload_limit(&tenant, &quotas).await?;
        let key = format!("uploads/{}", Uuid::new_v4());
        let staged = match upload::receive(request.into_inner(), &self.blob, key, &limit).await {
            Ok(staged) => staged,
            Err(err) => {
                if let Some((uploads, _)) = &self.metrics {
                    uploads.inc(&["unknown", err.code.as_str()]);
                }
                return Err(err.into());
            }
        };
        let result = self.finish_upload(&tenant, &staged, &quotas).await;
        if let Some((uploads, bytes)) = &self.metrics {
            // The sniffed kind (a client's category or content type could be anything).
            let kind = result
                .as_ref()
                .ok()
                .and_then(|r| r.media.as_ref())
                .and_then(|m| pb::MediaKind::try_from(m.kind).ok())
                .map_or("unknown", |k| k.as_str_name());
            match &result {
                Ok(_) => {
                    uploads.inc(&[kind, "OK"]);
                    bytes.inc_by(&[kind], staged.bytes as f64);
                }
                Err(status) => uploads.inc(&[kind, mediamesh_core::ErrorCode::from_status(status).as_str()]),
            }
        }
        // On success the staging blob was renamed or is a duplicate; either way it goes.
        let _ = self.blob.delete(&staged.key).await;
        if let Err(status) = &result {
            tracing::info!(code = %mediamesh_core::ErrorCode::from_status(status), error = status.message(), filename = %staged.filename, "upload refused");
        }
        result.map(Response::new)
    }

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let spec = request
            .into_inner()
            .job
            .ok_or_else(|| Error::bad_input("job is required"))?;
        let mut created = self.submit(&tenant, vec![spec]).await?;
        let created = created
            .pop()
            .ok_or_else(|| Error::internal("scheduler created no job"))?;
        Ok(Response::new(created))
    }

    async fn submit_jobs(
        &self,
        request: Request<pb::SubmitJobsRequest>,
    ) -> Result<Response<pb::SubmitJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        let specs = request.into_inner().jobs;
        if specs.is_empty() {
            return Err(Error::bad_input("jobs is empty").into());
        }
        if specs.len() > MAX_SUBMIT {
            return Err(Error::bad_input(format!("{} jobs in one request; at most {MAX_SUBMIT}", specs.len())).into());
        }
        let jobs = self.submit(&tenant, specs).await?;
        Ok(Response::new(pb::SubmitJobsResponse { jobs }))
    }

    async fn get_media(&self, request: Request<pb::GetMediaRequest>) -> Result<Response<pb::GetMediaResponse>, Status> {
        let tenant = tenant_of(&request);
        let id = parse_id("media_id", &request.get_ref().media_id)?;
        let row = self
            .store
            .get_media(&tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found(format!("media {id} not found")))?;
        let jobs = self.media_jobs(&tenant, id).await?;
        Ok(Response::new(pb::GetMediaResponse {
            media: Some(media_to_proto(&row, &jobs)),
            jobs,
        }))
    }

    type DownloadMediaStream = DownloadStream;

    async fn download_media(
        &self,
        request: Request<pb::DownloadMediaRequest>,
    ) -> Result<Response<Self::DownloadMediaStream>, Status> {
        let tenant = tenant_of(&request);
        let pb::DownloadMediaRequest { media_id, name } = request.into_inner();
        let id = parse_id("media_id", &media_id)?;
        let row = self
            .store
            .get_media(&tenant, id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found(format!("media {id} not found")))?;
        let (name, key, content_type, bytes) = if name.is_empty() || name == "original" {
            (
                "original".to_owned(),
                row.blob_key.clone(),
                row.content_type.clone(),
                u64::try_from(row.bytes).unwrap_or(0),
            )
        } else {
            let jobs = self.media_jobs(&tenant, id).await?;
            let output = derivatives(&jobs)
                .into_iter()
                .find(|o| o.name == name)
                .ok_or_else(|| Error::not_found(format!("media {id} has no derivative {name:?} (yet)")))?;
            (output.name, output.blob_key, output.content_type, output.bytes)
        };
        let mut source = self.blob.stream(&key).await.map_err(Error::from)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let header = pb::DownloadHeader {
                name,
                content_type,
                bytes,
            };
            let first = pb::DownloadMediaResponse {
                part: Some(pb::download_media_response::Part::Header(header)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while let Some(chunk) = source.next().await {
                match chunk {
                    Ok(chunk) => {
                        for piece in chunk.chunks(DOWNLOAD_CHUNK) {
                            let part = pb::DownloadMediaResponse {
                                part: Some(pb::download_media_response::Part::Chunk(piece.to_vec())),
                            };
                            if tx.send(Ok(part)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(Error::from(err)))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as DownloadStream))
    }
}
