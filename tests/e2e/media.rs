//! Audio and video through their pipelines (waveform; video frame and preview), reuse of work
//! on the same bytes, upload categories, and the bad inputs of audio and video: all through
//! the public gRPC API with real files, real symphonia and real ffmpeg.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_testkit::{Mesh, download, read_fixture, upload, upload_as, wait_job};
use serde_json::Value;
use tonic::transport::Channel;

use crate::{JOB_DEADLINE, as_tenant, by_kind, code_of, failed_with, finish_all, metadata, succeeded};

/// ffprobe's view of a file: (format duration, [(codec_type, codec_name, width, height)]).
fn ffprobe(path: &Path) -> (f64, Vec<(String, String, u64, u64)>) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_format", "-show_streams"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let duration = json["format"]["duration"].as_str().unwrap().parse().unwrap();
    let streams = json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or_default().to_owned(),
                s["codec_name"].as_str().unwrap_or_default().to_owned(),
                s["width"].as_u64().unwrap_or(0),
                s["height"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    (duration, streams)
}

/// The top-level MP4 box types in file order.
fn mp4_boxes(data: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        boxes.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        let size = if size == 1 {
            u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        if size < 8 {
            break;
        }
        at += size;
    }
    boxes
}

fn temp_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Runs ffmpeg to make a test input; returns its bytes.
fn make_media(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

struct Audio {
    file: &'static str,
    codec: &'static str,
    sample_rate: u64,
    channels: u64,
    duration_s: f64,
}

const AUDIO: &[Audio] = &[
    Audio {
        file: "speech_en.wav",
        codec: "pcm_s16le",
        sample_rate: 22_050,
        channels: 1,
        duration_s: 7.37,
    },
    Audio {
        file: "speech_en.mp3",
        codec: "mp3",
        sample_rate: 22_050,
        channels: 1,
        duration_s: 7.44,
    },
    Audio {
        file: "speech_en.ogg",
        codec: "vorbis",
        sample_rate: 22_050,
        channels: 1,
        duration_s: 7.37,
    },
    Audio {
        file: "ktuberling_en_moon_astronaut.ogg",
        codec: "vorbis",
        sample_rate: 44_100,
        channels: 2,
        duration_s: 1.11,
    },
];

/// Every audio fixture is probed and gets a waveform in audiowaveform's JSON format whose
/// length matches its duration, and a PNG rendering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audio_fixture_gets_probed_and_a_waveform() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    for audio in AUDIO {
        let data = read_fixture(audio.file);
        let response = upload(&mut ingest, audio.file, &data).await.unwrap();
        let kinds: Vec<&str> = response.jobs.iter().map(|j| j.kind.as_str()).collect();
        assert_eq!(kinds, ["media.probe", "media.waveform"], "{}", audio.file);
        let done = finish_all(&mut jobs, &response.jobs).await;

        let probe = metadata(by_kind(&done, "media.probe"));
        assert_eq!(probe["media_kind"], "audio", "{}: {probe}", audio.file);
        let stream = &probe["audio"];
        assert_eq!(stream["codec"], audio.codec, "{}: {probe}", audio.file);
        assert_eq!(
            stream["sample_rate"].as_u64(),
            Some(audio.sample_rate),
            "{}",
            audio.file
        );
        assert_eq!(stream["channels"].as_u64(), Some(audio.channels), "{}", audio.file);
        let probed = probe["duration_s"].as_f64().unwrap();
        assert!(
            (probed - audio.duration_s).abs() < 0.1,
            "{}: probe says {probed} s",
            audio.file
        );

        let job = by_kind(&done, "media.waveform");
        let meta = metadata(job);
        assert!(!succeeded(job).reused);
        let media_id = response.media.as_ref().unwrap().id.clone();
        let json: Value = serde_json::from_slice(&download(&mut ingest, &media_id, "waveform").await.unwrap()).unwrap();
        assert_eq!(json["version"], 2, "{}", audio.file);
        assert_eq!(json["bits"], 8);
        assert_eq!(json["samples_per_pixel"], 256);
        assert_eq!(json["channels"], 1, "mixed down by default");
        assert_eq!(json["sample_rate"].as_u64(), Some(audio.sample_rate));
        let length = json["length"].as_u64().unwrap();
        let data = json["data"].as_array().unwrap();
        assert_eq!(data.len() as u64, 2 * length, "{}: min/max pairs", audio.file);
        let expected = audio.duration_s * audio.sample_rate as f64 / 256.0;
        assert!(
            (length as f64 - expected).abs() <= expected * 0.02 + 2.0,
            "{}: {length} points for {} s (expected about {expected:.0})",
            audio.file,
            audio.duration_s
        );
        assert_eq!(meta["length"].as_u64(), Some(length));
        let peak = data.iter().map(|v| v.as_i64().unwrap().abs()).max().unwrap();
        assert!(peak > 20, "{}: speech has peaks (max {peak})", audio.file);
        for pair in data.chunks(2) {
            let (min, max) = (pair[0].as_i64().unwrap(), pair[1].as_i64().unwrap());
            assert!((-128..=127).contains(&min) && (-128..=127).contains(&max) && min <= max);
        }
        let png = download(&mut ingest, &media_id, "waveform_png").await.unwrap();
        let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
        let output = succeeded(job)
            .outputs
            .iter()
            .find(|o| o.name == "waveform_png")
            .unwrap();
        assert_eq!((image.width(), image.height()), (output.width, output.height));
        assert!(image.width() >= 100 && image.height() >= 50);
    }
    mesh.shutdown().await.unwrap();
}

