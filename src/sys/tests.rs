use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;

#[test]
fn stat_parsing_survives_odd_command_names() {
    let line = b"123 (a) b) (c) S 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 3 21 424242 23\n";
    let st = Stat {
        state: b'S',
        threads: 3,
        start: 424242,
    };
    assert_eq!(parse_stat(line), Some(st));
    assert_eq!(parse_stat(b"garbage"), None);
    assert_eq!(parse_stat(b"1 (x) Z"), None);
}

#[test]
fn filesystems_are_told_apart() {
    assert_eq!(network_fs_name(0x6969), Some("NFS"));
    assert_eq!(network_fs_name(0xff53_4d42_u32 as i64), Some("CIFS"));
    assert_eq!(network_fs_name(0xfe53_4d42_u32 as i64), Some("SMB2"));
    assert_eq!(network_fs_name(0x0102_1994), None); // tmpfs
    assert!(is_memory_fs(0x0102_1994));
    assert!(is_memory_fs(0x8584_58f6_u32 as i64));
    assert!(!is_memory_fs(0xef53)); // ext4
    // /dev/shm is tmpfs on every Linux this runs on; its magic is read, not guessed.
    if let Ok(magic) = fs_magic_of_path(std::path::Path::new("/dev/shm")) {
        assert!(is_memory_fs(magic), "{magic:#x}");
    }
}

#[test]
fn the_identity_cache_is_wiped_in_every_child() {
    if !fork_detection_wipes() {
        println!(
            "SKIP: the kernel refuses MADV_WIPEONFORK (Linux < 4.14?): a raw fork is \
             not detected here; pthread_atfork still covers fork(3)"
        );
        return;
    }
    assert!(!CACHE.load(Ordering::Relaxed).is_null());
}

#[test]
fn fork_local_descriptors_are_tracked_until_untracked() {
    let f = File::open("/dev/null").unwrap();
    let fd = f.as_raw_fd();
    let tracked = ForkLocal::new(f);
    assert!(is_fork_local(fd));
    assert!(
        PLACEHOLDER.load(Ordering::Relaxed) >= 0,
        "/dev/null is open"
    );
    // What `drop` does before closing (checked while the number cannot be reused).
    untrack(fd);
    assert!(!is_fork_local(fd));
    drop(tracked);
}

#[test]
fn we_are_alive_and_pid_zero_is_not() {
    let (pid, start) = current_identity();
    assert_eq!(pid, std::process::id());
    assert_eq!(process_status(pid), ProcStatus::Alive { start });
    assert_eq!(process_status(0), ProcStatus::Dead);
    assert_eq!(process_status(PID_MAX + 1), ProcStatus::Dead);
}

#[test]
fn futex_waitv_reports_mismatch_timeout_and_the_woken_word() {
    if !futex_waitv_supported() {
        eprintln!("futex_waitv missing on this kernel: nothing to test");
        return;
    }
    let words = [AtomicU32::new(0), AtomicU32::new(5), AtomicU32::new(7)];
    let set = |v: [u32; 3]| -> Vec<(&AtomicU32, u32)> { words.iter().zip(v).collect() };
    assert_eq!(
        futex_waitv(&set([0, 5, 8]), None).unwrap(),
        WaitvOutcome::Mismatch
    );
    assert_eq!(
        futex_waitv(&set([0, 5, 7]), Some(Duration::from_millis(1))).unwrap(),
        WaitvOutcome::TimedOut
    );
    assert_eq!(
        futex_waitv(&[], None).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // 128 words are taken (the last one differs: back at once), 129 are refused.
    let many: Vec<AtomicU32> = (0..=FUTEX_WAITV_MAX).map(|_| AtomicU32::new(0)).collect();
    let mut set_many: Vec<(&AtomicU32, u32)> = many.iter().map(|w| (w, 0)).collect();
    set_many[FUTEX_WAITV_MAX - 1].1 = 1;
    assert_eq!(
        futex_waitv(&set_many[..FUTEX_WAITV_MAX], None).unwrap(),
        WaitvOutcome::Mismatch
    );
    assert_eq!(
        futex_waitv(&set_many, None).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // A thread changes word 1 and wakes it while we sleep on all three: we learn which.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let words = &words;
        s.spawn(move || {
            rx.recv().unwrap();
            // A change before the sleeper sleeps shows up as a mismatch, which the loop
            // below accepts too.
            words[1].store(6, Ordering::SeqCst);
            futex_wake(&words[1], i32::MAX);
        });
        tx.send(()).unwrap();
        let start = std::time::Instant::now();
        loop {
            match futex_waitv(&set([0, 5, 7]), Some(Duration::from_secs(10))).unwrap() {
                WaitvOutcome::Woken(i) => {
                    assert_eq!(i, 1);
                    break;
                }
                WaitvOutcome::Mismatch => {
                    assert_eq!(words[1].load(Ordering::SeqCst), 6);
                    break;
                }
                WaitvOutcome::Interrupted => continue,
                WaitvOutcome::TimedOut => panic!("never woken"),
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10));
    });
}
