//! The photo pipeline on the real fixture photos and on small generated inputs (CMYK, ICC,
//! 16-bit, every input format, bombs, corrupt and truncated data).

#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, GenericImageView, ImageFormat, Rgb, RgbImage};
use mediamesh_core::ErrorCode;
use mediamesh_imaging::{
    Derivative, Fit, Limits, OutputFormat, ThumbOptions, ThumbSpec, decode_only, jpeg_without_last_bit, phash_distance,
    probe, thumbnails,
};

const KLEIBER: &str = "Kleiber_by_Lukas_Baubkus.jpg";
const ELEPHANTS: &str = "Elephants_5640x3172.jpg";
const DRAGONFLY: &str = "Dragonfly_by_Bolly.jpg";
const FRIENDS: &str = "friends_by_Aitzol_Berasategi_orient6.jpg";
const ARC_PNG: &str = "Arc-Colors-Transparent-Wallpaper.png";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/media")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn make(data: &[u8], opts: &ThumbOptions) -> Vec<Derivative> {
    let mut calls = Vec::new();
    let made = thumbnails(data, opts, &Limits::default(), &mut |p| calls.push(p)).expect("thumbnails");
    assert!(!calls.is_empty(), "progress was never reported");
    assert!(
        calls.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {calls:?}"
    );
    assert!(
        calls.iter().all(|p| (0.0..=1.0).contains(p)),
        "progress out of range: {calls:?}"
    );
    assert_eq!(calls.last().copied(), Some(1.0));
    made
}

fn decode(data: &[u8]) -> DynamicImage {
    image::load_from_memory(data).expect("output decodes")
}

/// Whether a JPEG has an APP1 (EXIF/XMP) or APP2 (ICC) segment before its first scan.
fn jpeg_has_metadata(data: &[u8]) -> bool {
    let mut pos = 2;
    while pos + 4 <= data.len() && data[pos] == 0xFF {
        let marker = data[pos + 1];
        if marker == 0xDA {
            return false;
        }
        if matches!(marker, 0xE1 | 0xE2) {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
        pos += 2 + len;
    }
    false
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

fn close(actual: [u8; 3], expected: [u8; 3], tolerance: u8) -> bool {
    actual.iter().zip(expected).all(|(a, e)| a.abs_diff(e) <= tolerance)
}

fn center_pixel(data: &[u8]) -> [u8; 3] {
    let image = decode(data).to_rgb8();
    image.get_pixel(image.width() / 2, image.height() / 2).0
}

fn code_of(result: Result<impl std::fmt::Debug, mediamesh_core::Error>) -> (ErrorCode, String) {
    let err = result.expect_err("expected an error");
    (err.code, err.message)
}

fn jpeg_of(image: &RgbImage, quality: i32) -> Vec<u8> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    turbojpeg::compress(
        turbojpeg::Image {
            pixels: image.as_raw().as_slice(),
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        },
        quality,
        turbojpeg::Subsamp::Sub2x2,
    )
    .expect("compress")
    .to_vec()
}

fn encode_with(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// Inserts a segment (marker, payload) right after the SOI of a JPEG.
fn with_segment(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let mut payload = b"ICC_PROFILE\0\x01\x01".to_vec();
    payload.extend_from_slice(icc);
    with_segment(jpeg, 0xE2, &payload)
}

// ---------------------------------------------------------------------------------------------
// Fixture photos

fn check_photo(name: &str, expected: [(u32, u32); 3]) -> Vec<Derivative> {
    let data = fixture(name);
    let made = make(&data, &ThumbOptions::default());
    let names: Vec<&str> = made.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["thumb", "medium", "large"]);
    for (derivative, (width, height)) in made.iter().zip(expected) {
        assert_eq!(
            (derivative.width, derivative.height),
            (width, height),
            "{name} {}",
            derivative.name
        );
        assert_eq!(derivative.format, OutputFormat::Jpeg);
        let decoded = decode(&derivative.data);
        assert_eq!(
            decoded.dimensions(),
            (width, height),
            "{name} {} decodes",
            derivative.name
        );
        assert!(
            !jpeg_has_metadata(&derivative.data),
            "{name} {} carries metadata",
            derivative.name
        );
        // Baseline (SOF0), 4:2:0: libjpeg-turbo reads the subsampling back.
        let header = turbojpeg::read_header(&derivative.data).expect("header");
        assert!(!header.is_progressive);
        assert_eq!(header.subsamp, turbojpeg::Subsamp::Sub2x2);
    }
    made
}

#[test]
fn kleiber_derivatives() {
    let made = check_photo(KLEIBER, [(150, 150), (800, 450), (1920, 1080)]);
    // Not a flat or broken picture: the large output has real detail.
    let large = decode(&made[2].data).to_luma8();
    let (min, max) = large
        .as_raw()
        .iter()
        .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(max - min > 150, "contrast {min}..{max}");
}

#[test]
fn elephants_derivatives() {
    check_photo(ELEPHANTS, [(150, 150), (800, 450), (1920, 1080)]);
}

/// Decodes a JPEG with libjpeg-turbo at `num/8` of its size.
fn decode_scaled(data: &[u8], num: usize) -> RgbImage {
    let mut decompressor = turbojpeg::Decompressor::new().unwrap();
    let header = decompressor.read_header(data).unwrap();
    let factor = turbojpeg::ScalingFactor::new(num, 8);
    decompressor.set_scaling_factor(factor).unwrap();
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
                format: turbojpeg::PixelFormat::RGB,
            },
        )
        .unwrap();
    RgbImage::from_raw(width as u32, height as u32, pixels).unwrap()
}

