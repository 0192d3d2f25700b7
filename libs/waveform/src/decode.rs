//! The symphonia side: probing, choosing the audio track, and a streamed decode into peaks.

use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mediamesh_core::{Error, ErrorCode, Result};
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::units::TimeBase;

use crate::mp4::{self, Trim};
use crate::peaks::{PeakBuilder, Peaks};
use crate::{WaveformOptions, check_limits};

/// `cancel` is checked every this many packets.
const CANCEL_EVERY: u64 = 16;

/// A longer jump in timestamps is taken for a damaged timestamp, not for lost audio.
const MAX_GAP_S: u64 = 60;

/// What a decode produced.
pub(crate) struct Decoded {
    pub peaks: Peaks,
    pub sample_rate: u32,
    pub channels: u16,
    pub codec: String,
    pub decode_errors: u32,
}

/// A cursor over the input that publishes how far the reader got, for progress when the
/// container does not declare its length in frames.
struct CountingSource<'a> {
    inner: Cursor<&'a [u8]>,
    pos: Arc<AtomicU64>,
}

impl Read for CountingSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos.store(self.inner.position(), Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for CountingSource<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(to)?;
        self.pos.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

impl MediaSource for CountingSource<'_> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.inner.get_ref().len() as u64)
    }
}

/// Opens a format reader over `data`, mapping probe failures to product errors.
fn open<'a>(data: &'a [u8], hint: Option<&str>, pos: Arc<AtomicU64>) -> Result<Box<dyn FormatReader + 'a>> {
    let source = CountingSource {
        inner: Cursor::new(data),
        pos,
    };
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut probe_hint = Hint::new();
    if let Some(hint) = hint.map(str::trim).filter(|h| !h.is_empty()) {
        if hint.contains('/') {
            probe_hint.mime_type(&hint.to_ascii_lowercase());
        } else {
            probe_hint.with_extension(&hint.trim_start_matches('.').to_ascii_lowercase());
        }
    }
    symphonia::default::get_probe()
        .probe(&probe_hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| probe_error(data, e))
}

fn probe_error(data: &[u8], err: SymError) -> Error {
    match err {
        SymError::Unsupported(what) if what.starts_with("core (probe)") => match known_signature(data) {
            Some(format) => Error::unsupported(format!("{format} is not supported by the built-in audio decoder")),
            None => Error::bad_input("not a recognised audio format"),
        },
        SymError::Unsupported(what) => Error::unsupported(format!("unsupported audio: {what}")),
        SymError::IoError(e) => Error::bad_input(format!("truncated or unreadable audio: {e}")),
        other => Error::bad_input(format!("corrupt audio: {other}")),
    }
}

/// Media containers and codecs symphonia does not read but ffmpeg does, recognised by their
/// first bytes: anything else that fails to probe is not audio.
fn known_signature(data: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| data.get(offset..offset + magic.len()) == Some(magic);
    let signatures: [(bool, &'static str); 20] = [
        (at(0, &[0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11]), "asf/wma"),
        (at(0, &[0x1A, 0x45, 0xDF, 0xA3]), "matroska/webm"),
        (at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")), "aiff"),
        (at(0, b"caff"), "caf"),
        (at(0, b"#!AMR"), "amr"),
        (at(0, &[0x0B, 0x77]), "ac-3"),
        (at(0, &[0x7F, 0xFE, 0x80, 0x01]), "dts"),
        (at(0, b"MAC "), "monkey's audio"),
        (at(0, b"wvpk"), "wavpack"),
        (at(0, b"MPCK") || at(0, b"MP+"), "musepack"),
        (at(0, b"TTA1"), "tta"),
        (at(0, b".snd"), "au"),
        (at(0, b"DSD ") || at(0, b"FRM8"), "dsd"),
        (at(0, b"RIFF"), "riff"),
        (at(0, b"FLV"), "flv"),
        (at(0, &[0x47]) && at(188, &[0x47]), "mpeg-ts"),
        (at(0, &[0, 0, 1, 0xBA]), "mpeg-ps"),
        (at(4, b"ftyp"), "mp4/quicktime"),
        (at(0, b"OggS"), "ogg"),
        (at(0, b".RMF"), "realmedia"),
    ];
    signatures.into_iter().find_map(|(hit, name)| hit.then_some(name))
}

/// The audio track to decode, or `BAD_INPUT` when there is none.
fn audio_track(format: &dyn FormatReader) -> Result<Track> {
    format
        .default_track(TrackType::Audio)
        .or_else(|| format.first_track(TrackType::Audio))
        .cloned()
        .ok_or_else(|| Error::bad_input("no audio stream"))
}

fn make_decoder(track: &Track) -> Result<Box<dyn AudioDecoder>> {
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| Error::bad_input("no audio stream"))?;
    symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(what) => {
                Error::unsupported(format!("audio codec not supported by the built-in decoder: {what}"))
            }
            other => Error::bad_input(format!("corrupt audio stream header: {other}")),
        })
}

