use image::GenericImageView;
use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, download, read_fixture, upload, wait_job, watch_to_end};

use crate::JOB_DEADLINE;

struct Expect {
    file: &'static str,
    medium: (u32, u32),
    large: (u32, u32),
}

const PHOTOS: &[Expect] = &[
    Expect {
        file: "Kleiber_by_Lukas_Baubkus.jpg",
        medium: (800, 450),
        large: (1920, 1080),
    },
    Expect {
        file: "Elephants_5640x3172.jpg",
        medium: (800, 450),
        large: (1920, 1080),
    },
    Expect {
        file: "Dragonfly_by_Bolly.jpg",
        medium: (800, 600),
        large: (1440, 1080),
    },
    Expect {
        file: "friends_by_Aitzol_Berasategi_orient6.jpg",
        medium: (398, 600),
        large: (716, 1080),
    },
    Expect {
        file: "Arc-Colors-Transparent-Wallpaper.png",
        medium: (800, 449),
        large: (1920, 1077),
    },
];

fn decode_jpeg(data: &[u8]) -> image::DynamicImage {
    assert_eq!(
        image::guess_format(data).ok(),
        Some(image::ImageFormat::Jpeg),
        "derivative is not a JPEG"
    );
    image::load_from_memory_with_format(data, image::ImageFormat::Jpeg).expect("derivative decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_photo_gets_probed_and_three_thumbnails() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    for expect in PHOTOS {
        let data = read_fixture(expect.file);
        let response = upload(&mut ingest, expect.file, &data).await.unwrap();
        assert!(!response.deduplicated);
        let media = response.media.unwrap();
        assert_eq!(media.bytes, data.len() as u64);
        let kinds: Vec<&str> = response.jobs.iter().map(|j| j.kind.as_str()).collect();
        assert_eq!(kinds, ["media.probe", "media.thumbnails"], "{}", expect.file);
        for job in &response.jobs {
            let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
            assert_eq!(
                done.state,
                pb::JobState::Succeeded as i32,
                "{} {}: {:?}",
                expect.file,
                job.kind,
                done.error
            );
            assert_eq!(done.attempts.len(), 1);
            assert_eq!(done.attempts[0].outcome, pb::JobState::Succeeded as i32);
            assert!(!done.attempts[0].worker_id.is_empty());
        }

        let got = ingest
            .get_media(pb::GetMediaRequest {
                media_id: media.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let derivatives = got.media.unwrap().derivatives;
        let mut names: Vec<&str> = derivatives.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["large", "medium", "thumb"], "{}", expect.file);
        for (name, size) in [
            ("thumb", (150, 150)),
            ("medium", expect.medium),
            ("large", expect.large),
        ] {
            let bytes = download(&mut ingest, &media.id, name).await.unwrap();
            let image = decode_jpeg(&bytes);
            assert_eq!(image.dimensions(), size, "{} {name}", expect.file);
            let listed = derivatives.iter().find(|d| d.name == name).unwrap();
            assert_eq!((listed.width, listed.height), size);
            assert_eq!(listed.bytes, bytes.len() as u64);
        }
        let original = download(&mut ingest, &media.id, "original").await.unwrap();
        assert_eq!(original, data, "original round-trips byte for byte");
    }
    mesh.shutdown().await.unwrap();
}

/// The probe job reads the EXIF orientation and the thumbnails come out upright: the medium
/// derivative of the orientation-6 photo matches the stored pixels turned 90° clockwise, not
/// the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exif_orientation_is_applied_and_alpha_is_flattened() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();

    let file = "friends_by_Aitzol_Berasategi_orient6.jpg";
    let data = read_fixture(file);
    let response = upload(&mut ingest, file, &data).await.unwrap();
    let media_id = response.media.unwrap().id;
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
        if job.kind == "media.probe" {
            let meta: serde_json::Value = serde_json::from_str(&done.result.unwrap().metadata_json).unwrap();
            assert_eq!(meta["exif"]["orientation"], 6);
            assert_eq!(
                (meta["width"].as_u64(), meta["height"].as_u64()),
                (Some(3088), Some(2048))
            );
            assert_eq!(
                (meta["display_width"].as_u64(), meta["display_height"].as_u64()),
                (Some(2048), Some(3088))
            );
        }
    }
    let medium = decode_jpeg(&download(&mut ingest, &media_id, "medium").await.unwrap()).to_rgb8();
    let stored = image::load_from_memory(&data).unwrap();
    let (w, h) = medium.dimensions();
    let diff = |candidate: image::DynamicImage| -> f64 {
        let small = candidate
            .resize_exact(w, h, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let total: u64 = small
            .as_raw()
            .iter()
            .zip(medium.as_raw())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        total as f64 / small.as_raw().len() as f64
    };
    let upright = diff(stored.rotate90());
    let wrong = diff(stored.rotate270());
    assert!(upright < 12.0, "upright difference {upright}");
    assert!(wrong > upright * 3.0, "wrong rotation {wrong} vs upright {upright}");

    let file = "Arc-Colors-Transparent-Wallpaper.png";
    let data = read_fixture(file);
    let source = image::load_from_memory(&data).unwrap().to_rgba8();
    let response = upload(&mut ingest, file, &data).await.unwrap();
    let media_id = response.media.unwrap().id;
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
    }
    let large = decode_jpeg(&download(&mut ingest, &media_id, "large").await.unwrap()).to_rgb8();
    // A fully transparent source pixel (away from edges) must come out white, not black.
    let (sw, sh) = source.dimensions();
    let (lw, lh) = large.dimensions();
    let transparent = (sw / 8..sw * 7 / 8)
        .step_by(7)
        .flat_map(|x| (sh / 8..sh * 7 / 8).step_by(7).map(move |y| (x, y)))
        .find(|&(x, y)| {
            (x.saturating_sub(8)..x + 8).all(|xx| {
                (y.saturating_sub(8)..y + 8).all(|yy| source.get_pixel(xx.min(sw - 1), yy.min(sh - 1))[3] == 0)
            })
        });
    if let Some((x, y)) = transparent {
        let px = large.get_pixel(x * lw / sw, y * lh / sh);
        assert!(px.0.iter().all(|&c| c > 230), "transparent area came out {px:?}");
    } else {
        // No fully transparent block: at least the image is not crushed to black.
        let mean: f64 = large.as_raw().iter().map(|&c| f64::from(c)).sum::<f64>() / large.as_raw().len() as f64;
        assert!(mean > 100.0, "flattened image is too dark: mean {mean}");
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_job_delivers_queued_running_succeeded_in_order() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let data = read_fixture("Dragonfly_by_Bolly.jpg");
    let response = upload(&mut ingest, "dragonfly.jpg", &data).await.unwrap();
    let thumbs = response.jobs.iter().find(|j| j.kind == "media.thumbnails").unwrap();
    let seen = watch_to_end(&mut jobs, &thumbs.id, JOB_DEADLINE).await.unwrap();
    let transitions: Vec<&pb::WatchJobResponse> = seen.iter().filter(|m| m.seq > 0).collect();
    let states: Vec<i32> = transitions.iter().map(|m| m.state).collect();
    assert_eq!(
        states,
        [
            pb::JobState::Queued as i32,
            pb::JobState::Running as i32,
            pb::JobState::Succeeded as i32
        ]
    );
    assert!(transitions.windows(2).all(|w| w[0].seq < w[1].seq), "seq increases");
    let last = transitions.last().unwrap().job.as_ref().unwrap();
    assert_eq!(last.result.as_ref().unwrap().outputs.len(), 3);

    // Resuming after the RUNNING seq replays only what came after it.
    let running_seq = transitions[1].seq;
    let mut resumed = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: thumbs.id.clone(),
            after_seq: running_seq,
        })
        .await
        .unwrap()
        .into_inner();
    let mut after = Vec::new();
    while let Some(m) = resumed.message().await.unwrap() {
        after.push(m.state);
    }
    assert_eq!(after, [pb::JobState::Succeeded as i32]);
    mesh.shutdown().await.unwrap();
}

/// With `MM_THUMB_FORMATS=jpeg,webp` each size also comes as WebP, decodable and the same size
/// as its JPEG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webp_derivatives_come_from_configuration() {
    let mesh = Mesh::start_with(|c| c.media.thumb_formats = "jpeg,webp".to_owned())
        .await
        .unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let file = "Dragonfly_by_Bolly.jpg";
    let response = upload(&mut ingest, file, &read_fixture(file)).await.unwrap();
    let media_id = response.media.unwrap().id;
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{:?}", done.error);
    }
    for (name, size) in [("thumb", (150, 150)), ("medium", (800, 600)), ("large", (1440, 1080))] {
        let jpeg = decode_jpeg(&download(&mut ingest, &media_id, name).await.unwrap());
        let webp = download(&mut ingest, &media_id, &format!("{name}_webp")).await.unwrap();
        assert_eq!(
            image::guess_format(&webp).ok(),
            Some(image::ImageFormat::WebP),
            "{name}_webp"
        );
        let webp = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP).unwrap();
        assert_eq!(webp.dimensions(), size, "{name}_webp");
        assert_eq!(jpeg.dimensions(), size, "{name}");
    }
    mesh.shutdown().await.unwrap();
}
