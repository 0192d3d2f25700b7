use mediamesh_core::ErrorCode;
use mediamesh_proto::v1 as pb;
use mediamesh_testkit::{Mesh, blob_files, read_fixture, upload, wait_job};

use crate::{JOB_DEADLINE, code_of};

/// A PNG whose header claims 100000x100000 pixels: a few hundred bytes that would need 40 GB
/// to decode.
pub fn png_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(kind);
        hasher.update(data);
        out.extend_from_slice(&hasher.finalize().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A tiny zlib stream of zeros.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

async fn media_rows(mesh: &Mesh) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&mesh.postgres.url("mediamesh"))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM ingest.media")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn job_rows(mesh: &Mesh) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&mesh.postgres.url("mediamesh"))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM scheduler.jobs")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_stable_codes_and_leave_nothing_behind() {
    let mesh = Mesh::start_with(|c| c.ingest.max_upload_bytes = 3 * 1024 * 1024)
        .await
        .unwrap();
    let mut ingest = mesh.ingest();
    let kleiber = read_fixture("Kleiber_by_Lukas_Baubkus.jpg");
    let dragonfly = read_fixture("Dragonfly_by_Bolly.jpg");
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        ("empty.jpg", Vec::new(), ErrorCode::BadInput, "empty"),
        (
            "truncated.jpg",
            dragonfly[..dragonfly.len() * 6 / 10].to_vec(),
            ErrorCode::BadInput,
            "truncated",
        ),
        (
            "notes.jpg",
            b"hello, this is a text file and not a photo\n".repeat(20),
            ErrorCode::BadInput,
            "not a recognised",
        ),
        ("bomb.png", png_bomb(), ErrorCode::TooLarge, "pixel limit"),
        ("big.jpg", kleiber, ErrorCode::TooLarge, "byte limit"),
    ];
    for (name, data, code, words) in cases {
        let status = upload(&mut ingest, name, &data).await.expect_err(name);
        assert_eq!(code_of(&status), code, "{name}: {status:?}");
        assert!(
            status.message().contains(words),
            "{name}: message {:?} should say {words:?}",
            status.message()
        );
        assert_eq!(media_rows(&mesh).await, 0, "{name}: no media row");
        assert_eq!(job_rows(&mesh).await, 0, "{name}: no job row");
        assert_eq!(blob_files(&mesh), Vec::<String>::new(), "{name}: no blob");
    }

    // A stream that does not start with its header is malformed.
    let chunk_first = vec![pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Chunk(vec![1, 2, 3])),
    }];
    let status = ingest
        .upload_media(futures::stream::iter(chunk_first))
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    assert!(status.message().contains("header"), "{status:?}");
    assert_eq!(blob_files(&mesh), Vec::<String>::new());

    // And the mesh still works.
    let ok = upload(&mut ingest, "dragonfly.jpg", &dragonfly).await.unwrap();
    let mut jobs = mesh.jobs();
    for job in &ok.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_unknown_kinds_get_clear_codes() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let data = read_fixture("Dragonfly_by_Bolly.jpg");
    let media_id = upload(&mut ingest, "d.jpg", &data).await.unwrap().media.unwrap().id;
    let before = job_rows(&mesh).await;

    let submit = |kind: &str, media: &str| pb::SubmitJobRequest {
        job: Some(pb::JobSpec {
            kind: kind.to_owned(),
            media_id: media.to_owned(),
            ..Default::default()
        }),
    };
    let status = ingest
        .submit_job(submit("media.nonsense", &media_id))
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    assert!(status.message().contains("unknown job kind"), "{status:?}");

    let status = ingest
        .submit_job(submit("inference.transcribe", &media_id))
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::Unsupported, "{status:?}");

    let status = ingest.submit_job(submit("media.probe", "not-an-id")).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);

    let status = ingest
        .submit_job(submit("media.probe", &uuid::Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::NotFound);

    let status = ingest.submit_job(pb::SubmitJobRequest { job: None }).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);

    let mut bad_payload = submit("media.probe", &media_id);
    bad_payload.job.as_mut().unwrap().payload_json = "[1, 2".to_owned();
    let status = ingest.submit_job(bad_payload).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);

    let mut bad_priority = submit("media.probe", &media_id);
    bad_priority.job.as_mut().unwrap().priority = 11;
    let status = ingest.submit_job(bad_priority).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);

    let status = jobs
        .get_job(pb::GetJobRequest {
            job_id: "nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput);
    let status = jobs
        .get_job(pb::GetJobRequest {
            job_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::NotFound);

    let status = ingest
        .download_media(pb::DownloadMediaRequest {
            media_id: media_id.clone(),
            name: "poster".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::NotFound);

    assert_eq!(job_rows(&mesh).await, before, "no refused job was recorded");

    // A valid submit still works and runs.
    let job = ingest
        .submit_job(submit("media.probe", &media_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    mesh.shutdown().await.unwrap();
}

/// Bytes that pass ingest's checks (a PNG header and end chunk) but whose image data is
/// garbage: the job fails with BAD_INPUT after one attempt, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_image_fails_its_job_without_retries_and_the_worker_survives() {
    let mesh = Mesh::start().await.unwrap();
    let mut ingest = mesh.ingest();
    let mut jobs = mesh.jobs();
    let good = read_fixture("Dragonfly_by_Bolly.jpg");
    // Broken tables are caught by ingest already, from the header.
    let broken_tables = corrupt_jpeg_tables(&read_fixture("Kleiber_by_Lukas_Baubkus.jpg"));
    let status = upload(&mut ingest, "tables.jpg", &broken_tables).await.unwrap_err();
    assert_eq!(code_of(&status), ErrorCode::BadInput, "{status:?}");

    let corrupt = corrupt_png(&read_fixture("Arc-Colors-Transparent-Wallpaper.png"));
    let response = upload(&mut ingest, "corrupt.png", &corrupt).await.unwrap();
    let thumbs = response.jobs.iter().find(|j| j.kind == "media.thumbnails").unwrap();
    let done = wait_job(&mut jobs, &thumbs.id, JOB_DEADLINE).await.unwrap();
    assert_eq!(done.state, pb::JobState::Failed as i32, "{done:?}");
    let error = done.error.unwrap();
    assert_eq!(error.code, pb::ErrorCode::BadInput as i32, "{error:?}");
    assert!(!error.retryable);
    assert_eq!(done.attempts.len(), 1, "not retried");

    let response = upload(&mut ingest, "good.jpg", &good).await.unwrap();
    for job in &response.jobs {
        let done = wait_job(&mut jobs, &job.id, JOB_DEADLINE).await.unwrap();
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
    }
    mesh.shutdown().await.unwrap();
}

/// A real PNG with bytes flipped in the middle of its image data: the header, the
/// dimensions and the IEND chunk are intact, the pixels cannot be decoded.
pub fn corrupt_png(png: &[u8]) -> Vec<u8> {
    let mut out = png.to_vec();
    let idat = out.windows(4).position(|w| w == b"IDAT").expect("a PNG has IDAT");
    let middle = out.len() / 2;
    assert!(middle > idat + 64 && middle + 64 < out.len() - 12);
    for byte in &mut out[middle..middle + 64] {
        *byte ^= 0x5A;
    }
    out
}

/// A real JPEG whose first Huffman table claims more codes than a table can hold.
pub fn corrupt_jpeg_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let dht = out
        .windows(2)
        .position(|w| w == [0xFF, 0xC4])
        .expect("a JPEG has a DHT segment");
    // FF C4, 2 length bytes, 1 class/id byte, then 16 code counts.
    for count in &mut out[dht + 5..dht + 5 + 16] {
        *count = 0xFF;
    }
    out
}
