//! Receives an upload stream into a staging blob, hashing as it goes and keeping the head
//! and tail of the file for validation. Anything that goes wrong deletes the staging blob.

use mediamesh_blob::Blob;
use mediamesh_core::{Error, ErrorCode};
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

pub async fn receive(
    mut stream: Streaming<pb::UploadMediaRequest>,
    blob: &Blob,
    key: String,
    max_bytes: u64,
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
    if filename.len() > 1024 {
        return Err(Error::bad_input("filename is longer than 1024 bytes"));
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
            if bytes > max_bytes {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!("upload is over the {max_bytes} byte limit"),
                ));
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
