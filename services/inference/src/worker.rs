//! The `inference.*` job kinds for the shared worker loop: parse the payload, run the task,
//! and shape the job result (`outputs`, `metadata` with the answer and its usage, `reused`
//! when the answer came from the cache).

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use mediamesh_bus::JobMessage;
use mediamesh_bus::worker::{Attempt, Executor};
use mediamesh_core::{Error, JobKind};
use mediamesh_gateway::{ImageRequest, TextRequest, Usage};
use mediamesh_store::MediaRow;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::tasks::{Inference, Scope};

pub struct InferenceExecutor {
    pub inference: Arc<Inference>,
}

impl Executor for InferenceExecutor {
    fn execute(&self, job: JobMessage, attempt: Attempt) -> BoxFuture<'static, Result<Value, Error>> {
        let inference = Arc::clone(&self.inference);
        async move { execute(&inference, &job, attempt).await }.boxed()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TranscribePayload {
    language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PromptPayload {
    prompt: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TextPayload {
    prompt: String,
    tone: Option<String>,
    audience: Option<String>,
    max_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ImagePayload {
    prompt: String,
    size: Option<String>,
    style: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExtractPayload {
    /// A JSON Schema object, or a string holding one.
    schema: Value,
    text: Option<String>,
}

fn payload<T: for<'de> Deserialize<'de> + Default>(kind: JobKind, value: &Value) -> Result<T, Error> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value.clone()).map_err(|e| Error::bad_input(format!("{kind} payload: {e}")))
}

fn need_media(kind: JobKind, media_id: Option<Uuid>) -> Result<Uuid, Error> {
    media_id.ok_or_else(|| Error::bad_input(format!("job kind {kind} needs a media_id")))
}

fn usage(usage: &Usage, cached: bool) -> Value {
    json!({
        "provider": usage.provider,
        "model": usage.model,
        "tokens_in": usage.tokens_in,
        "tokens_out": usage.tokens_out,
        "cost_usd": if cached { 0.0 } else { usage.cost_usd },
        "calls": if cached { 0 } else { usage.calls },
        "cached": cached,
    })
}

fn media_output(name: &str, row: &MediaRow) -> Value {
    json!({
        "name": name,
        "blob_key": row.blob_key,
        "content_type": row.content_type,
        "width": row.width,
        "height": row.height,
        "bytes": row.bytes,
        "media_id": row.id,
    })
}

async fn execute(inference: &Inference, job: &JobMessage, attempt: Attempt) -> Result<Value, Error> {
    let kind = JobKind::parse(&job.kind).map_err(|_| Error::unsupported(format!("unknown job kind {:?}", job.kind)))?;
    let scope = Scope {
        tenant: job.tenant.clone(),
        job_id: Some(job.job_id),
        attempt: job.attempt,
        cancel: attempt.cancel,
        deadline: attempt.deadline,
        report_progress: true,
    };
    let (outputs, metadata, reused) = match kind {
        JobKind::InferenceTranscribe => {
            let p: TranscribePayload = payload(kind, &job.payload)?;
            let media_id = need_media(kind, job.media_id)?;
            let answer = inference.transcribe(&scope, media_id, p.language.as_deref()).await?;
            let t = &answer.value;
            let key = mediamesh_blob::derivative_key(&media_id, "transcript", "json");
            let bytes = inference.blob.size(&key).await.map_err(Error::from)?.unwrap_or(0);
            let outputs = vec![json!({
                "name": "transcript",
                "blob_key": key,
                "content_type": "application/json",
                "bytes": bytes,
            })];
            let metadata = json!({
                "text": t.text,
                "language": t.language,
                "duration_s": t.duration_s,
                "segments": t.segments.len(),
                "usage": usage(&t.usage, answer.cached),
            });
            (outputs, metadata, answer.cached)
        }
        JobKind::InferenceDescribeImage => {
            let p: PromptPayload = payload(kind, &job.payload)?;
            let media_id = need_media(kind, job.media_id)?;
            let answer = inference.describe_image(&scope, media_id, p.prompt.as_deref()).await?;
            let d = &answer.value;
            let metadata = json!({
                "caption": d.caption,
                "tags": d.tags,
                "objects": d.objects,
                "scene": d.scene,
                "usage": usage(&d.usage, answer.cached),
            });
            (Vec::new(), metadata, answer.cached)
        }
        JobKind::InferenceEnhanceImage => {
            let p: PromptPayload = payload(kind, &job.payload)?;
            let media_id = need_media(kind, job.media_id)?;
            let answer = inference.enhance_image(&scope, media_id, p.prompt.as_deref()).await?;
            let (row, u) = &answer.value;
            let metadata = json!({
                "media_id": row.id,
                "parent_id": media_id,
                "origin": row.origin,
                "usage": usage(u, answer.cached),
            });
            (vec![media_output("enhanced", row)], metadata, answer.cached)
        }
        JobKind::InferenceGenerateText => {
            let p: TextPayload = payload(kind, &job.payload)?;
            let request = TextRequest {
                prompt: p.prompt,
                tone: p.tone,
                audience: p.audience,
                max_tokens: p.max_tokens,
            };
            let answer = inference.generate_text(&scope, &request).await?;
            let metadata = json!({
                "text": answer.value.text,
                "usage": usage(&answer.value.usage, answer.cached),
            });
            (Vec::new(), metadata, answer.cached)
        }
        JobKind::InferenceGenerateImage => {
            let p: ImagePayload = payload(kind, &job.payload)?;
            let request = ImageRequest {
                prompt: p.prompt,
                size: p.size,
                style: p.style,
            };
            let answer = inference.generate_image(&scope, &request).await?;
            let (row, out) = &answer.value;
            let metadata = json!({
                "media_id": row.id,
                "revised_prompt": out.revised_prompt,
                "usage": usage(&out.usage, answer.cached),
            });
            (vec![media_output("generated", row)], metadata, answer.cached)
        }
        JobKind::InferenceExtract => {
            let p: ExtractPayload = payload(kind, &job.payload)?;
            let schema = match p.schema {
                Value::String(text) => serde_json::from_str(&text)
                    .map_err(|e| Error::bad_input(format!("{kind} payload: schema is not JSON: {e}")))?,
                other => other,
            };
            let answer = inference
                .extract(&scope, job.media_id, p.text.as_deref(), &schema)
                .await?;
            let metadata = json!({
                "fields": answer.value.value,
                "usage": usage(&answer.value.usage, answer.cached),
            });
            (Vec::new(), metadata, answer.cached)
        }
        other => return Err(Error::unsupported(format!("the inference worker does not run {other}"))),
    };
    Ok(json!({ "outputs": outputs, "metadata": metadata, "reused": reused }))
}
