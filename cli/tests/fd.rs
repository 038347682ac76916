//! `lockticket exec FD` and `lockticket exec -u FD`, flock(1)'s descriptor form, run from real
//! shells (`/bin/sh`) as scripts use it.
//!
//! Nothing sleeps to synchronise: the shells signal with files they touch, the tests wait for
//! them (and for queue states, through the library's `status`) with a bound, and the shells'
//! own waits are bounded loops; a hang becomes a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);
const USAGE: i32 = 64;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockticket")
}

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("lockticket-fd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell script's prelude: `$LT` is lockticket, `wait_for FILE` waits (bounded) for a file.
fn prelude() -> String {
    format!(
        "LT='{}'; wait_for() {{ i=0; while [ ! -e \"$1\" ]; do i=$((i+1)); \
         [ $i -gt 3000 ] && exit 9; sleep 0.01; done; }}\n",
        bin()
    )
}

fn shell(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("{}{script}", prelude()))
        .stdin(Stdio::null());
    c
}

/// Children killed when the test ends, however it ends.
#[derive(Default)]
struct Kids(Vec<Child>);

impl Kids {
    fn spawn(&mut self, mut c: Command) -> usize {
        self.0.push(c.spawn().expect("spawn"));
        self.0.len() - 1
    }
    fn wait(&mut self, i: usize) -> std::process::ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(s) = self.0[i].try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "child {i} did not finish");
            std::thread::sleep(Duration::from_millis(2));
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

/// Runs a shell script to completion (bounded), collecting its output.
fn run_shell(script: &str) -> Output {
    let mut kids = Kids::default();
    let mut c = shell(script);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let i = kids.spawn(c);
    let child = &mut kids.0[i];
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        out.read_to_end(&mut o).unwrap();
        err.read_to_end(&mut e).unwrap();
        (o, e)
    });
    let status = kids.wait(i);
    let (stdout, stderr) = reader.join().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn lockticket(args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null());
    let mut kids = Kids::default();
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let i = kids.spawn(c);
    let status = kids.wait(i);
    let child = &mut kids.0[i];
    use std::io::Read;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The keyed table of a lock file, and how many requests wait in it.
fn queued(lock: &Path) -> usize {
    let table = lockticket::table_for_lock_file(lock, None)
        .unwrap()
        .unwrap();
    lockticket::LockTicket::open(&table)
        .and_then(|lt| lt.status())
        .map_or(0, |st| st.queue.len())
}

fn keyed_table(lock: &Path) -> PathBuf {
    lockticket::table_for_lock_file(lock, None)
        .unwrap()
        .unwrap()
}

#[test]
fn util_linux_fd_case_conflicts_with_a_shared_holder_and_creates_no_file() {
    // ts/flock/flock "fd": with a shared holder, `flock -n -x -E 123 4` on `exec 4<>lockfile`
    // exits 123 and no file named "4" appears.
    let s = Scratch::new("ul-fd");
    let lock = s.path("lockfile");
    std::fs::write(&lock, b"").unwrap();
    let (held, rel) = (s.path("held"), s.path("rel"));
    let mut kids = Kids::default();
    let script = s.path("hold.sh");
    std::fs::write(
        &script,
        format!(
            "touch '{}'; i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 9; \
             sleep 0.01; done",
            held.display(),
            rel.display()
        ),
    )
    .unwrap();
    let mut holder = Command::new(bin());
    holder
        .args(["exec", "--shared", lock.to_str().unwrap(), "sh"])
        .arg(&script)
        .stdin(Stdio::null());
    let h = kids.spawn(holder);
    wait_until("the shared holder", || held.exists());
    let o = run_shell(&format!(
        "cd '{}'; exec 4<>lockfile; $LT exec --nonblocking --exclusive --conflict-exit-code 123 4; \
         echo rc=$?",
        s.0.display()
    ));
    assert_eq!(text(&o.stdout).trim(), "rc=123", "{o:?}");
    assert!(!s.path("4").exists(), "fd file should not exist");
    std::fs::write(&rel, b"").unwrap();
    assert!(kids.wait(h).success());
}

#[test]
fn util_linux_unlock_case_lock_unlock_then_the_file_is_free() {
    // ts/flock/unlock: `flock -x -n --verbose FD`, `flock -u FD`, then `flock -x -w 0
    // --verbose FILE true` gets the lock while FD is still open.
    let s = Scratch::new("ul-unlock");
    let lock = s.path("lockfile");
    let o = run_shell(&format!(
        "exec 9<>'{l}'; $LT exec --exclusive --nonblock --verbose 9 || exit 1; \
         $LT exec --unlock 9 || exit 2; $LT exec --exclusive --wait 0 --verbose '{l}' true",
        l = lock.display()
    ));
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines[..2] {
        assert!(l.starts_with("lockticket: getting lock took ") && l.ends_with(" seconds"));
    }
    assert_eq!(lines[2], "lockticket: executing true");
    assert!(
        !keyed_table(&lock).exists(),
        "the last user removed the table"
    );
}

