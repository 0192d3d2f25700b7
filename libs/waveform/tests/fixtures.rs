//! Waveforms of the real audio fixtures, the ffmpeg PCM path, and damaged or foreign input.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mediamesh_core::ErrorCode;
use mediamesh_waveform::{Waveform, WaveformOptions, can_decode, waveform, waveform_from_pcm};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/media")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(data: &[u8], hint: Option<&str>, opts: &WaveformOptions) -> mediamesh_core::Result<Waveform> {
    waveform(data, hint, opts, &|| false, &mut |_| {})
}

/// Runs ffmpeg with `args`, failing the test if it fails; returns stdout.
fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg must be installed");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pcm_from_ffmpeg(path: &Path) -> Vec<i16> {
    let bytes = ffmpeg(&["-i", path.to_str().expect("utf-8 path"), "-f", "s16le", "-"]);
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn data(w: &Waveform) -> Vec<i64> {
    w.json["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|v| v.as_i64().expect("integer value"))
        .collect()
}

/// The max of each pixel of a one-channel waveform.
fn maxima(w: &Waveform) -> Vec<f64> {
    data(w).chunks(2).map(|p| p[1] as f64).collect()
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

struct Expect {
    file: &'static str,
    hint: &'static str,
    durations: &'static [f64],
    sample_rate: u32,
    channels: u16,
    codec: &'static str,
    speech: bool,
}

const FIXTURES: [Expect; 5] = [
    Expect {
        file: "speech_en.wav",
        hint: "wav",
        durations: &[7.37],
        sample_rate: 22050,
        channels: 1,
        codec: "pcm_s16le",
        speech: true,
    },
    Expect {
        file: "speech_en.mp3",
        hint: "audio/mpeg",
        // 7.44 s with the encoder's padding, 7.37 s when it is trimmed (gapless)
        durations: &[7.44, 7.37],
        sample_rate: 22050,
        channels: 1,
        codec: "mp3",
        speech: true,
    },
    Expect {
        file: "speech_en.ogg",
        hint: "ogg",
        durations: &[7.37],
        sample_rate: 22050,
        channels: 1,
        codec: "vorbis",
        speech: true,
    },
    Expect {
        file: "ktuberling_en_moon_astronaut.ogg",
        hint: "ogg",
        durations: &[1.11],
        sample_rate: 44100,
        channels: 2,
        codec: "vorbis",
        speech: true,
    },
    Expect {
        file: "synthetic_testsrc_1280x720_5s.mp4",
        hint: "video/mp4",
        durations: &[5.0],
        sample_rate: 48000,
        channels: 1,
        codec: "aac",
        speech: false,
    },
];

fn check_format(w: &Waveform, opts: &WaveformOptions) {
    let obj = w.json.as_object().expect("json object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bits",
            "channels",
            "data",
            "length",
            "sample_rate",
            "samples_per_pixel",
            "version"
        ]
    );
    for key in [
        "version",
        "channels",
        "sample_rate",
        "samples_per_pixel",
        "bits",
        "length",
    ] {
        assert!(obj[key].is_u64(), "{key} must be an unsigned integer: {}", obj[key]);
    }
    assert_eq!(obj["version"], 2);
    assert_eq!(obj["bits"], u64::from(opts.bits));
    assert_eq!(obj["samples_per_pixel"], u64::from(opts.samples_per_pixel));
    assert_eq!(obj["sample_rate"], u64::from(w.sample_rate));
    assert_eq!(obj["length"], u64::from(w.length));
    let out_channels = obj["channels"].as_u64().expect("channels");
    let expected_channels = if opts.split_channels { u64::from(w.channels) } else { 1 };
    assert_eq!(out_channels, expected_channels);
    let values = data(w);
    assert_eq!(values.len() as u64, 2 * u64::from(w.length) * out_channels);
    let (lo, hi) = if opts.bits == 8 { (-128, 127) } else { (-32768, 32767) };
    for pair in values.chunks(2) {
        assert!(
            lo <= pair[0] && pair[0] <= pair[1] && pair[1] <= hi,
            "bad pair {pair:?}"
        );
    }
    // the frame count the duration stands for gives the length
    let frames = (w.duration_s * f64::from(w.sample_rate)).round() as u64;
    assert_eq!(u64::from(w.length), frames.div_ceil(u64::from(opts.samples_per_pixel)));
    let approx = w.duration_s * f64::from(w.sample_rate) / f64::from(opts.samples_per_pixel);
    assert!((f64::from(w.length) - approx).abs() <= 1.0);
}

fn check_png(w: &Waveform, width: u32, height: u32) {
    let img = image::load_from_memory_with_format(&w.png, image::ImageFormat::Png)
        .expect("png decodes")
        .to_rgba8();
    assert_eq!(img.dimensions(), (width, height));
    let drawn = img.pixels().filter(|p| p[3] > 0).count();
    // more than the mid line alone, less than everything
    assert!(
        drawn > width as usize && drawn < (width * height) as usize,
        "{drawn} pixels drawn"
    );
}

#[test]
fn every_audio_fixture() {
    let opts = WaveformOptions {
        png_width: 640,
        png_height: 120,
        ..Default::default()
    };
    for f in &FIXTURES {
        let bytes = read(f.file);
        assert!(can_decode(&bytes, Some(f.hint)), "{}", f.file);
        let mut reports = Vec::new();
        let started = Instant::now();
        let w = waveform(&bytes, Some(f.hint), &opts, &|| false, &mut |p| reports.push(p))
            .unwrap_or_else(|e| panic!("{}: {e}", f.file));
        let elapsed = started.elapsed();
        let started = Instant::now();
        let defaults = run(&bytes, Some(f.hint), &WaveformOptions::default()).expect("defaults");
        check_png(&defaults, 1800, 280);
        eprintln!(
            "{}: {} us (640x120 png), {} us (defaults, 1800x280 png), {:.3} s, {} px, codec {}, errors {}",
            f.file,
            elapsed.as_micros(),
            started.elapsed().as_micros(),
            w.duration_s,
            w.length,
            w.codec,
            w.decode_errors
        );
        assert!(
            f.durations.iter().any(|d| (w.duration_s - d).abs() < 0.03),
            "{}: duration {} not in {:?}",
            f.file,
            w.duration_s,
            f.durations
        );
        assert_eq!(w.sample_rate, f.sample_rate, "{}", f.file);
        assert_eq!(w.channels, f.channels, "{}", f.file);
        assert_eq!(w.codec, f.codec, "{}", f.file);
        assert_eq!(w.decode_errors, 0, "{}", f.file);
        check_format(&w, &opts);
        check_png(&w, 640, 120);

        assert!(!reports.is_empty() && reports.len() <= 20, "{}: {reports:?}", f.file);
        assert!(reports.windows(2).all(|p| p[0] <= p[1]), "{reports:?}");
        assert_eq!(reports.last().copied(), Some(1.0));

        let values = data(&w);
        let loudest = values.iter().map(|v| v.abs()).max().unwrap_or(0);
        let spans: Vec<i64> = values.chunks(2).map(|p| p[1] - p[0]).collect();
        if f.speech {
            assert!(loudest >= 40, "{}: speech peaks only reach {loudest}", f.file);
            let quiet = spans.iter().filter(|&&s| s <= 2).count();
            assert!(quiet >= 2, "{}: no near-silent pixel", f.file);
        } else {
            // ffmpeg's sine source at its 1/8 amplitude: every pixel swings about -16..16
            let steady = spans.iter().filter(|&&s| (28..=34).contains(&s)).count();
            assert!(steady * 10 >= spans.len() * 9, "{}: {steady}/{}", f.file, spans.len());
        }
    }
}

#[test]
fn split_channels_and_sixteen_bits() {
    let bytes = read("ktuberling_en_moon_astronaut.ogg");
    let split_opts = WaveformOptions {
        split_channels: true,
        bits: 16,
        ..Default::default()
    };
    let split = run(&bytes, None, &split_opts).expect("split");
    check_format(&split, &split_opts);
    assert_eq!(split.json["channels"], 2);
    let mixed_opts = WaveformOptions {
        bits: 16,
        ..Default::default()
    };
    let mixed = run(&bytes, None, &mixed_opts).expect("mixed");
    check_format(&mixed, &mixed_opts);
    assert_eq!(mixed.length, split.length);
    let (s, m) = (data(&split), data(&mixed));
    // the average of two channels lies between their extremes
    for (px, pair) in m.chunks(2).enumerate() {
        let chans = &s[px * 4..px * 4 + 4];
        assert!(pair[0] >= chans[0].min(chans[2]) && pair[1] <= chans[1].max(chans[3]));
    }
    // 8-bit values are the 16-bit ones divided by 256
    let eight = run(&bytes, None, &WaveformOptions::default()).expect("8 bit");
    let e = data(&eight);
    assert_eq!(e.len(), m.len());
    assert!(e.iter().zip(&m).all(|(a, b)| *a == b / 256));
    assert!(
        m.iter().any(|v| v.abs() > 256 * 20),
        "16-bit peaks must use the 16-bit range"
    );
}

#[test]
fn wav_and_ogg_envelopes_agree() {
    let opts = WaveformOptions::default();
    let wav = run(&read("speech_en.wav"), None, &opts).expect("wav");
    let ogg = run(&read("speech_en.ogg"), None, &opts).expect("ogg");
    let mp3 = run(&read("speech_en.mp3"), None, &opts).expect("mp3");
    assert!(wav.length.abs_diff(ogg.length) <= 1);
    let r = correlation(&maxima(&wav), &maxima(&ogg));
    assert!(r > 0.9, "wav/ogg correlation {r}");
    // the mp3 keeps the encoder delay when it is not trimmed; it is still the same speech
    let r = correlation(&maxima(&wav), &maxima(&mp3));
    assert!(r > 0.8, "wav/mp3 correlation {r}");
}

#[test]
fn ffmpeg_pcm_matches_the_decoder() {
    for (file, bits) in [
        ("speech_en.wav", 16),
        ("speech_en.wav", 8),
        ("ktuberling_en_moon_astronaut.ogg", 16),
    ] {
        for split in [false, true] {
            let opts = WaveformOptions {
                bits,
                split_channels: split,
                ..Default::default()
            };
            let direct = run(&read(file), None, &opts).expect("decode");
            let pcm = pcm_from_ffmpeg(&fixtures().join(file));
            let via = waveform_from_pcm(&pcm, direct.sample_rate, direct.channels, "ffmpeg", &opts).expect("pcm");
            check_format(&via, &opts);
            assert_eq!(via.length, direct.length, "{file}");
            assert_eq!(via.json["channels"], direct.json["channels"]);
            assert_eq!(via.codec, "ffmpeg");
            let (a, b) = (data(&direct), data(&via));
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).max().unwrap_or(0);
            eprintln!("{file} bits {bits} split {split}: ffmpeg pcm differs by at most {worst}");
            assert!(worst <= 1, "{file} bits {bits} split {split}: differs by {worst}");
            assert!((via.duration_s - direct.duration_s).abs() < 1e-9);
        }
    }
}

