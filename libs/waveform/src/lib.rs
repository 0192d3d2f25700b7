//! Audio waveforms (`media.waveform`): min/max peaks in BBC audiowaveform's JSON format
//! version 2, which peaks.js and wavesurfer.js draw, plus a PNG picture of them.
//!
//! Audio decodes with symphonia (MP3, Ogg Vorbis, FLAC, WAV/PCM, AAC in MP4/M4A/ADTS, Vorbis in
//! Matroska/WebM), streamed packet by packet so that only the peaks stay in memory. Formats
//! symphonia cannot read answer `UNSUPPORTED`; the caller then decodes with ffmpeg to signed
//! 16-bit PCM and calls [`waveform_from_pcm`], which computes the same peaks.
//!
//! Damaged input: a packet the decoder rejects is skipped and counted in
//! [`Waveform::decode_errors`]; where packet timestamps show audio missing (rejected packets,
//! Ogg pages dropped for a bad checksum) it becomes silence, so the rest stays in time. A stream
//! that stops early (an I/O error, or fewer frames than the container declared) keeps what
//! decoded and counts one more error, as audiowaveform keeps what it decoded. If not even one
//! full pixel decoded, or more packets failed than decoded, the input is `BAD_INPUT`. A file cut
//! short may also fail to open at all (an Ogg reader looks for the last page): `BAD_INPUT`.
//!
//! MP4/M4A: symphonia 0.6 ignores edit lists, so the track's edit is applied here (the AAC
//! encoder's priming frames are dropped, trailing padding cut): durations match ffprobe's.

mod decode;
mod mp4;
mod peaks;
mod render;

use std::panic::{AssertUnwindSafe, catch_unwind};

use mediamesh_core::{Error, ErrorCode, Result};
use serde_json::{Map, Value};

use crate::peaks::{PeakBuilder, Peaks};

/// The most values (min and max, all channels) a waveform may hold: 4 h of 48 kHz stereo at the
/// default zoom with split channels fits. The JSON value costs about 32 bytes per value.
pub const MAX_POINTS: usize = 12_000_000;

/// The largest PNG side accepted.
pub const MAX_PNG_SIDE: u32 = 8192;

/// How to compute and draw a waveform.
#[derive(Clone, Debug, PartialEq)]
pub struct WaveformOptions {
    /// Audio frames per waveform pixel (audiowaveform's `--zoom`); at least 2, as there.
    pub samples_per_pixel: u32,
    /// Resolution of the JSON values: 8 (-128..=127) or 16 (-32768..=32767).
    pub bits: u8,
    /// `false`: one waveform of the channels' average; `true`: one min/max pair per channel
    /// per pixel.
    pub split_channels: bool,
    pub png_width: u32,
    pub png_height: u32,
    /// Longer input is refused with `TOO_LARGE`.
    pub max_duration_s: f64,
}

impl Default for WaveformOptions {
    fn default() -> Self {
        Self {
            samples_per_pixel: 256,
            bits: 8,
            split_channels: false,
            png_width: 1800,
            png_height: 280,
            max_duration_s: 4.0 * 3600.0,
        }
    }
}

impl WaveformOptions {
    fn validate(&self) -> Result<()> {
        if self.samples_per_pixel < 2 {
            return Err(Error::bad_input("samples_per_pixel must be at least 2"));
        }
        if self.bits != 8 && self.bits != 16 {
            return Err(Error::bad_input(format!("bits must be 8 or 16, not {}", self.bits)));
        }
        for (name, side) in [("png_width", self.png_width), ("png_height", self.png_height)] {
            if side == 0 || side > MAX_PNG_SIDE {
                return Err(Error::bad_input(format!(
                    "{name} must be 1..={MAX_PNG_SIDE}, not {side}"
                )));
            }
        }
        if !(self.max_duration_s.is_finite() && self.max_duration_s > 0.0) {
            return Err(Error::bad_input("max_duration_s must be a positive number"));
        }
        Ok(())
    }