pub(crate) fn can_decode(data: &[u8], hint: Option<&str>) -> bool {
    let Ok(format) = open(data, hint, Arc::default()) else {
        return false;
    };
    audio_track(format.as_ref())
        .and_then(|track| make_decoder(&track))
        .is_ok()
}

/// The declared duration of a track in seconds, if the container says.
fn declared_seconds(track: &Track) -> Option<f64> {
    let params = track.codec_params.as_ref().and_then(|p| p.audio());
    if let (Some(frames), Some(rate)) = (track.num_frames, params.and_then(|p| p.sample_rate))
        && rate > 0
    {
        return Some(frames as f64 / f64::from(rate));
    }
    match (track.duration, track.time_base) {
        (Some(dur), Some(tb)) => Some(tb.calc_duration_saturating(dur).as_secs_f64()),
        _ => None,
    }
}

/// A timestamp difference as frames at `rate`.
fn gap_frames(ticks: u64, tb: TimeBase, rate: u32) -> u64 {
    let frames = u128::from(ticks) * u128::from(tb.numer.get()) * u128::from(rate) / u128::from(tb.denom.get());
    u64::try_from(frames).unwrap_or(u64::MAX)
}

/// Pushes `frames` frames of silence through the edit into the peaks.
fn push_silence(builder: &mut PeakBuilder, trim: &mut Trim, frames: u64, channels: usize) {
    const CHUNK: u64 = 4096;
    let zeros = vec![0i16; CHUNK as usize * channels];
    let mut left = frames;
    while left > 0 {
        let n = left.min(CHUNK);
        builder.push(trim.apply(&zeros[..n as usize * channels], channels));
        left -= n;
    }
}

/// Calls `progress` each time another twentieth of the work is done.
struct Progress<'a> {
    report: &'a mut dyn FnMut(f32),
    next: f32,
}

impl Progress<'_> {
    fn update(&mut self, fraction: f64) {
        let fraction = fraction.clamp(0.0, 1.0) as f32;
        if fraction >= self.next && self.next <= 1.0 {
            (self.report)(fraction);
            self.next = ((fraction * 20.0).floor() + 1.0) / 20.0;
        }
    }

    fn done(&mut self) {
        if self.next <= 1.0 {
            (self.report)(1.0);
            self.next = f32::INFINITY;
        }
    }
}

