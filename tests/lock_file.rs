//! Keyed tables (a lock file's table, `table_for_lock_file` + `set_lock_file`): processes that
//! see different table directories for one lock file still exclude each other, through the
//! kernel `flock` a holder takes on the lock file itself (issue 17, item 4).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Counter, Helper, Scratch, hear, say};
use lockticket::{LockTicket, Share};

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn open_keyed(file: &Path, dir: &Path) -> LockTicket {
    let table = lockticket::table_for_lock_file(file, Some(dir))
        .unwrap()
        .expect("a regular file is keyed");
    let lt = LockTicket::open(&table).unwrap();
    lt.set_lock_file(file).unwrap();
    lt
}

/// How many of this process's descriptors refer to a description holding a `flock`
/// (`/proc/self/fdinfo`).
fn flocks_held() -> usize {
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|info| {
                info.lines()
                    .any(|l| l.starts_with("lock:") && l.contains("FLOCK"))
            })
        })
        .count()
}

fn dispatch(role: &str, args: &[String]) {
    let (file, dir, counter) = (
        PathBuf::from(&args[0]),
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
    );
    let lt = open_keyed(&file, &dir);
    let _owner = lt.main_lock(Share::Shared).unwrap();
    let counter = Counter::open(&counter);
    match role {
        // Holds the exclusive token until told to go, with the counter at 1 meanwhile.
        "hold" => {
            let t = lt.token_lock().unwrap();
            assert!(t.lock_file_description().unwrap().is_some());
            counter.set(1);
            say("held");
            hear();
            counter.set(0);
            drop(t);
            say("released");
        }
        // Tries, tries with a timeout, tries shared, then waits: must never hold while the
        // other table's holder does.
        "contend" => {
            let got = lt.try_token_lock().unwrap();
            say(format!("try {}", got.is_some()));
            drop(got);
            let got = lt.token_lock_timeout(Duration::from_millis(30)).unwrap();
            say(format!("timeout {}", got.is_some()));
            drop(got);
            let got = lt.try_token_lock_shared().unwrap();
            say(format!("shared {}", got.is_some()));
            drop(got);
            say("waiting");
            let t = lt.token_lock().unwrap();
            say(format!("held {}", counter.get()));
            drop(t);
        }
        // Holds the exclusive token, forks: the child must not keep the kernel lock's
        // description (so that it cannot keep the lock after we die); we still hold it.
        "fork" => {
            let t = lt.token_lock().unwrap();
            assert_eq!(flocks_held(), 1, "the holder's description shows its flock");
            let child = common::fork_child(|| {
                assert_eq!(
                    flocks_held(),
                    0,
                    "the child kept the lock file's description"
                );
            });
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            say(format!("child {status}"));
            use std::os::fd::AsRawFd;
            let probe = std::fs::File::open(&file).unwrap();
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            say(format!("parent holds {}", rc == -1));
            drop(t);
        }
        other => panic!("unknown role {other}"),
    }
}

/// Two processes whose tables for one lock file live in different directories (as a container
/// with its own /dev/shm and a host process): only one holds at a time. Before the kernel lock
/// on the lock file, each ring granted its own holder: the contender's try got the token.
#[test]
fn different_table_directories_still_exclude() {
    let s = Scratch::new("lf-dirs");
    let (d1, d2) = (s.join("one"), s.join("two"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let counter = s.join("counter");
    let arg = |d: &Path| {
        [
            file.display().to_string(),
            d.display().to_string(),
            counter.display().to_string(),
        ]
    };
    let a1 = arg(&d1);
    let mut holder = Helper::spawn("hold", &a1.each_ref().map(String::as_str));
    holder.expect("held");
    let a2 = arg(&d2);
    let mut other = Helper::spawn("contend", &a2.each_ref().map(String::as_str));
    assert_eq!(other.next(), "try false", "two tables, two holders");
    assert_eq!(other.next(), "timeout false");
    assert_eq!(other.next(), "shared false");
    other.expect("waiting");
    holder.send("go");
    holder.expect("released");
    assert_eq!(
        other.next(),
        "held 0",
        "held while the other table's holder did"
    );
    assert!(holder.finish().success());
    assert!(other.finish().success());
}

/// A holder that forks: the child lets go of the kernel lock's description (pointed at
/// /dev/null), so a holder that forks a worker and dies does not leave the lock file locked by
/// the worker; the holder itself still holds it.
#[test]
fn a_forked_child_does_not_keep_the_kernel_lock() {
    let s = Scratch::new("lf-fork");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let counter = s.join("counter");
    let args = [
        file.display().to_string(),
        s.0.display().to_string(),
        counter.display().to_string(),
    ];
    let mut h = Helper::spawn("fork", &args.each_ref().map(String::as_str));
    assert_eq!(
        h.next(),
        "child 0",
        "the forked child kept the lock file's description"
    );
    assert_eq!(h.next(), "parent holds true");
    assert!(h.finish().success());
}

/// Within one table the kernel lock never blocks: shared holders of one process each hold
/// their own description, and releasing one leaves the other's lock in place.
#[test]
fn shared_holders_of_one_process_keep_their_own_kernel_lock() {
    let s = Scratch::new("lf-shared");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let lt = open_keyed(&file, &s.0);
    let _owner = lt.main_lock(Share::Shared).unwrap();
    let a = lt.token_lock_shared().unwrap();
    let b = lt.token_lock_shared().unwrap();
    drop(a);
    // b still holds LOCK_SH: an exclusive flock from another description is refused.
    let probe = std::fs::File::open(&file).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, -1, "the remaining shared holder lost its kernel lock");
    drop(b);
    // SAFETY: as above.
    let rc = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "released holders left the kernel lock behind");
}

/// The descriptor form refuses a descriptor it cannot use with its own error,
/// `Error::BadDescriptor`, whose detail says why and whose message says what to do: an
/// `O_PATH` descriptor, and a descriptor of another file than the handle's lock file.
#[test]
fn a_bad_descriptor_is_its_own_error() {
    use lockticket::{DescriptorProblem, Error};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let s = Scratch::new("lf-bad-fd");
    let (file, other) = (s.join("job.lock"), s.join("other.lock"));
    std::fs::write(&file, b"").unwrap();
    std::fs::write(&other, b"").unwrap();
    let lt = open_keyed(&file, &s.0);
    let _owner = lt.main_lock(Share::Shared).unwrap();
    let path_only = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&file)
        .unwrap();
    match lt.lock_fd(path_only.as_fd(), Share::Exclusive, Some(Duration::ZERO)) {
        Err(
            e @ Error::BadDescriptor {
                problem: DescriptorProblem::PathOnly,
                ..
            },
        ) => assert!(
            e.to_string()
                .contains("open the file for reading or writing"),
            "{e}"
        ),
        other => panic!("an O_PATH descriptor: {other:?}"),
    }
    let elsewhere = std::fs::File::open(&other).unwrap();
    let got = lt.lock_fd(elsewhere.as_fd(), Share::Exclusive, Some(Duration::ZERO));
    match got {
        Err(Error::BadDescriptor {
            path,
            problem: DescriptorProblem::OtherFile,
        }) => assert!(path.ends_with("other.lock"), "{path:?}"),
        other => panic!("a descriptor of another file: {other:?}"),
    }
    assert!(matches!(
        lt.unlock_fd(elsewhere.as_fd()),
        Err(Error::BadDescriptor {
            problem: DescriptorProblem::OtherFile,
            ..
        })
    ));
}
