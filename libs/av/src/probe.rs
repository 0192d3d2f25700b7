//! `media.probe` of audio and video: ffprobe's JSON (`-show_format -show_streams`) reduced to
//! what the product uses: the container, the duration, the first video and audio streams.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

use mediamesh_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Tools;
use crate::supervise::{self, Budget, FFPROBE};

/// The most ffprobe JSON read (a file with thousands of streams is not media we handle).
const PROBE_JSON_BYTES: usize = 4 * 1024 * 1024;

/// What ffprobe found in a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvInfo {
    /// ffprobe's `format_name`: `mov,mp4,m4a,3gp,3g2,mj2`, `ogg`, `wav`, `mp3`, ...
    pub format: String,
    /// The container's duration, else the longest stream's.
    pub duration_s: Option<f64>,
    /// The container's overall bit rate, bits per second.
    pub bit_rate: Option<u64>,
    /// The first video stream that is not a cover picture.
    pub video: Option<VideoStream>,
    /// The first audio stream.
    pub audio: Option<AudioStream>,
    /// How many streams of any kind (subtitles, data and cover pictures included).
    pub streams: usize,
}

/// A video stream as stored (before rotation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoStream {
    /// The stream's index in the file (`-map 0:<index>`).
    pub index: usize,
    pub codec: String,
    /// Stored width and height in pixels; 0 when ffprobe does not know them.
    pub width: u32,
    pub height: u32,
    /// Average frame rate, else the stream's base rate.
    pub fps: Option<f64>,
    /// Degrees as ffprobe reports them (display matrix, else the old `rotate` tag), brought
    /// into 0..360. At 90 and 270 the displayed frame is `height` wide and `width` high.
    pub rotation: i32,
    /// The frame count the container declares.
    pub frames: Option<u64>,
    pub pix_fmt: Option<String>,
    /// The stream's own duration (it can be shorter than the container's).
    pub duration_s: Option<f64>,
}

impl VideoStream {
    /// Width and height as displayed, after rotation.
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation % 180 == 90 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// An audio stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioStream {
    /// The stream's index in the file (`-map 0:<index>`).
    pub index: usize,
    pub codec: String,
    /// Hz; 0 when ffprobe does not know it.
    pub sample_rate: u32,
    /// 0 when ffprobe does not know it.
    pub channels: u16,
    /// `mono`, `stereo`, `5.1(side)`...; WAV files often have none.
    pub channel_layout: Option<String>,
    pub duration_s: Option<f64>,
}

/// Probes an audio or video file with
/// `ffprobe -v error -print_format json -show_format -show_streams`.
///
/// `NOT_FOUND` when the file does not exist; `BAD_INPUT` when it is empty, is not media ffprobe
/// can read, is a still image, or holds neither audio nor video.
pub async fn probe(tools: &Tools, input: &Path, timeout: Duration, cancel: &CancellationToken) -> Result<AvInfo> {
    probe_within(tools, input, Budget::new(timeout), cancel).await
}

pub(crate) async fn probe_within(
    tools: &Tools,
    input: &Path,
    budget: Budget,
    cancel: &CancellationToken,
) -> Result<AvInfo> {
    match tokio::fs::metadata(input).await {
        Ok(meta) if meta.is_file() && meta.len() == 0 => {
            return Err(Error::bad_input("input is empty"));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!("input not found: {}", input.display())));
        }
        Err(e) => {
            return Err(Error::internal(format!("cannot read {}: {e}", input.display())));
        }
    }
    let info = probe_any(tools, input, budget, cancel).await?;
    if info.audio.is_none() && is_still_image(&info.format) {
        return Err(Error::bad_input(format!(
            "input is an image ({}), not audio or video",
            info.format
        )));
    }
    if info.audio.is_none() && info.video.is_none() {
        return Err(Error::bad_input("no audio or video stream"));
    }
    Ok(info)
}

/// Probes any file ffprobe reads, images included (the thumbnails we write).
pub(crate) async fn probe_any(
    tools: &Tools,
    input: &Path,
    budget: Budget,
    cancel: &CancellationToken,
) -> Result<AvInfo> {
    let mut args: Vec<OsString> = [
        "-v",
        "error",
        "-hide_banner",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        "-protocol_whitelist",
        "file",
        "-i",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(file_arg(input));
    let bad = "input is not readable audio or video (corrupt, truncated or another format)";
    let finished = supervise::supervise(FFPROBE, &tools.ffprobe, &args, budget, cancel, bad, |stdout, _| {
        supervise::collect(FFPROBE, stdout, PROBE_JSON_BYTES)
    })
    .await?;
    let raw: RawProbe = serde_json::from_slice(&finished.output)
        .map_err(|e| Error::internal(format!("cannot parse ffprobe output: {e}")))?;
    Ok(raw.into_info())
}

/// A path as an ffmpeg URL that can only mean that file: no protocol (`pipe:`, `http:`,
/// `concat:`) read from a name, and no name starting with `-` taken for an option.
pub(crate) fn file_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("file:");
    arg.push(path.as_os_str());
    arg
}

/// Formats ffprobe gives single images (and ANSI art) as.
fn is_still_image(format: &str) -> bool {
    format == "image2" || format == "tty" || format.ends_with("_pipe")
}

#[derive(Deserialize)]
struct RawProbe {
    #[serde(default)]
    streams: Vec<RawStream>,
    #[serde(default)]
    format: RawFormat,
}

#[derive(Deserialize, Default)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
    bit_rate: Option<String>,
}

