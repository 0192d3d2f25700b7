//! `media.video_thumbnail` (one JPEG frame) and `media.video_preview` (the first seconds as a
//! small H.264/AAC MP4 that starts playing before it is fully downloaded).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use mediamesh_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::probe::{self, AvInfo, VideoStream, file_arg};
use crate::supervise::{self, Budget, Tail};
use crate::{Progress, Tools, output_len};

/// The x264 presets, fastest first.
const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// Where and how big a video thumbnail is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoThumbOptions {
    /// The time of the frame, for videos at least twice as long (see [`Self::pick_time`]).
    pub at_s: f64,
    /// How far into a shorter video the frame is, as a fraction of its duration.
    pub short_fraction: f64,
    /// The box the frame must fit in (as displayed, after rotation); never enlarged.
    pub max_width: u32,
    pub max_height: u32,
    /// JPEG quality, 1 to 100 as for libjpeg; mapped to ffmpeg's `-q:v` (2 to 22).
    pub quality: u8,
}

impl Default for VideoThumbOptions {
    fn default() -> Self {
        Self {
            at_s: 2.0,
            short_fraction: 0.10,
            max_width: 1280,
            max_height: 720,
            quality: 85,
        }
    }
}

impl VideoThumbOptions {
    /// The time of the thumbnail frame: `at_s` when the video lasts at least `2 * at_s` (the
    /// frame is then in its first half), else `short_fraction` of the duration; `at_s` when
    /// the duration is unknown. With the defaults: 2 s into a video of 4 s or more, 10% into a
    /// shorter one (0.3 s into a 3 s clip).
    pub fn pick_time(&self, duration_s: Option<f64>) -> f64 {
        match duration_s.filter(|d| d.is_finite() && *d > 0.0) {
            Some(d) if d >= 2.0 * self.at_s => self.at_s,
            Some(d) => d * self.short_fraction,
            None => self.at_s,
        }
    }

    /// ffmpeg's MJPEG `-q:v` for `quality`: 100 → 2 (best), 85 → 5, 50 → 12, 1 → 21.
    fn qscale(&self) -> u8 {
        2 + (100 - self.quality.clamp(1, 100)) / 5
    }

    fn check(&self) -> Result<()> {
        let valid = self.at_s.is_finite()
            && self.at_s >= 0.0
            && (0.0..1.0).contains(&self.short_fraction)
            && self.max_width > 0
            && self.max_height > 0
            && (1..=100).contains(&self.quality);
        if valid {
            Ok(())
        } else {
            Err(Error::internal(format!("invalid video thumbnail options: {self:?}")))
        }
    }
}

/// How a video preview is encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoPreviewOptions {
    /// How much of the start of the video the preview holds.
    pub seconds: f64,
    /// The tallest the preview is (`scale=-2:min(ih,max_height)`, rounded down to even);
    /// never enlarged.
    pub max_height: u32,
    /// x264 constant rate factor, 0 to 51 (higher is smaller).
    pub crf: u8,
    /// x264 preset, `ultrafast` to `placebo`.
    pub preset: String,
    /// AAC bit rate in kbit/s.
    pub audio_bitrate_k: u32,
}

impl Default for VideoPreviewOptions {
    fn default() -> Self {
        Self {
            seconds: 10.0,
            max_height: 720,
            crf: 28,
            preset: "veryfast".to_owned(),
            audio_bitrate_k: 96,
        }
    }
}

