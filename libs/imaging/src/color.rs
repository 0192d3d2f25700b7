//! Colour management: embedded ICC profiles to sRGB (with moxcms), CMYK/YCCK to sRGB.
//!
//! sRGB-tagged and untagged images take the fast path: no transform at all.

use std::sync::Arc;

use image::RgbImage;
use mediamesh_core::Error;
use moxcms::{ColorProfile, DataColorSpace, Layout, ProfileText, TransformExecutor, TransformOptions};

/// A ready transform from an embedded RGB profile to sRGB, applied to each output.
pub(crate) struct ToSrgb {
    transform: Arc<dyn TransformExecutor<u8> + Send + Sync>,
}

impl ToSrgb {
    /// The transform for an embedded profile, or `None` when none is needed: no profile, an
    /// sRGB profile, a non-RGB profile, or one moxcms cannot read (shown as stored then).
    pub fn for_rgb_profile(icc: Option<&[u8]>) -> Option<Self> {
        let profile = ColorProfile::new_from_slice(icc?).ok()?;
        if profile.color_space != DataColorSpace::Rgb || is_srgb(&profile) {
            return None;
        }
        let transform = profile
            .create_transform_8bit(
                Layout::Rgb,
                &ColorProfile::new_srgb(),
                Layout::Rgb,
                TransformOptions::default(),
            )
            .map_err(|e| tracing::debug!(error = %e, "icc profile not usable, shown as stored"))
            .ok()?;
        Some(Self { transform })
    }

    /// Converts RGB8 pixels in place.
    pub fn apply(&self, image: &mut RgbImage) -> Result<(), Error> {
        let src = image.as_raw().clone();
        self.transform
            .transform(&src, image.as_mut())
            .map_err(|e| Error::internal(format!("colour conversion failed: {e}")))
    }
}

/// The profile's description (what `probe` reports).
pub(crate) fn profile_description(icc: &[u8]) -> Option<String> {
    let profile = ColorProfile::new_from_slice(icc).ok()?;
    let text = match profile.description.as_ref()? {
        ProfileText::PlainString(s) => s.clone(),
        ProfileText::Localizable(list) => list
            .iter()
            .find(|s| s.language.eq_ignore_ascii_case("en"))
            .or_else(|| list.first())?
            .value
            .clone(),
        ProfileText::Description(d) => {
            if d.ascii_string.trim_matches('\0').is_empty() {
                d.unicode_string.clone()
            } else {
                d.ascii_string.clone()
            }
        }
    };
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned();
    (!text.is_empty()).then_some(text)
}

/// sRGB profiles under their usual names (IEC 61966-2.1, "sRGB built-in", "sRGB v4 ...").
fn is_srgb(profile: &ColorProfile) -> bool {
    let Some(text) = profile.description.as_ref() else {
        return false;
    };
    let name = match text {
        ProfileText::PlainString(s) => s.clone(),
        ProfileText::Localizable(list) => list.iter().map(|s| s.value.as_str()).collect::<Vec<_>>().join(" "),
        ProfileText::Description(d) => format!("{} {}", d.ascii_string, d.unicode_string),
    };
    let name = name.to_ascii_lowercase();
    name.contains("srgb") || name.contains("61966-2")
}

/// CMYK (as decoded by libjpeg: one byte per ink) to RGB8. `inverted` data (Adobe's
/// convention, also every YCCK file) stores 255 for no ink. An embedded CMYK profile is used
/// when moxcms can read it, else the naive formula R = (1 − C)(1 − K).
pub(crate) fn cmyk_to_rgb(
    cmyk: &[u8],
    width: u32,
    height: u32,
    inverted: bool,
    icc: Option<&[u8]>,
) -> Result<RgbImage, Error> {
    let pixels = cmyk.len() / 4;
    let mut rgb = vec![0u8; pixels * 3];
    let transform = icc
        .and_then(|icc| ColorProfile::new_from_slice(icc).ok())
        .filter(|p| p.color_space == DataColorSpace::Cmyk)
        .and_then(|p| {
            p.create_transform_8bit(
                Layout::Rgba,
                &ColorProfile::new_srgb(),
                Layout::Rgb,
                TransformOptions::default(),
            )
            .ok()
        });
    match transform {
        Some(transform) => {
            // ICC CMYK stores 0 for no ink.
            let normal: Vec<u8> = if inverted {
                cmyk.iter().map(|&v| 255 - v).collect()
            } else {
                cmyk.to_vec()
            };
            transform
                .transform(&normal, &mut rgb)
                .map_err(|e| Error::internal(format!("CMYK conversion failed: {e}")))?;
        }
        None => {
            for (src, dst) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
                let (c, m, y, k) = if inverted {
                    (src[0], src[1], src[2], src[3])
                } else {
                    (255 - src[0], 255 - src[1], 255 - src[2], 255 - src[3])
                };
                // Now 255 means no ink: value = (255 − ink)(255 − black) / 255.
                let k = u32::from(k);
                dst[0] = ((u32::from(c) * k + 127) / 255) as u8;
                dst[1] = ((u32::from(m) * k + 127) / 255) as u8;
                dst[2] = ((u32::from(y) * k + 127) / 255) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| Error::internal("CMYK conversion failed"))
}