#[test]
fn a_near_lossless_progressive_jpeg_is_decoded_without_its_last_bit() {
    // Elephants is progressive at q100 (steps of 1 and 2): its last four scans only refine the
    // lowest bit, and are a third of the file.
    let full = fixture(ELEPHANTS);
    let coarse = jpeg_without_last_bit(&full).expect("Elephants ends with last-bit refinements");
    assert!(coarse.ends_with(&[0xFF, 0xD9]));
    assert!(
        coarse.len() < full.len() * 7 / 10,
        "{} of {} bytes",
        coarse.len(),
        full.len()
    );
    // The same picture at the half scale thumbnails() decodes it at: at most a level or two
    // anywhere, under a level on average (PSNR above 45 dB; 48.6 measured).
    let (exact, reduced) = (decode_scaled(&full, 4), decode_scaled(&coarse, 4));
    assert_eq!(exact.dimensions(), (2820, 1586));
    let max = exact
        .as_raw()
        .iter()
        .zip(reduced.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let mse = exact
        .as_raw()
        .iter()
        .zip(reduced.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)).powi(2))
        .sum::<f64>()
        / exact.as_raw().len() as f64;
    let psnr = 10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10();
    eprintln!("half-scale decode without the last bit: PSNR {psnr:.1} dB, max difference {max}");
    assert!(psnr > 45.0 && max <= 8, "PSNR {psnr:.1} dB, max difference {max}");
    let mean = mean_abs_diff(&exact, &reduced);
    assert!(mean < 1.0, "mean difference {mean:.2} levels");
    // The large derivative made either way: a different file (re-encoding at q85 magnifies
    // the difference), no further from the picture: against a Lanczos resize of the exact
    // decode, the one without the last bit is as close as the one with it.
    let skipped = make(&full, &ThumbOptions::default());
    let every_bit = make(
        &full,
        &ThumbOptions {
            all_bits: true,
            ..ThumbOptions::default()
        },
    );
    assert_ne!(skipped[2].data, every_bit[2].data, "all_bits decodes the last bit");
    let reference = image::imageops::resize(&exact, 1920, 1080, image::imageops::FilterType::Lanczos3);
    let off_skipped = mean_abs_diff(&decode(&skipped[2].data).to_rgb8(), &reference);
    let off_every_bit = mean_abs_diff(&decode(&every_bit[2].data).to_rgb8(), &reference);
    eprintln!("large from the reference: {off_skipped:.3} levels without the last bit, {off_every_bit:.3} with it");
    assert!(
        off_skipped < off_every_bit * 1.01,
        "from the reference: {off_skipped:.3} levels without the last bit, {off_every_bit:.3} with it"
    );
    // Coarser files, and baseline ones, are decoded whole.
    assert!(jpeg_without_last_bit(&fixture(DRAGONFLY)).is_none(), "steps up to 36");
    assert!(jpeg_without_last_bit(&fixture(KLEIBER)).is_none(), "baseline");
    assert!(jpeg_without_last_bit(&coarse).is_none(), "nothing left to drop");
}

/// The two largest derivatives of a JPEG are resized band by band while the JPEG decodes (ADR
/// 0003, 0004), the second partly on each thread: their pixels must be exactly those of one
/// Lanczos3 resize of the whole decoded image by fast_image_resize, turned upright (which also
/// checks that the one-sine Lanczos3 kernel gives fast_image_resize's own weights).
#[test]
fn derivatives_made_while_decoding_equal_a_whole_image_resize() {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    for (name, rotate) in [
        ("friends_by_Aitzol_Berasategi_orient6.jpg", true),
        ("Kleiber_by_Lukas_Baubkus.jpg", false),
    ] {
        let data = fixture(name);
        let made = make(&data, &ThumbOptions::default());
        let source = decode_scaled(&data, 4);
        for size in ["large", "medium"] {
            let derivative = made.iter().find(|d| d.name == size).expect(size);
            let ours = decode(&derivative.data).to_rgb8();
            let (w, h) = if rotate {
                (derivative.height, derivative.width)
            } else {
                (derivative.width, derivative.height)
            };
            let mut resized = RgbImage::new(w, h);
            let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
            Resizer::new().resize(&source, &mut resized, &options).expect("resize");
            let upright = if rotate {
                image::imageops::rotate90(&resized)
            } else {
                resized
            };
            // Optimized Huffman tables (medium) change the bytes, not the decoded pixels.
            let reference = decode(&jpeg_of(&upright, 85)).to_rgb8();
            assert_eq!(ours.dimensions(), reference.dimensions(), "{name} {size}");
            let diff = mean_abs_diff(&ours, &reference);
            assert!(diff == 0.0, "{name} {size}: {diff} levels from a whole-image resize");
        }
    }
}