    /// The most frames allowed at `sample_rate`.
    fn max_frames(&self, sample_rate: u32) -> u64 {
        (self.max_duration_s * f64::from(sample_rate)).ceil() as u64
    }
}

/// A computed waveform.
#[derive(Clone, Debug, PartialEq)]
pub struct Waveform {
    /// audiowaveform's JSON format version 2: `{"version":2,"channels":N,"sample_rate":SR,
    /// "samples_per_pixel":S,"bits":8|16,"length":L,"data":[min,max,...]}`, where `channels` is
    /// the number of waveform channels (1 unless split) and `data` holds `2 * length * channels`
    /// values, per pixel the min and max of each channel in turn.
    pub json: Value,
    /// The peaks drawn at the requested size.
    pub png: Vec<u8>,
    /// Duration of the decoded audio.
    pub duration_s: f64,
    pub sample_rate: u32,
    /// Channels of the source audio (the waveform's own count is the JSON's `channels`).
    pub channels: u16,
    /// The decoder's short name (`mp3`, `vorbis`, `aac`, `pcm_s16le`, `flac`) or, for
    /// [`waveform_from_pcm`], the name the caller gave.
    pub codec: String,
    /// Number of pixels: `ceil(frames / samples_per_pixel)`.
    pub length: u32,
    /// Damage met and worked around: packets that failed to decode, gaps in the timestamps
    /// filled with silence, plus one if the stream stopped early. 0 for clean input.
    pub decode_errors: u32,
}

/// Decodes with symphonia (MP3, Ogg Vorbis, FLAC, WAV/PCM, AAC in MP4/M4A/ADTS). `hint` is a
/// file extension or content type if known. `cancel` is checked between packet batches
/// (`CANCELLED`); `progress` gets 0..=1 at most 20 times.
///
/// Errors: empty, unrecognised, corrupt or truncated input, no audio stream, or audio with no
/// samples → `BAD_INPUT`; a format or codec symphonia does not know → `UNSUPPORTED`; longer
/// than `max_duration_s` → `TOO_LARGE`.
pub fn waveform(
    data: &[u8],
    hint: Option<&str>,
    opts: &WaveformOptions,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(f32),
) -> Result<Waveform> {
    opts.validate()?;
    if data.is_empty() {
        return Err(Error::bad_input("audio is empty (0 bytes)"));
    }
    guarded(|| {
        let decoded = decode::decode(data, hint, opts, cancel, progress)?;
        finish(
            decoded.peaks,
            decoded.sample_rate,
            decoded.channels,
            decoded.codec,
            decoded.decode_errors,
            opts,
        )
    })
}

/// Same peaks from interleaved signed 16-bit PCM (what `ffmpeg -f s16le` gives), for formats
/// symphonia cannot read (the caller runs ffmpeg).
pub fn waveform_from_pcm(
    pcm: &[i16],
    sample_rate: u32,
    channels: u16,
    codec: &str,
    opts: &WaveformOptions,
) -> Result<Waveform> {
    opts.validate()?;
    if sample_rate == 0 || channels == 0 {
        return Err(Error::bad_input(format!(
            "invalid pcm layout: {sample_rate} Hz, {channels} channels"
        )));
    }
    if !pcm.len().is_multiple_of(usize::from(channels)) {
        return Err(Error::bad_input(format!(
            "pcm of {} samples is not a whole number of {channels}-channel frames",
            pcm.len()
        )));
    }
    let frames = (pcm.len() / usize::from(channels)) as u64;
    if frames == 0 {
        return Err(Error::bad_input("audio has no samples"));
    }
    check_limits(frames, sample_rate, usize::from(channels), opts)?;
    guarded(|| {
        let mut builder = PeakBuilder::new(opts.samples_per_pixel, usize::from(channels), opts.split_channels);
        builder.push(pcm);
        finish(builder.finish(), sample_rate, channels, codec.to_string(), 0, opts)
    })
}

/// Whether [`waveform`] can decode this input (format recognised by symphonia and a decoder
/// present), without decoding it all; lets the caller choose the ffmpeg fallback.
pub fn can_decode(data: &[u8], hint: Option<&str>) -> bool {
    !data.is_empty() && catch_unwind(|| decode::can_decode(data, hint)).unwrap_or(false)
}

