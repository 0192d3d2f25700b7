//! Raw PCM from any audio ffmpeg decodes, for the formats the symphonia-based waveform cannot
//! read. Bounded: audio longer than the caller accepts is refused, before decoding when the
//! container says so and while decoding when it does not.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use mediamesh_core::{Error, ErrorCode, Result};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio_util::sync::CancellationToken;

use crate::Tools;
use crate::probe::{file_arg, probe_within};
use crate::supervise::{self, Budget, FFMPEG};

/// Decoded audio: interleaved signed 16-bit samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Pcm {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
    pub channels: u16,
    /// The codec of the source stream (`vorbis`, `aac`, `opus`...).
    pub codec: String,
}

impl Pcm {
    /// Seconds of audio held.
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 || self.channels == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / f64::from(self.channels) / f64::from(self.sample_rate)
    }
}

/// Decodes the first audio stream of `input` to interleaved s16le at its own sample rate and
/// channel count (`ffmpeg -i in -vn -f s16le -acodec pcm_s16le pipe:1`).
///
/// `TOO_LARGE` when the audio is longer than `max_seconds` (the child is killed as soon as
/// its output passes that much), `BAD_INPUT` when there is no audio stream or it is corrupt,
/// and the errors of [`crate::probe`] and [`crate::run_ffmpeg`].
pub async fn decode_pcm(
    tools: &Tools,
    input: &Path,
    max_seconds: f64,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Pcm> {
    if !(max_seconds.is_finite() && max_seconds > 0.0) {
        return Err(Error::internal(format!("invalid audio length limit: {max_seconds}")));
    }
    let budget = Budget::new(timeout);
    let info = probe_within(tools, input, budget, cancel).await?;
    let audio = info.audio.ok_or_else(|| Error::bad_input("no audio stream"))?;
    if audio.sample_rate == 0 || audio.channels == 0 {
        return Err(Error::bad_input("audio stream without a sample rate or channel count"));
    }
    if let Some(duration) = audio.duration_s.or(info.duration_s)
        && duration > max_seconds
    {
        return Err(too_long(max_seconds, Some(duration)));
    }
    let frames = (max_seconds * f64::from(audio.sample_rate)).ceil() as u64;
    let limit = frames.saturating_mul(u64::from(audio.channels)).saturating_mul(2);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);

    let args: Vec<OsString> = vec![
        "-nostdin".into(),
        "-hide_banner".into(),
        "-v".into(),
        "error".into(),
        "-nostats".into(),
        "-protocol_whitelist".into(),
        "file".into(),
        "-i".into(),
        file_arg(input),
        "-map".into(),
        format!("0:{}", audio.index).into(),
        "-vn".into(),
        "-sn".into(),
        "-dn".into(),
        "-f".into(),
        "s16le".into(),
        "-acodec".into(),
        "pcm_s16le".into(),
        "-ar".into(),
        audio.sample_rate.to_string().into(),
        "-ac".into(),
        audio.channels.to_string().into(),
        "pipe:1".into(),
    ];
    let finished = supervise::supervise(
        FFMPEG,
        &tools.ffmpeg,
        &args,
        budget,
        cancel,
        "audio is corrupt or truncated",
        |stdout, _| read_samples(stdout, limit, max_seconds),
    )
    .await?;
    Ok(Pcm {
        samples: finished.output,
        sample_rate: audio.sample_rate,
        channels: audio.channels,
        codec: audio.codec,
    })
}

/// Reads s16le from ffmpeg's stdout, failing past `limit` bytes (which kills ffmpeg).
async fn read_samples(mut stdout: ChildStdout, limit: usize, max_seconds: f64) -> Result<Vec<i16>> {
    let mut samples = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut odd: Option<u8> = None;
    let mut total = 0usize;
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| Error::internal(format!("cannot read decoded audio: {e}")))?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n);
        if total > limit {
            return Err(too_long(max_seconds, None));
        }
        let mut bytes = &buf[..n];
        if let Some(low) = odd.take() {
            samples.push(i16::from_le_bytes([low, bytes[0]]));
            bytes = &bytes[1..];
        }
        let pairs = bytes.chunks_exact(2);
        if let [last] = pairs.remainder() {
            odd = Some(*last);
        }
        samples.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
    }
    Ok(samples)
}

fn too_long(max_seconds: f64, duration: Option<f64>) -> Error {
    let message = match duration {
        Some(d) => format!("audio is {d:.1} s long, more than the {max_seconds:.1} s limit"),
        None => format!("audio decodes to more than the {max_seconds:.1} s limit"),
    };
    Error::new(ErrorCode::TooLarge, message)
}
