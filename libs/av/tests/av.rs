//! Real ffmpeg and ffprobe on the shared fixtures and on small generated videos, and fake
//! tools (shell scripts) for hangs, crashes and hostile output.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mediamesh_av::{
    AvInfo, ErrorCode, Progress, Tools, VideoPreviewOptions, VideoThumbOptions, decode_pcm, probe, run_ffmpeg,
    video_preview, video_thumbnail,
};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const MP4: &str = "synthetic_testsrc_1280x720_5s.mp4";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/media")
        .join(name)
}

/// A video made by ffmpeg from lavfi sources, kept under the target's tmp folder between runs
/// (the name says what it holds; written to a temporary name first, then renamed).
fn generated(name: &str, args: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mediamesh-av");
    let path = dir.join(name);
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let part = dir.join(format!("{name}.{}.part", std::process::id()));
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .args(["-f", "mp4"])
        .arg(&part)
        .status()
        .unwrap();
    assert!(status.success(), "generating {name}");
    std::fs::rename(&part, &path).unwrap();
    path
}

/// 15 s of 1920x1080 at 24 fps with a sine tone.
fn video_1080p_15s() -> PathBuf {
    generated(
        "testsrc2_1920x1080_24fps_15s_sine.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=24:duration=15",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=15",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-shortest",
        ],
    )
}

