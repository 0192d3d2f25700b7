//! Image probing and thumbnail derivatives.
//!
//! Two entry points:
//! - [`probe`] reads the format, the dimensions (from the header only, no pixel decode) and an
//!   EXIF summary;
//! - [`thumbnails`] decodes once, applies the EXIF orientation, flattens alpha onto white and
//!   makes JPEG derivatives (see [`STANDARD_THUMBS`]).
//!
//! Decompression bombs are refused before any pixel is decoded: the dimensions come from the
//! header and are checked against [`Limits::max_pixels`], and the decoder gets `image::Limits`
//! derived from [`Limits`].

use std::io::Cursor;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ExtendedColorType, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use mediamesh_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};

/// JPEG quality of every derivative.
const JPEG_QUALITY: u8 = 85;

/// A derivative is made from an already made, larger derivative (instead of the full source)
/// only if that intermediate is still at least this many times larger than the output, so the
/// result is as sharp as a direct resize.
const MIN_INTERMEDIATE_RATIO: f64 = 2.0;

/// Share of the progress reported once the source is decoded; the derivatives share the rest.
const DECODED_PROGRESS: f32 = 0.6;

/// Resource limits for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted width × height, checked on the header before any decode.
    pub max_pixels: u64,
    /// Largest memory the decoder and the pipeline may need for pixel buffers.
    pub max_alloc_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_alloc_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// The few EXIF fields the product cares about.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExifSummary {
    /// EXIF orientation 1..=8; 0 when absent or invalid.
    pub orientation: u32,
    pub camera_make: Option<String>,
    pub camera_model: Option<String>,
    /// `DateTimeOriginal` (or `DateTime`) as `YYYY-MM-DDTHH:MM:SS`, with the offset when the
    /// file records one (`+02:00`).
    pub taken_at: Option<String>,
}

/// What [`probe`] finds out without decoding pixels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeInfo {
    /// `jpeg`, `png`, `webp`, `gif` or `tiff`.
    pub format: String,
    pub content_type: String,
    /// Dimensions as stored.
    pub width: u32,
    pub height: u32,
    /// Dimensions as displayed: swapped for EXIF orientations 5..=8.
    pub display_width: u32,
    pub display_height: u32,
    pub exif: ExifSummary,
    pub has_alpha: bool,
}

/// How a derivative fits its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Scale to cover the box, then center-crop to it.
    Cover,
    /// Scale to fit inside the box, keeping the aspect ratio.
    Inside,
}

/// One derivative to make. Sources are never enlarged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbSpec {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
}

/// The pipeline's three derivatives.
pub const STANDARD_THUMBS: [ThumbSpec; 3] = [
    ThumbSpec {
        name: "thumb",
        width: 150,
        height: 150,
        fit: Fit::Cover,
    },
    ThumbSpec {
        name: "medium",
        width: 800,
        height: 600,
        fit: Fit::Inside,
    },
    ThumbSpec {
        name: "large",
        width: 1920,
        height: 1080,
        fit: Fit::Inside,
    },
];

/// One made derivative: a baseline JPEG, RGB8.
#[derive(Debug, Clone)]
pub struct Derivative {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub jpeg: Vec<u8>,
}

