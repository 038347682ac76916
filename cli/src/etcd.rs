//! `--etcd URLS`: `exec`, `status`, `payload get` and `list` on a lock held on an etcd cluster
//! (the library's `lockticket::etcd`).
//!
//! `exec` holds the lock in this process (its lease is kept alive by a thread here), runs the
//! command as its child (killed with us, as locally), and watches for the loss of the lock:
//! when the guard can no longer prove it holds it, the command gets SIGTERM, then SIGKILL
//! after a grace period, and we exit with [`code::LOST`].

use std::ffi::OsStr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use lockticket::etcd::{EtcdLockTicket, EtcdStatus};
use lockticket::{Error, Share};
use serde_json::json;

use crate::{ExecArgs, Failure, code, report};
use crate::{escape, exec};

/// How long a command gets between SIGTERM and SIGKILL once the lock is lost.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// The endpoints of `--etcd URLS` (`env`: from `LOCKTICKET_ETCD`).
fn open(urls: &str, name: &OsStr, ttl: Option<u64>) -> Result<EtcdLockTicket, Failure> {
    let name = name
        .to_str()
        .ok_or_else(|| Failure::new(code::USAGE, "bad usage: an etcd lock name is ASCII text"))?;
    let mut b = EtcdLockTicket::builder(name);
    b = if urls == "env" {
        if std::env::var(lockticket::etcd::ENDPOINTS_ENV).map_or(true, |v| v.trim().is_empty()) {
            return Err(Failure::new(
                code::USAGE,
                format!(
                    "bad usage: --etcd env takes the URLs from {}, which is unset or empty",
                    lockticket::etcd::ENDPOINTS_ENV
                ),
            ));
        }
        b.endpoints_from_env()
    } else {
        b.endpoints([urls])
    };
    if let Some(s) = ttl {
        b = b.ttl(Duration::from_secs(s));
    }
    b.open()
        .map_err(|e| failure("cannot use the lock on etcd", &e))
}

/// `what: the library's message`, with the exit status for its kind.
pub(crate) fn failure(what: &str, e: &Error) -> Failure {
    let message = match e {
        Error::InvalidName { name } => format!(
            "bad usage: invalid etcd lock name {name:?}: give 1 to 200 characters from \
             A-Z a-z 0-9 - _ . (paths and lock files have no meaning on etcd)"
        ),
        Error::InvalidOption(_) => format!("bad usage: {e}"),
        _ => format!("{what}: {e}"),
    };
    Failure::new(crate::exit_code_of(e), message)
}

/// Options of the local form that have no meaning on etcd: a usage error, not ignored.
fn reject_local_options(a: &ExecArgs) -> Result<(), Failure> {
    let bad = [
        (
            a.no_fork,
            "-F (lockticket must stay to keep the lease alive)",
        ),
        (a.unlock, "-u (there are no descriptors on etcd)"),
        (a.mode.is_some(), "--mode"),
        (a.keep, "--keep"),
        (a.ring_capacity.is_some(), "--ring-capacity"),
        (a.payload_capacity.is_some(), "--payload-capacity"),
        (a.process_capacity.is_some(), "--process-capacity"),
        (
            a.fairness.is_some(),
            "--fairness (etcd locks are always strict FIFO)",
        ),
    ];
    if let Some((_, what)) = bad.iter().find(|(set, _)| *set) {
        return Err(Failure::new(
            code::USAGE,
            format!("bad usage: {what} has no meaning with --etcd (see 'lockticket exec --help')"),
        ));
    }
    Ok(())
}