/// A RIFF/WAVE header for 16-bit mono PCM with `data_bytes` of samples following.
fn wav_header(data_bytes: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_bytes).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&8000u32.to_le_bytes());
    h.extend_from_slice(&16000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_bytes.to_le_bytes());
    h
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn bad_input(bytes: &[u8], hint: Option<&str>) -> String {
    let err = run(bytes, hint, &WaveformOptions::default()).expect_err("must fail");
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    eprintln!("{} bytes, hint {hint:?}: {err}", bytes.len());
    err.message
}

#[test]
fn empty_random_and_hand_made_inputs() {
    assert!(bad_input(&[], Some("mp3")).contains("empty"));
    for hint in [None, Some("mp3"), Some("audio/ogg")] {
        let msg = bad_input(&random_bytes(64 * 1024), hint);
        assert!(!msg.is_empty());
    }
    assert!(!can_decode(&random_bytes(64 * 1024), None));
    assert!(!can_decode(&[], None));
    assert_eq!(bad_input(&wav_header(0), Some("wav")), "audio has no samples");

    // a tiny valid wav: 1000 samples of a ramp, shorter than nothing
    let mut wav = wav_header(2000);
    for i in 0..1000i16 {
        wav.extend_from_slice(&(i * 32).to_le_bytes());
    }
    let w = run(&wav, None, &WaveformOptions::default()).expect("tiny wav");
    assert_eq!(w.length, 1000u32.div_ceil(256));
    assert_eq!(data(&w), vec![0, 31, 32, 63, 64, 95, 96, 124]);
}

