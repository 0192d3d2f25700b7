//! The photo pipeline of the media service: probing and thumbnail derivatives.
//!
//! - [`thumbnails`] decodes once (JPEG with libjpeg-turbo and DCT shrink-on-load to the
//!   smallest 1/2ⁿ scale that still covers every output, row by row so that the two largest
//!   outputs are resized on a second thread while the decode goes on; PNG, WebP, GIF, TIFF and
//!   BMP with the `image` crate), converts to sRGB (CMYK/YCCK, embedded ICC profiles via moxcms),
//!   flattens alpha onto white, resizes with fast_image_resize (Lanczos3, each output from the
//!   smallest already made derivative that is still at least twice its size), turns each output
//!   upright for its EXIF orientation and encodes it (JPEG 4:2:0 with libjpeg-turbo, or WebP)
//!   without any metadata.
//! - [`probe`] reads header-level facts and EXIF without a full decode, plus a perceptual hash
//!   and dominant colours from a tiny decode (1/8 scale for JPEG).
//! - [`decode_only`] is the decode step of [`thumbnails`] alone (a benchmark's floor).
//!
//! Decompression bombs are refused before any pixel is decoded: the dimensions come from the
//! header and are checked against [`Limits::max_pixels`], and the working memory a decode needs
//! is checked against [`Limits::max_alloc_bytes`].
//!
//! Input HEIC and AVIF are refused as `UNSUPPORTED`: no maintained crate decodes them without
//! system libraries. AVIF output is not built in either: rav1e alone adds about 3 minutes to a
//! clean 2-core release build.

mod analyze;
mod color;
mod decode;
mod encode;
mod exif_summary;
mod header;
mod resize;

use image::RgbImage;
use mediamesh_core::Error;
use serde::{Deserialize, Serialize};
use turbojpeg::ScalingFactor;

pub use analyze::phash_distance;
use header::Header;
use resize::{Banded, Plan, swaps_axes};
use std::sync::{Mutex, mpsc};

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
    pub lens_model: Option<String>,
    /// `DateTimeOriginal` (or `DateTime`) as `YYYY-MM-DDTHH:MM:SS`, with the offset when the
    /// file records one (`+02:00`).
    pub taken_at: Option<String>,
    pub gps: Option<Gps>,
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
    /// Progressive JPEG (or interlaced PNG/GIF).
    pub progressive: bool,
    /// `srgb`, `rgb` (other, from an ICC profile), `grayscale`, `cmyk` or `ycck`.
    pub color_space: String,
    /// Description of the embedded ICC profile.
    pub icc_profile: Option<String>,
    /// Bits per channel as stored.
    pub bit_depth: u8,
    /// 64-bit DCT perceptual hash of the upright image, 16 hex digits.
    pub phash: String,
    /// Up to five dominant colours, largest share first.
    pub dominant_colors: Vec<DominantColor>,
}

/// One dominant colour and the share of the image it covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DominantColor {
    /// `#rrggbb`.
    pub hex: String,
    /// Fraction of the pixels, 0..=1.
    pub share: f32,
}

/// GPS position from EXIF, in degrees (south and west negative) and metres.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Gps {
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: Option<f64>,
}

/// How a derivative fits its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scale to cover the box, then center-crop to it.
    Cover,
    /// Scale to fit inside the box, keeping the aspect ratio.
    Inside,
}

/// One derivative to make. Sources are never enlarged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
}

impl ThumbSpec {
    pub fn new(name: impl Into<String>, width: u32, height: u32, fit: Fit) -> Self {
        Self {
            name: name.into(),
            width,
            height,
            fit,
        }
    }
}

/// Encoded format of a derivative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jpeg,
    Webp,
    Avif,
}

impl OutputFormat {
    /// Parses `jpeg` (or `jpg`), `webp` or `avif`, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            "avif" => Some(Self::Avif),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
            Self::Avif => "avif",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Avif => "image/avif",
        }
    }

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Avif => "avif",
        }
    }
}