/// Reads format and dimensions from the header only (no pixel decode) plus the EXIF summary.
///
/// Errors: `BadInput` for empty, unknown or corrupt data; `Unsupported` for a recognised format
/// this service does not decode; `TooLarge` for an image over `limits.max_pixels`.
pub fn probe(data: &[u8], limits: &Limits) -> Result<ProbeInfo, Error> {
    let header = read_header(data, limits)?;
    check_complete(data, header.format)?;
    let exif = read_exif(data);
    let (display_width, display_height) = if swaps_axes(exif.orientation) {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    Ok(ProbeInfo {
        format: header.format.name.to_owned(),
        content_type: header.format.content_type.to_owned(),
        width: header.width,
        height: header.height,
        display_width,
        display_height,
        exif,
        has_alpha: header.has_alpha,
    })
}

/// Decodes once, applies the EXIF orientation, flattens alpha onto white and makes one JPEG
/// (quality 85, RGB8) per spec, in the order of `specs`.
///
/// `progress` gets values in `0..=1`: once after the decode, then after each derivative (the
/// last call is `1.0`).
///
/// Errors: as [`probe`], plus `BadInput` for truncated or corrupt pixel data and `TooLarge` when
/// the decode would need more than `limits.max_alloc_bytes`.
pub fn thumbnails(
    data: &[u8],
    specs: &[ThumbSpec],
    limits: &Limits,
    progress: &mut dyn FnMut(f32),
) -> Result<Vec<Derivative>, Error> {
    for spec in specs {
        if spec.width == 0 || spec.height == 0 {
            return Err(Error::bad_input(format!("derivative {:?} has an empty box", spec.name)));
        }
    }
    let (source, orientation) = decode(data, limits)?;
    progress(DECODED_PROGRESS);

    // Plans are made for the upright (displayed) image, then mapped back onto the stored pixels:
    // resizing happens on the stored image and only the small outputs are turned upright.
    let swap = swaps_axes(orientation);
    let (display_w, display_h) = if swap {
        (source.height(), source.width())
    } else {
        (source.width(), source.height())
    };
    let plans: Vec<Plan> = specs
        .iter()
        .map(|spec| {
            let plan = Plan::new(spec, display_w, display_h);
            if swap { plan.transposed() } else { plan }
        })
        .collect();
    // Largest outputs first, so smaller ones can be made from them.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(plans[i].out_w) * u64::from(plans[i].out_h)));

    let mut resizer = Resizer::new();
    // Full-frame downscales of the source that later derivatives may start from.
    let mut intermediates: Vec<RgbImage> = Vec::new();
    let mut made: Vec<Option<Derivative>> = vec![None; plans.len()];
    for (done, &index) in order.iter().enumerate() {
        let plan = &plans[index];
        let pixels = render(&mut resizer, &source, &intermediates, plan)?;
        let upright = orient(&pixels, orientation)?;
        let jpeg = encode_jpeg(upright.as_ref().unwrap_or(&pixels))?;
        let (width, height) = upright.as_ref().unwrap_or(&pixels).dimensions();
        made[index] = Some(Derivative {
            name: specs[index].name.to_owned(),
            width,
            height,
            jpeg,
        });
        if plan.is_full_frame() && plan.resamples() {
            intermediates.push(pixels);
        }
        let value = if done + 1 == order.len() {
            1.0
        } else {
            let fraction = (done + 1) as f32 / order.len() as f32;
            (DECODED_PROGRESS + (1.0 - DECODED_PROGRESS) * fraction).min(1.0)
        };
        progress(value);
    }
    if specs.is_empty() {
        progress(1.0);
    }
    made.into_iter()
        .map(|d| d.ok_or_else(|| Error::internal("derivative was not made")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Formats and headers

#[derive(Debug, Clone, Copy)]
struct FormatInfo {
    format: ImageFormat,
    name: &'static str,
    content_type: &'static str,
}

const FORMATS: [FormatInfo; 5] = [
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
];

struct Header {
    format: FormatInfo,
    width: u32,
    height: u32,
    has_alpha: bool,
}

/// Sniffs the format from the bytes (never from a name).
fn sniff(data: &[u8]) -> Result<FormatInfo, Error> {
    if data.is_empty() {
        return Err(Error::bad_input("image data is empty"));
    }
    let Ok(format) = image::guess_format(data) else {
        return Err(match other_image_format(data) {
            Some(name) => Error::unsupported(format!("{name} images are not supported")),
            None => Error::bad_input("data is not a recognised image format"),
        });
    };
    FORMATS.iter().find(|f| f.format == format).copied().ok_or_else(|| {
        Error::unsupported(format!(
            "{} images are not supported",
            format!("{format:?}").to_lowercase()
        ))
    })
}

/// Image formats the image crate does not even recognise, so they are reported as unsupported
/// rather than as garbage.
fn other_image_format(data: &[u8]) -> Option<&'static str> {
    if data.get(4..8) == Some(b"ftyp") {
        return match data.get(8..12)? {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => Some("heic"),
            b"avif" | b"avis" => Some("avif"),
            _ => None,
        };
    }
    if data.starts_with(&[0xFF, 0x0A]) || data.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("jpeg xl");
    }
    None
}

/// Opens a decoder on the header only. Nothing but headers and metadata is read.
fn open_decoder<'a>(data: &'a [u8], format: FormatInfo, limits: &Limits) -> Result<impl ImageDecoder + 'a, Error> {
    let mut reader = ImageReader::with_format(Cursor::new(data), format.format);
    // No dimension limits yet (those are checked against the header with a clear message), but
    // bound whatever the header parsing itself allocates.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(header_limits);
    guard(format, || reader.into_decoder())?.map_err(|e| map_image_error(e, format, "read"))
}

fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(Error::bad_input(format!("image is {width}x{height}, it has no pixels")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("image is {width}x{height}, over the {} pixel limit", limits.max_pixels),
        ));
    }
    Ok(())
}

