//! Encoders of the derivatives. None of them writes metadata (EXIF, GPS, ICC): the pixels are
//! sRGB and upright already.

use image::RgbImage;
use mediamesh_core::Error;
use turbojpeg::{Compressor, PixelFormat, Subsamp};

use crate::OutputFormat;

/// Outputs up to this size get optimized Huffman tables (800×600 and smaller).
const SMALL_OUTPUT_PIXELS: u64 = 480_000;

/// Reusable encoders for one [`crate::thumbnails`] call.
pub(crate) struct Encoders {
    jpeg: Option<Compressor>,
    quality: u8,
    optimize: bool,
}

impl Encoders {
    pub fn new(quality: u8, optimize: bool) -> Self {
        Self {
            jpeg: None,
            quality: quality.clamp(1, 100),
            optimize,
        }
    }

    pub fn encode(&mut self, image: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, Error> {
        match format {
            OutputFormat::Jpeg => self.jpeg(image),
            OutputFormat::Webp => Ok(webp(image, self.quality)),
            OutputFormat::Avif => avif(image, self.quality),
        }
    }

    /// Baseline JPEG, 4:2:0 (as libvips writes). Huffman tables are optimized for outputs of at
    /// most [`SMALL_OUTPUT_PIXELS`] (a millisecond or two, and files stay no larger than
    /// libvips's), and for every output when asked.
    fn jpeg(&mut self, image: &RgbImage) -> Result<Vec<u8>, Error> {
        let failed = |e: turbojpeg::Error| Error::internal(format!("JPEG encoding failed: {e}"));
        let compressor = match &mut self.jpeg {
            Some(compressor) => compressor,
            slot => {
                let mut compressor = Compressor::new().map_err(failed)?;
                compressor.set_quality(i32::from(self.quality)).map_err(failed)?;
                compressor.set_subsamp(Subsamp::Sub2x2).map_err(failed)?;
                slot.insert(compressor)
            }
        };
        let (width, height) = (image.width() as usize, image.height() as usize);
        let optimize = self.optimize || (width * height) as u64 <= SMALL_OUTPUT_PIXELS;
        compressor.set_optimize(optimize).map_err(failed)?;
        compressor
            .compress_to_vec(turbojpeg::Image {
                pixels: image.as_raw().as_slice(),
                width,
                pitch: width * 3,
                height,
                format: PixelFormat::RGB,
            })
            .map_err(failed)
    }
}

/// Lossy WebP at `quality` (libwebp).
fn webp(image: &RgbImage, quality: u8) -> Vec<u8> {
    webp::Encoder::from_rgb(image.as_raw(), image.width(), image.height())
        .encode(f32::from(quality))
        .to_vec()
}

/// AVIF output is not built in: ravif 0.13 (rav1e 0.8) alone took 181 s wall (167 s CPU) to
/// build from clean in release on the 2-core machine, over the 90 s budget.
fn avif(_image: &RgbImage, _quality: u8) -> Result<Vec<u8>, Error> {
    Err(Error::unsupported("AVIF output is not built in"))
}
