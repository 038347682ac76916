//! Changing mappings in place: the neutering anonymous remap, pointing a descriptor at
//! /dev/null.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Makes `file`'s descriptor refer to /dev/null instead (`dup2`, atomic for concurrent
/// users of the descriptor number): frees the file it named while the `File` stays valid.
pub(crate) fn point_at_dev_null(file: &File) {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).open("/dev/null") {
        // SAFETY: both descriptors are open and ours; dup2 atomically replaces the second,
        // which `file` keeps owning (it closes /dev/null on drop).
        unsafe {
            libc::dup2(null.as_raw_fd(), file.as_raw_fd());
        }
    }
}

/// Replaces the pages at `addr .. addr + len` in place with anonymous private zeroed memory
/// (`mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)`): the range stays mapped, but no longer
/// shows the file. On failure the old mapping is left as it was.
///
/// # Safety
///
/// `addr .. addr + len` must be a whole mapping (or whole pages of one) owned by the caller,
/// and nothing may hold a Rust reference to that memory whose type assumes its contents
/// other than "any bytes" (atomics and integers are fine: the new contents are zeroes).
pub(crate) unsafe fn remap_anonymous(addr: *mut u8, len: usize) {
    // SAFETY: the caller owns the range (see above); MAP_FIXED replaces exactly those pages
    // with readable, writable memory, so the range stays valid at the same address.
    unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
    }
}