/// The video fixture gets a probe, a frame (10% in: it is shorter than 4 s... or at 2 s) and a
/// preview: H.264/AAC MP4 with faststart; a longer 1080p video gets a 10-second 720p preview.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos_get_a_frame_and_a_ten_second_720p_preview() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let dir = tempfile::tempdir().unwrap();

    let data = read_fixture("synthetic_testsrc_1280x720_5s.mp4");
    let response = upload(&mut ingest, "testsrc.mp4", &data).await.unwrap();
    let kinds: Vec<&str> = response.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["media.probe", "media.video_thumbnail", "media.video_preview"]);
    let media_id = response.media.as_ref().unwrap().id.clone();
    let done = finish_all(&mut jobs, &response.jobs).await;
    let probe = metadata(by_kind(&done, "media.probe"));
    assert_eq!(probe["media_kind"], "video");
    assert_eq!(probe["video"]["codec"], "h264", "{probe}");
    assert_eq!(probe["video"]["width"], 1280);
    assert_eq!(probe["video"]["height"], 720);
    assert!((probe["video"]["fps"].as_f64().unwrap() - 30.0).abs() < 0.1);
    assert_eq!(probe["audio"]["codec"], "aac");
    assert_eq!(probe["audio"]["sample_rate"], 48_000);
    assert!((probe["duration_s"].as_f64().unwrap() - 5.0).abs() < 0.1);

    let frame = download(&mut ingest, &media_id, "video_thumb").await.unwrap();
    let frame = image::load_from_memory_with_format(&frame, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((frame.width(), frame.height()), (1280, 720));
    let at = metadata(by_kind(&done, "media.video_thumbnail"))["at_s"]
        .as_f64()
        .unwrap();
    assert!(at > 0.0 && at < 5.0, "frame taken inside the video, at {at} s");

    let preview = download(&mut ingest, &media_id, "preview").await.unwrap();
    let boxes = mp4_boxes(&preview);
    let moov = boxes.iter().position(|b| b == "moov").unwrap();
    let mdat = boxes.iter().position(|b| b == "mdat").unwrap();
    assert!(moov < mdat, "faststart: moov before mdat: {boxes:?}");
    let (duration, streams) = ffprobe(&temp_file(dir.path(), "preview.mp4", &preview));
    assert!((duration - 5.0).abs() < 0.25, "a 5 s video previews whole: {duration}");
    assert!(
        streams.contains(&("video".into(), "h264".into(), 1280, 720)),
        "{streams:?}"
    );
    assert!(streams.iter().any(|s| s.0 == "audio" && s.1 == "aac"), "{streams:?}");

    // 12 s of 1080p with sound: the preview is its first 10 s at 720p.
    let long = make_media(
        dir.path(),
        "long.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=10:duration=12",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:sample_rate=44100:duration=12",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ],
    );
    let response = upload(&mut ingest, "long.mp4", &long).await.unwrap();
    let media_id = response.media.as_ref().unwrap().id.clone();
    let done = finish_all(&mut jobs, &response.jobs).await;
    let at = metadata(by_kind(&done, "media.video_thumbnail"))["at_s"]
        .as_f64()
        .unwrap();
    assert!((at - 2.0).abs() < 0.01, "frame at 2 s of a 12 s video, not {at}");
    let preview = download(&mut ingest, &media_id, "preview").await.unwrap();
    let (duration, streams) = ffprobe(&temp_file(dir.path(), "long-preview.mp4", &preview));
    assert!((duration - 10.0).abs() < 0.3, "preview lasts 10 s: {duration}");
    assert!(
        streams.contains(&("video".into(), "h264".into(), 1280, 720)),
        "{streams:?}"
    );
    let output = &succeeded(by_kind(&done, "media.video_preview")).outputs[0];
    assert_eq!((output.width, output.height), (1280, 720));
    mesh.shutdown().await.unwrap();
}

