//! Which jobs an upload triggers: one list per media type, plus extra jobs per upload
//! category, from `MM_PIPELINES` (JSON). The `inference.*` kinds in it are created only when
//! a provider serves them; otherwise the upload reports them as skipped, with the reason. Validated when ingest starts, so a typo in a kind
//! stops the service instead of failing every upload.

use std::collections::BTreeMap;

use mediamesh_core::{Error, JobKind, MediaKind};
use serde::Deserialize;

/// Jobs per media type.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KindLists {
    #[serde(default)]
    pub image: Vec<String>,
    #[serde(default)]
    pub audio: Vec<String>,
    #[serde(default)]
    pub video: Vec<String>,
}

impl KindLists {
    fn of(&self, kind: MediaKind) -> &[String] {
        match kind {
            MediaKind::Image => &self.image,
            MediaKind::Audio => &self.audio,
            MediaKind::Video => &self.video,
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.image.iter().chain(&self.audio).chain(&self.video)
    }
}

/// The pipelines: `{"image": [...], "audio": [...], "video": [...], "categories": {"product":
/// {"image": [...]}}}`. Media types left out keep their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipelines {
    pub base: KindLists,
    pub categories: BTreeMap<String, KindLists>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    image: Option<Vec<String>>,
    audio: Option<Vec<String>>,
    video: Option<Vec<String>>,
    #[serde(default)]
    categories: BTreeMap<String, KindLists>,
}

impl Default for Pipelines {
    fn default() -> Self {
        let kinds = |list: &[JobKind]| list.iter().map(|k| k.as_str().to_owned()).collect();
        Self {
            base: KindLists {
                image: kinds(&[
                    JobKind::MediaProbe,
                    JobKind::MediaThumbnails,
                    JobKind::InferenceDescribeImage,
                ]),
                audio: kinds(&[
                    JobKind::MediaProbe,
                    JobKind::MediaWaveform,
                    JobKind::InferenceTranscribe,
                ]),
                video: kinds(&[
                    JobKind::MediaProbe,
                    JobKind::MediaVideoThumbnail,
                    JobKind::MediaVideoPreview,
                ]),
            },
            categories: BTreeMap::new(),
        }
    }
}

impl Pipelines {
    /// Parses and validates `MM_PIPELINES`; empty means the defaults.
    pub fn parse(json: &str) -> Result<Self, String> {
        let mut pipelines = Self::default();
        if json.trim().is_empty() {
            return Ok(pipelines);
        }
        let raw: Raw = serde_json::from_str(json).map_err(|e| format!("MM_PIPELINES is not valid: {e}"))?;
        if let Some(image) = raw.image {
            pipelines.base.image = image;
        }
        if let Some(audio) = raw.audio {
            pipelines.base.audio = audio;
        }
        if let Some(video) = raw.video {
            pipelines.base.video = video;
        }
        pipelines.categories = raw.categories;
        for (category, lists) in std::iter::once(("", &pipelines.base))
            .chain(pipelines.categories.iter().map(|(name, lists)| (name.as_str(), lists)))
        {
            if category.len() > 64 {
                return Err(format!(
                    "MM_PIPELINES: category name {category:?} is longer than 64 bytes"
                ));
            }
            for name in lists.all() {
                let where_ = if category.is_empty() {
                    String::new()
                } else {
                    format!(" (category {category:?})")
                };
                let kind =
                    JobKind::parse(name).map_err(|_| format!("MM_PIPELINES: unknown job kind {name:?}{where_}"))?;
                if !kind.needs_media() {
                    return Err(format!("MM_PIPELINES: {name}{where_} does not work on a media"));
                }
                if !kind.is_available() {
                    return Err(format!("MM_PIPELINES: {name}{where_} has no worker in this build"));
                }
            }
        }
        Ok(pipelines)
    }

    /// The job kinds for an upload of `kind` in `category` (empty: none), without repeats.
    pub fn kinds_for(&self, kind: MediaKind, category: &str) -> Result<Vec<String>, Error> {
        let mut kinds: Vec<String> = self.base.of(kind).to_vec();
        if !category.is_empty() {
            let extra = self.categories.get(category).ok_or_else(|| {
                let known: Vec<&str> = self.categories.keys().map(String::as_str).collect();
                Error::bad_input(format!(
                    "unknown upload category {category:?}; configured categories: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            for name in extra.of(kind) {
                if !kinds.contains(name) {
                    kinds.push(name.clone());
                }
            }
        }
        Ok(kinds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_media_type() {
        let p = Pipelines::parse("").unwrap();
        assert_eq!(
            p.kinds_for(MediaKind::Image, "").unwrap(),
            ["media.probe", "media.thumbnails", "inference.describe_image"]
        );
        assert_eq!(
            p.kinds_for(MediaKind::Audio, "").unwrap(),
            ["media.probe", "media.waveform", "inference.transcribe"]
        );
        assert_eq!(
            p.kinds_for(MediaKind::Video, "").unwrap(),
            ["media.probe", "media.video_thumbnail", "media.video_preview"]
        );
    }

    #[test]
    fn categories_add_jobs_and_unknown_ones_are_refused() {
        let p = Pipelines::parse(
            r#"{"audio": ["media.waveform"], "categories": {"podcast": {"audio": ["media.probe", "media.waveform"]}}}"#,
        )
        .unwrap();
        assert_eq!(p.kinds_for(MediaKind::Audio, "").unwrap(), ["media.waveform"]);
        assert_eq!(
            p.kinds_for(MediaKind::Audio, "podcast").unwrap(),
            ["media.waveform", "media.probe"]
        );
        assert_eq!(
            p.kinds_for(MediaKind::Image, "podcast").unwrap(),
            ["media.probe", "media.thumbnails", "inference.describe_image"]
        );
        let err = p.kinds_for(MediaKind::Audio, "nope").unwrap_err();
        assert!(err.message.contains("podcast"), "{}", err.message);
    }

    #[test]
    fn bad_configuration_is_refused_at_start() {
        assert!(
            Pipelines::parse(r#"{"image": ["media.nonsense"]}"#)
                .unwrap_err()
                .contains("unknown job kind")
        );
        assert!(
            Pipelines::parse(r#"{"image": ["aggregate"]}"#)
                .unwrap_err()
                .contains("does not work on a media")
        );
        assert!(Pipelines::parse(r#"{"imgae": []}"#).unwrap_err().contains("not valid"));
        assert!(
            Pipelines::parse(r#"{"categories": {"x": {"image": ["inference.generate_text"]}}}"#)
                .unwrap_err()
                .contains("does not work on a media")
        );
        assert!(Pipelines::parse(r#"{"categories": {"x": {"video": ["inference.transcribe"]}}}"#).is_ok());
    }
}