/// `lockticket exec --etcd URLS [--ttl SECONDS] NAME CMD`.
pub(crate) fn exec(a: ExecArgs, urls: &str) -> Result<i32, Failure> {
    reject_local_options(&a)?;
    let (program, args) = exec::command_of(&a)?;
    let share = if a.shared {
        Share::Shared
    } else {
        Share::Exclusive
    };
    let lt = open(urls, &a.table, a.ttl)?;
    let patience = exec::patience_of(&a);
    let t0 = Instant::now();
    if a.verbose {
        describe_contention(&lt, share);
    }
    let request = lt.request().mode(share).patience(patience);
    let token = match request.lock() {
        Ok(Some(t)) => t,
        Ok(None) => {
            if a.verbose {
                let (what, how) = exec::not_obtained(patience, t0);
                report(&format!(
                    "{what}: the {share} lock {} on etcd: {how}",
                    lt.name()
                ));
            }
            return Ok(i32::from(a.conflict_exit_code));
        }
        Err(e) => return Err(failure("cannot take the lock on etcd", &e)),
    };
    let died = token.previous_holder_died();
    if a.verbose {
        let took = t0.elapsed();
        exec::verbose_line(&format!(
            "getting lock took {}.{:06} seconds",
            took.as_secs(),
            took.subsec_micros()
        ));
        if died {
            report(&format!(
                "the previous holder of the {share} lock {} on etcd died holding it (its lease \
                 ended)",
                lt.name()
            ));
        }
    }
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env(
            "LOCKTICKET_FENCING_TOKEN",
            token.fencing_token().to_string(),
        )
        .env(
            "LOCKTICKET_PREVIOUS_HOLDER_DIED",
            if died { "1" } else { "0" },
        )
        .env("LOCKTICKET_ETCD_KEY", token.key());
    if a.verbose {
        exec::verbose_line(&format!("executing {}", program.to_string_lossy()));
    }

    // The loss watcher: SIGTERM, then SIGKILL after the grace period. Not joined: when the
    // command ends we release and exit without waiting for it.
    let lost = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = channel::<()>();
    {
        let (loss, lost) = (token.loss(), lost.clone());
        std::thread::spawn(move || {
            loss.wait();
            lost.store(true, Ordering::SeqCst);
            // The command may not be started yet: wait for it (or for its end).
            let pid = loop {
                let pid = exec::running_child();
                if pid > 0 {
                    break pid;
                }
                match done_rx.recv_timeout(Duration::from_millis(5)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            };
            exec::signal_child(pid, libc::SIGTERM);
            if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(GRACE) {
                exec::signal_child(pid, libc::SIGKILL);
            }
        });
    }
    let outcome = exec::run_child(cmd, &program);
    drop(done_tx);
    let was_lost = lost.load(Ordering::SeqCst) || token.lost();
    let released = token.unlock();
    if was_lost {
        report(&format!(
            "lost the {share} lock {} on etcd while the command ran (its lease could have \
             expired: this host was cut off from etcd, or paused, for longer than the TTL); the \
             command was stopped (SIGTERM, SIGKILL after {} s)",
            lt.name(),
            GRACE.as_secs()
        ));
        return Ok(code::LOST);
    }
    if let Err(e) = released {
        report(&failure("cannot release the lock on etcd", &e).message);
    }
    outcome.map(exec::status_code)
}

/// With --verbose: who holds the lock when we may have to wait.
fn describe_contention(lt: &EtcdLockTicket, share: Share) {
    let Ok(st) = lt.status() else { return };
    if st.queue.is_empty() {
        return;
    }
    let holders: Vec<String> = st
        .queue
        .iter()
        .filter(|e| e.holding)
        .map(|e| format!("{}:{} {}", escape::text(&e.host), e.pid, e.share))
        .collect();
    report(&format!(
        "the {share} lock {} on etcd: held by {}; {} waiting",
        lt.name(),
        if holders.is_empty() {
            "nobody".to_string()
        } else {
            holders.join(", ")
        },
        st.queue.iter().filter(|e| !e.holding).count()
    ));
}

/// `lockticket status --etcd URLS NAME [--json]`.
pub(crate) fn status(urls: &str, name: &OsStr, as_json: bool) -> Result<i32, Failure> {
    let lt = open(urls, name, None)?;
    let st = lt
        .status()
        .map_err(|e| failure("cannot read the lock on etcd", &e))?;
    let out = if as_json {
        let mut s = escape::json(serde_json::to_string_pretty(&status_json(&st)).expect("JSON"));
        s.push('\n');
        s
    } else {
        status_text(&st)
    };
    crate::write_stdout(out.as_bytes())?;
    Ok(code::OK)
}

/// The `status --etcd --json` object (docs/cli.md).
fn status_json(st: &EtcdStatus) -> serde_json::Value {
    let entry = |i: usize, e: &lockticket::etcd::EtcdQueueEntry| {
        json!({
            "position": i,
            "holding": e.holding,
            "mode": e.share.to_string(),
            "host": e.host,
            "pid": e.pid,
            "key": e.key,
            "lease": format!("{:x}", e.lease),
            "lease_ttl_seconds": e.lease_ttl.map(|d| d.as_secs()),
            "fencing_token": e.fencing_token,
        })
    };
    json!({
        "format": 1,
        "backend": "etcd",
        "name": st.name,
        "revision": st.revision,
        "holders": st.queue.iter().enumerate().filter(|(_, e)| e.holding)
            .map(|(i, e)| entry(i, e)).collect::<Vec<_>>(),
        "queue": st.queue.iter().filter(|e| !e.holding).enumerate()
            .map(|(i, e)| entry(i + 1, e)).collect::<Vec<_>>(),
        "payload_bytes": st.payload_len,
    })
}

fn status_text(st: &EtcdStatus) -> String {
    let mut s = format!(
        "lock {} on etcd (revision {}): payload {} bytes\n",
        st.name, st.revision, st.payload_len
    );
    if st.queue.is_empty() {
        s.push_str("free: nobody holds or waits\n");
    }
    let mut waiting = 0;
    for e in &st.queue {
        let ttl = e
            .lease_ttl
            .map_or("?".to_string(), |d| format!("{} s", d.as_secs()));
        let what = if e.holding {
            "holds".to_string()
        } else {
            waiting += 1;
            format!("waits #{waiting}")
        };
        s.push_str(&format!(
            "  {what:<9} {:<9} {}:{}  token {}  lease {:x} ({ttl} left)\n",
            e.share.to_string(),
            escape::text(&e.host),
            e.pid,
            e.fencing_token,
            e.lease
        ));
    }
    s
}

/// `lockticket payload get --etcd URLS NAME`.
pub(crate) fn payload_get(urls: &str, name: &OsStr) -> Result<i32, Failure> {
    let lt = open(urls, name, None)?;
    let v = lt
        .payload()
        .map_err(|e| failure("cannot read the payload on etcd", &e))?;
    crate::write_stdout(&v)?;
    Ok(code::OK)
}

/// `lockticket payload set|clear --etcd URLS NAME [VALUE]`: fenced by the lock of the
/// `exec --etcd` this runs under (LOCKTICKET_ETCD_KEY and LOCKTICKET_FENCING_TOKEN), or under
/// the exclusive lock taken for the write.
pub(crate) fn payload_set(urls: &str, name: &OsStr, value: &[u8]) -> Result<i32, Failure> {
    let lt = open(urls, name, None)?;
    let key = std::env::var("LOCKTICKET_ETCD_KEY").ok();
    let token = std::env::var("LOCKTICKET_FENCING_TOKEN")
        .ok()
        .and_then(|t| t.parse::<u64>().ok());
    let ours = key
        .as_deref()
        .filter(|k| k.contains(&format!("/{}/q/", lt.name())));
    let r = match (ours, token) {
        (Some(k), Some(t)) => lt.set_payload_fenced(k, t, value),
        _ => lt.token_lock().and_then(|g| {
            if value.is_empty() {
                g.clear_payload()
            } else {
                g.set_payload(value)
            }
        }),
    };
    r.map_err(|e| failure("cannot write the payload on etcd", &e))?;
    Ok(code::OK)
}

/// `lockticket list --etcd URLS`: the locks with keys on the cluster.
pub(crate) fn list(urls: &str) -> Result<i32, Failure> {
    let lt = open(urls, OsStr::new("list"), None)?;
    let names = lt
        .list()
        .map_err(|e| failure("cannot list the locks on etcd", &e))?;
    let mut out = String::new();
    for n in names {
        out.push_str(&escape::text(&n));
        out.push('\n');
    }
    crate::write_stdout(out.as_bytes())?;
    Ok(code::OK)
}