/// Cancelling a running preview kills its ffmpeg: the job ends CANCELLED and the process is
/// gone. ffmpeg reads its input at the native frame rate here (`-re`, through a wrapper that
/// runs the real ffmpeg), so the preview runs long enough to be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_preview_kills_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ffmpeg-realtime");
    std::fs::write(&wrapper, "#!/bin/sh\nexec ffmpeg -re \"$@\"\n").unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mesh = Mesh::start_with(|c| {
        c.media.ffmpeg = wrapper.clone();
        c.ingest.pipelines = r#"{"video": ["media.video_preview"]}"#.to_owned();
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let data = read_fixture("synthetic_testsrc_1280x720_5s.mp4");
    let response = upload(&mut ingest, "testsrc.mp4", &data).await.unwrap();
    let job_id = response.jobs[0].id.clone();
    // Running, with ffmpeg's progress arriving.
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let message = tokio::time::timeout(JOB_DEADLINE, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.progress > 0.0 {
            break;
        }
        assert_ne!(
            message.state,
            pb::JobState::Succeeded as i32,
            "preview finished before it was cancelled"
        );
    }
    let pids = ffmpeg_pids_for("preview.mp4");
    assert_eq!(pids.len(), 1, "one ffmpeg making the preview: {pids:?}");
    jobs.cancel_job(pb::CancelJobRequest { job_id: job_id.clone() })
        .await
        .unwrap();
    let done = wait_job(&mut jobs, &job_id, JOB_DEADLINE).await.unwrap();
    assert_eq!(done.state, pb::JobState::Cancelled as i32, "{:?}", done.error);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", pids[0])).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ffmpeg {} still runs after the cancel",
            pids[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker serves the next job.
    let response = upload(&mut ingest, "speech.wav", &read_fixture("speech_en.wav"))
        .await
        .unwrap();
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        succeeded(&done);
    }
    mesh.shutdown().await.unwrap();
}

/// Processes whose command line runs ffmpeg and mentions `needle`.
fn ffmpeg_pids_for(needle: &str) -> Vec<u32> {
    pids_where(|args| args.first().is_some_and(|a| a.ends_with("ffmpeg")) && args.iter().any(|a| a.contains(needle)))
}

/// Processes whose arguments `matches` accepts.
fn pids_where(matches: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if matches(&args) {
            pids.push(pid);
        }
    }
    pids
}