/// The dimensions a PNG's IHDR chunk claims. The image crate's PNG decoder reads every chunk
/// up to the first IDAT before it tells the dimensions, so a header-only bomb (IHDR + IEND)
/// would otherwise be reported as corrupt rather than too large.
fn peek_png_dimensions(data: &[u8]) -> Option<(u32, u32)> {
    let ihdr = data.get(8..24)?;
    if &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    Some((width, height))
}

/// Sniffs the format, refuses oversized images, and opens a decoder on the header.
fn open_checked<'a>(data: &'a [u8], limits: &Limits) -> Result<(FormatInfo, impl ImageDecoder + 'a), Error> {
    let format = sniff(data)?;
    if format.format == ImageFormat::Png
        && let Some((width, height)) = peek_png_dimensions(data)
    {
        check_pixels(width, height, limits)?;
    }
    let decoder = open_decoder(data, format, limits)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    Ok((format, decoder))
}

fn read_header(data: &[u8], limits: &Limits) -> Result<Header, Error> {
    let (format, decoder) = open_checked(data, limits)?;
    let (width, height) = decoder.dimensions();
    Ok(Header {
        format,
        width,
        height,
        has_alpha: decoder.color_type().has_alpha(),
    })
}

/// Maps a decoder error to a product error. `action` is "read" or "decode".
fn map_image_error(err: ImageError, format: FormatInfo, action: &str) -> Error {
    let name = format.name;
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
        ImageError::Decoding(e) => Error::bad_input(format!(
            "could not {action} {name} image: {}",
            lower_first(&e.to_string())
        )),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::bad_input(format!("{name} image data is truncated"))
        }
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

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// EXIF

fn read_exif(data: &[u8]) -> ExifSummary {
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    let parsed = reader
        .read_from_container(&mut Cursor::new(data))
        .or_else(|e| e.distill_partial_result(|_| {}));
    let Ok(exif) = parsed else {
        return ExifSummary::default();
    };
    let orientation = exif
        .get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(0);
    ExifSummary {
        orientation,
        camera_make: ascii_field(&exif, exif::Tag::Make),
        camera_model: ascii_field(&exif, exif::Tag::Model),
        taken_at: taken_at(&exif),
    }
}

fn ascii_field(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    let exif::Value::Ascii(parts) = &field.value else {
        return None;
    };
    let bytes = parts.first()?;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_owned())
}

fn taken_at(exif: &exif::Exif) -> Option<String> {
    let (time_tag, offset_tag) = if exif.get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY).is_some() {
        (exif::Tag::DateTimeOriginal, exif::Tag::OffsetTimeOriginal)
    } else {
        (exif::Tag::DateTime, exif::Tag::OffsetTime)
    };
    let field = exif.get_field(time_tag, exif::In::PRIMARY)?;
    let exif::Value::Ascii(parts) = &field.value else {
        return None;
    };
    let mut dt = exif::DateTime::from_ascii(parts.first()?).ok()?;
    if dt.year == 0 || dt.month == 0 || dt.day == 0 {
        return None;
    }
    if let Some(offset) = exif.get_field(offset_tag, exif::In::PRIMARY)
        && let exif::Value::Ascii(parts) = &offset.value
        && let Some(bytes) = parts.first()
    {
        // Ignored when malformed; the local time is still useful.
        let _ = dt.parse_offset(bytes);
    }
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    );
    if let Some(minutes) = dt.offset {
        let sign = if minutes < 0 { '-' } else { '+' };
        let minutes = minutes.unsigned_abs();
        text.push_str(&format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60));
    }
    Some(text)
}

/// EXIF orientations 5..=8 display the image transposed.
fn swaps_axes(orientation: u32) -> bool {
    (5..=8).contains(&orientation)
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes the image as stored, flattened onto white, as RGB8; returns it with its EXIF
/// orientation (0 when absent).
fn decode(data: &[u8], limits: &Limits) -> Result<(RgbImage, u32), Error> {
    let (format, mut decoder) = open_checked(data, limits)?;
    let (width, height) = decoder.dimensions();
    let orientation = read_exif(data).orientation;

    // Memory the pipeline needs at its peak: the decoded buffer and an RGB8 copy when the
    // decoder does not produce RGB8 (derivatives are small next to these).
    let pixels = u64::from(width) * u64::from(height);
    let decoded = decoder.total_bytes();
    let converted = if decoder.color_type() == image::ColorType::Rgb8 {
        0
    } else {
        pixels * 3
    };
    let needed = decoded.saturating_add(converted);
    if needed > limits.max_alloc_bytes {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "image needs {} MiB to process, over the {} MiB limit",
                needed.div_ceil(1024 * 1024),
                limits.max_alloc_bytes / (1024 * 1024)
            ),
        ));
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(width);
    decode_limits.max_image_height = Some(height);
    decode_limits.max_alloc = Some(limits.max_alloc_bytes);
    decoder
        .set_limits(decode_limits)
        .map_err(|e| map_image_error(e, format, "decode"))?;

    check_complete(data, format)?;

    let image =
        guard(format, || DynamicImage::from_decoder(decoder))?.map_err(|e| map_image_error(e, format, "decode"))?;
    Ok((flatten_to_rgb(image)?, orientation))
}

