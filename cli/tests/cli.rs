//! The `lockticket` command, run as a user runs it: the built binary, `std::process::Command`.
//!
//! Every test uses its own table. Nothing sleeps to synchronise: tests wait for table states
//! (via the library's `status`) or for files and lines the commands produce, always with a
//! bound (`BOUND`), so a bug fails a test instead of hanging it. Shell loops in the commands
//! are bounded the same way.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lockticket::{LockTicket, Share};

/// Upper bound of any wait: a hang becomes a failure.
const BOUND: Duration = Duration::from_secs(30);

/// `lockticket`'s exit codes (docs/cli.md).
const USAGE: i32 = 64;
const DATA: i32 = 65;
const NO_TABLE: i32 = 66;
/// flock(1)'s EX_UNAVAILABLE: the command was not found or cannot be executed.
const UNAVAILABLE: i32 = 69;
const TABLE: i32 = 74;

/// A shell fragment that waits (bounded: 30 s) until the file `$1`-style path exists, or exits
/// with status 9.
fn sh_wait_for(path: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 9; sleep 0.01; done",
        path.display()
    )
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockticket")
}

/// A table name of this test and this test run.
fn name(test: &str) -> String {
    format!("cli-{test}-{}", std::process::id())
}

fn lockticket<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs `lockticket ARGS` to completion (bounded).
fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = lockticket(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockticket");
    finish(child)
}

/// Waits (bounded) for a child and collects its output.
fn finish(mut child: Child) -> Output {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = out.as_mut() {
            s.read_to_end(&mut o).unwrap();
        }
        if let Some(s) = err.as_mut() {
            s.read_to_end(&mut e).unwrap();
        }
        (o, e)
    });
    let status = wait_child(&mut child);
    let (stdout, stderr) = reader.join().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for a child's exit, at most `BOUND`; kills it and fails on timeout.
fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pid {} did not finish within {BOUND:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `cond` until it holds, at most `BOUND`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Children killed when the test ends, however it ends.
#[derive(Default)]
struct Kids(Vec<Child>);

impl Kids {
    fn spawn(&mut self, mut c: Command) -> usize {
        self.0.push(c.spawn().expect("spawn lockticket"));
        self.0.len() - 1
    }
    fn pid(&self, i: usize) -> u32 {
        self.0[i].id()
    }
    fn wait(&mut self, i: usize) -> std::process::ExitStatus {
        wait_child(&mut self.0[i])
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

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("lockticket-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure message as a person should see it: one line, `lockticket: …`, no panic.
fn assert_one_line_error(o: &Output, code: i32, mentions: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "status of {o:?}");
    assert_eq!(e.lines().count(), 1, "one line expected: {e:?}");
    assert!(e.starts_with("lockticket: "), "{e:?}");
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{e:?}"
    );
    assert!(e.contains(mentions), "{e:?} should mention {mentions:?}");
}

/// The table is gone (its last user removed it).
fn assert_no_table(name: &str) {
    let o = run(["status", name]);
    assert_eq!(
        o.status.code(),
        Some(NO_TABLE),
        "table {name} should be gone: {o:?}"
    );
}

fn json_status(name: &str) -> serde_json::Value {
    let o = run(["status", "--json", name]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    serde_json::from_slice(&o.stdout).expect("status --json is JSON")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn exec_returns_the_command_status_and_removes_the_table() {
    let n = name("status-code");
    let n = n.as_str();
    assert_eq!(run(["exec", n, "true"]).status.code(), Some(0));
    assert_eq!(
        run(["exec", n, "sh", "-c", "exit 42"]).status.code(),
        Some(42)
    );
    assert_eq!(run(["exec", n, "-c", "exit 3"]).status.code(), Some(3));
    let o = run(["exec", n, "-c", "echo \"$LOCKTICKET_PATH\"; echo out"]);
    assert_eq!(o.status.code(), Some(0));
    let s = stdout(&o);
    assert!(
        s.contains(&format!("lockticket-{n}.lt")) && s.ends_with("out\n"),
        "{s:?}"
    );
    // Options after the command belong to the command.
    let o = run(["exec", n, "printf", "%s|", "-n", "--verbose", "-c", "x"]);
    assert_eq!(stdout(&o), "-n|--verbose|-c|x|");
    // Killed by a signal: 128 + N, as shells report it.
    assert_eq!(
        run(["exec", n, "sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
    assert_no_table(n);
}

#[test]
fn command_not_found_or_not_executable() {
    let n = name("notfound");
    let n = n.as_str();
    let o = run(["exec", n, "/nonexistent/command"]);
    assert_one_line_error(&o, UNAVAILABLE, "/nonexistent/command");
    let s = Scratch::new("noexec");
    let f = s.path("not-executable");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    let o = run(["exec".as_ref(), n.as_ref(), f.as_os_str()]);
    assert_one_line_error(&o, UNAVAILABLE, "not-executable");
    assert_no_table(n);
}

/// As flock(1): a lock file that cannot be opened because its directory is missing is 66
/// (EX_NOINPUT), and the message says so.
#[test]
fn a_missing_directory_is_66_and_named() {
    let s = Scratch::new("nodir");
    let dir = s.path("missing");
    let table = dir.join("t.lt");
    let o = run(["exec".as_ref(), table.as_os_str(), "true".as_ref()]);
    assert_one_line_error(&o, NO_TABLE, "is missing");
    assert!(stderr(&o).contains(&dir.display().to_string()), "{o:?}");
    assert!(!dir.exists());
}

/// The manual page and the completions come from the command's own definition; `-V` works on
/// every subcommand; `--help` points to the manual page.
#[test]
fn man_page_completions_and_version_everywhere() {
    let o = run(["man"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") && page.contains(".TH lockticket 1"),
        "{page}"
    );
    assert!(page.contains("lockticket\\-exec(1)"), "{page}");
    let o = run(["man", "exec"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("conflict\\-exit\\-code"), "{o:?}");
    let o = run(["man", "frobnicate"]);
    assert_one_line_error(&o, USAGE, "frobnicate");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(stdout(&o).contains("exec"), "{shell}: {o:?}");
    }
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    for args in [
        &["-V"][..],
        &["exec", "-V"],
        &["status", "-V"],
        &["payload", "get", "-V"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(stdout(&o).ends_with(&version), "{args:?}: {o:?}");
    }
    let help = stdout(&run(["--help"]));
    assert!(
        help.contains("man lockticket") && !help.contains("docs/cli.md"),
        "{help}"
    );
}

#[test]
fn verbose_reports_the_wait_and_the_grant() {
    let n = name("verbose");
    let n = n.as_str();
    let o = run(["exec", "--verbose", n, "true"]);
    assert_eq!(o.status.code(), Some(0));
    // flock(1)'s two lines, on stdout as flock prints them.
    assert_verbose_lines(&stdout(&o), "true");
}

#[test]
fn nonblock_timeout_and_conflict_code_on_a_held_lock() {
    let n = name("conflict");
    let n = n.as_str();
    let lt = LockTicket::open(n).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let token = lt.token_lock().unwrap();

    let t0 = Instant::now();
    let o = run(["exec", "-n", n, "true"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        o.stderr.is_empty(),
        "silent without --verbose, like flock(1): {o:?}"
    );
    assert!(t0.elapsed() < BOUND);
    assert_eq!(
        run(["exec", "-n", "-E", "7", n, "true"]).status.code(),
        Some(7)
    );
    assert_eq!(
        run(["exec", "-s", "--nb", n, "true"]).status.code(),
        Some(1)
    );
    assert_eq!(run(["exec", "-w", "0", n, "true"]).status.code(), Some(1));

    let t0 = Instant::now();
    let o = run(["exec", "-w", "0.2", "--verbose", n, "-c", "echo ran"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(o.stdout.is_empty(), "the command must not run");
    assert!(
        stderr(&o).contains("timeout while waiting to get lock"),
        "{o:?}"
    );
    assert_eq!(
        run(["exec", "--wait", "0.05", "-E", "9", n, "true"])
            .status
            .code(),
        Some(9)
    );

    // The failed attempts left no trace: the lock is ours, nobody waits.
    let st = lt.status().unwrap();
    assert!(st.queue.is_empty(), "{st}");
    assert_eq!(st.holders.len(), 1);
    assert_eq!(
        st.members.len(),
        1,
        "the failed execs left the table again: {st}"
    );

    drop(token);
    assert_eq!(run(["exec", "-n", n, "true"]).status.code(), Some(0));
    assert_eq!(run(["exec", "-w", "5", n, "true"]).status.code(), Some(0));
    main.unlock().unwrap();
    assert_no_table(n);
}

#[test]
fn shared_execs_run_together_and_exclude_writers() {
    let n = name("shared");
    let n = n.as_str();
    let s = Scratch::new("shared");
    let (a, b) = (s.path("a"), s.path("b"));
    let mut kids = Kids::default();
    // The first reader announces itself, then holds its shared lock until the second reader
    // has run: only possible if both hold the lock at once.
    let script = format!("touch '{}'; {}", a.display(), sh_wait_for(&b));
    let first = kids.spawn(lockticket(["exec", "-s", n, "-c", &script]));
    wait_until("the first reader to run", || a.exists());

    assert_eq!(
        run(["exec", "-n", n, "true"]).status.code(),
        Some(1),
        "a writer must wait"
    );
    assert_eq!(run(["exec", "-x", "-n", n, "true"]).status.code(), Some(1));
    let touch_b = format!("touch '{}'", b.display());
    let o = run(["exec", "-s", "-n", n, "-c", &touch_b]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a second reader runs at once: {o:?}"
    );
    assert_eq!(
        kids.wait(first).code(),
        Some(0),
        "the first reader saw the second one"
    );
    assert_no_table(n);
}

#[test]
fn exclusive_execs_exclude_each_other() {
    let n = name("exclusive");
    let n = n.as_str();
    let s = Scratch::new("exclusive");
    let (a, b) = (s.path("a"), s.path("b"));
    let mut kids = Kids::default();
    let script = format!("touch '{}'; {}", a.display(), sh_wait_for(&b));
    let first = kids.spawn(lockticket(["exec", n, "-c", &script]));
    wait_until("the first command to run", || a.exists());
    assert_eq!(run(["exec", "-n", n, "true"]).status.code(), Some(1));
    assert_eq!(run(["exec", "-s", "-n", n, "true"]).status.code(), Some(1));
    let st = json_status(n);
    assert_eq!(st["holders"][0]["pid"], kids.pid(first));
    assert_eq!(st["holders"][0]["share"], "exclusive");
    std::fs::write(&b, "").unwrap();
    assert_eq!(kids.wait(first).code(), Some(0));
    assert_no_table(n);
}

#[test]
fn waiting_execs_run_in_fifo_order_and_status_shows_the_queue() {
    const N: usize = 5;
    let n = name("fifo");
    let n = n.as_str();
    let s = Scratch::new("fifo");
    let log = s.path("log");
    std::fs::write(&log, "").unwrap();
    let lt = LockTicket::open(n).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let token = lt.token_lock().unwrap();

    let mut kids = Kids::default();
    for i in 0..N {
        let append = format!("echo {i} >> '{}'", log.display());
        let k = kids.spawn(lockticket(["exec", n, "-c", &append]));
        let pid = kids.pid(k);
        wait_until(&format!("exec {i} to queue"), || {
            let q = lt.status().unwrap().queue;
            q.len() == i + 1 && q[i].pid == pid
        });
    }

    // During contention: the holder is us, the queue lists the execs in arrival order.
    let st = json_status(n);
    assert_eq!(st["format"], 1);
    assert_eq!(st["in_use"], true);
    assert_eq!(st["holders"].as_array().unwrap().len(), 1);
    assert_eq!(st["holders"][0]["pid"], std::process::id());
    assert_eq!(st["holders"][0]["alive"], true);
    let queue = st["queue"].as_array().unwrap();
    assert_eq!(queue.len(), N);
    for (i, q) in queue.iter().enumerate() {
        assert_eq!(q["position"], i + 1);
        assert_eq!(q["pid"], kids.pid(i));
        assert_eq!(q["share"], "exclusive");
        assert!(q["age_seconds"].as_f64().unwrap() >= 0.0);
        assert!(q["command"].as_str().unwrap().contains("exec"), "{q}");
    }
    let tickets: Vec<u64> = queue
        .iter()
        .map(|q| q["ticket"].as_u64().unwrap())
        .collect();
    assert!(tickets.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
    assert_eq!(st["members"].as_array().unwrap().len(), N + 1);
    let text = stdout(&run(["status", n]));
    for i in 0..N {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}.", i + 1)))
            .unwrap_or_else(|| panic!("no queue line {}: {text}", i + 1));
        assert!(line.contains(&kids.pid(i).to_string()), "{line}");
    }

    drop(token);
    for i in 0..N {
        assert_eq!(kids.wait(i).code(), Some(0));
    }
    let order = std::fs::read_to_string(&log).unwrap();
    let expected: String = (0..N).map(|i| format!("{i}\n")).collect();
    assert_eq!(order, expected, "first come, first served");
    main.unlock().unwrap();
    assert_no_table(n);
}

#[test]
fn no_fork_runs_the_command_under_the_lockticket_pid() {
    let n = name("nofork");
    let n = n.as_str();
    let s = Scratch::new("nofork");
    let go = s.path("go");
    let mut kids = Kids::default();
    let script = format!("echo $$; {}", sh_wait_for(&go));
    let mut c = lockticket(["exec", "-F", n, "-c", &script]);
    c.stdout(Stdio::piped());
    let k = kids.spawn(c);
    let pid = kids.pid(k);
    let mut line = String::new();
    BufReader::new(kids.0[k].stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        pid.to_string(),
        "the command is the lockticket process itself"
    );

    // The command holds the lock itself, under that PID.
    let st = json_status(n);
    assert_eq!(st["holders"][0]["pid"], pid);
    assert_eq!(st["holders"][0]["alive"], true);
    assert!(
        st["holders"][0]["command"]
            .as_str()
            .unwrap()
            .starts_with("/bin/sh"),
        "{st}"
    );
    assert_eq!(run(["exec", "-n", n, "true"]).status.code(), Some(1));

    std::fs::write(&go, "").unwrap();
    assert_eq!(kids.wait(k).code(), Some(0));
    // Its exit freed the lock (it never released it: the next holder is told it died).
    let lt = LockTicket::open(n).unwrap();
    let token = lt
        .token_lock_timeout(BOUND)
        .unwrap()
        .expect("the lock is freed");
    assert!(token.previous_holder_died());
    drop(token);
    // Its registration is dead, so `clean` removes the table.
    let o = run(["clean", n]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).starts_with("removed "), "{o:?}");
    assert_no_table(n);
}

/// Issue 17, item 5: with `-F` the lock ends with the command, not with the background
/// children it leaves running (they never inherit the registration's descriptor: a guardian
/// child of lockticket keeps it, and dies with the command).
#[test]
fn no_fork_lock_ends_with_the_command_not_with_its_background_children() {
    let n = name("nofork-bg");
    let n = n.as_str();
    /// SIGKILLs the background child at the end, whatever happens.
    struct KillOnDrop(libc::pid_t);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: signals one process by its PID (known to be > 0).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    // The command leaves a child running 30 s (its streams closed, so that `run` sees the
    // end of the output) and exits; the guardian holds no stream of ours either.
    let o = run([
        "exec",
        "-F",
        n,
        "-c",
        "sleep 30 </dev/null >/dev/null 2>&1 & echo $!",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let bg: libc::pid_t = stdout(&o).trim().parse().expect("the background PID");
    assert!(bg > 0);
    let _kill = KillOnDrop(bg);
    let o = run([
        "exec",
        "-w",
        "5",
        n,
        "-c",
        "echo died=$LOCKTICKET_PREVIOUS_HOLDER_DIED",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the lock is free once the command exited, though its child still runs: {o:?}"
    );
    assert_eq!(
        stdout(&o),
        "died=1\n",
        "the command never released it: {o:?}"
    );
    assert!(!exited(bg as u32), "the background child still runs");
    drop(_kill);
    let o = run(["clean", n]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_no_table(n);
}

/// True when `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            matches!(state, Some(Some('Z' | 'X')))
        }
    }
}

#[test]
fn killing_lockticket_kills_its_command_and_frees_the_lock() {
    let n = name("sigkill");
    let n = n.as_str();
    let mut kids = Kids::default();
    let mut c = lockticket(["exec", n, "-c", "echo $$; exec sleep 60"]);
    c.stdout(Stdio::piped());
    let k = kids.spawn(c);
    let lockticket_pid = kids.pid(k);
    let mut line = String::new();
    BufReader::new(kids.0[k].stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let command_pid: u32 = line.trim().parse().expect("the command's pid");
    assert_ne!(command_pid, lockticket_pid);
    let st = json_status(n);
    assert_eq!(st["holders"][0]["pid"], lockticket_pid);

    kids.0[k].kill().unwrap(); // SIGKILL
    kids.wait(k);
    wait_until("the command to die with lockticket", || exited(command_pid));

    // The lock is free again: a waiter reclaims the dead holder's slot.
    let lt = LockTicket::open(n).unwrap();
    let token = lt
        .token_lock_timeout(BOUND)
        .unwrap()
        .expect("the lock is freed");
    assert!(token.previous_holder_died());
    drop(token);
    assert_eq!(run(["exec", "-n", n, "true"]).status.code(), Some(0));
    let o = run(["clean", n]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_no_table(n);
}

#[test]
fn signals_to_lockticket_reach_the_command() {
    for (sig, tag) in [
        (libc::SIGTERM, "term"),
        (libc::SIGINT, "int"),
        (libc::SIGHUP, "hup"),
    ] {
        let n = name(&format!("signal-{tag}"));
        let n = n.as_str();
        let mut kids = Kids::default();
        // The command reports the signal it got through its exit status.
        let script = "trap 'kill $! 2>/dev/null; exit 5' TERM INT HUP; sleep 60 & echo ready; wait";
        let mut c = lockticket(["exec", n, "-c", script]);
        c.stdout(Stdio::piped());
        // Whoever runs the tests may ignore these signals (nohup, a background job), and
        // ignored signals are inherited: start lockticket with their default handling.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(s, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let k = kids.spawn(c);
        let mut line = String::new();
        BufReader::new(kids.0[k].stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        // SAFETY: sending a signal to our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(kids.pid(k) as libc::pid_t, sig) }, 0);
        assert_eq!(kids.wait(k).code(), Some(5), "SIG{tag} reached the command");
        assert_no_table(n);
    }
}

#[test]
fn payload_round_trip_through_stdin_and_stdout() {
    let n = name("payload");
    let n = n.as_str();
    // The payload commands never create a table.
    let o = run(["payload", "get", n]);
    assert_one_line_error(&o, NO_TABLE, n);
    assert_one_line_error(&run(["payload", "set", n, "x"]), NO_TABLE, n);
    assert_one_line_error(&run(["payload", "clear", n]), NO_TABLE, n);

    let lt = LockTicket::open(n).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let value: Vec<u8> = [
        b"\0line one\n\0".as_slice(),
        &[0xff, 0xfe, b'\r', b'\n', 0],
        b"-",
    ]
    .concat();
    let mut set = lockticket(["payload", "set", n, "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all(&value).unwrap();
    assert_eq!(wait_child(&mut set).code(), Some(0));
    let o = run(["payload", "get", n]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, value, "bytes pass through unchanged");
    assert_eq!(lt.payload().unwrap(), value);
    assert_eq!(json_status(n)["payload_len"], value.len());

    assert_eq!(run(["payload", "set", n, "-v"]).status.code(), Some(0));
    assert_eq!(run(["payload", "get", n]).stdout, b"-v", "no newline added");
    lt.set_payload(b"from the library").unwrap();
    assert_eq!(run(["payload", "get", n]).stdout, b"from the library");
    assert_eq!(run(["payload", "clear", n]).status.code(), Some(0));
    let o = run(["payload", "get", n]);
    assert_eq!((o.status.code(), o.stdout.len()), (Some(0), 0));

    let big = "x".repeat(4097); // the default capacity is 4096 bytes
    assert_one_line_error(&run(["payload", "set", n, &big]), DATA, "does not fit");
    main.unlock().unwrap();
    assert_no_table(n);
}

#[test]
fn bad_arguments_give_the_usage_code_and_one_line() {
    let n = name("usage");
    let n = n.as_str();
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &["exec"],
        &["exec", n],
        &["exec", "--bogus", n, "true"],
        &["exec", "-w", "soon", n, "true"],
        &["exec", "-w", "-1", n, "true"],
        &["exec", "-E", "300", n, "true"],
        &["exec", "--mode", "999", n, "true"],
        &["exec", "--mode", "0644x", n, "true"],
        &["exec", "--mode", "0400", n, "true"],
        &["exec", n, "-c"],
        &["exec", n, "-c", "true", "extra"],
        &["status"],
        &["payload"],
        &["payload", "set", n],
        &["payload", "frob", n],
        &["clean"],
        &["clean", n, "--all"],
    ];
    for args in cases {
        let o = run(*args);
        assert_eq!(o.status.code(), Some(USAGE), "{args:?}: {o:?}");
        let e = stderr(&o);
        if args.len() > 1 || args[0] == "frobnicate" {
            assert_eq!(e.lines().count(), 1, "{args:?}: one line expected: {e}");
            assert!(e.starts_with("lockticket: "), "{args:?}: {e}");
        }
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
    assert_no_table(n);
    let o = run(["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Exit status:") && stdout(&o).contains("64"));
    assert!(stdout(&run(["exec", "--help"])).contains("--conflict-exit-code"));
}

#[test]
fn hostile_table_files_give_the_table_error() {
    let s = Scratch::new("hostile");
    let marker = s.path("ran");
    // Files that start like a lock table but are not a usable one (a file without the
    // table's magic, or a directory, is a flock-style lock *file* instead: see
    // `a_directory_or_an_existing_file_is_locked_without_being_touched`).
    let garbage = s.path("garbage.lt");
    let mut bytes = b"LCKTCKT\0".to_vec();
    bytes.extend(b"this is not a lock table \0\xff\xfe".repeat(100));
    std::fs::write(&garbage, &bytes).unwrap();
    let empty = s.path("empty.lt");
    std::fs::write(&empty, b"LCKTCKT\0").unwrap();
    let link = s.path("link.lt");
    std::os::unix::fs::symlink(&garbage, &link).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&garbage, &empty] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let touch = format!("touch '{}'", marker.display());
    for path in [&garbage, &empty, &link] {
        let p = path.to_str().unwrap();
        let shown = path.file_name().unwrap().to_str().unwrap();
        assert_one_line_error(&run(["exec", p, "-c", &touch]), TABLE, shown);
        assert_one_line_error(&run(["exec", "-n", "-s", p, "true"]), TABLE, shown);
        assert_one_line_error(&run(["status", p]), TABLE, shown);
        assert_one_line_error(&run(["status", "--json", p]), TABLE, shown);
        assert_one_line_error(&run(["payload", "get", p]), TABLE, shown);
        assert_one_line_error(&run(["payload", "set", p, "v"]), TABLE, shown);
        assert_one_line_error(&run(["clean", p]), TABLE, shown);
    }
    assert!(!marker.exists(), "no command ran on a hostile table");
    assert!(
        garbage.exists() && empty.exists() && link.exists(),
        "nothing was removed"
    );

    // A table wider than requested is refused ("doubtful permissions") unless --mode says so.
    let shared = s.path("shared.lt");
    let shared = shared.to_str().unwrap();
    let mut kids = Kids::default();
    let (started, go) = (s.path("started"), s.path("go"));
    let script = format!("touch '{}'; {}", started.display(), sh_wait_for(&go));
    let k = kids.spawn(lockticket([
        "exec", "--mode", "0660", shared, "-c", &script,
    ]));
    wait_until("the command on the shared table to run", || {
        started.exists()
    });
    let o = run(["exec", "-n", shared, "true"]);
    assert_one_line_error(&o, TABLE, "doubtful permissions");
    assert!(stderr(&o).contains("--mode"));
    assert_eq!(
        run(["exec", "-n", "--mode", "660", shared, "true"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        run(["status", shared]).status.code(),
        Some(0),
        "status accepts the file's mode"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(kids.wait(k).code(), Some(0));
    assert!(!Path::new(shared).exists());
}

#[test]
fn list_and_clean_remove_only_dead_tables() {
    let s = Scratch::new("list");
    let dir = s.0.to_str().unwrap().to_string();
    let orphan = s.path("lockticket-orphan.lt");
    let live = s.path("lockticket-live.lt");
    let broken = s.path("lockticket-broken.lt");
    std::fs::write(&broken, b"garbage").unwrap();

    // -F leaves a table whose only owner (the command) is dead.
    let o = run([
        "exec".as_ref(),
        "-F".as_ref(),
        orphan.as_os_str(),
        "true".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(orphan.exists());
    let lt = LockTicket::open(&live).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();

    let o = run(["list", &dir]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = stdout(&o);
    let line = |f: &Path| {
        let f = f.to_str().unwrap().to_string();
        text.lines()
            .find(|l| l.starts_with(&f))
            .unwrap_or_else(|| panic!("{f} in {text}"))
            .to_string()
    };
    assert!(line(&orphan).contains("unused"), "{text}");
    assert!(line(&live).contains("in use: 1 owner"), "{text}");
    assert!(
        line(&broken).contains("unusable") && line(&broken).contains("not a lock table"),
        "{text}"
    );

    // A live table is kept, even when asked by name.
    let o = run(["clean".as_ref(), live.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).starts_with("kept "), "{o:?}");
    assert!(live.exists());

    let o = run(["clean", "--all", "--dir", &dir]);
    assert_eq!(
        o.status.code(),
        Some(TABLE),
        "the broken file is reported: {o:?}"
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{o:?}");
    let text = stdout(&o);
    assert!(
        text.contains(&format!("removed {}", orphan.display())),
        "{text}"
    );
    assert!(text.contains(&format!("kept {}", live.display())), "{text}");
    assert!(!orphan.exists() && live.exists() && broken.exists());

    main.unlock().unwrap();
    assert!(!live.exists());
    let o = run(["clean".as_ref(), orphan.as_os_str()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("no lock table"), "{o:?}");
    std::fs::remove_file(&broken).unwrap();
    assert!(stdout(&run(["list", &dir])).starts_with("no lock tables"));
}

#[test]
fn a_holder_killed_with_nobody_waiting_is_reported_to_the_next_exec() {
    let n = name("died-alone");
    let n = n.as_str();
    // `-F`: the shell is the lockticket process, owner and holder; it SIGKILLs itself holding
    // the token after leaving a payload, with nobody waiting.
    let o = run([
        "exec",
        "-F",
        n,
        "-c",
        &format!("{} payload set {n} half-done && kill -9 $$", bin()),
    ]);
    assert_eq!(o.status.code(), None, "killed by SIGKILL: {o:?}");
    let o = run([
        "exec",
        n,
        "-c",
        &format!(
            "echo died=$LOCKTICKET_PREVIOUS_HOLDER_DIED; {} payload get {n}",
            bin()
        ),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "died=1\nhalf-done", "{}", stderr(&o));
    let o = run([
        "exec",
        n,
        "-c",
        "echo died=$LOCKTICKET_PREVIOUS_HOLDER_DIED",
    ]);
    assert_eq!(stdout(&o), "died=0\n");
    assert_no_table(n);
}

#[test]
fn exec_keep_hands_the_payload_to_the_next_run_and_clean_removes_it() {
    let n = name("keep");
    let n = n.as_str();
    let set = format!("'{}' payload set {n} 'from run 1'", bin());
    let o = run([
        "exec",
        "--keep",
        "--ring-capacity",
        "16",
        "--payload-capacity",
        "8192",
        n,
        "-c",
        &set,
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The table outlived its last user, with the capacities it was created with.
    let st = json_status(n);
    assert_eq!(st["payload_capacity"], 8192, "{st}");
    assert_eq!(st["ring_capacity"], 16, "{st}");
    let get = format!("'{}' payload get {n}", bin());
    let o = run(["exec", "--keep", n, "-c", &get]);
    assert_eq!(stdout(&o), "from run 1", "{o:?}");
    let o = run(["clean", n]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_no_table(n);
}

#[test]
fn a_directory_or_an_existing_file_is_locked_without_being_touched() {
    let dir = std::env::temp_dir().join(name("lockfile"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let before = std::fs::read(&script).unwrap();
    let exe = bin();
    // flock's idioms: lock a directory, lock the script itself ("$0"); a second request by
    // another path to the same file meets the first in the same queue (-n: conflict, 1).
    for (target, other) in [
        (
            dir.to_str().unwrap().to_string(),
            format!("{}/.", dir.display()),
        ),
        (
            script.to_str().unwrap().to_string(),
            format!(
                "{}/../{}/job.sh",
                dir.display(),
                dir.file_name().unwrap().to_str().unwrap()
            ),
        ),
    ] {
        let inner = format!("'{exe}' exec -n '{other}' true; echo $?");
        let o = run(["exec", target.as_str(), "-c", inner.as_str()]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(
            stdout(&o),
            "1\n",
            "the same file by another path is the same lock: {o:?}"
        );
        let o = run(["exec", "-n", target.as_str(), "true"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "free again after the first exec: {o:?}"
        );
    }
    assert_eq!(
        std::fs::read(&script).unwrap(),
        before,
        "the script was touched"
    );
    // A relative path works as flock's does: relative to the current directory.
    let o = lockticket(["exec", "job.lock", "-c", "echo \"$LOCKTICKET_PATH\""])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // Made absolute when opened: the command may chdir and still use it.
    assert_eq!(
        stdout(&o),
        format!("{}\n", dir.join("job.lock").display()),
        "{o:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn list_shows_a_removed_table_still_in_use() {
    let s = Scratch::new("removed-list");
    let table = s.path("lockticket-rm.lt");
    let (started, go) = (s.path("started"), s.path("go"));
    let script = format!("touch '{}'; {}", started.display(), sh_wait_for(&go));
    let mut kids = Kids::default();
    let k = kids.spawn(lockticket(["exec", table.to_str().unwrap(), "-c", &script]));
    wait_until("the holder to run", || started.exists());
    std::fs::remove_file(&table).unwrap(); // rm under a live holder
    let o = run(["list", s.0.to_str().unwrap()]);
    let text = stdout(&o);
    let pid = kids.pid(k);
    assert!(
        text.contains("lockticket-rm.lt  removed, still in use by pid(s)")
            && text.contains(&pid.to_string()),
        "{text}"
    );
    std::fs::write(&go, b"").unwrap();
    kids.wait(k);
}

/// `--verbose`'s stdout, as util-linux's tests/expected/flock/unlock has it for flock (with the
/// time replaced): `getting lock took <n> seconds`, then `executing CMD`.
fn assert_verbose_lines(out: &str, cmd: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let took = lines[0]
        .strip_prefix("lockticket: getting lock took ")
        .and_then(|l| l.strip_suffix(" seconds"))
        .unwrap_or_else(|| panic!("{out:?}"));
    let (secs, micros) = took.split_once('.').unwrap_or_else(|| panic!("{out:?}"));
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{out:?}");
    assert!(micros.parse::<u32>().is_ok(), "{out:?}");
    assert_eq!(lines[1], format!("lockticket: executing {cmd}"), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// util-linux's own flock(1) tests (tests/ts/flock/{flock,close,unlock}), ported: the same
// cases and expected statuses, as lockticket runs them. The holder's `sleep 3` of the original
// is a wait for a file the test creates, and the time check is an order check.

#[test]
fn util_linux_flock_cases_against_a_shared_holder() {
    let s = Scratch::new("ul-flock");
    // The original's $TS_OUTDIR/lockfile: first missing (the table is created at the path),
    // then as an existing empty file (a lock file: its table is kept in tmpfs).
    for existing in [false, true] {
        let lockfile = s.path(if existing {
            "lockfile-existing"
        } else {
            "lockfile"
        });
        if existing {
            std::fs::write(&lockfile, b"").unwrap();
        }
        let lf = lockfile.to_str().unwrap();
        let log = s.path(&format!("log-{existing}"));
        let (started, release) = (
            s.path(&format!("started-{existing}")),
            s.path(&format!("release-{existing}")),
        );
        let mut kids = Kids::default();
        let holder = format!(
            "echo Locking >> '{log}'; touch '{started}'; {wait}; echo Unlocking >> '{log}'",
            log = log.display(),
            started = started.display(),
            wait = sh_wait_for(&release),
        );
        let general = kids.spawn(lockticket(["exec", "--shared", lf, "bash", "-c", &holder]));
        wait_until("the general (shared) lock", || started.exists());

        // non-block, no-fork, exclusive: a conflict, with the status of -E; nothing runs.
        for opts in [
            &["--nonblocking", "--conflict-exit-code", "123"][..],
            &["--no-fork", "--nonblocking", "--conflict-exit-code", "123"],
            &["--nb", "--exclusive", "--conflict-exit-code", "123"],
        ] {
            let mut args = vec!["exec"];
            args.extend_from_slice(opts);
            args.extend([lf, "echo", "You will never see this!"]);
            let o = run(&args);
            assert_eq!(o.status.code(), Some(123), "{opts:?}: {o:?}");
            assert!(
                o.stdout.is_empty() && o.stderr.is_empty(),
                "{opts:?}: {o:?}"
            );
        }
        // shared: granted next to the general lock.
        let o = run(["exec", "--shared", lf, "echo", "Have shared lock"]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(stdout(&o), "Have shared lock\n");

        // timeout: waits for the general lock to end, then runs (status 0, not -E's 5).
        let after = format!("echo 'After timeout.' >> '{}'", log.display());
        let waiter = kids.spawn(lockticket([
            "exec",
            "--timeout",
            "30",
            "--conflict-exit-code",
            "5",
            lf,
            "-c",
            &after,
        ]));
        wait_until("the waiter to queue", || {
            json_status(lf)["queue"]
                .as_array()
                .is_some_and(|q| q.len() == 1)
        });
        std::fs::write(&release, b"").unwrap();
        assert_eq!(kids.wait(general).code(), Some(0));
        assert_eq!(kids.wait(waiter).code(), Some(0));
        // time-check: it ran only once the general lock was released.
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "Locking\nUnlocking\nAfter timeout.\n"
        );
        if existing {
            assert_eq!(std::fs::read(&lockfile).unwrap(), b"", "lock file touched");
        } else {
            assert!(
                !lockfile.exists(),
                "the table at the path is removed after use"
            );
        }
    }
}

#[test]
fn util_linux_flock_fd_case_is_refused_without_creating_a_file() {
    // ts/flock/flock "fd", with descriptor 4 *not* open (the open case is in tests/fd.rs): a
    // usage error (64), and no file named "4" appears.
    let s = Scratch::new("ul-fd");
    let o = lockticket(["exec", "--nonblocking", "--exclusive", "-E", "123", "4"])
        .current_dir(&s.0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(USAGE), "{o:?}");
    assert!(!s.path("4").exists(), "fd file should not exist");
}

#[test]
fn util_linux_close_case_the_command_holds_no_descriptor_of_the_lock() {
    // ts/flock/close: with --close the command does not hold the lock, so a nested
    // `flock -n` on the same lock cannot share it. For lockticket the lock always belongs to
    // lockticket, never to the command: the nested request conflicts (1) with or without -o,
    // where flock's nested request by the same descriptor succeeds without -o.
    let s = Scratch::new("ul-close");
    let lock = s.path("lock");
    std::fs::write(&lock, b"").unwrap();
    let l = lock.to_str().unwrap();
    let nested = format!(
        "'{}' exec --exclusive --nonblock '{l}' true; echo $?; ls -l /proc/$$/fd",
        bin()
    );
    for close in [true, false] {
        let mut args = vec!["exec", "--exclusive"];
        if close {
            args.push("--close");
        }
        args.extend([l, "--command", nested.as_str()]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let out = stdout(&o);
        assert_eq!(out.lines().next(), Some("1"), "close={close}: {o:?}");
        assert!(
            !out.contains("lockticket-file-"),
            "the command got a descriptor of the table: {out}"
        );
    }
    // As flock: --no-fork and --close are incompatible.
    let o = run(["exec", "--no-fork", "--close", l, "true"]);
    assert_one_line_error(&o, USAGE, "--no-fork");
}

#[test]
fn util_linux_unlock_case_wait_0_is_nonblock_and_verbose_lines() {
    // ts/flock/unlock (its last step; the whole case is in tests/fd.rs): -w 0 is -n,
    // and --verbose prints flock's lines on stdout.
    let s = Scratch::new("ul-unlock");
    let lock = s.path("lock");
    std::fs::write(&lock, b"").unwrap();
    let l = lock.to_str().unwrap();
    let o = run(["exec", "--exclusive", "--wait", "0", "--verbose", l, "true"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_verbose_lines(&stdout(&o), "true");
    assert!(o.stderr.is_empty(), "{o:?}");

    // While it is held, -w 0 fails at once with the conflict status, saying so on stderr.
    let s2 = s.path("held");
    let rel = s.path("rel");
    let mut kids = Kids::default();
    let script = format!("touch '{}'; {}", s2.display(), sh_wait_for(&rel));
    let holder = kids.spawn(lockticket(["exec", l, "-c", &script]));
    wait_until("the holder", || s2.exists());
    let o = run(["exec", "-w", "0", "--verbose", "-E", "42", l, "true"]);
    assert_eq!(o.status.code(), Some(42), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(stderr(&o).contains("failed to get lock"), "{o:?}");
    std::fs::write(&rel, b"").unwrap();
    assert_eq!(kids.wait(holder).code(), Some(0));
}

#[test]
fn flock_usage_statuses() {
    let s = Scratch::new("ul-usage");
    let l = s.path("lock");
    let l = l.to_str().unwrap();
    // As flock: -E takes 0-255 (a bad one is 64), and -E 0 makes a conflict look like success.
    assert_eq!(
        run(["exec", "-E", "256", l, "true"]).status.code(),
        Some(USAGE)
    );
    assert_eq!(
        run(["exec", "-E", "x", l, "true"]).status.code(),
        Some(USAGE)
    );
    // As flock's getopt_long: unique prefixes of long options, flock's own spellings.
    assert_eq!(
        run(["exec", "--excl", "--nonb", "--verb", l, "true"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(run(["exec", "--no", l, "true"]).status.code(), Some(USAGE));
    assert_eq!(run(["exec"]).status.code(), Some(USAGE));
    assert_eq!(run(["exec", l]).status.code(), Some(USAGE));
    let inner = format!("'{}' exec -n -E 0 '{l}' false; echo $?", bin());
    let o = run(["exec", l, "-c", &inner]);
    assert_eq!(stdout(&o), "0\n", "{o:?}");
    // The command's status is passed through; a command killed by signal N is 128+N.
    assert_eq!(run(["exec", l, "-c", "exit 3"]).status.code(), Some(3));
    assert_eq!(
        run(["exec", l, "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
}

#[test]
fn a_bare_word_that_is_also_a_file_here_is_refused_as_ambiguous() {
    let s = Scratch::new("ambiguous");
    let word = name("word");
    std::fs::write(s.path(&word), b"").unwrap();
    for args in [
        vec!["exec", word.as_str(), "true"],
        vec!["status", word.as_str()],
    ] {
        let o = lockticket(&args)
            .current_dir(&s.0)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_one_line_error(&o, USAGE, &format!("./{word}"));
    }
    // ./WORD is the file (a lock file: it is left as it is); elsewhere the word is the name.
    let dotted = format!("./{word}");
    let o = lockticket(["exec", dotted.as_str(), "-c", "echo \"$LOCKTICKET_PATH\""])
        .current_dir(&s.0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("lockticket-file-"), "{o:?}");
    let o = run(["exec", word.as_str(), "-c", "echo \"$LOCKTICKET_PATH\""]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        stdout(&o).ends_with(&format!("lockticket-{word}.lt\n")),
        "{o:?}"
    );
}

#[test]
fn status_and_payload_of_a_lock_file_use_its_table() {
    let s = Scratch::new("lockfile-status");
    let lock = s.path("data");
    std::fs::create_dir(&lock).unwrap();
    let l = lock.to_str().unwrap();
    let inner = format!(
        "'{b}' status '{l}' >/dev/null && echo status-ok; '{b}' payload set '{l}' v && '{b}' payload get '{l}'",
        b = bin()
    );
    let o = run(["exec", l, "-c", &inner]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(stdout(&o), "status-ok\nv", "{o:?}");
    // Gone with its last user; the directory stays, and is what the message names.
    let o = run(["status", l]);
    assert_one_line_error(&o, NO_TABLE, &format!("{l}: no process holds or waits"));
    assert!(lock.is_dir());
}

#[test]
fn a_damaged_table_is_said_to_be_one_with_its_real_size_before_its_permissions() {
    let s = Scratch::new("damaged");
    let f = s.path("damaged.lt");
    let mut bytes = b"LCKTCKT\0".to_vec();
    bytes.resize(1221, 0);
    std::fs::write(&f, &bytes).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let p = f.to_str().unwrap();
    for args in [vec!["exec", p, "true"], vec!["status", p]] {
        let o = run(&args);
        assert_one_line_error(&o, TABLE, "1221 bytes");
        assert!(!stderr(&o).contains("doubtful"), "{o:?}");
        assert!(!stderr(&o).contains("128 bytes"), "{o:?}");
    }
}

#[test]
fn the_self_lock_idiom_of_flocks_manual_works_with_the_name_changed() {
    // flock(1)'s manual: `[ "${FLOCKER}" != "$0" ] && exec env FLOCKER="$0" flock -en "$0"
    // "$0" "$@" || :` at the top of a script; the README's recipe only changes the name.
    let s = Scratch::new("selflock");
    let script = s.path("job.sh");
    let (started, release) = (s.path("started"), s.path("release"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"${{FLOCKER}}\" != \"$0\" ] && exec env FLOCKER=\"$0\" '{b}' exec -en \"$0\" \"$0\" \"$@\" || :\n\
             echo \"args: $*\"\ntouch '{started}'\n{wait}\n",
            b = bin(),
            started = started.display(),
            wait = sh_wait_for(&release),
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let before = std::fs::read(&script).unwrap();
    let mut kids = Kids::default();
    let mut first = Command::new(&script);
    first.args(["a", "b"]).stdout(Stdio::piped());
    let first = kids.spawn(first);
    wait_until("the first run to hold its own lock", || started.exists());
    let o = Command::new(&script).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "a second run is refused: {o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(kids.wait(first).code(), Some(0));
    let mut out = String::new();
    kids.0[first]
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "args: a b\n");
    assert_eq!(
        std::fs::read(&script).unwrap(),
        before,
        "the script was touched"
    );
}

/// Issue 17, item 9a: `clean --all` removes the temporary files that table creators killed
/// half-way left (where `O_TMPFILE` cannot be used, and those of earlier versions): a dead
/// creator's at once, a live one's only when older than a minute.
#[test]
fn clean_all_removes_temporary_files_of_dead_creators() {
    let s = Scratch::new("clean-tmp");
    let dir = s.0.to_str().unwrap().to_string();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let me = std::process::id();
    let dead_new = s.path(&format!(".lockticket-{dead}-0123456789abcdef.tmp"));
    let dead_old = s.path(&format!(".lockticket-app.lt.{dead}.0123456789abcdef.tmp"));
    let live_fresh = s.path(&format!(".lockticket-{me}-0123456789abcdef.tmp"));
    let live_stale = s.path(&format!(".lockticket-{me}-fedcba9876543210.tmp"));
    let other = s.path(".other-1-0123456789abcdef.tmp");
    for f in [&dead_new, &dead_old, &live_fresh, &live_stale, &other] {
        std::fs::write(f, b"half a table").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&live_stale)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let o = run(["clean", "--all", "--dir", &dir]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = stdout(&o);
    for gone in [&dead_new, &dead_old, &live_stale] {
        assert!(!gone.exists(), "{} in {text}", gone.display());
        assert!(
            text.contains(&format!("removed {}", gone.display())),
            "{text}"
        );
    }
    assert!(live_fresh.exists() && other.exists(), "{text}");
}

/// Issue 17, item 9d: `exec --process-capacity N` makes a table for N processes, and a full
/// process table says how to get a larger one — with a builder method and an option that exist.
#[test]
fn exec_process_capacity_sizes_the_process_table_and_a_full_one_says_how_to_grow_it() {
    let n = name("proccap");
    let n = n.as_str();
    // The outer lockticket is the table's one process; the inner one cannot register.
    let inner = format!("'{}' exec {n} true", bin());
    let o = run(["exec", "--process-capacity", "1", n, "-c", &inner]);
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    let err = stderr(&o);
    assert!(err.contains("process table is full (1 processes"), "{err}");
    assert!(
        err.contains("Builder::process_capacity") && err.contains("--process-capacity"),
        "{err}"
    );
    // Room for two: the inner one gets in (and waits for nothing: it only joins).
    let o = run([
        "exec",
        "--process-capacity",
        "2",
        "-s",
        n,
        "-c",
        &inner.replace(" exec ", " exec -s "),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = run(["exec", "--process-capacity", "0", n, "true"]);
    assert_eq!(o.status.code(), Some(USAGE), "{o:?}");
    assert_no_table(n);
}

/// Issue 18: a usage error names the right `--help` for every subcommand (the list of
/// subcommands was a copy, and lacked `repair`).
#[test]
fn usage_errors_point_to_the_subcommands_help() {
    for sub in ["exec", "status", "repair", "clean", "list"] {
        let o = run([sub, "--no-such-option"]);
        assert_eq!(o.status.code(), Some(64), "{sub}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            err.contains(&format!("see 'lockticket {sub} --help'")),
            "{sub}: {err}"
        );
    }
}

/// Issue 19: the command gets a fencing token, larger for every later holder of the table.
#[test]
fn exec_gives_the_command_a_growing_fencing_token() {
    let n = name("fence");
    let n = n.as_str();
    let token = || {
        let o = run([
            "exec",
            "--keep",
            n,
            "-c",
            "echo \"$LOCKTICKET_FENCING_TOKEN\"",
        ]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        stdout(&o).trim().parse::<u64>().expect("a number")
    };
    let (a, b) = (token(), token());
    assert!(a >= 1 && b > a, "{a} then {b}");
    let o = run(["status", "--json", n]);
    assert!(
        stdout(&o).contains(&format!("\"last_fencing_token\": {b}")),
        "{o:?}"
    );
    let o = run(["clean", n]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}