#[test]
fn dragonfly_derivatives() {
    check_photo(DRAGONFLY, [(150, 150), (800, 600), (1440, 1080)]);
}

#[test]
fn friends_derivatives_are_portrait_and_upright() {
    let made = check_photo(FRIENDS, [(150, 150), (398, 600), (716, 1080)]);
    // Reference: full decode with the image crate, turned upright (orientation 6 = rotate 90°
    // clockwise), then the same centre-crop cover resize.
    let reference = decode(&fixture(FRIENDS)).rotate90();
    let reference = reference
        .resize_to_fill(150, 150, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let thumb = decode(&made[0].data).to_rgb8();
    let upright = mean_abs_diff(&thumb, &reference);
    let wrong_turns = [
        decode(&fixture(FRIENDS)).rotate270(),
        decode(&fixture(FRIENDS)).rotate90().fliph(),
    ]
    .map(|img| {
        mean_abs_diff(
            &thumb,
            &img.resize_to_fill(150, 150, image::imageops::FilterType::Lanczos3)
                .to_rgb8(),
        )
    });
    assert!(
        upright < 6.0,
        "thumbnail differs from the upright reference by {upright}"
    );
    for wrong in wrong_turns {
        assert!(
            wrong > 3.0 * upright,
            "wrong orientation {wrong} is as close as upright {upright}"
        );
    }
    // The large output matches too, not only the thumbnail.
    let reference = decode(&fixture(FRIENDS))
        .rotate90()
        .resize_exact(716, 1080, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let large = decode(&made[2].data).to_rgb8();
    assert!(mean_abs_diff(&large, &reference) < 6.0);
}

#[test]
fn transparent_png_is_flattened_onto_white() {
    let data = fixture(ARC_PNG);
    let made = make(&data, &ThumbOptions::default());
    let sizes: Vec<(u32, u32)> = made.iter().map(|d| (d.width, d.height)).collect();
    assert_eq!(sizes, [(150, 150), (800, 449), (1920, 1077)]);
    // Expected: the source flattened onto white by hand, resized.
    let source = decode(&data).to_rgba8();
    let flat = RgbImage::from_fn(source.width(), source.height(), |x, y| {
        let p = source.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        Rgb([0, 1, 2].map(|i| ((u32::from(p[i]) * a + 255 * (255 - a) + 127) / 255) as u8))
    });
    let large = decode(&made[2].data).to_rgb8();
    let expected = DynamicImage::ImageRgb8(flat)
        .resize_exact(1920, 1077, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    assert!(mean_abs_diff(&large, &expected) < 3.0);
    // Corners where the source is (nearly) transparent come out white-ish, not black.
    for (x, y) in [(0, 0), (source.width() - 1, 0), (0, source.height() - 1)] {
        if source.get_pixel(x, y).0[3] < 10 {
            let (ox, oy) = (x * 1919 / (source.width() - 1), y * 1076 / (source.height() - 1));
            let p = large.get_pixel(ox, oy).0;
            assert!(p.iter().all(|&c| c > 225), "corner ({x},{y}) is {p:?}");
        }
    }
}

#[test]
fn decode_only_uses_shrink_on_load() {
    let opts = ThumbOptions::default();
    let limits = Limits::default();
    // 6028×3391 → ½ is the smallest scale that still covers 1920×1080.
    assert_eq!(decode_only(&fixture(KLEIBER), &opts, &limits).unwrap(), (3014, 1696));
    // Only a thumbnail: ⅛.
    let small = ThumbOptions {
        specs: vec![ThumbSpec::new("thumb", 150, 150, Fit::Cover)],
        ..ThumbOptions::default()
    };
    assert_eq!(decode_only(&fixture(KLEIBER), &small, &limits).unwrap(), (754, 424));
    // Stored 3088×2048 (orientation 6): the 1080 px tall output needs the stored width.
    assert_eq!(decode_only(&fixture(FRIENDS), &opts, &limits).unwrap(), (1544, 1024));
}

#[test]
fn webp_output_and_no_avif() {
    let data = fixture(FRIENDS);
    let opts = ThumbOptions {
        formats: vec![OutputFormat::Jpeg, OutputFormat::Webp],
        ..ThumbOptions::default()
    };
    let made = make(&data, &opts);
    let kinds: Vec<(&str, OutputFormat)> = made.iter().map(|d| (d.name.as_str(), d.format)).collect();
    assert_eq!(
        kinds,
        [
            ("thumb", OutputFormat::Jpeg),
            ("thumb", OutputFormat::Webp),
            ("medium", OutputFormat::Jpeg),
            ("medium", OutputFormat::Webp),
            ("large", OutputFormat::Jpeg),
            ("large", OutputFormat::Webp),
        ]
    );
    for pair in made.chunks(2) {
        let jpeg = decode(&pair[0].data).to_rgb8();
        assert_eq!(image::guess_format(&pair[1].data).unwrap(), ImageFormat::WebP);
        let webp = decode(&pair[1].data).to_rgb8();
        assert_eq!(webp.dimensions(), (pair[1].width, pair[1].height));
        assert_eq!(webp.dimensions(), jpeg.dimensions());
        assert!(mean_abs_diff(&jpeg, &webp) < 6.0, "webp and jpeg show the same picture");
    }
    let avif = ThumbOptions {
        formats: vec![OutputFormat::Avif],
        ..ThumbOptions::default()
    };
    let (code, message) = code_of(thumbnails(&data, &avif, &Limits::default(), &mut |_| {}));
    assert_eq!(code, ErrorCode::Unsupported);
    assert!(message.contains("AVIF"), "{message}");
}

#[test]
fn output_format_names() {
    for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Avif] {
        assert_eq!(OutputFormat::parse(format.as_str()), Some(format));
        assert!(format.content_type().starts_with("image/"));
    }
    assert_eq!(OutputFormat::parse("JPG"), Some(OutputFormat::Jpeg));
    assert_eq!(OutputFormat::Jpeg.extension(), "jpg");
    assert_eq!(OutputFormat::parse("gif"), None);
}

// ---------------------------------------------------------------------------------------------
// Probe

#[test]
fn probe_reads_header_exif_and_hash() {
    let limits = Limits::default();
    let friends = probe(&fixture(FRIENDS), &limits).unwrap();
    assert_eq!((friends.width, friends.height), (3088, 2048));
    assert_eq!((friends.display_width, friends.display_height), (2048, 3088));
    assert_eq!(friends.exif.orientation, 6);
    assert!(!friends.progressive);

    let elephants = probe(&fixture(ELEPHANTS), &limits).unwrap();
    assert_eq!(elephants.format, "jpeg");
    assert_eq!(elephants.content_type, "image/jpeg");
    assert!(
        elephants
            .exif
            .camera_make
            .as_deref()
            .unwrap()
            .eq_ignore_ascii_case("sony")
    );
    assert_eq!(elephants.exif.camera_model.as_deref(), Some("DSC-RX100M4"));
    assert!(elephants.exif.taken_at.as_deref().unwrap().starts_with("2020-02-19T"));
    assert!(elephants.progressive);
    assert_eq!(elephants.color_space, "srgb");
    assert_eq!(elephants.bit_depth, 8);
    assert!(!elephants.has_alpha);

    let kleiber = probe(&fixture(KLEIBER), &limits).unwrap();
    assert!(!kleiber.progressive);
    assert_eq!(kleiber.phash.len(), 16);
    assert!(kleiber.phash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!kleiber.dominant_colors.is_empty() && kleiber.dominant_colors.len() <= 5);
    let total: f32 = kleiber.dominant_colors.iter().map(|c| c.share).sum();
    assert!((total - 1.0).abs() < 0.01, "shares add up to {total}");
    assert!(kleiber.dominant_colors.windows(2).all(|w| w[0].share >= w[1].share));
    for color in &kleiber.dominant_colors {
        assert!(color.hex.starts_with('#') && color.hex.len() == 7, "{}", color.hex);
    }

    let png = probe(&fixture(ARC_PNG), &limits).unwrap();
    assert_eq!(png.format, "png");
    assert!(png.has_alpha);
    assert_eq!((png.width, png.height), (2140, 1200));
    // Flattened onto white, mostly transparent: white dominates.
    let top = &png.dominant_colors[0];
    assert!(top.share > 0.3, "{top:?}");
    let rgb = u32::from_str_radix(&top.hex[1..], 16).unwrap();
    assert!(
        rgb >> 16 > 200 && (rgb >> 8 & 0xFF) > 200 && (rgb & 0xFF) > 200,
        "{top:?}"
    );

    // Serializable.
    let json = serde_json::to_string(&elephants).unwrap();
    assert!(json.contains("\"phash\""));
}

#[test]
fn phash_is_stable_across_reencoding_and_differs_between_photos() {
    let limits = Limits::default();
    let kleiber = fixture(KLEIBER);
    let original = probe(&kleiber, &limits).unwrap().phash;
    // The same photo re-encoded at another quality and size.
    let opts = ThumbOptions {
        specs: vec![ThumbSpec::new("large", 1920, 1080, Fit::Inside)],
        quality: 50,
        ..ThumbOptions::default()
    };
    let reencoded = make(&kleiber, &opts);
    let again = probe(&reencoded[0].data, &limits).unwrap().phash;
    let same = phash_distance(&original, &again).unwrap();
    assert!(same <= 4, "re-encoded distance {same}");
    // A progressive file is probed from its DC scans only: same hash as a baseline copy.
    let dragonfly = fixture(DRAGONFLY);
    let baseline = make(&dragonfly, &opts);
    let progressive_hash = probe(&dragonfly, &limits).unwrap().phash;
    let baseline_hash = probe(&baseline[0].data, &limits).unwrap().phash;
    let distance = phash_distance(&progressive_hash, &baseline_hash).unwrap();
    assert!(distance <= 4, "progressive vs baseline distance {distance}");

    let others = [DRAGONFLY, ELEPHANTS, FRIENDS].map(|name| probe(&fixture(name), &limits).unwrap().phash);
    for other in &others {
        let distance = phash_distance(&original, other).unwrap();
        assert!(distance > 12, "different photos are only {distance} apart");
    }
    // The upright friends photo: its hash is that of the rotated pixels, so an upright copy
    // without the tag hashes the same.
    let upright = decode(&fixture(FRIENDS)).rotate90().to_rgb8();
    let upright_hash = probe(&jpeg_of(&upright, 90), &limits).unwrap().phash;
    let distance = phash_distance(&others[2], &upright_hash).unwrap();
    assert!(distance <= 4, "upright copy distance {distance}");
}

// ---------------------------------------------------------------------------------------------
// Colour: CMYK, YCCK, ICC

/// A CMYK JPEG of one solid colour, in Adobe's inverted convention (255 = no ink).
fn cmyk_jpeg(ink: [u8; 4], colorspace: turbojpeg::Colorspace) -> Vec<u8> {
    let (width, height) = (32usize, 16usize);
    let pixels: Vec<u8> = (0..width * height).flat_map(|_| ink.map(|v| 255 - v)).collect();
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(95).unwrap();
    compressor.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    compressor.set_colorspace(colorspace).unwrap();
    compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: pixels.as_slice(),
            width,
            pitch: width * 4,
            height,
            format: turbojpeg::PixelFormat::CMYK,
        })
        .unwrap()
}

