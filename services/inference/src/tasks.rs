//! The AI tasks, shared by the `inference.*` jobs and the synchronous `InferenceService`:
//! read the media (checking that it is the caller's), look in the cache, call the gateway,
//! store what came back (a transcript next to the media, an edited or generated image as a
//! new media linked to its original) and report progress stages.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mediamesh_blob::Blob;
use mediamesh_bus::{Bus, Update};
use mediamesh_core::{Error, ErrorCode, MediaKind};
use mediamesh_gateway::{
    AudioIn, Call, Description, Extracted, Gateway, ImageIn, ImageOut, ImageRequest, Segment, Task, TextOut,
    TextRequest, Transcript, Usage,
};
use mediamesh_store::{MediaRow, NewMedia, Store};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::InferenceConfig;
use crate::ledger::StoreLedger;

/// Bumped when a task's stored answers change shape, so older cache entries stop matching.
const CACHE_VERSION: u32 = 1;

/// Everything the tasks need; one per process.
pub struct Inference {
    pub store: Store,
    pub blob: Blob,
    pub bus: Bus,
    pub gateway: Gateway,
    pub ledger: Arc<StoreLedger>,
    pub config: InferenceConfig,
}

/// Who a task runs for and within what limits.
pub struct Scope {
    pub tenant: String,
    pub job_id: Option<Uuid>,
    pub attempt: u32,
    pub cancel: CancellationToken,
    pub deadline: Instant,
    /// Publish progress stages on `mm.updates.<job id>` (jobs only).
    pub report_progress: bool,
}

/// An answer and whether it came from the cache.
pub struct Answer<T> {
    pub value: T,
    pub cached: bool,
}

impl Inference {
    fn call(&self, scope: &Scope) -> Call {
        Call {
            tenant: scope.tenant.clone(),
            job_id: scope.job_id,
            cancel: scope.cancel.clone(),
            deadline: Some(scope.deadline),
            ledger: Arc::clone(&self.ledger) as Arc<dyn mediamesh_gateway::Ledger>,
        }
    }

    async fn stage(&self, scope: &Scope, progress: f32, message: &str) {
        tracing::debug!(progress, stage = message, "inference stage");
        if !scope.report_progress {
            return;
        }
        if let Some(job_id) = scope.job_id {
            let update = Update::Progress {
                attempt: scope.attempt,
                progress,
                message: message.to_owned(),
            };
            let _ = self.bus.publish_update(job_id, &update).await;
        }
    }

    /// `UNSUPPORTED`, naming what to set, when no provider serves `task`.
    pub fn require(&self, task: Task) -> Result<(), Error> {
        if self.gateway.supports(task) {
            Ok(())
        } else {
            Err(Error::unsupported(format!(
                "no AI provider is configured for {} (set MM_OPENAI_API_KEY, MM_OPENAI_BASE_URL or a provider with a {} model in MM_CONFIG)",
                task.as_str(),
                task.as_str()
            )))
        }
    }

    /// The caller's media; another tenant's is `NOT_FOUND`, like one that does not exist.
    pub async fn media(&self, tenant: &str, media_id: Uuid) -> Result<MediaRow, Error> {
        self.store
            .get_media(tenant, media_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found(format!("media {media_id} not found")))
    }

