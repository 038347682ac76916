//! lockticket's etcd backend against the `etcd-client` crate (gRPC, tokio) in ONE run, on one
//! etcd node this program starts itself (the tests' `etcd_support`: loopback ports, data on
//! tmpfs, fast elections), with medians and ratios:
//!
//! - uncontended acquire+release: lockticket, `etcd-client`'s `lock`/`unlock` with a lease
//!   of its own (as its docs recommend), and etcd's lock service through the JSON gateway
//!   (what lockticket's `etcd_bench` compares with), interleaved in small batches so that
//!   the load of the machine falls on all three alike;
//! - throughput with 1, 4 and 16 clients on one lock, both libraries;
//! - handoff between two waiting clients, both libraries, against the floor: one put →
//!   watch-event delivery (the release's commit must reach the next waiter somehow), measured
//!   through the JSON gateway and through gRPC;
//! - `lockticket exec --etcd URL NAME true` one-shot against `etcdctl lock NAME true`;
//! - failover after a holder's SIGKILL against the TTL (2 s), both libraries;
//! - `shapes`: what one acquire+release costs as raw gateway requests of several shapes (a
//!   plain put + delete, etcd's lock service, lockticket's transactions with and without the
//!   holder record), to see where the time goes;
//! - `ureq`: the same gateway requests through a `ureq` agent and through a bare kept-alive
//!   connection (the evaluation of `ureq` against the hand-written `src/etcd/http.rs`);
//! - `history` (only when asked for): the uncontended cycle before and after 20,000 cycles on
//!   the same lock, and after a compaction (the deleted keys of every past request stay in
//!   etcd's index until etcd compacts its history, and the queue's range compare visits them).
//!
//! ```text
//! cargo build --release -p lockticket-cli          # the one-shot comparison runs it
//! cargo run --release --manifest-path tools/etcd-compare/Cargo.toml [-- ITERATIONS]
//! ```
//!
//! `ETCD_COMPARE_ONLY=uncontended,throughput,handoff,one-shot,failover,shapes,ureq,history` runs some parts only.
//!
//! Needs `etcd` and `etcdctl` on PATH, and `protoc` to build (`etcd-client`'s gRPC code): this
//! crate is outside the main workspace so that `cargo test --workspace` never needs them.

#[path = "../../../tests/etcd_support/mod.rs"]
mod etcd_support;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, LockOptions};
use etcd_support::Cluster;
use lockticket::etcd::EtcdLockTicket;

type Rt = tokio::runtime::Runtime;

/// The `etcd-client` this compares with (Cargo.toml).
const ETCD_CLIENT_VERSION: &str = "0.21";

fn open(ep: &str, name: &str, ttl: u64) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints(ep.split(','))
        .ttl(Duration::from_secs(ttl))
        .open()
        .expect("open the etcd table")
}

fn median(v: &mut [Duration]) -> Duration {
    pct(v, 0.5)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A bare JSON POST to the gateway on a kept-alive connection.
fn post(conn: &mut Option<TcpStream>, ep: &str, path: &str, body: &str) -> String {
    let hostport = ep.trim_start_matches("http://");
    let s = conn.get_or_insert_with(|| {
        let s = TcpStream::connect(hostport).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s
    });
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                return body[..len].to_string();
            }
        }
    }
}

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let at = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
    &json[at..at + json[at..].find('"').expect("closing quote")]
}

/// A watch through the gateway: its chunked stream, read line by line.
struct GatewayWatch {
    r: std::io::BufReader<TcpStream>,
}

impl GatewayWatch {
    fn open(ep: &str, key_b64: &str) -> GatewayWatch {
        let hostport = ep.trim_start_matches("http://");
        let mut s = TcpStream::connect(hostport).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let body = format!(r#"{{"create_request":{{"key":"{key_b64}"}}}}"#);
        write!(
            s,
            "POST /v3/watch HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut w = GatewayWatch {
            r: std::io::BufReader::new(s),
        };
        // The head, then the "created" message.
        let mut line = String::new();
        loop {
            line.clear();
            w.r.read_line(&mut line).expect("head");
            if line == "\r\n" {
                break;
            }
        }
        assert!(w.next_message().contains("created"));
        w
    }

    /// The next JSON message (chunk-size lines are skipped).
    fn next_message(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("watch line");
            if line.trim_start().starts_with('{') {
                return line;
            }
        }
    }
}