/// The same bytes uploaded again by the same tenant return the earlier media and its jobs; by
/// another tenant they get their own media whose jobs reuse the outputs without decoding, and
/// say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_reuse_the_work_done_before() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    for file in ["Dragonfly_by_Bolly.jpg", "speech_en.mp3"] {
        let data = read_fixture(file);
        let first = upload(&mut ingest, file, &data).await.unwrap();
        let first_done = finish_all(&mut jobs, &first.jobs).await;
        for job in &first_done {
            assert!(!succeeded(job).reused, "{file} {}: first run computes", job.kind);
        }
        let first_id = first.media.as_ref().unwrap().id.clone();

        let again = upload(&mut ingest, file, &data).await.unwrap();
        assert!(again.deduplicated, "{file}");
        assert_eq!(again.media.as_ref().unwrap().id, first_id);
        let mut ids: Vec<&str> = again.jobs.iter().map(|j| j.id.as_str()).collect();
        let mut first_ids: Vec<&str> = first.jobs.iter().map(|j| j.id.as_str()).collect();
        ids.sort_unstable();
        first_ids.sort_unstable();
        assert_eq!(ids, first_ids, "{file}: no new jobs for the same tenant");

        let other = upload_as(&mut ingest, "tenant-b", "", file, &data).await.unwrap();
        assert!(!other.deduplicated, "{file}: another tenant gets its own media");
        let other_id = other.media.as_ref().unwrap().id.clone();
        assert_ne!(other_id, first_id);
        for job in &other.jobs {
            let done = wait_tenant_job(&mut jobs, "tenant-b", &job.id).await;
            let result = succeeded(&done);
            assert!(result.reused, "{file} {}: reused", done.kind);
            let earlier = first_done.iter().find(|j| j.kind == done.kind).unwrap();
            let earlier = succeeded(earlier);
            assert_eq!(result.metadata_json, earlier.metadata_json, "{file} {}", done.kind);
            assert_eq!(result.outputs.len(), earlier.outputs.len());
            for output in &result.outputs {
                assert!(
                    output.blob_key.starts_with(&format!("media/{other_id}/")),
                    "{}",
                    output.blob_key
                );
                let before = earlier.outputs.iter().find(|o| o.name == output.name).unwrap();
                let mine = std::fs::read(mesh.blob_dir.join(&output.blob_key)).unwrap();
                let theirs = std::fs::read(mesh.blob_dir.join(&before.blob_key)).unwrap();
                assert_eq!(mine, theirs, "{file} {}: same bytes", output.name);
                assert_eq!(output.bytes, mine.len() as u64);
            }
        }
    }
    mesh.shutdown().await.unwrap();
}

async fn wait_tenant_job(jobs: &mut JobServiceClient<Channel>, tenant: &str, job_id: &str) -> pb::Job {
    let deadline = std::time::Instant::now() + JOB_DEADLINE;
    loop {
        let job = jobs
            .get_job(as_tenant(
                pb::GetJobRequest {
                    job_id: job_id.to_owned(),
                },
                tenant,
            ))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        let terminal = [pb::JobState::Succeeded, pb::JobState::Failed, pb::JobState::Cancelled]
            .iter()
            .any(|s| *s as i32 == job.state);
        if terminal {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job {job_id} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pipelines come from configuration: the media types' lists and extra jobs per upload
/// category; an unknown category is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_categories_come_from_configuration() {
    let mesh = Mesh::start_with(|c| {
        c.ingest.pipelines = r#"{"image": ["media.thumbnails"], "categories": {"archive": {"image": ["media.probe"], "audio": ["media.probe"]}}}"#
            .to_owned();
    })
    .await
    .unwrap();
    let mut ingest = mesh.ingest();
    let kinds = |r: &pb::UploadMediaResponse| r.jobs.iter().map(|j| j.kind.clone()).collect::<Vec<_>>();
    let plain = upload(
        &mut ingest,
        "a.jpg",
        &read_fixture("friends_by_Aitzol_Berasategi_orient6.jpg"),
    )
    .await
    .unwrap();
    assert_eq!(kinds(&plain), ["media.thumbnails"]);
    let archived = upload_as(
        &mut ingest,
        "",
        "archive",
        "b.jpg",
        &read_fixture("Kleiber_by_Lukas_Baubkus.jpg"),
    )
    .await
    .unwrap();
    assert_eq!(kinds(&archived), ["media.thumbnails", "media.probe"]);
    let audio = upload_as(&mut ingest, "", "archive", "c.ogg", &read_fixture("speech_en.ogg"))
        .await
        .unwrap();
    assert_eq!(kinds(&audio), ["media.probe", "media.waveform"], "no kind twice");
    let status = upload_as(&mut ingest, "", "nope", "d.wav", &read_fixture("speech_en.wav"))
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), mediamesh_core::ErrorCode::BadInput);
    assert!(
        status.message().contains("archive"),
        "names the known categories: {status:?}"
    );
    mesh.shutdown().await.unwrap();
}

