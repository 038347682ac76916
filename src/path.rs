//! Where a table lives: names go to a memory filesystem, paths are used as given.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::name::is_table_name;
use crate::sys;

/// Directories tried, in order, for a table given by name.
pub const DEFAULT_DIRECTORIES: [&str; 4] = ["/dev/shm", "/run/shm", "/run", "/tmp"];

/// The file name of the table called `name` in its directory (`lockticket-NAME.lt`, as
/// [`LockTicket::open`](crate::LockTicket::open) places a name): the one source of the pattern
/// [`table_name`] reads back.
///
/// ```
/// assert_eq!(lockticket::table_file_name("backup"), "lockticket-backup.lt");
/// ```
pub fn table_file_name(name: &str) -> String {
    format!("lockticket-{name}.lt")
}

/// The table name that a file name stands for, when it is the file of a *named* table
/// (`lockticket-NAME.lt`, as [`LockTicket::open`](crate::LockTicket::open) places a name in its
/// directory); `None` for any other file name. Tools that list or clean a directory use it to
/// tell tables from other files without hard-coding the pattern.
///
/// ```
/// use std::ffi::OsStr;
///
/// assert_eq!(lockticket::table_name(OsStr::new("lockticket-backup.lt")), Some("backup"));
/// assert_eq!(lockticket::table_name(OsStr::new("lockticket-.lt")), None);
/// assert_eq!(lockticket::table_name(OsStr::new("backup.lock")), None);
/// ```
pub fn table_name(file_name: &OsStr) -> Option<&str> {
    let name = file_name
        .as_bytes()
        .strip_prefix(b"lockticket-")?
        .strip_suffix(b".lt")?;
    if !is_table_name(OsStr::from_bytes(name)) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// The name of a named temporary file a creator makes where `O_TMPFILE` cannot be used
/// (see `Region::create`): `.lockticket-PID-RANDOM.tmp`, short whatever the table's name.
pub(crate) fn temp_file_name(pid: u32, random: u64) -> String {
    format!(".lockticket-{pid}-{random:016x}.tmp")
}

/// The PID of the process that made a temporary file called `file_name`, when it is one a
/// table creator makes: `.lockticket-PID-RANDOM.tmp` (this version, where `O_TMPFILE` cannot be
/// used), or `.NAME.PID.RANDOM.tmp` with NAME a table's file name (`lockticket-NAME.lt`, as
/// earlier versions made them). `None` for any other name. A creator needs its temporary file
/// for microseconds: one whose creator is dead, or that is older than a minute, was left by a
/// creator killed half-way, and may be removed (`lockticket clean` does).
///
/// ```
/// use std::ffi::OsStr;
///
/// let now = OsStr::new(".lockticket-4242-00000000deadbeef.tmp");
/// assert_eq!(lockticket::temp_file_creator(now), Some(4242));
/// let earlier = OsStr::new(".lockticket-job.lt.4242.00000000deadbeef.tmp");
/// assert_eq!(lockticket::temp_file_creator(earlier), Some(4242));
/// assert_eq!(lockticket::temp_file_creator(OsStr::new("lockticket-job.lt")), None);
/// ```
pub fn temp_file_creator(file_name: &OsStr) -> Option<u32> {
    let body = temp_body(file_name)?;
    if let Some(rest) = body.strip_prefix("lockticket-")
        && let Some((p, r)) = rest.split_once('-')
        && is_hex16(r)
    {
        return parse_pid(p);
    }
    earlier_temp_file(body).map(|(_, pid)| pid)
}

/// The file name of the table an earlier version's temporary file was made for:
/// `.lockticket-NAME.lt.PID.RANDOM.tmp` stands for `lockticket-NAME.lt` (earlier versions
/// created a table under that name, and a process that mapped it then shows that name in
/// `/proc/PID/maps`). `None` for any other name, this version's temporary files included
/// (`.lockticket-PID-RANDOM.tmp`: a table is mapped again by its own name once linked).
///
/// ```
/// use std::ffi::OsStr;
///
/// let earlier = OsStr::new(".lockticket-job.lt.4242.00000000deadbeef.tmp");
/// assert_eq!(lockticket::temp_file_table(earlier), Some("lockticket-job.lt"));
/// let now = OsStr::new(".lockticket-4242-00000000deadbeef.tmp");
/// assert_eq!(lockticket::temp_file_table(now), None);
/// ```
pub fn temp_file_table(file_name: &OsStr) -> Option<&str> {
    earlier_temp_file(temp_body(file_name)?).map(|(table, _)| table)
}

/// `NAME` of `.NAME.tmp`.
fn temp_body(file_name: &OsStr) -> Option<&str> {
    file_name.to_str()?.strip_suffix(".tmp")?.strip_prefix('.')
}

/// An earlier version's temporary name without its dots and suffix,
/// `{table file name}.{pid}.{random:016x}`: the table's file name and the PID.
fn earlier_temp_file(body: &str) -> Option<(&str, u32)> {
    let (rest, r) = body.rsplit_once('.')?;
    let (table, p) = rest.rsplit_once('.')?;
    if !is_hex16(r) || table_name(OsStr::new(table)).is_none() {
        return None;
    }
    Some((table, parse_pid(p)?))
}

fn is_hex16(r: &str) -> bool {
    r.len() == 16 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_pid(p: &str) -> Option<u32> {
    (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .then(|| p.parse::<u32>().ok())
        .flatten()
}

/// True when `s` is given as a path: absolute, `./…` or `../…`.
///
/// ```
/// use std::ffi::OsStr;
///
/// assert!(lockticket::is_table_path(OsStr::new("./backup")));
/// assert!(!lockticket::is_table_path(OsStr::new("backup")));
/// ```
pub fn is_table_path(s: &OsStr) -> bool {
    let b = s.as_bytes();
    b.starts_with(b"/") || b.starts_with(b"./") || b.starts_with(b"../")
}

/// Resolves a name or path to an absolute path (a relative one against the current directory,
/// now: a later `chdir` changes neither what the handle opens nor what its messages and
/// `status` show). `directory` overrides the search for names.
pub(crate) fn resolve(name_or_path: &Path, directory: Option<&Path>) -> Result<PathBuf> {
    let s = name_or_path.as_os_str();
    if is_table_path(s) {
        if name_or_path.file_name().is_none() {
            return Err(Error::InvalidName {
                name: s.to_string_lossy().into_owned(),
            });
        }
        return absolute(name_or_path);
    }
    if !is_table_name(s) {
        return Err(Error::InvalidName {
            name: s.to_string_lossy().into_owned(),
        });
    }
    let file = table_file_name(&s.to_string_lossy());
    let dir = match directory {
        Some(d) => d.to_path_buf(),
        None => default_directory()?,
    };
    absolute(&dir.join(file))
}

/// `path` made absolute against the current directory (lexically: `.` components dropped,
/// `..` and symlinks kept, as `std::path::absolute` does).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        op: crate::error::IoOp::MakeAbsolute,
        cause,
    })
}

