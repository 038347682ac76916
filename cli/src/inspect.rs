//! `status`, `list` and `clean`: looking at tables, and removing dead ones.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockticket::{Error, LockTicket, MemberInfo, Share, Status, TokenInfo};
use serde_json::{Value, json};

use crate::{Failure, code, escape, report, write_stdout};

/// Version of the `status --json` object (its `"format"` field).
const JSON_FORMAT: u32 = 1;

/// The command line of a live process, its words joined by spaces, as the process set it:
/// foreign bytes (see [`command_text`] for text output).
fn command_bytes(pid: u32, alive: bool) -> Option<Vec<u8>> {
    if !alive {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|w| !w.is_empty()).collect();
    (!words.is_empty()).then(|| words.join(&b' '))
}

/// The command line of a live process, for `--json` (which escapes it).
pub(crate) fn command_line(pid: u32, alive: bool) -> Option<String> {
    command_bytes(pid, alive).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The command line of a live process for text output: control characters, bidi controls
/// and invalid UTF-8 escaped ([`escape`]), so that another user's argv cannot write terminal
/// sequences or forged lines into what we print.
pub(crate) fn command_text(pid: u32, alive: bool) -> Option<String> {
    command_bytes(pid, alive).map(|b| escape::bytes(&b))
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The table file of a name or path (creates nothing).
fn resolve(table: &OsStr) -> Result<PathBuf, Failure> {
    let table = lock_target(table)?;
    LockTicket::open(&table)
        .map(|lt| lt.path().to_path_buf())
        .map_err(|e| Failure::table("invalid table", &e))
}

/// The table kept for the lock file this command names, and that file (one per run), so
/// that messages about the table name the file the user gave.
static LOCK_FILE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();

/// The keyed table and the lock file it stands for, when the argument was a lock file.
pub(crate) fn lock_file() -> Option<&'static (PathBuf, PathBuf)> {
    LOCK_FILE.get()
}

/// What a NAME|PATH argument locks, flock(1)-style. A bare word of `[-_A-Za-z0-9]` (at most
/// [`lockticket::MAX_NAME_LEN`]) is a table *name* (placed in the default tmpfs directory), refused as ambiguous when
/// the current directory has a file or directory of that name. Anything else is a *path*,
/// relative to the current directory like flock's (`job.lock`, `/var/lock/job`): a missing one
/// or a lock table is the table itself; an existing directory or other file (`"$0"`, a lock
/// file of a flock-based script) is never touched: its table lives in the tmpfs directory,
/// keyed by the file's device and inode, so every process naming that file meets there.
pub(crate) fn lock_target(arg: &OsStr) -> Result<std::ffi::OsString, Failure> {
    if lockticket::is_table_name(arg) {
        // flock(1) would lock ./WORD; a name is a table of its own in the tmpfs directory.
        // When both exist the argument is ambiguous, and guessing would put two scripts that
        // mean the same lock in different queues: refuse, and say how to write either.
        if let Ok(meta) = std::fs::symlink_metadata(arg) {
            let word = arg.to_string_lossy();
            let kind = if meta.is_dir() { "directory" } else { "file" };
            let named = lockticket::default_directory()
                .map(|d| {
                    d.join(lockticket::table_file_name(&word))
                        .display()
                        .to_string()
                })
                .unwrap_or_else(|_| format!("DIR/{}", lockticket::table_file_name(&word)));
            return Err(Failure::new(
                code::USAGE,
                format!(
                    "bad usage: {word:?} is ambiguous: a bare word is a table name, but the \
                     current directory has a {kind} of that name: write ./{word} to lock the \
                     {kind} (as `flock {word}` does), or {named} for the named table"
                ),
            ));
        }
        return Ok(arg.to_os_string());
    }
    let path = if lockticket::is_table_path(arg) {
        PathBuf::from(arg)
    } else {
        Path::new(".").join(arg)
    };
    match lockticket::table_for_lock_file(&path, None) {
        Ok(Some(keyed)) => {
            let _ = LOCK_FILE.set((keyed.clone(), path));
            Ok(keyed.into_os_string())
        }
        Ok(None) => Ok(path.into_os_string()),
        Err(e) => Err(Failure::table("cannot lock", &e)),
    }
}

/// A handle for looking at (or cleaning) the table at `path`. Unless `mode` is given, the
/// file's own mode is accepted: looking at a table shared on purpose needs no --mode.
fn open_inspect(path: &Path, mode: Option<u32>) -> Result<LockTicket, Failure> {
    use std::os::unix::fs::MetadataExt;
    let mode = mode.unwrap_or_else(|| match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => (m.mode() & 0o777) | 0o600,
        _ => 0o600,
    });
    let lt = LockTicket::builder(path)
        .permissions(mode)
        .open()
        .map_err(|e| Failure::table("cannot open the lock table", &e))?;
    anchor_lock_file(&lt);
    // A keyed table named by its own path (`status`, `list`, `clean --all`), or whose lock
    // file was deleted: judge holders in the descriptor form from the kernel's list of file
    // locks — dead once their descriptor is closed — instead of alive forever. A table that
    // does not exist yet is reported by the caller.
    let _ = lt.judge_fd_holders();
    Ok(lt)
}