#[derive(Deserialize)]
struct RawStream {
    #[serde(default)]
    index: usize,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    nb_frames: Option<String>,
    duration: Option<String>,
    sample_rate: Option<String>,
    channels: Option<u16>,
    channel_layout: Option<String>,
    #[serde(default)]
    disposition: Value,
    #[serde(default)]
    tags: Value,
    #[serde(default)]
    side_data_list: Vec<Value>,
}

impl RawProbe {
    fn into_info(self) -> AvInfo {
        let streams = self.streams.len();
        let stream_duration = self
            .streams
            .iter()
            .filter_map(|s| seconds(s.duration.as_deref()))
            .reduce(f64::max);
        let video = self
            .streams
            .iter()
            .find(|s| s.codec_type.as_deref() == Some("video") && !s.is_cover())
            .map(RawStream::video);
        let audio = self
            .streams
            .iter()
            .find(|s| s.codec_type.as_deref() == Some("audio"))
            .map(RawStream::audio);
        AvInfo {
            format: self.format.format_name.unwrap_or_default(),
            duration_s: seconds(self.format.duration.as_deref()).or(stream_duration),
            bit_rate: self.format.bit_rate.and_then(|b| b.parse().ok()),
            video,
            audio,
            streams,
        }
    }
}

impl RawStream {
    /// A picture attached to audio (album art): a video stream to ffprobe, not to us.
    fn is_cover(&self) -> bool {
        self.disposition.get("attached_pic").and_then(Value::as_i64) == Some(1)
    }

    fn video(&self) -> VideoStream {
        let fps = rate(self.avg_frame_rate.as_deref()).or(rate(self.r_frame_rate.as_deref()));
        VideoStream {
            index: self.index,
            codec: self.codec_name.clone().unwrap_or_default(),
            width: self.width.unwrap_or_default(),
            height: self.height.unwrap_or_default(),
            fps,
            rotation: self.rotation(),
            frames: self.nb_frames.as_deref().and_then(|n| n.parse().ok()),
            pix_fmt: self.pix_fmt.clone(),
            duration_s: seconds(self.duration.as_deref()),
        }
    }

    fn audio(&self) -> AudioStream {
        AudioStream {
            index: self.index,
            codec: self.codec_name.clone().unwrap_or_default(),
            sample_rate: self
                .sample_rate
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or_default(),
            channels: self.channels.unwrap_or_default(),
            channel_layout: self.channel_layout.clone().filter(|l| !l.is_empty()),
            duration_s: seconds(self.duration.as_deref()),
        }
    }

    fn rotation(&self) -> i32 {
        let from_matrix = self
            .side_data_list
            .iter()
            .find_map(|side| side.get("rotation").and_then(Value::as_f64));
        let from_tag = || {
            self.tags
                .get("rotate")
                .and_then(Value::as_str)
                .and_then(|r| r.trim().parse::<f64>().ok())
        };
        let degrees = from_matrix.or_else(from_tag).unwrap_or(0.0);
        if !degrees.is_finite() {
            return 0;
        }
        (degrees.round() as i64).rem_euclid(360) as i32
    }
}

/// A non-negative number of seconds as ffprobe prints it (`"5.000000"`, or `"N/A"`).
fn seconds(value: Option<&str>) -> Option<f64> {
    value?.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)
}

/// A frame rate as ffprobe prints it (`"30000/1001"`); `"0/0"` is none.
fn rate(value: Option<&str>) -> Option<f64> {
    let (num, den) = value?.split_once('/')?;
    let num: f64 = num.trim().parse().ok()?;
    let den: f64 = den.trim().parse().ok()?;
    let fps = num / den;
    (fps.is_finite() && fps > 0.0).then_some(fps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> AvInfo {
        serde_json::from_str::<RawProbe>(json)
            .expect("valid ffprobe json")
            .into_info()
    }

    #[test]
    fn cover_art_is_not_video_and_rotation_is_read() {
        let info = parse(
            r#"{"streams": [
                {"index": 0, "codec_type": "audio", "codec_name": "mp3", "sample_rate": "44100",
                 "channels": 2, "channel_layout": "stereo", "duration": "3.5"},
                {"index": 1, "codec_type": "video", "codec_name": "mjpeg", "width": 500,
                 "height": 500, "disposition": {"attached_pic": 1}}
            ], "format": {"format_name": "mp3", "duration": "3.500000", "bit_rate": "128000"}}"#,
        );
        assert!(info.video.is_none());
        assert_eq!(info.streams, 2);
        assert_eq!(info.bit_rate, Some(128_000));
        let audio = info.audio.expect("audio");
        assert_eq!((audio.sample_rate, audio.channels), (44_100, 2));

        let info = parse(
            r#"{"streams": [
                {"index": 0, "codec_type": "video", "codec_name": "h264", "width": 1920,
                 "height": 1080, "avg_frame_rate": "0/0", "r_frame_rate": "30000/1001",
                 "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}
            ], "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "N/A"}}"#,
        );
        let video = info.video.expect("video");
        assert_eq!(video.rotation, 270);
        assert_eq!(video.display_size(), (1080, 1920));
        assert!((video.fps.expect("fps") - 29.97).abs() < 0.01);
        assert_eq!(info.duration_s, None);

        let info = parse(
            r#"{"streams": [{"index": 0, "codec_type": "video", "codec_name": "h264",
                 "width": 640, "height": 480, "tags": {"rotate": "180"}, "duration": "2.0"}],
                "format": {"format_name": "mov"}}"#,
        );
        assert_eq!(info.video.expect("video").rotation, 180);
        assert_eq!(info.duration_s, Some(2.0));
    }
}