/// Broken audio and video end with a clear stable code, and the worker serves the next job:
/// truncated files, a WAV without samples, an MP4 without a video stream, and an ffmpeg that
/// hangs or crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_audio_and_video_fail_cleanly_and_the_worker_goes_on() {
    use mediamesh_core::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();

    // A WAV header that announces no samples.
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&36u32.to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&22_050u32.to_le_bytes());
    wav.extend_from_slice(&44_100u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&0u32.to_le_bytes());
    let response = upload(&mut ingest, "silent.wav", &wav).await.unwrap();
    let done = finish_all(&mut jobs, &response.jobs).await;
    let (code, message) = failed_with(by_kind(&done, "media.waveform"));
    assert_eq!(code, ErrorCode::BadInput, "{message}");
    assert!(
        message.contains("no samples") || message.contains("no audio"),
        "{message}"
    );

    // An MP4 with sound only: probed, but no frame and no preview.
    let sound_only = make_media(
        dir.path(),
        "sound.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:a",
            "aac",
            "-f",
            "mp4",
        ],
    );
    let response = upload(&mut ingest, "sound.mp4", &sound_only).await.unwrap();
    let done = finish_all(&mut jobs, &response.jobs).await;
    if let Some(probe) = done.iter().find(|j| j.kind == "media.probe") {
        assert!(metadata(probe)["video"].is_null());
    }
    for job in &done {
        let kind = &job.kind;
        if kind == "media.video_thumbnail" || kind == "media.video_preview" {
            let (code, message) = failed_with(job);
            assert_eq!(code, ErrorCode::BadInput, "{kind}: {message}");
            assert!(message.contains("no video stream"), "{kind}: {message}");
            assert_eq!(job.attempts.len(), 1, "bad input is not retried");
        }
    }

    // Truncated files: the first 30% of each.
    for file in ["speech_en.mp3", "speech_en.ogg", "synthetic_testsrc_1280x720_5s.mp4"] {
        let data = read_fixture(file);
        let cut = &data[..data.len() * 3 / 10];
        let response = match upload(&mut ingest, &format!("cut-{file}"), cut).await {
            Ok(response) => response,
            Err(status) => {
                // Refused at the door is as good, if it says why.
                assert_eq!(code_of(&status), ErrorCode::BadInput, "{file}: {status:?}");
                continue;
            }
        };
        for job in finish_all(&mut jobs, &response.jobs).await {
            let kind = job.kind.clone();
            if job.state == pb::JobState::Failed as i32 {
                let (code, message) = failed_with(&job);
                assert_eq!(code, ErrorCode::BadInput, "{file} {kind}: {message}");
                assert!(!message.is_empty());
            } else if kind == "media.waveform" {
                // What decodes of a truncated stream may be drawn, but never more than is
                // there: the whole file has about 640 points.
                let length = metadata(&job)["length"].as_u64().unwrap();
                assert!(
                    length > 0 && length < 400,
                    "{file}: {length} points from 30% of the file"
                );
            } else {
                // The probe reports what the headers say; a preview of a cut video is refused.
                assert_eq!(kind, "media.probe", "{file}: {kind} succeeded on a truncated file");
            }
        }
    }

    // After all that, the worker still serves.
    let response = upload(
        &mut ingest,
        "astronaut.ogg",
        &read_fixture("ktuberling_en_moon_astronaut.ogg"),
    )
    .await
    .unwrap();
    for job in finish_all(&mut jobs, &response.jobs).await {
        succeeded(&job);
    }
    mesh.shutdown().await.unwrap();
}