#[test]
fn truncated_files_keep_what_decoded_or_fail_cleanly() {
    for file in ["speech_en.wav", "speech_en.mp3", "speech_en.ogg"] {
        let bytes = read(file);
        let full = run(&bytes, None, &WaveformOptions::default()).expect("full");
        let cut = &bytes[..bytes.len() / 10];
        match run(cut, None, &WaveformOptions::default()) {
            Ok(w) => {
                eprintln!(
                    "{file} cut: {} of {} px, {} errors",
                    w.length, full.length, w.decode_errors
                );
                check_format(&w, &WaveformOptions::default());
                assert!(
                    w.length > 0 && w.length * 5 < full.length,
                    "{file}: {} of {} pixels",
                    w.length,
                    full.length
                );
                // what decoded is the start of the same waveform
                let n = w.length as usize * 2 - 2;
                assert_eq!(data(&w)[..n], data(&full)[..n], "{file}");
                if file.ends_with(".wav") {
                    // the header declares the full length: the cut is counted
                    assert!(w.decode_errors >= 1, "{file}");
                }
            }
            Err(e) => {
                eprintln!("{file} cut: {e}");
                assert_eq!(e.code, ErrorCode::BadInput, "{file}: {e}");
            }
        }
        // a few bytes of the header only
        let err = run(&bytes[..20], None, &WaveformOptions::default()).expect_err(file);
        assert_eq!(err.code, ErrorCode::BadInput, "{file}: {err}");
    }
}

