//! Liveness the kernel vouches for (issue 10): a live holder is never taken for dead, and a
//! dead one never passes for alive, whatever PID namespace or /proc mount the checker sees and
//! however fast PIDs are reused.
//!
//! These tests need root (CI runs them as root): they make PID and mount namespaces
//! (`unshare`), a private /proc with `hidepid=invisible`, two unprivileged users (`useradd`,
//! `setpriv`), and force PID reuse with `ns_last_pid`. Where the kernel refuses a setup, the
//! test prints `SKIP:` and why, and passes; it never skips silently. Nothing sleeps to
//! synchronise: helpers report over pipes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lockticket::{LockTicket, Share};

/// How long a waiter tries before we conclude it was (rightly) not granted. Liveness checks
/// run every 2 ms: a holder wrongly judged dead is reclaimed well within this.
const PATIENCE: Duration = Duration::from_millis(300);

fn dispatch(role: &str, args: &[String]) {
    let perms = u32::from_str_radix(&args[1], 8).unwrap();
    let lt = LockTicket::builder(&args[0])
        .permissions(perms)
        .open()
        .unwrap();
    match role {
        // Takes the exclusive token, reports, holds it until told (or killed).
        "hold" => {
            let g = lt.token_lock().unwrap();
            say(format!("held pid={}", std::process::id()));
            let _ = hear();
            g.unlock().unwrap();
            say("released");
        }
        // Tries for PATIENCE (must not be granted while a live holder holds), then, told to,
        // waits without limit.
        "wait" => {
            // args[2]: a PID this waiter must not see in its /proc (hidepid).
            if let Some(pid) = args.get(2)
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                say("visible");
                return;
            }
            let r = lt.token_lock_timeout(PATIENCE).unwrap();
            say(match &r {
                Some(g) => format!("granted died={}", g.previous_holder_died()),
                None => "timeout".to_string(),
            });
            drop(r);
            let _ = hear();
            let g = lt.token_lock().unwrap();
            say(format!("granted died={}", g.previous_holder_died()));
        }
        // In a new PID namespace (we are its init): fork X, which takes the token; kill and
        // reap X; make the next PID X's again (ns_last_pid); fork Y, which idles. Reports the
        // PIDs and start times.
        "reuse" => reuse(&lt),
        other => panic!("unknown role {other}"),
    }
}

fn fork() -> libc::pid_t {
    // SAFETY: this helper does its work on one thread; the child uses the inherited handle,
    // the allocator and stdio, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

fn child(body: impl FnOnce()) -> libc::pid_t {
    let pid = fork();
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        // SAFETY: ends the child without running the harness's exit path.
        unsafe { libc::_exit(code) }
    }
    pid
}

fn start_time(pid: libc::pid_t) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_string();
            rest.split_whitespace().nth(19).map(String::from)
        })
        .unwrap_or_else(|| "?".into())
}