impl VideoPreviewOptions {
    fn check(&self) -> Result<()> {
        let valid = self.seconds.is_finite()
            && self.seconds > 0.0
            && self.max_height >= 2
            && self.crf <= 51
            && X264_PRESETS.contains(&self.preset.as_str())
            && (8..=512).contains(&self.audio_bitrate_k);
        if valid {
            Ok(())
        } else {
            Err(Error::internal(format!("invalid video preview options: {self:?}")))
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoOutput {
    pub width: u32,
    pub height: u32,
    /// The preview's duration (none for a thumbnail).
    pub duration_s: Option<f64>,
    /// Where in the video the thumbnail frame was taken (none for a preview).
    pub at_s: Option<f64>,
    pub bytes: u64,
}

/// Writes one frame of the video as a JPEG to `output`: at the time
/// [`VideoThumbOptions::pick_time`] gives, rotated as displayed, scaled down into the box.
///
/// `BAD_INPUT` when `info` has no video stream, or when no frame can be decoded at that time
/// (the file is shorter than it says: truncated). `output` is removed on failure.
#[allow(clippy::too_many_arguments)]
pub async fn video_thumbnail(
    tools: &Tools,
    input: &Path,
    output: &Path,
    info: &AvInfo,
    opts: &VideoThumbOptions,
    timeout: Duration,
    cancel: &CancellationToken,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<VideoOutput> {
    let video = info.video.as_ref().ok_or_else(|| Error::bad_input("no video stream"))?;
    opts.check()?;
    let budget = Budget::new(timeout);
    let result = async {
        remove_if_present(output).await?;
        let duration = video.duration_s.or(info.duration_s);
        let mut at = opts.pick_time(duration);
        let job = Thumb {
            tools,
            input,
            output,
            video,
            opts,
            budget,
            cancel,
            progress,
        };
        let mut tail = job.grab(at).await?;
        if !has_bytes(output).await && duration.is_none() && at > 0.0 {
            // No duration to pick a time inside: the video may be shorter than `at_s`.
            at = 0.0;
            tail = job.grab(at).await?;
        }
        if !has_bytes(output).await {
            return Err(Error::bad_input(format!(
                "video is corrupt or truncated: no frame decoded at {at:.2} s: {}",
                tail.text()
            )));
        }
        let out = probe::probe_any(tools, output, budget, cancel).await?;
        let image = out
            .video
            .ok_or_else(|| Error::internal("thumbnail written without an image stream"))?;
        Ok(VideoOutput {
            width: image.width,
            height: image.height,
            duration_s: None,
            at_s: Some(at),
            bytes: output_len(output).await?,
        })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(output).await;
    }
    result
}

/// One thumbnail attempt's inputs.
struct Thumb<'a> {
    tools: &'a Tools,
    input: &'a Path,
    output: &'a Path,
    video: &'a VideoStream,
    opts: &'a VideoThumbOptions,
    budget: Budget,
    cancel: &'a CancellationToken,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
}

impl Thumb<'_> {
    /// Runs ffmpeg for the frame at `at_s`; when there is none, ffmpeg exits 0 and writes
    /// nothing.
    async fn grab(&self, at_s: f64) -> Result<Tail> {
        let (w, h) = (self.opts.max_width, self.opts.max_height);
        let args = args([
            "-protocol_whitelist".into(),
            "file".into(),
            "-ss".into(),
            format!("{at_s:.3}").into(),
            "-i".into(),
            file_arg(self.input),
            "-map".into(),
            format!("0:{}", self.video.index).into(),
            "-frames:v".into(),
            "1".into(),
            "-an".into(),
            "-sn".into(),
            "-dn".into(),
            "-map_metadata".into(),
            "-1".into(),
            "-vf".into(),
            // Rotation is applied before the filters (autorotate), so iw and ih are as
            // displayed; min() keeps small frames as they are.
            format!("scale='min(iw,{w})':'min(ih,{h})':force_original_aspect_ratio=decrease").into(),
            "-c:v".into(),
            "mjpeg".into(),
            "-q:v".into(),
            self.opts.qscale().to_string().into(),
            "-f".into(),
            "image2".into(),
            "-update".into(),
            "1".into(),
            file_arg(self.output),
        ]);
        supervise::ffmpeg(
            self.tools,
            &args,
            None,
            self.budget,
            self.cancel,
            self.progress,
            "video is corrupt or truncated",
        )
        .await
    }
}

/// Encodes the first [`VideoPreviewOptions::seconds`] of the video to `output` as an MP4:
/// H.264 (libx264, yuv420p, even dimensions, at most `max_height` tall) and AAC when the input
/// has audio (no audio track when it has none), with the `moov` box in front (faststart).
/// Then probes the result.
///
/// `BAD_INPUT` when `info` has no video stream, or the input is corrupt or ends early
/// (ffmpeg says `partial file` even when it exits 0). `output` is removed on failure.
#[allow(clippy::too_many_arguments)]
pub async fn video_preview(
    tools: &Tools,
    input: &Path,
    output: &Path,
    info: &AvInfo,
    opts: &VideoPreviewOptions,
    timeout: Duration,
    cancel: &CancellationToken,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<VideoOutput> {
    let video = info.video.as_ref().ok_or_else(|| Error::bad_input("no video stream"))?;
    opts.check()?;
    let budget = Budget::new(timeout);
    let bad = "video is corrupt or truncated";
    let result = async {
        let duration = video.duration_s.or(info.duration_s);
        let expected = duration.map_or(opts.seconds, |d| d.min(opts.seconds));
        let mut list: Vec<OsString> = vec![
            "-protocol_whitelist".into(),
            "file".into(),
            "-i".into(),
            file_arg(input),
            "-t".into(),
            format!("{:.3}", opts.seconds).into(),
            "-map".into(),
            format!("0:{}", video.index).into(),
        ];
        if let Some(audio) = &info.audio {
            list.extend(args([
                "-map".into(),
                format!("0:{}", audio.index).into(),
                "-c:a".into(),
                "aac".into(),
                "-b:a".into(),
                format!("{}k", opts.audio_bitrate_k).into(),
            ]));
        } else {
            list.push("-an".into());
        }
        list.extend(args([
            "-sn".into(),
            "-dn".into(),
            "-map_metadata".into(),
            "-1".into(),
            "-vf".into(),
            format!("scale=-2:'trunc(min(ih,{})/2)*2'", opts.max_height).into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            opts.preset.as_str().into(),
            "-crf".into(),
            opts.crf.to_string().into(),
            "-pix_fmt".into(),
            "yuv420p".into(),
            "-movflags".into(),
            "+faststart".into(),
            "-f".into(),
            "mp4".into(),
            file_arg(output),
        ]));
        let tail = supervise::ffmpeg(tools, &list, Some(expected), budget, cancel, progress, bad).await?;
        if tail.truncated {
            return Err(Error::bad_input(format!("{bad}: {}", tail.text())));
        }
        let out = probe::probe_any(tools, output, budget, cancel).await?;
        let encoded = out
            .video
            .ok_or_else(|| Error::internal("preview written without a video stream"))?;
        Ok(VideoOutput {
            width: encoded.width,
            height: encoded.height,
            duration_s: out.duration_s,
            at_s: None,
            bytes: output_len(output).await?,
        })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(output).await;
    }
    result
}

fn args<const N: usize>(list: [OsString; N]) -> Vec<OsString> {
    list.into()
}

async fn has_bytes(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.is_file() && m.len() > 0)
}

async fn remove_if_present(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("cannot remove {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_time_rule() {
        let opts = VideoThumbOptions::default();
        assert_eq!(opts.pick_time(Some(30.0)), 2.0);
        assert_eq!(opts.pick_time(Some(5.0)), 2.0);
        assert_eq!(opts.pick_time(Some(4.0)), 2.0);
        assert!((opts.pick_time(Some(3.0)) - 0.3).abs() < 1e-9);
        assert!((opts.pick_time(Some(1.0)) - 0.1).abs() < 1e-9);
        assert_eq!(opts.pick_time(None), 2.0);
        assert_eq!(opts.pick_time(Some(f64::NAN)), 2.0);
    }

    #[test]
    fn jpeg_quality_maps_to_qscale() {
        let q = |quality| VideoThumbOptions {
            quality,
            ..Default::default()
        };
        assert_eq!(q(100).qscale(), 2);
        assert_eq!(q(85).qscale(), 5);
        assert_eq!(q(50).qscale(), 12);
        assert_eq!(q(1).qscale(), 21);
        assert!(q(0).check().is_err());
        assert!(
            VideoPreviewOptions {
                preset: "warp".into(),
                ..Default::default()
            }
            .check()
            .is_err()
        );
    }
}
