//! Recognises media from its bytes, never from a file name or a client's content type, and
//! checks what can be checked cheaply before any decode: image dimensions from the header
//! (decompression bombs) and whether a JPEG or PNG reached its end marker (truncation).

use std::io::Cursor;

use image::ImageFormat;
use mediamesh_core::{Error, ErrorCode, MediaKind, Result};

/// What the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sniffed {
    pub kind: MediaKind,
    pub content_type: &'static str,
    pub format: &'static str,
}

/// Recognises the format from the first bytes of a file (64 KiB is plenty).
pub fn sniff(head: &[u8]) -> Option<Sniffed> {
    let image = |format: &'static str, content_type: &'static str| Sniffed {
        kind: MediaKind::Image,
        content_type,
        format,
    };
    if let Ok(format) = image::guess_format(head) {
        return match format {
            ImageFormat::Jpeg => Some(image("jpeg", "image/jpeg")),
            ImageFormat::Png => Some(image("png", "image/png")),
            ImageFormat::WebP => Some(image("webp", "image/webp")),
            ImageFormat::Gif => Some(image("gif", "image/gif")),
            ImageFormat::Tiff => Some(image("tiff", "image/tiff")),
            _ => None,
        };
    }
    let audio = |format: &'static str, content_type: &'static str| Sniffed {
        kind: MediaKind::Audio,
        content_type,
        format,
    };
    let video = |format: &'static str, content_type: &'static str| Sniffed {
        kind: MediaKind::Video,
        content_type,
        format,
    };
    if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        return Some(audio("wav", "audio/wav"));
    }
    if head.starts_with(b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        return Some(audio("mp3", "audio/mpeg"));
    }
    if head.starts_with(b"fLaC") {
        return Some(audio("flac", "audio/flac"));
    }
    if head.starts_with(b"OggS") {
        return Some(audio("ogg", "audio/ogg"));
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        let brand = &head[8..12];
        if brand == b"M4A " || brand == b"M4B " {
            return Some(audio("m4a", "audio/mp4"));
        }
        if brand == b"qt  " {
            return Some(video("mov", "video/quicktime"));
        }
        return Some(video("mp4", "video/mp4"));
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(video("webm", "video/webm"));
    }
    None
}

/// Width and height from an image's header, without decoding pixels. `head` must hold the
/// header (for JPEG everything up to the frame header: the first 1 MiB is enough for files
/// cameras and phones write).
pub fn image_dimensions(head: &[u8]) -> Result<(u32, u32)> {
    image::ImageReader::new(Cursor::new(head))
        .with_guessed_format()
        .map_err(|e| Error::bad_input(format!("cannot read image header: {e}")))?
        .into_dimensions()
        .map_err(|e| Error::bad_input(format!("cannot read image header: {e}")))
}

/// Refuses an image whose header claims more than `max_pixels`, before anything decodes it.
pub fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(Error::bad_input(format!("image header claims {width}x{height} pixels")));
    }
    if pixels > max_pixels {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("image is {width}x{height}, over the {max_pixels} pixel limit"),
        ));
    }
    Ok(())
}

/// Whether a file of this format visibly stops before its end: a JPEG without an end-of-image
/// marker (FF D9) or a PNG without its IEND chunk in the last bytes. `tail` is the end of the
/// file (64 KiB is plenty; trailing bytes some cameras append after the marker are allowed).
pub fn is_truncated(format: &str, tail: &[u8]) -> bool {
    match format {
        "jpeg" => !tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        "png" => !tail.windows(4).any(|w| w == b"IEND"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_formats_by_bytes() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).map(|s| s.format), Some("jpeg"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n....").map(|s| s.kind), Some(MediaKind::Image));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt ").map(|s| s.format), Some("wav"));
        assert_eq!(sniff(b"OggS\0\x02").map(|s| s.kind), Some(MediaKind::Audio));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom").map(|s| s.kind), Some(MediaKind::Video));
        assert_eq!(sniff(b"hello world, this is text"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn truncation_and_pixel_limits() {
        assert!(is_truncated("jpeg", &[0x12, 0x34, 0xFF]));
        assert!(!is_truncated("jpeg", &[0x12, 0xFF, 0xD9]));
        assert!(!is_truncated("webp", &[]));
        assert_eq!(
            check_pixels(100_000, 100_000, 100_000_000).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert!(check_pixels(6028, 3391, 100_000_000).is_ok());
    }
}
