//! Row-by-row JPEG decoding through libjpeg-turbo's libjpeg API (csrc/jpeg_strips.c, built by
//! build.rs against the library turbojpeg-sys builds). TurboJPEG's own API only decodes whole
//! images; reading strips lets the resizing of the first rows run while the rest decodes. The rows
//! go into one buffer that other threads read as it fills ([`fill()`]).

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulong};
use std::marker::PhantomData;
use std::ptr::NonNull;

use turbojpeg::ScalingFactor;

mod fill;

pub use fill::{Filled, Filler, fill};

/// The C side's decoder state (a `jpeg_decompress_struct` and its error handler).
#[repr(C)]
struct RawJpeg {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn mm_jpeg_new() -> *mut RawJpeg;
    fn mm_jpeg_free(jpeg: *mut RawJpeg);
    fn mm_jpeg_start(
        jpeg: *mut RawJpeg,
        data: *const u8,
        size: c_ulong,
        scale_num: c_uint,
        scale_denom: c_uint,
        width: *mut c_uint,
        height: *mut c_uint,
    ) -> c_int;
    fn mm_jpeg_read(jpeg: *mut RawJpeg, rows: *mut u8, pitch: usize, max_rows: c_uint, read: *mut c_uint) -> c_int;
    fn mm_jpeg_finish(jpeg: *mut RawJpeg) -> c_int;
    fn mm_jpeg_warned(jpeg: *const RawJpeg) -> c_int;
    fn mm_jpeg_message(jpeg: *const RawJpeg) -> *const c_char;
}

/// A JPEG being decoded to RGB8, top row first. Errors are libjpeg's messages.
pub struct StripDecoder<'a> {
    raw: NonNull<RawJpeg>,
    width: u32,
    height: u32,
    row: u32,
    /// libjpeg reads from `data` until the decoder is dropped.
    _data: PhantomData<&'a [u8]>,
}

impl<'a> StripDecoder<'a> {
    /// Reads the header and starts decoding at `factor` (a progressive file has all its scans
    /// decoded when this returns).
    pub fn start(data: &'a [u8], factor: ScalingFactor) -> Result<Self, String> {
        let too_large = || "JPEG is too large".to_owned();
        let size = c_ulong::try_from(data.len()).map_err(|_| too_large())?;
        let num = c_uint::try_from(factor.num()).map_err(|_| too_large())?;
        let denom = c_uint::try_from(factor.denom()).map_err(|_| too_large())?;
        // SAFETY: mm_jpeg_new has no preconditions; NULL means out of memory.
        let raw = NonNull::new(unsafe { mm_jpeg_new() }).ok_or_else(|| "out of memory".to_owned())?;
        let mut decoder = Self {
            raw,
            width: 0,
            height: 0,
            row: 0,
            _data: PhantomData,
        };
        let (mut width, mut height): (c_uint, c_uint) = (0, 0);
        // SAFETY: `raw` is live; `data` outlives the decoder ('a), which is all libjpeg's memory
        // source needs; the out-pointers are valid.
        let status = unsafe { mm_jpeg_start(raw.as_ptr(), data.as_ptr(), size, num, denom, &mut width, &mut height) };
        if status != 0 {
            return Err(decoder.message());
        }
        decoder.width = width;
        decoder.height = height;
        Ok(decoder)
    }

    /// Output width and height.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Decodes the next rows into `rows` (whole rows of `width`×3 bytes, as many as fit and
    /// remain); returns how many.
    pub fn read(&mut self, rows: &mut [u8]) -> Result<u32, String> {
        let pitch = self.width as usize * 3;
        let left = self.height - self.row;
        if pitch == 0 || left == 0 {
            return Ok(0);
        }
        let fit = u32::try_from(rows.len() / pitch).unwrap_or(u32::MAX).min(left);
        let mut read: c_uint = 0;
        // SAFETY: `rows` holds `fit` rows of `pitch` bytes, which is all libjpeg writes.
        let status = unsafe { mm_jpeg_read(self.raw.as_ptr(), rows.as_mut_ptr(), pitch, fit, &mut read) };
        if status != 0 {
            return Err(self.message());
        }
        self.row += read;
        Ok(read)
    }

    /// Ends the decode after the last row; `Ok(Some(warning))` when libjpeg warned along the way
    /// (corrupt data it worked around, a premature end of the file).
    pub fn finish(self) -> Result<Option<String>, String> {
        // SAFETY: `raw` is live.
        if unsafe { mm_jpeg_finish(self.raw.as_ptr()) } != 0 {
            return Err(self.message());
        }
        // SAFETY: `raw` is live.
        let warned = unsafe { mm_jpeg_warned(self.raw.as_ptr()) } != 0;
        Ok(warned.then(|| self.message()))
    }

    fn message(&self) -> String {
        // SAFETY: the C side keeps a NUL-terminated message buffer in the live state.
        unsafe { CStr::from_ptr(mm_jpeg_message(self.raw.as_ptr())) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for StripDecoder<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from mm_jpeg_new and is freed once.
        unsafe { mm_jpeg_free(self.raw.as_ptr()) }
    }
}
