//! Decoding to RGB8 in stored orientation: JPEG with libjpeg-turbo (DCT shrink-on-load), the
//! other formats with the `image` crate, alpha flattened onto white, CMYK converted.

use image::{DynamicImage, ImageFormat, RgbImage};
use mediamesh_core::{Error, ErrorCode};
use turbojpeg::{Decompressor, PixelFormat, ScalingFactor};

use crate::Limits;
use crate::color;
use crate::header::{self, ColorModel, Header};
use mediamesh_jpegstrips::{Filler, StripDecoder};

/// Shrink-on-load factors tried, smallest first (libjpeg-turbo's DCT scaling). Only powers of
/// two, as libvips uses: with 3/8 etc. (tried) the 16 MB Elephants photo loses 0.011 SSIM
/// against libvips's output, and the photos got no faster.
const JPEG_FACTORS: [(usize, usize); 4] = [(1, 8), (1, 4), (1, 2), (1, 1)];

/// The largest JPEG reduction whose result still has at least `needed_w`×`needed_h` pixels
/// (stored orientation) for an image of `width`×`height`.
pub(crate) fn jpeg_scale(width: u32, height: u32, needed_w: u32, needed_h: u32) -> ScalingFactor {
    for (num, denom) in JPEG_FACTORS {
        let factor = ScalingFactor::new(num, denom);
        if factor.scale(width as usize) >= needed_w as usize && factor.scale(height as usize) >= needed_h as usize {
            return factor;
        }
    }
    ScalingFactor::ONE
}

/// Decodes the image as stored (RGB8, alpha on white). JPEGs are decoded at `factor`; the
/// other formats at full size.
pub(crate) fn decode(data: &[u8], header: &Header, factor: ScalingFactor, limits: &Limits) -> Result<RgbImage, Error> {
    if header.format.format == ImageFormat::Jpeg {
        decode_jpeg(data, header, factor, limits)
    } else {
        decode_other(data, header, limits)
    }
}

/// A JPEG decode is handed on in about this many strips.
const STRIPS: usize = 16;

/// Whether [`Strips`] decodes this image row by row.
pub(crate) fn streams(header: &Header) -> bool {
    header.format.format == ImageFormat::Jpeg && !is_cmyk(header)
}

/// A JPEG with RGB output (YCbCr, RGB or gray, see [`streams`]) decoded as [`decode`] does, but
/// row by row with libjpeg, into a buffer that other threads read while the rest decodes.
pub(crate) struct Strips<'a> {
    decoder: StripDecoder<'a>,
    width: u32,
    height: u32,
}

impl<'a> Strips<'a> {
    /// Checks the file and the memory limit and reads the header (a progressive file has all
    /// its scans decoded when this returns).
    pub(crate) fn start(
        data: &'a [u8],
        header: &Header,
        factor: ScalingFactor,
        limits: &Limits,
    ) -> Result<Self, Error> {
        if !streams(header) {
            return Err(Error::internal("only JPEGs with RGB output are decoded row by row"));
        }
        let (width, height, _) = check_jpeg(data, header, factor, limits)?;
        let (width, height) = (to_u32(width)?, to_u32(height)?);
        let decoder = StripDecoder::start(data, factor).map_err(|text| jpeg_fatal(&text))?;
        if decoder.size() != (width, height) {
            return Err(Error::internal("libjpeg decodes to another size than planned"));
        }
        Ok(Self { decoder, width, height })
    }

    /// Width and height of the decoded image.
    pub(crate) fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Decodes into `filler` (a buffer of exactly width × height RGB8 pixels), top row first;
    /// after each strip of about a sixteenth of the rows, `on_strip` gets the count of rows
    /// filled so far, so that work on them can overlap the decoding of the rest. `on_strip`
    /// returning `false` stops the decode early (the rows below stay as they were).
    pub(crate) fn run(mut self, filler: &mut Filler<'_>, on_strip: &mut dyn FnMut(u32) -> bool) -> Result<(), Error> {
        let pitch = self.width as usize * 3;
        let height = self.height as usize;
        if filler.filled() + filler.unfilled().len() != pitch * height {
            return Err(Error::internal("decode buffer has the wrong size"));
        }
        let strip_bytes = height.div_ceil(STRIPS).max(16) * pitch;
        while !filler.is_full() {
            let unfilled = filler.unfilled();
            let end = strip_bytes.min(unfilled.len());
            let read = self
                .decoder
                .read(&mut unfilled[..end])
                .map_err(|text| jpeg_fatal(&text))?;
            if read == 0 {
                return Err(Error::internal("libjpeg ended before the last row"));
            }
            filler.advance(read as usize * pitch);
            if !on_strip(to_u32(filler.filled() / pitch)?) {
                // Stopped early: the caller does not want the rest.
                return Ok(());
            }
        }
        match self.decoder.finish() {
            Ok(None) => Ok(()),
            Ok(Some(warning)) => jpeg_error_text(&warning).map_or(Ok(()), Err),
            Err(text) => Err(jpeg_fatal(&text)),
        }
    }
}

/// The error for a libjpeg failure that stopped the decode.
fn jpeg_fatal(text: &str) -> Error {
    jpeg_error_text(text).unwrap_or_else(|| Error::bad_input(format!("JPEG is corrupt: {}", header::lower_first(text))))
}

fn too_much_memory(needed: u64, limits: &Limits) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!(
            "image needs {} MiB to decode, over the limit of {} MiB",
            needed.div_ceil(1024 * 1024),
            limits.max_alloc_bytes / (1024 * 1024)
        ),
    )
}

