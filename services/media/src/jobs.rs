//! The `media.*` kinds: fetch the original, reuse earlier work on the same bytes when there
//! is some, else run the kind (images in-process on the blocking pool, audio with symphonia or
//! ffmpeg, video with ffmpeg) and store the outputs under the media's folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mediamesh_blob::Blob;
use mediamesh_bus::{Bus, JobMessage, Update};
use mediamesh_core::{Error, ErrorCode, JobKind, MediaKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::MediaConfig;

/// Bumped when a kind's outputs change for the same bytes and settings, so older reuse
/// records stop matching.
const REUSE_VERSION: u32 = 1;

/// Bytes read to tell what a file is.
const SNIFF_BYTES: u64 = 64 * 1024;

/// What a job needs to do its work.
pub struct JobCtx<'a> {
    pub bus: &'a Bus,
    pub blob: &'a Blob,
    pub config: &'a MediaConfig,
    pub job: &'a JobMessage,
    pub media_id: Uuid,
    pub cancel: CancellationToken,
    /// When the attempt's timeout runs out.
    pub deadline: Instant,
}

impl JobCtx<'_> {
    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    fn check_cancelled(&self) -> Result<(), Error> {
        if self.cancel.is_cancelled() {
            Err(Error::new(ErrorCode::Cancelled, "cancelled by request"))
        } else {
            Ok(())
        }
    }
}

/// Runs one media kind and returns the job result (`outputs`, `metadata`, `reused`).
pub async fn run(ctx: &JobCtx<'_>, kind: JobKind) -> Result<Value, Error> {
    let key = mediamesh_blob::original_key(&ctx.media_id);
    let head = ctx.blob.get_prefix(&key, SNIFF_BYTES).await.map_err(|e| match e {
        mediamesh_blob::Error::NotFound(_) => Error::not_found(format!("media {} has no original", ctx.media_id)),
        other => Error::from(other),
    })?;
    let sniffed = mediamesh_sniff::sniff(&head)
        .ok_or_else(|| Error::bad_input("the original is not a recognised image, audio or video format"))?;
    let media_kind = sniffed.kind;
    match (kind, media_kind) {
        (JobKind::MediaThumbnails, MediaKind::Image) => {}
        (JobKind::MediaThumbnails, other) => {
            return Err(Error::bad_input(format!(
                "media.thumbnails needs an image; this media is {other} ({})",
                sniffed.format
            )));
        }
        (JobKind::MediaWaveform, MediaKind::Image) => {
            return Err(Error::bad_input(
                "media.waveform needs audio or a video with sound; this media is an image",
            ));
        }
        (JobKind::MediaVideoThumbnail | JobKind::MediaVideoPreview, other) if other != MediaKind::Video => {
            return Err(Error::bad_input(format!(
                "{kind} needs a video; this media is {other} ({})",
                sniffed.format
            )));
        }
        _ => {}
    }
    let settings = settings(ctx, kind)?;
    let source = Source::fetch(ctx, &key, needs_file(kind, media_kind)).await?;
    let fingerprint = fingerprint(kind, &settings);
    if ctx.config.reuse
        && let Some(result) = reuse_lookup(ctx, &source.sha256, &fingerprint).await
    {
        tracing::info!(sha256 = %source.sha256, "same bytes processed before; reusing the outputs");
        return Ok(result);
    }
    ctx.check_cancelled()?;
    let progress = ProgressSink::start(ctx.bus.clone(), ctx.job.job_id, ctx.job.attempt);
    let result = match kind {
        JobKind::MediaProbe => probe(ctx, &source, media_kind).await,
        JobKind::MediaThumbnails => thumbnails(ctx, &source, &progress).await,
        JobKind::MediaWaveform => waveform(ctx, &source, sniffed.format, &progress).await,
        JobKind::MediaVideoThumbnail => video_thumbnail(ctx, &source, &progress).await,
        JobKind::MediaVideoPreview => video_preview(ctx, &source, &progress).await,
        other => Err(Error::unsupported(format!("the media worker does not run {other}"))),
    };
    progress.finish().await;
    let mut result = result?;
    ctx.check_cancelled()?;
    if ctx.config.reuse {
        reuse_store(ctx, &source.sha256, &fingerprint, &result).await;
    }
    if let Some(object) = result.as_object_mut() {
        object.insert("reused".to_owned(), Value::Bool(false));
    }
    Ok(result)
}