    async fn original(&self, media: &MediaRow) -> Result<Bytes, Error> {
        self.blob.get(&media.blob_key).await.map_err(|e| match e {
            mediamesh_blob::Error::NotFound(_) => Error::not_found(format!("media {} has no original", media.id)),
            other => Error::from(other),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Cache: `ai-cache/<sha256 of task, model, input hash and prompt>.json`

    fn cache_key(&self, task: Task, parts: &[&str]) -> Option<String> {
        if !self.config.cache {
            return None;
        }
        let fingerprint = self.gateway.fingerprint(task)?;
        let mut hasher = Sha256::new();
        hasher.update(format!("v{CACHE_VERSION}\n{}\n{fingerprint}\n", task.as_str()));
        for part in parts {
            hasher.update(part.len().to_le_bytes());
            hasher.update(part.as_bytes());
        }
        Some(format!("ai-cache/{}", hex::encode(hasher.finalize())))
    }

    async fn cache_get<T: DeserializeOwned>(&self, key: Option<&str>) -> Option<T> {
        let key = key?;
        let data = self.blob.get(&format!("{key}.json")).await.ok()?;
        match serde_json::from_slice(&data) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::warn!(error = %err, key, "ignoring an unreadable cache entry");
                None
            }
        }
    }

    async fn cache_put<T: Serialize>(&self, key: Option<&str>, value: &T) {
        let Some(key) = key else { return };
        match serde_json::to_vec(value) {
            Ok(data) => {
                if let Err(err) = self.blob.put(&format!("{key}.json"), Bytes::from(data)).await {
                    tracing::warn!(error = %err, key, "cannot store the answer in the cache");
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot serialise the answer for the cache"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // transcribe

    /// Transcribes an audio or video media, splitting audio over the provider's upload limit,
    /// and stores the transcript as the media's `transcript` output.
    pub async fn transcribe(
        &self,
        scope: &Scope,
        media_id: Uuid,
        language: Option<&str>,
    ) -> Result<Answer<Transcript>, Error> {
        self.require(Task::Transcribe)?;
        let media = self.media(&scope.tenant, media_id).await?;
        let kind = MediaKind::parse(&media.kind).unwrap_or(MediaKind::Image);
        if kind == MediaKind::Image {
            return Err(Error::bad_input(format!(
                "inference.transcribe needs audio or a video; media {media_id} is an image"
            )));
        }
        self.stage(scope, 0.05, "received").await;
        let language = language
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .or_else(|| Some(self.gateway.settings().default_language.clone()).filter(|l| !l.is_empty()));
        let cache_key = self.cache_key(Task::Transcribe, &[&media.sha256, language.as_deref().unwrap_or("")]);
        let transcript = if let Some(hit) = self.cache_get::<Transcript>(cache_key.as_deref()).await {
            tracing::info!(sha256 = %media.sha256, "same audio transcribed before; reusing the transcript");
            Answer {
                value: hit,
                cached: true,
            }
        } else {
            let data = self.original(&media).await?;
            let limit = self.gateway.max_audio_bytes();
            let value = if kind == MediaKind::Audio && (data.len() as u64) <= limit {
                self.stage(scope, 0.2, "calling the model").await;
                let audio = AudioIn {
                    bytes: data,
                    filename: media.filename.clone(),
                    mime: media.content_type.clone(),
                };
                self.gateway
                    .transcribe(&self.call(scope), audio, language.as_deref())
                    .await?
            } else {
                self.transcribe_in_parts(scope, &media, data, limit, language.as_deref())
                    .await?
            };
            self.cache_put(cache_key.as_deref(), &value).await;
            Answer { value, cached: false }
        };
        self.stage(scope, 0.9, "storing").await;
        let key = mediamesh_blob::derivative_key(&media.id, "transcript", "json");
        let json = serde_json::to_vec(&transcript.value).map_err(|e| Error::internal(e.to_string()))?;
        self.blob.put(&key, Bytes::from(json)).await.map_err(Error::from)?;
        self.stage(scope, 1.0, "done").await;
        Ok(transcript)
    }

    /// Video sound, or audio over the upload limit: ffmpeg turns it into 16 kHz mono MP3 cut
    /// into parts under the limit, each part is transcribed and the pieces are joined with
    /// their times shifted.
    async fn transcribe_in_parts(
        &self,
        scope: &Scope,
        media: &MediaRow,
        data: Bytes,
        limit: u64,
        language: Option<&str>,
    ) -> Result<Transcript, Error> {
        const BYTES_PER_SECOND: u64 = 32_000 / 8;
        let dir = tempfile::Builder::new()
            .prefix("mediamesh-transcribe-")
            .tempdir_in(self.config.tmp_dir())
            .map_err(|e| Error::internal(format!("cannot create a temporary folder: {e}")))?;
        let input = dir.path().join("input");
        tokio::fs::write(&input, &data)
            .await
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", input.display())))?;
        // 90% of the limit per part leaves room for the MP3 framing.
        let part_seconds = ((limit * 9 / 10) / BYTES_PER_SECOND).max(1);
        self.stage(scope, 0.1, "preparing the audio").await;
        let pattern = dir.path().join("part%04d.mp3");
        let args: Vec<OsString> = [
            "-i".into(),
            input.clone().into_os_string(),
            "-vn".into(),
            "-ac".into(),
            "1".into(),
            "-ar".into(),
            "16000".into(),
            "-c:a".into(),
            "libmp3lame".into(),
            "-b:a".into(),
            "32k".into(),
            "-f".into(),
            "segment".into(),
            "-segment_time".into(),
            part_seconds.to_string().into(),
            "-reset_timestamps".into(),
            "1".into(),
            pattern.into_os_string(),
        ]
        .into();
        let tools = mediamesh_av::Tools {
            ffmpeg: self.config.ffmpeg.clone(),
            ffprobe: self.config.ffprobe.clone(),
        };
        let remaining = scope.deadline.saturating_duration_since(Instant::now());
        mediamesh_av::run_ffmpeg(&tools, &args, None, remaining, &scope.cancel, &|_| {})
            .await
            .map_err(|e| {
                if e.code == ErrorCode::BadInput {
                    Error::bad_input(format!("media {} has no readable sound: {}", media.id, e.message))
                } else {
                    e
                }
            })?;
        let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .map_err(|e| Error::internal(format!("cannot list {}: {e}", dir.path().display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "mp3"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            return Err(Error::bad_input(format!(
                "media {} has no sound to transcribe",
                media.id
            )));
        }
        let call = self.call(scope);
        let mut joined: Option<Transcript> = None;
        let mut offset = 0.0;
        let count = parts.len();
        for (i, part) in parts.iter().enumerate() {
            let bytes = tokio::fs::read(part)
                .await
                .map_err(|e| Error::internal(format!("cannot read {}: {e}", part.display())))?;
            let progress = 0.2 + 0.7 * (i as f32 / count as f32);
            let message = if count == 1 {
                "calling the model".to_owned()
            } else {
                format!("calling the model: part {} of {count}", i + 1)
            };
            self.stage(scope, progress, &message).await;
            let audio = AudioIn {
                bytes: Bytes::from(bytes),
                filename: format!("part{i:04}.mp3"),
                mime: "audio/mpeg".to_owned(),
            };
            let piece = self.gateway.transcribe(&call, audio, language).await?;
            let length = piece.duration_s.unwrap_or(part_seconds as f64);
            joined = Some(match joined {
                None => piece,
                Some(mut all) => {
                    join(&mut all, piece, offset);
                    all
                }
            });
            offset += length;
        }
        let mut transcript = joined.ok_or_else(|| Error::internal("no transcript parts"))?;
        transcript.duration_s = Some(offset);
        Ok(transcript)
    }

    // -----------------------------------------------------------------------------------------
    // describe_image

    pub async fn describe_image(
        &self,
        scope: &Scope,
        media_id: Uuid,
        prompt: Option<&str>,
    ) -> Result<Answer<Description>, Error> {
        self.require(Task::DescribeImage)?;
        let media = self.image_media(scope, media_id, "inference.describe_image").await?;
        self.stage(scope, 0.05, "received").await;
        let prompt = prompt.filter(|p| !p.is_empty());
        let cache_key = self.cache_key(Task::DescribeImage, &[&media.sha256, prompt.unwrap_or("")]);
        if let Some(hit) = self.cache_get::<Description>(cache_key.as_deref()).await {
            self.stage(scope, 1.0, "done").await;
            return Ok(Answer {
                value: hit,
                cached: true,
            });
        }
        let data = self.original(&media).await?;
        self.stage(scope, 0.2, "calling the model").await;
        let image = ImageIn {
            bytes: data,
            mime: media.content_type.clone(),
        };
        let value = self.gateway.describe_image(&self.call(scope), image, prompt).await?;
        self.stage(scope, 0.9, "storing").await;
        self.cache_put(cache_key.as_deref(), &value).await;
        self.stage(scope, 1.0, "done").await;
        Ok(Answer { value, cached: false })
    }

    async fn image_media(&self, scope: &Scope, media_id: Uuid, what: &str) -> Result<MediaRow, Error> {
        let media = self.media(&scope.tenant, media_id).await?;
        if media.kind != MediaKind::Image.as_str() {
            return Err(Error::bad_input(format!(
                "{what} needs an image; media {media_id} is {} ({})",
                media.kind, media.content_type
            )));
        }
        Ok(media)
    }

    // -----------------------------------------------------------------------------------------
    // enhance_image

    /// Edits the photo with the prompt and stores the result as a new media whose parent is
    /// the original.
    pub async fn enhance_image(
        &self,
        scope: &Scope,
        media_id: Uuid,
        prompt: Option<&str>,
    ) -> Result<Answer<(MediaRow, Usage)>, Error> {
        self.require(Task::EnhanceImage)?;
        let media = self.image_media(scope, media_id, "inference.enhance_image").await?;
        self.stage(scope, 0.05, "received").await;
        let prompt = prompt
            .filter(|p| !p.is_empty())
            .map_or_else(|| self.gateway.settings().enhance_prompt.clone(), str::to_owned);
        let started = Instant::now();
        let cache_key = self.cache_key(Task::EnhanceImage, &[&media.sha256, &prompt]);
        let (out, cached) = match self.cached_image(cache_key.as_deref()).await {
            Some(hit) => (hit, true),
            None => {
                let data = self.original(&media).await?;
                self.stage(scope, 0.2, "calling the model").await;
                let image = ImageIn {
                    bytes: data,
                    mime: media.content_type.clone(),
                };
                let out = self.gateway.enhance_image(&self.call(scope), image, &prompt).await?;
                self.store_cached_image(cache_key.as_deref(), &out).await;
                (out, false)
            }
        };
        self.stage(scope, 0.9, "storing").await;
        let origin = json!({
            "task": Task::EnhanceImage.as_str(),
            "provider": out.usage.provider,
            "model": out.usage.model,
            "prompt": prompt,
            "cost_usd": if cached { 0.0 } else { out.usage.cost_usd },
            "processing_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "cached": cached,
            "job_id": scope.job_id,
        });
        let stem = media
            .filename
            .rsplit_once('.')
            .map_or(media.filename.as_str(), |(stem, _)| stem);
        let row = self
            .store_media(
                &scope.tenant,
                &out.bytes,
                &format!("{stem}-enhanced"),
                Some(media.id),
                origin,
            )
            .await?;
        self.stage(scope, 1.0, "done").await;
        Ok(Answer {
            value: (row, out.usage),
            cached,
        })
    }

    // -----------------------------------------------------------------------------------------
    // generate_text, generate_image

    pub async fn generate_text(&self, scope: &Scope, request: &TextRequest) -> Result<Answer<TextOut>, Error> {
        self.require(Task::GenerateText)?;
        if request.prompt.trim().is_empty() {
            return Err(Error::bad_input("generate_text needs a prompt"));
        }
        self.stage(scope, 0.05, "received").await;
        let max_tokens = request.max_tokens.map(|m| m.to_string()).unwrap_or_default();
        let cache_key = self.cache_key(
            Task::GenerateText,
            &[
                &request.prompt,
                request.tone.as_deref().unwrap_or(""),
                request.audience.as_deref().unwrap_or(""),
                &max_tokens,
            ],
        );
        if let Some(hit) = self.cache_get::<TextOut>(cache_key.as_deref()).await {
            self.stage(scope, 1.0, "done").await;
            return Ok(Answer {
                value: hit,
                cached: true,
            });
        }
        self.stage(scope, 0.1, "checking the prompt").await;
        let call = self.call(scope);
        self.gateway.moderate(&call, &request.prompt).await?;
        self.stage(scope, 0.2, "calling the model").await;
        let value = self.gateway.generate_text(&call, request).await?;
        self.stage(scope, 0.9, "storing").await;
        self.cache_put(cache_key.as_deref(), &value).await;
        self.stage(scope, 1.0, "done").await;
        Ok(Answer { value, cached: false })
    }

    /// Generates an image and stores it as a new media.
    pub async fn generate_image(
        &self,
        scope: &Scope,
        request: &ImageRequest,
    ) -> Result<Answer<(MediaRow, ImageOut)>, Error> {
        self.require(Task::GenerateImage)?;
        if request.prompt.trim().is_empty() {
            return Err(Error::bad_input("generate_image needs a prompt"));
        }
        self.stage(scope, 0.05, "received").await;
        let started = Instant::now();
        let cache_key = self.cache_key(
            Task::GenerateImage,
            &[
                &request.prompt,
                request.size.as_deref().unwrap_or(""),
                request.style.as_deref().unwrap_or(""),
            ],
        );
        let (out, cached) = match self.cached_image(cache_key.as_deref()).await {
            Some(hit) => (hit, true),
            None => {
                self.stage(scope, 0.1, "checking the prompt").await;
                let call = self.call(scope);
                self.gateway.moderate(&call, &request.prompt).await?;
                self.stage(scope, 0.2, "calling the model").await;
                let out = self.gateway.generate_image(&call, request).await?;
                self.store_cached_image(cache_key.as_deref(), &out).await;
                (out, false)
            }
        };
        self.stage(scope, 0.9, "storing").await;
        let origin = json!({
            "task": Task::GenerateImage.as_str(),
            "provider": out.usage.provider,
            "model": out.usage.model,
            "prompt": request.prompt,
            "revised_prompt": out.revised_prompt,
            "size": request.size,
            "style": request.style,
            "cost_usd": if cached { 0.0 } else { out.usage.cost_usd },
            "processing_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "cached": cached,
            "job_id": scope.job_id,
        });
        let row = self
            .store_media(&scope.tenant, &out.bytes, "generated", None, origin)
            .await?;
        self.stage(scope, 1.0, "done").await;
        Ok(Answer {
            value: (row, out),
            cached,
        })
    }

    async fn cached_image(&self, key: Option<&str>) -> Option<ImageOut> {
        let key = key?;
        let mut meta: ImageOut = self.cache_get(Some(key)).await?;
        meta.bytes = self.blob.get(&format!("{key}.bin")).await.ok()?.to_vec();
        Some(meta)
    }

    async fn store_cached_image(&self, key: Option<&str>, out: &ImageOut) {
        let Some(key) = key else { return };
        if let Err(err) = self
            .blob
            .put(&format!("{key}.bin"), Bytes::copy_from_slice(&out.bytes))
            .await
        {
            tracing::warn!(error = %err, "cannot store the image in the cache");
            return;
        }
        let meta = ImageOut {
            bytes: Vec::new(),
            mime: out.mime.clone(),
            revised_prompt: out.revised_prompt.clone(),
            usage: out.usage.clone(),
        };
        self.cache_put(Some(key), &meta).await;
    }

    /// Stores bytes a model made as a media of the tenant (the existing one when the tenant
    /// already has the same bytes).
    async fn store_media(
        &self,
        tenant: &str,
        data: &[u8],
        stem: &str,
        parent_id: Option<Uuid>,
        origin: Value,
    ) -> Result<MediaRow, Error> {
        let sniffed = mediamesh_sniff::sniff(data)
            .filter(|s| s.kind == MediaKind::Image)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ProviderDown,
                    "the provider answered with bytes that are not an image",
                )
            })?;
        let (width, height) = mediamesh_sniff::image_dimensions(data).map_err(|e| {
            Error::new(
                ErrorCode::ProviderDown,
                format!("the provider's image is unreadable: {}", e.message),
            )
        })?;
        let id = Uuid::now_v7();
        let key = mediamesh_blob::original_key(&id);
        self.blob
            .put(&key, Bytes::copy_from_slice(data))
            .await
            .map_err(Error::from)?;
        let new = NewMedia {
            id,
            tenant: tenant.to_owned(),
            filename: format!("{stem}.{}", extension(sniffed.content_type)),
            content_type: sniffed.content_type.to_owned(),
            kind: MediaKind::Image.as_str().to_owned(),
            bytes: i64::try_from(data.len()).unwrap_or(i64::MAX),
            sha256: hex::encode(Sha256::digest(data)),
            width: i32::try_from(width).ok(),
            height: i32::try_from(height).ok(),
            blob_key: key.clone(),
            parent_id,
            origin: Some(origin),
        };
        let (row, inserted) = match self.store.insert_media(&new).await {
            Ok(result) => result,
            Err(err) => {
                let _ = self.blob.delete(&key).await;
                return Err(Error::from(err));
            }
        };
        if !inserted {
            let _ = self.blob.delete(&key).await;
        }
        Ok(row)
    }

    // -----------------------------------------------------------------------------------------
    // extract

    /// Extracts fields matching `schema` from `text`, or from the media's transcript (made
    /// first when it has none).
    pub async fn extract(
        &self,
        scope: &Scope,
        media_id: Option<Uuid>,
        text: Option<&str>,
        schema: &Value,
    ) -> Result<Answer<Extracted>, Error> {
        self.require(Task::Extract)?;
        if !schema.is_object() {
            return Err(Error::bad_input("extract needs a JSON Schema object in schema"));
        }
        self.stage(scope, 0.05, "received").await;
        let text = match (text.filter(|t| !t.trim().is_empty()), media_id) {
            (Some(text), _) => text.to_owned(),
            (None, Some(media_id)) => self.transcript_text(scope, media_id).await?,
            (None, None) => return Err(Error::bad_input("extract needs a text or a media_id")),
        };
        let schema_text = serde_json::to_string(schema).map_err(|e| Error::internal(e.to_string()))?;
        let cache_key = self.cache_key(Task::Extract, &[&text, &schema_text]);
        if let Some(hit) = self.cache_get::<Extracted>(cache_key.as_deref()).await {
            self.stage(scope, 1.0, "done").await;
            return Ok(Answer {
                value: hit,
                cached: true,
            });
        }
        self.stage(scope, 0.3, "calling the model").await;
        let value = self.gateway.extract(&self.call(scope), &text, schema).await?;
        self.stage(scope, 0.9, "storing").await;
        self.cache_put(cache_key.as_deref(), &value).await;
        self.stage(scope, 1.0, "done").await;
        Ok(Answer { value, cached: false })
    }

    async fn transcript_text(&self, scope: &Scope, media_id: Uuid) -> Result<String, Error> {
        let media = self.media(&scope.tenant, media_id).await?;
        let key = mediamesh_blob::derivative_key(&media.id, "transcript", "json");
        if let Ok(data) = self.blob.get(&key).await
            && let Ok(transcript) = serde_json::from_slice::<Transcript>(&data)
        {
            return Ok(transcript.text);
        }
        if media.kind == MediaKind::Image.as_str() {
            return Err(Error::bad_input(format!(
                "extract from media {media_id} needs its transcript, and an image has none: pass a text instead"
            )));
        }
        self.stage(scope, 0.1, "transcribing first").await;
        Ok(self.transcribe(scope, media_id, None).await?.value.text)
    }
}

/// Appends `piece` to `all`, shifting its segment times by `offset` seconds.
fn join(all: &mut Transcript, piece: Transcript, offset: f64) {
    let text = piece.text.trim();
    if !text.is_empty() {
        if !all.text.is_empty() && !all.text.ends_with(char::is_whitespace) {
            all.text.push(' ');
        }
        all.text.push_str(text);
    }
    all.segments.extend(piece.segments.into_iter().map(|s| Segment {
        start_s: s.start_s + offset,
        end_s: s.end_s + offset,
        text: s.text,
    }));
    all.usage.tokens_in += piece.usage.tokens_in;
    all.usage.tokens_out += piece.usage.tokens_out;
    all.usage.cost_usd += piece.usage.cost_usd;
    all.usage.calls += piece.usage.calls;
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => "png",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(text: &str, segments: &[(f64, f64)], cost: f64) -> Transcript {
        Transcript {
            text: text.to_owned(),
            language: "en".to_owned(),
            duration_s: Some(5.0),
            segments: segments
                .iter()
                .map(|&(start_s, end_s)| Segment {
                    start_s,
                    end_s,
                    text: "s".to_owned(),
                })
                .collect(),
            usage: Usage {
                provider: "p".to_owned(),
                model: "m".to_owned(),
                tokens_in: 1,
                tokens_out: 2,
                cost_usd: cost,
                calls: 1,
            },
        }
    }

    #[test]
    fn joined_parts_shift_times_and_add_costs() {
        let mut all = transcript("hello", &[(0.0, 2.5), (2.5, 5.0)], 0.01);
        join(&mut all, transcript(" world ", &[(0.0, 3.0)], 0.02), 5.0);
        assert_eq!(all.text, "hello world");
        assert_eq!(all.segments.len(), 3);
        assert!((all.segments[2].start_s - 5.0).abs() < 1e-9);
        assert!((all.segments[2].end_s - 8.0).abs() < 1e-9);
        assert!((all.usage.cost_usd - 0.03).abs() < 1e-9);
        assert_eq!(all.usage.calls, 2);
    }
}
