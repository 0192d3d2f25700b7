//! Tests of `image_ops` on the real fixtures of `shared/fixtures/media` and on small images
//! built here.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};
use mediamesh_core::{Error, ErrorCode};
use mediamesh_media::image_ops::*;

const KLEIBER: &str = "Kleiber_by_Lukas_Baubkus.jpg";
const ELEPHANTS: &str = "Elephants_5640x3172.jpg";
const DRAGONFLY: &str = "Dragonfly_by_Bolly.jpg";
const ORIENT6: &str = "friends_by_Aitzol_Berasategi_orient6.jpg";
const ARC_PNG: &str = "Arc-Colors-Transparent-Wallpaper.png";

fn fixture(name: &str) -> Vec<u8> {
    let beside_workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/media");
    let dir = if beside_workspace.is_dir() {
        beside_workspace
    } else {
        PathBuf::from("/work/shared/fixtures/media")
    };
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn make(data: &[u8]) -> Result<Vec<Derivative>, Error> {
    thumbnails(data, &STANDARD_THUMBS, &Limits::default(), &mut |_| {})
}

/// Decodes a derivative, checking it is a JPEG of the size it claims.
fn decode_jpeg(d: &Derivative) -> RgbImage {
    assert_eq!(
        image::guess_format(&d.jpeg).expect("derivative format"),
        ImageFormat::Jpeg,
        "{} is not a jpeg",
        d.name
    );
    let img = image::load_from_memory_with_format(&d.jpeg, ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", d.name));
    assert_eq!((img.width(), img.height()), (d.width, d.height), "{}", d.name);
    img.to_rgb8()
}

fn assert_sizes(name: &str, expected: [(&str, u32, u32); 3]) {
    let made = make(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: Vec<(&str, u32, u32)> = made
        .iter()
        .map(|d| {
            decode_jpeg(d);
            (d.name.as_str(), d.width, d.height)
        })
        .collect();
    assert_eq!(got, expected, "{name}");
}

#[test]
fn kleiber_derivative_sizes() {
    assert_sizes(
        KLEIBER,
        [("thumb", 150, 150), ("medium", 800, 450), ("large", 1920, 1080)],
    );
}

#[test]
fn elephants_derivative_sizes() {
    assert_sizes(
        ELEPHANTS,
        [("thumb", 150, 150), ("medium", 800, 450), ("large", 1920, 1080)],
    );
}

#[test]
fn dragonfly_derivative_sizes() {
    assert_sizes(
        DRAGONFLY,
        [("thumb", 150, 150), ("medium", 800, 600), ("large", 1440, 1080)],
    );
}

#[test]
fn orient6_derivative_sizes_are_portrait() {
    assert_sizes(
        ORIENT6,
        [("thumb", 150, 150), ("medium", 398, 600), ("large", 716, 1080)],
    );
}

/// Mean absolute difference per channel of two images of the same size.
fn mad(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// A small copy (`resize_exact` is compiled inside the image crate, so it is fast in debug
/// builds too).
fn shrink(img: &DynamicImage, w: u32, h: u32) -> RgbImage {
    img.resize_exact(w, h, image::imageops::FilterType::Triangle).to_rgb8()
}

#[test]
fn orient6_comes_out_upright() {
    let data = fixture(ORIENT6);
    let made = make(&data).expect("thumbnails");
    let large = made.iter().find(|d| d.name == "large").expect("large derivative");
    let out = DynamicImage::ImageRgb8(decode_jpeg(large));
    assert!(
        out.height() > out.width(),
        "not portrait: {}x{}",
        out.width(),
        out.height()
    );

    let stored = image::load_from_memory(&data).expect("decode fixture");
    assert_eq!(
        (stored.width(), stored.height()),
        (3088, 2048),
        "stored pixels are landscape"
    );
    let (w, h) = (64, 96);
    let ours = shrink(&out, w, h);
    let right = shrink(&stored.rotate90(), w, h);
    let wrong = shrink(&stored.rotate270(), w, h);
    let mirrored = shrink(&stored.rotate90().fliph(), w, h);
    let good = mad(&ours, &right);
    let bad = mad(&ours, &wrong);
    let bad_mirror = mad(&ours, &mirrored);
    println!("orient6 mean abs diff: rotate90 {good:.2}, rotate270 {bad:.2}, mirrored {bad_mirror:.2}");
    assert!(good < 4.0, "upright output differs from rotate90: {good:.2}");
    assert!(
        bad > 20.0 && bad > 5.0 * good,
        "rotate270 is too close: {bad:.2} vs {good:.2}"
    );
    assert!(
        bad_mirror > 20.0 && bad_mirror > 5.0 * good,
        "mirror is too close: {bad_mirror:.2}"
    );
}

#[test]
fn png_alpha_is_flattened_onto_white() {
    let data = fixture(ARC_PNG);
    let source = image::load_from_memory(&data).expect("decode png").to_rgba8();
    let made = make(&data).expect("thumbnails");
    let medium = made.iter().find(|d| d.name == "medium").expect("medium derivative");
    let out = decode_jpeg(medium);
    assert_eq!(out.dimensions(), (800, 449));

    // A source pixel whose whole neighbourhood (wider than the resize kernel) is transparent.
    let (x, y) = find_transparent_block(&source, 24).expect("a fully transparent region");
    assert_eq!(source.get_pixel(x, y).0[3], 0);
    let ox = x * out.width() / source.width();
    let oy = y * out.height() / source.height();
    let px = out.get_pixel(ox, oy).0;
    assert!(
        px.iter().all(|&c| c >= 240),
        "transparent source pixel ({x},{y}) (rgba {:?}) became {px:?} at ({ox},{oy})",
        source.get_pixel(x, y).0
    );
}

/// The center of a `size`×`size` block whose alpha is 0 everywhere.
fn find_transparent_block(img: &RgbaImage, size: u32) -> Option<(u32, u32)> {
    let (w, h) = img.dimensions();
    let mut y = 0;
    while y + size <= h {
        let mut x = 0;
        while x + size <= w {
            let clear = (y..y + size).all(|yy| (x..x + size).all(|xx| img.get_pixel(xx, yy).0[3] == 0));
            if clear {
                return Some((x + size / 2, y + size / 2));
            }
            x += size / 2;
        }
        y += size / 2;
    }
    None
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, Error>, code: ErrorCode, what: &str) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{what}: {e}");
            assert!(!e.message.is_empty());
            e
        }
    }
}

#[test]
fn empty_and_text_input_are_bad_input() {
    let limits = Limits::default();
    for (what, data) in [("empty", &b""[..]), ("text", &b"hello world"[..])] {
        expect_code(probe(data, &limits), ErrorCode::BadInput, what);
        expect_code(make(data), ErrorCode::BadInput, what);
    }
}

#[test]
fn truncated_jpegs_are_bad_input() {
    for (name, percent) in [(KLEIBER, 60), (ELEPHANTS, 50), (DRAGONFLY, 95), (KLEIBER, 99)] {
        let data = fixture(name);
        let cut = &data[..data.len() * percent / 100];
        let what = format!("{name} cut to {percent}%");
        let err = expect_code(make(cut), ErrorCode::BadInput, &what);
        assert!(err.message.contains("truncated"), "{}", err.message);
        // The header alone is fine, but probe checks the stream is complete too.
        expect_code(probe(cut, &Limits::default()), ErrorCode::BadInput, &what);
    }
    // Cut inside the headers: even the header read fails.
    let data = fixture(KLEIBER);
    expect_code(make(&data[..300]), ErrorCode::BadInput, "kleiber cut to 300 bytes");
}

#[test]
fn jpeg_with_trailing_bytes_is_fine() {
    let mut data = fixture(ORIENT6);
    data.extend_from_slice(b"trailing garbage after the end of image");
    let made = make(&data).expect("trailing bytes after eoi are tolerated");
    assert_eq!((made[2].width, made[2].height), (716, 1080));
}

#[test]
fn truncated_png_is_bad_input() {
    let data = fixture(ARC_PNG);
    expect_code(
        make(&data[..data.len() * 6 / 10]),
        ErrorCode::BadInput,
        "png cut to 60%",
    );
}

#[test]
fn unsupported_format_is_unsupported() {
    // A BMP file header: recognised, but not a format this service decodes.
    let mut bmp = b"BM".to_vec();
    bmp.resize(64, 0);
    expect_code(probe(&bmp, &Limits::default()), ErrorCode::Unsupported, "bmp probe");
    expect_code(make(&bmp), ErrorCode::Unsupported, "bmp thumbnails");
    // HEIC (ISO-BMFF with a HEIF brand), which the image crate does not even recognise.
    let heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic".to_vec();
    let err = expect_code(probe(&heic, &Limits::default()), ErrorCode::Unsupported, "heic probe");
    assert_eq!(err.message, "heic images are not supported");
}

#[test]
fn random_bytes_are_bad_input() {
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    expect_code(probe(&noise, &Limits::default()), ErrorCode::BadInput, "noise");
    // A JPEG signature followed by garbage.
    let mut fake = vec![0xFF, 0xD8, 0xFF, 0xE0];
    fake.extend_from_slice(&noise);
    expect_code(probe(&fake, &Limits::default()), ErrorCode::BadInput, "fake jpeg probe");
    expect_code(make(&fake), ErrorCode::BadInput, "fake jpeg thumbnails");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG whose header claims `w`×`h` RGBA8 pixels, with no pixel data.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn crc32_matches_the_png_reference() {
    // The CRC of an IEND chunk is a well-known constant.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
}

#[test]
fn huge_png_header_is_too_large_before_any_decode() {
    let data = bomb_png(100_000, 100_000);
    let limits = Limits::default();
    let start = Instant::now();
    let err = expect_code(probe(&data, &limits), ErrorCode::TooLarge, "bomb probe");
    assert_eq!(err.message, "image is 100000x100000, over the 100000000 pixel limit");
    let err = expect_code(
        thumbnails(&data, &STANDARD_THUMBS, &limits, &mut |_| {}),
        ErrorCode::TooLarge,
        "bomb thumbnails",
    );
    assert!(err.message.contains("100000x100000"), "{}", err.message);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
}

#[test]
fn memory_limit_is_too_large() {
    let limits = Limits {
        max_alloc_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let err = expect_code(
        thumbnails(&fixture(KLEIBER), &STANDARD_THUMBS, &limits, &mut |_| {}),
        ErrorCode::TooLarge,
        "kleiber under a 16 MiB limit",
    );
    assert!(err.message.contains("limit"), "{}", err.message);
    // The pixel limit applies to real headers too.
    let small = Limits {
        max_pixels: 1_000_000,
        ..Limits::default()
    };
    let err = expect_code(probe(&fixture(DRAGONFLY), &small), ErrorCode::TooLarge, "dragonfly");
    assert_eq!(err.message, "image is 4224x3168, over the 1000000 pixel limit");
}

#[test]
fn probe_reads_every_fixture() {
    let limits = Limits::default();
    type Case<'a> = (&'a str, &'a str, &'a str, (u32, u32), (u32, u32), u32, bool);
    let cases: [Case; 5] = [
        (KLEIBER, "jpeg", "image/jpeg", (6028, 3391), (6028, 3391), 1, false),
        (ELEPHANTS, "jpeg", "image/jpeg", (5640, 3172), (5640, 3172), 1, false),
        (DRAGONFLY, "jpeg", "image/jpeg", (4224, 3168), (4224, 3168), 0, false),
        (ORIENT6, "jpeg", "image/jpeg", (3088, 2048), (2048, 3088), 6, false),
        (ARC_PNG, "png", "image/png", (2140, 1200), (2140, 1200), 0, true),
    ];
    for (name, format, content_type, stored, display, orientation, alpha) in cases {
        let info = probe(&fixture(name), &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.format, format, "{name}");
        assert_eq!(info.content_type, content_type, "{name}");
        assert_eq!((info.width, info.height), stored, "{name}");
        assert_eq!((info.display_width, info.display_height), display, "{name}");
        assert_eq!(info.exif.orientation, orientation, "{name}");
        assert_eq!(info.has_alpha, alpha, "{name}");
        // It round-trips through JSON (it is stored as job output).
        let json = serde_json::to_string(&info).expect("serialize");
        let back: ProbeInfo = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, info);
    }
}

#[test]
fn probe_reads_camera_exif() {
    let info = probe(&fixture(ELEPHANTS), &Limits::default()).expect("probe");
    assert_eq!(
        info.exif,
        ExifSummary {
            orientation: 1,
            camera_make: Some("SONY".to_owned()),
            camera_model: Some("DSC-RX100M4".to_owned()),
            taken_at: Some("2020-02-19T16:35:05".to_owned()),
        }
    );
    let info = probe(&fixture(KLEIBER), &Limits::default()).expect("probe");
    assert_eq!(info.exif.camera_make, None);
}

#[test]
fn probe_is_fast_on_the_largest_fixture() {
    let data = fixture(ELEPHANTS);
    let start = Instant::now();
    probe(&data, &Limits::default()).expect("probe");
    // Header only: far below the ~1 s a full decode of this file takes.
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn progress_rises_to_one() {
    let mut seen = Vec::new();
    let made = thumbnails(&fixture(ORIENT6), &STANDARD_THUMBS, &Limits::default(), &mut |p| {
        seen.push(p)
    })
    .expect("thumbnails");
    assert_eq!(made.len(), 3);
    assert_eq!(seen.len(), 4, "after decode and after each derivative: {seen:?}");
    assert!(seen.iter().all(|p| (0.0..=1.0).contains(p)), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last().copied(), Some(1.0));
}

// ---------------------------------------------------------------------------------------------
// Small images built here

const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];
const BLUE: [u8; 3] = [0, 0, 255];
const WHITE: [u8; 3] = [255, 255, 255];

/// `w`×`h` with four solid quadrants: red, green / blue, white.
fn quadrants(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb(match (x < w / 2, y < h / 2) {
            (true, true) => RED,
            (false, true) => GREEN,
            (true, false) => BLUE,
            (false, false) => WHITE,
        })
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// A JPEG of `img` with an EXIF APP1 segment holding only `Orientation = orientation`.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(img)
        .expect("encode jpeg");
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec(); // big endian, IFD0 at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn near(px: [u8; 3], want: [u8; 3]) -> bool {
    px.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 40)
}