/// When `lt`'s table is the one kept for the lock file this command names, gives the handle
/// that file (see `LockTicket::set_lock_file`): holders in the descriptor form (`lockticket
/// exec 9`) are then judged, and reclaimed once their descriptor is closed. Without it they
/// are judged alive (never wrong), so a failure to open the file only costs that.
pub(crate) fn anchor_lock_file(lt: &LockTicket) {
    if let Some((keyed, file)) = lock_file()
        && keyed == lt.path()
    {
        let _ = lt.set_lock_file(file);
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---------------------------------------------------------------------------------------------
// status

pub(crate) fn status(table: &OsStr, mode: Option<u32>, json: bool) -> Result<i32, Failure> {
    let path = resolve(table)?;
    let lt = open_inspect(&path, mode)?;
    let st = lt.status().map_err(|e| Failure::table("cannot read", &e))?;
    let now = SystemTime::now();
    let out = if json {
        let mut s = serde_json::to_string_pretty(&status_json(&st, now))
            .map(escape::json)
            .map_err(|e| Failure::new(code::TABLE, format!("cannot render JSON: {e}")))?;
        s.push('\n');
        s
    } else {
        st.to_text(now, &escape::path(&st.path), |pid| {
            command_text(pid, true).map(|c| truncated(&c, 72))
        })
    };
    write_stdout(out.as_bytes())?;
    Ok(code::OK)
}

fn member_json(m: &MemberInfo, now: SystemTime) -> Value {
    json!({
        "pid": m.pid,
        "share": m.share.to_string(),
        "pid_foreign": m.pid_foreign,
        "alive": m.alive,
        "joined": m.joined.map(unix_seconds),
        "age_seconds": m.age(now).map(|d| d.as_secs_f64()),
        "command": command_line(m.pid, m.alive && !m.pid_foreign),
    })
}

fn token_json(t: &TokenInfo, position: Option<usize>, now: SystemTime) -> Value {
    let mut v = json!({
        "pid": t.pid,
        "parent": t.parent,
        "share": t.share.to_string(),
        "ticket": t.ticket,
        "pid_foreign": t.pid_foreign,
        "alive": t.alive,
        "since": t.since.map(unix_seconds),
        "age_seconds": t.age(now).map(|d| d.as_secs_f64()),
        "bypass": t.bypass,
        "command": command_line(t.pid, t.alive && !t.pid_foreign),
    });
    if let (Some(p), Value::Object(map)) = (position, &mut v) {
        map.insert("position".into(), json!(p));
    }
    v
}

/// The `status --json` object. Every field is documented in docs/cli.md; bump
/// [`JSON_FORMAT`] for any change that is not a pure addition.
fn status_json(st: &Status, now: SystemTime) -> Value {
    json!({
        "format": JSON_FORMAT,
        "path": st.path.to_string_lossy(),
        "now": unix_seconds(now),
        "in_use": st.in_use(),
        "table_format": st.format_version,
        "ring_capacity": st.ring_capacity,
        "fairness": st.fairness.to_string(),
        "bypasses": st.bypasses,
        "payload_capacity": st.payload_capacity,
        "payload_len": st.payload_len,
        "payload_generation": st.payload_generation,
        "reclaimed_slots": st.reclaimed_slots,
        "repairs": st.repairs,
        "last_fencing_token": st.last_fencing_token,
        "consistent": st.consistent,
        "members": st.members.iter().map(|m| member_json(m, now)).collect::<Vec<_>>(),
        "holders": st.holders.iter().map(|t| token_json(t, None, now)).collect::<Vec<_>>(),
        "queue": st
            .queue
            .iter()
            .enumerate()
            .map(|(i, t)| token_json(t, Some(i + 1), now))
            .collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// list

/// One line about a table's state.
fn summary(st: &Status) -> String {
    let alive_members = st.members.iter().filter(|m| m.alive).count();
    let dead_members = st.members.len() - alive_members;
    let holders = st.holders.iter().filter(|t| t.alive).count();
    let waiting = st.queue.iter().filter(|t| t.alive).count();
    let dead_tokens = st.holders.len() + st.queue.len() - holders - waiting;
    let mut parts = vec![
        plural(alive_members, "owner", "owners"),
        plural(holders, "holder", "holders"),
        format!("{waiting} waiting"),
        format!("payload {} bytes", st.payload_len),
    ];
    if dead_members + dead_tokens > 0 {
        parts.push(format!(
            "{} dead",
            plural(dead_members + dead_tokens, "entry", "entries")
        ));
    }
    let state = if st.in_use() {
        "in use"
    } else {
        "unused (lockticket clean removes it)"
    };
    format!("{state}: {}", parts.join(", "))
}

/// The files of named tables in `dir` (as the library names them), sorted.
fn tables_in(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(code::TABLE, format!("cannot list {}: {e}", dir.display())))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| lockticket::table_name(&e.file_name()).is_some())
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Temporary files in `dir` that table creators killed half-way left behind (where
/// `O_TMPFILE` could not be used, or made by earlier versions; see
/// [`lockticket::temp_file_creator`]), with why each is stale: its creator is dead, or it is
/// older than a minute (a creator needs it for microseconds; a PID alive again may be another
/// process, or one of another PID namespace). Sorted.
fn stale_temp_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut out: Vec<(PathBuf, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = lockticket::temp_file_creator(&e.file_name())?;
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let age = meta
                .modified()
                .ok()
                .map(|m| now.duration_since(m).unwrap_or(Duration::ZERO));
            let old = age.is_none_or(|a| a > Duration::from_secs(60));
            let why = if !pid_alive(pid) {
                format!("temporary file of a table creator that died, pid {pid}")
            } else if old {
                "temporary file of a table creator, older than a minute".to_string()
            } else {
                return None;
            };
            Some((e.path(), why))
        })
        .collect();
    out.sort();
    out
}

/// `kill(pid, 0)`: false only when no such process exists.
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; a positive PID never addresses a group.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The directory to look in: `dir` (made absolute, so its files are paths to the library) or
/// the default directory of named tables.
fn directory(dir: Option<&Path>) -> Result<PathBuf, Failure> {
    match dir {
        Some(d) => std::path::absolute(d)
            .map_err(|e| Failure::new(code::USAGE, format!("bad directory {}: {e}", d.display()))),
        None => lockticket::default_directory()
            .map_err(|e| Failure::table("no directory for lock tables", &e)),
    }
}

pub(crate) fn list(dir: Option<&Path>) -> Result<i32, Failure> {
    let dir = directory(dir)?;
    let tables = tables_in(&dir)?;
    let mut out = String::new();
    if tables.is_empty() {
        let _ = writeln!(out, "no lock tables in {}", escape::path(&dir));
    }
    for path in &tables {
        let state = match open_inspect(path, None)
            .and_then(|lt| lt.status().map_err(|e| Failure::table("cannot read", &e)))
        {
            Ok(st) => summary(&st),
            Err(f) if f.code == code::NO_TABLE => continue, // removed meanwhile
            Err(f) => format!("unusable: {}", escape::text(&f.message)),
        };
        let _ = writeln!(out, "{}  {state}", escape::path(path));
    }
    for (path, pids) in removed_in_use(&dir) {
        let _ = writeln!(
            out,
            "{}  removed, still in use by pid(s) {pids:?}: they no longer exclude processes \
             that opened the path since",
            escape::path(&path)
        );
    }
    write_stdout(out.as_bytes())?;
    Ok(code::OK)
}

/// Tables of `dir` that were removed (or replaced) while processes still map them: scans the
/// mappings of the processes this user may see (`/proc/PID/maps`) for table files of `dir`
/// whose inode is no longer the one at the table's path. (A mapping shows the name the file
/// was opened by: a creator maps its new table again by the table's name once it is linked
/// into place; the temporary names of earlier versions are recognised too.) Best effort: processes hidden by `hidepid` or of other users
/// are not seen.
pub(crate) fn removed_in_use(dir: &Path) -> Vec<(PathBuf, Vec<u32>)> {
    use std::os::unix::fs::MetadataExt;
    let mut found: std::collections::BTreeMap<PathBuf, Vec<u32>> = Default::default();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(e.path().join("maps")) else {
            continue;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(inode), Some(mapped)) = (fields.nth(4), fields.next()) else {
                continue;
            };
            let mapped = Path::new(mapped);
            let Some(table) = mapped_table_name(mapped) else {
                continue;
            };
            if mapped.parent() != Some(dir) {
                continue;
            }
            let path = dir.join(table);
            let current = std::fs::symlink_metadata(&path).map(|m| m.ino().to_string());
            if current.as_deref().ok() != Some(inode) {
                let pids = found.entry(path).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// The table file name a mapped file name stands for: `lockticket-NAME.lt` itself, or the
/// temporary name an earlier version created it under ([`lockticket::temp_file_table`]; this
/// version maps a table it created again by its name once it is linked into place).
fn mapped_table_name(mapped: &Path) -> Option<String> {
    let name = mapped.file_name()?;
    if lockticket::table_name(name).is_some() {
        return name.to_str().map(str::to_string);
    }
    lockticket::temp_file_table(name).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// clean

enum Cleaned {
    Removed(String),
    Kept(String),
    Absent,
}

/// Removes the table at `path` if no live process owns or uses it.
///
/// A table in use is never touched: its status is read first, and the removal itself goes
/// through the library's main lock, which re-checks under the table's lock. The main lock is
/// taken *shared*: a process that joins at the same moment (an `exec`) joins alongside instead
/// of failing, and the table then stays.
fn clean_path(path: &Path) -> Result<Cleaned, Failure> {
    let lt = open_inspect(path, None)?;
    let st = match lt.status() {
        Ok(st) => st,
        Err(Error::NotCreated { .. } | Error::Removed { .. }) => return Ok(Cleaned::Absent),
        Err(e) => return Err(Failure::table("cannot read", &e)),
    };
    if st.in_use() {
        return Ok(Cleaned::Kept(summary(&st)));
    }
    let dead: Vec<String> = st.members.iter().map(|m| m.pid.to_string()).collect();
    match lt.main_lock(Share::Shared) {
        Ok(guard) => guard
            .unlock()
            .map_err(|e| Failure::table("cannot remove the table", &e))?,
        Err(Error::MainLockBusy { pids, .. }) => {
            return Ok(Cleaned::Kept(format!("in use: owned by pid(s) {pids:?}")));
        }
        Err(e) => return Err(Failure::table("cannot take over the table", &e)),
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(Cleaned::Kept(
            "in use: a process joined it meanwhile".into(),
        ));
    }
    Ok(Cleaned::Removed(if dead.is_empty() {
        "no owner".into()
    } else {
        format!("dead owner pid(s) {}", dead.join(", "))
    }))
}

fn report_clean(path: &Path, outcome: Result<Cleaned, Failure>, out: &mut String) -> i32 {
    match outcome {
        Ok(Cleaned::Removed(why)) => {
            let _ = writeln!(out, "removed {} ({why})", escape::path(path));
            code::OK
        }
        Ok(Cleaned::Kept(why)) => {
            let _ = writeln!(out, "kept {}: {}", escape::path(path), escape::text(&why));
            code::OK
        }
        Ok(Cleaned::Absent) => {
            let _ = writeln!(out, "no lock table at {}", escape::path(path));
            code::OK
        }
        Err(f) => {
            report(&f.message);
            f.code
        }
    }
}

pub(crate) fn clean_one(table: &OsStr) -> Result<i32, Failure> {
    let path = resolve(table)?;
    let mut out = String::new();
    let rc = report_clean(&path, clean_path(&path), &mut out);
    write_stdout(out.as_bytes())?;
    Ok(rc)
}

pub(crate) fn clean_all(dir: Option<&Path>) -> Result<i32, Failure> {
    let dir = directory(dir)?;
    let mut rc = code::OK;
    let mut out = String::new();
    for path in tables_in(&dir)? {
        let r = report_clean(&path, clean_path(&path), &mut out);
        if rc == code::OK {
            rc = r;
        }
    }
    for (path, why) in stale_temp_files(&dir) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = writeln!(out, "removed {} ({why})", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                report(&format!("cannot remove {}: {e}", path.display()));
                if rc == code::OK {
                    rc = code::TABLE;
                }
            }
        }
    }
    if out.is_empty() && rc == code::OK {
        let _ = writeln!(out, "no lock tables in {}", escape::path(&dir));
    }
    write_stdout(out.as_bytes())?;
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mapped names are read with the library's patterns: a table's own name, and the
    /// temporary name an earlier version created it under; this version's temporary names
    /// stand for no table.
    #[test]
    fn mapped_names_are_read_with_the_librarys_patterns() {
        let m = |s: &str| mapped_table_name(Path::new(s));
        assert_eq!(
            m("/dev/shm/lockticket-job.lt").as_deref(),
            Some("lockticket-job.lt")
        );
        assert_eq!(
            m("/dev/shm/.lockticket-job.lt.17.0123456789abcdef.tmp").as_deref(),
            Some("lockticket-job.lt")
        );
        assert_eq!(m("/dev/shm/.lockticket-17-0123456789abcdef.tmp"), None);
        assert_eq!(m("/dev/shm/job.lock"), None);
    }
}
