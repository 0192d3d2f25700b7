//! Receives an upload stream into a staging blob, hashing as it goes and keeping the head
//! and tail of the file for validation. Anything that goes wrong deletes the staging blob.

use mediamesh_blob::Blob;
use mediamesh_core::Error;
use mediamesh_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Streaming;

/// Bytes kept from the start of a file: enough for any image header we accept.
pub const HEAD_BYTES: usize = 1024 * 1024;
/// Bytes kept from the end of a file: where end markers live.
pub const TAIL_BYTES: usize = 64 * 1024;

/// Largest `extract_schema_json` accepted with an upload.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

pub struct Staged {
    pub key: String,
    pub filename: String,
    pub declared_type: String,
    pub category: String,
    pub extract_schema: Option<serde_json::Value>,
    pub bytes: u64,
    pub sha256: String,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// The most an upload may be, and the error past it.
pub struct Limit {
    pub bytes: u64,
    pub error: Error,
}

/// Longest file name kept, in bytes.
pub const MAX_FILENAME_BYTES: usize = 255;

/// The name a file is recorded under: the last part of a path (a browser may send
/// `C:\Users\me\photo.jpg`, an attacker `../../etc/passwd`), without control characters,
/// at most 255 bytes. An empty name stays empty.
pub fn clean_filename(name: &str) -> Result<String, Error> {
    if name.chars().any(char::is_control) {
        return Err(Error::bad_input("filename contains control characters"));
    }
    if name.len() > 4096 {
        return Err(Error::bad_input("filename is longer than 4096 bytes"));
    }
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if base == "." || base == ".." {
        return Err(Error::bad_input(format!("filename {name:?} names no file")));
    }
    if base.len() > MAX_FILENAME_BYTES {
        return Err(Error::bad_input(format!(
            "filename is {} bytes; at most {MAX_FILENAME_BYTES}",
            base.len()
        )));
    }
    Ok(base.to_owned())
}

/// A declared content type must agree with what the bytes are: same family (image, audio,
/// video; MP4 and Ogg containers hold either sound or pictures), or say nothing
/// (`application/octet-stream`, empty).
pub fn check_declared(declared: &str, sniffed: &str, kind: mediamesh_core::MediaKind) -> Result<(), Error> {
    let declared = declared.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if declared.is_empty() || declared == "application/octet-stream" || declared == sniffed {
        return Ok(());
    }
    let family = declared.split('/').next().unwrap_or("");
    let containers = [
        "video/mp4",
        "audio/mp4",
        "audio/x-m4a",
        "audio/m4a",
        "video/quicktime",
        "audio/ogg",
        "video/ogg",
        "application/ogg",
        "application/mp4",
    ];
    let agrees = match kind {
        mediamesh_core::MediaKind::Image => family == "image",
        mediamesh_core::MediaKind::Audio | mediamesh_core::MediaKind::Video => {
            family == kind.as_str() || containers.contains(&declared.as_str())
        }
    };
    if agrees {
        Ok(())
    } else {
        Err(Error::bad_input(format!(
            "declared content type {declared:?} does not match the content, which is {sniffed}"
        )))
    }
}

pub async fn receive(
    mut stream: Streaming<pb::UploadMediaRequest>,
    blob: &Blob,
    key: String,
    limit: &Limit,
) -> Result<Staged, Error> {
    let header = match stream.message().await {
        Ok(Some(pb::UploadMediaRequest {
            part: Some(pb::upload_media_request::Part::Header(header)),
        })) => header,
        Ok(Some(_)) => return Err(Error::bad_input("the first message of an upload must be its header")),
        Ok(None) => return Err(Error::bad_input("upload stream ended before its header")),
        Err(status) => return Err(Error::bad_input(format!("upload stream failed: {}", status.message()))),
    };
    let pb::UploadHeader {
        filename,
        content_type,
        category,
        extract_schema_json,
    } = header;
    let filename = clean_filename(&filename)?;
    if content_type.len() > 255 || content_type.chars().any(char::is_control) {
        return Err(Error::bad_input(
            "content_type: at most 255 bytes, no control characters",
        ));
    }
    if category.len() > 64 {
        return Err(Error::bad_input("category is longer than 64 bytes"));
    }
    let extract_schema = if extract_schema_json.trim().is_empty() {
        None
    } else {
        if extract_schema_json.len() > MAX_SCHEMA_BYTES {
            return Err(Error::bad_input(format!(
                "extract_schema_json is longer than {MAX_SCHEMA_BYTES} bytes"
            )));
        }
        let schema: serde_json::Value = serde_json::from_str(&extract_schema_json)
            .map_err(|e| Error::bad_input(format!("extract_schema_json is not JSON: {e}")))?;
        if !schema.is_object() {
            return Err(Error::bad_input("extract_schema_json must be a JSON Schema object"));
        }
        Some(schema)
    };
    let mut writer = blob.writer(&key);
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut bytes: u64 = 0;
    let outcome: Result<(), Error> = async {
        loop {
            let chunk = match stream.message().await {
                Ok(Some(pb::UploadMediaRequest {
                    part: Some(pb::upload_media_request::Part::Chunk(chunk)),
                })) => chunk,
                Ok(Some(pb::UploadMediaRequest {
                    part: Some(pb::upload_media_request::Part::Header(_)),
                })) => {
                    return Err(Error::bad_input("an upload has one header, and it comes first"));
                }
                Ok(Some(pb::UploadMediaRequest { part: None })) => continue,
                Ok(None) => return Ok(()),
                Err(status) => {
                    return Err(Error::bad_input(format!("upload stream failed: {}", status.message())));
                }
            };
            bytes += chunk.len() as u64;
            if bytes > limit.bytes {
                return Err(limit.error.clone());
            }
            hasher.update(&chunk);
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            tail.extend_from_slice(&chunk);
            if tail.len() > 2 * TAIL_BYTES {
                tail.drain(..tail.len() - TAIL_BYTES);
            }
            writer.write_all(&chunk).await.map_err(|e| {
                tracing::error!(error = %e, "writing upload failed");
                Error::unavailable("blob store unavailable")
            })?;
        }
    }
    .await;
    if let Err(err) = outcome {
        let _ = writer.abort().await;
        let _ = blob.delete(&key).await;
        return Err(err);
    }
    if let Err(e) = writer.shutdown().await {
        tracing::error!(error = %e, "completing upload failed");
        let _ = blob.delete(&key).await;
        return Err(Error::unavailable("blob store unavailable"));
    }
    if tail.len() > TAIL_BYTES {
        tail.drain(..tail.len() - TAIL_BYTES);
    }
    Ok(Staged {
        key,
        filename,
        declared_type: content_type,
        category,
        extract_schema,
        bytes,
        sha256: hex::encode(hasher.finalize()),
        head,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use mediamesh_core::MediaKind;

    use super::*;

    #[test]
    fn file_names_lose_their_paths_and_keep_no_control_characters() {
        assert_eq!(clean_filename("photo.jpg").unwrap(), "photo.jpg");
        assert_eq!(clean_filename("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\photo.jpg").unwrap(), "photo.jpg");
        assert_eq!(clean_filename("").unwrap(), "");
        assert!(clean_filename("a\nb.jpg").is_err());
        assert!(clean_filename("a\0b.jpg").is_err());
        assert!(clean_filename("x/..").is_err());
        assert!(clean_filename(&"a".repeat(300)).is_err());
        assert_eq!(clean_filename(&format!("{}/b.jpg", "d".repeat(300))).unwrap(), "b.jpg");
    }

    #[test]
    fn declared_types_must_match_the_family() {
        assert!(check_declared("", "image/jpeg", MediaKind::Image).is_ok());
        assert!(check_declared("image/png", "image/jpeg", MediaKind::Image).is_ok());
        assert!(check_declared("IMAGE/JPEG; q=1", "image/jpeg", MediaKind::Image).is_ok());
        assert!(check_declared("video/mp4", "audio/mp4", MediaKind::Audio).is_ok());
        assert!(check_declared("application/octet-stream", "audio/mpeg", MediaKind::Audio).is_ok());
        let err = check_declared("application/pdf", "image/jpeg", MediaKind::Image).unwrap_err();
        assert!(err.message.contains("application/pdf"), "{}", err.message);
        assert!(check_declared("audio/mpeg", "image/png", MediaKind::Image).is_err());
    }
}