#[test]
fn foreign_inputs_with_ffmpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let video = dir.path().join("video_only.mp4");
    let video_s = video.to_str().expect("utf-8");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5:duration=1",
        "-an",
        "-c:v",
        "libx264",
        video_s,
    ]);
    let bytes = std::fs::read(&video).expect("video");
    let err = run(&bytes, Some("mp4"), &WaveformOptions::default()).expect_err("video only");
    assert_eq!(err.code, ErrorCode::BadInput);
    assert_eq!(err.message, "no audio stream");
    assert!(!can_decode(&bytes, Some("mp4")));

    // a format symphonia does not read: UNSUPPORTED, and the ffmpeg path then works
    let wma = dir.path().join("speech.wma");
    let wav = fixtures().join("speech_en.wav");
    let wav_s = wav.to_str().expect("utf-8");
    ffmpeg(&["-i", wav_s, "-c:a", "wmav2", wma.to_str().expect("utf-8")]);
    let bytes = std::fs::read(&wma).expect("wma");
    assert!(!can_decode(&bytes, Some("wma")));
    let err = run(&bytes, Some("wma"), &WaveformOptions::default()).expect_err("wma");
    assert_eq!(err.code, ErrorCode::Unsupported, "{err}");
    let pcm = pcm_from_ffmpeg(&wma);
    let w = waveform_from_pcm(&pcm, 22050, 1, "wmav2", &WaveformOptions::default()).expect("pcm");
    assert!((w.duration_s - 7.37).abs() < 0.1, "{}", w.duration_s);

    // a container symphonia reads with a codec it does not: Opus in Ogg
    let opus = dir.path().join("speech.opus");
    ffmpeg(&["-i", wav_s, "-c:a", "libopus", opus.to_str().expect("utf-8")]);
    let bytes = std::fs::read(&opus).expect("opus");
    assert!(!can_decode(&bytes, Some("opus")));
    let err = run(&bytes, Some("opus"), &WaveformOptions::default()).expect_err("opus");
    assert_eq!(err.code, ErrorCode::Unsupported, "{err}");
}

