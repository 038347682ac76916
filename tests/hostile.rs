//! Hostile files and environments: whatever is at the table path, every call gives a clear
//! `lockticket::Error` naming the path, never a panic or a hang, and leaves nothing half-made.
//! Also: a table overwritten with garbage while in use, a table on a disk filesystem, and PID
//! reuse (a claim naming a live process with the wrong start time).
//!
//! Some cases need root (a file owned by another user, a device node, dropping privileges to
//! test a read-only directory); they are skipped with a note otherwise. As root, permission
//! checks pass, so the read-only directory case is checked from a helper that has dropped to
//! uid/gid 65534 (and in this process only for "no panic").

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::*;
use std::mem::offset_of;

use lockticket::layout::{self, FixedHeader};
use lockticket::{Error, HeaderError, LockTicket, Share};

// ---------------------------------------------------------------------------------------------
// File layout facts the tests poke at (docs/format.md), taken from the crate's layout.

const HEADER: u64 = layout::HEADER_SIZE;
const SLOT: u64 = layout::SLOT_SIZE;
const TAIL: u64 = layout::hot::TAIL;
const HEAD: u64 = layout::hot::HEAD;
const OFF_VERSION: usize = offset_of!(FixedHeader, version);
const OFF_RING_CAPACITY: usize = offset_of!(FixedHeader, ring_capacity);
const OFF_MEMBERS_OFFSET: u64 = offset_of!(FixedHeader, members_offset) as u64;
const OFF_MEMBER_CAPACITY: usize = offset_of!(FixedHeader, member_capacity);
const OFF_PAYLOAD_OFFSET: u64 = offset_of!(FixedHeader, payload_offset) as u64;
const OFF_PAYLOAD_CAPACITY: usize = offset_of!(FixedHeader, payload_capacity);
const OFF_PAYLOAD_REGION_LEN: u64 = offset_of!(FixedHeader, payload_region_len) as u64;
const OFF_MAIN_MODE: usize = offset_of!(FixedHeader, main_mode);
const OFF_CHECKSUM: usize = offset_of!(FixedHeader, checksum);
/// Claim word: registration index + 1 in bits 0..REG_INDEX_BITS, generation bits above it,
/// lap from 32.
const FP_SHIFT: u32 = layout::REG_INDEX_BITS;
const FP_MASK: u64 = (1 << layout::GEN_FP_BITS) - 1;
/// Slot start word: the full generation in the low 40 bits, lap tag above (private to `ring`).
const START_MASK: u64 = (1 << 40) - 1;
/// Slot futex word: 2 = the owner has seen its grant (holds the token; private to `ring`).
const HOLDING: u32 = 2;

use layout::fnv1a;

/// Recomputes the header checksum (over bytes 0..120, stored at 120..128).
fn fix_checksum(bytes: &mut [u8]) {
    let c = fnv1a(&bytes[..OFF_CHECKSUM]);
    bytes[OFF_CHECKSUM..OFF_CHECKSUM + 8].copy_from_slice(&c.to_ne_bytes());
}

fn put_u32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// xorshift64*: reproducible garbage (the seed is printed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng((t ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Reports between processes.

/// The variant of an error (its Debug name).
fn variant(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `Ok ...`, `Corrupted <message>` or `Err <Variant> | <message>`.
fn describe<T>(r: &lockticket::Result<T>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(v) => format!("Ok {}", ok(v)),
        Err(e @ Error::Corrupted { .. }) => format!("Corrupted {e}"),
        Err(e) => format!("Err {} | {e}", variant(e)),
    }
}

fn guard_outcome(r: lockticket::Result<Option<lockticket::TokenGuard<'_>>>) -> String {
    match r {
        Ok(Some(g)) => format!(
            "Ok got=true unlock={}",
            describe(&g.unlock(), |_| "".into())
        ),
        Ok(None) => "Ok got=false".to_string(),
        Err(e) => describe::<()>(&Err(e), |_| unreachable!()),
    }
}

/// One call on a table, described.
fn run_op(lt: &LockTicket, op: &str) -> String {
    let short = Duration::from_millis(50);
    match op {
        "try_token_lock" => guard_outcome(lt.try_token_lock()),
        "try_token_lock_shared" => guard_outcome(lt.try_token_lock_shared()),
        "token_lock_timeout" => guard_outcome(lt.token_lock_timeout(short)),
        "token_lock_shared_timeout" => guard_outcome(lt.token_lock_shared_timeout(short)),
        "token_lock" => guard_outcome(lt.token_lock().map(Some)),
        "token_lock_shared" => guard_outcome(lt.token_lock_shared().map(Some)),
        "status" => describe(&lt.status(), |s| {
            format!("holders={} queue={}", s.holders.len(), s.queue.len())
        }),
        "payload" => describe(&lt.payload(), |p| format!("len={}", p.len())),
        "set_payload" => describe(&lt.set_payload(b"x"), |_| String::new()),
        other => panic!("unknown op {other}"),
    }
}