#[test]
fn cmyk_and_ycck_jpegs_become_srgb() {
    let limits = Limits::default();
    let opts = ThumbOptions {
        specs: vec![ThumbSpec::new("all", 64, 64, Fit::Inside)],
        ..ThumbOptions::default()
    };
    for (colorspace, name) in [
        (turbojpeg::Colorspace::YCCK, "ycck"),
        (turbojpeg::Colorspace::CMYK, "cmyk"),
    ] {
        // Magenta + yellow ink = red; cyan only = cyan; half black = mid grey.
        for (ink, expected) in [
            ([0, 255, 255, 0], [255, 0, 0]),
            ([255, 0, 0, 0], [0, 255, 255]),
            ([0, 0, 0, 128], [127, 127, 127]),
        ] {
            let data = cmyk_jpeg(ink, colorspace);
            assert_eq!(probe(&data, &limits).unwrap().color_space, name);
            let made = make(&data, &opts);
            assert_eq!((made[0].width, made[0].height), (32, 16));
            let actual = center_pixel(&made[0].data);
            assert!(
                close(actual, expected, 12),
                "{name} ink {ink:?}: got {actual:?}, expected {expected:?}"
            );
        }
    }
}

/// A solid colour converted from `profile` to sRGB by moxcms (the expected value).
fn to_srgb(profile: &moxcms::ColorProfile, rgb: [u8; 3]) -> [u8; 3] {
    let transform = profile
        .create_transform_8bit(
            moxcms::Layout::Rgb,
            &moxcms::ColorProfile::new_srgb(),
            moxcms::Layout::Rgb,
            moxcms::TransformOptions::default(),
        )
        .unwrap();
    let mut out = [0u8; 3];
    transform.transform(&rgb, &mut out).unwrap();
    out
}

