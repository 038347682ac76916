//! `lockticket exec FILE` and the descriptor form take the kernel's `flock` on the lock file
//! as well (issue 17, item 4): lockticket and flock(1) exclude each other on the same file, and
//! processes that see different `/dev/shm` (so different keyed tables) still exclude each
//! other. Nothing sleeps to synchronise: commands create files the test waits for (bounded).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);

/// The tests of this file run one at a time. Judging a descriptor-form holder of a *deleted*
/// lock file reads the kernel's lock list by device and inode number, and a number freed by
/// one test's deleted file is soon another test's lock file, locked at the same byte by its
/// own descriptor holder: the dead holder then looks alive (the safe side, documented in
/// docs/design.md) and a test that expects it judged dead would fail now and then.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockticket")
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("cli-lf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Children killed when the test ends, however it ends.
#[derive(Default)]
struct Kids(Vec<Child>);

impl Kids {
    fn spawn(&mut self, mut c: Command) -> usize {
        c.stdin(Stdio::null());
        self.0.push(c.spawn().expect("spawn"));
        self.0.len() - 1
    }
    fn wait(&mut self, i: usize) -> std::process::ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(s) = self.0[i].try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "a child did not finish");
            std::thread::sleep(Duration::from_millis(2)); // polling an exit
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + BOUND;
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {path:?}");
        std::thread::sleep(Duration::from_millis(2)); // polling a file the command makes
    }
}

/// A shell command that creates `held`, then waits (bounded) for `go` to exist.
fn hold_until(held: &Path, go: &Path) -> String {
    format!(
        "touch '{}'; i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 9; \
         sleep 0.01; done",
        held.display(),
        go.display()
    )
}

