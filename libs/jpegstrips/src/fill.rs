//! A buffer filled front to back on one thread while other threads read the part already
//! filled, in one piece and without copying: the decoder writes rows below the filled mark and
//! publishes them, the resizers read above it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Splits `buffer` into its writing end and a reading end (which can be cloned, one per reader).
pub fn fill(buffer: &mut [u8]) -> (Filler<'_>, Filled<'_>) {
    let filled = Arc::new(AtomicUsize::new(0));
    let start = buffer.as_mut_ptr();
    let len = buffer.len();
    (
        Filler {
            start,
            size: len,
            at: 0,
            filled: Arc::clone(&filled),
            _buffer: PhantomData,
        },
        Filled {
            start,
            filled,
            _buffer: PhantomData,
        },
    )
}

/// The writing end: hands out the unfilled part and moves the filled mark.
pub struct Filler<'a> {
    start: *mut u8,
    size: usize,
    /// The filled mark as this end knows it (the only end that moves it).
    at: usize,
    filled: Arc<AtomicUsize>,
    _buffer: PhantomData<&'a mut [u8]>,
}

/// The reading end: the part filled so far.
#[derive(Clone)]
pub struct Filled<'a> {
    start: *const u8,
    filled: Arc<AtomicUsize>,
    _buffer: PhantomData<&'a [u8]>,
}

// SAFETY: the two ends never reach the same bytes at the same time: the writer only writes at
// or above the filled mark, readers only read below it, and the mark only moves up, published
// with release ordering after the bytes below it were written (readers load it with acquire).
// The bytes are `u8`, which is Send and Sync.
unsafe impl Send for Filler<'_> {}
// SAFETY: as for Filler.
unsafe impl Send for Filled<'_> {}
// SAFETY: as for Filler; `Filled` only hands out shared access to bytes no one writes again.
unsafe impl Sync for Filled<'_> {}

impl Filler<'_> {
    /// The part not filled yet.
    pub fn unfilled(&mut self) -> &mut [u8] {
        // SAFETY: `at..size` lies in the buffer, which outlives 'a; no reader reaches above the
        // filled mark (`at`), and the `&mut self` borrow keeps this the only slice handed out.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(self.at), self.size - self.at) }
    }

    /// Marks the next `bytes` of [`Filler::unfilled`] as filled, for the readers to see.
    /// Panics when that passes the end of the buffer.
    pub fn advance(&mut self, bytes: usize) {
        assert!(bytes <= self.size - self.at, "filled past the end of the buffer");
        self.at += bytes;
        self.filled.store(self.at, Ordering::Release);
    }

    /// How many bytes are filled.
    pub fn filled(&self) -> usize {
        self.at
    }

    /// Whether the whole buffer is filled.
    pub fn is_full(&self) -> bool {
        self.at == self.size
    }
}

impl<'a> Filled<'a> {
    /// The filled part: it can only grow, and what it holds never changes again.
    pub fn get(&self) -> &'a [u8] {
        let filled = self.filled.load(Ordering::Acquire);
        // SAFETY: the bytes below the mark were written before the mark was published (release
        // store, acquire load) and are never written again; the buffer outlives 'a.
        unsafe { std::slice::from_raw_parts(self.start, filled) }
    }
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn readers_see_what_was_filled_and_only_that() {
        let mut buffer = vec![0u8; 64];
        let (mut filler, filled) = fill(&mut buffer);
        assert!(filled.get().is_empty());
        filler.unfilled()[..10].fill(7);
        assert!(filled.get().is_empty(), "written but not yet published");
        filler.advance(10);
        assert_eq!(filled.get(), &[7u8; 10][..]);
        assert_eq!(filler.unfilled().len(), 54);
        filler.unfilled().fill(9);
        filler.advance(54);
        assert!(filler.is_full());
        let all = filled.get();
        assert_eq!(&all[..10], &[7u8; 10][..]);
        assert_eq!(&all[10..], &[9u8; 54][..]);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn filling_past_the_end_panics() {
        let mut buffer = vec![0u8; 8];
        let (mut filler, _) = fill(&mut buffer);
        filler.advance(9);
    }

    #[test]
    fn another_thread_reads_while_this_one_fills() {
        let mut buffer = vec![0u8; 1 << 16];
        let (mut filler, filled) = fill(&mut buffer);
        let (sent, received) = std::sync::mpsc::channel::<usize>();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut checked = 0;
                for upto in received {
                    let part = filled.get();
                    assert!(part.len() >= upto);
                    for (i, &byte) in part.iter().enumerate().take(upto).skip(checked) {
                        assert_eq!(byte, (i / 256) as u8);
                    }
                    checked = upto;
                }
                checked
            });
            for chunk in 0..256 {
                let at = filler.filled();
                for (i, byte) in filler.unfilled()[..256].iter_mut().enumerate() {
                    *byte = ((at + i) / 256) as u8;
                }
                filler.advance(256);
                assert_eq!(chunk, at / 256);
                sent.send(filler.filled()).expect("reader alive");
            }
            drop(sent);
            assert_eq!(reader.join().expect("reader"), 1 << 16);
        });
    }
}