#[test]
fn icc_profiled_jpeg_and_png_become_srgb() {
    let limits = Limits::default();
    let opts = ThumbOptions {
        specs: vec![ThumbSpec::new("all", 64, 64, Fit::Inside)],
        ..ThumbOptions::default()
    };
    let stored = [60u8, 170, 90];
    for profile in [
        moxcms::ColorProfile::new_display_p3(),
        moxcms::ColorProfile::new_adobe_rgb(),
    ] {
        let icc = profile.encode().unwrap();
        let expected = to_srgb(&profile, stored);
        // The conversion is visible: the test would fail if it were skipped.
        assert!(!close(expected, stored, 8), "{expected:?} vs {stored:?}");

        let solid = RgbImage::from_pixel(48, 32, Rgb(stored));
        let jpeg = with_icc(&jpeg_of(&solid, 98), &icc);
        let info = probe(&jpeg, &limits).unwrap();
        assert_eq!(info.color_space, "srgb");
        assert!(info.icc_profile.is_some(), "profile description is reported");
        let made = make(&jpeg, &opts);
        assert!(!jpeg_has_metadata(&made[0].data), "no ICC in the output");
        let actual = center_pixel(&made[0].data);
        assert!(
            close(actual, expected, 4),
            "jpeg: got {actual:?}, expected {expected:?}"
        );

        // PNG with an iCCP chunk.
        let mut png = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        image::ImageEncoder::set_icc_profile(&mut encoder, icc.clone()).unwrap();
        image::ImageEncoder::write_image(encoder, solid.as_raw(), 48, 32, image::ExtendedColorType::Rgb8).unwrap();
        let made = make(&png, &opts);
        let actual = center_pixel(&made[0].data);
        assert!(close(actual, expected, 4), "png: got {actual:?}, expected {expected:?}");
    }
    // An sRGB profile changes nothing (fast path).
    let icc = moxcms::ColorProfile::new_srgb().encode().unwrap();
    let solid = RgbImage::from_pixel(48, 32, Rgb(stored));
    let made = make(&with_icc(&jpeg_of(&solid, 98), &icc), &opts);
    assert!(close(center_pixel(&made[0].data), stored, 4));
}

