//! Changing mappings in place: the remap onto the same file, the neutering anonymous remap,
//! pointing a descriptor at /dev/null.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Replaces the shared mapping at `addr .. addr + len` by a new shared mapping of `file` at
/// `offset` — the same file, so the same pages: the contents do not change, only the name
/// `/proc/PID/maps` shows for the range (the name `file` was opened by). Maps the new range
/// elsewhere first and moves it over the old one with `mremap(MREMAP_FIXED)`, so on any
/// failure the old mapping is left as it was.
///
/// # Safety
///
/// `addr .. addr + len` must be a whole shared read-write mapping owned by the caller of the
/// same file `file` names, at `offset`.
pub(crate) unsafe fn remap_same_file(addr: *mut u8, len: usize, file: &File, offset: u64) -> bool {
    // SAFETY: a new mapping at an address of the kernel's choosing; nothing aliases it yet.
    let new = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if new == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: moves our new mapping onto the caller's range (see above: the same pages of the
    // same file, so every reference into the range stays valid and sees the same memory);
    // on failure the old mapping is untouched and the new one is unmapped.
    unsafe {
        let moved = libc::mremap(
            new,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            addr.cast::<libc::c_void>(),
        );
        if moved == libc::MAP_FAILED {
            libc::munmap(new, len);
            return false;
        }
    }
    true
}

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
