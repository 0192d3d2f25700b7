//! The row-by-row decoder against TurboJPEG's whole-image decode of the same files: the same
//! pixels, and the same complaints about broken files.

use std::path::PathBuf;

use mediamesh_jpegstrips::StripDecoder;
use turbojpeg::{Decompressor, PixelFormat, ScalingFactor};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/media")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

const PHOTOS: [&str; 4] = [
    "Kleiber_by_Lukas_Baubkus.jpg",
    "Dragonfly_by_Bolly.jpg",
    "Elephants_5640x3172.jpg",
    "friends_by_Aitzol_Berasategi_orient6.jpg",
];

fn turbojpeg_rgb(data: &[u8], factor: ScalingFactor) -> (usize, usize, Vec<u8>) {
    let mut decompressor = Decompressor::new().expect("decompressor");
    let header = decompressor.read_header(data).expect("header");
    decompressor.set_scaling_factor(factor).expect("factor");
    let (width, height) = (factor.scale(header.width), factor.scale(header.height));
    let mut pixels = vec![0u8; width * height * 3];
    decompressor
        .decompress(
            data,
            turbojpeg::Image {
                pixels: pixels.as_mut_slice(),
                width,
                pitch: width * 3,
                height,
                format: PixelFormat::RGB,
            },
        )
        .expect("decompress");
    (width, height, pixels)
}

/// Reads the whole image in strips of `rows` rows.
fn strips_rgb(data: &[u8], factor: ScalingFactor, rows: usize) -> (usize, usize, Vec<u8>, Option<String>) {
    let mut decoder = StripDecoder::start(data, factor).expect("start");
    let (width, height) = decoder.size();
    let (width, height) = (width as usize, height as usize);
    let mut pixels = vec![0u8; width * height * 3];
    let mut done = 0;
    while done < height {
        let end = (done + rows).min(height);
        let read = decoder
            .read(&mut pixels[done * width * 3..end * width * 3])
            .expect("read") as usize;
        assert!(read > 0 && read <= end - done, "read {read} rows of {}", end - done);
        done += read;
    }
    assert_eq!(decoder.read(&mut [0u8; 16]).expect("read past the end"), 0);
    let warning = decoder.finish().expect("finish");
    (width, height, pixels, warning)
}

#[test]
fn strips_hold_the_pixels_turbojpeg_decodes() {
    for name in PHOTOS {
        let data = fixture(name);
        for factor in [ScalingFactor::new(1, 2), ScalingFactor::new(1, 8), ScalingFactor::ONE] {
            let (tw, th, expected) = turbojpeg_rgb(&data, factor);
            let (w, h, pixels, warning) = strips_rgb(&data, factor, 37);
            assert_eq!((w, h), (tw, th), "{name} at {factor:?}");
            assert!(pixels == expected, "{name} at {factor:?}: pixels differ");
            assert_eq!(warning, None, "{name}");
        }
    }
}

#[test]
fn a_truncated_file_warns_and_garbage_is_refused() {
    let data = fixture("Kleiber_by_Lukas_Baubkus.jpg");
    let cut = &data[..data.len() / 2];
    let (_, height, pixels, warning) = strips_rgb(cut, ScalingFactor::new(1, 8), 64);
    let warning = warning.expect("a premature end is reported");
    assert!(warning.contains("Premature end"), "{warning}");
    // Rows past the cut are filled, not left to chance: the bottom row is uniform grey.
    let width = pixels.len() / 3 / height;
    let last = &pixels[(height - 1) * width * 3..];
    assert!(last.chunks(3).all(|p| p == &last[..3]), "the missing rows are filled");

    for garbage in [&b""[..], &b"not a jpeg at all"[..], &data[..200]] {
        match StripDecoder::start(garbage, ScalingFactor::ONE) {
            Err(message) => assert!(!message.is_empty()),
            Ok(mut decoder) => {
                // A header cut short can still start; reading then fails or warns.
                let (w, h) = decoder.size();
                let mut rows = vec![0u8; w as usize * h as usize * 3];
                let outcome = decoder.read(&mut rows).and_then(|_| decoder.finish());
                assert!(
                    !matches!(outcome, Ok(None)),
                    "{} bytes decoded without complaint",
                    garbage.len()
                );
            }
        }
    }
}