/// 320x240, 25 fps, no audio.
fn video_320x240(seconds: u32) -> PathBuf {
    let source = format!("testsrc2=size=320x240:rate=25:duration={seconds}");
    generated(
        &format!("testsrc2_320x240_25fps_{seconds}s_noaudio.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            &source,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

/// The 3 s 320x240 video with a display matrix saying: rotate by 90 degrees.
fn video_rotated() -> PathBuf {
    let source = video_320x240(3);
    generated(
        "testsrc2_320x240_3s_rotate90.mp4",
        &[
            "-i",
            source.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
        ],
    )
}

async fn probe_ok(path: &Path) -> AvInfo {
    probe(&Tools::default(), path, T, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("probe {}: {e}", path.display()))
}

/// Collects progress reports.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<Progress>>>);

impl Reports {
    fn sink(&self) -> impl Fn(Progress) + Send + Sync + use<> {
        let reports = self.0.clone();
        move |p| reports.lock().unwrap().push(p)
    }

    fn all(&self) -> Vec<Progress> {
        self.0.lock().unwrap().clone()
    }

    /// Fractions never go back, stay in 0..=1, and the last report is the end.
    fn assert_sane(&self) {
        let all = self.all();
        assert!(!all.is_empty(), "no progress reported");
        for pair in all.windows(2) {
            assert!(pair[0].fraction <= pair[1].fraction, "{all:?}");
        }
        assert!(all.iter().all(|p| (0.0..=1.0).contains(&p.fraction)), "{all:?}");
        assert_eq!(all.last().unwrap().fraction, 1.0, "{all:?}");
    }
}

fn ignore(_: Progress) {}

/// Whether a process is running (a zombie waiting for its parent to reap it is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Waits up to 2 s for a process we do not reap (a grandchild) to stop running.
async fn wait_dead(pid: u32) -> bool {
    for _ in 0..40 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Writes an executable shell script. The file is written by another process so that no
/// descriptor open for writing in this one is inherited by a concurrent fork, which would make
/// running the script fail with "Text file busy".
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let source = dir.join(format!("{name}.txt"));
    std::fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
    let path = dir.join(name);
    let status = std::process::Command::new("install")
        .arg("-m755")
        .arg(&source)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

fn fake_ffmpeg(dir: &Path, body: &str) -> Tools {
    Tools {
        ffmpeg: script(dir, "ffmpeg", body),
        ..Tools::default()
    }
}

/// Top-level MP4 box types in file order.
fn mp4_boxes(bytes: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        let size = match size32 {
            0 => bytes.len() - at,
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize,
            n => n,
        };
        assert!(size >= 8, "bad box size at {at}");
        at += size;
    }
    boxes
}

/// Mean absolute difference of two images' luma, same size.
fn luma_diff(a: &image::GrayImage, b: &image::GrayImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// The frame at `at` as ffmpeg decodes it, lossless.
fn reference_frame(video: &Path, at: &str, dir: &Path) -> image::GrayImage {
    let out = dir.join(format!("ref_{at}.png"));
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-ss", at, "-i"])
        .arg(video)
        .args(["-frames:v", "1"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    image::open(&out).unwrap().to_luma8()
}

// ---- probe ----

#[tokio::test]
async fn probes_the_video_fixture() {
    let info = probe_ok(&fixture(MP4)).await;
    assert!(info.format.contains("mp4"), "{}", info.format);
    assert!((info.duration_s.unwrap() - 5.0).abs() < 0.05, "{info:?}");
    assert!(info.bit_rate.unwrap() > 1_000_000, "{info:?}");
    assert_eq!(info.streams, 2);
    let video = info.video.clone().unwrap();
    assert_eq!(video.codec, "h264");
    assert_eq!((video.width, video.height), (1280, 720));
    assert!((video.fps.unwrap() - 30.0).abs() < 0.01, "{video:?}");
    assert_eq!(video.frames, Some(150));
    assert_eq!(video.rotation, 0);
    assert_eq!(video.pix_fmt.as_deref(), Some("yuv420p"));
    let audio = info.audio.clone().unwrap();
    assert_eq!(audio.codec, "aac");
    assert_eq!((audio.sample_rate, audio.channels), (48_000, 1));
    assert_eq!(audio.channel_layout.as_deref(), Some("mono"));
    assert!((audio.duration_s.unwrap() - 5.0).abs() < 0.05, "{audio:?}");

    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(serde_json::from_str::<AvInfo>(&json).unwrap(), info);
}

#[tokio::test]
async fn probes_each_audio_fixture() {
    let cases = [
        ("speech_en.wav", "wav", "pcm_s16le", 22_050, 1, 7.373),
        ("speech_en.mp3", "mp3", "mp3", 22_050, 1, 7.445),
        ("speech_en.ogg", "ogg", "vorbis", 22_050, 1, 7.373),
        ("ktuberling_en_moon_astronaut.ogg", "ogg", "vorbis", 44_100, 2, 1.115),
    ];
    for (name, format, codec, rate, channels, seconds) in cases {
        let info = probe_ok(&fixture(name)).await;
        assert_eq!(info.format, format, "{name}");
        assert!(info.video.is_none(), "{name}: {info:?}");
        let audio = info.audio.unwrap_or_else(|| panic!("{name}: no audio"));
        assert_eq!(audio.codec, codec, "{name}");
        assert_eq!((audio.sample_rate, audio.channels), (rate, channels), "{name}");
        assert!(
            (info.duration_s.unwrap() - seconds).abs() < 0.01,
            "{name}: {:?}",
            info.duration_s
        );
        assert!((audio.duration_s.unwrap() - seconds).abs() < 0.01, "{name}: {audio:?}");
    }
}

#[tokio::test]
async fn probe_refuses_what_is_not_audio_or_video() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools::default();
    let cancel = CancellationToken::new();

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let err = probe(&tools, &empty, T, &cancel).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");

    // Deterministic noise (a xorshift), not a real format.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let random = dir.path().join("random.bin");
    std::fs::write(&random, &noise).unwrap();
    let err = probe(&tools, &random, T, &cancel).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(err.message.contains("Invalid data found"), "{err}");

    let err = probe(&tools, &fixture("Dragonfly_by_Bolly.jpg"), T, &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(err.message.contains("image"), "{err}");

    let err = probe(&tools, &dir.path().join("missing.mp4"), T, &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
}

#[tokio::test]
async fn truncated_mp4s_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools::default();
    let cancel = CancellationToken::new();
    let whole = std::fs::read(fixture(MP4)).unwrap();

    // The fixture is faststart: its first 30% still holds the index, so it probes as a 5 s
    // video, but the frame at 2 s and most of the preview are missing.
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &whole[..whole.len() * 3 / 10]).unwrap();
    let info = probe(&tools, &truncated, T, &cancel).await.unwrap();
    assert!((info.duration_s.unwrap() - 5.0).abs() < 0.05);
    let out = dir.path().join("thumb.jpg");
    let opts = VideoThumbOptions::default();
    let err = video_thumbnail(&tools, &truncated, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(err.message.starts_with("video is corrupt or truncated"), "{err}");
    assert!(!out.exists());
    let out = dir.path().join("preview.mp4");
    let opts = VideoPreviewOptions::default();
    let err = video_preview(&tools, &truncated, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(err.message.contains("partial file"), "{err}");
    assert!(!out.exists(), "a failed preview is removed");

    // The same video with the index at the end: cut short, it has none.
    let moov_last = dir.path().join("moov_last.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(fixture(MP4))
        .args(["-c", "copy", "-f", "mp4"])
        .arg(&moov_last)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&moov_last).unwrap();
    assert_eq!(mp4_boxes(&bytes).last().map(String::as_str), Some("moov"));
    std::fs::write(&moov_last, &bytes[..bytes.len() * 3 / 10]).unwrap();
    let err = probe(&tools, &moov_last, T, &cancel).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(err.message.contains("moov atom not found"), "{err}");
}

// ---- video thumbnail ----

#[tokio::test]
async fn thumbnail_of_the_fixture_is_a_1280x720_jpeg_at_2s() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture(MP4);
    let info = probe_ok(&input).await;
    let out = dir.path().join("thumb.jpg");
    let reports = Reports::default();
    let opts = VideoThumbOptions::default();
    let result = video_thumbnail(
        &Tools::default(),
        &input,
        &out,
        &info,
        &opts,
        T,
        &CancellationToken::new(),
        &reports.sink(),
    )
    .await
    .unwrap();
    // 5 s is at least twice 2 s: the frame is at 2 s (see VideoThumbOptions::pick_time).
    assert_eq!(result.at_s, Some(2.0));
    assert_eq!((result.width, result.height), (1280, 720));
    assert_eq!(result.bytes, std::fs::metadata(&out).unwrap().len());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(image::guess_format(&bytes).unwrap(), image::ImageFormat::Jpeg);
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (1280, 720));
    reports.assert_sane();
}

#[tokio::test]
async fn thumbnail_is_taken_at_2s_of_a_long_video_and_10_percent_into_a_short_one() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools::default();
    let cancel = CancellationToken::new();
    let opts = VideoThumbOptions::default();

    let long = video_320x240(30);
    let info = probe_ok(&long).await;
    assert!((info.duration_s.unwrap() - 30.0).abs() < 0.1);
    let out = dir.path().join("long.jpg");
    let result = video_thumbnail(&tools, &long, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap();
    assert_eq!(result.at_s, Some(2.0));
    // Never enlarged into the 1280x720 box.
    assert_eq!((result.width, result.height), (320, 240));
    // The frame is the one at 2 s (testsrc2 moves: neighbouring frames differ).
    let thumb = image::open(&out).unwrap().to_luma8();
    let at_2 = luma_diff(&thumb, &reference_frame(&long, "2", dir.path()));
    let at_0 = luma_diff(&thumb, &reference_frame(&long, "0", dir.path()));
    assert!(at_2 < 3.0 && at_2 * 2.0 < at_0, "diff to 2 s {at_2}, to 0 s {at_0}");

    let short = video_320x240(3);
    let info = probe_ok(&short).await;
    let out = dir.path().join("short.jpg");
    let result = video_thumbnail(&tools, &short, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap();
    let at = result.at_s.unwrap();
    assert!((at - 0.3).abs() < 0.01, "{at}");
    let thumb = image::open(&out).unwrap().to_luma8();
    let at_03 = luma_diff(&thumb, &reference_frame(&short, "0.3", dir.path()));
    let at_2 = luma_diff(&thumb, &reference_frame(&short, "2", dir.path()));
    assert!(
        at_03 < 3.0 && at_03 * 2.0 < at_2,
        "diff to 0.3 s {at_03}, to 2 s {at_2}"
    );

    // A smaller box scales down, keeping the aspect ratio.
    let small = VideoThumbOptions {
        max_width: 160,
        max_height: 160,
        ..Default::default()
    };
    let result = video_thumbnail(&tools, &short, &out, &info, &small, T, &cancel, &ignore)
        .await
        .unwrap();
    assert_eq!((result.width, result.height), (160, 120));
    assert_eq!(image::image_dimensions(&out).unwrap(), (160, 120));
}

#[tokio::test]
async fn thumbnail_of_1080p_is_scaled_into_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_1080p_15s();
    let info = probe_ok(&input).await;
    let out = dir.path().join("thumb.jpg");
    let opts = VideoThumbOptions::default();
    let result = video_thumbnail(
        &Tools::default(),
        &input,
        &out,
        &info,
        &opts,
        T,
        &CancellationToken::new(),
        &ignore,
    )
    .await
    .unwrap();
    assert_eq!(result.at_s, Some(2.0));
    assert_eq!((result.width, result.height), (1280, 720));
    assert_eq!(image::image_dimensions(&out).unwrap(), (1280, 720));
}

#[tokio::test]
async fn thumbnail_of_a_rotated_video_is_upright() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_rotated();
    let info = probe_ok(&input).await;
    let video = info.video.clone().unwrap();
    assert_eq!((video.width, video.height, video.rotation % 180), (320, 240, 90));
    assert_eq!(video.display_size(), (240, 320));
    let out = dir.path().join("rotated.jpg");
    let opts = VideoThumbOptions::default();
    let result = video_thumbnail(
        &Tools::default(),
        &input,
        &out,
        &info,
        &opts,
        T,
        &CancellationToken::new(),
        &ignore,
    )
    .await
    .unwrap();
    assert_eq!((result.width, result.height), (240, 320));
    assert_eq!(image::image_dimensions(&out).unwrap(), (240, 320));
}

#[tokio::test]
async fn video_jobs_refuse_audio_only_input() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools::default();
    let cancel = CancellationToken::new();
    let input = fixture("speech_en.ogg");
    let info = probe_ok(&input).await;
    let out = dir.path().join("x.jpg");
    let opts = VideoThumbOptions::default();
    let err = video_thumbnail(&tools, &input, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::BadInput, "no video stream")
    );
    let out = dir.path().join("x.mp4");
    let opts = VideoPreviewOptions::default();
    let err = video_preview(&tools, &input, &out, &info, &opts, T, &cancel, &ignore)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::BadInput, "no video stream")
    );
    assert!(!out.exists());
}