/// Where the table for a *lock file* lives, as `lockticket exec FILE` uses it (flock(1)'s
/// idiom of locking a directory, the script itself, or an existing lock file): for a
/// directory or an existing file that is not a lock table, a table in `directory` (default:
/// [`default_directory`]) named after the file's device and inode, so that every process
/// naming the same file — by any path — meets in the same queue, and the file itself is never
/// touched. `Ok(None)` when `file` does not exist or is a lock table itself: use it as the
/// table path. A file that cannot be opened for reading (as flock(1) opens it) is an
/// [`Error::Io`]. A lock file on a network filesystem is refused
/// ([`Error::LockFileOnNetwork`]): flock would lock across hosts, this table only on this
/// machine.
///
/// ```
/// # fn main() -> lockticket::Result<()> {
/// let dir = std::env::temp_dir();
/// let table = lockticket::table_for_lock_file(&dir, None)?.expect("a directory is keyed");
/// assert!(table.file_name().unwrap().to_str().unwrap().starts_with("lockticket-file-"));
/// # Ok(()) }
/// ```
pub fn table_for_lock_file(file: &Path, directory: Option<&Path>) -> Result<Option<PathBuf>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Opened as flock(1) opens it (read-only; without blocking on a FIFO or taking a
    // terminal): a file that flock could not open is refused, not keyed, so a table of
    // another user that this user may not read is never shadowed by a second queue.
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(Error::Io {
                path: file.to_path_buf(),
                op: crate::error::IoOp::Open,
                cause,
            });
        }
    };
    let meta = f.metadata().map_err(|cause| Error::Io {
        path: file.to_path_buf(),
        op: crate::error::IoOp::Fstat,
        cause,
    })?;
    if meta.is_file() {
        let mut magic = [0u8; 8];
        if f.read_exact(&mut magic).is_ok() && magic == crate::layout::MAGIC {
            return Ok(None);
        }
    }
    if let Some(fs) = sys::fs_magic_of_file(&f)
        .ok()
        .and_then(sys::network_fs_name)
    {
        return Err(Error::LockFileOnNetwork {
            path: file.to_path_buf(),
            fs,
        });
    }
    let dir = match directory {
        Some(d) => d.to_path_buf(),
        None => default_directory()?,
    };
    let birth = sys::birth(std::os::fd::AsFd::as_fd(&f));
    Ok(Some(dir.join(table_file_name(&lock_file_key(
        meta.dev(),
        meta.ino(),
        birth,
    )))))
}

