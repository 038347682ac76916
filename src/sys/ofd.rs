//! Byte-range write locks on a file, released by the kernel when the holder
//! dies: the payload writer lock.
//!
//! On Linux (and Android) these are **open file description (OFD) locks**
//! (`F_OFD_SETLK`/`F_OFD_SETLKW`): they belong to the open file description
//! (one `open(2)`), not to the process, so
//!
//! * two `File::open`s of the same file exclude each other even inside one
//!   process, and closing an unrelated descriptor of the file does not drop
//!   the lock (both unlike classic POSIX locks);
//! * the kernel releases the lock when the last descriptor of that open file
//!   description is closed — in particular when the holding process dies,
//!   even by `SIGKILL`;
//! * **threads sharing one `File` share its locks**: a second
//!   `lock_range` on the same `File` succeeds at once, and dropping either
//!   guard unlocks the range for both. Callers that share a `File` between
//!   threads must serialise them with an in-process mutex as well;
//! * a child created by `fork` shares the parent's open file descriptions,
//!   hence its locks: a guard must not be dropped in a child that inherited
//!   it (it would unlock the parent's range). Guards are short-lived; do not
//!   fork while holding one.
//!
//! On other Unix targets the fallback is classic POSIX record locks
//! (`F_SETLK`/`F_SETLKW`): they are per *process*, so they do **not** exclude
//! other handles or threads of the same process, and closing *any*
//! descriptor of the file in the process releases them. There, in-process
//! serialisation is entirely the caller's job.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

#[cfg(any(target_os = "linux", target_os = "android"))]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(any(target_os = "linux", target_os = "android"))]
const SETLKW: libc::c_int = libc::F_OFD_SETLKW;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SETLK: libc::c_int = libc::F_SETLK;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SETLKW: libc::c_int = libc::F_SETLKW;

/// A held write lock on `[offset, offset + len)` of a file (`len == 0`: to
/// the end of the file, however it grows). Unlocks on drop.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub(crate) struct OfdGuard<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
}

/// A `flock` record for `[offset, offset + len)`.
fn record(lock_type: libc::c_int, offset: u64, len: u64) -> io::Result<libc::flock> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "lock range out of range");
    let start = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let length = libc::off_t::try_from(len).map_err(|_| invalid())?;
    start.checked_add(length).ok_or_else(invalid)?;
    // SAFETY: `flock` is a plain C struct of integers (plus padding on some
    // targets) for which all-zero bytes are a valid value; zeroing also sets
    // `l_pid = 0`, which OFD locks require.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock_type as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start;
    fl.l_len = length;
    Ok(fl)
}

/// `fcntl(fd, cmd, &fl)`, retried on `EINTR`.
fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: `file` is an open descriptor for the duration of the call
        // and `fl` points to a valid, initialised `flock` that the kernel
        // only reads for these commands.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, std::ptr::from_ref(fl)) };
        if rc != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes the write lock on `[offset, offset + len)` of `file` (`len == 0`:
/// to the end of the file), waiting as long as another open file description
/// holds a conflicting lock. Interrupted waits are resumed.
pub(crate) fn lock_range(file: &File, offset: u64, len: u64) -> io::Result<OfdGuard<'_>> {
    let fl = record(libc::F_WRLCK as libc::c_int, offset, len)?;
    fcntl_lock(file, SETLKW, &fl)?;
    Ok(OfdGuard { file, offset, len })
}

/// Takes the write lock on `[offset, offset + len)` of `file` if nobody else
/// holds a conflicting one; `Ok(None)` if somebody does.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn try_lock_range(
    file: &File,
    offset: u64,
    len: u64,
) -> io::Result<Option<OfdGuard<'_>>> {
    let fl = record(libc::F_WRLCK as libc::c_int, offset, len)?;
    match fcntl_lock(file, SETLK, &fl) {
        Ok(()) => Ok(Some(OfdGuard { file, offset, len })),
        Err(e) if matches!(e.raw_os_error(), Some(code) if code == libc::EAGAIN || code == libc::EACCES) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl OfdGuard<'_> {
    /// The locked range as `(offset, len)`.
    #[allow(dead_code)]
    pub(crate) fn range(&self) -> (u64, u64) {
        (self.offset, self.len)
    }
}

impl Drop for OfdGuard<'_> {
    fn drop(&mut self) {
        // The range was valid when locked, so building the record cannot
        // fail; an unlock error (e.g. the descriptor was closed, which
        // already released the lock) leaves nothing to do.
        if let Ok(fl) = record(libc::F_UNLCK as libc::c_int, self.offset, self.len) {
            let _ = fcntl_lock(self.file, SETLK, &fl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary file removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "lockticket-ofd-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, [0u8; 64]).unwrap();
            TempFile(path)
        }

        fn open(&self) -> File {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0)
                .unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn separate_opens_exclude_each_other() {
        let tmp = TempFile::new();
        let (a, b) = (tmp.open(), tmp.open());
        let guard = lock_range(&a, 8, 16).unwrap();
        assert_eq!(guard.range(), (8, 16));
        assert!(try_lock_range(&b, 8, 16).unwrap().is_none());
        assert!(try_lock_range(&b, 0, 9).unwrap().is_none(), "overlap");
        assert!(try_lock_range(&b, 0, 0).unwrap().is_none(), "to EOF");
        // Disjoint ranges do not conflict.
        let other = try_lock_range(&b, 24, 8).unwrap();
        assert!(other.is_some());
        drop(other);
        drop(guard);
        let again = try_lock_range(&b, 8, 16).unwrap();
        assert!(again.is_some());
        assert!(try_lock_range(&a, 8, 16).unwrap().is_none());
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn closing_the_file_releases_the_lock() {
        let tmp = TempFile::new();
        let b = tmp.open();
        {
            let a = tmp.open();
            let guard = lock_range(&a, 0, 1).unwrap();
            assert!(try_lock_range(&b, 0, 1).unwrap().is_none());
            std::mem::forget(guard);
        }
        assert!(try_lock_range(&b, 0, 1).unwrap().is_some());
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn blocking_lock_waits_for_release() {
        let tmp = TempFile::new();
        let (a, b) = (tmp.open(), tmp.open());
        let guard = lock_range(&a, 0, 8).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = lock_range(&b, 0, 8).unwrap();
                tx.send(()).unwrap();
                drop(g);
            });
            // The waiter cannot have got the lock while `guard` lives.
            assert!(rx.try_recv().is_err());
            drop(guard);
            rx.recv().unwrap();
        });
    }

    #[test]
    fn rejects_ranges_beyond_off_t() {
        let tmp = TempFile::new();
        let a = tmp.open();
        let e = try_lock_range(&a, u64::MAX, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = lock_range(&a, i64::MAX as u64, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