/// The checks before a JPEG decode: complete file, and the working memory within the limit.
/// Returns the decoded size and whether the pixels come out as CMYK.
fn check_jpeg(
    data: &[u8],
    header: &Header,
    factor: ScalingFactor,
    limits: &Limits,
) -> Result<(usize, usize, bool), Error> {
    if !header::jpeg_is_complete(data) {
        return Err(Error::bad_input(
            "JPEG is truncated: the end-of-image marker is missing",
        ));
    }
    let cmyk = is_cmyk(header);
    let format = if cmyk { PixelFormat::CMYK } else { PixelFormat::RGB };
    let width = factor.scale(header.width as usize);
    let height = factor.scale(header.height as usize);

    // Peak working memory: the output buffer, the RGB copy of CMYK, and for progressive files
    // libjpeg's whole-image coefficient buffer (2 bytes per coefficient, at most one per
    // sample and component).
    let out_pixels = (width as u64) * (height as u64);
    let full_pixels = u64::from(header.width) * u64::from(header.height);
    let components = if cmyk {
        4
    } else if header.color == ColorModel::Gray {
        1
    } else {
        3
    };
    let coefficients = if header.progressive {
        full_pixels * components * 2
    } else {
        0
    };
    let needed = out_pixels * format.size() as u64 + if cmyk { out_pixels * 3 } else { 0 } + coefficients;
    if needed > limits.max_alloc_bytes {
        return Err(too_much_memory(needed, limits));
    }
    Ok((width, height, cmyk))
}

fn is_cmyk(header: &Header) -> bool {
    matches!(header.color, ColorModel::Cmyk { .. } | ColorModel::Ycck)
}

fn decode_jpeg(data: &[u8], header: &Header, factor: ScalingFactor, limits: &Limits) -> Result<RgbImage, Error> {
    let (width, height, cmyk) = check_jpeg(data, header, factor, limits)?;
    let format = if cmyk { PixelFormat::CMYK } else { PixelFormat::RGB };

    let internal = |e: turbojpeg::Error| Error::internal(format!("libjpeg-turbo failed: {e}"));
    let mut decompressor = Decompressor::new().map_err(internal)?;
    decompressor.read_header(data).map_err(|e| jpeg_fatal(&message(&e)))?;
    decompressor.set_scaling_factor(factor).map_err(internal)?;
    let mut pixels = vec![0u8; width * height * format.size()];
    let image = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width,
        pitch: width * format.size(),
        height,
        format,
    };
    let result = header::guard(header.format, || decompressor.decompress(data, image))?;
    if let Err(e) = result
        && let Some(error) = jpeg_error(&e)
    {
        return Err(error);
    }
    let (width, height) = (to_u32(width)?, to_u32(height)?);
    if cmyk {
        let inverted = match header.color {
            ColorModel::Cmyk { inverted } => inverted,
            _ => true,
        };
        return color::cmyk_to_rgb(&pixels, width, height, inverted, header.icc.as_deref());
    }
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| Error::internal("decoded buffer has the wrong size"))
}

fn to_u32(v: usize) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::internal("dimension overflow"))
}

fn message(e: &turbojpeg::Error) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("TurboJPEG error: ").unwrap_or(&text);
    header::lower_first(text)
}

/// What a libjpeg-turbo failure means. `None` for warnings that leave a usable image (libjpeg
/// reports them as failures too): extraneous bytes before a marker, an unknown JFIF revision
/// and similar quirks of real cameras and editors.
fn jpeg_error(e: &turbojpeg::Error) -> Option<Error> {
    jpeg_error_text(&message(e))
}

/// [`jpeg_error`] for a libjpeg message.
fn jpeg_error_text(text: &str) -> Option<Error> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("premature end of jpeg file") {
        return Some(Error::bad_input(format!(
            "JPEG is truncated: {}",
            header::lower_first(text)
        )));
    }
    const BENIGN: [&str; 6] = [
        "extraneous bytes before marker",
        "warning:",
        "unknown adobe color transform",
        "invalid sos parameters for sequential jpeg",
        "inconsistent progression sequence",
        "application transferred too",
    ];
    if BENIGN.iter().any(|w| lower.contains(w)) {
        tracing::debug!(warning = %text, "jpeg decoded with a warning");
        return None;
    }
    if lower.contains("unsupported") || lower.contains("not supported") {
        return Some(Error::unsupported(format!(
            "JPEG is not supported: {}",
            header::lower_first(text)
        )));
    }
    Some(Error::bad_input(format!(
        "JPEG is corrupt: {}",
        header::lower_first(text)
    )))
}

/// PNG, WebP, GIF (first frame), TIFF and BMP through the `image` crate, at full size.
fn decode_other(data: &[u8], header: &Header, limits: &Limits) -> Result<RgbImage, Error> {
    let format = header.format;
    let mut decoder = header::open_decoder(data, format, limits)?;
    // Peak working memory: the decoded buffer and the RGB8 copy.
    let pixels = u64::from(header.width) * u64::from(header.height);
    let needed = decoder.total_bytes().saturating_add(pixels * 3);
    if needed > limits.max_alloc_bytes {
        return Err(too_much_memory(needed, limits));
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(header.width);
    decode_limits.max_image_height = Some(header.height);
    decode_limits.max_alloc = Some(limits.max_alloc_bytes);
    decoder
        .set_limits(decode_limits)
        .map_err(|e| header::map_image_error(e, format, "decode"))?;
    let image = header::guard(format, || DynamicImage::from_decoder(decoder))?
        .map_err(|e| header::map_image_error(e, format, "decode"))?;
    flatten_to_rgb(image)
}

/// RGB8, with any alpha composited onto white.
pub(crate) fn flatten_to_rgb(image: DynamicImage) -> Result<RgbImage, Error> {
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