async fn ec_connect(ep: &str) -> Client {
    Client::connect(ep.split(',').collect::<Vec<_>>(), None)
        .await
        .expect("etcd-client connect")
}

/// `etcd-client`'s lock and unlock, with a lease of its own: one acquire+release.
async fn ec_cycle(c: &mut Client, name: &str, lease: i64) {
    let r = c
        .lock(name, Some(LockOptions::new().with_lease(lease)))
        .await
        .expect("lock");
    c.unlock(r.key().to_vec()).await.expect("unlock");
}

/// A lease for `etcd-client`, kept alive by a task for as long as the runtime runs.
async fn ec_lease(c: &mut Client, ttl: i64) -> i64 {
    let id = c.lease_grant(ttl, None).await.expect("lease grant").id();
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep-alive");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis((ttl as u64 * 1000 / 3).max(100))).await;
            if keeper.keep_alive().await.is_err() {
                return;
            }
            if !matches!(stream.message().await, Ok(Some(_))) {
                return;
            }
        }
    });
    id
}

fn main() {
    match std::env::var("ETCD_COMPARE_ROLE").as_deref() {
        Ok("lockticket-holder") => return lockticket_holder(),
        Ok("etcd-client-holder") => return etcd_client_holder(),
        _ => {}
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let Some(c) = Cluster::start("compare", 1) else {
        return;
    };
    let ep = c.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "etcd backend against etcd-client {} (gRPC) in one run: one etcd node on loopback, data \
         on tmpfs; load average at start: {}",
        ETCD_CLIENT_VERSION,
        load()
    );
    // ETCD_COMPARE_ONLY=uncontended,handoff,... runs some parts only.
    let only = std::env::var("ETCD_COMPARE_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    if run("uncontended") {
        uncontended(&rt, &ep, n);
    }
    if run("throughput") {
        throughput(&rt, &ep);
    }
    if run("handoff") {
        handoff(&rt, &ep, n / 5);
    }
    if run("one-shot") {
        one_shot(&ep);
    }
    if run("failover") {
        failover(&rt, &ep);
    }
    if run("shapes") {
        shapes(&ep, n);
    }
    if run("ureq") {
        ureq_vs_raw(&ep, n);
    }
    if only.split(',').any(|p| p == "history") {
        history(&ep, n);
    }
    println!("load average at the end: {}", load());
}