// ---- video preview ----

#[tokio::test]
async fn preview_of_1080p_is_10s_of_720p_h264_aac_with_moov_first() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_1080p_15s();
    let info = probe_ok(&input).await;
    assert_eq!(info.video.as_ref().map(|v| (v.width, v.height)), Some((1920, 1080)));
    let out = dir.path().join("preview.mp4");
    let reports = Reports::default();
    let started = Instant::now();
    let opts = VideoPreviewOptions::default();
    let result = video_preview(
        &Tools::default(),
        &input,
        &out,
        &info,
        &opts,
        T,
        &CancellationToken::new(),
        &reports.sink(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!((result.width, result.height), (1280, 720));
    assert!((result.duration_s.unwrap() - 10.0).abs() <= 0.2, "{result:?}");
    assert_eq!(result.bytes, std::fs::metadata(&out).unwrap().len());

    let preview = probe_ok(&out).await;
    let video = preview.video.unwrap();
    assert_eq!((video.codec.as_str(), video.width, video.height), ("h264", 1280, 720));
    assert_eq!(video.pix_fmt.as_deref(), Some("yuv420p"));
    assert!((video.duration_s.unwrap() - 10.0).abs() <= 0.2, "{video:?}");
    let audio = preview.audio.unwrap();
    assert_eq!(audio.codec, "aac");
    assert!((audio.duration_s.unwrap() - 10.0).abs() <= 0.2, "{audio:?}");

    let boxes = mp4_boxes(&std::fs::read(&out).unwrap());
    let moov = boxes.iter().position(|b| b == "moov").unwrap();
    let mdat = boxes.iter().position(|b| b == "mdat").unwrap();
    assert!(moov < mdat, "faststart: {boxes:?}");

    reports.assert_sane();
    let all = reports.all();
    // Progress went through the middle, and no faster than every 250 ms (plus the end).
    assert!(all.iter().any(|p| p.fraction > 0.0 && p.fraction < 1.0), "{all:?}");
    assert!(
        all.len() as u128 <= elapsed.as_millis() / 250 + 2,
        "{} reports in {elapsed:?}",
        all.len()
    );
    assert!(all.iter().all(|p| p.pid.is_some()));
}

#[tokio::test]
async fn preview_of_a_silent_video_has_no_audio_and_is_not_enlarged() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_320x240(30);
    let info = probe_ok(&input).await;
    assert!(info.audio.is_none());
    let out = dir.path().join("preview.mp4");
    let opts = VideoPreviewOptions::default();
    let result = video_preview(
        &Tools::default(),
        &input,
        &out,
        &info,
        &opts,
        T,
        &CancellationToken::new(),
        &ignore,
    )
    .await
    .unwrap();
    assert_eq!((result.width, result.height), (320, 240));
    assert!((result.duration_s.unwrap() - 10.0).abs() <= 0.2, "{result:?}");
    let preview = probe_ok(&out).await;
    assert!(preview.audio.is_none(), "{preview:?}");
    assert_eq!(preview.streams, 1);
}

