//! A PNG picture of the peaks: one band per waveform channel, a filled min/max column per image
//! column, a mid line, one colour on a transparent background. Amplitude is absolute (full scale
//! fills the band), as audiowaveform draws without `--amplitude-scale auto`.

use std::io::Cursor;

use image::{ImageFormat, Rgba, RgbaImage};
use mediamesh_core::{Error, Result};

/// audiowaveform's default waveform colour.
const WAVE: Rgba<u8> = Rgba([0x3A, 0x6E, 0xA5, 0xFF]);

/// Draws `length` pixels of `channels` min/max pairs (16-bit values) into a `width` x `height`
/// PNG. The peaks are resampled to the width: several peaks per column merge (min of the minima,
/// max of the maxima), a peak spans several columns when there are fewer peaks than columns.
pub(crate) fn render_png(data: &[i16], channels: usize, length: usize, width: u32, height: u32) -> Result<Vec<u8>> {
    let mut img = RgbaImage::new(width, height);
    let channels = channels.max(1);
    let band = height / channels as u32;
    for ch in 0..channels {
        let top = band * ch as u32;
        let band_h = if ch + 1 == channels { height - top } else { band };
        if band_h == 0 {
            continue;
        }
        let half = f64::from(band_h - 1) / 2.0;
        let mid = f64::from(top) + half;
        let to_y = |v: i16| -> u32 {
            let y = mid - f64::from(v) / 32768.0 * half;
            (y.round().max(f64::from(top)) as u32).min(top + band_h - 1)
        };
        let mid_row = mid.round() as u32;
        for x in 0..width {
            img.put_pixel(x, mid_row, WAVE);
        }
        if length == 0 {
            continue;
        }
        for x in 0..width {
            let start = (u64::from(x) * length as u64 / u64::from(width)) as usize;
            let end = ((u64::from(x) + 1) * length as u64 / u64::from(width)) as usize;
            let end = end.clamp(start + 1, length);
            let mut lo = i16::MAX;
            let mut hi = i16::MIN;
            for px in start..end {
                let at = (px * channels + ch) * 2;
                lo = lo.min(data[at]);
                hi = hi.max(data[at + 1]);
            }
            if lo > hi {
                continue;
            }
            for y in to_y(hi)..=to_y(lo) {
                img.put_pixel(x, y, WAVE);
            }
        }
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| Error::internal(format!("cannot encode waveform png: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_full_scale_column_and_mid_line() {
        // two pixels: silence, then a full-scale swing
        let data = [0, 0, i16::MIN, i16::MAX];
        let png = render_png(&data, 1, 2, 4, 11).expect("render");
        let img = image::load_from_memory(&png).expect("decode").to_rgba8();
        assert_eq!(img.dimensions(), (4, 11));
        // mid line everywhere
        assert_eq!(img.get_pixel(0, 5), &WAVE);
        // silent half: only the mid line
        assert_eq!(img.get_pixel(0, 0)[3], 0);
        assert_eq!(img.get_pixel(1, 10)[3], 0);
        // loud half: top to bottom
        assert_eq!(img.get_pixel(3, 0), &WAVE);
        assert_eq!(img.get_pixel(3, 10), &WAVE);
    }
}