/// Runs `f`, turning a panic (a decoder tripping over malformed data) into `BAD_INPUT`.
fn guarded(f: impl FnOnce() -> Result<Waveform>) -> Result<Waveform> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("audio decoder panicked");
        Err(Error::bad_input("malformed audio: the decoder failed"))
    })
}

/// Refuses audio longer than allowed or whose waveform would exceed [`MAX_POINTS`].
fn check_limits(frames: u64, sample_rate: u32, in_channels: usize, opts: &WaveformOptions) -> Result<()> {
    if frames > opts.max_frames(sample_rate) {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "audio lasts {:.0} s, over the {:.0} s limit",
                frames as f64 / f64::from(sample_rate),
                opts.max_duration_s
            ),
        ));
    }
    let out_channels = if opts.split_channels { in_channels } else { 1 } as u64;
    let points = frames.div_ceil(u64::from(opts.samples_per_pixel)) * 2 * out_channels;
    if points > MAX_POINTS as u64 {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("waveform would hold {points} values, over {MAX_POINTS}: raise samples_per_pixel"),
        ));
    }
    Ok(())
}

/// Builds the JSON and the PNG from finished peaks.
fn finish(
    peaks: Peaks,
    sample_rate: u32,
    channels: u16,
    codec: String,
    decode_errors: u32,
    opts: &WaveformOptions,
) -> Result<Waveform> {
    let length = u32::try_from(peaks.length).map_err(|_| Error::new(ErrorCode::TooLarge, "waveform is too long"))?;
    let png = render::render_png(
        &peaks.data,
        peaks.out_channels,
        peaks.length,
        opts.png_width,
        opts.png_height,
    )?;
    let values: Vec<Value> = peaks
        .data
        .iter()
        .map(|&v| Value::from(peaks::scale(v, opts.bits)))
        .collect();
    let mut json = Map::new();
    json.insert("version".into(), Value::from(2));
    json.insert("channels".into(), Value::from(peaks.out_channels));
    json.insert("sample_rate".into(), Value::from(sample_rate));
    json.insert("samples_per_pixel".into(), Value::from(opts.samples_per_pixel));
    json.insert("bits".into(), Value::from(opts.bits));
    json.insert("length".into(), Value::from(length));
    json.insert("data".into(), Value::Array(values));
    Ok(Waveform {
        json: Value::Object(json),
        png,
        duration_s: peaks.frames as f64 / f64::from(sample_rate),
        sample_rate,
        channels,
        codec,
        length,
        decode_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let ok = WaveformOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            WaveformOptions { bits: 12, ..ok.clone() },
            WaveformOptions {
                samples_per_pixel: 1,
                ..ok.clone()
            },
            WaveformOptions {
                png_width: 0,
                ..ok.clone()
            },
            WaveformOptions {
                png_height: MAX_PNG_SIDE + 1,
                ..ok.clone()
            },
            WaveformOptions {
                max_duration_s: f64::NAN,
                ..ok.clone()
            },
        ] {
            assert_eq!(bad.validate().unwrap_err().code, ErrorCode::BadInput, "{bad:?}");
        }
    }

    #[test]
    fn pcm_limits() {
        let opts = WaveformOptions {
            max_duration_s: 1.0,
            ..Default::default()
        };
        let pcm = vec![0i16; 8001 * 2];
        let err = waveform_from_pcm(&pcm, 8000, 2, "pcm", &opts).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        let err = waveform_from_pcm(&pcm[..3], 8000, 2, "pcm", &opts).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadInput);
        let err = waveform_from_pcm(&[], 8000, 2, "pcm", &opts).unwrap_err();
        assert_eq!(err.message, "audio has no samples");
        let w = waveform_from_pcm(&pcm[..8000 * 2], 8000, 2, "pcm", &opts).expect("1 s");
        assert_eq!(w.length, 8000u32.div_ceil(256));
        assert_eq!(w.json["channels"], 1);
    }
}
