//! Format sniffing and header-level facts, read without decoding pixels.
//!
//! JPEG headers are parsed here by walking the marker segments (SOF, APP1 EXIF, APP2 ICC, APP14
//! Adobe), which is cheap and never allocates more than the metadata it keeps. For PNG, GIF,
//! WebP and BMP the dimensions are peeked from the fixed header bytes first, so a bomb that only
//! claims huge dimensions is refused before any decoder allocates; the other facts come from the
//! `image` crate's decoder opened on the header.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind};
use image::{ImageDecoder, ImageFormat, ImageReader};
use mediamesh_core::{Error, ErrorCode};

use crate::Limits;

/// The input formats the pipeline decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FormatInfo {
    pub format: ImageFormat,
    pub name: &'static str,
    pub content_type: &'static str,
}

const FORMATS: [FormatInfo; 6] = [
    FormatInfo {
        format: ImageFormat::Jpeg,
        name: "jpeg",
        content_type: "image/jpeg",
    },
    FormatInfo {
        format: ImageFormat::Png,
        name: "png",
        content_type: "image/png",
    },
    FormatInfo {
        format: ImageFormat::WebP,
        name: "webp",
        content_type: "image/webp",
    },
    FormatInfo {
        format: ImageFormat::Gif,
        name: "gif",
        content_type: "image/gif",
    },
    FormatInfo {
        format: ImageFormat::Tiff,
        name: "tiff",
        content_type: "image/tiff",
    },
    FormatInfo {
        format: ImageFormat::Bmp,
        name: "bmp",
        content_type: "image/bmp",
    },
];

/// Colour model of the stored pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColorModel {
    Rgb,
    Gray,
    /// CMYK JPEG; `inverted` when an Adobe APP14 marker says it was written by Adobe software
    /// (which stores 255 for "no ink").
    Cmyk {
        inverted: bool,
    },
    /// YCCK JPEG (always Adobe, always inverted once decoded to CMYK).
    Ycck,
}

impl ColorModel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rgb => "srgb",
            Self::Gray => "grayscale",
            Self::Cmyk { .. } => "cmyk",
            Self::Ycck => "ycck",
        }
    }
}

/// What a header tells.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub format: FormatInfo,
    pub width: u32,
    pub height: u32,
    pub has_alpha: bool,
    pub progressive: bool,
    pub color: ColorModel,
    pub bit_depth: u8,
    pub icc: Option<Vec<u8>>,
    /// Raw EXIF (a TIFF structure) found in a JPEG APP1 segment.
    pub jpeg_exif: Option<Vec<u8>>,
}

/// Sniffs the format from the bytes (never from a name).
pub(crate) fn sniff(data: &[u8]) -> Result<FormatInfo, Error> {
    if data.is_empty() {
        return Err(Error::bad_input("image data is empty"));
    }
    if let Some(name) = other_image_format(data) {
        return Err(Error::unsupported(format!(
            "{name} images are not supported: no decoder for them is built in"
        )));
    }
    let Ok(format) = image::guess_format(data) else {
        return Err(Error::bad_input("data is not a recognised image format"));
    };
    FORMATS.iter().find(|f| f.format == format).copied().ok_or_else(|| {
        Error::unsupported(format!(
            "{} images are not supported",
            format!("{format:?}").to_lowercase()
        ))
    })
}

/// Image formats that are recognised but not decoded (HEIC/AVIF need a HEVC or AV1 decoder,
/// none is built in), reported as unsupported rather than as garbage.
fn other_image_format(data: &[u8]) -> Option<&'static str> {
    if data.get(4..8) == Some(b"ftyp") {
        return match data.get(8..12)? {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => Some("HEIC"),
            b"avif" | b"avis" => Some("AVIF"),
            _ => None,
        };
    }
    if data.starts_with(&[0xFF, 0x0A]) || data.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    None
}

/// Refuses 0×0 images and images over the pixel limit.
pub(crate) fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(Error::bad_input(format!("image is {width}x{height}, it has no pixels")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "image is {width}x{height} = {} MP, over the limit of {} MP",
                pixels / 1_000_000,
                limits.max_pixels / 1_000_000
            ),
        ));
    }
    Ok(())
}