#[tokio::test]
async fn cancelling_a_preview_kills_ffmpeg_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = video_1080p_15s();
    let info = probe_ok(&input).await;
    let out = dir.path().join("preview.mp4");
    let cancel = CancellationToken::new();
    let seen: Arc<Mutex<Option<(u32, Instant)>>> = Arc::default();
    let on_progress = {
        let seen = seen.clone();
        let cancel = cancel.clone();
        move |p: Progress| {
            let mut seen = seen.lock().unwrap();
            if seen.is_none() {
                *seen = Some((p.pid.unwrap(), Instant::now()));
                cancel.cancel();
            }
        }
    };
    let opts = VideoPreviewOptions {
        seconds: 15.0,
        ..Default::default()
    };
    let err = video_preview(&Tools::default(), &input, &out, &info, &opts, T, &cancel, &on_progress)
        .await
        .unwrap_err();
    let (pid, cancelled_at) = seen.lock().unwrap().unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    assert!(took < Duration::from_secs(2), "returned {took:?} after the cancel");
    // Reaped, not a zombie: the pid is gone.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "ffmpeg {pid} still exists"
    );
    assert!(!out.exists(), "the partial preview is removed");
}

#[tokio::test]
async fn a_cancelled_token_starts_nothing() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = probe(&Tools::default(), &fixture(MP4), T, &cancel).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
}

