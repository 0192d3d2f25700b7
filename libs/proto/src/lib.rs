//! Generated gRPC and protobuf code for `mediamesh.v1`, the public contract.

/// `mediamesh.v1`: messages, clients and servers.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("mediamesh.v1");
}

/// The encoded `FileDescriptorSet` of every mediamesh proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mediamesh_descriptor");

pub use prost_types::Timestamp;

/// Reads a `DownloadMedia` stream whole: its header and every byte it announces.
///
/// A stream without a header, or with fewer or more bytes than the header says,
/// is `DATA_LOSS`: the caller would otherwise keep a cut file.
pub async fn read_download(
    mut stream: tonic::Streaming<v1::DownloadMediaResponse>,
) -> Result<(v1::DownloadHeader, Vec<u8>), tonic::Status> {
    let mut header = None;
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(v1::download_media_response::Part::Header(h)) => {
                data.reserve(usize::try_from(h.bytes).unwrap_or(0).min(64 << 20));
                header = Some(h);
            }
            Some(v1::download_media_response::Part::Chunk(chunk)) => data.extend_from_slice(&chunk),
            None => {}
        }
    }
    let header = header.ok_or_else(|| tonic::Status::data_loss("the download had no header"))?;
    if header.bytes != data.len() as u64 {
        return Err(tonic::Status::data_loss(format!(
            "the download announced {} bytes and carried {}",
            header.bytes,
            data.len()
        )));
    }
    Ok((header, data))
}