/// Calls that may wait forever by contract (no deadline): a probe gives them a short look.
fn may_wait(op: &str) -> bool {
    op == "token_lock" || op == "token_lock_shared"
}

fn dispatch(role: &str, args: &[String]) {
    match role {
        // Holds the exclusive token on table args[0] until told; reports the unlock.
        "hold" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let g = lt.token_lock().unwrap();
            say("held");
            let _ = hear();
            say(format!("released {}", describe(&g.unlock(), |_| "".into())));
        }
        // Runs ops args[1..] on table args[0], each watched: a call that does not return
        // within its bound is reported as "hung" and this process exits (ending it).
        "probe" => {
            let lt = Arc::new(LockTicket::open(&args[0]).unwrap());
            for op in &args[1..] {
                let (tx, rx) = channel();
                let (lt2, op2) = (lt.clone(), op.clone());
                std::thread::spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_op(&lt2, &op2)
                    }));
                    let _ = tx.send(r);
                });
                let bound = if may_wait(op) {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(2)
                };
                match rx.recv_timeout(bound) {
                    Ok(Ok(r)) => say(format!("probe {op} {r}")),
                    Ok(Err(_)) => say(format!("probe {op} panicked")),
                    Err(_) => {
                        say(format!("probe {op} hung {bound:?}"));
                        std::process::exit(0);
                    }
                }
            }
            say("probe end");
        }
        // Drops to uid/gid 65534, then tries to create table args[0].
        "as-nobody" => {
            use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
            let dropped = setgroups(&[])
                .and_then(|()| setgid(Gid::from_raw(65534)))
                .and_then(|()| setuid(Uid::from_raw(65534)));
            if let Err(e) = dropped {
                say(format!("result skipped: cannot become uid 65534: {e}"));
                return;
            }
            let lt = LockTicket::open(&args[0]).unwrap();
            let r = lt.main_lock(Share::Exclusive);
            say(format!("result {}", describe(&r, |_| String::new())));
        }
        // Lives until told (or killed): a live process to name in a claim.
        "idle" => {
            say("ready");
            let _ = hear();
        }
        // Registers in table args[0] (a payload write registers) and stays until killed.
        "register" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            lt.set_payload(b"registered").unwrap();
            say("registered");
            let _ = hear();
        }
        // Joins table args[0], counts args[2] times under the token in file args[1], reports
        // the payload it saw and replaces it.
        "roundtrip" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let main = lt.main_lock(Share::Shared).unwrap();
            let counter = Counter::open(Path::new(&args[1]));
            let n: u32 = args[2].parse().unwrap();
            for _ in 0..n {
                let g = lt.token_lock().unwrap();
                counter.bump();
                drop(g);
            }
            let seen = String::from_utf8(lt.payload().unwrap()).unwrap();
            lt.set_payload(format!("from {}", std::process::id()).as_bytes())
                .unwrap();
            main.unlock().unwrap();
            say(format!("payload {seen}"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

// ---------------------------------------------------------------------------------------------
// Plumbing.

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Makes uid/gid 65534 own `path` (root only); false when that is not possible here.
fn give_to_nobody(path: &Path) -> bool {
    is_root()
        && nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .is_ok()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Writes a file with exactly `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .unwrap();
}

/// The bytes of a fresh valid table (made with main_lock in `scratch`, then removed).
fn valid_table(scratch: &Scratch) -> Vec<u8> {
    let path = scratch.join("model.lt");
    let lt = LockTicket::open(&path).unwrap();
    let g = lt.main_lock(Share::Exclusive).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    g.unlock().unwrap();
    assert!(!path.exists());
    bytes
}

/// Runs `f` on another thread; fails the test if it does not return within `bound`.
fn bounded<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    let h = std::thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    match rx.recv_timeout(bound) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(RecvTimeoutError::Timeout) => panic!("{what}: no answer within {bound:?} (hung)"),
    }
}

/// What is at a path, to compare before and after: file bytes, or a link's target.
fn snapshot(path: &Path) -> Option<Vec<u8>> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if m.file_type().is_symlink() {
        let t = std::fs::read_link(path).unwrap();
        Some(t.to_string_lossy().as_bytes().to_vec())
    } else if m.is_file() {
        Some(std::fs::read(path).unwrap())
    } else {
        Some(format!("{:o} {}", m.mode(), m.ino()).into_bytes())
    }
}

/// Every call on a handle for `path` must fail with an error accepted by `expect` whose
/// message names the path, within a bound, and leave the directory and the file as they were.
fn assert_refused(path: &Path, what: &str, expect: fn(&Error) -> bool) {
    let dir = path.parent().unwrap().to_path_buf();
    let before = (listing(&dir), snapshot(path));
    let p = path.to_path_buf();
    let results = bounded(what, Duration::from_secs(20), move || {
        let lt = LockTicket::open(&p).expect("open() only resolves the path");
        let r = |op: &'static str, r: lockticket::Result<()>| (op, r);
        let short = Duration::from_millis(50);
        vec![
            r(
                "main_lock(Exclusive)",
                lt.main_lock(Share::Exclusive).map(drop),
            ),
            r("main_lock(Shared)", lt.main_lock(Share::Shared).map(drop)),
            r("token_lock", lt.token_lock().map(drop)),
            r("token_lock_shared", lt.token_lock_shared().map(drop)),
            r("try_token_lock", lt.try_token_lock().map(drop)),
            r("token_lock_timeout", lt.token_lock_timeout(short).map(drop)),
            r("status", lt.status().map(drop)),
            r("payload", lt.payload().map(drop)),
            r("set_payload", lt.set_payload(b"x")),
        ]
    });
    let shown = path.display().to_string();
    for (op, r) in results {
        let e = match r {
            Ok(()) => panic!("{what}: {op} succeeded"),
            Err(e) => e,
        };
        assert!(expect(&e), "{what}: {op}: unexpected error {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&shown),
            "{what}: {op}: {msg:?} does not name the path"
        );
    }
    let after = (listing(&dir), snapshot(path));
    assert_eq!(before, after, "{what}: the directory or the file changed");
}

fn invalid(e: &Error, want: fn(&HeaderError) -> bool) -> bool {
    matches!(e, Error::InvalidTable { reason, .. } if want(reason))
}

// ---------------------------------------------------------------------------------------------
// Hostile files.

#[test]
fn empty_garbage_and_truncated_files_are_refused() {
    let scratch = Scratch::new("badfiles");
    let valid = valid_table(&scratch);
    let mut rng = Rng::seeded();
    let seed = rng.0;

    let p = scratch.join("empty.lt");
    write_file(&p, b"", 0o600);
    assert_refused(&p, "empty file", |e| {
        invalid(e, |r| matches!(r, HeaderError::Empty))
    });

    let p = scratch.join("garbage.lt");
    write_file(&p, &rng.bytes(8192), 0o600);
    assert_refused(&p, &format!("8 KiB of garbage (seed {seed:#x})"), |e| {
        matches!(e, Error::InvalidTable { .. })
    });

    let p = scratch.join("zeros.lt");
    write_file(&p, &vec![0; valid.len()], 0o600);
    assert_refused(&p, "zeros of a table's size", |e| {
        invalid(e, |r| matches!(r, HeaderError::BadMagic { .. }))
    });

    let p = scratch.join("trunc100.lt");
    write_file(&p, &valid[..100], 0o600);
    assert_refused(&p, "a table truncated to 100 bytes", |e| {
        invalid(e, |r| matches!(r, HeaderError::Truncated { len: 100 }))
    });

    let p = scratch.join("trunc5000.lt");
    write_file(&p, &valid[..5000], 0o600);
    assert_refused(&p, "a table truncated to 5000 bytes", |e| {
        invalid(e, |r| {
            matches!(
                r,
                HeaderError::Truncated { .. } | HeaderError::SizeMismatch { .. }
            )
        })
    });

    let mut longer = valid.clone();
    longer.extend_from_slice(&[0; 4096]);
    let p = scratch.join("longer.lt");
    write_file(&p, &longer, 0o600);
    assert_refused(&p, "a table with a page appended", |e| {
        invalid(e, |r| matches!(r, HeaderError::SizeMismatch { .. }))
    });
}

#[test]
fn foreign_and_newer_headers_are_refused() {
    let scratch = Scratch::new("badheaders");
    let valid = valid_table(&scratch);

    let mut b = valid.clone();
    b[..8].copy_from_slice(b"NOTMINE!");
    let p = scratch.join("magic.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "wrong magic", |e| {
        invalid(e, |r| matches!(r, HeaderError::BadMagic { .. }))
    });

    let newer = layout::FORMAT_VERSION + 1;
    let mut b = valid.clone();
    put_u32(&mut b, OFF_VERSION, newer);
    fix_checksum(&mut b);
    let p = scratch.join("newer.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "a newer format version", |e| {
        matches!(
            e,
            Error::UnsupportedVersion { found, supported, .. }
                if *found == layout::FORMAT_VERSION + 1 && *supported == layout::FORMAT_VERSION
        )
    });
    // Newer is newer even when the rest of the header is from the future too.
    put_u32(&mut b, OFF_RING_CAPACITY, 3);
    fix_checksum(&mut b);
    std::fs::remove_file(&p).unwrap();
    write_file(&p, &b, 0o600);
    assert_refused(
        &p,
        "a newer format version with unknown fields",
        |e| matches!(e, Error::UnsupportedVersion { found, .. } if *found == layout::FORMAT_VERSION + 1),
    );

    // A table of the PID-naming format 1: a clear error that says what to do.
    let mut b = valid.clone();
    put_u32(&mut b, OFF_VERSION, 1);
    fix_checksum(&mut b);
    let p = scratch.join("v1.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "format version 1", |e| {
        let msg = e.to_string();
        invalid(e, |r| matches!(r, HeaderError::OldVersion { found: 1 }))
            && msg.contains("remove the file")
            && msg.contains("migration")
    });
    // A table of format 2 (before fairness modes): refused the same way.
    let mut b = valid.clone();
    put_u32(&mut b, OFF_VERSION, 2);
    fix_checksum(&mut b);
    let p = scratch.join("v2.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "format version 2", |e| {
        invalid(e, |r| matches!(r, HeaderError::OldVersion { found: 2 }))
            && e.to_string().contains("migration")
    });

    let mut b = valid.clone();
    put_u32(&mut b, OFF_VERSION, 0);
    fix_checksum(&mut b);
    let p = scratch.join("older.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "format version 0", |e| {
        invalid(e, |r| matches!(r, HeaderError::UnknownVersion { found: 0 }))
    });

    let mut b = valid.clone();
    b[OFF_MEMBERS_OFFSET as usize] ^= 0x10; // checksum left stale
    let p = scratch.join("checksum.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "a header with a stale checksum", |e| {
        invalid(e, |r| matches!(r, HeaderError::Checksum))
    });
}

#[test]
fn hostile_but_checksum_valid_headers_are_refused() {
    let scratch = Scratch::new("hostilehdr");
    let valid = valid_table(&scratch);
    let cases: [(&str, usize, u64, bool); 8] = [
        ("ring_capacity 3", OFF_RING_CAPACITY, 3, true),
        ("ring_capacity 0", OFF_RING_CAPACITY, 0, true),
        ("ring_capacity 2^20", OFF_RING_CAPACITY, 1 << 20, true),
        ("ring_capacity 2^31", OFF_RING_CAPACITY, 1 << 31, true),
        ("member_capacity 0", OFF_MEMBER_CAPACITY, 0, true),
        (
            "member_capacity 2^32-1",
            OFF_MEMBER_CAPACITY,
            u64::from(u32::MAX),
            true,
        ),
        (
            "payload_capacity 2^64-1",
            OFF_PAYLOAD_CAPACITY,
            u64::MAX,
            false,
        ),
        ("main_mode 7", OFF_MAIN_MODE, 7, true),
    ];
    for (i, (what, off, value, is_u32)) in cases.into_iter().enumerate() {
        let mut b = valid.clone();
        if is_u32 {
            put_u32(&mut b, off, value as u32);
        } else {
            put_u64(&mut b, off, value);
        }
        fix_checksum(&mut b);
        let p = scratch.join(&format!("hostile{i}.lt"));
        write_file(&p, &b, 0o600);
        assert_refused(&p, what, |e| {
            invalid(e, |r| {
                matches!(
                    r,
                    HeaderError::BadField { .. } | HeaderError::SizeMismatch { .. }
                )
            })
        });
    }
    // A ring capacity that is a valid power of two but disagrees with the file's size and
    // offsets: the header must be checked against itself and the file, not just field ranges.
    let mut b = valid.clone();
    put_u32(&mut b, OFF_RING_CAPACITY, 1 << 16);
    fix_checksum(&mut b);
    let p = scratch.join("hostile-big-ring.lt");
    write_file(&p, &b, 0o600);
    assert_refused(&p, "ring_capacity 2^16 in a small file", |e| {
        matches!(e, Error::InvalidTable { .. })
    });
}

#[test]
fn a_symlink_at_the_path_is_never_followed() {
    let scratch = Scratch::new("symlink");
    let target = scratch.join("mine.txt");
    write_file(&target, b"precious", 0o600);
    let link = scratch.join("link-to-mine.lt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_refused(&link, "a symlink to a file we own", |e| {
        matches!(e, Error::Symlink { .. })
    });
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    // To a valid table in use: the table is untouched (no owner, no token, same bytes).
    let real = scratch.join("real.lt");
    let lt = LockTicket::open(&real).unwrap();
    let main = lt.main_lock(Share::Exclusive).unwrap();
    let bytes = std::fs::read(&real).unwrap();
    let link = scratch.join("link-to-table.lt");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_refused(&link, "a symlink to a valid table", |e| {
        matches!(e, Error::Symlink { .. })
    });
    assert_eq!(
        std::fs::read(&real).unwrap(),
        bytes,
        "the target table changed"
    );
    let st = lt.status().unwrap();
    assert_eq!(st.members.len(), 1, "{st}");
    assert!(st.holders.is_empty() && st.queue.is_empty(), "{st}");

    // Dangling: nothing is created at the target.
    let nowhere = scratch.join("nowhere.lt");
    let link = scratch.join("dangling.lt");
    std::os::unix::fs::symlink(&nowhere, &link).unwrap();
    assert_refused(&link, "a dangling symlink", |e| {
        matches!(e, Error::Symlink { .. })
    });
    assert!(
        std::fs::symlink_metadata(&nowhere).is_err(),
        "the target was created"
    );

    // To a file of another user (root only).
    let theirs = scratch.join("theirs.txt");
    write_file(&theirs, b"not yours", 0o600);
    if give_to_nobody(&theirs) {
        let link = scratch.join("link-to-theirs.lt");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        assert_refused(&link, "a symlink to another user's file", |e| {
            matches!(e, Error::Symlink { .. })
        });
        assert_eq!(std::fs::read(&theirs).unwrap(), b"not yours");
    } else {
        eprintln!("cannot chown here: skipping the symlink to another user's file");
    }
    main.unlock().unwrap();
}

#[test]
fn directories_fifos_and_devices_are_not_tables() {
    let scratch = Scratch::new("notfiles");
    let dir = scratch.join("dir.lt");
    std::fs::create_dir(&dir).unwrap();
    assert_refused(&dir, "a directory", |e| {
        matches!(e, Error::NotARegularFile { .. })
    });

    let fifo = scratch.join("fifo.lt");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A FIFO without a writer would block a plain open: assert_refused bounds every call.
    assert_refused(
        &fifo,
        "a FIFO",
        |e| matches!(e, Error::NotARegularFile { kind, .. } if kind.contains("FIFO")),
    );

    let dev = scratch.join("dev.lt");
    let made = nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3), // /dev/null
    );
    match made {
        Ok(()) => assert_refused(
            &dev,
            "a character device",
            |e| matches!(e, Error::NotARegularFile { kind, .. } if kind.contains("device")),
        ),
        Err(e) => eprintln!("cannot mknod here ({e}): skipping the device case"),
    }
}

/// A socket cannot be opened (ENXIO): the error must still say what is at the path, like
/// for a FIFO or a device, not just "open failed: No such device or address".
#[test]
fn a_socket_is_not_a_table() {
    let scratch = Scratch::new("socket");
    let sock = scratch.join("sock.lt");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_refused(
        &sock,
        "a socket",
        |e| matches!(e, Error::NotARegularFile { kind, .. } if kind.contains("socket")),
    );
}

#[test]
fn files_owned_by_others_or_with_odd_modes_are_doubtful() {
    let scratch = Scratch::new("doubtful");
    let valid = valid_table(&scratch);
    let doubtful = |e: &Error| {
        matches!(e, Error::DoubtfulPermissions { .. })
            && e.to_string().contains("doubtful permissions")
    };

    let p = scratch.join("setuid.lt");
    write_file(&p, &valid, 0o600);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4600)).unwrap();
    assert_refused(&p, "a table with the setuid bit", doubtful);

    let p = scratch.join("world.lt");
    write_file(&p, &valid, 0o600);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o606)).unwrap();
    assert_refused(&p, "a world-writable table", doubtful);

    let p = scratch.join("foreign.lt");
    write_file(&p, &valid, 0o600);
    if give_to_nobody(&p) {
        assert_refused(&p, "a table owned by uid 65534", doubtful);
    } else {
        eprintln!("cannot chown here (not root?): the foreign owner case is skipped");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile environments.

#[test]
fn a_read_only_directory_gives_a_clear_error() {
    let scratch = Scratch::new("readonly");
    let path = scratch.join("t.lt");
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o555)).unwrap();
    let lt = LockTicket::open(&path).unwrap();
    let r = lt.main_lock(Share::Exclusive);
    if is_root() {
        // Root passes permission checks: the table may well be created. Only "no panic".
        eprintln!(
            "running as root: main_lock in a read-only directory gave {}",
            describe(&r, |_| String::new())
        );
        drop(r);
        // The real check, from an unprivileged helper.
        let mut h = Helper::spawn("as-nobody", &[path.to_str().unwrap()]);
        let said = h.expect("result");
        if said.starts_with("skipped") {
            eprintln!("{said}");
        } else {
            assert!(said.starts_with("Err Io"), "{said}");
            assert!(said.contains(&path.display().to_string()), "{said}");
            assert!(said.contains("ermission denied"), "{said}");
        }
    } else {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    assert!(listing(&scratch.0).is_empty(), "{:?}", listing(&scratch.0));
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_missing_directory_gives_a_clear_error() {
    let scratch = Scratch::new("missingdir");
    let path = scratch.join("no/such/dir/t.lt");
    let lt = LockTicket::open(&path).unwrap();
    for r in [
        lt.main_lock(Share::Exclusive).map(drop),
        lt.main_lock(Share::Shared).map(drop),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
    let e = lt.token_lock().unwrap_err();
    assert!(matches!(e, Error::NotCreated { .. }), "{e:?}");
    assert!(listing(&scratch.0).is_empty());
}

#[test]
fn a_table_on_a_disk_filesystem_works() {
    let dir = std::env::temp_dir();
    let fs = nix::sys::statfs::statfs(&dir).unwrap();
    let memory = fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
        || fs.filesystem_type().0 as i64 == 0x8584_58f6;
    eprintln!(
        "{} is {} (fs magic {:#x})",
        dir.display(),
        if memory {
            "memory-backed: this is not a disk test here"
        } else {
            "not tmpfs: a real disk round trip"
        },
        fs.filesystem_type().0
    );
    let scratch = Scratch::new("disk");
    let path = scratch.join("t.lt");
    let counter = scratch.join("counter");
    let lt = LockTicket::open(&path).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    assert!(main.created());
    lt.set_payload(b"hello from the parent").unwrap();
    let g = lt.token_lock().unwrap();
    let p = path.to_str().unwrap();
    let c = counter.to_str().unwrap();
    let mut hs: Vec<Helper> = (0..2)
        .map(|_| Helper::spawn("roundtrip", &[p, c, "100"]))
        .collect();
    wait_until("both helpers to queue", || {
        lt.status().unwrap().queue.len() == 2
    });
    drop(g);
    let mut seen = Vec::new();
    for h in &mut hs {
        seen.push(h.expect("payload"));
    }
    assert!(
        seen.iter().any(|s| s == "hello from the parent"),
        "a helper read the payload: {seen:?}"
    );
    assert_eq!(Counter::open(&counter).get(), 200);
    let last = String::from_utf8(lt.payload().unwrap()).unwrap();
    assert!(last.starts_with("from "), "{last}");
    main.unlock().unwrap();
    assert!(!path.exists());
    assert_eq!(listing(&scratch.0), ["counter"]);
}

// ---------------------------------------------------------------------------------------------
// A table overwritten while in use.

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_u64(path: &Path, at: u64) -> u64 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_ne_bytes(b)
}

const PROBE_OPS: [&str; 9] = [
    "try_token_lock",
    "try_token_lock_shared",
    "status",
    "payload",
    "set_payload",
    "token_lock_timeout",
    "token_lock_shared_timeout",
    "token_lock",
    "token_lock_shared",
];

/// A table in use (we own it, a helper holds the token) is overwritten by `corrupt`; then
/// every call must answer Ok or `Corrupted` — no panic, no other error, and no hang of a call
/// that has a deadline. Returns the problems found.
fn garbage_round(
    scratch: &Scratch,
    i: usize,
    what: &str,
    corrupt: impl FnOnce(&Path),
) -> Vec<String> {
    let path = scratch.join(&format!("t{i}.lt"));
    let p = path.to_str().unwrap().to_string();
    let lt = Arc::new(LockTicket::builder(&path).ring_capacity(8).open().unwrap());
    let main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&p]);
    holder.expect("held");
    corrupt(&path);

    let mut problems = Vec::new();
    let mut check = |op: &str, r: &str, may_hang: bool| {
        eprintln!("  [{what}] {op}: {r}");
        let fine = (r.starts_with("Ok") || r.starts_with("Corrupted")) && !r.contains("Err ");
        if !(fine || (may_hang && r.starts_with("hung"))) {
            problems.push(format!("{what}: {op}: {r}"));
        }
        let exclusive = !op.contains("shared") && op.contains("token_lock");
        if exclusive && r.starts_with("Ok got=true") {
            // Not a failure (a hostile writer can always forge a consistent "released"
            // state), but worth knowing: the corruption went unnoticed.
            eprintln!(
                "  NOTE [{what}] {op}: an exclusive token was granted while a live helper \
                 holds one: the corruption was not detected"
            );
        }
    };
    // In this process, on the handle that owns the table (calls that never wait).
    for op in [
        "try_token_lock",
        "try_token_lock_shared",
        "status",
        "payload",
    ] {
        let lt2 = lt.clone();
        let r = bounded(op, Duration::from_secs(10), move || run_op(&lt2, op));
        check(op, &r, false);
    }
    // In a fresh process, every call, each watched.
    let mut probe = Helper::spawn("probe", &[&[p.as_str()][..], &PROBE_OPS[..]].concat());
    loop {
        let line = probe.next();
        if line == "probe end" {
            break;
        }
        let rest = line.strip_prefix("probe ").unwrap();
        let (op, r) = rest.split_once(' ').unwrap();
        check(op, r, may_wait(op));
        if r.starts_with("hung") {
            break; // the probe exits
        }
    }
    holder.send("release");
    let released = holder.expect("released");
    check("holder's unlock", &released, false);
    let unlocked = describe(&main.unlock(), |_| String::new());
    check("main unlock", &unlocked, false);
    problems
}

#[test]
fn a_table_overwritten_with_garbage_while_in_use_gives_errors_not_hangs() {
    let scratch = Scratch::new("garbage");
    let mut rng = Rng::seeded();
    let seed = rng.0;
    eprintln!("garbage seed {seed:#x}");
    let ring_len = (8 * SLOT) as usize;
    let mut problems = Vec::new();
    let mut round = 0;
    let mut run = |what: &str, corrupt: &mut dyn FnMut(&Path)| {
        round += 1;
        problems.extend(garbage_round(&scratch, round, what, corrupt));
    };
    for _ in 0..3 {
        let (ring, head, tail) = (rng.bytes(ring_len), rng.next(), rng.next());
        run("random ring, head and tail", &mut |p| {
            overwrite(p, HEADER, &ring);
            overwrite(p, HEAD, &head.to_ne_bytes());
            overwrite(p, TAIL, &tail.to_ne_bytes());
        });
    }
    let ring = rng.bytes(ring_len);
    run("random ring, head and tail kept", &mut |p| {
        overwrite(p, HEADER, &ring)
    });
    run("head jumped past the held ticket", &mut |p| {
        let tail = read_u64(p, TAIL);
        overwrite(p, HEAD, &(tail + 5).to_ne_bytes());
    });
    run("tail three laps ahead of head", &mut |p| {
        let head = read_u64(p, HEAD);
        overwrite(p, TAIL, &(head + 3 * 8).to_ne_bytes());
    });
    let registry = rng.bytes(64 * 64);
    run("random main-lock registry", &mut |p| {
        let members_offset = read_u64(p, OFF_MEMBERS_OFFSET);
        overwrite(p, members_offset, &registry);
    });
    let payload = rng.bytes(8192);
    run("random payload region", &mut |p| {
        let offset = read_u64(p, OFF_PAYLOAD_OFFSET);
        let len = read_u64(p, OFF_PAYLOAD_REGION_LEN) as usize;
        overwrite(p, offset, &payload[..len.min(payload.len())]);
    });
    run("all ones", &mut |p| {
        overwrite(p, HEADER, &vec![0xff; ring_len]);
        overwrite(p, HEAD, &u64::MAX.to_ne_bytes());
        overwrite(p, TAIL, &u64::MAX.to_ne_bytes());
    });
    assert!(
        problems.is_empty(),
        "garbage seed {seed:#x}: calls that panicked, hung despite a deadline, or gave \
         another error than Corrupted:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Registrations: claims name process-table entries, the kernel's OFD lock vouches for them.

/// The process-table entry a live process registered in: (index, generation).
fn registration_of(path: &Path, pid: u32) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    let h: FixedHeader = bytemuck::pod_read_unaligned(&bytes[..layout::FIXED_HEADER_SIZE]);
    (0..h.proc_capacity)
        .find_map(|i| {
            let off = (h.procs_offset + u64::from(i) * layout::PROC_SIZE) as usize;
            let field =
                |o: usize| u32::from_ne_bytes(bytes[off + o..off + o + 4].try_into().unwrap());
            // generation at 0, kind at 4, pid at 8 (docs/format.md).
            (field(4) != 0 && field(8) == pid).then(|| (i, field(0)))
        })
        .unwrap_or_else(|| panic!("process {pid} is not registered in {}", path.display()))
}

/// Writes a claim for ticket 0 (slot 0, lap 0) naming registration `(index, generation)`,
/// with the generation's bits in the word and (if `publish`) in the slot's generation field;
/// `futex` as given; tail = 1.
fn forge_claim(path: &Path, (index, generation): (u32, u32), publish: bool, futex: u32) {
    assert_eq!(read_u64(path, TAIL), 0, "a fresh table");
    // Lap 0 (bits 32..) and lap tag 0 (bits 40.. of the generation field) are zero.
    let lap = 0u64;
    let word: u64 =
        (lap << 32) | ((u64::from(generation) & FP_MASK) << FP_SHIFT) | u64::from(index + 1);
    let gen_field: u64 = if publish {
        (lap << 40) | (u64::from(generation) & START_MASK)
    } else {
        0
    };
    overwrite(path, HEADER, &word.to_ne_bytes());
    overwrite(path, HEADER + 8, &gen_field.to_ne_bytes());
    overwrite(path, HEADER + 32, &futex.to_ne_bytes());
    overwrite(path, TAIL, &1u64.to_ne_bytes());
}

#[test]
fn a_claim_of_a_taken_over_registration_is_reclaimed() {
    let scratch = Scratch::new("regreuse");
    for (publish, futex) in [(true, HOLDING), (false, 0)] {
        let path = scratch.join(&format!("t-{publish}.lt"));
        let lt = LockTicket::open(&path).unwrap();
        let main = lt.main_lock(Share::Exclusive).unwrap();
        // A live process registered at an entry: the claim names the entry's previous
        // registrant (one generation back), as a claim left by a dead process does.
        let mut live = Helper::spawn("register", &[path.to_str().unwrap()]);
        live.expect("registered");
        let (index, generation) = registration_of(&path, live.pid());
        // Unpublished, only the generation's low bits are in the claim; they differ too.
        forge_claim(&path, (index, generation.wrapping_sub(1)), publish, futex);
        let st = lt.status().unwrap();
        let owner = st.holders.first().unwrap_or_else(|| panic!("{st}"));
        assert!(
            !owner.alive,
            "a claim of a taken-over registration looks alive: {st}"
        );
        let t0 = Instant::now();
        let g = lt
            .token_lock_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|| panic!("the stale claim on entry {index} was not reclaimed"));
        eprintln!("stale registration: reclaimed in {:?}", t0.elapsed());
        assert_eq!(g.previous_holder_died(), futex == HOLDING);
        assert_eq!(lt.status().unwrap().reclaimed_slots, 1);
        drop(g);
        main.unlock().unwrap();
        live.kill();
    }
}

#[test]
fn a_claim_by_a_live_process_is_not_reclaimed() {
    let scratch = Scratch::new("reglive");
    let path = scratch.join("t.lt");
    let lt = LockTicket::open(&path).unwrap();
    let main = lt.main_lock(Share::Exclusive).unwrap();
    let mut live = Helper::spawn("register", &[path.to_str().unwrap()]);
    live.expect("registered");
    let pid = live.pid();
    forge_claim(&path, registration_of(&path, pid), true, HOLDING);
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders
            .iter()
            .map(|t| (t.pid, t.alive))
            .collect::<Vec<_>>(),
        [(pid, true)],
        "{st}"
    );
    assert!(
        lt.token_lock_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none(),
        "the claim of live process {pid} was taken away"
    );
    assert_eq!(lt.status().unwrap().reclaimed_slots, 0);
    live.kill();
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the claim of the killed process is reclaimed");
    assert!(g.previous_holder_died());
    assert_eq!(lt.status().unwrap().reclaimed_slots, 1);
    drop(g);
    main.unlock().unwrap();
}

/// A tmpfs of 16 KiB mounted for one test, unmounted on drop.
struct TinyTmpfs(std::path::PathBuf);

impl TinyTmpfs {
    /// `None` where mounting is not allowed (not root, or no mount namespace rights).
    fn mount(scratch: &Scratch) -> Option<TinyTmpfs> {
        let dir = scratch.join("tiny");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyTmpfs(dir))
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_filesystem_gives_a_clear_error_and_leaves_nothing() {
    let scratch = Scratch::new("fullfs");
    let Some(fs) = TinyTmpfs::mount(&scratch) else {
        // CI runs as root, where this test does its work; elsewhere there is nothing to mount.
        eprintln!(
            "a_full_filesystem_gives_a_clear_error_and_leaves_nothing: cannot mount, skipped"
        );
        return;
    };
    let path = fs.0.join("table.lt");
    // A default table (~100 KiB) does not fit a 16 KiB tmpfs: posix_fallocate says so up
    // front, instead of a SIGBUS when the mapping is first written.
    let lt = LockTicket::open(&path).unwrap();
    let e = lt.main_lock(Share::Exclusive).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(
        msg.contains(path.to_str().unwrap()) || msg.contains("tiny"),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("space"), "{msg}");
    assert_eq!(
        listing(&fs.0),
        Vec::<String>::new(),
        "nothing half-made is left"
    );
    // A table small enough to fit works.
    let small = LockTicket::builder(&path)
        .ring_capacity(2)
        .member_capacity(1)
        .process_capacity(4)
        .payload_capacity(64)
        .open()
        .unwrap();
    let _main = small.main_lock(Share::Exclusive).unwrap();
    drop(small.token_lock().unwrap());
}

#[test]
fn a_file_that_is_not_a_table_is_said_so_and_never_advised_for_removal() {
    let scratch = Scratch::new("notatable");
    // A user's own 0755 script, and a 1,221-byte file of something else.
    let script = scratch.join("job.sh");
    write_file(&script, b"#!/bin/sh\necho hello\n", 0o755);
    let other = scratch.join("data.bin");
    write_file(&other, &vec![b'x'; 1221], 0o644);
    for (p, size) in [(&script, 21u64), (&other, 1221)] {
        let lt = LockTicket::open(p).unwrap();
        let e = lt.main_lock(Share::Shared).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, Error::InvalidTable { reason: HeaderError::BadMagic { len, .. }, .. } if *len == size),
            "{msg}"
        );
        assert!(
            msg.contains("not a lock table") && msg.contains(&format!("{size}-byte")),
            "{msg}"
        );
        assert!(
            !msg.contains("remove") && !msg.contains("permissions"),
            "{msg}"
        );
    }
}