/// What [`thumbnails`] makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbOptions {
    /// Boxes to make, in output order.
    pub specs: Vec<ThumbSpec>,
    /// Encoder quality 1..=100 for every lossy output.
    pub quality: u8,
    /// Every spec is encoded in each of these formats.
    pub formats: Vec<OutputFormat>,
    /// JPEG only: optimized Huffman tables for every output. About 2 % smaller files, but
    /// libjpeg-turbo's encode takes 3–4× as long (8.6 instead of 2.3 ms for 716×1080). Off by
    /// default: then only outputs of up to 800×600 get them (where it costs a millisecond or
    /// two), the large ones are encoded as libvips does.
    pub optimize_coding: bool,
    /// Decode every bit of a near-lossless progressive JPEG even when decoding it at a reduced
    /// scale. Off by default: the scans that refine only the lowest bit are then skipped (see
    /// [`jpeg_without_last_bit`]), which takes 40 % off such a decode and changes the decoded
    /// pixels by under one level on average (PSNR 48.6 dB on the Elephants fixture).
    pub all_bits: bool,
}

impl Default for ThumbOptions {
    fn default() -> Self {
        Self {
            specs: vec![
                ThumbSpec::new("thumb", 150, 150, Fit::Cover),
                ThumbSpec::new("medium", 800, 600, Fit::Inside),
                ThumbSpec::new("large", 1920, 1080, Fit::Inside),
            ],
            quality: 85,
            formats: vec![OutputFormat::Jpeg],
            optimize_coding: false,
            all_bits: false,
        }
    }
}

/// One made derivative: upright, RGB8, without metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivative {
    pub name: String,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Reads the header-level facts and EXIF without a full decode, and computes a perceptual hash
/// and the dominant colours from a tiny decode (1/8 scale for JPEG).
///
/// Errors: `BadInput` for empty, unknown, corrupt or truncated data; `Unsupported` for a
/// recognised format that is not decoded (HEIC, AVIF, JPEG XL); `TooLarge` for an image over
/// `limits.max_pixels` (from the header, before any decode).
pub fn probe(data: &[u8], limits: &Limits) -> Result<ProbeInfo, Error> {
    let header = header::read_header(data, limits)?;
    let exif = exif_summary::read(data, header.jpeg_exif.as_deref());
    // A progressive JPEG's first (DC) scans are all a 1/8 decode needs; the rest of the file is
    // still checked for truncation.
    let prefix = if header.progressive && header::jpeg_is_complete(data) {
        header::jpeg_dc_prefix(data)
    } else {
        None
    };
    let mut small = decode::decode(
        prefix.as_deref().unwrap_or(data),
        &header,
        ScalingFactor::ONE_EIGHTH,
        limits,
    )?;
    if let Some(to_srgb) = to_srgb(&header) {
        to_srgb.apply(&mut small)?;
    }
    let phash = analyze::phash(&small, exif.orientation)?;
    let dominant_colors = analyze::dominant_colors(&small)?;
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
        progressive: header.progressive,
        color_space: header.color.name().to_owned(),
        icc_profile: header.icc.as_deref().and_then(color::profile_description),
        bit_depth: header.bit_depth,
        phash,
        dominant_colors,
    })
}

