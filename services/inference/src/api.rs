//! `InferenceService`: the tasks answered in the call, for the caller's tenant. The client's
//! deadline (`grpc-timeout`) bounds the work; without one a call gets five minutes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mediamesh_core::{Error, client_timeout, parse_id, tenant_of};
use mediamesh_gateway::{ImageRequest, Task, TextRequest, Usage};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::inference_service_server::InferenceService;
use mediamesh_store::MediaRow;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::tasks::{Inference, Scope};

/// A call without a client deadline gets this long.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

pub struct InferenceApi {
    inference: Arc<Inference>,
}

impl InferenceApi {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self { inference }
    }
}

/// The scope of a call; the cancel token fires when the client goes away (the handler's
/// future is dropped).
fn scope<T>(request: &Request<T>) -> (Scope, tokio_util::sync::DropGuard) {
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let timeout = client_timeout(request).unwrap_or(DEFAULT_CALL_TIMEOUT);
    let scope = Scope {
        tenant: tenant_of(request),
        job_id: None,
        attempt: 0,
        cancel,
        deadline: std::time::Instant::now() + timeout,
        report_progress: false,
    };
    (scope, guard)
}

fn usage(usage: &Usage, cached: bool) -> pb::AiUsage {
    pb::AiUsage {
        provider: usage.provider.clone(),
        model: usage.model.clone(),
        tokens_in: usage.tokens_in,
        tokens_out: usage.tokens_out,
        cost_usd: if cached { 0.0 } else { usage.cost_usd },
        calls: if cached { 0 } else { usage.calls },
        cached,
    }
}

fn media_to_proto(row: &MediaRow) -> pb::Media {
    row.to_proto(Vec::new())
}