// ---- supervision with fake tools ----

#[tokio::test]
async fn a_hanging_ffmpeg_times_out_and_its_group_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let tools = fake_ffmpeg(
        dir.path(),
        &format!("echo $$ > {d}/self.pid\nsleep 1000 &\necho $! > {d}/sleep.pid\nwait"),
    );
    let started = Instant::now();
    let err = run_ffmpeg(
        &tools,
        &[],
        None,
        Duration::from_millis(500),
        &CancellationToken::new(),
        &ignore,
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert_eq!(err.message, "ffmpeg did not finish within 500 ms");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let read_pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (script_pid, sleep_pid) = (read_pid("self.pid"), read_pid("sleep.pid"));
    assert!(
        !Path::new(&format!("/proc/{script_pid}")).exists(),
        "the script was reaped"
    );
    assert!(wait_dead(sleep_pid).await, "the script's child (same group) was killed");
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let tools = fake_ffmpeg(
        dir.path(),
        &format!("echo $$ > {d}/self.pid\nsleep 1000 &\necho $! > {d}/sleep.pid\nwait"),
    );
    let cancel = CancellationToken::new();
    let run = run_ffmpeg(&tools, &[], None, T, &cancel, &ignore);
    // The caller gives up (its own timeout, an aborted task): the future is dropped.
    assert!(tokio::time::timeout(Duration::from_millis(300), run).await.is_err());
    let read_pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (script_pid, sleep_pid) = (read_pid("self.pid"), read_pid("sleep.pid"));
    assert!(wait_dead(script_pid).await, "the script was killed");
    assert!(wait_dead(sleep_pid).await, "the script's child (same group) was killed");
}