/// Reads the header: format, dimensions (checked against the limits), colour facts, ICC.
pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<Header, Error> {
    let format = sniff(data)?;
    if format.format == ImageFormat::Jpeg {
        let header = parse_jpeg(data)?;
        check_pixels(header.width, header.height, limits)?;
        return Ok(header);
    }
    if format.format == ImageFormat::Bmp && peek_dimensions(data, format.format).is_none() {
        return Err(Error::bad_input("BMP is corrupt: unknown bitmap header"));
    }
    if let Some((width, height)) = peek_dimensions(data, format.format) {
        check_pixels(width, height, limits)?;
    }
    let mut decoder = open_decoder(data, format, limits)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    let color = decoder.color_type();
    let icc = guard(format, || decoder.icc_profile())?.ok().flatten();
    let channels = u32::from(color.channel_count().max(1));
    let bit_depth = u8::try_from(u32::from(color.bits_per_pixel()) / channels).unwrap_or(8);
    let gray = matches!(
        color,
        image::ColorType::L8 | image::ColorType::L16 | image::ColorType::La8 | image::ColorType::La16
    );
    Ok(Header {
        format,
        width,
        height,
        has_alpha: color.has_alpha(),
        progressive: format.format == ImageFormat::Png && data.get(28) == Some(&1),
        color: if gray { ColorModel::Gray } else { ColorModel::Rgb },
        bit_depth,
        icc,
        jpeg_exif: None,
    })
}

/// Opens an `image` decoder on the header only. Nothing but headers and metadata is read.
pub(crate) fn open_decoder<'a>(
    data: &'a [u8],
    format: FormatInfo,
    limits: &Limits,
) -> Result<Box<dyn ImageDecoder + 'a>, Error> {
    let mut reader = ImageReader::with_format(Cursor::new(data), format.format);
    // No dimension limits yet (those are checked against the header with a clear message), but
    // bound whatever the header parsing itself allocates.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(header_limits);
    let decoder = guard(format, || reader.into_decoder())?.map_err(|e| map_image_error(e, format, "read"))?;
    Ok(Box::new(decoder))
}

