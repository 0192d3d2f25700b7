//! Image and audio helpers.

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Rgb, RgbImage, metadata::Orientation};
use sha2::{Digest, Sha256};

/// Dimensions of an image as displayed (EXIF orientation applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dimensions {
    pub width: u32,
    pub height: u32,
}

impl Dimensions {
    /// `"landscape"`, `"portrait"` or `"square"`.
    pub fn orientation(self) -> &'static str {
        match self.width.cmp(&self.height) {
            std::cmp::Ordering::Greater => "landscape",
            std::cmp::Ordering::Less => "portrait",
            std::cmp::Ordering::Equal => "square",
        }
    }

    /// `"WxH"`.
    pub fn label(self) -> String {
        format!("{}x{}", self.width, self.height)
    }

    /// `"a landscape photo, WxH [name]"`.
    pub fn caption(self, name: &str) -> String {
        format!("a {} photo, {} [{name}]", self.orientation(), self.label())
    }

    /// `"outdoor"` for landscape images, `"indoor"` otherwise.
    pub fn scene(self) -> &'static str {
        if self.width > self.height { "outdoor" } else { "indoor" }
    }

    /// `["photo", orientation, "WxH"]`.
    pub fn tags(self) -> Vec<String> {
        vec!["photo".to_owned(), self.orientation().to_owned(), self.label()]
    }
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Reads the image header only: dimensions as displayed (EXIF orientation applied).
pub(crate) fn dimensions(bytes: &[u8]) -> Result<Dimensions, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("unrecognised image format".to_owned());
    }
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err("empty image".to_owned());
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(if swaps_axes(orientation) {
        Dimensions {
            width: height,
            height: width,
        }
    } else {
        Dimensions { width, height }
    })
}

/// Decodes a whole image and applies its EXIF orientation.
pub(crate) fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("unrecognised image format".to_owned());
    }
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Decodes a `data:image/...;base64,...` URL into bytes.
pub(crate) fn data_url_bytes(url: &str) -> Result<Vec<u8>, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err("only data: URLs are supported by the fake provider".to_owned());
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err("malformed data URL".to_owned());
    };
    if !meta.ends_with(";base64") {
        return Err("data URL is not base64".to_owned());
    }
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| format!("invalid base64 in data URL: {e}"))
}

/// Encodes an image as PNG.
pub(crate) fn png(image: &DynamicImage) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// A `width`×`height` gradient whose colours are taken from the sha256 of `prompt`.
pub(crate) fn gradient(prompt: &str, width: u32, height: u32) -> RgbImage {
    let digest = Sha256::digest(prompt.as_bytes());
    let start = [digest[0], digest[1], digest[2]];
    let end = [digest[3], digest[4], digest[5]];
    let span_x = width.saturating_sub(1).max(1) as f32;
    let span_y = height.saturating_sub(1).max(1) as f32;
    RgbImage::from_fn(width, height, |x, y| {
        let t = (x as f32 / span_x + y as f32 / span_y) / 2.0;
        let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * t).round() as u8;
        Rgb([mix(start[0], end[0]), mix(start[1], end[1]), mix(start[2], end[2])])
    })
}