/// The name of the table kept for a lock file: `file-DEV-INO-BIRTH` (hex), BIRTH the file's
/// birth time in nanoseconds, or `gGENERATION` (its inode generation) where the filesystem
/// reports no birth time, or nothing where it reports neither (`file-DEV-INO`, the only key
/// of earlier versions). A lock file removed and made again with the same inode number —
/// ext4 reuses them — thus gets a new table, not the old one's payload or died flag. At most
/// 56 characters: a valid table name.
pub(crate) fn lock_file_key(dev: u64, ino: u64, birth: sys::Birth) -> String {
    match birth {
        sys::Birth::Time(ns) => format!("file-{dev:x}-{ino:x}-{ns:x}"),
        sys::Birth::Generation(g) => format!("file-{dev:x}-{ino:x}-g{g:x}"),
        sys::Birth::Unknown => format!("file-{dev:x}-{ino:x}"),
    }
}

/// The device and inode a [`lock_file_key`] names (whatever its birth part), `None` for
/// anything else. The one parser of the key: it lives beside its one encoder.
pub(crate) fn lock_file_key_dev_ino(key: &str) -> Option<(u64, u64)> {
    let mut parts = key.strip_prefix("file-")?.split('-');
    let dev = u64::from_str_radix(parts.next()?, 16).ok()?;
    let ino = u64::from_str_radix(parts.next()?, 16).ok()?;
    match parts.next() {
        None => {}
        Some(b) if u64::from_str_radix(b.strip_prefix('g').unwrap_or(b), 16).is_ok() => {}
        Some(_) => return None,
    }
    parts.next().is_none().then_some((dev, ino))
}

