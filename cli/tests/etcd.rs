//! `lockticket ... --etcd URLS` against real etcd servers started by the test (see
//! tests/etcd_support): exec with its environment and exit codes, status, payload, list, and
//! a command stopped when its lock is lost.
#![cfg(feature = "etcd")]

#[path = "../../tests/etcd_support/mod.rs"]
mod etcd_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_support::{Cluster, SIGCONT, SIGSTOP, signal};
use lockticket::etcd::EtcdLockTicket;

const BOUND: Duration = Duration::from_secs(30);
const CONFLICT: i32 = 1;
const USAGE: i32 = 64;
const LOST: i32 = 75;
const ETCD: i32 = 76;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockticket")
}

fn name(test: &str) -> String {
    format!("cli-{test}-{}", std::process::id())
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn open(ep: &str, name: &str) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints([ep])
        .ttl(Duration::from_secs(2))
        .open()
        .unwrap()
}

/// Polls `cond` until it holds, within [`BOUND`].
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5)); // polling a state, not synchronising
    }
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lt-cli-etcd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn etcd_exec_status_payload_list() {
    let Some(c) = Cluster::start("cli", 1) else {
        return;
    };
    let ep = c.endpoints();
    let n = name("exec");
    let script = format!(
        "echo token=$LOCKTICKET_FENCING_TOKEN died=$LOCKTICKET_PREVIOUS_HOLDER_DIED; \
         {} payload set --etcd {ep} {n} from-the-command; exit 7",
        bin()
    );
    let o = run(&["exec", "--etcd", &ep, "--verbose", &n, "-c", &script]);
    assert_eq!(code(&o), 7, "the command's status: {o:?}");
    let out = text(&o.stdout);
    assert!(out.contains("getting lock took"), "{out}");
    assert!(out.contains("died=0"), "{out}");
    let token: u64 = out
        .split("token=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(token > 0);
    let o = run(&["payload", "get", "--etcd", &ep, &n]);
    assert_eq!(code(&o), 0);
    assert_eq!(text(&o.stdout), "from-the-command");
    // Outside exec, set takes the lock for the write; clear empties.
    let o = run(&["payload", "set", "--etcd", &ep, &n, "second"]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(open(&ep, &n).payload().unwrap(), b"second");
    let o = run(&["list", "--etcd", &ep]);
    assert!(text(&o.stdout).lines().any(|l| l == n), "{o:?}");

    // Held by another process: -n, -w, -E; status shows the holder.
    let lt = open(&ep, &n);
    let g = lt.token_lock().unwrap();
    let o = run(&["exec", "--etcd", &ep, "-n", &n, "true"]);
    assert_eq!(code(&o), CONFLICT);
    let t0 = Instant::now();
    let o = run(&["exec", "--etcd", &ep, "-w", "0.2", "-E", "9", &n, "true"]);
    assert_eq!(code(&o), 9);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let o = run(&["exec", "--etcd", &ep, "-s", "-n", &n, "true"]);
    assert_eq!(code(&o), CONFLICT, "a reader waits for a writer");
    let o = run(&["status", "--etcd", &ep, &n]);
    assert_eq!(code(&o), 0);
    let st = text(&o.stdout);
    assert!(st.contains("holds") && st.contains("exclusive"), "{st}");
    assert!(st.contains(&format!(":{}", std::process::id())), "{st}");
    let o = run(&["status", "--etcd", &ep, "--json", &n]);
    let js = text(&o.stdout);
    assert!(
        js.contains("\"fencing_token\"") && js.contains("\"holders\""),
        "{js}"
    );
    assert!(
        js.contains(&format!("\"fencing_token\": {}", g.fencing_token())),
        "{js}"
    );
    // A fenced write from a command whose lock is gone fails.
    let o = Command::new(bin())
        .args(["payload", "set", "--etcd", &ep, &n, "stale"])
        .env(
            "LOCKTICKET_ETCD_KEY",
            format!("lockticket/{n}/q/w/0000000000000000"),
        )
        .env("LOCKTICKET_FENCING_TOKEN", token.to_string())
        .output()
        .unwrap();
    assert_eq!(code(&o), LOST, "{o:?}");
    drop(g);
    assert_eq!(lt.payload().unwrap(), b"second");

    // Options without an etcd meaning, bad names, an unreachable cluster.
    for args in [
        vec!["exec", "--etcd", &ep, "-F", &n, "true"],
        vec!["exec", "--etcd", &ep, "--keep", &n, "true"],
        vec!["exec", "--etcd", &ep, "--fairness", "strict", &n, "true"],
        vec!["exec", "--etcd", &ep, "./some/path", "true"],
        vec!["exec", "--ttl", "3", &n, "true"],
    ] {
        assert_eq!(code(&run(&args)), USAGE, "{args:?}");
    }
    let o = run(&["exec", "--etcd", "http://127.0.0.1:1", &n, "true"]);
    assert_eq!(code(&o), ETCD, "{o:?}");
    assert!(text(&o.stderr).contains("reachable"), "{o:?}");
    // --etcd env reads LOCKTICKET_ETCD.
    let o = Command::new(bin())
        .args(["exec", "--etcd", "env", &n, "true"])
        .env("LOCKTICKET_ETCD", &ep)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
}

/// Starts `exec --etcd --ttl 2` running a command that records SIGTERM; returns it once the
/// command runs.
fn start_guarded(ep: &str, n: &str, dir: &Path) -> std::process::Child {
    let started = dir.join("started");
    let termed = dir.join("termed");
    let script = format!(
        "trap 'echo term > {}; exit 3' TERM; echo $LOCKTICKET_FENCING_TOKEN > {}; \
         i=0; while [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done",
        termed.display(),
        started.display()
    );
    let child = Command::new(bin())
        .args(["exec", "--etcd", ep, "--ttl", "2", n, "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    poll("the command started", || {
        std::fs::read_to_string(&started).is_ok_and(|s| s.ends_with('\n'))
    });
    child
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "lockticket did not exit");
        std::thread::sleep(Duration::from_millis(5)); // polling an exit
    }
}

