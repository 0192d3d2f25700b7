//! Audio and video through ffmpeg and ffprobe, run as supervised subprocesses: `media.probe`
//! of audio and video, `media.video_thumbnail` and `media.video_preview`, and raw PCM for the
//! audio formats the symphonia-based waveform cannot read.
//!
//! Every child runs in its own process group with stdin closed and is killed (the whole group,
//! with SIGKILL) when its time budget runs out, when the caller's cancellation token fires or
//! when the future driving it is dropped; the functions here return only once the child is
//! reaped. Only the last lines of stderr are kept (a small ring buffer), and they end up in
//! the error message, classified into the stable codes: a corrupt or truncated input is
//! `BAD_INPUT`, a crash or an unexplained failure `INTERNAL`.

mod pcm;
mod probe;
mod supervise;
mod video;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mediamesh_core::{Error, ErrorCode, Result};
pub use pcm::{Pcm, decode_pcm};
pub use probe::{AudioStream, AvInfo, VideoStream, probe};
use serde::{Deserialize, Serialize};
use supervise::{Budget, FFMPEG, FFPROBE};
use tokio_util::sync::CancellationToken;
pub use video::{VideoOutput, VideoPreviewOptions, VideoThumbOptions, video_preview, video_thumbnail};

/// How long [`Tools::check`] waits for `-version`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the ffmpeg and ffprobe executables are. The service fills this from `MM_FFMPEG` and
/// `MM_FFPROBE`; a bare name is looked up in `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
        }
    }
}

impl Tools {
    /// Runs `ffprobe -version` and `ffmpeg -version` and returns ffmpeg's version line, or an
    /// error that says which tool is missing and how to provide it.
    pub async fn check(&self) -> Result<String> {
        let cancel = CancellationToken::new();
        supervise::version_line(FFPROBE, &self.ffprobe, Budget::new(CHECK_TIMEOUT), &cancel).await?;
        supervise::version_line(FFMPEG, &self.ffmpeg, Budget::new(CHECK_TIMEOUT), &cancel).await
    }
}

/// How far a running ffmpeg has come, reported at most every ~250 ms and once at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0.0 to 1.0 of the expected output duration; 0.0 until the end when that is unknown.
    pub fraction: f32,
    pub message: String,
    /// The ffmpeg process, for logs and for tests that check it is gone afterwards.
    pub pid: Option<u32>,
}

/// Runs ffmpeg with `args` under supervision, reporting progress against
/// `expected_duration_s` (the duration of the output, when known).
///
/// Adds `-nostdin -hide_banner -y -v error -progress pipe:1 -nostats` in front of `args`.
/// Fails with `TIMEOUT` when `timeout` runs out, `CANCELLED` when `cancel` fires, `BAD_INPUT`
/// when ffmpeg exits non-zero saying the input is bad, `INTERNAL` when it crashes or fails
/// otherwise; the message carries the tail of its stderr.
pub async fn run_ffmpeg(
    tools: &Tools,
    args: &[OsString],
    expected_duration_s: Option<f64>,
    timeout: Duration,
    cancel: &CancellationToken,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<()> {
    supervise::ffmpeg(
        tools,
        args,
        expected_duration_s,
        Budget::new(timeout),
        cancel,
        progress,
        "input is corrupt or truncated",
    )
    .await
    .map(drop)
}

/// The size of a file, as an `INTERNAL` error when it cannot be read (it is one we wrote).
async fn output_len(path: &Path) -> Result<u64> {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))
}