#[test]
fn all_eight_orientations_display_upright() {
    // Which stored quadrant each display quadrant (TL, TR, BL, BR) shows, from the EXIF spec.
    let expected: [[[u8; 3]; 4]; 8] = [
        [RED, GREEN, BLUE, WHITE], // 1 as stored
        [GREEN, RED, WHITE, BLUE], // 2 mirrored left-right
        [WHITE, BLUE, GREEN, RED], // 3 rotated 180°
        [BLUE, WHITE, RED, GREEN], // 4 mirrored top-bottom
        [RED, BLUE, GREEN, WHITE], // 5 transposed
        [BLUE, RED, WHITE, GREEN], // 6 rotated 90° clockwise
        [WHITE, GREEN, BLUE, RED], // 7 transversed
        [GREEN, WHITE, RED, BLUE], // 8 rotated 90° counter-clockwise
    ];
    let stored = quadrants(96, 48);
    let specs = [
        // Bigger than the image: the whole image, unscaled.
        ThumbSpec {
            name: "full",
            width: 1000,
            height: 1000,
            fit: Fit::Inside,
        },
        // A scaled center crop of the upright image: its 48x48 middle, at 40x40.
        ThumbSpec {
            name: "square",
            width: 40,
            height: 40,
            fit: Fit::Cover,
        },
    ];
    let limits = Limits::default();
    for (index, want) in expected.iter().enumerate() {
        let orientation = index as u16 + 1;
        let data = jpeg_with_orientation(&stored, orientation);

        let info = probe(&data, &limits).expect("probe");
        assert_eq!(info.exif.orientation, u32::from(orientation));
        assert_eq!((info.width, info.height), (96, 48));
        let display = if orientation >= 5 { (48, 96) } else { (96, 48) };
        assert_eq!(
            (info.display_width, info.display_height),
            display,
            "orientation {orientation}"
        );

        let made = thumbnails(&data, &specs, &limits, &mut |_| {}).expect("thumbnails");
        let out = decode_jpeg(&made[0]);
        assert_eq!(out.dimensions(), display, "orientation {orientation}");
        let (w, h) = out.dimensions();
        let corners = [
            (w / 4, h / 4),
            (3 * w / 4, h / 4),
            (w / 4, 3 * h / 4),
            (3 * w / 4, 3 * h / 4),
        ];
        for ((x, y), colour) in corners.into_iter().zip(want) {
            let px = out.get_pixel(x, y).0;
            assert!(
                near(px, *colour),
                "orientation {orientation}: ({x},{y}) is {px:?}, want {colour:?}"
            );
        }

        let square = decode_jpeg(&made[1]);
        assert_eq!(square.dimensions(), (40, 40), "orientation {orientation}");
        for ((x, y), colour) in [(8, 8), (32, 8), (8, 32), (32, 32)].into_iter().zip(want) {
            let px = square.get_pixel(x, y).0;
            assert!(
                near(px, *colour),
                "orientation {orientation}: square ({x},{y}) is {px:?}, want {colour:?}"
            );
        }

        // And the same as the image crate's own orientation handling.
        let mut reference = image::load_from_memory(&data).expect("decode");
        let o = image::metadata::Orientation::from_exif(orientation as u8).expect("orientation");
        reference.apply_orientation(o);
        let d = mad(&out, &reference.to_rgb8());
        assert!(d < 3.0, "orientation {orientation}: differs from image's by {d:.2}");
    }
}