#[test]
fn etcd_exec_stops_the_command_when_the_lock_is_lost() {
    let Some(c) = Cluster::start("clilost", 1) else {
        return;
    };
    let ep = c.endpoints();

    // Its key deleted (by an operator): found within a third of the TTL.
    let n = name("lostkey");
    let dir = scratch("lostkey");
    let mut child = start_guarded(&ep, &n, &dir);
    let lt = open(&ep, &n);
    let key = lt.status().unwrap().queue[0].key.clone();
    if c.keys("lockticket/").is_some() {
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &ep, "del", &key])
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(wait_exit(&mut child), LOST);
        assert_eq!(
            std::fs::read_to_string(dir.join("termed")).unwrap(),
            "term\n",
            "the command got SIGTERM"
        );
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("lost the exclusive lock"), "{err}");
    } else {
        println!("SKIP (part): no etcdctl");
        let _ = child.kill();
        let _ = child.wait();
    }

    // lockticket itself paused past its TTL: another process takes the lock; once continued,
    // lockticket stops its command.
    let n = name("lostpause");
    let dir = scratch("lostpause");
    let mut child = start_guarded(&ep, &n, &dir);
    let first: u64 = std::fs::read_to_string(dir.join("started"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(child.id(), SIGSTOP);
    let lt = open(&ep, &n);
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("granted once the paused holder's lease expired");
    assert!(lockticket::Guard::fencing_token(&g) > first);
    signal(child.id(), SIGCONT);
    assert_eq!(wait_exit(&mut child), LOST);
    assert!(dir.join("termed").exists(), "the command got SIGTERM");
    drop(g);
    let _ = std::fs::remove_dir_all(dir);

    // lockticket SIGKILLed: its command dies with it, and the next exec is granted within the
    // TTL (+1 s) and told the previous holder died.
    let n = name("killed");
    let dir = scratch("killed");
    let mut child = start_guarded(&ep, &n, &dir);
    child.kill().unwrap();
    let _ = child.wait();
    let t0 = Instant::now();
    let o = run(&[
        "exec",
        "--etcd",
        &ep,
        "-w",
        "10",
        &n,
        "sh",
        "-c",
        "echo died=$LOCKTICKET_PREVIOUS_HOLDER_DIED",
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
    eprintln!("granted {:?} after the holder's kill", t0.elapsed());
    assert_eq!(text(&o.stdout).trim(), "died=1");
    let _ = std::fs::remove_dir_all(dir);
}