// ---------------------------------------------------------------------------------------------
// Other input formats

/// A 96×64 test card: left half red, right half blue.
fn card() -> RgbImage {
    RgbImage::from_fn(
        96,
        64,
        |x, _| if x < 48 { Rgb([220, 30, 30]) } else { Rgb([30, 30, 220]) },
    )
}

#[test]
fn every_input_format_decodes() {
    let card = DynamicImage::ImageRgb8(card());
    let opts = ThumbOptions {
        specs: vec![ThumbSpec::new("small", 48, 48, Fit::Inside)],
        ..ThumbOptions::default()
    };
    let inputs = [
        ("png", encode_with(&card, ImageFormat::Png)),
        ("gif", encode_with(&card, ImageFormat::Gif)),
        ("tiff", encode_with(&card, ImageFormat::Tiff)),
        ("bmp", encode_with(&card, ImageFormat::Bmp)),
        ("webp", encode_with(&card, ImageFormat::WebP)),
        ("jpeg", jpeg_of(&card.to_rgb8(), 95)),
        (
            "png",
            encode_with(&DynamicImage::ImageRgb16(card.to_rgb16()), ImageFormat::Png),
        ),
        (
            "jpeg",
            encode_with(&DynamicImage::ImageLuma8(card.to_luma8()), ImageFormat::Jpeg),
        ),
    ];
    for (format, data) in inputs {
        let info = probe(&data, &Limits::default()).unwrap_or_else(|e| panic!("{format}: {e:?}"));
        assert_eq!(info.format, format);
        assert_eq!((info.width, info.height), (96, 64));
        let made = make(&data, &opts);
        assert_eq!((made[0].width, made[0].height), (48, 32), "{format}");
        let out = decode(&made[0].data).to_rgb8();
        let (left, right) = (out.get_pixel(8, 16).0, out.get_pixel(40, 16).0);
        if info.color_space == "grayscale" {
            assert!(close(left, [left[0]; 3], 3), "{format} grey stays grey: {left:?}");
        } else {
            assert!(close(left, [220, 30, 30], 16), "{format} left {left:?}");
            assert!(close(right, [30, 30, 220], 16), "{format} right {right:?}");
        }
    }
    let info = probe(
        &encode_with(&DynamicImage::ImageRgb16(card.to_rgb16()), ImageFormat::Png),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(info.bit_depth, 16);
}

#[test]
fn small_images_are_never_enlarged() {
    let data = jpeg_of(&card(), 90);
    let made = make(&data, &ThumbOptions::default());
    let sizes: Vec<(u32, u32)> = made.iter().map(|d| (d.width, d.height)).collect();
    // Cover cuts what fits of the box; inside keeps the image as it is.
    assert_eq!(sizes, [(96, 64), (96, 64), (96, 64)]);
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn expect_code(data: &[u8], code: ErrorCode, what: &str) -> String {
    let (got, message) = code_of(thumbnails(
        data,
        &ThumbOptions::default(),
        &Limits::default(),
        &mut |_| {},
    ));
    assert_eq!(got, code, "{what}: {message}");
    let (got, _) = code_of(probe(data, &Limits::default()));
    assert_eq!(got, code, "{what} (probe)");
    message
}

#[test]
fn empty_garbage_and_unsupported_inputs() {
    let message = expect_code(b"", ErrorCode::BadInput, "empty");
    assert!(message.contains("empty"), "{message}");
    expect_code(b"hello, this is not an image at all", ErrorCode::BadInput, "text");
    // Valid magic numbers followed by garbage.
    for magic in [
        &b"\xFF\xD8\xFF"[..],
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\x10\0\0\0WEBPVP8 ",
        b"II*\0",
        b"BM",
    ] {
        // Garbage that claims no dimensions (a header claiming huge ones is a bomb, below).
        let mut data = magic.to_vec();
        data.extend((0..200u32).map(|i| (i * 37 % 13) as u8));
        expect_code(&data, ErrorCode::BadInput, &format!("garbage after {magic:?}"));
    }
    let mut heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    heic.extend([0u8; 64]);
    let message = expect_code(&heic, ErrorCode::Unsupported, "heic");
    assert!(message.contains("HEIC"), "{message}");
    let mut avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf".to_vec();
    avif.extend([0u8; 64]);
    expect_code(&avif, ErrorCode::Unsupported, "avif input");
}

#[test]
fn truncated_inputs_are_bad_input() {
    let kleiber = fixture(KLEIBER);
    let message = expect_code(&kleiber[..kleiber.len() / 2], ErrorCode::BadInput, "half a jpeg");
    assert!(message.contains("truncated"), "{message}");
    expect_code(&kleiber[..kleiber.len() - 2], ErrorCode::BadInput, "jpeg without EOI");
    expect_code(&kleiber[..300], ErrorCode::BadInput, "jpeg header only");
    let progressive = fixture(DRAGONFLY);
    expect_code(
        &progressive[..progressive.len() * 3 / 4],
        ErrorCode::BadInput,
        "progressive jpeg",
    );
    let png = fixture(ARC_PNG);
    expect_code(&png[..png.len() / 2], ErrorCode::BadInput, "half a png");
    expect_code(&png[..30], ErrorCode::BadInput, "png header only");
}

#[test]
fn cut_and_corrupted_inputs_never_panic() {
    let card = DynamicImage::ImageRgb8(card());
    // (input, how many trailing bytes may be cut while the pixels are still all there: JPEG and
    // PNG detect truncation (a PNG's IEND chunk is 12 bytes), the other decoders may show what
    // they have).
    let inputs = [
        (encode_with(&card, ImageFormat::Png), Some(12)),
        (encode_with(&card, ImageFormat::Gif), None),
        (encode_with(&card, ImageFormat::Tiff), None),
        (encode_with(&card, ImageFormat::Bmp), None),
        (encode_with(&card, ImageFormat::WebP), None),
        (jpeg_of(&card.to_rgb8(), 90), Some(0)),
        (cmyk_jpeg([0, 255, 255, 0], turbojpeg::Colorspace::YCCK), Some(0)),
    ];
    let opts = ThumbOptions::default();
    let limits = Limits::default();
    for (data, spare) in &inputs {
        let step = (data.len() / 40).max(1);
        for cut in (0..data.len()).step_by(step) {
            // Cut: an error (never a panic, never a success with a made-up picture for JPEG/PNG).
            let result = thumbnails(&data[..cut], &opts, &limits, &mut |_| {});
            if let Some(spare) = spare
                && cut < data.len() - spare
            {
                assert!(result.is_err(), "cut at {cut} of {} bytes decoded", data.len());
            }
            if let Err(e) = &result {
                assert!(
                    matches!(e.code, ErrorCode::BadInput | ErrorCode::Unsupported),
                    "cut at {cut}: {e:?}"
                );
            }
            let _ = probe(&data[..cut], &limits);
            // Corrupted byte.
            let mut bad = data.clone();
            bad[cut] ^= 0x5A;
            if let Err(e) = thumbnails(&bad, &opts, &limits, &mut |_| {}) {
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::BadInput | ErrorCode::Unsupported | ErrorCode::TooLarge
                    ),
                    "corrupt at {cut}: {e:?}"
                );
            }
            let _ = probe(&bad, &limits);
        }
    }
}

