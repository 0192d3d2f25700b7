//! Resize plans (cover/inside boxes, never enlarging), SIMD Lanczos3 resizing with
//! fast_image_resize (band by band while a JPEG source is still decoding, see [`Banded`]), and
//! EXIF orientation of the outputs.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{Filter, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use mediamesh_core::Error;

use crate::{Fit, ThumbSpec};

/// A derivative is made from an already made, larger derivative (instead of the full source)
/// only if that intermediate is still at least this many times larger than the output, so the
/// result is as sharp as a direct resize.
const MIN_INTERMEDIATE_RATIO: f64 = 2.0;

/// EXIF orientations 5..=8 display the image transposed.
pub(crate) fn swaps_axes(orientation: u32) -> bool {
    (5..=8).contains(&orientation)
}

/// What to cut from the upright source and at which size to output it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Region of the source, in source pixels (fractional for exact aspect ratios).
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    /// Source size, to map the region onto intermediates.
    pub src_w: u32,
    pub src_h: u32,
    pub out_w: u32,
    pub out_h: u32,
}

impl Plan {
    pub(crate) fn new(spec: &ThumbSpec, src_w: u32, src_h: u32) -> Self {
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
    pub(crate) fn transposed(self) -> Self {
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

    pub(crate) fn is_full_frame(&self) -> bool {
        self.left == 0.0
            && self.top == 0.0
            && self.width == f64::from(self.src_w)
            && self.height == f64::from(self.src_h)
    }

    pub(crate) fn resamples(&self) -> bool {
        self.width != f64::from(self.out_w) || self.height != f64::from(self.out_h)
    }

    /// Whether smaller derivatives may be made from this one's pixels (see [`render`]): it shows
    /// the whole source, resampled.
    pub(crate) fn serves_smaller(&self) -> bool {
        self.is_full_frame() && self.resamples()
    }

    /// The region mapped onto an image of `w`×`h` that shows the whole source.
    pub(crate) fn region_in(&self, w: u32, h: u32) -> (f64, f64, f64, f64) {
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

/// A derivative made band by band while its source is still being decoded: a band of output
/// rows is resized as soon as every source row its Lanczos3 window reaches is in, and turned
/// upright into its place in the output. Each band is computed exactly as in a resize of the
/// whole image (fast_image_resize clips the windows at the image, not at the crop box).
pub(crate) struct Banded {
    /// The plan's region in decoded pixels (stored orientation).
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    src_w: u32,
    src_h: u32,
    orientation: u32,
    /// Output rows (stored orientation) done so far.
    done: u32,
    /// Fewest new output rows worth a resize call before the last one (each call computes
    /// the horizontal filter weights anew).
    min_band: u32,
    /// The output in stored orientation (an intermediate for smaller derivatives).
    stored: RgbImage,
    /// The output turned upright, unless the orientation keeps it as stored.
    upright: Option<RgbImage>,
}

/// What a [`Banded`] made: the pixels in stored orientation and, unless that is upright already,
/// turned upright.
pub(crate) struct Made {
    pub stored: RgbImage,
    upright: Option<RgbImage>,
}

impl Made {
    /// The pixels upright, to encode.
    pub(crate) fn upright(&self) -> &RgbImage {
        self.upright.as_ref().unwrap_or(&self.stored)
    }
}

impl Banded {
    /// `bands`: about how many resize calls to make while the source decodes.
    pub(crate) fn new(plan: &Plan, src_w: u32, src_h: u32, orientation: u32, bands: u32) -> Self {
        let (left, top, width, height) = plan.region_in(src_w, src_h);
        let (up_w, up_h) = if swaps_axes(orientation) {
            (plan.out_h, plan.out_w)
        } else {
            (plan.out_w, plan.out_h)
        };
        Self {
            left,
            top,
            width,
            height,
            src_w,
            src_h,
            orientation,
            done: 0,
            min_band: plan.out_h.div_ceil(bands.max(1)).max(8),
            stored: RgbImage::new(plan.out_w, plan.out_h),
            upright: (2..=8).contains(&orientation).then(|| RgbImage::new(up_w, up_h)),
        }
    }

    /// Resizes the output rows whose windows lie within the first `rows` source rows, in
    /// `source` (whole RGB8 rows; at least `rows` of them), if they are enough for a band or
    /// the source is complete.
    pub(crate) fn advance(&mut self, resizer: &mut Resizer, source: &[u8], rows: u32) -> Result<(), Error> {
        let (out_w, out_h) = self.stored.dimensions();
        let scale = self.height / f64::from(out_h);
        let end = if rows >= self.src_h {
            out_h
        } else {
            let radius = 3.0 * scale.max(1.0);
            // Output row j reads source rows below top + (j + 0.5)·scale + radius.
            let last = ((f64::from(rows) - radius - self.top) / scale - 0.5).floor();
            if last < 0.0 {
                return Ok(());
            }
            (last as u32 + 1).min(out_h)
        };
        if end <= self.done || (end < out_h && end - self.done < self.min_band) {
            return Ok(());
        }
        let band_h = end - self.done;
        let rows = rows.min(self.src_h);
        let bytes = self.src_w as usize * 3 * rows as usize;
        let view = source
            .get(..bytes)
            .ok_or_else(|| Error::internal("fewer decoded rows than announced"))?;
        let src = ImageRef::new(self.src_w, rows, view, PixelType::U8x3).map_err(resize_failed)?;
        let crop_top = self.top + f64::from(self.done) * scale;
        let crop_bottom = if end == out_h {
            self.top + self.height
        } else {
            self.top + f64::from(end) * scale
        };
        let crop_bottom = crop_bottom.min(f64::from(rows));
        let options = lanczos3().crop(self.left, crop_top, self.width, crop_bottom - crop_top);
        let row_bytes = out_w as usize * 3;
        let band = self
            .stored
            .get_mut(self.done as usize * row_bytes..end as usize * row_bytes)
            .ok_or_else(|| Error::internal("band outside the derivative"))?;
        let mut dst = Image::from_slice_u8(out_w, band_h, band, PixelType::U8x3).map_err(resize_failed)?;
        resizer.resize(&src, &mut dst, &options).map_err(resize_failed)?;
        if let Some(upright) = &mut self.upright {
            place(dst.buffer(), out_w, out_h, self.done, self.orientation, upright)?;
        }
        self.done = end;
        Ok(())
    }

    /// The output, once [`Banded::advance`] has seen the whole source.
    pub(crate) fn finish(self) -> Result<Made, Error> {
        if self.done < self.stored.height() {
            return Err(Error::internal("derivative finished before its last rows"));
        }
        Ok(Made {
            stored: self.stored,
            upright: self.upright,
        })
    }
}

/// Writes `band`, rows `first..` (stored orientation) of an `out_w`×`out_h` image, to their
/// place in `upright`, the image turned for the EXIF `orientation`: the band turned on its own
/// is a block of whole rows (orientations 1 to 4) or whole columns (5 to 8) there.
fn place(
    band: &[u8],
    out_w: u32,
    out_h: u32,
    first: u32,
    orientation: u32,
    upright: &mut RgbImage,
) -> Result<(), Error> {
    let band_h = u32::try_from(band.len() / (out_w as usize * 3).max(1)).unwrap_or(0);
    let Some(turned) = orient(out_w, band_h, band, orientation)? else {
        return Err(Error::internal("placing a band that needs no turning"));
    };
    // Offset of the block along the axis the stored rows map to.
    let offset = match orientation {
        3 | 4 | 6 | 7 => out_h - first - band_h,
        _ => first,
    } as usize;
    let row_bytes = upright.width() as usize * 3;
    let (block_w, _) = turned.dimensions();
    let block_bytes = block_w as usize * 3;
    let dst = upright.as_mut();
    for (v, row) in turned.as_raw().chunks_exact(block_bytes.max(1)).enumerate() {
        let at = if swaps_axes(orientation) {
            v * row_bytes + offset * 3
        } else {
            (offset + v) * row_bytes
        };
        dst.get_mut(at..at + block_bytes)
            .ok_or_else(|| Error::internal("band outside the derivative"))?
            .copy_from_slice(row);
    }
    Ok(())
}

/// An RGB8 image as fast_image_resize reads it.
pub(crate) fn view(image: &RgbImage) -> Result<ImageRef<'_>, Error> {
    view_of(image.width(), image.height(), image.as_raw())
}

/// `width`×`height` RGB8 `pixels` as fast_image_resize reads them.
pub(crate) fn view_of(width: u32, height: u32, pixels: &[u8]) -> Result<ImageRef<'_>, Error> {
    ImageRef::new(width, height, pixels, PixelType::U8x3).map_err(resize_failed)
}

/// Makes the pixels of one plan, from the smallest intermediate that is still large enough.
pub(crate) fn render(
    resizer: &mut Resizer,
    source: &ImageRef<'_>,
    intermediates: &[RgbImage],
    plan: &Plan,
) -> Result<RgbImage, Error> {
    let mut from = *source;
    if plan.resamples() {
        for candidate in intermediates {
            let (_, _, w, h) = plan.region_in(candidate.width(), candidate.height());
            let large_enough = w >= MIN_INTERMEDIATE_RATIO * f64::from(plan.out_w)
                && h >= MIN_INTERMEDIATE_RATIO * f64::from(plan.out_h);
            let smaller = u64::from(candidate.width()) * u64::from(candidate.height())
                < u64::from(from.width()) * u64::from(from.height());
            if large_enough && smaller {
                from = view(candidate)?;
            }
        }
    }
    let (left, top, width, height) = plan.region_in(from.width(), from.height());
    let mut out = RgbImage::new(plan.out_w, plan.out_h);
    let options = lanczos3().crop(left, top, width, height);
    resizer.resize(&from, &mut out, &options).map_err(resize_failed)?;
    Ok(out)
}

fn lanczos3() -> ResizeOptions {
    let filter = Filter::new("Lanczos3", lanczos3_weight, 3.0).map_or(FilterType::Lanczos3, FilterType::Custom);
    ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter))
}