/// Decodes once, converts to sRGB, flattens alpha onto white, applies the EXIF orientation and
/// makes one derivative per (spec, format): spec-major, in the order of `opts.specs` and
/// `opts.formats`.
///
/// A JPEG is decoded row by row on the calling thread, into a buffer a helper thread reads as it
/// fills. The helper resizes the largest derivative band by band, each band as soon as the
/// source rows its filter needs are decoded, and turns the bands upright; while it waits for
/// rows, it does the same for the second largest. Once the decode is done, the helper finishes
/// and encodes the largest while the calling thread finishes and encodes the second and makes
/// the rest (ADR 0003, ADR 0004). Other formats are decoded whole and their derivatives made one
/// after the other.
///
/// `progress` gets values in `0..=1`: once after the decode, then as derivatives are done (the
/// last call is `1.0`).
///
/// Errors: as [`probe`], plus `BadInput` for an empty box or no format, `Unsupported` for
/// AVIF output, and `TooLarge` when the decode would need more than `limits.max_alloc_bytes`.
pub fn thumbnails(
    data: &[u8],
    opts: &ThumbOptions,
    limits: &Limits,
    progress: &mut dyn FnMut(f32),
) -> Result<Vec<Derivative>, Error> {
    let prepared = prepare(data, opts, limits)?;
    let coarse = coarse_source(data, &prepared, opts);
    let input = coarse.as_deref().unwrap_or(data);
    let Prepared {
        header,
        orientation,
        plans,
        factor,
    } = prepared;
    let finisher = Finisher {
        opts,
        orientation,
        to_srgb: to_srgb(&header),
    };
    // Largest first: smaller derivatives may be made from larger ones.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(plans[i].out_w) * u64::from(plans[i].out_h)));
    let mut made: Vec<Vec<Derivative>> = vec![Vec::new(); plans.len()];

    if !decode::streams(&header) || plans.is_empty() {
        let source = decode::decode(input, &header, factor, limits)?;
        progress(DECODED_PROGRESS);
        let mut encoders = finisher.encoders();
        let made_now = finisher.make_from(
            &resize::view(&source)?,
            &plans,
            &order,
            Vec::new(),
            &mut encoders,
            &mut |done| progress(derivatives_progress(done, plans.len())),
        )?;
        for (index, derivatives) in made_now {
            made[index] = derivatives;
        }
        progress(1.0);
        return Ok(made.into_iter().flatten().collect());
    }

    let strips = decode::Strips::start(input, &header, factor, limits)?;
    let (src_w, src_h) = strips.size();
    let pitch = src_w as usize * 3;
    let mut pixels = vec![0u8; pitch * src_h as usize];
    let (mut filler, filled) = mediamesh_jpegstrips::fill(&mut pixels);
    let rows_in = |part: &[u8]| u32::try_from(part.len() / pitch.max(1)).unwrap_or(u32::MAX);
    let banded = |index: usize| Banded::new(&plans[index], src_w, src_h, orientation, BANDS);
    let mut largest = banded(order[0]);
    let second = Mutex::new(order.get(1).map(|&index| banded(index)));
    let stopped = || Error::internal("the resizing thread stopped");

    std::thread::scope(|scope| -> Result<(), Error> {
        let (wake, woken) = mpsc::channel::<()>();
        let (finisher, plans, order, second) = (&finisher, &plans, &order, &second);
        let source = filled.clone();
        // The helper's derivatives, or `None` when the decode failed (the decode says why).
        let helper = scope.spawn(move || -> Result<Option<Vec<Derivative>>, Error> {
            let mut resizer = fast_image_resize::Resizer::new();
            let mut rows = 0;
            while woken.recv().is_ok() {
                // Each wake-up says "more rows"; the filled part says how many.
                while woken.try_recv().is_ok() {}
                let part = source.get();
                rows = rows_in(part);
                largest.advance(&mut resizer, part, rows)?;
                if rows == src_h {
                    break;
                }
                // The second largest only while no newer rows wait, so that the largest keeps up
                // with the decode; the calling thread finishes it once the decode is done.
                if source.get().len() == part.len()
                    && let Ok(mut second) = second.try_lock()
                    && let Some(second) = second.as_mut()
                {
                    second.advance(&mut resizer, part, rows)?;
                }
            }
            if rows < src_h {
                return Ok(None);
            }
            let made = largest.finish()?;
            finisher
                .encode(made.upright(), order[0], &mut finisher.encoders())
                .map(Some)
        });
        // A failed helper closes the channel, which stops the decode.
        let decoded = strips.run(&mut filler, &mut |_| wake.send(()).is_ok());
        drop(wake);
        let ours = decoded.and_then(|()| {
            if !filler.is_full() {
                return Err(stopped());
            }
            progress(DECODED_PROGRESS);
            let source = filled.get();
            let mut encoders = finisher.encoders();
            let mut intermediates = Vec::new();
            let mut made = Vec::new();
            let second = second.lock().map_err(|_| stopped())?.take();
            if let Some(mut second) = second {
                second.advance(&mut fast_image_resize::Resizer::new(), source, src_h)?;
                let second = second.finish()?;
                made.push((order[1], finisher.encode(second.upright(), order[1], &mut encoders)?));
                if plans[order[1]].serves_smaller() {
                    intermediates.push(second.stored);
                }
                progress(derivatives_progress(1, plans.len()));
            }
            let from = resize::view_of(src_w, src_h, source)?;
            let rest = order.get(2..).unwrap_or(&[]);
            made.extend(
                finisher.make_from(&from, plans, rest, intermediates, &mut encoders, &mut |done| {
                    progress(derivatives_progress(1 + done, plans.len()));
                })?,
            );
            Ok(made)
        });
        // A failed helper stops the decode early: its error is the one that says why.
        let theirs = match helper.join() {
            Ok(Ok(Some(theirs))) => theirs,
            Ok(Ok(None)) | Err(_) => return Err(ours.err().unwrap_or_else(stopped)),
            Ok(Err(error)) => return Err(error),
        };
        made[order[0]] = theirs;
        for (index, derivatives) in ours? {
            made[index] = derivatives;
        }
        Ok(())
    })?;
    progress(1.0);
    Ok(made.into_iter().flatten().collect())
}

