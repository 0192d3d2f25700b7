//! The few EXIF fields the product cares about.

use std::io::Cursor;

use crate::{ExifSummary, Gps};

/// Reads the EXIF summary. `raw` is the TIFF structure of a JPEG's APP1 segment when the header
/// parser already found it; otherwise the container is searched. Never fails: unreadable EXIF
/// is an empty summary.
pub(crate) fn read(data: &[u8], raw: Option<&[u8]>) -> ExifSummary {
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    let parsed = match raw {
        Some(raw) => reader.read_raw(raw.to_vec()),
        None => reader.read_from_container(&mut Cursor::new(data)),
    }
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
        lens_model: ascii_field(&exif, exif::Tag::LensModel),
        taken_at: taken_at(&exif),
        gps: gps(&exif),
    }
}

/// Only the orientation (what [`crate::thumbnails`] needs).
pub(crate) fn orientation(data: &[u8], raw: Option<&[u8]>) -> u32 {
    if raw.is_none() && !may_have_exif(data) {
        return 0;
    }
    read(data, raw).orientation
}

/// Formats whose EXIF the container reader can find (JPEG EXIF comes from the header parser).
fn may_have_exif(data: &[u8]) -> bool {
    data.starts_with(b"\x89PNG")
        || data.starts_with(b"RIFF")
        || data.starts_with(b"II*\0")
        || data.starts_with(b"MM\0*")
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

/// Degrees from a GPS rational triple (degrees, minutes, seconds).
fn degrees(exif: &exif::Exif, tag: exif::Tag) -> Option<f64> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    let exif::Value::Rational(parts) = &field.value else {
        return None;
    };
    let part = |i: usize| parts.get(i).filter(|r| r.denom != 0).map(|r| r.to_f64());
    let value = part(0)? + part(1).unwrap_or(0.0) / 60.0 + part(2).unwrap_or(0.0) / 3600.0;
    value.is_finite().then_some(value)
}

fn reference(exif: &exif::Exif, tag: exif::Tag) -> Option<u8> {
    let field = exif.get_field(tag, exif::In::PRIMARY)?;
    match &field.value {
        exif::Value::Ascii(parts) => parts.first()?.first().copied(),
        _ => None,
    }
}

fn gps(exif: &exif::Exif) -> Option<Gps> {
    let mut latitude = degrees(exif, exif::Tag::GPSLatitude)?;
    let mut longitude = degrees(exif, exif::Tag::GPSLongitude)?;
    if !(0.0..=90.0).contains(&latitude) || !(0.0..=180.0).contains(&longitude) {
        return None;
    }
    if matches!(reference(exif, exif::Tag::GPSLatitudeRef), Some(b'S' | b's')) {
        latitude = -latitude;
    }
    if matches!(reference(exif, exif::Tag::GPSLongitudeRef), Some(b'W' | b'w')) {
        longitude = -longitude;
    }
    let altitude = exif
        .get_field(exif::Tag::GPSAltitude, exif::In::PRIMARY)
        .and_then(|f| match &f.value {
            exif::Value::Rational(parts) => parts.first().filter(|r| r.denom != 0).map(|r| r.to_f64()),
            _ => None,
        })
        .map(|metres| {
            let below = exif
                .get_field(exif::Tag::GPSAltitudeRef, exif::In::PRIMARY)
                .and_then(|f| f.value.get_uint(0))
                == Some(1);
            if below { -metres } else { metres }
        });
    Some(Gps {
        latitude,
        longitude,
        altitude,
    })
}