/// Whether another description can take an exclusive flock on `file` right now: through
/// util-linux flock(1) when it is installed, else `flock(2)` here.
fn flock_free(file: &Path) -> bool {
    if let Ok(st) = Command::new("flock")
        .arg("-n")
        .arg(file)
        .arg("true")
        .stdin(Stdio::null())
        .status()
    {
        return st.success();
    }
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).unwrap();
    // SAFETY: flock on a descriptor we own (closed right after, dropping the lock).
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// `lockticket exec FILE` holds the kernel's flock on FILE while the command runs (flock(1)
/// users are kept out), and a flock(1) holder of FILE keeps `lockticket exec -n FILE` out.
/// Before: lockticket never touched the file, so each ignored the other.
#[test]
fn exec_and_flock_exclude_each_other() {
    let _serial = one_at_a_time();
    let s = Scratch::new("flock");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let mut kids = Kids::default();

    for no_fork in [false, true] {
        let (held, go) = (
            s.join(&format!("held{no_fork}")),
            s.join(&format!("go{no_fork}")),
        );
        let mut c = Command::new(bin());
        c.arg("exec");
        if no_fork {
            c.arg("-F");
        }
        c.arg(&file).args(["sh", "-c", &hold_until(&held, &go)]);
        let i = kids.spawn(c);
        wait_for(&held);
        assert!(
            !flock_free(&file),
            "flock(1) got the file while lockticket exec{} held it",
            if no_fork { " -F" } else { "" }
        );
        std::fs::write(&go, b"").unwrap();
        assert!(kids.wait(i).success());
        if no_fork {
            // With -F the guardian keeps the lock's descriptions and the kernel ends it when
            // the command ends (PR_SET_PDEATHSIG): free a moment after our wait returns, not
            // before (docs/cli.md). Under load that moment is visible: ask until it is free.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !flock_free(&file) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the kernel lock outlived the -F command by 10 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(1)); // polling, not sync
            }
        } else {
            // Without -F, lockticket releases before it exits.
            assert!(flock_free(&file), "the kernel lock outlived the command");
        }
    }

    // The other way round: a flock(1) (or flock(2)) holder keeps lockticket out.
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(&file).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = Command::new(bin())
        .args(["exec", "-n"])
        .arg(&file)
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "lockticket ran beside a flock holder"
    );
    let out = Command::new(bin())
        .args(["exec", "-w", "0.05"])
        .arg(&file)
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "lockticket -w ran beside a flock holder"
    );
    drop(f);
    let out = Command::new(bin())
        .args(["exec", "-n"])
        .arg(&file)
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The descriptor form (`exec 9>FILE; lockticket exec 9`) takes the flock on the shell's own
/// description, as flock(1) does: held until the shell closes it.
#[test]
fn descriptor_form_holds_the_flock_on_the_description() {
    let _serial = one_at_a_time();
    let s = Scratch::new("fd");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let (held, go) = (s.join("held"), s.join("go"));
    let mut kids = Kids::default();
    let script = format!(
        "exec 9>>'{}'; '{}' exec 9 || exit 7; {}",
        file.display(),
        bin(),
        hold_until(&held, &go)
    );
    let i = kids.spawn({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    wait_for(&held);
    assert!(
        !flock_free(&file),
        "flock(1) got the file the descriptor form holds"
    );
    std::fs::write(&go, b"").unwrap();
    assert!(kids.wait(i).success());
    assert!(flock_free(&file));
    // The closed holder's table is reclaimed and removed by a cleaner naming the file.
    let table = lockticket::table_for_lock_file(&file, None)
        .unwrap()
        .unwrap();
    let out = Command::new(bin())
        .arg("clean")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!table.exists(), "{out:?}");
}

/// Root only: a process with a private tmpfs on /dev/shm (a container, PrivateTmp /
/// PrivateDevices) meets in its own keyed table, yet is kept out while a host process holds
/// the same FILE. Before: both held.
#[test]
fn private_dev_shm_still_excludes() {
    let _serial = one_at_a_time();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (unshare -m, mount tmpfs on /dev/shm)");
        return;
    }
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs none /dev/shm"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("skipped: the kernel refused unshare -m + a tmpfs mount on /dev/shm");
        return;
    }
    let s = Scratch::new("shm");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let (held, go) = (s.join("held"), s.join("go"));
    let mut kids = Kids::default();
    let i = kids.spawn({
        let mut c = Command::new(bin());
        c.arg("exec")
            .arg(&file)
            .args(["sh", "-c", &hold_until(&held, &go)]);
        c
    });
    wait_for(&held);
    let inside = |wait: &str| {
        let script = format!(
            "mount -t tmpfs none /dev/shm && ls -A /dev/shm | grep -q . && exit 8; \
             exec '{}' exec {wait} '{}' sh -c 'ls -A /dev/shm | grep -q lockticket || exit 8'",
            bin(),
            file.display()
        );
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = inside("-n");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a private /dev/shm let a second holder in: {out:?}"
    );
    let out = inside("-w 0.05");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    std::fs::write(&go, b"").unwrap();
    assert!(kids.wait(i).success());
    let out = inside("-n");
    assert!(out.status.success(), "{out:?}");
}