#[test]
fn zero_size_images_are_bad_input() {
    // JPEG whose frame header says 0×0.
    let mut jpeg = jpeg_of(&card(), 90);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0, 0, 0, 0]);
    let message = expect_code(&jpeg, ErrorCode::BadInput, "0x0 jpeg");
    assert!(message.contains("0x0"), "{message}");
    // PNG whose IHDR says 0×0.
    let mut png = encode_with(&DynamicImage::ImageRgb8(card()), ImageFormat::Png);
    png[16..24].copy_from_slice(&[0; 8]);
    expect_code(&png, ErrorCode::BadInput, "0x0 png");
}

#[test]
fn bombs_are_refused_from_the_header() {
    // PNG: IHDR claims 100000×100000 (10 GP), then IEND.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    png.extend_from_slice(b"\0\0\0\0IEND\xaeB`\x82");
    let message = expect_code(&png, ErrorCode::TooLarge, "png bomb");
    assert!(message.contains("100000x100000"), "{message}");
    assert!(message.contains("100 MP"), "{message}");

    // GIF: logical screen 65535×65535.
    let mut gif = b"GIF89a\xff\xff\xff\xff\0\0\0".to_vec();
    gif.extend_from_slice(b"\x2c\0\0\0\0\xff\xff\xff\xff\0\x02\x02\x44\x01\0\x3b");
    expect_code(&gif, ErrorCode::TooLarge, "gif bomb");

    // WebP VP8X canvas 16384×16384.
    let mut webp = b"RIFF\x30\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    webp.extend_from_slice(&[0xFF, 0x3F, 0x00, 0xFF, 0x3F, 0x00]);
    webp.extend_from_slice(&[0u8; 16]);
    expect_code(&webp, ErrorCode::TooLarge, "webp bomb");

    // JPEG frame header claiming 65000×65000.
    let mut jpeg = jpeg_of(&card(), 90);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    expect_code(&jpeg, ErrorCode::TooLarge, "jpeg bomb");

    // A real photo over tighter limits.
    let kleiber = fixture(KLEIBER);
    let tight = Limits {
        max_pixels: 10_000_000,
        ..Limits::default()
    };
    let err = thumbnails(&kleiber, &ThumbOptions::default(), &tight, &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(err.message.contains("6028x3391"), "{}", err.message);
    let little_memory = Limits {
        max_alloc_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    };
    let err = thumbnails(&kleiber, &ThumbOptions::default(), &little_memory, &mut |_| {}).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(err.message.contains("MiB"), "{}", err.message);
    // The ½-scale decode of the 20 MP photo fits in a third of its full RGB size (61 MB).
    let modest = Limits {
        max_alloc_bytes: 20 * 1024 * 1024,
        ..Limits::default()
    };
    assert_eq!(
        thumbnails(&kleiber, &ThumbOptions::default(), &modest, &mut |_| {})
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn bad_options_are_refused() {
    let data = jpeg_of(&card(), 90);
    let empty_box = ThumbOptions {
        specs: vec![ThumbSpec::new("bad", 0, 100, Fit::Cover)],
        ..ThumbOptions::default()
    };
    let (code, _) = code_of(thumbnails(&data, &empty_box, &Limits::default(), &mut |_| {}));
    assert_eq!(code, ErrorCode::BadInput);
    let no_format = ThumbOptions {
        formats: Vec::new(),
        ..ThumbOptions::default()
    };
    let (code, _) = code_of(thumbnails(&data, &no_format, &Limits::default(), &mut |_| {}));
    assert_eq!(code, ErrorCode::BadInput);
}

/// EXIF with GPS (written here with kamadak-exif's writer): probe reports the position, signed
/// by its references, and no derivative carries it (nor any other metadata).
#[test]
fn gps_is_probed_and_never_copied_into_derivatives() {
    use exif::{Field, In, Rational, Tag, Value};
    let dms = |d: u32, m: u32, s_hundredths: u32| {
        Value::Rational(vec![
            Rational { num: d, denom: 1 },
            Rational { num: m, denom: 1 },
            Rational {
                num: s_hundredths,
                denom: 100,
            },
        ])
    };
    let field = |tag: Tag, value: Value| Field {
        tag,
        ifd_num: In::PRIMARY,
        value,
    };
    let fields = [
        field(Tag::Make, Value::Ascii(vec![b"TestCam".to_vec()])),
        field(Tag::GPSLatitudeRef, Value::Ascii(vec![b"S".to_vec()])),
        field(Tag::GPSLatitude, dms(33, 51, 3360)),
        field(Tag::GPSLongitudeRef, Value::Ascii(vec![b"E".to_vec()])),
        field(Tag::GPSLongitude, dms(151, 12, 5520)),
        field(Tag::GPSAltitudeRef, Value::Byte(vec![0])),
        field(
            Tag::GPSAltitude,
            Value::Rational(vec![Rational { num: 585, denom: 10 }]),
        ),
    ];
    let mut writer = exif::experimental::Writer::new();
    for f in &fields {
        writer.push_field(f);
    }
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false).unwrap();
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff.into_inner());
    let photo = with_segment(&jpeg_of(&card(), 90), 0xE1, &app1);

    let info = probe(&photo, &Limits::default()).unwrap();
    assert_eq!(info.exif.camera_make.as_deref(), Some("TestCam"));
    let gps = info.exif.gps.expect("GPS read");
    assert!(
        (gps.latitude - -(33.0 + 51.0 / 60.0 + 33.6 / 3600.0)).abs() < 1e-6,
        "{gps:?}"
    );
    assert!(
        (gps.longitude - (151.0 + 12.0 / 60.0 + 55.2 / 3600.0)).abs() < 1e-6,
        "{gps:?}"
    );
    assert_eq!(gps.altitude, Some(58.5));

    for derivative in make(&photo, &ThumbOptions::default()) {
        assert!(
            !jpeg_has_metadata(&derivative.data),
            "{} carries metadata",
            derivative.name
        );
        let text = String::from_utf8_lossy(&derivative.data);
        assert!(
            !text.contains("Exif") && !text.contains("TestCam"),
            "{}",
            derivative.name
        );
    }
}
