//! Demo: worker processes take FIFO turns on one lock; one is SIGKILLed while holding it; the
//! others carry on, and the next holder is told the previous one died.
//!
//! ```text
//! cargo run --release --example workers            # 4 workers, 3 turns each
//! cargo run --release --example workers -- 6 5     # 6 workers, 5 turns each
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockticket::{LockTicket, Share};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One line to the parent: `<epoch ns> <worker> <event>`.
fn event(worker: usize, what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {worker} {what}", now_ns());
    let _ = out.flush();
}

fn worker(name: &str, me: usize, turns: usize, victim: bool) -> lockticket::Result<()> {
    let lt = LockTicket::open(name)?;
    for turn in 1..=turns {
        let token = lt.token_lock()?;
        if token.previous_holder_died() {
            event(
                me,
                "holds the lock — and is told the previous holder died holding it",
            );
        } else {
            event(me, &format!("holds the lock (turn {turn})"));
        }
        if victim && turn == 2 {
            event(me, "VICTIM holds the lock and waits to be killed");
            loop {
                std::thread::park(); // the parent SIGKILLs us here, token held
            }
        }
        std::thread::sleep(Duration::from_millis(15)); // the "work" under the lock
        drop(token);
    }
    event(me, "done");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        let (name, me, turns, victim) = (
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            args[5] == "victim",
        );
        worker(name, me, turns, victim)?;
        return Ok(());
    }
    let workers: usize = args.get(1).map_or(Ok(4), |s| s.parse())?.max(2);
    let turns: usize = args.get(2).map_or(Ok(3), |s| s.parse())?.max(2);
    let name = format!("workers-demo-{}", std::process::id());
    let lt = LockTicket::open(&name)?;
    let owner = lt.main_lock(Share::Shared)?;
    println!(
        "lock table {} created; {workers} workers, {turns} turns each",
        lt.path().display()
    );
    println!("worker 1 will be SIGKILLed while holding the lock on its turn 2\n");

    let t0 = now_ns();
    let (tx, rx) = mpsc::channel::<(u64, usize, String)>();
    let mut children = Vec::new();
    for me in 1..=workers {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", &name, &me.to_string(), &turns.to_string()])
            .arg(if me == 1 { "victim" } else { "normal" })
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut it = line.splitn(3, ' ');
                let (Some(ns), Some(w), Some(what)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let _ = tx.send((ns.parse().unwrap_or(0), w.parse().unwrap_or(0), what.into()));
            }
        });
        children.push(child);
    }
    drop(tx);

    let mut killed_at = None;
    let mut done = 0;
    while done < workers - 1 {
        let Ok((ns, w, what)) = rx.recv_timeout(Duration::from_secs(30)) else {
            return Err("workers went quiet for 30 s".into());
        };
        let pid = children[w - 1].id();
        println!(
            "[{:>8.2} ms] worker {w} (pid {pid}) {what}",
            (ns.saturating_sub(t0)) as f64 / 1e6
        );
        if what.starts_with("VICTIM") {
            children[w - 1].kill()?; // SIGKILL, token held
            children[w - 1].wait()?;
            let k = now_ns();
            killed_at = Some(k);
            println!(
                "[{:>8.2} ms] parent SIGKILLed worker {w} (pid {pid})",
                (k - t0) as f64 / 1e6
            );
        }
        if let Some(k) = killed_at.filter(|_| what.contains("previous holder died")) {
            println!(
                "             → lock reclaimed from the dead holder {:.2} ms after the kill",
                ns.saturating_sub(k) as f64 / 1e6
            );
        }
        done += usize::from(what == "done");
    }
    for mut c in children {
        let _ = c.wait();
    }
    let st = lt.status()?;
    println!("\n{st}");
    owner.unlock()?; // the last owner out removes the table
    println!("table removed: {}", !lt.path().exists());
    Ok(())
}