/// The settings a kind's outputs depend on (part of the reuse fingerprint).
fn settings(ctx: &JobCtx<'_>, kind: JobKind) -> Result<Value, Error> {
    let config = ctx.config;
    Ok(match kind {
        JobKind::MediaThumbnails => {
            let options = config.thumb_options().map_err(Error::internal)?;
            json!({
                "quality": options.quality,
                "formats": options.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
                "specs": options.specs.iter().map(|s| format!("{}:{}x{}:{:?}", s.name, s.width, s.height, s.fit)).collect::<Vec<_>>(),
            })
        }
        JobKind::MediaWaveform => {
            let options = waveform_options(config, &ctx.job.payload)?;
            json!({
                "samples_per_pixel": options.samples_per_pixel,
                "bits": options.bits,
                "split_channels": options.split_channels,
                "png": [options.png_width, options.png_height],
            })
        }
        JobKind::MediaVideoPreview => json!({
            "seconds": config.video_preview_seconds,
            "max_height": config.video_preview_max_height,
        }),
        _ => json!({}),
    })
}

fn needs_file(kind: JobKind, media_kind: MediaKind) -> bool {
    match kind {
        JobKind::MediaVideoThumbnail | JobKind::MediaVideoPreview => true,
        JobKind::MediaProbe => media_kind != MediaKind::Image,
        // Audio of a video goes through ffmpeg; audio files through symphonia when it can.
        JobKind::MediaWaveform => media_kind == MediaKind::Video,
        _ => false,
    }
}

fn fingerprint(kind: JobKind, settings: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{REUSE_VERSION}:{kind}:{settings}"));
    let digest = hex::encode(hasher.finalize());
    format!("{}-{}", kind.as_str().replace('.', "_"), &digest[..16])
}

// ---------------------------------------------------------------------------------------------
// The original

/// The original's bytes, in memory, on disk, or both, with its sha256.
struct Source {
    sha256: String,
    bytes: Option<Bytes>,
    /// Keeps the temporary folder of `path` until the job ends.
    dir: Option<tempfile::TempDir>,
    path: Option<PathBuf>,
}

impl Source {
    async fn fetch(ctx: &JobCtx<'_>, key: &str, to_file: bool) -> Result<Self, Error> {
        if !to_file {
            let bytes = ctx.blob.get(key).await.map_err(Error::from)?;
            let sha256 = {
                let bytes = bytes.clone();
                tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
                    .await
                    .map_err(|_| Error::internal("hashing task failed"))?
            };
            return Ok(Self {
                sha256,
                bytes: Some(bytes),
                dir: None,
                path: None,
            });
        }
        let dir = job_temp_dir(ctx.config)?;
        let path = dir.path().join("original");
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::internal(format!("cannot write a temporary file: {e}")))?;
        let mut stream = ctx.blob.stream(key).await.map_err(Error::from)?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::from)?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::internal(format!("cannot write a temporary file: {e}")))?;
            ctx.check_cancelled()?;
        }
        file.flush()
            .await
            .map_err(|e| Error::internal(format!("cannot write a temporary file: {e}")))?;
        Ok(Self {
            sha256: hex::encode(hasher.finalize()),
            bytes: None,
            dir: Some(dir),
            path: Some(path),
        })
    }

    fn bytes(&self) -> Result<Bytes, Error> {
        self.bytes
            .clone()
            .ok_or_else(|| Error::internal("the original was not loaded into memory"))
    }

    fn path(&self) -> Result<&Path, Error> {
        self.path
            .as_deref()
            .ok_or_else(|| Error::internal("the original was not written to a file"))
    }

    /// A folder for outputs next to the original (a new one when the original is in memory).
    fn work_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }
}