fn reuse(lt: &LockTicket) {
    // A pipe to learn that X holds the token.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let x = child(|| {
        let g = lt.token_lock().unwrap();
        // SAFETY: writes one byte from a valid buffer to our pipe.
        unsafe { libc::write(fds[1], b"h".as_ptr().cast(), 1) };
        std::mem::forget(g);
        loop {
            // SAFETY: pause has no preconditions; X waits here to be killed.
            unsafe { libc::pause() };
        }
    });
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a valid buffer.
    assert_eq!(unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) }, 1);
    let x_start = start_time(x);
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(x, libc::SIGKILL);
        libc::waitpid(x, std::ptr::null_mut(), 0);
    }
    let wrote = std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", x - 1));
    let y = child(|| {
        loop {
            // SAFETY: Y idles until killed.
            unsafe { libc::pause() };
        }
    });
    say(format!(
        "reused x={x} y={y} x_start={x_start} y_start={} ns_last_pid={}",
        start_time(y),
        match wrote {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("refused:{}", e.raw_os_error().unwrap_or(0)),
        }
    ));
    let _ = hear();
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(y, libc::SIGKILL);
        libc::waitpid(y, std::ptr::null_mut(), 0);
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Runs `cmd`; `Err(reason)` when it fails (the kernel or the system refuses the setup).
fn works(cmd: &[&str]) -> Result<(), String> {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{}` failed ({}): {}",
            cmd.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("`{}` cannot run: {e}", cmd.join(" "))),
    }
}

/// The wrapper that runs a helper as init of a new PID namespace with its own /proc.
const NEW_PID_NS: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

fn pid_ns_or_skip(test: &str) -> bool {
    let probe = [NEW_PID_NS, &["true"]].concat();
    match works(&probe) {
        Ok(()) => true,
        Err(why) => {
            println!("SKIP {test}: the kernel refuses a new PID namespace: {why}");
            false
        }
    }
}

fn table(tag: &str, perms: u32) -> (LockTicket, String) {
    let name = unique(tag);
    let lt = LockTicket::builder(&name)
        .permissions(perms)
        .open()
        .unwrap();
    let path = lt.path().to_str().unwrap().to_string();
    (lt, path)
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

#[test]
fn a_waiter_in_another_pid_namespace_waits_for_a_live_host_holder() {
    if !pid_ns_or_skip("a_waiter_in_another_pid_namespace_waits_for_a_live_host_holder") {
        return;
    }
    let (lt, path) = table("nswait", 0o600);
    let main = lt.main_lock(Share::Shared).unwrap();
    let held = lt.token_lock().unwrap();
    let mut w = Helper::spawn_via(NEW_PID_NS, &exe(), "wait", &[&path, "600"]);
    assert_eq!(
        w.next(),
        "timeout",
        "a waiter in a new PID namespace took the token of a live host holder"
    );
    drop(held);
    w.send("go");
    assert_eq!(w.next(), "granted died=false");
    drop(w);
    drop(main);
}

#[test]
fn a_host_waiter_waits_for_a_live_holder_in_another_pid_namespace() {
    if !pid_ns_or_skip("a_host_waiter_waits_for_a_live_holder_in_another_pid_namespace") {
        return;
    }
    let (lt, path) = table("nshold", 0o600);
    let main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn_via(NEW_PID_NS, &exe(), "hold", &[&path, "600"]);
    let pid: u32 = field(&h.expect("held"), "pid").parse().unwrap();
    assert_eq!(pid, 1, "the holder is init of its namespace");
    let st = lt.status().unwrap();
    let holder = st.holders.first().unwrap_or_else(|| panic!("{st}"));
    assert!(
        holder.alive && holder.pid_foreign && holder.pid == 1,
        "{st}"
    );
    assert!(
        lt.token_lock_timeout(PATIENCE).unwrap().is_none(),
        "the host took the token of a live holder in another PID namespace (pid 1 there)"
    );
    // Killed, it is found dead at once across the namespace boundary.
    h.kill();
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the killed namespaced holder was not reclaimed");
    assert!(g.previous_holder_died());
    drop(g);
    drop(main);
}

#[test]
fn a_recycled_pid_in_the_same_tick_does_not_pass_for_the_dead_holder() {
    if !pid_ns_or_skip("a_recycled_pid_in_the_same_tick_does_not_pass_for_the_dead_holder") {
        return;
    }
    let (lt, path) = table("nsreuse", 0o600);
    let main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn_via(NEW_PID_NS, &exe(), "reuse", &[&path, "600"]);
    let line = h.expect("reused");
    let (x, y) = (field(&line, "x"), field(&line, "y"));
    if x != y {
        println!(
            "SKIP a_recycled_pid_in_the_same_tick_does_not_pass_for_the_dead_holder: the \
             kernel did not hand out the dead holder's PID again ({line})"
        );
        return;
    }
    eprintln!("PID reuse: {line}");
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|| {
            panic!("the dead holder's token was not reclaimed while its PID lives on: {line}")
        });
    assert!(g.previous_holder_died(), "{line}");
    drop(g);
    h.send("done");
    drop(h);
    drop(main);
}

/// Makes (once) the unprivileged user `name`; `Err(reason)` where that is refused.
fn user(name: &str) -> Result<u32, String> {
    let uid = |n: &str| {
        Command::new("id")
            .args(["-u", n])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    if let Some(u) = uid(name) {
        return Ok(u);
    }
    // Another test process may be making it at the same moment: ignore a failure if the user
    // exists afterwards.
    let made = works(&["useradd", "--no-create-home", "--system", name]);
    uid(name).ok_or_else(|| made.err().unwrap_or_else(|| format!("no uid for {name}")))
}

/// A copy of this test binary that other users may run (the target directory may not be
/// readable by them).
fn shared_exe(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("helper-exe");
    std::fs::copy(exe(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[test]
fn a_holder_invisible_under_hidepid_is_not_taken_for_dead() {
    let test = "a_holder_invisible_under_hidepid_is_not_taken_for_dead";
    let (a, b) = match (user("lticket-a"), user("lticket-b")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            println!("SKIP {test}: cannot make two users: {e}");
            return;
        }
    };
    // The waiter's /proc: a private mount with hidepid=invisible (systemd's
    // ProtectProc=invisible), in a mount namespace of its own.
    let probe = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t proc -o hidepid=invisible proc /proc",
    ];
    if let Err(why) = works(&probe) {
        println!("SKIP {test}: the kernel refuses a private hidepid=invisible /proc: {why}");
        return;
    }
    let scratch = Scratch::new("hidepid");
    let exe = shared_exe(&scratch.0);
    let (lt, path) = table("hidepid", 0o666);
    let main = lt.main_lock(Share::Shared).unwrap();
    let (ua, ub) = (a.to_string(), b.to_string());
    let as_a = [
        "setpriv",
        "--reuid",
        &ua,
        "--regid",
        &ua,
        "--clear-groups",
        "--",
    ];
    let mut holder = Helper::spawn_via(&as_a, &exe, "hold", &[&path, "666"]);
    let pid = field(&holder.expect("held"), "pid").to_string();
    // The waiter runs as the other user and cannot see the holder's /proc entry.
    let script = format!(
        "mount -t proc -o hidepid=invisible proc /proc && \
         exec setpriv --reuid {ub} --regid {ub} --clear-groups -- \"$0\" \"$@\""
    );
    let wrap = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ];
    let mut waiter = Helper::spawn_via(&wrap, &exe, "wait", &[&path, "666", &pid]);
    let said = waiter.next();
    assert_ne!(said, "visible", "hidepid=invisible did not hide the holder");
    assert_eq!(
        said, "timeout",
        "a waiter that cannot see the holder in /proc took its token"
    );
    holder.send("release");
    holder.expect("released");
    waiter.send("go");
    assert_eq!(waiter.next(), "granted died=false");
    drop(waiter);
    drop(holder);
    drop(main);
}