#[test]
fn small_images_are_never_enlarged() {
    let limits = Limits::default();
    // Smaller than every box: every derivative keeps the source size.
    let png = encode(&DynamicImage::ImageRgb8(quadrants(100, 60)), ImageFormat::Png);
    let made = thumbnails(&png, &STANDARD_THUMBS, &limits, &mut |_| {}).expect("thumbnails");
    let sizes: Vec<(u32, u32)> = made.iter().map(|d| (d.width, d.height)).collect();
    assert_eq!(sizes, [(100, 60), (100, 60), (100, 60)]);
    let thumb = decode_jpeg(&made[0]);
    assert!(near(thumb.get_pixel(10, 10).0, RED));

    // Wider than the thumb box but not as tall: cover crops the center unscaled.
    let png = encode(&DynamicImage::ImageRgb8(quadrants(300, 100)), ImageFormat::Png);
    let made = thumbnails(&png, &STANDARD_THUMBS, &limits, &mut |_| {}).expect("thumbnails");
    let sizes: Vec<(u32, u32)> = made.iter().map(|d| (d.width, d.height)).collect();
    assert_eq!(sizes, [(150, 100), (300, 100), (300, 100)]);
    let thumb = decode_jpeg(&made[0]);
    // Columns 75..225 of the source: red/green meet in the middle.
    assert!(near(thumb.get_pixel(20, 20).0, RED));
    assert!(near(thumb.get_pixel(130, 20).0, GREEN));
    assert!(near(thumb.get_pixel(20, 80).0, BLUE));
}

