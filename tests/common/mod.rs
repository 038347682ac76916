//! Shared test plumbing: helper processes (this test binary re-run in a role), unique table
//! names, bounded waits. No test sleeps to synchronise: helpers report over pipes, and the
//! parent waits for reported events or for table states, with a generous bound that only
//! turns a hang into a failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

mod executor;
mod shared;
#[allow(unused_imports)] // not every test file uses every piece
pub use executor::*;
#[allow(unused_imports)] // not every test file uses every piece
pub use shared::*;

/// Upper bound for any single wait in a test: a hang becomes a failure, not a stuck CI.
pub const BOUND: Duration = Duration::from_secs(60);

const ROLE_VAR: &str = "LOCKTICKET_TEST_ROLE";
const ARGS_VAR: &str = "LOCKTICKET_TEST_ARGS";

/// A table name no other test (or test run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// If this process was started as a helper, runs `dispatch(role, args)` and exits.
/// Each test file calls this from a `#[test] fn helper_entry()`.
pub fn helper_entry(dispatch: fn(&str, &[String])) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS_VAR)
        .unwrap_or_default()
        .split('\u{1f}')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    dispatch(&role, &args);
    std::process::exit(0);
}

/// Reports an event to the parent (a line on stdout, prefixed to stand out of libtest's).
pub fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {}", msg.as_ref()).unwrap();
    out.flush().unwrap();
}

/// Reads one line from stdin (the parent's command); empty at EOF.
pub fn hear() -> String {
    let mut s = String::new();
    std::io::stdin().read_line(&mut s).unwrap();
    s.trim().to_string()
}

/// A helper process.
pub struct Helper {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub role: String,
}

impl Helper {
    /// Starts this test binary again in `role`, with `args`, running `entry` (the name of the
    /// file's helper test).
    pub fn spawn(role: &str, args: &[&str]) -> Helper {
        Helper::spawn_via(&[], &std::env::current_exe().unwrap(), role, args)
    }

    /// Like [`Helper::spawn`], but runs the test binary `exe` through `wrapper` (a command
    /// and its arguments that end by running the program given after them, as
    /// `unshare --pid --fork` or `setpriv --reuid U` do).
    pub fn spawn_via(wrapper: &[&str], exe: &std::path::Path, role: &str, args: &[&str]) -> Helper {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args([
                "--exact",
                "helper_entry",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE_VAR, role)
            .env(ARGS_VAR, args.join("\u{1f}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = line.strip_prefix("@@ ")
                    && tx.send(msg.to_string()).is_err()
                {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Helper {
            child,
            stdin,
            lines: rx,
            role: role.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next event and returns it.
    pub fn next(&mut self) -> String {
        match self.lines.recv_timeout(BOUND) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("helper {} said nothing for {BOUND:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "helper {} exited ({:?}) before saying anything more",
                    self.role,
                    self.child.wait()
                )
            }
        }
    }

    /// The next event if one has come already (never waits).
    pub fn try_next(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Waits for an event starting with `prefix`, returns the rest of the line.
    pub fn expect(&mut self, prefix: &str) -> String {
        let line = self.next();
        match line.strip_prefix(prefix) {
            Some(rest) => rest.trim().to_string(),
            None => panic!("helper {} said {line:?}, expected {prefix:?}", self.role),
        }
    }

    /// Sends a command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// SIGKILLs the helper and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits for the exit (bounded).
    pub fn finish(mut self) -> ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "helper {} did not exit",
                self.role
            );
            std::thread::sleep(Duration::from_millis(2)); // polling an exit, not synchronising
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` until it holds; panics after [`BOUND`]. For waiting on an observable state
/// (a table's queue, a file), not as a delay.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A counter in a plain file, updated non-atomically (read, yield, write): exact only under
/// mutual exclusion.
pub struct Counter(std::fs::File);

impl Counter {
    pub fn open(path: &std::path::Path) -> Counter {
        Counter(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .unwrap(),
        )
    }
    pub fn get(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        let n = self.0.read_at(&mut b, 0).unwrap();
        if n < 8 { 0 } else { u64::from_ne_bytes(b) }
    }
    pub fn set(&self, v: u64) {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(&v.to_ne_bytes(), 0).unwrap();
    }
    /// The non-atomic increment.
    pub fn bump(&self) {
        let v = self.get();
        std::thread::yield_now();
        self.set(v + 1);
    }
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn join(&self, f: &str) -> std::path::PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