#[test]
fn limits_and_cancellation() {
    let bytes = read("speech_en.wav");
    let short = WaveformOptions {
        max_duration_s: 5.0,
        ..Default::default()
    };
    assert_eq!(run(&bytes, None, &short).unwrap_err().code, ErrorCode::TooLarge);
    // an mp3's length is estimated, or found by decoding
    let mp3 = read("speech_en.mp3");
    assert_eq!(run(&mp3, None, &short).unwrap_err().code, ErrorCode::TooLarge);

    let err = waveform(&bytes, None, &WaveformOptions::default(), &|| true, &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    // cancelled midway, after the first checks passed
    let calls = Cell::new(0);
    let cancel = || {
        calls.set(calls.get() + 1);
        calls.get() > 2
    };
    let mut reports = 0;
    let err = waveform(&mp3, None, &WaveformOptions::default(), &cancel, &mut |_| reports += 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    assert_eq!(calls.get(), 3);
}

#[test]
fn json_round_trips_as_text() {
    let w = run(&read("speech_en.ogg"), None, &WaveformOptions::default()).expect("ogg");
    let text = serde_json::to_string(&w.json).expect("serialise");
    let back: Value = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, w.json);
    assert!(text.starts_with('{') && text.contains("\"version\":2"));
}

#[test]
fn corrupted_middles_decode_around_the_damage() {
    for f in &FIXTURES {
        let mut bytes = read(f.file);
        let full = run(&bytes, Some(f.hint), &WaveformOptions::default()).expect("full");
        // overwrite 1% of the bytes in the middle third with noise
        let (start, len) = (bytes.len() / 3, bytes.len() / 100);
        let noise = random_bytes(len);
        bytes[start..start + len].copy_from_slice(&noise);
        match run(&bytes, Some(f.hint), &WaveformOptions::default()) {
            Ok(w) => {
                eprintln!(
                    "{} corrupted: {} of {} px, {} errors",
                    f.file, w.length, full.length, w.decode_errors
                );
                check_format(&w, &WaveformOptions::default());
                // damage drops or garbles some packets, never most of the audio
                assert!(
                    w.length * 10 >= full.length * 8,
                    "{}: {} of {}",
                    f.file,
                    w.length,
                    full.length
                );
                assert!(
                    w.length <= full.length + 2,
                    "{}: {} of {}",
                    f.file,
                    w.length,
                    full.length
                );
                if f.file.ends_with(".wav") {
                    // PCM has nothing to detect: same length, same start
                    assert_eq!(w.length, full.length);
                    assert_eq!(data(&w)[..100], data(&full)[..100]);
                } else if !f.file.ends_with(".mp3") {
                    // timestamped packets: what was lost became silence, the timeline holds
                    assert_eq!(w.length, full.length, "{}", f.file);
                    assert!(w.decode_errors >= 1, "{}", f.file);
                    assert_eq!(data(&w)[..40], data(&full)[..40], "{}", f.file);
                }
            }
            Err(e) => {
                eprintln!("{} corrupted: {e}", f.file);
                assert_eq!(e.code, ErrorCode::BadInput, "{}: {e}", f.file);
                assert!(!f.file.ends_with(".wav"), "{e}");
            }
        }
    }
}
