//! Min/max peaks per block of `samples_per_pixel` frames, computed the way BBC audiowaveform's
//! `WaveformGenerator` does: 16-bit samples, channels averaged with integer division for a
//! mixed-down waveform, the last partial block kept.

/// Accumulates peaks from interleaved 16-bit frames, one block at a time, so that memory holds
/// the peaks and never the decoded audio.
pub(crate) struct PeakBuilder {
    samples_per_pixel: u32,
    in_channels: usize,
    split: bool,
    count: u32,
    min: Vec<i16>,
    max: Vec<i16>,
    /// Per pixel, per output channel: min then max, at 16-bit resolution.
    data: Vec<i16>,
    frames: u64,
}

/// The finished peaks of one waveform.
pub(crate) struct Peaks {
    /// Per pixel, per output channel: min then max, at 16-bit resolution.
    pub data: Vec<i16>,
    pub out_channels: usize,
    pub length: usize,
    pub frames: u64,
}

impl PeakBuilder {
    /// `in_channels` must be at least 1; `samples_per_pixel` at least 1.
    pub fn new(samples_per_pixel: u32, in_channels: usize, split: bool) -> Self {
        let out = if split { in_channels } else { 1 };
        Self {
            samples_per_pixel: samples_per_pixel.max(1),
            in_channels: in_channels.max(1),
            split,
            count: 0,
            min: vec![i16::MAX; out],
            max: vec![i16::MIN; out],
            data: Vec::new(),
            frames: 0,
        }
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Adds interleaved frames; a trailing partial frame is ignored.
    pub fn push(&mut self, interleaved: &[i16]) {
        for frame in interleaved.chunks_exact(self.in_channels) {
            if self.split {
                for (ch, &s) in frame.iter().enumerate() {
                    self.min[ch] = self.min[ch].min(s);
                    self.max[ch] = self.max[ch].max(s);
                }
            } else {
                let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
                // Integer division truncates toward zero, as in audiowaveform; the average of
                // i16 values always fits an i16.
                let mixed = (sum / self.in_channels as i32).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
                self.min[0] = self.min[0].min(mixed);
                self.max[0] = self.max[0].max(mixed);
            }
            self.frames += 1;
            self.count += 1;
            if self.count == self.samples_per_pixel {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        for (min, max) in self.min.iter_mut().zip(self.max.iter_mut()) {
            self.data.push(*min);
            self.data.push(*max);
            *min = i16::MAX;
            *max = i16::MIN;
        }
        self.count = 0;
    }

    pub fn finish(mut self) -> Peaks {
        if self.count > 0 {
            self.flush();
        }
        let out_channels = self.min.len();
        let length = self.data.len() / (2 * out_channels);
        Peaks {
            data: self.data,
            out_channels,
            length,
            frames: self.frames,
        }
    }
}

/// A 16-bit peak value at the requested resolution: 8-bit values are the 16-bit ones divided by
/// 256 (truncating toward zero, as audiowaveform writes them), so they stay in -128..=127.
pub(crate) fn scale(value: i16, bits: u8) -> i16 {
    if bits == 8 { value / 256 } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_blocks_and_partial_last_block() {
        let mut b = PeakBuilder::new(3, 1, false);
        b.push(&[1, -2, 3, 10, 20]);
        b.push(&[-30]);
        b.push(&[7]);
        let p = b.finish();
        assert_eq!(p.frames, 7);
        assert_eq!(p.length, 3);
        assert_eq!(p.data, vec![-2, 3, -30, 20, 7, 7]);
    }

    #[test]
    fn mixdown_averages_and_split_keeps_channels() {
        let mut mixed = PeakBuilder::new(2, 2, false);
        mixed.push(&[100, 300, -5, 0]);
        let p = mixed.finish();
        // (100 + 300) / 2 = 200, (-5 + 0) / 2 = -2 (toward zero)
        assert_eq!(p.data, vec![-2, 200]);
        assert_eq!(p.out_channels, 1);

        let mut split = PeakBuilder::new(2, 2, true);
        split.push(&[100, 300, -5, 0, 1, 1]);
        let p = split.finish();
        assert_eq!(p.out_channels, 2);
        assert_eq!(p.length, 2);
        assert_eq!(p.data, vec![-5, 100, 0, 300, 1, 1, 1, 1]);
    }

    #[test]
    fn eight_bit_scaling_stays_in_range() {
        assert_eq!(scale(i16::MIN, 8), -128);
        assert_eq!(scale(i16::MAX, 8), 127);
        assert_eq!(scale(-255, 8), 0);
        assert_eq!(scale(-1234, 16), -1234);
    }
}