/// The dimensions the fixed header bytes of a PNG, GIF, WebP or BMP claim, read before any
/// decoder runs (some decoders allocate for the canvas as soon as they are opened).
fn peek_dimensions(data: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be32 = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let le24 = |at: usize| {
        data.get(at..at + 3)
            .map(|b| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
    };
    let le32 = |at: usize| {
        data.get(at..at + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match format {
        ImageFormat::Png => {
            if data.get(12..16)? != b"IHDR" {
                return None;
            }
            Some((be32(16)?, be32(20)?))
        }
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        ImageFormat::WebP => match data.get(12..16)? {
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            b"VP8L" => {
                let b = data.get(21..25)?;
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8 " => Some((le16(26)? & 0x3FFF, le16(28)? & 0x3FFF)),
            _ => None,
        },
        ImageFormat::Bmp => {
            // Only a known DIB header (core, info, v2..v5) carries the dimensions there.
            let dib = le32(14)?;
            if ![12, 40, 52, 56, 64, 108, 124].contains(&dib) {
                return None;
            }
            if dib == 12 {
                return Some((le16(18)?, le16(20)?));
            }
            let width = le32(18)?.unsigned_abs();
            let height = le32(22)?.unsigned_abs();
            Some((width, height))
        }
        _ => None,
    }
}

/// Maps a decoder error to a product error. `action` is "read" or "decode".
pub(crate) fn map_image_error(err: ImageError, format: FormatInfo, action: &str) -> Error {
    let name = format.name.to_uppercase();
    match err {
        ImageError::Limits(limit) => match limit.kind() {
            LimitErrorKind::DimensionError => {
                Error::new(ErrorCode::TooLarge, format!("{name} image is over the size limit"))
            }
            LimitErrorKind::InsufficientMemory => Error::new(
                ErrorCode::TooLarge,
                format!("{name} image needs more memory than allowed"),
            ),
            _ => Error::new(ErrorCode::TooLarge, format!("{name} image is over a limit")),
        },
        ImageError::Unsupported(e) => {
            Error::unsupported(format!("unsupported {name} image: {}", lower_first(&e.to_string())))
        }
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::bad_input(format!("{name} is truncated: the data ends early"))
        }
        ImageError::Decoding(e) => Error::bad_input(format!(
            "could not {action} {name} image: {}",
            lower_first(&e.to_string())
        )),
        ImageError::IoError(e) => Error::bad_input(format!(
            "could not {action} {name} image: {}",
            lower_first(&e.to_string())
        )),
        ImageError::Parameter(e) => Error::bad_input(format!(
            "could not {action} {name} image: {}",
            lower_first(&e.to_string())
        )),
        ImageError::Encoding(e) => Error::internal(format!("image encoding failed: {e}")),
    }
}

pub(crate) fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Runs a decoder step, turning a panic inside a decoder (a bug triggered by hostile input)
/// into an error instead of taking the service down.
pub(crate) fn guard<T>(format: FormatInfo, step: impl FnOnce() -> T) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|_| {
        tracing::warn!(format = format.name, "image decoder panicked");
        Error::bad_input(format!(
            "corrupt {} image: the decoder failed",
            format.name.to_uppercase()
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// JPEG

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;

/// Walks the JPEG marker segments up to the first start-of-scan and collects the frame header,
/// EXIF, ICC and Adobe facts.
fn parse_jpeg(data: &[u8]) -> Result<Header, Error> {
    let truncated = || Error::bad_input("JPEG is truncated: the header ends before the image data");
    if data.len() < 4 || data[0] != 0xFF || data[1] != SOI {
        return Err(Error::bad_input("JPEG is corrupt: no start-of-image marker"));
    }
    let mut pos = 2;
    let mut frame: Option<(u8, u32, u32, u8, bool)> = None;
    let mut adobe_transform: Option<u8> = None;
    let mut exif: Option<Vec<u8>> = None;
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    loop {
        let Some(&byte) = data.get(pos) else {
            return Err(truncated());
        };
        if byte != 0xFF {
            return Err(Error::bad_input(format!(
                "JPEG is corrupt: expected a marker at byte {pos}, found garbage"
            )));
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(truncated());
        };
        pos += 1;
        match marker {
            EOI => return Err(Error::bad_input("JPEG is corrupt: it ends before any image data")),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len_bytes = data.get(pos..pos + 2).ok_or_else(truncated)?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(Error::bad_input("JPEG is corrupt: a marker segment has a bad length"));
        }
        let payload = data.get(pos + 2..pos + len).ok_or_else(truncated)?;
        pos += len;
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if payload.len() < 6 {
                    return Err(Error::bad_input("JPEG is corrupt: the frame header is too short"));
                }
                let precision = payload[0];
                let height = u32::from(u16::from_be_bytes([payload[1], payload[2]]));
                let width = u32::from(u16::from_be_bytes([payload[3], payload[4]]));
                let components = payload[5];
                let progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
                frame.get_or_insert((precision, width, height, components, progressive));
            }
            0xE1 if payload.starts_with(b"Exif\0\0") && exif.is_none() => {
                exif = Some(payload[6..].to_vec());
            }
            0xE2 if payload.starts_with(b"ICC_PROFILE\0") && payload.len() > 14 => {
                icc_chunks.push((payload[12], &payload[14..]));
            }
            0xEE if payload.starts_with(b"Adobe") && payload.len() >= 12 => {
                adobe_transform = Some(payload[11]);
            }
            SOS => break,
            _ => {}
        }
    }
    let Some((precision, width, height, components, progressive)) = frame else {
        return Err(Error::bad_input(
            "JPEG is corrupt: no frame header before the image data",
        ));
    };
    let color = match components {
        1 => ColorModel::Gray,
        3 => ColorModel::Rgb,
        4 if adobe_transform == Some(2) => ColorModel::Ycck,
        4 => ColorModel::Cmyk {
            inverted: adobe_transform.is_some(),
        },
        n => {
            return Err(Error::unsupported(format!(
                "JPEG with {n} colour components is not supported"
            )));
        }
    };
    icc_chunks.sort_by_key(|(seq, _)| *seq);
    let icc =
        (!icc_chunks.is_empty()).then(|| icc_chunks.iter().flat_map(|(_, chunk)| chunk.iter().copied()).collect());
    Ok(Header {
        format: FORMATS[0],
        width,
        height,
        has_alpha: false,
        progressive,
        color,
        bit_depth: precision,
        icc,
        jpeg_exif: exif,
    })
}

/// Whether a JPEG stream reaches its end-of-image marker. Walks the marker segments (so an
/// EOI inside an embedded EXIF thumbnail does not count) and the entropy-coded data after each
/// start-of-scan, where a 0xFF byte is always followed by 0x00 or a restart marker unless it
/// starts a real marker. libjpeg fills missing data with grey instead of failing, so a truncated
/// JPEG is caught here.
pub(crate) fn jpeg_is_complete(data: &[u8]) -> bool {
    if data.len() < 4 || data[0] != 0xFF || data[1] != SOI {
        return false;
    }
    let mut pos = 2;
    let mut seen_scan = false;
    loop {
        // At a marker: 0xFF, optional fill bytes, then the marker code.
        if pos >= data.len() || data[pos] != 0xFF {
            return false;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return false;
        };
        pos += 1;
        match marker {
            EOI => return seen_scan,
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len_bytes) = data.get(pos..pos + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 || pos + len > data.len() {
            return false;
        }
        pos += len;
        if marker != SOS {
            continue;
        }
        seen_scan = true;
        // Fast path: in entropy-coded data 0xFF is never followed by 0xD9, so a stream that ends
        // with EOI after its first scan is complete (a cut exactly after an FF D9 pair inside a
        // later table segment is the only miss). Otherwise walk it all: it may have a trailer.
        if data.ends_with(&[0xFF, EOI]) {
            return true;
        }
        // Entropy-coded data: skip to the next real marker.
        loop {
            let Some(offset) = data[pos..].iter().position(|&b| b == 0xFF) else {
                return false;
            };
            pos += offset;
            let Some(&next) = data.get(pos + 1) else {
                return false;
            };
            match next {
                // Stuffed 0xFF or restart marker: still entropy-coded data.
                0x00 | 0xD0..=0xD7 => pos += 2,
                // A real marker (or fill bytes before one): back to the segment walk.
                _ => break,
            }
        }
    }
}

/// One marker segment of a JPEG: its code, where its marker starts, its payload, and where it
/// ends (for a start of scan: after its entropy-coded data).
struct Segment<'a> {
    marker: u8,
    start: usize,
    payload: &'a [u8],
    end: usize,
}

/// The marker segments of a JPEG after its start-of-image, up to the end-of-image marker or the
/// first bytes that are not a segment.
fn segments(data: &[u8]) -> impl Iterator<Item = Segment<'_>> {
    let mut pos = 2;
    std::iter::from_fn(move || {
        loop {
            if *data.get(pos)? != 0xFF {
                return None;
            }
            let start = pos;
            while data.get(pos) == Some(&0xFF) {
                pos += 1;
            }
            let marker = *data.get(pos)?;
            pos += 1;
            if marker == EOI {
                return None;
            }
            if matches!(marker, 0x01 | 0xD0..=0xD7) {
                continue;
            }
            let len_bytes = data.get(pos..pos + 2)?;
            let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
            let payload = data.get(pos + 2..pos + len)?;
            pos += len;
            if marker == SOS {
                // The entropy-coded data runs to the next real marker.
                loop {
                    pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
                    match *data.get(pos + 1)? {
                        0x00 | 0xD0..=0xD7 => pos += 2,
                        _ => break,
                    }
                }
            }
            return Some(Segment {
                marker,
                start,
                payload,
                end: pos,
            });
        }
    })
}

/// A start-of-scan header: its components, spectral band and successive approximation bits.
struct Scan {
    components: Vec<u8>,
    ss: u8,
    se: u8,
    ah: u8,
    al: u8,
}

impl Scan {
    fn parse(payload: &[u8]) -> Option<Scan> {
        let count = usize::from(*payload.first()?);
        let components = (0..count)
            .map(|i| payload.get(1 + 2 * i).copied())
            .collect::<Option<_>>()?;
        let spectral = payload.get(1 + 2 * count..4 + 2 * count)?;
        Some(Scan {
            components,
            ss: spectral[0],
            se: spectral[1],
            ah: spectral[2] >> 4,
            al: spectral[2] & 0x0F,
        })
    }
}

/// `data[..at]` with an end-of-image marker appended.
fn cut(data: &[u8], at: usize) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(at + 2);
    prefix.extend_from_slice(&data[..at]);
    prefix.extend_from_slice(&[0xFF, EOI]);
    prefix
}

/// For a progressive JPEG whose first scans carry the DC coefficients of every component, the
/// stream cut after those scans (with an end-of-image marker appended). Decoded at 1/8 scale it
/// gives the same picture as the whole file (the 1/8 scale uses only the DC coefficients), at a
/// fraction of the entropy decoding. `None` when the file does not start that way.
pub(crate) fn jpeg_dc_prefix(data: &[u8]) -> Option<Vec<u8>> {
    let mut components: Option<u8> = None;
    let mut covered: Vec<u8> = Vec::new();
    for segment in segments(data) {
        match segment.marker {
            0xC2 | 0xC6 | 0xCA | 0xCE => components = Some(*segment.payload.get(5)?),
            SOS => {
                let scan = Scan::parse(segment.payload)?;
                if scan.ss != 0 || scan.se != 0 || scan.ah != 0 {
                    return None;
                }
                covered.extend(scan.components);
                covered.sort_unstable();
                covered.dedup();
                if covered.len() >= usize::from(components?) {
                    return Some(cut(data, segment.end));
                }
            }
            _ => {}
        }
    }
    None
}

/// The largest quantization step for which [`jpeg_without_last_bit`] drops the last bit.
pub(crate) const LAST_BIT_MAX_STEP: u16 = 2;

/// For a progressive JPEG of near-lossless quality (no quantization step above
/// [`LAST_BIT_MAX_STEP`]), the stream without its trailing scans that only refine the lowest bit
/// of coefficients (successive approximation down to bit 0), with an end-of-image marker
/// appended. Those scans are a third of such a file and the slowest part of its decoding; what
/// they add is at most one quantization step (≤ 2 of 255 levels per coefficient, less after a
/// reduced decode averages it), far below what a derivative downscaled and encoded at q85
/// keeps. `None` when the file is not like that.
pub(crate) fn jpeg_without_last_bit(data: &[u8]) -> Option<Vec<u8>> {
    let mut progressive = false;
    let mut refinements_from = None;
    for segment in segments(data) {
        match segment.marker {
            0xC2 | 0xC6 | 0xCA | 0xCE => progressive = true,
            DQT if !steps_at_most(segment.payload, LAST_BIT_MAX_STEP)? => return None,
            SOS => {
                let scan = Scan::parse(segment.payload)?;
                if scan.ah > 0 && scan.al == 0 {
                    refinements_from.get_or_insert(segment.start);
                } else {
                    refinements_from = None;
                }
            }
            _ => {}
        }
    }
    if !progressive {
        return None;
    }
    refinements_from.map(|at| cut(data, at))
}

/// Whether every quantization step in a DQT payload is at most `max`; `None` when malformed.
fn steps_at_most(payload: &[u8], max: u16) -> Option<bool> {
    let mut rest = payload;
    while let Some((&spec, tail)) = rest.split_first() {
        let wide = spec >> 4 == 1;
        let size = if wide { 128 } else { 64 };
        let table = tail.get(..size)?;
        let fine = if wide {
            table.chunks_exact(2).all(|b| u16::from_be_bytes([b[0], b[1]]) <= max)
        } else {
            table.iter().all(|&b| u16::from(b) <= max)
        };
        if !fine {
            return Some(false);
        }
        rest = &tail[size..];
    }
    Some(true)
}