fn uncontended(rt: &Rt, ep: &str, n: usize) {
    let lt = open(ep, "uncontended", 10);
    drop(lt.token_lock().expect("lock")); // the session lease and a warm connection
    let mut ec = rt.block_on(ec_connect(ep));
    let lease = rt.block_on(ec_lease(&mut ec, 10));
    rt.block_on(ec_cycle(&mut ec, "ec-uncontended", lease));
    let mut conn = None;
    let glease = field(
        &post(&mut conn, ep, "/v3/lease/grant", r#"{"TTL":60}"#),
        "ID",
    )
    .to_string();
    let gateway_cycle = |conn: &mut Option<TcpStream>| {
        let r = post(
            conn,
            ep,
            "/v3/lock/lock",
            &format!(r#"{{"name":"Z3c=","lease":"{glease}"}}"#),
        );
        let key = field(&r, "key").to_string();
        post(
            conn,
            ep,
            "/v3/lock/unlock",
            &format!(r#"{{"key":"{key}"}}"#),
        );
    };
    gateway_cycle(&mut conn);
    let (mut ours, mut theirs, mut gateway, mut acq) = (vec![], vec![], vec![], vec![]);
    let batch = 10;
    for _ in 0..n / batch {
        for _ in 0..batch {
            let t0 = Instant::now();
            let g = lt.token_lock().expect("lock");
            acq.push(t0.elapsed());
            drop(g);
            ours.push(t0.elapsed());
        }
        for _ in 0..batch {
            let t0 = Instant::now();
            rt.block_on(ec_cycle(&mut ec, "ec-uncontended", lease));
            theirs.push(t0.elapsed());
        }
        for _ in 0..batch {
            let t0 = Instant::now();
            gateway_cycle(&mut conn);
            gateway.push(t0.elapsed());
        }
    }
    let (a, b, g) = (median(&mut ours), median(&mut theirs), median(&mut gateway));
    println!(
        "uncontended acquire+release, median of {} each (interleaved):",
        ours.len()
    );
    println!(
        "  lockticket                          {} (p90 {}; acquire alone {})",
        ms(a),
        ms(pct(&mut ours, 0.9)),
        ms(median(&mut acq))
    );
    println!(
        "  etcd-client lock/unlock (gRPC)      {} (p90 {})",
        ms(b),
        ms(pct(&mut theirs, 0.9))
    );
    println!(
        "  etcd's lock service via the gateway {} (p90 {})",
        ms(g),
        ms(pct(&mut gateway, 0.9))
    );
    println!(
        "  ratio lockticket / etcd-client: {:.2}x (target <= 1.1x); lockticket / gateway lock \
         service: {:.2}x",
        ratio(a, b),
        ratio(a, g)
    );
}

fn throughput(rt: &Rt, ep: &str) {
    let secs = 2.0;
    for clients in [1usize, 4, 16] {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..clients {
                let (stop, count) = (&stop, &count);
                s.spawn(move || {
                    let lt = open(ep, &format!("throughput-{clients}"), 10);
                    while !stop.load(Ordering::Relaxed) {
                        drop(lt.token_lock().expect("lock"));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(Duration::from_secs_f64(secs)); // the measuring window
            stop.store(true, Ordering::Relaxed);
        });
        let ours = count.load(Ordering::Relaxed) as f64 / secs;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (stop, count, ep) = (stop.clone(), count.clone(), ep.to_string());
                rt.spawn(async move {
                    let mut c = ec_connect(&ep).await;
                    let lease = ec_lease(&mut c, 10).await;
                    let name = format!("ec-throughput-{clients}");
                    while !stop.load(Ordering::Relaxed) {
                        ec_cycle(&mut c, &name, lease).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Connections and leases first, then the window.
        std::thread::sleep(Duration::from_millis(300));
        let before = count.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs_f64(secs));
        let theirs = (count.load(Ordering::Relaxed) - before) as f64 / secs;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).expect("task");
        }
        println!(
            "throughput, {clients:>2} clients on one lock: lockticket {ours:.0}/s, etcd-client \
             {theirs:.0}/s: ratio {:.2}x",
            ours / theirs
        );
    }
}

fn handoff(rt: &Rt, ep: &str, n: usize) {
    // lockticket: release call start → the waiter's lock call returns.
    let holder = open(ep, "handoff", 10);
    let waiter = open(ep, "handoff", 10);
    drop(waiter.token_lock().expect("lock"));
    let mut ours = Vec::new();
    for _ in 0..n {
        let g = holder.token_lock().expect("lock");
        std::thread::scope(|s| {
            let waiter = &waiter;
            let t = s.spawn(move || {
                let w = waiter.token_lock().expect("lock");
                let at = Instant::now();
                drop(w);
                at
            });
            // Release once the waiter is queued and watching (its watch is made before it
            // checks the predecessor again; a status shows the queue only).
            while holder.status().expect("status").queue.len() < 2 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(3)); // let the waiter's watch be made
            let t0 = Instant::now();
            drop(g);
            let granted = t.join().expect("waiter");
            ours.push(granted.saturating_duration_since(t0));
        });
    }
    // etcd-client: unlock start → the waiting lock() returns.
    let theirs = rt.block_on(async {
        let mut h = ec_connect(ep).await;
        let mut w = ec_connect(ep).await;
        let hl = ec_lease(&mut h, 10).await;
        let wl = ec_lease(&mut w, 10).await;
        let mut v = Vec::new();
        for _ in 0..n {
            let r = h
                .lock("ec-handoff", Some(LockOptions::new().with_lease(hl)))
                .await
                .expect("lock");
            let mut w2 = w.clone();
            let t = tokio::spawn(async move {
                let r = w2
                    .lock("ec-handoff", Some(LockOptions::new().with_lease(wl)))
                    .await
                    .expect("lock");
                let at = Instant::now();
                w2.unlock(r.key().to_vec()).await.expect("unlock");
                at
            });
            // The waiter's request reaches the server and waits there.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let t0 = Instant::now();
            h.unlock(r.key().to_vec()).await.expect("unlock");
            let at = t.await.expect("waiter");
            v.push(at.saturating_duration_since(t0));
        }
        v
    });
    let mut theirs = theirs;
    // The floor through the gateway: put call start → the event read from a watch stream.
    let mut conn = None;
    let mut gw = Vec::new();
    let key = "aGFuZG9mZi1mbG9vcg=="; // "handoff-floor"
    let mut watch = GatewayWatch::open(ep, key);
    for _ in 0..n {
        let t0 = Instant::now();
        post(
            &mut conn,
            ep,
            "/v3/kv/put",
            &format!(r#"{{"key":"{key}","value":"eA=="}}"#),
        );
        let m = watch.next_message();
        gw.push(t0.elapsed());
        assert!(m.contains("events"), "{m}");
    }
    // The floor through gRPC.
    let mut grpc = rt.block_on(async {
        let mut c = ec_connect(ep).await;
        let mut stream = c.watch("grpc-floor", None).await.expect("watch");
        let mut v = Vec::new();
        for _ in 0..n {
            let t0 = Instant::now();
            c.put("grpc-floor", "x", None).await.expect("put");
            loop {
                let m = stream.message().await.expect("watch").expect("message");
                if m.events().iter().any(|e| e.event_type() == EventType::Put) {
                    break;
                }
            }
            v.push(t0.elapsed());
        }
        v
    });
    let (a, b, f1, f2) = (
        median(&mut ours),
        median(&mut theirs),
        median(&mut gw),
        median(&mut grpc),
    );
    println!("handoff to a waiting client (release call start → waiter granted), median of {n}:");
    println!("  lockticket {} (p90 {})", ms(a), ms(pct(&mut ours, 0.9)));
    println!(
        "  etcd-client {} (p90 {}): ratio {:.2}x",
        ms(b),
        ms(pct(&mut theirs, 0.9)),
        ratio(a, b)
    );
    println!(
        "  floor, one put → watch event: gateway {}, gRPC {}; lockticket / gateway floor \
         {:.2}x (target <= 1.2x), / gRPC floor {:.2}x",
        ms(f1),
        ms(f2),
        ratio(a, f1),
        ratio(a, f2)
    );
}

fn one_shot(ep: &str) {
    let lockticket = std::env::var_os("LOCKTICKET_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            // tools/etcd-compare/target/release/etcd_compare → the workspace's target/release.
            let me = std::env::current_exe().expect("current exe");
            let root = me
                .ancestors()
                .find(|p| p.join("Cargo.lock").is_file() && p.join("cli").is_dir())
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            root.join("target/release/lockticket")
        });
    let has_etcdctl = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !lockticket.is_file() || !has_etcdctl {
        println!(
            "one-shot: skipped (needs {} — cargo build --release -p lockticket-cli, or \
             LOCKTICKET_BIN — and etcdctl)",
            lockticket.display()
        );
        return;
    }
    let run = |c: &mut Command| -> Duration {
        let t0 = Instant::now();
        let st = c.stdout(Stdio::null()).status().expect("spawn");
        assert!(st.success());
        t0.elapsed()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        ours.push(run(
            Command::new(&lockticket).args(["exec", "--etcd", ep, "oneshot", "true"])
        ));
        theirs.push(run(Command::new("etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            ep,
            "lock",
            "oneshot2",
            "true",
        ])));
    }
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "one-shot, median of 40 (interleaved): `lockticket exec --etcd URL NAME true` {}, \
         `etcdctl lock NAME true` {}: ratio {:.2}x (target <= 1x)",
        ms(a),
        ms(b),
        ratio(a, b)
    );
}

/// Takes the lock through lockticket (TTL 2 s), says so, waits to be killed.
fn lockticket_holder() {
    let ep = std::env::var("ETCD_COMPARE_EP").expect("ETCD_COMPARE_EP");
    let lt = open(&ep, "failover", 2);
    let g = lt.token_lock().expect("lock");
    println!("held {}", g.fencing_token());
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Takes the lock through etcd-client (lease TTL 2 s, kept alive), says so, waits.
fn etcd_client_holder() {
    let ep = std::env::var("ETCD_COMPARE_EP").expect("ETCD_COMPARE_EP");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = ec_connect(&ep).await;
        let lease = ec_lease(&mut c, 2).await;
        c.lock("ec-failover", Some(LockOptions::new().with_lease(lease)))
            .await
            .expect("lock");
        println!("held");
        std::io::stdout().flush().expect("flush");
    });
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn spawn_holder(role: &str, ep: &str) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env("ETCD_COMPARE_ROLE", role)
        .env("ETCD_COMPARE_EP", ep)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("holder's line");
    assert!(line.starts_with("held"), "{line:?}");
    child
}

fn failover(rt: &Rt, ep: &str) {
    let rounds = 3;
    let lt = open(ep, "failover", 2);
    let mut ours = Vec::new();
    let mut died = true;
    for _ in 0..rounds {
        let mut child = spawn_holder("lockticket-holder", ep);
        child.kill().expect("SIGKILL");
        let t0 = Instant::now();
        let g = lt.token_lock().expect("lock");
        ours.push(t0.elapsed());
        died &= g.previous_holder_died();
        drop(g);
        let _ = child.wait();
    }
    let theirs: Vec<Duration> = (0..rounds)
        .map(|_| {
            let mut child = spawn_holder("etcd-client-holder", ep);
            child.kill().expect("SIGKILL");
            let t0 = Instant::now();
            let at = rt.block_on(async {
                let mut c = ec_connect(ep).await;
                let lease = ec_lease(&mut c, 2).await;
                let r = c
                    .lock("ec-failover", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .expect("lock");
                let at = t0.elapsed();
                c.unlock(r.key().to_vec()).await.expect("unlock");
                c.lease_revoke(lease).await.expect("revoke");
                at
            });
            let _ = child.wait();
            at
        })
        .collect();
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    println!(
        "failover after a holder's SIGKILL, TTL 2 s (target <= TTL + 1 s): lockticket {} \
         (previous_holder_died: {died}); etcd-client {}",
        list(&ours),
        list(&theirs)
    );
}

/// Standard base64 (the gateway's bytes).
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            o.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    o
}

/// The end of the range of keys starting with `p`, in base64.
fn b64_end(p: &str) -> String {
    let mut v = p.as_bytes().to_vec();
    if let Some(last) = v.last_mut() {
        *last += 1;
    }
    b64(&String::from_utf8(v).expect("ASCII prefix"))
}

/// The gateway bodies of lockticket's uncontended cycle (as src/etcd/mod.rs sends them):
/// the enqueue transaction and the release transaction. `holder`: with the holder record.
fn cycle_bodies(prefix: &str, id: &str, lease: &str, holder: bool) -> (String, String) {
    let q = format!("{prefix}q/w/{id}");
    let h = format!("{prefix}h/{id}");
    let me = b64(r#"{"host":"somehost","pid":123456,"share":"exclusive"}"#);
    let qp = format!("{prefix}q/");
    let hp = format!("{prefix}h/");
    let put_q = format!(
        r#"{{"request_put":{{"key":"{}","value":"{me}","lease":"{lease}"}}}}"#,
        b64(&q)
    );
    let grant = if holder {
        format!(
            r#",{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_range":{{"key":"{}","range_end":"{}","count_only":true}}}}"#,
            b64(&h),
            b64(&format!(r#"{{"q":"{q}"}}"#)),
            b64(&hp),
            b64_end(&hp)
        )
    } else {
        String::new()
    };
    let acquire = format!(
        r#"{{"compare":[{{"key":"{}","range_end":"{}","target":"CREATE","result":"EQUAL","create_revision":"0"}}],"success":[{put_q}{grant}],"failure":[{put_q}]}}"#,
        b64(&qp),
        b64_end(&qp)
    );
    let del_h = if holder {
        format!(r#",{{"request_delete_range":{{"key":"{}"}}}}"#, b64(&h))
    } else {
        String::new()
    };
    let release = format!(
        r#"{{"success":[{{"request_delete_range":{{"key":"{}"}}}}{del_h}]}}"#,
        b64(&q)
    );
    (acquire, release)
}

fn shapes(ep: &str, n: usize) {
    let mut c = None;
    let lease = field(&post(&mut c, ep, "/v3/lease/grant", r#"{"TTL":600}"#), "ID").to_string();
    let names = [
        "plain put + delete of one key (no compare)",
        "etcd's lock service (/v3/lock/lock + unlock)",
        "lockticket's transactions, no holder record",
        "lockticket's transactions (holder record)",
    ];
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for _ in 0..n {
        for (v, times) in t.iter_mut().enumerate() {
            let prefix = format!("shapes{v}/");
            // One name per shape, reused (as a handle reuses its names): fresh names would
            // leave deleted keys in etcd's index for the range compare to visit.
            let id = "0";
            let t0 = Instant::now();
            match v {
                0 => {
                    let k = b64(&format!("{prefix}{id}"));
                    post(
                        &mut c,
                        ep,
                        "/v3/kv/put",
                        &format!(r#"{{"key":"{k}","value":"eA==","lease":"{lease}"}}"#),
                    );
                    post(
                        &mut c,
                        ep,
                        "/v3/kv/deleterange",
                        &format!(r#"{{"key":"{k}"}}"#),
                    );
                }
                1 => {
                    let r = post(
                        &mut c,
                        ep,
                        "/v3/lock/lock",
                        &format!(r#"{{"name":"c2hhcGVz","lease":"{lease}"}}"#),
                    );
                    let key = field(&r, "key").to_string();
                    post(
                        &mut c,
                        ep,
                        "/v3/lock/unlock",
                        &format!(r#"{{"key":"{key}"}}"#),
                    );
                }
                _ => {
                    let (a, r) = cycle_bodies(&prefix, id, &lease, v == 3);
                    post(&mut c, ep, "/v3/kv/txn", &a);
                    post(&mut c, ep, "/v3/kv/txn", &r);
                }
            }
            times.push(t0.elapsed());
        }
    }
    println!(
        "one acquire+release as raw gateway requests, one kept-alive connection, median of {n} (interleaved):"
    );
    for (name, v) in names.iter().zip(t.iter_mut()) {
        println!("  {name:<46} {}", ms(median(v)));
    }
}

fn ureq_vs_raw(ep: &str, n: usize) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let via_ureq = |path: &str, body: &str| -> String {
        let mut r = agent
            .post(&format!("{ep}{path}"))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .header("Content-Type", "application/json")
            .send(body)
            .expect("ureq post");
        String::from_utf8(r.body_mut().read_to_vec().expect("ureq body")).expect("UTF-8")
    };
    let mut c = None;
    let lease = field(&post(&mut c, ep, "/v3/lease/grant", r#"{"TTL":600}"#), "ID").to_string();
    let range = format!(r#"{{"key":"{}"}}"#, b64("ureq-range"));
    let (mut rr, mut ur, mut rc, mut uc) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let t0 = Instant::now();
        post(&mut c, ep, "/v3/kv/range", &range);
        rr.push(t0.elapsed());
        let t0 = Instant::now();
        via_ureq("/v3/kv/range", &range);
        ur.push(t0.elapsed());
        let (a, r) = cycle_bodies("ureq-raw/", "0", &lease, true);
        let t0 = Instant::now();
        post(&mut c, ep, "/v3/kv/txn", &a);
        post(&mut c, ep, "/v3/kv/txn", &r);
        rc.push(t0.elapsed());
        let (a, r) = cycle_bodies("ureq-ureq/", "0", &lease, true);
        let t0 = Instant::now();
        via_ureq("/v3/kv/txn", &a);
        via_ureq("/v3/kv/txn", &r);
        uc.push(t0.elapsed());
    }
    let (rr, ur, rc, uc) = (
        median(&mut rr),
        median(&mut ur),
        median(&mut rc),
        median(&mut uc),
    );
    println!(
        "ureq 3 (default features off) against a bare kept-alive connection, median of {n} (interleaved):"
    );
    println!(
        "  one range: raw {}, ureq {} ({:.2}x); lockticket's two transactions: raw {}, ureq {} ({:.2}x)",
        ms(rr),
        ms(ur),
        ratio(ur, rr),
        ms(rc),
        ms(uc),
        ratio(uc, rc)
    );
}

fn history(ep: &str, n: usize) {
    let lt = open(ep, "history", 60);
    let cycle = |k: usize| -> Duration {
        let mut v: Vec<Duration> = (0..k)
            .map(|_| {
                let t0 = Instant::now();
                drop(lt.token_lock().expect("lock"));
                t0.elapsed()
            })
            .collect();
        median(&mut v)
    };
    let fresh = cycle(n);
    let more = 20_000;
    for _ in 0..more {
        drop(lt.token_lock().expect("lock"));
    }
    let after = cycle(n);
    let mut c = None;
    let r = post(&mut c, ep, "/v3/kv/range", r#"{"key":"eA=="}"#);
    let rev = field(&r, "revision").to_string();
    post(
        &mut c,
        ep,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{rev}","physical":true}}"#),
    );
    let compacted = cycle(n);
    println!(
        "uncontended acquire+release on one lock, median of {n}: fresh {}, after {more} more \
         cycles {}, after a compaction {}",
        ms(fresh),
        ms(after),
        ms(compacted)
    );
}