/// The progress after `done` of `count` derivatives.
fn derivatives_progress(done: usize, count: usize) -> f32 {
    let fraction = done as f32 / count.max(1) as f32;
    (DECODED_PROGRESS + (1.0 - DECODED_PROGRESS) * fraction).min(1.0)
}

/// About how many resize calls each banded derivative of a JPEG gets while the JPEG decodes
/// (each computes the filter weights of a row anew; more calls leave less to do once the decode
/// ends; 6 and 12 measured alike on friends).
const BANDS: u32 = 12;

/// What turns resized pixels into a derivative's files: orientation, sRGB, encoding.
struct Finisher<'a> {
    opts: &'a ThumbOptions,
    orientation: u32,
    to_srgb: Option<color::ToSrgb>,
}

impl Finisher<'_> {
    fn encoders(&self) -> encode::Encoders {
        encode::Encoders::new(self.opts.quality, self.opts.optimize_coding)
    }

    /// Derivative `index`, already upright, in sRGB, in every asked format.
    fn encode(
        &self,
        image: &RgbImage,
        index: usize,
        encoders: &mut encode::Encoders,
    ) -> Result<Vec<Derivative>, Error> {
        let converted;
        let image = match &self.to_srgb {
            Some(to_srgb) => {
                let mut copy = image.clone();
                to_srgb.apply(&mut copy)?;
                converted = copy;
                &converted
            }
            None => image,
        };
        let name = &self.opts.specs[index].name;
        self.opts
            .formats
            .iter()
            .map(|&format| {
                Ok(Derivative {
                    name: name.clone(),
                    format,
                    width: image.width(),
                    height: image.height(),
                    data: encoders.encode(image, format)?,
                })
            })
            .collect()
    }

    /// The derivatives `order` (largest first) made from the whole decoded `source`, one after
    /// the other, each from the smallest full-frame derivative made so far (or given in
    /// `intermediates`) still at least twice its size; `done` gets the count after each.
    fn make_from(
        &self,
        source: &fast_image_resize::images::ImageRef<'_>,
        plans: &[Plan],
        order: &[usize],
        mut intermediates: Vec<RgbImage>,
        encoders: &mut encode::Encoders,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<(usize, Vec<Derivative>)>, Error> {
        let mut resizer = fast_image_resize::Resizer::new();
        let mut made = Vec::with_capacity(order.len());
        for (count, &index) in order.iter().enumerate() {
            let plan = &plans[index];
            let pixels = resize::render(&mut resizer, source, &intermediates, plan)?;
            let upright = resize::orient(pixels.width(), pixels.height(), pixels.as_raw(), self.orientation)?;
            made.push((
                index,
                self.encode(upright.as_ref().unwrap_or(&pixels), index, encoders)?,
            ));
            if plan.serves_smaller() {
                intermediates.push(pixels);
            }
            done(count + 1);
        }
        Ok(made)
    }
}

/// For a progressive JPEG of near-lossless quality (no quantization step above 2), the stream
/// without its trailing scans that refine only the lowest bit of the coefficients, ended by an
/// end-of-image marker: what [`thumbnails`] decodes instead of the whole file when it decodes at
/// a reduced scale. `None` for any other JPEG (baseline, coarser quantization, other scan order).
pub fn jpeg_without_last_bit(data: &[u8]) -> Option<Vec<u8>> {
    header::jpeg_without_last_bit(data)
}