#[test]
fn a_shell_holding_fd_9_excludes_both_forms_and_unlock_hands_over_to_a_waiter() {
    let s = Scratch::new("hold");
    let lock = s.path("job");
    let (held, rel, ran) = (s.path("held"), s.path("rel"), s.path("ran"));
    let mut kids = Kids::default();
    let h = kids.spawn(shell(&format!(
        "exec 9>'{}'; $LT exec 9 || exit 1; touch '{}'; wait_for '{}'; $LT exec -u 9",
        lock.display(),
        held.display(),
        rel.display()
    )));
    wait_until("the holding shell", || held.exists());
    let l = lock.to_str().unwrap();
    let o = lockticket(&["exec", "-n", l, "true"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = run_shell(&format!("exec 9>'{l}'; $LT exec -n 9"));
    assert_eq!(
        o.status.code(),
        Some(1),
        "another description conflicts: {o:?}"
    );
    let mut waiter = Command::new(bin());
    waiter
        .args(["exec", l, "-c", &format!("touch '{}'", ran.display())])
        .stdin(Stdio::null());
    let w = kids.spawn(waiter);
    wait_until("the waiter queued", || queued(&lock) == 1);
    assert!(!ran.exists());
    std::fs::write(&rel, b"").unwrap();
    assert!(kids.wait(w).success());
    assert!(ran.exists());
    assert!(kids.wait(h).success());
    assert!(
        !keyed_table(&lock).exists(),
        "the last user removed the table"
    );
}

#[test]
fn the_end_of_the_subshell_releases_the_lock() {
    let s = Scratch::new("subshell");
    let lock = s.path("job");
    let (held, rel, after, rel2) = (
        s.path("held"),
        s.path("rel"),
        s.path("after"),
        s.path("rel2"),
    );
    let mut kids = Kids::default();
    let h = kids.spawn(shell(&format!(
        "( $LT exec -n 9 || exit 1; touch '{}'; wait_for '{}' ) 9>'{}'; [ $? = 0 ] || exit 3; \
         touch '{}'; wait_for '{}'",
        held.display(),
        rel.display(),
        lock.display(),
        after.display(),
        rel2.display()
    )));
    wait_until("the subshell holds", || held.exists());
    let l = lock.to_str().unwrap();
    let mut waiter = Command::new(bin());
    waiter
        .args(["exec", "-w", "25", l, "true"])
        .stdin(Stdio::null());
    let w = kids.spawn(waiter);
    wait_until("the waiter queued", || queued(&lock) == 1);
    std::fs::write(&rel, b"").unwrap();
    // The outer shell lives on, without fd 9: the close released the lock.
    assert!(
        kids.wait(w).success(),
        "the waiter got the lock after the subshell ended"
    );
    wait_until("the outer shell goes on", || after.exists());
    std::fs::write(&rel2, b"").unwrap();
    assert!(kids.wait(h).success());
}

#[test]
fn killing_the_holding_shell_releases_the_lock_and_reports_no_death() {
    let s = Scratch::new("kill");
    let lock = s.path("job");
    let held = s.path("held");
    let mut kids = Kids::default();
    // The shell blocks in `read` on a pipe that never delivers: no child holds fd 9.
    let mut c = shell(&format!(
        "exec 9>'{}'; $LT exec 9 || exit 1; touch '{}'; read x",
        lock.display(),
        held.display()
    ));
    c.stdin(Stdio::piped());
    let h = kids.spawn(c);
    wait_until("the holding shell", || held.exists());
    let l = lock.to_str().unwrap();
    assert_eq!(
        lockticket(&["exec", "-n", l, "true"]).status.code(),
        Some(1)
    );
    let pid = kids.0[h].id() as i32;
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = kids.wait(h);
    let o = lockticket(&[
        "exec",
        "-w",
        "25",
        l,
        "sh",
        "-c",
        "echo died=$LOCKTICKET_PREVIOUS_HOLDER_DIED",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        text(&o.stdout).trim(),
        "died=0",
        "a closed descriptor is no death"
    );
}

#[test]
fn relocking_in_the_same_shell_returns_at_once_and_converts_modes() {
    let s = Scratch::new("relock");
    let lock = s.path("job");
    let o = run_shell(&format!(
        "l='{}'; exec 9>\"$l\"; $LT exec 9; $LT exec -n 9; echo a=$?; $LT exec 9; echo b=$?; \
         $LT exec -s 9; echo c=$?; $LT exec -n \"$l\" true; echo d=$?; \
         $LT exec -n -s \"$l\" true; echo e=$?; $LT exec -x 9; echo f=$?; \
         $LT exec -n -s \"$l\" true; echo g=$?; $LT exec -u 9; echo h=$?; \
         $LT exec -u 9; echo i=$?; $LT exec -n \"$l\" true; echo j=$?",
        lock.display()
    ));
    assert_eq!(
        text(&o.stdout).split_whitespace().collect::<Vec<_>>(),
        [
            "a=0", "b=0", "c=0", "d=1", "e=0", "f=0", "g=1", "h=0", "i=0", "j=0"
        ],
        "{o:?}"
    );
    assert!(!keyed_table(&lock).exists());
}

#[test]
fn shared_locks_of_two_shells_hold_together_read_only_too() {
    let s = Scratch::new("shared");
    let lock = s.path("job");
    std::fs::write(&lock, b"").unwrap();
    let (a, rel) = (s.path("a"), s.path("rel"));
    let mut kids = Kids::default();
    // `9<file`: a read-only description holds a read lock on its byte.
    let h = kids.spawn(shell(&format!(
        "exec 9<'{}'; $LT exec -s 9 || exit 1; touch '{}'; wait_for '{}'",
        lock.display(),
        a.display(),
        rel.display()
    )));
    wait_until("the first shared holder", || a.exists());
    let o = run_shell(&format!(
        "l='{}'; exec 9>\"$l\"; $LT exec -s -n 9; echo b=$?; $LT exec -n \"$l\" true; \
         echo x=$?; $LT exec -n -s \"$l\" true; echo s=$?",
        lock.display()
    ));
    assert_eq!(
        text(&o.stdout).split_whitespace().collect::<Vec<_>>(),
        ["b=0", "x=1", "s=0"],
        "{o:?}"
    );
    // The second shell exited (its description closed): only the first one holds now.
    std::fs::write(&rel, b"").unwrap();
    assert!(kids.wait(h).success());
    let l = lock.to_str().unwrap();
    assert_eq!(
        lockticket(&["exec", "-w", "25", l, "true"]).status.code(),
        Some(0)
    );
}

#[test]
fn a_directory_opened_read_only_is_locked() {
    let s = Scratch::new("dir");
    let dir = s.path("d");
    std::fs::create_dir(&dir).unwrap();
    let o = run_shell(&format!(
        "d='{}'; exec 9<\"$d\"; $LT exec -n 9; echo a=$?; $LT exec -n \"$d\" true; echo b=$?; \
         $LT exec -u 9; $LT exec -n \"$d\" true; echo c=$?",
        dir.display()
    ));
    assert_eq!(
        text(&o.stdout).split_whitespace().collect::<Vec<_>>(),
        ["a=0", "b=1", "c=0"],
        "{o:?}"
    );
}

#[test]
fn a_bad_descriptor_is_a_usage_error_with_a_message() {
    for args in [
        &["exec", "7"][..],
        &["exec", "-u", "7"],
        &["exec", "-s", "-n", "7"],
    ] {
        let o = lockticket(args);
        assert_eq!(o.status.code(), Some(USAGE), "{o:?}");
        let err = text(&o.stderr);
        assert!(err.starts_with("lockticket: ") && err.contains("descriptor 7 is not open"));
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A device is no lock file.
    let o = run_shell("exec 9</dev/null; $LT exec 9");
    assert_eq!(o.status.code(), Some(USAGE), "{o:?}");
    assert!(text(&o.stderr).contains("a device"), "{o:?}");
    // -u is for descriptors only.
    let o = lockticket(&["exec", "-u", "./x", "true"]);
    assert_eq!(o.status.code(), Some(USAGE), "{o:?}");
}

/// Issue 18: the descriptor form builds its table with every option of `exec`, `--fairness`
/// included (a second copy of the builder once dropped it: `exec --fairness bounded 9` made a
/// strict table).
#[test]
fn the_descriptor_form_honours_fairness() {
    let s = Scratch::new("fdfair");
    let lock = s.path("job");
    let o = run_shell(&format!(
        "l='{}'; exec 9>\"$l\"; $LT exec --fairness bounded:5 9 || exit 7; \
         $LT status --json \"$l\"; $LT exec -u 9",
        lock.display()
    ));
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(out.contains("\"fairness\": \"bounded"), "{out}");
    assert!(!keyed_table(&lock).exists());
}
