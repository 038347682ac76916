//! Filesystems: statfs magic, memory-backed and network filesystems.

use std::io;
use std::os::fd::AsFd;

/// Filesystem magic of the filesystem holding `file`.
pub(crate) fn fs_magic_of_file(file: impl AsFd) -> io::Result<i64> {
    let st = nix::sys::statfs::fstatfs(file.as_fd()).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// Filesystem magic of the filesystem holding `path`.
pub(crate) fn fs_magic_of_path(path: &std::path::Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// True for tmpfs and ramfs (memory-backed: the table never touches a disk).
pub(crate) fn is_memory_fs(magic: i64) -> bool {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6_u32 as i64;
    magic == TMPFS || magic == RAMFS || magic == RAMFS as u32 as i64
}

/// The name of a network filesystem, if `magic` is one (a shared mapping is not coherent
/// across hosts there).
pub(crate) fn network_fs_name(magic: i64) -> Option<&'static str> {
    let m = magic as u32;
    Some(match m {
        0x6969 => "NFS",
        0x517b => "SMB",
        0xff53_4d42 => "CIFS",
        0xfe53_4d42 => "SMB2",
        0x5346_414f => "AFS",
        0x6b41_4653 => "kAFS",
        0x00c3_6400 => "Ceph",
        0x0102_1997 => "9P",
        0x7375_7245 => "Coda",
        0x564c => "NCP",
        0x0133_3bb7 => "GlusterFS",
        0x0bd0_0bd0 => "Lustre",
        _ => return None,
    })
}