/// Decodes at the scale [`thumbnails`] would pick for `opts` and does nothing else; returns the
/// decoded size (stored orientation). The floor a benchmark compares [`thumbnails`] against.
pub fn decode_only(data: &[u8], opts: &ThumbOptions, limits: &Limits) -> Result<(u32, u32), Error> {
    let prepared = prepare(data, opts, limits)?;
    let source = decode_source(data, &prepared, opts, limits)?;
    Ok(source.dimensions())
}

/// The decode [`thumbnails`] starts from: at the planned scale, and for a reduced decode of a
/// near-lossless progressive JPEG without its last-bit scans (unless `opts.all_bits`).
fn decode_source(data: &[u8], prepared: &Prepared, opts: &ThumbOptions, limits: &Limits) -> Result<RgbImage, Error> {
    let coarse = coarse_source(data, prepared, opts);
    decode::decode(
        coarse.as_deref().unwrap_or(data),
        &prepared.header,
        prepared.factor,
        limits,
    )
}

/// For a reduced decode of a near-lossless progressive JPEG (unless `opts.all_bits`), the file
/// without its last-bit scans (ADR 0002).
fn coarse_source(data: &[u8], prepared: &Prepared, opts: &ThumbOptions) -> Option<Vec<u8>> {
    let reduced = prepared.factor.num() < prepared.factor.denom();
    if reduced && prepared.header.progressive && !opts.all_bits && header::jpeg_is_complete(data) {
        header::jpeg_without_last_bit(data)
    } else {
        None
    }
}

/// What is known before the decode.
struct Prepared {
    header: Header,
    orientation: u32,
    /// One per spec, in stored-pixel coordinates of the full-size image.
    plans: Vec<Plan>,
    /// JPEG shrink-on-load factor.
    factor: ScalingFactor,
}

/// Validates the options, reads the header (refusing bombs), and plans the outputs.
fn prepare(data: &[u8], opts: &ThumbOptions, limits: &Limits) -> Result<Prepared, Error> {
    for spec in &opts.specs {
        if spec.width == 0 || spec.height == 0 {
            return Err(Error::bad_input(format!("derivative {:?} has an empty box", spec.name)));
        }
    }
    if opts.formats.is_empty() {
        return Err(Error::bad_input("no output format asked for"));
    }
    if opts.formats.contains(&OutputFormat::Avif) {
        return Err(Error::unsupported("AVIF output is not built in"));
    }
    let header = header::read_header(data, limits)?;
    let orientation = exif_summary::orientation(data, header.jpeg_exif.as_deref());

    // Plans are made for the upright (displayed) image, then mapped back onto the stored pixels:
    // resizing happens on the stored image and only the small outputs are turned upright.
    let swap = swaps_axes(orientation);
    let (display_w, display_h) = if swap {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    let plans: Vec<Plan> = opts
        .specs
        .iter()
        .map(|spec| {
            let plan = Plan::new(spec, display_w, display_h);
            if swap { plan.transposed() } else { plan }
        })
        .collect();
    // The smallest fraction of the full size that still gives every output all its pixels.
    let needed = plans
        .iter()
        .map(|plan| {
            if plan.resamples() {
                (f64::from(plan.out_w) / plan.width).max(f64::from(plan.out_h) / plan.height)
            } else {
                1.0
            }
        })
        .fold(0.0f64, f64::max)
        .min(1.0);
    let needed_w = (f64::from(header.width) * needed).ceil() as u32;
    let needed_h = (f64::from(header.height) * needed).ceil() as u32;
    let factor = decode::jpeg_scale(header.width, header.height, needed_w, needed_h);
    Ok(Prepared {
        header,
        orientation,
        plans,
        factor,
    })
}

/// The ICC transform to sRGB for an RGB image with a non-sRGB embedded profile.
fn to_srgb(header: &Header) -> Option<color::ToSrgb> {
    if header.color != header::ColorModel::Rgb {
        return None;
    }
    color::ToSrgb::for_rgb_profile(header.icc.as_deref())
}