/// Runs a decoder step, turning a panic inside a decoder (a bug triggered by hostile input)
/// into an error instead of taking the service down.
fn guard<T>(format: FormatInfo, step: impl FnOnce() -> T) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|_| {
        tracing::warn!(format = format.name, "image decoder panicked");
        Error::bad_input(format!("corrupt {} image: the decoder failed", format.name))
    })
}

/// The image turned upright for an EXIF orientation, or `None` when it already is.
fn orient(image: &RgbImage, orientation: u32) -> Result<Option<RgbImage>, Error> {
    if !(2..=8).contains(&orientation) {
        return Ok(None);
    }
    let (sw, sh) = (image.width() as usize, image.height() as usize);
    let (dw, dh) = if swaps_axes(orientation) { (sh, sw) } else { (sw, sh) };
    let src = image.as_raw();
    let mut out = vec![0u8; src.len()];
    for (v, row) in out.chunks_exact_mut(dw * 3).enumerate() {
        for (u, px) in row.chunks_exact_mut(3).enumerate() {
            // The stored pixel shown at display position (u, v).
            let (x, y) = match orientation {
                2 => (sw - 1 - u, v),
                3 => (sw - 1 - u, sh - 1 - v),
                4 => (u, sh - 1 - v),
                5 => (v, u),
                6 => (v, sh - 1 - u),
                7 => (sw - 1 - v, sh - 1 - u),
                _ => (sw - 1 - v, u),
            };
            let at = (y * sw + x) * 3;
            px.copy_from_slice(&src[at..at + 3]);
        }
    }
    let (dw, dh) = (u32::try_from(dw), u32::try_from(dh));
    match (dw, dh) {
        (Ok(dw), Ok(dh)) => RgbImage::from_raw(dw, dh, out)
            .map(Some)
            .ok_or_else(|| Error::internal("orientation failed")),
        _ => Err(Error::internal("orientation failed")),
    }
}