/// An ffmpeg that hangs is killed at the job's timeout (TIMEOUT); one that crashes ends the
/// job INTERNAL with its stderr in the message. The worker survives both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_crashing_ffmpeg_is_contained() {
    use mediamesh_core::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("ffmpeg-hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    let crash = dir.path().join("ffmpeg-crash");
    std::fs::write(&crash, "#!/bin/sh\necho 'decoder exploded' >&2\nkill -SEGV $$\n").unwrap();
    for path in [&hang, &crash] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for (tool, code, words) in [
        (&hang, ErrorCode::Timeout, "time|within"),
        (&crash, ErrorCode::Internal, "decoder exploded"),
    ] {
        let mesh = Mesh::start_with(|c| {
            c.media.ffmpeg = tool.clone();
            c.ingest.pipelines = r#"{"video": ["media.probe"]}"#.to_owned();
            c.scheduler.default_timeout_ms = 3_000;
            c.scheduler.default_max_attempts = 1;
        })
        .await
        .unwrap();
        let mut ingest = mesh.ingest();
        let mut jobs = mesh.jobs();
        let data = read_fixture("synthetic_testsrc_1280x720_5s.mp4");
        let response = upload(&mut ingest, "v.mp4", &data).await.unwrap();
        let media_id = response.media.as_ref().unwrap().id.clone();
        let submitted = ingest
            .submit_job(pb::SubmitJobRequest {
                job: Some(pb::JobSpec {
                    kind: "media.video_preview".into(),
                    media_id: media_id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let job = wait_job(&mut jobs, &submitted.job.unwrap().id, JOB_DEADLINE)
            .await
            .unwrap();
        let (got, message) = failed_with(&job);
        assert_eq!(got, code, "{}: {message}", tool.display());
        assert!(
            words.split('|').any(|w| message.contains(w)),
            "{}: {message}",
            tool.display()
        );
        let hung = ffmpeg_pids_for_exact(tool);
        assert!(hung.is_empty(), "{} left behind: {hung:?}", tool.display());
        // ffprobe is real: the probe job still works on this worker.
        let probe = wait_job(&mut jobs, &response.jobs[0].id, JOB_DEADLINE).await.unwrap();
        succeeded(&probe);
        mesh.shutdown().await.unwrap();
    }
}

/// Processes running the script at `path`, or the `sleep 1000` it started.
fn ffmpeg_pids_for_exact(path: &Path) -> Vec<u32> {
    let path = path.to_string_lossy().into_owned();
    pids_where(|args| args.contains(&path) || args == ["sleep", "1000"])
}

/// The media worker, a process of its own, stays within its memory budget on the 20 MP
/// photo: its peak RSS (VmHWM) is under 5x the photo's decoded RGB size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_peak_memory_on_a_20_mp_photo_is_bounded() {
    use mediamesh_testkit::process::{Process, ProcessMesh};
    let mesh = ProcessMesh::launch_with(1, |env| env.set_media("MM_WORKER_CONCURRENCY", 1))
        .await
        .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let data = read_fixture("Kleiber_by_Lukas_Baubkus.jpg");
    let response = upload(&mut ingest, "kleiber.jpg", &data).await.unwrap();
    for job in finish_all(&mut jobs, &response.jobs).await {
        succeeded(&job);
    }
    let pid = mesh.pid(Process::Media(0)).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let decoded = 6028u64 * 3391 * 3;
    assert!(
        peak_kib * 1024 < 5 * decoded,
        "peak RSS {} MiB is over 5x the decoded size ({} MiB)",
        peak_kib / 1024,
        5 * decoded / (1024 * 1024)
    );
}