#[tokio::test]
async fn a_crashing_ffmpeg_is_internal_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let tools = fake_ffmpeg(dir.path(), "echo boom >&2\nkill -SEGV $$");
    let err = run_ffmpeg(&tools, &[], Some(1.0), T, &CancellationToken::new(), &ignore)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{err}");
    assert_eq!(err.message, "ffmpeg crashed (signal 11): boom");
}

#[tokio::test]
async fn exit_codes_are_classified_from_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let tools = fake_ffmpeg(
        dir.path(),
        "echo '[mov,mp4] moov atom not found' >&2\necho 'in.mp4: Invalid data found when processing input' >&2\nexit 1",
    );
    let err = run_ffmpeg(&tools, &[], None, T, &cancel, &ignore).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadInput, "{err}");
    assert!(
        err.message.contains("moov atom not found\nin.mp4: Invalid data"),
        "{err}"
    );

    let other = tempfile::tempdir().unwrap();
    let tools = fake_ffmpeg(other.path(), "echo 'Unknown encoder foo' >&2\nexit 3");
    let err = run_ffmpeg(&tools, &[], None, T, &cancel, &ignore).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{err}");
    assert_eq!(err.message, "ffmpeg failed (exit code 3): Unknown encoder foo");
}

#[tokio::test]
async fn a_chatty_ffmpeg_leaves_a_bounded_tail() {
    let dir = tempfile::tempdir().unwrap();
    // About 13 MB of lines, then 4 MB without a newline, then the last words.
    let tools = fake_ffmpeg(
        dir.path(),
        "yes 'noise noise noise' | head -n 800000 >&2\nhead -c 4000000 /dev/zero | tr '\\0' x >&2\necho >&2\necho 'last words' >&2\nexit 1",
    );
    let err = run_ffmpeg(&tools, &[], None, T, &CancellationToken::new(), &ignore)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.len() < 2300, "{} bytes", err.message.len());
    assert!(
        err.message.ends_with("last words"),
        "{}",
        &err.message[err.message.len() - 40..]
    );
}