/// A temporary folder for one job under `MM_TMP_DIR` (or the system's), removed when dropped.
fn job_temp_dir(config: &MediaConfig) -> Result<tempfile::TempDir, Error> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("mm-job-");
    match &config.tmp_dir {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .map_err(|e| Error::internal(format!("cannot create a temporary folder: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Reuse of earlier work on the same bytes

/// Finds an earlier result for the same bytes and settings and makes its outputs this media's
/// (copies inside the blob store). `None` when there is none or its outputs are gone.
async fn reuse_lookup(ctx: &JobCtx<'_>, sha256: &str, fingerprint: &str) -> Option<Value> {
    let record = ctx
        .blob
        .get(&mediamesh_blob::reuse_key(sha256, fingerprint))
        .await
        .ok()?;
    let record: Value = serde_json::from_slice(&record).ok()?;
    let from = record.get("media_id")?.as_str()?.to_owned();
    let mut result = record.get("result")?.clone();
    let here = ctx.media_id.to_string();
    if let Some(outputs) = result.get_mut("outputs").and_then(Value::as_array_mut) {
        for output in outputs {
            let old_key = output.get("blob_key")?.as_str()?.to_owned();
            let file = old_key.rsplit('/').next()?.to_owned();
            let new_key = format!("media/{here}/{file}");
            if new_key == old_key {
                if !matches!(ctx.blob.size(&new_key).await, Ok(Some(_))) {
                    return None;
                }
            } else if let Err(err) = ctx.blob.copy(&old_key, &new_key).await {
                tracing::debug!(error = %err, from = %old_key, "reuse record is stale");
                return None;
            }
            output["blob_key"] = Value::String(new_key);
        }
    }
    tracing::debug!(from_media = %from, "outputs reused");
    if let Some(object) = result.as_object_mut() {
        object.insert("reused".to_owned(), Value::Bool(true));
    }
    Some(result)
}

async fn reuse_store(ctx: &JobCtx<'_>, sha256: &str, fingerprint: &str, result: &Value) {
    let record = json!({ "media_id": ctx.media_id, "result": result });
    if let Err(err) = ctx
        .blob
        .put(
            &mediamesh_blob::reuse_key(sha256, fingerprint),
            Bytes::from(record.to_string()),
        )
        .await
    {
        tracing::warn!(error = %err, "cannot record the outputs for reuse");
    }
}

// ---------------------------------------------------------------------------------------------
// Progress

/// Forwards progress to `mm.updates` in order. Every producer already limits how often it
/// reports (ffmpeg's at most four times a second, the decoders a few times per job).
struct ProgressSink {
    tx: tokio::sync::mpsc::UnboundedSender<(f32, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressSink {
    fn start(bus: Bus, job_id: Uuid, attempt: u32) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f32, String)>();
        let task = tokio::spawn(async move {
            while let Some(progress) = rx.recv().await {
                Self::send(&bus, job_id, attempt, progress).await;
            }
        });
        Self { tx, task }
    }

    async fn send(bus: &Bus, job_id: Uuid, attempt: u32, (progress, message): (f32, String)) {
        let update = Update::Progress {
            attempt,
            progress: progress.clamp(0.0, 1.0),
            message,
        };
        let _ = bus.publish_update(job_id, &update).await;
    }

    fn report(&self, progress: f32, message: &str) {
        let _ = self.tx.send((progress, message.to_owned()));
    }

    fn sender(&self) -> tokio::sync::mpsc::UnboundedSender<(f32, String)> {
        self.tx.clone()
    }

    async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------------------------
// The kinds

async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Error::internal(format!("{what} task failed")))?
}

async fn probe(ctx: &JobCtx<'_>, source: &Source, media_kind: MediaKind) -> Result<Value, Error> {
    if media_kind == MediaKind::Image {
        let data = source.bytes()?;
        let limits = ctx.config.limits();
        let info = blocking("probe", move || mediamesh_imaging::probe(&data, &limits)).await?;
        let mut metadata = serde_json::to_value(info).map_err(|e| Error::internal(e.to_string()))?;
        metadata["media_kind"] = json!("image");
        return Ok(json!({ "outputs": [], "metadata": metadata }));
    }
    let info = mediamesh_av::probe(&ctx.config.av_tools(), source.path()?, ctx.remaining(), &ctx.cancel).await?;
    let mut metadata = serde_json::to_value(info).map_err(|e| Error::internal(e.to_string()))?;
    metadata["media_kind"] = json!(media_kind.as_str());
    Ok(json!({ "outputs": [], "metadata": metadata }))
}

async fn thumbnails(ctx: &JobCtx<'_>, source: &Source, progress: &ProgressSink) -> Result<Value, Error> {
    let data = source.bytes()?;
    let limits = ctx.config.limits();
    let options = ctx.config.thumb_options().map_err(Error::internal)?;
    let tx = progress.sender();
    let derivatives = blocking("thumbnail", move || {
        let mut report = |p: f32| {
            let _ = tx.send((p, "making thumbnails".to_owned()));
        };
        mediamesh_imaging::thumbnails(&data, &options, &limits, &mut report)
    })
    .await?;
    ctx.check_cancelled()?;
    let mut outputs = Vec::with_capacity(derivatives.len());
    for derivative in derivatives {
        let name = if derivative.format == mediamesh_imaging::OutputFormat::Jpeg {
            derivative.name.clone()
        } else {
            format!("{}_{}", derivative.name, derivative.format.as_str())
        };
        let key = mediamesh_blob::derivative_key(&ctx.media_id, &name, derivative.format.extension());
        let bytes = derivative.data.len();
        ctx.blob.put(&key, Bytes::from(derivative.data)).await?;
        outputs.push(json!({
            "name": name,
            "blob_key": key,
            "content_type": derivative.format.content_type(),
            "width": derivative.width,
            "height": derivative.height,
            "bytes": bytes,
        }));
    }
    Ok(json!({ "outputs": outputs }))
}

fn waveform_options(config: &MediaConfig, payload: &Value) -> Result<mediamesh_waveform::WaveformOptions, Error> {
    let mut options = mediamesh_waveform::WaveformOptions {
        samples_per_pixel: config.waveform_samples_per_pixel,
        ..Default::default()
    };
    let field = |name: &str| payload.get(name).filter(|v| !v.is_null());
    if let Some(value) = field("samples_per_pixel") {
        options.samples_per_pixel = value
            .as_u64()
            .filter(|v| (1..=1_000_000).contains(v))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Error::bad_input("payload.samples_per_pixel must be an integer in 1..=1000000"))?;
    }
    if let Some(value) = field("bits") {
        options.bits = match value.as_u64() {
            Some(8) => 8,
            Some(16) => 16,
            _ => return Err(Error::bad_input("payload.bits must be 8 or 16")),
        };
    }
    if let Some(value) = field("split_channels") {
        options.split_channels = value
            .as_bool()
            .ok_or_else(|| Error::bad_input("payload.split_channels must be true or false"))?;
    }
    Ok(options)
}

async fn waveform(ctx: &JobCtx<'_>, source: &Source, format: &str, progress: &ProgressSink) -> Result<Value, Error> {
    let options = waveform_options(ctx.config, &ctx.job.payload)?;
    let hint = format.to_owned();
    let (made, decoder) = match &source.bytes {
        Some(data) if mediamesh_waveform::can_decode(data, Some(&hint)) => {
            let data = data.clone();
            let tx = progress.sender();
            let cancel = ctx.cancel.clone();
            let options = options.clone();
            let made = blocking("waveform", move || {
                let mut report = |p: f32| {
                    let _ = tx.send((p, "reading audio".to_owned()));
                };
                mediamesh_waveform::waveform(&data, Some(&hint), &options, &|| cancel.is_cancelled(), &mut report)
            })
            .await?;
            (made, "symphonia")
        }
        _ => {
            // ffmpeg reads what symphonia cannot (and the sound of videos).
            let (path, _dir) = match source.path() {
                Ok(path) => (path.to_owned(), None),
                Err(_) => {
                    let dir = job_temp_dir(ctx.config)?;
                    let path = dir.path().join("original");
                    tokio::fs::write(&path, source.bytes()?)
                        .await
                        .map_err(|e| Error::internal(format!("cannot write a temporary file: {e}")))?;
                    (path, Some(dir))
                }
            };
            progress.report(0.0, "decoding audio with ffmpeg");
            let pcm = mediamesh_av::decode_pcm(
                &ctx.config.av_tools(),
                &path,
                options.max_duration_s,
                ctx.remaining(),
                &ctx.cancel,
            )
            .await?;
            let options = options.clone();
            let made = blocking("waveform", move || {
                mediamesh_waveform::waveform_from_pcm(&pcm.samples, pcm.sample_rate, pcm.channels, &pcm.codec, &options)
            })
            .await?;
            (made, "ffmpeg")
        }
    };
    ctx.check_cancelled()?;
    let json_key = mediamesh_blob::derivative_key(&ctx.media_id, "waveform", "json");
    let png_key = mediamesh_blob::derivative_key(&ctx.media_id, "waveform", "png");
    let json_bytes = Bytes::from(made.json.to_string());
    let json_len = json_bytes.len();
    let png_len = made.png.len();
    ctx.blob.put(&json_key, json_bytes).await?;
    ctx.blob.put(&png_key, Bytes::from(made.png)).await?;
    Ok(json!({
        "outputs": [
            { "name": "waveform", "blob_key": json_key, "content_type": "application/json", "bytes": json_len },
            { "name": "waveform_png", "blob_key": png_key, "content_type": "image/png",
              "width": options.png_width, "height": options.png_height, "bytes": png_len },
        ],
        "metadata": {
            "duration_s": made.duration_s,
            "sample_rate": made.sample_rate,
            "channels": made.channels,
            "codec": made.codec,
            "samples_per_pixel": options.samples_per_pixel,
            "bits": options.bits,
            "length": made.length,
            "decoder": decoder,
        },
    }))
}

/// Forwards the ffmpeg progress of an av call to the sink.
fn av_progress(progress: &ProgressSink, what: &'static str) -> impl Fn(mediamesh_av::Progress) + Send + Sync {
    let tx = progress.sender();
    move |p: mediamesh_av::Progress| {
        let _ = tx.send((p.fraction, what.to_owned()));
    }
}

async fn video_thumbnail(ctx: &JobCtx<'_>, source: &Source, progress: &ProgressSink) -> Result<Value, Error> {
    let tools = ctx.config.av_tools();
    let input = source.path()?;
    let info = mediamesh_av::probe(&tools, input, ctx.remaining(), &ctx.cancel).await?;
    let out = work_file(source, "video_thumb.jpg")?;
    let report = av_progress(progress, "extracting a frame");
    let made = mediamesh_av::video_thumbnail(
        &tools,
        input,
        &out,
        &info,
        &mediamesh_av::VideoThumbOptions::default(),
        ctx.remaining(),
        &ctx.cancel,
        &report,
    )
    .await?;
    let key = mediamesh_blob::derivative_key(&ctx.media_id, "video_thumb", "jpg");
    let bytes = put_file(ctx.blob, &key, &out).await?;
    Ok(json!({
        "outputs": [{ "name": "video_thumb", "blob_key": key, "content_type": "image/jpeg",
                      "width": made.width, "height": made.height, "bytes": bytes }],
        "metadata": { "at_s": made.at_s, "source_duration_s": info.duration_s },
    }))
}

async fn video_preview(ctx: &JobCtx<'_>, source: &Source, progress: &ProgressSink) -> Result<Value, Error> {
    let tools = ctx.config.av_tools();
    let input = source.path()?;
    let info = mediamesh_av::probe(&tools, input, ctx.remaining(), &ctx.cancel).await?;
    let out = work_file(source, "preview.mp4")?;
    let options = mediamesh_av::VideoPreviewOptions {
        seconds: ctx.config.video_preview_seconds,
        max_height: ctx.config.video_preview_max_height,
        ..Default::default()
    };
    let report = av_progress(progress, "encoding the preview");
    let made = mediamesh_av::video_preview(
        &tools,
        input,
        &out,
        &info,
        &options,
        ctx.remaining(),
        &ctx.cancel,
        &report,
    )
    .await?;
    let key = mediamesh_blob::derivative_key(&ctx.media_id, "preview", "mp4");
    let bytes = put_file(ctx.blob, &key, &out).await?;
    Ok(json!({
        "outputs": [{ "name": "preview", "blob_key": key, "content_type": "video/mp4",
                      "width": made.width, "height": made.height, "bytes": bytes }],
        "metadata": { "duration_s": made.duration_s, "source_duration_s": info.duration_s },
    }))
}

fn work_file(source: &Source, name: &str) -> Result<PathBuf, Error> {
    source
        .work_dir()
        .map(|dir| dir.join(name))
        .ok_or_else(|| Error::internal("no work folder"))
}

async fn put_file(blob: &Blob, key: &str, path: &Path) -> Result<u64, Error> {
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| Error::internal(format!("cannot read the output {}: {e}", path.display())))?;
    let len = data.len() as u64;
    blob.put(key, Bytes::from(data)).await?;
    Ok(len)
}