/// A descriptor-form holder whose lock file was deleted, then whose descriptor was closed, is
/// dead: `status` (naming the table, as nobody can name the file any more) says so and `clean`
/// removes the table. While the shell still has the descriptor open it stays alive and kept.
/// Before: judged alive forever (no anchor could be opened), and `clean`/`clean --all` kept it.
#[test]
fn a_deleted_lock_files_closed_descriptor_holder_is_dead() {
    let _serial = one_at_a_time();
    let s = Scratch::new("deleted");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let table = lockticket::table_for_lock_file(&file, None)
        .unwrap()
        .unwrap();
    let (held, go) = (s.join("held"), s.join("go"));
    let mut kids = Kids::default();
    let script = format!(
        "exec 9>>'{f}'; '{b}' exec 9 || exit 7; rm '{f}'; {hold}; exec 9>&-",
        f = file.display(),
        b = bin(),
        hold = hold_until(&held, &go)
    );
    let i = kids.spawn({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    wait_for(&held);
    assert!(!file.exists());
    let lt = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .arg(&table)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Alive while the shell has it open (found through the shell's descriptor).
    let st = lt(&["status"]);
    assert!(st.contains("state    in use"), "{st}");
    assert!(!st.contains("(dead)"), "{st}");
    assert!(lt(&["clean"]).starts_with("kept"));

    std::fs::write(&go, b"").unwrap();
    assert!(kids.wait(i).success());
    let st = lt(&["status"]);
    assert!(
        st.contains("state    unused"),
        "a closed descriptor of a deleted lock file still holds: {st}"
    );
    assert!(st.contains("(dead)"), "{st}");
    let cleaned = lt(&["clean"]);
    assert!(cleaned.starts_with("removed"), "{cleaned}");
    assert!(!table.exists());
}

/// Root only, in a private /dev/shm (so that `clean --all` touches no other table): the same
/// with `clean --all`, which names no lock file at all.
#[test]
fn clean_all_removes_a_deleted_lock_files_dead_descriptor_table() {
    let _serial = one_at_a_time();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (unshare -m, mount tmpfs on /dev/shm)");
        return;
    }
    let s = Scratch::new("cleanall");
    let file = s.join("job.lock");
    let script = format!(
        "mount -t tmpfs none /dev/shm || exit 10; \
         sh -c \"exec 9>'{f}'; '{b}' exec 9 || exit 7; rm '{f}'; exec 9>&-\" || exit 11; \
         [ -n \"$(ls -A /dev/shm)\" ] || exit 12; \
         '{b}' clean --all || exit 13; \
         [ -z \"$(ls -A /dev/shm)\" ] || {{ ls -A /dev/shm; exit 14; }}",
        f = file.display(),
        b = bin()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.code() == Some(10) {
        eprintln!("skipped: the kernel refused a tmpfs mount on /dev/shm");
        return;
    }
    assert!(out.status.success(), "{out:?}");
}

/// Root only (to become another user): the same judgement works for an unprivileged user, who
/// cannot see other users' descriptors — the kernel's list of file locks is readable by all.
#[test]
fn an_unprivileged_user_sees_a_closed_descriptor_holder_dead() {
    let _serial = one_at_a_time();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to run the scenario as user nobody)");
        return;
    }
    let s = Scratch::new("nobody");
    let mut perms = std::fs::metadata(&s.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(&s.0, perms).unwrap();
    let file = s.join("job.lock");
    let script = format!(
        "exec 9>'{f}'; K=$(printf '/dev/shm/lockticket-file-%x-%x' $((0x$(stat -c %D '{f}'))) \
         $(stat -c %i '{f}')); '{b}' exec 9 || exit 7; \
         for T in \"$K\".lt \"$K\"-*.lt; do [ -e \"$T\" ] && break; done; rm '{f}'; exec 9>&-; \
         '{b}' status \"$T\" | grep -q '^state    unused' || {{ '{b}' status \"$T\"; exit 8; }}; \
         '{b}' clean \"$T\" | grep -q '^removed' || exit 9; [ ! -e \"$T\" ] || exit 10",
        f = file.display(),
        b = bin()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no setpriv");
        return;
    };
    assert!(out.status.success(), "{out:?}");
}

/// `exec -F FILE`: the exec guardian keeps the kernel lock on the lock file together with the
/// registration, so the lock ends with the command — not with a background child it left
/// running (issue 17 items 4 and 5 together).
#[test]
fn no_fork_kernel_lock_ends_with_the_command_not_with_its_background_children() {
    let _serial = one_at_a_time();
    let s = Scratch::new("nofork-kernel");
    let file = s.join("job.lock");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(bin())
        .args(["exec", "-F"])
        .arg(&file)
        .args(["-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bg: libc::pid_t = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the background PID");
    /// SIGKILLs the background child at the end, whatever happens.
    struct KillOnDrop(libc::pid_t);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: signals one process by its PID (known to be > 0).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    assert!(bg > 0);
    let _kill = KillOnDrop(bg);
    // The guardian ends with the command: wait (bounded) until the kernel lock is free.
    let f = std::fs::File::open(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: flock on a descriptor we own.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if r == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lock file stays locked while the command's background child runs"
        );
        std::thread::sleep(Duration::from_millis(5)); // polling a kernel state, bounded
    }
    // And the queue is free too (once our own flock is gone: lockticket would wait for it).
    drop(f);
    let out = Command::new(bin())
        .args(["exec", "-w", "5"])
        .arg(&file)
        .arg("true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
