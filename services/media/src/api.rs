use mediamesh_blob::Blob;
use mediamesh_core::Error;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::media_service_server::MediaService;
use tonic::{Request, Response, Status};

use crate::MediaConfig;

const MAX_INLINE: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct MediaApi {
    blob: Blob,
    config: MediaConfig,
}

impl MediaApi {
    pub fn new(blob: Blob, config: MediaConfig) -> Self {
        Self { blob, config }
    }
}

#[tonic::async_trait]
impl MediaService for MediaApi {
    async fn probe(&self, request: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let data = match request.into_inner().source {
            Some(pb::probe_request::Source::MediaId(id)) => {
                let id = uuid::Uuid::parse_str(&id)
                    .map_err(|_| Error::bad_input(format!("media_id {id:?} is not a valid id")))?;
                self.blob
                    .get(&mediamesh_blob::original_key(&id))
                    .await
                    .map_err(|e| match e {
                        mediamesh_blob::Error::NotFound(_) => Error::not_found(format!("media {id} not found")),
                        other => Error::from(other),
                    })?
                    .to_vec()
            }
            Some(pb::probe_request::Source::Data(data)) => {
                if data.len() > MAX_INLINE {
                    return Err(Error::new(
                        mediamesh_core::ErrorCode::TooLarge,
                        "inline data is over 4 MiB; upload it and probe by media_id",
                    )
                    .into());
                }
                data
            }
            None => return Err(Error::bad_input("source is required: media_id or data").into()),
        };
        let limits = self.config.limits();
        let info = tokio::task::spawn_blocking(move || mediamesh_imaging::probe(&data, &limits))
            .await
            .map_err(|_| Error::internal("probe task failed"))??;
        Ok(Response::new(probe_to_proto(info)))
    }
}

pub fn probe_to_proto(info: mediamesh_imaging::ProbeInfo) -> pb::ProbeResponse {
    pb::ProbeResponse {
        format: info.format,
        content_type: info.content_type,
        width: info.width,
        height: info.height,
        display_width: info.display_width,
        display_height: info.display_height,
        exif: Some(pb::ExifSummary {
            orientation: info.exif.orientation,
            camera_make: info.exif.camera_make.unwrap_or_default(),
            camera_model: info.exif.camera_model.unwrap_or_default(),
            taken_at: info.exif.taken_at.unwrap_or_default(),
            lens_model: info.exif.lens_model.unwrap_or_default(),
        }),
        has_alpha: info.has_alpha,
        progressive: info.progressive,
        color_space: info.color_space,
        icc_profile: info.icc_profile.unwrap_or_default(),
        phash: info.phash,
        dominant_colors: info
            .dominant_colors
            .into_iter()
            .map(|c| pb::DominantColor {
                hex: c.hex,
                share: c.share,
            })
            .collect(),
    }
}
