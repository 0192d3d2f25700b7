//! Perceptual hash and dominant colours, computed from a tiny upright copy of the image.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use mediamesh_core::Error;

use crate::DominantColor;
use crate::resize::orient;

/// Side of the square the DCT pHash works on.
const HASH_SIDE: u32 = 32;
/// Side of the square the colour clustering works on.
const COLOR_SIDE: u32 = 64;
/// Most colours reported.
const MAX_COLORS: usize = 5;

/// Squashes `image` to `side`×`side` (the aspect ratio is dropped, as pHash does), upright.
fn squash(image: &RgbImage, side: u32, orientation: u32) -> Result<RgbImage, Error> {
    let mut out = RgbImage::new(side, side);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(image, &mut out, &options)
        .map_err(|e| Error::internal(format!("resize failed: {e}")))?;
    Ok(orient(out.width(), out.height(), out.as_raw(), orientation)?.unwrap_or(out))
}

/// The 64-bit DCT perceptual hash as 16 hex digits: the low 8×8 frequencies of the DCT of a
/// 32×32 grey version, one bit each for "above the median".
pub(crate) fn phash(image: &RgbImage, orientation: u32) -> Result<String, Error> {
    let small = squash(image, HASH_SIDE, orientation)?;
    let n = HASH_SIDE as usize;
    let grey: Vec<f64> = small
        .as_raw()
        .chunks_exact(3)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect();
    // cos((2x + 1)uπ / 2n) for the 8 low frequencies.
    let basis: Vec<f64> = (0..8)
        .flat_map(|u| {
            (0..n).map(move |x| ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * n) as f64).cos())
        })
        .collect();
    // Rows first (8 frequencies per row), then columns.
    let mut rows = vec![0.0; n * 8];
    for y in 0..n {
        for u in 0..8 {
            rows[y * 8 + u] = (0..n).map(|x| grey[y * n + x] * basis[u * n + x]).sum();
        }
    }
    let mut low = [0.0f64; 64];
    for v in 0..8 {
        for u in 0..8 {
            low[v * 8 + u] = (0..n).map(|y| rows[y * 8 + u] * basis[v * n + y]).sum();
        }
    }
    let mut sorted = low;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    let hash = low.iter().fold(0u64, |acc, &c| (acc << 1) | u64::from(c > median));
    Ok(format!("{hash:016x}"))
}

/// Up to five dominant colours by k-means on a 64×64 copy, largest share first.
pub(crate) fn dominant_colors(image: &RgbImage) -> Result<Vec<DominantColor>, Error> {
    let small = squash(image, COLOR_SIDE, 1)?;
    let pixels: Vec<[f32; 3]> = small
        .as_raw()
        .chunks_exact(3)
        .map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])
        .collect();
    let dist = |a: &[f32; 3], b: &[f32; 3]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2);

    // Deterministic farthest-point seeding, starting from the mean colour.
    let count = pixels.len() as f32;
    let mean = pixels
        .iter()
        .fold([0.0f32; 3], |acc, p| [acc[0] + p[0], acc[1] + p[1], acc[2] + p[2]]);
    let mut centers: Vec<[f32; 3]> = vec![[mean[0] / count, mean[1] / count, mean[2] / count]];
    while centers.len() < MAX_COLORS {
        let farthest = pixels
            .iter()
            .map(|p| (centers.iter().map(|c| dist(p, c)).fold(f32::MAX, f32::min), p))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match farthest {
            // Fewer distinct colours than clusters.
            Some((d, p)) if d > 64.0 => centers.push(*p),
            _ => break,
        }
    }

    let mut assignment = vec![0usize; pixels.len()];
    for _ in 0..12 {
        let mut changed = false;
        for (p, slot) in pixels.iter().zip(assignment.iter_mut()) {
            let best = centers
                .iter()
                .enumerate()
                .min_by(|a, b| dist(p, a.1).total_cmp(&dist(p, b.1)))
                .map(|(i, _)| i)
                .unwrap_or(0);
            changed |= *slot != best;
            *slot = best;
        }
        let mut sums = vec![[0.0f32; 4]; centers.len()];
        for (p, &i) in pixels.iter().zip(&assignment) {
            sums[i] = [
                sums[i][0] + p[0],
                sums[i][1] + p[1],
                sums[i][2] + p[2],
                sums[i][3] + 1.0,
            ];
        }
        for (center, sum) in centers.iter_mut().zip(&sums) {
            if sum[3] > 0.0 {
                *center = [sum[0] / sum[3], sum[1] / sum[3], sum[2] / sum[3]];
            }
        }
        if !changed {
            break;
        }
    }
    let mut counts = vec![0usize; centers.len()];
    for &i in &assignment {
        counts[i] += 1;
    }
    let mut colors: Vec<DominantColor> = centers
        .iter()
        .zip(&counts)
        .filter(|(_, n)| **n > 0)
        .map(|(c, &n)| DominantColor {
            hex: format!(
                "#{:02x}{:02x}{:02x}",
                c[0].round().clamp(0.0, 255.0) as u8,
                c[1].round().clamp(0.0, 255.0) as u8,
                c[2].round().clamp(0.0, 255.0) as u8
            ),
            share: n as f32 / count,
        })
        .collect();
    colors.sort_by(|a, b| b.share.total_cmp(&a.share));
    Ok(colors)
}

/// Hamming distance between two hashes made by [`phash`]; `None` when one is malformed.
pub fn phash_distance(a: &str, b: &str) -> Option<u32> {
    let a = u64::from_str_radix(a, 16).ok()?;
    let b = u64::from_str_radix(b, 16).ok()?;
    Some((a ^ b).count_ones())
}