#[tokio::test]
async fn progress_is_parsed_and_throttled() {
    let dir = tempfile::tempdir().unwrap();
    // 2000 blocks as fast as the shell can print them, up to 2 s of 4 s, then the end.
    let tools = fake_ffmpeg(
        dir.path(),
        "i=0\nwhile [ $i -lt 2000 ]; do echo \"out_time_us=$((i * 1000))\"; echo \"out_time_ms=$((i * 1000))\"; echo progress=continue; i=$((i + 1)); done\necho progress=end",
    );
    let reports = Reports::default();
    let started = Instant::now();
    run_ffmpeg(
        &tools,
        &[OsString::from("-i"), OsString::from("x")],
        Some(4.0),
        T,
        &CancellationToken::new(),
        &reports.sink(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    reports.assert_sane();
    let all = reports.all();
    assert!(
        all.len() as u128 <= elapsed.as_millis() / 250 + 2,
        "{} reports in {elapsed:?}",
        all.len()
    );
    assert!(all.iter().all(|p| p.fraction == 1.0 || p.fraction <= 0.5), "{all:?}");
}

#[tokio::test]
async fn missing_tools_are_named_in_the_error() {
    let tools = Tools {
        ffmpeg: PathBuf::from("/nonexistent/ffmpeg"),
        ..Tools::default()
    };
    let err = tools.check().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert_eq!(
        err.message,
        "ffmpeg not found at /nonexistent/ffmpeg: install it (apt-get install ffmpeg) or set MM_FFMPEG"
    );
    let tools = Tools {
        ffprobe: PathBuf::from("no-such-ffprobe"),
        ..Tools::default()
    };
    let err = probe(&tools, &fixture(MP4), T, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.message.starts_with("ffprobe not found at no-such-ffprobe"), "{err}");
    assert!(err.message.ends_with("or set MM_FFPROBE"), "{err}");

    let version = Tools::default().check().await.unwrap();
    assert!(version.starts_with("ffmpeg version "), "{version}");
}

// ---- PCM ----

#[tokio::test]
async fn decodes_wav_to_the_same_samples() {
    let input = fixture("speech_en.wav");
    let pcm = decode_pcm(&Tools::default(), &input, 60.0, T, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (pcm.sample_rate, pcm.channels, pcm.codec.as_str()),
        (22_050, 1, "pcm_s16le")
    );
    // The samples of the WAV's data chunk, read directly.
    let bytes = std::fs::read(&input).unwrap();
    let mut at = 12;
    let data = loop {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            break &bytes[at + 8..(at + 8 + size).min(bytes.len())];
        }
        at += 8 + size + size % 2;
    };
    let expected: Vec<i16> = data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect();
    assert_eq!(pcm.samples.len(), expected.len());
    assert!(pcm.samples == expected, "decoded samples differ from the WAV data");
    assert!((pcm.duration_s() - 7.373).abs() < 0.01);
}

#[tokio::test]
async fn decodes_vorbis_and_refuses_audio_past_the_limit() {
    let tools = Tools::default();
    let cancel = CancellationToken::new();
    let pcm = decode_pcm(&tools, &fixture("ktuberling_en_moon_astronaut.ogg"), 60.0, T, &cancel)
        .await
        .unwrap();
    assert_eq!(
        (pcm.sample_rate, pcm.channels, pcm.codec.as_str()),
        (44_100, 2, "vorbis")
    );
    assert!((pcm.duration_s() - 1.115).abs() < 0.02, "{}", pcm.duration_s());
    let peak = pcm.samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 1000, "silent? peak {peak}");

    let err = decode_pcm(&tools, &fixture("speech_en.mp3"), 3.0, T, &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");

    let err = decode_pcm(&tools, &fixture(MP4), 60.0, T, &cancel)
        .await
        .map(|p| p.codec);
    assert_eq!(err.unwrap(), "aac", "the audio of a video decodes too");
}

#[tokio::test]
async fn pcm_output_past_the_limit_kills_the_decoder() {
    // A probe that says 1 s of 8 kHz mono, and a decoder that never stops.
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"streams": [{"index": 0, "codec_type": "audio", "codec_name": "pcm_s16le", "sample_rate": "8000", "channels": 1, "duration": "1.0"}], "format": {"format_name": "wav", "duration": "1.0"}}"#;
    let tools = Tools {
        ffprobe: script(dir.path(), "ffprobe", &format!("echo '{json}'")),
        ffmpeg: script(dir.path(), "ffmpeg", "exec cat /dev/zero"),
    };
    let started = Instant::now();
    let err = decode_pcm(&tools, &fixture("speech_en.wav"), 2.0, T, &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