#[test]
fn other_formats_decode() {
    let limits = Limits::default();
    let rgba = RgbaImage::from_fn(320, 200, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, if x < 160 { 255 } else { 0 }])
    });
    let img = DynamicImage::ImageRgba8(rgba);
    for (format, name) in [
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::Tiff, "tiff"),
        (ImageFormat::Png, "png"),
    ] {
        let data = encode(&img, format);
        let info = probe(&data, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.format, name);
        assert_eq!(info.content_type, format!("image/{name}"));
        assert_eq!((info.width, info.height), (320, 200));
        let made = thumbnails(&data, &STANDARD_THUMBS, &limits, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        let thumb = decode_jpeg(&made[0]);
        assert_eq!(thumb.dimensions(), (150, 150), "{name}");
        // The transparent right half is white.
        assert!(thumb.get_pixel(140, 75).0.iter().all(|&c| c > 230), "{name}");

        let cut = &data[..data.len() / 2];
        expect_code(
            thumbnails(cut, &STANDARD_THUMBS, &limits, &mut |_| {}),
            ErrorCode::BadInput,
            &format!("{name} cut in half"),
        );
    }
}

#[test]
fn derivative_content_matches_the_source() {
    // The medium derivative of Dragonfly looks like a plain downscale of the source.
    let data = fixture(DRAGONFLY);
    let made = make(&data).expect("thumbnails");
    let medium = DynamicImage::ImageRgb8(decode_jpeg(&made[1]));
    let source = image::load_from_memory(&data).expect("decode");
    let d = mad(&shrink(&medium, 200, 150), &shrink(&source, 200, 150));
    assert!(d < 4.0, "medium differs from the source by {d:.2}");
}