fn opt(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

#[tonic::async_trait]
impl InferenceService for InferenceApi {
    async fn transcribe(
        &self,
        request: Request<pb::TranscribeRequest>,
    ) -> Result<Response<pb::TranscribeResponse>, Status> {
        self.inference.require(Task::Transcribe)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let media_id = parse_id("media_id", &r.media_id)?;
        let answer = self.inference.transcribe(&scope, media_id, Some(&r.language)).await?;
        let t = answer.value;
        Ok(Response::new(pb::TranscribeResponse {
            usage: Some(usage(&t.usage, answer.cached)),
            text: t.text,
            language: t.language,
            duration_s: t.duration_s.unwrap_or(0.0),
            segments: t
                .segments
                .into_iter()
                .map(|s| pb::TranscriptSegment {
                    start_s: s.start_s,
                    end_s: s.end_s,
                    text: s.text,
                })
                .collect(),
        }))
    }

    async fn describe_image(
        &self,
        request: Request<pb::DescribeImageRequest>,
    ) -> Result<Response<pb::DescribeImageResponse>, Status> {
        self.inference.require(Task::DescribeImage)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let media_id = parse_id("media_id", &r.media_id)?;
        let answer = self
            .inference
            .describe_image(&scope, media_id, opt(r.prompt).as_deref())
            .await?;
        let d = answer.value;
        Ok(Response::new(pb::DescribeImageResponse {
            usage: Some(usage(&d.usage, answer.cached)),
            caption: d.caption,
            tags: d.tags,
            objects: d
                .objects
                .into_iter()
                .map(|o| pb::DetectedObject {
                    name: o.name,
                    confidence: o.confidence,
                    count: o.count,
                })
                .collect(),
            scene: d.scene,
        }))
    }

    async fn enhance_image(
        &self,
        request: Request<pb::EnhanceImageRequest>,
    ) -> Result<Response<pb::EnhanceImageResponse>, Status> {
        self.inference.require(Task::EnhanceImage)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let media_id = parse_id("media_id", &r.media_id)?;
        let answer = self
            .inference
            .enhance_image(&scope, media_id, opt(r.prompt).as_deref())
            .await?;
        let (row, u) = &answer.value;
        Ok(Response::new(pb::EnhanceImageResponse {
            media: Some(media_to_proto(row)),
            usage: Some(usage(u, answer.cached)),
        }))
    }

    async fn generate_text(
        &self,
        request: Request<pb::GenerateTextRequest>,
    ) -> Result<Response<pb::GenerateTextResponse>, Status> {
        self.inference.require(Task::GenerateText)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let request = TextRequest {
            prompt: r.prompt,
            tone: opt(r.tone),
            audience: opt(r.audience),
            max_tokens: (r.max_tokens > 0).then_some(r.max_tokens),
        };
        let answer = self.inference.generate_text(&scope, &request).await?;
        Ok(Response::new(pb::GenerateTextResponse {
            usage: Some(usage(&answer.value.usage, answer.cached)),
            text: answer.value.text,
        }))
    }

    async fn generate_image(
        &self,
        request: Request<pb::GenerateImageRequest>,
    ) -> Result<Response<pb::GenerateImageResponse>, Status> {
        self.inference.require(Task::GenerateImage)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let request = ImageRequest {
            prompt: r.prompt,
            size: opt(r.size),
            style: opt(r.style),
        };
        let answer = self.inference.generate_image(&scope, &request).await?;
        let (row, out) = &answer.value;
        Ok(Response::new(pb::GenerateImageResponse {
            media: Some(media_to_proto(row)),
            revised_prompt: out.revised_prompt.clone().unwrap_or_default(),
            usage: Some(usage(&out.usage, answer.cached)),
        }))
    }

    async fn extract(&self, request: Request<pb::ExtractRequest>) -> Result<Response<pb::ExtractResponse>, Status> {
        self.inference.require(Task::Extract)?;
        let (scope, _guard) = scope(&request);
        let r = request.into_inner();
        let media_id = if r.media_id.is_empty() {
            None
        } else {
            Some(parse_id("media_id", &r.media_id)?)
        };
        if r.schema_json.trim().is_empty() {
            return Err(Error::bad_input("schema_json is required").into());
        }
        let schema: serde_json::Value = serde_json::from_str(&r.schema_json)
            .map_err(|e| Error::bad_input(format!("schema_json is not JSON: {e}")))?;
        let answer = self
            .inference
            .extract(&scope, media_id, opt(r.text).as_deref(), &schema)
            .await?;
        Ok(Response::new(pb::ExtractResponse {
            fields_json: answer.value.value.to_string(),
            usage: Some(usage(&answer.value.usage, answer.cached)),
        }))
    }

    async fn get_spend(&self, request: Request<pb::GetSpendRequest>) -> Result<Response<pb::GetSpendResponse>, Status> {
        let tenant = tenant_of(&request);
        let days = match request.into_inner().days {
            0 => 30,
            n => n.min(366),
        };
        let ledger = &self.inference.ledger;
        let since = Utc::now() - chrono::Duration::days(i64::from(days) - 1);
        let since = since.date_naive().and_hms_opt(0, 0, 0).map_or(since, |d| d.and_utc());
        let rows = self
            .inference
            .store
            .ai_spend_by_day(&tenant, since)
            .await
            .map_err(Error::from)?;
        let (today_usd, month_usd) = ledger.spend(&tenant).await?;
        let budgets = ledger.budgets(&tenant).await?;
        Ok(Response::new(pb::GetSpendResponse {
            lines: rows
                .into_iter()
                .map(|r| pb::SpendLine {
                    day: r.day.to_string(),
                    provider: r.provider,
                    model: r.model,
                    calls: u64::try_from(r.calls).unwrap_or(0),
                    failed_calls: u64::try_from(r.failed).unwrap_or(0),
                    tokens_in: u64::try_from(r.tokens_in).unwrap_or(0),
                    tokens_out: u64::try_from(r.tokens_out).unwrap_or(0),
                    cost_usd: r.cost_usd,
                })
                .collect(),
            today_usd,
            month_usd,
            daily_budget_usd: budgets.daily_usd.max(0.0),
            monthly_budget_usd: budgets.monthly_usd.max(0.0),
        }))
    }
}
