//! The edit list of an MP4 audio track, which symphonia 0.6 does not apply: AAC encoders put
//! their priming samples (1024 frames for ffmpeg and Apple) before the audio and an edit that
//! skips them, and trailing padding after it. Without the edit the waveform would start 21 ms
//! late and run 20-40 ms long.

/// Which part of a track's decoded frames is the presentation, in the track's media timescale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edit {
    pub skip: u64,
    /// `None`: up to the end.
    pub keep: Option<u64>,
    /// The media timescale (`mdhd`), usually the sample rate.
    pub timescale: u32,
}

impl Edit {
    /// The edit in frames at the decoded sample rate (HE-AAC decodes at twice the timescale).
    pub fn in_frames(self, sample_rate: u32) -> (u64, Option<u64>) {
        let scale = |v: u64| (u128::from(v) * u128::from(sample_rate) / u128::from(self.timescale.max(1))) as u64;
        (scale(self.skip), self.keep.map(scale))
    }
}

/// One box: its type and its payload.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as u64;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)),
            n => (8, n),
        };
        if size < header || size > data.len() as u64 {
            return None;
        }
        let body = &data[header as usize..size as usize];
        data = &data[size as usize..];
        Some((kind, body))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, body)| body)
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// The timescale of an `mvhd` or `mdhd` box.
fn timescale(full_box: &[u8]) -> Option<u32> {
    let at = if *full_box.first()? == 1 { 20 } else { 12 };
    be_u32(full_box, at).filter(|&t| t > 0)
}

/// The edit of the sound track `track_id`, if the file is an MP4 that has one. Empty edits (a
/// start delay) are ignored; of several media edits only the first is honoured.
pub(crate) fn audio_edit(data: &[u8], track_id: u32) -> Option<Edit> {
    let moov = child(data, b"moov")?;
    let movie_timescale = timescale(child(moov, b"mvhd")?)?;
    for (kind, trak) in boxes(moov) {
        if &kind != b"trak" {
            continue;
        }
        let tkhd = child(trak, b"tkhd")?;
        let id = be_u32(tkhd, if *tkhd.first()? == 1 { 20 } else { 12 })?;
        if id != track_id {
            continue;
        }
        let mdia = child(trak, b"mdia")?;
        let media_timescale = timescale(child(mdia, b"mdhd")?)?;
        let elst = child(child(trak, b"edts")?, b"elst")?;
        let version = *elst.first()?;
        let count = be_u32(elst, 4)? as usize;
        let entry_len = if version == 1 { 20 } else { 12 };
        for i in 0..count.min(16) {
            let at = 8 + i * entry_len;
            let (duration, media_time) = if version == 1 {
                (be_u64(elst, at)?, be_u64(elst, at + 8)? as i64)
            } else {
                (u64::from(be_u32(elst, at)?), i64::from(be_u32(elst, at + 4)? as i32))
            };
            if media_time < 0 {
                continue;
            }
            let keep = (duration > 0)
                .then(|| (u128::from(duration) * u128::from(media_timescale) / u128::from(movie_timescale)) as u64);
            return Some(Edit {
                skip: media_time as u64,
                keep,
                timescale: media_timescale,
            });
        }
        return None;
    }
    None
}

/// Cuts decoded frames to an edit: drops the first `skip`, keeps at most `keep`.
pub(crate) struct Trim {
    skip: u64,
    keep: Option<u64>,
}

impl Trim {
    pub fn new(skip: u64, keep: Option<u64>) -> Self {
        Self { skip, keep }
    }

    pub fn none() -> Self {
        Self::new(0, None)
    }

    /// The part of `interleaved` (frames of `channels` samples) inside the edit.
    pub fn apply<'a>(&mut self, interleaved: &'a [i16], channels: usize) -> &'a [i16] {
        let frames = (interleaved.len() / channels.max(1)) as u64;
        let skipped = self.skip.min(frames);
        self.skip -= skipped;
        let mut kept = frames - skipped;
        if let Some(keep) = self.keep.as_mut() {
            kept = kept.min(*keep);
            *keep -= kept;
        }
        let start = skipped as usize * channels;
        &interleaved[start..start + kept as usize * channels]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn header_with_timescale(timescale: u32) -> Vec<u8> {
        let mut b = vec![0u8; 12];
        b.extend_from_slice(&timescale.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn reads_the_edit_of_the_track() {
        let mut tkhd = vec![0u8; 12];
        tkhd.extend_from_slice(&2u32.to_be_bytes());
        let mut elst = vec![0, 0, 0, 0, 0, 0, 0, 2];
        elst.extend_from_slice(&500u32.to_be_bytes()); // empty edit
        elst.extend_from_slice(&(-1i32).to_be_bytes());
        elst.extend_from_slice(&[0, 1, 0, 0]);
        elst.extend_from_slice(&5000u32.to_be_bytes()); // 5 s at 1000
        elst.extend_from_slice(&1024u32.to_be_bytes());
        elst.extend_from_slice(&[0, 1, 0, 0]);
        let trak = [
            mp4_box(b"tkhd", &tkhd),
            mp4_box(b"edts", &mp4_box(b"elst", &elst)),
            mp4_box(b"mdia", &mp4_box(b"mdhd", &header_with_timescale(48000))),
        ]
        .concat();
        let moov = [mp4_box(b"mvhd", &header_with_timescale(1000)), mp4_box(b"trak", &trak)].concat();
        let file = [mp4_box(b"ftyp", b"isom"), mp4_box(b"moov", &moov)].concat();
        let edit = audio_edit(&file, 2).expect("edit");
        assert_eq!(
            edit,
            Edit {
                skip: 1024,
                keep: Some(240_000),
                timescale: 48000
            }
        );
        assert_eq!(edit.in_frames(96000), (2048, Some(480_000)));
        assert_eq!(audio_edit(&file, 1), None);
        assert_eq!(audio_edit(&file[..file.len() - 3], 2), None);
    }

    #[test]
    fn trim_spans_buffers() {
        let mut t = Trim::new(3, Some(4));
        assert_eq!(t.apply(&[1, 2], 1), &[] as &[i16]);
        assert_eq!(t.apply(&[3, 4, 5, 6], 1), &[4, 5, 6]);
        assert_eq!(t.apply(&[7, 8, 9], 1), &[7]);
        let mut stereo = Trim::new(1, None);
        assert_eq!(stereo.apply(&[1, 1, 2, 2], 2), &[2, 2]);
    }
}