/// The first of [`DEFAULT_DIRECTORIES`] that is writable and memory-backed, else the first
/// writable one.
pub fn default_directory() -> Result<PathBuf> {
    let writable: Vec<&str> = DEFAULT_DIRECTORIES
        .into_iter()
        .filter(|d| sys::is_writable_dir(Path::new(d)))
        .collect();
    let memory = writable
        .iter()
        .find(|d| sys::fs_magic_of_path(Path::new(d)).is_ok_and(sys::is_memory_fs));
    memory
        .or(writable.first())
        .map(PathBuf::from)
        .ok_or_else(|| Error::NoDirectory {
            candidates: DEFAULT_DIRECTORIES.join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::MAX_NAME_LEN;

    #[test]
    fn names_and_paths() {
        let r = |s: &str| resolve(Path::new(s), Some(Path::new("/d")));
        assert_eq!(r("app").unwrap(), Path::new("/d/lockticket-app.lt"));
        assert_eq!(r("a-b_C9").unwrap(), Path::new("/d/lockticket-a-b_C9.lt"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(r("./x.lt").unwrap(), cwd.join("x.lt"));
        assert_eq!(r("../x.lt").unwrap(), cwd.join("../x.lt"));
        assert_eq!(r("/abs/x").unwrap(), Path::new("/abs/x"));
        assert!(r("").is_err());
        assert!(r("a/b").is_err());
        assert!(r("sp ace").is_err());
        assert!(r(&"x".repeat(219)).is_err());
        assert!(r(&"x".repeat(218)).is_ok());
        assert_eq!(MAX_NAME_LEN, 218);
    }

    #[test]
    fn table_names_of_file_names() {
        for name in ["app", "a-b_C9", &"x".repeat(218)] {
            let file = table_file_name(name);
            assert_eq!(table_name(OsStr::new(&file)), Some(name));
        }
        for file in [
            "lockticket-.lt",
            "lockticket-a b.lt",
            "lockticket-app",
            "app.lt",
            "x",
        ] {
            assert_eq!(table_name(OsStr::new(file)), None, "{file}");
        }
    }

    #[test]
    fn temporary_files_are_recognised() {
        let name = temp_file_name(4242, 0xdead_beef);
        assert_eq!(name, ".lockticket-4242-00000000deadbeef.tmp");
        assert!(name.len() < 64);
        assert_eq!(temp_file_creator(OsStr::new(&name)), Some(4242));
        assert_eq!(
            temp_file_creator(OsStr::new(".lockticket-app.lt.17.0123456789abcdef.tmp")),
            Some(17)
        );
        for other in [
            "lockticket-app.lt",
            ".lockticket-4242-xyz.tmp",
            ".lockticket--00000000deadbeef.tmp",
            ".lockticket-42-00000000deadbeef.tmp.bak",
            ".t.lt.17.0123456789abcdef.tmp", // a path table's: its name is not ours to judge
            ".lockticket-app.lt.x.0123456789abcdef.tmp",
            "x.tmp",
        ] {
            assert_eq!(temp_file_creator(OsStr::new(other)), None, "{other}");
            assert_eq!(temp_file_table(OsStr::new(other)), None, "{other}");
        }
        // The table an earlier version's temporary file was made for; none for this version's.
        assert_eq!(
            temp_file_table(OsStr::new(".lockticket-app.lt.17.0123456789abcdef.tmp")),
            Some("lockticket-app.lt")
        );
        assert_eq!(temp_file_table(OsStr::new(&name)), None);
    }

    #[test]
    fn lock_file_keys_tell_files_of_one_inode_number_apart() {
        use crate::sys::Birth;
        let (dev, ino) = (0x803, 0x1234);
        let a = lock_file_key(dev, ino, Birth::Time(1_700_000_000_000_000_001));
        let b = lock_file_key(dev, ino, Birth::Time(1_700_000_000_000_000_002));
        let g = lock_file_key(dev, ino, Birth::Generation(7));
        let h = lock_file_key(dev, ino, Birth::Generation(8));
        let old = lock_file_key(dev, ino, Birth::Unknown);
        assert_eq!(old, "file-803-1234");
        assert_eq!(g, "file-803-1234-g7");
        for k in [&a, &b, &g, &h, &old] {
            assert_eq!(lock_file_key_dev_ino(k), Some((dev, ino)), "{k}");
        }
        assert_eq!(lock_file_key_dev_ino("file-803-1234-zz"), None);
        assert_eq!(lock_file_key_dev_ino("file-803"), None);
        let all = [&a, &b, &g, &h, &old];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        let longest = lock_file_key(u64::MAX, u64::MAX, Birth::Time(u64::MAX));
        assert!(longest.len() <= 56, "{longest}");
        for k in [&a, &g, &old, &longest] {
            assert!(is_table_name(OsStr::new(k)), "{k}");
        }
        let longest = lock_file_key(u64::MAX, u64::MAX, Birth::Generation(u32::MAX));
        assert!(is_table_name(OsStr::new(&longest)), "{longest}");
    }

    #[test]
    fn a_default_directory_exists_here() {
        assert!(default_directory().is_ok());
    }
}