/// Duration of a constant-bit-rate MP3 from the bit rate of its first audio frame (an ID3v2
/// tag and a Xing/Info frame in front are skipped). Good enough for the parts ffmpeg cuts; not
/// for VBR files.
pub(crate) fn mp3_duration(bytes: &[u8]) -> Option<f64> {
    // Kbit/s by bitrate index: MPEG-1 Layer III, MPEG-2/2.5 Layer III.
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    const RATES: [[u32; 3]; 4] = [
        [11025, 12000, 8000],
        [0, 0, 0],
        [22050, 24000, 16000],
        [44100, 48000, 32000],
    ];
    let mut at = 0;
    if bytes.len() >= 10 && &bytes[0..3] == b"ID3" {
        at = 10
            + bytes[6..10]
                .iter()
                .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
    }
    let first = at;
    for _ in 0..2 {
        let frame = (at..bytes.len().saturating_sub(3)).find(|&i| bytes[i] == 0xff && bytes[i + 1] & 0xe0 == 0xe0)?;
        let version = usize::from((bytes[frame + 1] >> 3) & 0b11); // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        let layer = (bytes[frame + 1] >> 1) & 0b11; // 1: Layer III
        let index = usize::from(bytes[frame + 2] >> 4);
        let rate = RATES[version][usize::from((bytes[frame + 2] >> 2) & 0b11).min(2)];
        if layer != 1 || index == 0 || index == 15 || version == 1 || rate == 0 {
            return None;
        }
        let kbps = if version == 3 { V1[index] } else { V2[index] };
        let per_frame = if version == 3 { 144_000 } else { 72_000 };
        let length = (per_frame * kbps / rate) as usize + usize::from((bytes[frame + 2] >> 1) & 1);
        let body = &bytes[frame..bytes.len().min(frame + length)];
        let tagged = body.windows(4).any(|w| w == b"Xing" || w == b"Info");
        if tagged && at == first {
            // The Xing/Info frame carries no audio and may have another bit rate.
            at = frame + length.max(1);
            continue;
        }
        return Some((bytes.len() - frame) as f64 * 8.0 / (f64::from(kbps) * 1000.0));
    }
    None
}

/// Duration of a RIFF/WAVE file from its `fmt ` byte rate and `data` chunk size.
pub(crate) fn wav_duration(bytes: &[u8]) -> Option<f64> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        let slice = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
    };
    let mut byte_rate = None;
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32_at(at + 4)? as usize;
        let body = at + 8;
        match id {
            b"fmt " => byte_rate = u32_at(body + 8),
            b"data" => {
                let available = bytes.len() - body;
                let size = if size == 0 || size == u32::MAX as usize {
                    available
                } else {
                    size.min(available)
                };
                let rate = byte_rate.filter(|r| *r > 0)?;
                return Some(size as f64 / f64::from(rate));
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = body.checked_add(size)?.checked_add(size % 2)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(sample_rate: u32, channels: u16, samples: usize) -> Vec<u8> {
        let data_len = samples * 2 * usize::from(channels);
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&sample_rate.to_le_bytes());
        out.extend_from_slice(&(sample_rate * 2 * u32::from(channels)).to_le_bytes());
        out.extend_from_slice(&(2 * channels).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(b"abc\0");
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data_len as u32).to_le_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }

    #[test]
    fn mp3_duration_comes_from_the_first_frame() {
        // ID3v2 tag of 5 bytes, then MPEG-2 Layer III frames at 32 kbit/s: 4000 bytes a second.
        let mut bytes = b"ID3\x04\x00\x00\x00\x00\x00\x05hello".to_vec();
        let mut frame = vec![0u8; 8000];
        frame[0] = 0xff;
        frame[1] = 0xf3;
        frame[2] = 0x40;
        bytes.extend(frame);
        let duration = mp3_duration(&bytes).expect("duration");
        assert!((duration - 2.0).abs() < 1e-9, "{duration}");
        assert_eq!(mp3_duration(b"RIFF...."), None);
    }

    #[test]
    fn wav_duration_reads_header_and_skips_odd_chunks() {
        let bytes = wav(8000, 2, 8000 * 3 / 2);
        let duration = wav_duration(&bytes).expect("duration");
        assert!((duration - 1.5).abs() < 1e-9, "{duration}");
        assert_eq!(wav_duration(b"ID3\x03not a wav at all"), None);
    }

    #[test]
    fn gradient_depends_on_prompt() {
        let a = gradient("a cat", 8, 4);
        let b = gradient("a dog", 8, 4);
        assert_eq!(a.dimensions(), (8, 4));
        assert_ne!(a.as_raw(), b.as_raw());
        assert_eq!(a.as_raw(), gradient("a cat", 8, 4).as_raw());
    }

    #[test]
    fn data_url_round_trip() {
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"xyz")
        );
        assert_eq!(data_url_bytes(&url).expect("decodes"), b"xyz");
        assert!(data_url_bytes("https://example.com/a.png").is_err());
        assert!(data_url_bytes("data:image/png,xyz").is_err());
    }
}
