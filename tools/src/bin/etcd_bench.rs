//! Benches of the etcd backend in one run, against a single etcd node it starts itself (on
//! tmpfs, fast elections): uncontended acquire+release against etcd's own lock service (the
//! v3lock API that `etcd-client`'s `lock()` calls and `etcdctl lock` uses), throughput with
//! 1, 4 and 16 clients, handoff to a waiting client, `lockticket exec --etcd` one-shot against
//! `etcdctl lock NAME true`, and failover after a holder's SIGKILL against the TTL.
//!
//! `cargo build --release -p lockticket-cli && cargo run --release -p lockticket-tools
//! --features etcd --bin etcd_bench` (needs `etcd`, and `etcdctl` for the one-shot
//! comparison, on PATH).
//!
//! The comparison with the `etcd-client` crate itself (gRPC; it needs `protoc` and tokio, so
//! it lives outside the workspace) is `tools/etcd-compare` (docs/etcd.md, "Measured").

#[path = "../../../tests/etcd_support/mod.rs"]
mod etcd_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_support::Cluster;
use lockticket::etcd::EtcdLockTicket;

fn open(ep: &str, name: &str, ttl: u64) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints([ep])
        .ttl(Duration::from_secs(ttl))
        .open()
        .unwrap()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A bare JSON POST to the gateway on a kept-alive connection (as the library's client,
/// and as `etcd-client` keeps its gRPC connection).
fn post(conn: &mut Option<TcpStream>, ep: &str, path: &str, body: &str) -> String {
    let hostport = ep.trim_start_matches("http://");
    let s = conn.get_or_insert_with(|| {
        let s = TcpStream::connect(hostport).unwrap();
        s.set_nodelay(true).unwrap();
        s
    });
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
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
    &json[at..at + json[at..].find('"').unwrap()]
}

fn main() {
    if std::env::var("ETCD_BENCH_ROLE").as_deref() == Ok("holder") {
        // Takes the lock, says so, waits to be killed.
        let ep = std::env::var("ETCD_BENCH_EP").unwrap();
        let lt = open(&ep, "failover", 2);
        let g = lt.token_lock().unwrap();
        println!("held {}", g.fencing_token());
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        return;
    }
    let Some(c) = Cluster::start("bench", 1) else {
        return;
    };
    let ep = c.endpoints();
    let n = 400;
    println!("etcd backend benches: one etcd node on loopback, data on tmpfs ({n} iterations)");

    // Uncontended acquire+release.
    let lt = open(&ep, "uncontended", 10);
    drop(lt.token_lock().unwrap()); // the session lease
    let mut acq = Vec::new();
    let mut ours: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let g = lt.token_lock().unwrap();
            acq.push(t0.elapsed());
            drop(g);
            t0.elapsed()
        })
        .collect();
    println!("  (acquire alone: median {})", ms(pct(&mut acq, 0.5)));
    let mut reads: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            lt.payload().unwrap();
            t0.elapsed()
        })
        .collect();
    let g = lt.token_lock().unwrap();
    let mut writes: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            g.set_payload(b"x").unwrap();
            t0.elapsed()
        })
        .collect();
    drop(g);
    println!(
        "  (one read: median {}; one fenced write: median {})",
        ms(pct(&mut reads, 0.5)),
        ms(pct(&mut writes, 0.5))
    );
    let mut conn = None;
    let lease = field(
        &post(&mut conn, &ep, "/v3/lease/grant", r#"{"TTL":10}"#),
        "ID",
    )
    .to_string();
    let mut theirs: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let r = post(
                &mut conn,
                &ep,
                "/v3/lock/lock",
                &format!(r#"{{"name":"djN0ZXN0","lease":"{lease}"}}"#),
            );
            let key = field(&r, "key").to_string();
            post(
                &mut conn,
                &ep,
                "/v3/lock/unlock",
                &format!(r#"{{"key":"{key}"}}"#),
            );
            t0.elapsed()
        })
        .collect();
    let (a, b) = (pct(&mut ours, 0.5), pct(&mut theirs, 0.5));
    println!(
        "uncontended acquire+release, median: lockticket {} (p99 {}), etcd's v3lock service \
         {} (p99 {}): ratio {:.2}x",
        ms(a),
        ms(pct(&mut ours, 0.99)),
        ms(b),
        ms(pct(&mut theirs, 0.99)),
        a.as_secs_f64() / b.as_secs_f64()
    );

    // Throughput with several clients (each its own handle and lease).
    for clients in [1usize, 4, 16] {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let secs = 2.0;
        std::thread::scope(|s| {
            for _ in 0..clients {
                let (ep, stop, count) = (&ep, &stop, &count);
                s.spawn(move || {
                    let lt = open(ep, &format!("throughput-{clients}"), 10);
                    while !stop.load(Ordering::Relaxed) {
                        drop(lt.token_lock().unwrap());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(Duration::from_secs_f64(secs)); // the measuring window
            stop.store(true, Ordering::Relaxed);
        });
        println!(
            "throughput, {clients:>2} clients on one lock: {:.0} acquire+release/s",
            count.load(Ordering::Relaxed) as f64 / secs
        );
    }

    // Handoff: a waiter is granted after the holder's release returns.
    let holder = open(&ep, "handoff", 10);
    let waiter = open(&ep, "handoff", 10);
    drop(waiter.token_lock().unwrap());
    let mut handoff: Vec<Duration> = Vec::new();
    for _ in 0..100 {
        let g = holder.token_lock().unwrap();
        let released = std::sync::Mutex::new(None::<Instant>);
        std::thread::scope(|s| {
            let (waiter, released) = (&waiter, &released);
            let t = s.spawn(move || {
                let w = waiter.token_lock().unwrap();
                let at = Instant::now();
                drop(w);
                at
            });
            // Release once the waiter is queued.
            while holder.status().unwrap().queue.len() < 2 {
                std::thread::yield_now();
            }
            let t0 = Instant::now();
            *released.lock().unwrap() = Some(t0);
            drop(g);
            let granted = t.join().unwrap();
            handoff.push(granted.saturating_duration_since(t0));
        });
    }
    println!(
        "handoff to a waiting client (release call start → waiter granted), median {} p99 {} \
         (includes the release's own Raft write)",
        ms(pct(&mut handoff, 0.5)),
        ms(pct(&mut handoff, 0.99))
    );

    // One-shot commands.
    let lockticket = std::env::current_exe()
        .unwrap()
        .with_file_name("lockticket");
    let one_shot = |cmd: &mut dyn FnMut() -> Command| -> Duration {
        let mut v: Vec<Duration> = (0..30)
            .map(|_| {
                let t0 = Instant::now();
                let st = cmd().stdout(Stdio::null()).status().unwrap();
                assert!(st.success());
                t0.elapsed()
            })
            .collect();
        pct(&mut v, 0.5)
    };
    let has_etcdctl = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if lockticket.is_file() && has_etcdctl {
        let ours = one_shot(&mut || {
            let mut c = Command::new(&lockticket);
            c.args(["exec", "--etcd", &ep, "oneshot", "true"]);
            c
        });
        let theirs = one_shot(&mut || {
            let mut c = Command::new("etcdctl");
            c.env("ETCDCTL_API", "3")
                .args(["--endpoints", &ep, "lock", "oneshot2", "true"]);
            c
        });
        println!(
            "one-shot, median of 30: `lockticket exec --etcd URL NAME true` {}, `etcdctl lock \
             NAME true` {}: ratio {:.2}x",
            ms(ours),
            ms(theirs),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    } else {
        println!(
            "one-shot: skipped (needs {} built: cargo build --release -p lockticket-cli, and \
             etcdctl)",
            lockticket.display()
        );
    }

    // Failover after a holder's SIGKILL (TTL 2 s).
    let mut times = Vec::new();
    let lt = open(&ep, "failover", 2);
    for _ in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("ETCD_BENCH_ROLE", "holder")
            .env("ETCD_BENCH_EP", &ep)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with("held"));
        child.kill().unwrap();
        let t0 = Instant::now();
        let g = lt.token_lock().unwrap();
        times.push(t0.elapsed());
        assert!(g.previous_holder_died());
        drop(g);
        let _ = child.wait();
    }
    println!(
        "failover after a holder's SIGKILL, TTL 2 s: {} (target ≤ TTL + 1 s)",
        times.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );
}