/// The Lanczos3 kernel, sinc(x)·sinc(x/3), with one sine instead of fast_image_resize's two:
/// with t = πx/3 and s = sin t, sin 3t = s(3 − 4s²). The weights are computed anew on every
/// resize call (a band of [`Banded`] is one), where the sines were most of the cost.
fn lanczos3_weight(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    if !(-3.0..3.0).contains(&x) {
        return 0.0;
    }
    let t = x * (std::f64::consts::PI / 3.0);
    let s = t.sin();
    s * s * (3.0 - 4.0 * s * s) / (3.0 * t * t)
}

fn resize_failed(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("resize failed: {e}"))
}

/// The `width`×`height` RGB8 `pixels` turned upright for an EXIF orientation, or `None` when
/// they already are.
pub(crate) fn orient(width: u32, height: u32, pixels: &[u8], orientation: u32) -> Result<Option<RgbImage>, Error> {
    if !(2..=8).contains(&orientation) {
        return Ok(None);
    }
    let (up_w, up_h) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    let (sw, sh, dw, dh) = (width as usize, height as usize, up_w as usize, up_h as usize);
    let src = pixels
        .get(..sw * sh * 3)
        .ok_or_else(|| Error::internal("fewer pixels than the image size"))?;
    if sw == 0 || sh == 0 {
        return Ok(Some(RgbImage::new(up_w, up_h)));
    }
    // The stored pixel shown at display position (u, v) is `origin + u·du + v·dv` (in pixels).
    let (sw_i, sh_i) = (sw as isize, sh as isize);
    let (origin, du, dv): (isize, isize, isize) = match orientation {
        2 => (sw_i - 1, -1, sw_i),
        3 => (sh_i * sw_i - 1, -1, -sw_i),
        4 => ((sh_i - 1) * sw_i, 1, -sw_i),
        5 => (0, sw_i, 1),
        6 => ((sh_i - 1) * sw_i, -sw_i, 1),
        7 => (sh_i * sw_i - 1, -sw_i, -1),
        _ => (sw_i - 1, sw_i, -1),
    };
    let mut out = vec![0u8; src.len()];
    // Tiles keep both the reads and the writes in cache for the transposing orientations.
    const TILE: usize = 32;
    for v0 in (0..dh).step_by(TILE) {
        for u0 in (0..dw).step_by(TILE) {
            for v in v0..(v0 + TILE).min(dh) {
                let row = origin + v as isize * dv;
                let out_row = &mut out[v * dw * 3..(v + 1) * dw * 3];
                for u in u0..(u0 + TILE).min(dw) {
                    let at = (row + u as isize * du) as usize * 3;
                    out_row[u * 3..u * 3 + 3].copy_from_slice(&src[at..at + 3]);
                }
            }
        }
    }
    RgbImage::from_raw(up_w, up_h, out)
        .map(Some)
        .ok_or_else(|| Error::internal("orientation failed"))
}