/// RGB8, with any alpha composited onto white.
fn flatten_to_rgb(image: DynamicImage) -> Result<RgbImage, Error> {
    if !image.color().has_alpha() {
        return Ok(image.into_rgb8());
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let alpha = u32::from(px[3]);
        for &channel in &px[..3] {
            // c·a + 255·(255 − a), divided by 255 with rounding.
            let value = u32::from(channel) * alpha + 255 * (255 - alpha);
            out.push(((value + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(width, height, out).ok_or_else(|| Error::internal("flattening failed"))
}

/// The JPEG decoder is lenient: it fills missing data with grey instead of failing, so a
/// truncated JPEG is caught here, by its missing end-of-image marker. (The other decoders fail
/// on truncated data by themselves.)
fn check_complete(data: &[u8], format: FormatInfo) -> Result<(), Error> {
    if format.format == ImageFormat::Jpeg && !jpeg_is_complete(data) {
        return Err(Error::bad_input("jpeg image data is truncated"));
    }
    Ok(())
}

/// Whether a JPEG stream reaches its end-of-image marker. Walks the marker segments (so an
/// EOI inside an embedded EXIF thumbnail does not count) and the entropy-coded data after each
/// start-of-scan, where a 0xFF byte is always followed by 0x00 or a restart marker unless it
/// starts a real marker.
fn jpeg_is_complete(data: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
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

// ---------------------------------------------------------------------------------------------
// Resizing

/// What to cut from the upright source and at which size to output it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Region of the source, in source pixels (fractional for exact aspect ratios).
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    /// Source size, to map the region onto intermediates.
    src_w: u32,
    src_h: u32,
    out_w: u32,
    out_h: u32,
}

impl Plan {
    fn new(spec: &ThumbSpec, src_w: u32, src_h: u32) -> Self {
        let (box_w, box_h) = (u64::from(spec.width), u64::from(spec.height));
        let (sw, sh) = (u64::from(src_w), u64::from(src_h));
        let full = Plan {
            left: 0.0,
            top: 0.0,
            width: f64::from(src_w),
            height: f64::from(src_h),
            src_w,
            src_h,
            out_w: src_w,
            out_h: src_h,
        };
        match spec.fit {
            Fit::Inside => {
                if sw <= box_w && sh <= box_h {
                    return full;
                }
                // The tighter axis gets the box size; the other is rounded to nearest.
                let (out_w, out_h) = if sw * box_h >= sh * box_w {
                    (box_w, div_round(sh * box_w, sw).clamp(1, box_h))
                } else {
                    (div_round(sw * box_h, sh).clamp(1, box_w), box_h)
                };
                Plan {
                    out_w: to_u32(out_w),
                    out_h: to_u32(out_h),
                    ..full
                }
            }
            Fit::Cover => {
                if sw <= box_w || sh <= box_h {
                    // Covering would enlarge: cut the box (or what fits of it) unscaled.
                    let out_w = sw.min(box_w);
                    let out_h = sh.min(box_h);
                    return Plan {
                        left: ((sw - out_w) / 2) as f64,
                        top: ((sh - out_h) / 2) as f64,
                        width: out_w as f64,
                        height: out_h as f64,
                        out_w: to_u32(out_w),
                        out_h: to_u32(out_h),
                        ..full
                    };
                }
                // Largest centered region with the box's aspect ratio.
                let (width, height) = if sw * box_h >= sh * box_w {
                    (sh as f64 * box_w as f64 / box_h as f64, sh as f64)
                } else {
                    (sw as f64, sw as f64 * box_h as f64 / box_w as f64)
                };
                Plan {
                    left: (sw as f64 - width) / 2.0,
                    top: (sh as f64 - height) / 2.0,
                    width,
                    height,
                    out_w: spec.width,
                    out_h: spec.height,
                    ..full
                }
            }
        }
    }

    /// The same plan for the image transposed. Exact for every EXIF orientation (not only a
    /// transpose) because every region is centered: mirroring maps it onto itself.
    fn transposed(self) -> Self {
        Plan {
            left: self.top,
            top: self.left,
            width: self.height,
            height: self.width,
            src_w: self.src_h,
            src_h: self.src_w,
            out_w: self.out_h,
            out_h: self.out_w,
        }
    }

    fn is_full_frame(&self) -> bool {
        self.left == 0.0
            && self.top == 0.0
            && self.width == f64::from(self.src_w)
            && self.height == f64::from(self.src_h)
    }

    fn resamples(&self) -> bool {
        self.width != f64::from(self.out_w) || self.height != f64::from(self.out_h)
    }

    /// The region mapped onto an image of `w`×`h` that shows the whole source.
    fn region_in(&self, w: u32, h: u32) -> (f64, f64, f64, f64) {
        let sx = f64::from(w) / f64::from(self.src_w);
        let sy = f64::from(h) / f64::from(self.src_h);
        let (w, h) = (f64::from(w), f64::from(h));
        let left = (self.left * sx).clamp(0.0, w);
        let top = (self.top * sy).clamp(0.0, h);
        // Rounding must not push the region past the image edge.
        let right = ((self.left + self.width) * sx).clamp(left, w);
        let bottom = ((self.top + self.height) * sy).clamp(top, h);
        (left, top, right - left, bottom - top)
    }
}

fn div_round(numerator: u64, denominator: u64) -> u64 {
    (numerator * 2 + denominator) / (denominator * 2)
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Makes the pixels of one plan, from the smallest intermediate that is still large enough.
fn render(
    resizer: &mut Resizer,
    source: &RgbImage,
    intermediates: &[RgbImage],
    plan: &Plan,
) -> Result<RgbImage, Error> {
    let mut from = source;
    if plan.resamples() {
        for candidate in intermediates {
            let (_, _, w, h) = plan.region_in(candidate.width(), candidate.height());
            let large_enough = w >= MIN_INTERMEDIATE_RATIO * f64::from(plan.out_w)
                && h >= MIN_INTERMEDIATE_RATIO * f64::from(plan.out_h);
            let smaller = u64::from(candidate.width()) * u64::from(candidate.height())
                < u64::from(from.width()) * u64::from(from.height());
            if large_enough && smaller {
                from = candidate;
            }
        }
    }
    let (left, top, width, height) = plan.region_in(from.width(), from.height());
    let mut out = RgbImage::new(plan.out_w, plan.out_h);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(left, top, width, height);
    resizer
        .resize(from, &mut out, &options)
        .map_err(|e| Error::internal(format!("resize failed: {e}")))?;
    Ok(out)
}

fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 8);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode(image.as_raw(), image.width(), image.height(), ExtendedColorType::Rgb8)
        .map_err(|e| Error::internal(format!("jpeg encoding failed: {e}")))?;
    Ok(out)
}