pub(crate) fn decode(
    data: &[u8],
    hint: Option<&str>,
    opts: &WaveformOptions,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(f32),
) -> Result<Decoded> {
    let pos = Arc::new(AtomicU64::new(0));
    let mut format = open(data, hint, Arc::clone(&pos))?;
    let track = audio_track(format.as_ref())?;
    if let Some(seconds) = declared_seconds(&track)
        && seconds > opts.max_duration_s
    {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "audio lasts {seconds:.0} s, over the {:.0} s limit",
                opts.max_duration_s
            ),
        ));
    }
    let mut decoder = make_decoder(&track)?;
    let codec = decoder.codec_info().short_name.to_string();
    let declared_frames = track.num_frames.filter(|&n| n > 0);
    let total_bytes = data.len() as f64;
    let mut progress = Progress {
        report: progress,
        next: 0.05,
    };

    let edit = if format.format_info().short_name == "isomp4" {
        mp4::audio_edit(data, track.id)
    } else {
        None
    };
    let mut trim = Trim::none();

    let mut builder: Option<PeakBuilder> = None;
    let mut spec: Option<(u32, usize)> = None;
    let mut scratch: Vec<i16> = Vec::new();
    let mut packets = 0u64;
    let mut decoded_packets = 0u64;
    let mut decode_errors = 0u32;
    let mut raw_frames = 0u64;
    let mut next_pts: Option<i64> = None;
    let mut errors_since_good = false;
    let mut stopped_early = false;

    loop {
        if packets.is_multiple_of(CANCEL_EVERY) && cancel() {
            return Err(Error::new(ErrorCode::Cancelled, "waveform cancelled"));
        }
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymError::ResetRequired) => {
                // A new chained stream (Ogg): the waveform covers the first one.
                tracing::debug!("audio stream changed, keeping the first");
                break;
            }
            Err(e) => {
                // The demuxer cannot go on: the file is truncated or damaged from here.
                tracing::debug!(error = %e, packets, "audio stream stopped early");
                stopped_early = true;
                break;
            }
        };
        packets += 1;
        if packet.track_id != track.id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                let rate = buf.spec().rate();
                let channels = buf.spec().channels().count();
                if buf.frames() == 0 {
                    continue;
                }
                if rate == 0 || channels == 0 || spec.is_some_and(|s| s != (rate, channels)) {
                    // The layout changed mid-stream: such a packet cannot join these peaks.
                    decode_errors = decode_errors.saturating_add(1);
                    continue;
                }
                if spec.is_none() {
                    spec = Some((rate, channels));
                    if let Some(edit) = edit {
                        let (skip, keep) = edit.in_frames(rate);
                        trim = Trim::new(skip, keep);
                    }
                }
                let (samples_per_pixel, split) = (opts.samples_per_pixel, opts.split_channels);
                let b = builder.get_or_insert_with(|| PeakBuilder::new(samples_per_pixel, channels, split));
                // Packets lost before this one (skipped by the demuxer or failed to decode)
                // become silence, so that the rest of the waveform stays in time.
                let pts = packet.pts.get();
                if let (Some(expected), Some(tb)) = (next_pts, track.time_base)
                    && pts > expected
                {
                    let gap = gap_frames(pts.abs_diff(expected), tb, rate);
                    if gap > 0 && gap <= u64::from(rate) * MAX_GAP_S {
                        tracing::debug!(gap, pts, "filling lost audio with silence");
                        push_silence(b, &mut trim, gap, channels);
                        raw_frames += gap;
                        if !errors_since_good {
                            decode_errors = decode_errors.saturating_add(1);
                        }
                    }
                }
                next_pts = Some(pts.saturating_add_unsigned(packet.dur.get()));
                errors_since_good = false;
                buf.copy_to_vec_interleaved::<i16>(&mut scratch);
                raw_frames += buf.frames() as u64;
                b.push(trim.apply(&scratch, channels));
                decoded_packets += 1;
                check_limits(b.frames(), rate, b.in_channels(), opts)?;
                let fraction = match declared_frames {
                    Some(total) => raw_frames as f64 / total as f64,
                    None => pos.load(Ordering::Relaxed) as f64 / total_bytes,
                };
                progress.update(fraction);
            }
            Err(SymError::DecodeError(e)) => {
                tracing::debug!(error = e, "skipping an undecodable audio packet");
                decode_errors = decode_errors.saturating_add(1);
                errors_since_good = true;
            }
            Err(SymError::IoError(e)) => {
                tracing::debug!(error = %e, "skipping a short audio packet");
                decode_errors = decode_errors.saturating_add(1);
                errors_since_good = true;
            }
            Err(SymError::ResetRequired) => {
                decoder.reset();
                decode_errors = decode_errors.saturating_add(1);
                errors_since_good = true;
            }
            Err(SymError::Unsupported(what)) if decoded_packets == 0 => {
                return Err(Error::unsupported(format!(
                    "audio stream not supported by the built-in decoder: {what}"
                )));
            }
            Err(e) => {
                tracing::debug!(error = %e, "skipping an audio packet");
                decode_errors = decode_errors.saturating_add(1);
                errors_since_good = true;
            }
        }
    }
    decoder.finalize();

    let (Some(builder), Some((sample_rate, channels))) = (builder.filter(|b| b.frames() > 0), spec) else {
        return Err(if decode_errors > 0 || stopped_early {
            Error::bad_input("corrupt or truncated audio: nothing could be decoded")
        } else {
            Error::bad_input("audio has no samples")
        });
    };
    let frames = builder.frames();
    if let Some(declared) = declared_frames
        && raw_frames.saturating_mul(100) < declared.saturating_mul(99)
    {
        tracing::debug!(raw_frames, declared, "audio shorter than its container declares");
        stopped_early = true;
    }
    if stopped_early {
        decode_errors = decode_errors.saturating_add(1);
    }
    if decode_errors > 0 && frames < u64::from(opts.samples_per_pixel) {
        return Err(Error::bad_input(
            "corrupt or truncated audio: less than one pixel decoded",
        ));
    }
    if u64::from(decode_errors) > decoded_packets {
        return Err(Error::bad_input(format!(
            "corrupt audio: {decode_errors} packets failed, {decoded_packets} decoded"
        )));
    }
    if decode_errors > 0 {
        tracing::warn!(decode_errors, frames, "audio decoded with errors");
    }
    progress.done();
    let channels = u16::try_from(channels).map_err(|_| Error::bad_input(format!("audio has {channels} channels")))?;
    Ok(Decoded {
        peaks: builder.finish(),
        sample_rate,
        channels,
        codec,
        decode_errors,
    })
}
