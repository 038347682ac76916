//! The session lease of a handle, kept alive by one background thread, and what that thread
//! also watches: the keys of the guards held through it, and keys left to delete.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Inner;
use super::client::{int, kvs, range_prefix};
use crate::error::Result;

/// A lease and what this process knows of it.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: i64,
    pub ttl: Duration,
    /// The lease cannot have expired before this instant (measured from when the last
    /// successful keep-alive was *sent*, so never later than the server's own expiry).
    alive_until: Mutex<Instant>,
    lost: AtomicBool,
    changed: Condvar,
    /// The queue keys held through this lease, with their own loss flag.
    held: Mutex<Vec<Weak<Held>>>,
}

/// One held key.
#[derive(Debug)]
pub(crate) struct Held {
    pub qkey: String,
    pub lost: AtomicBool,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub fn grant(inner: &Inner) -> Result<Arc<Session>> {
        let secs = inner.ttl.as_secs().max(1);
        let sent = Instant::now();
        let r = inner
            .client
            .call("lease grant", "/v3/lease/grant", &json!({"TTL": secs}))?;
        let id = int(r.get("ID"));
        let ttl = Duration::from_secs(int(r.get("TTL")).max(1) as u64);
        Ok(Arc::new(Session {
            id,
            ttl,
            alive_until: Mutex::new(sent + ttl),
            lost: AtomicBool::new(false),
            changed: Condvar::new(),
            held: Mutex::new(Vec::new()),
        }))
    }

    /// True once the lease may have expired (or is known to have).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || Instant::now() >= *self.alive_until.lock().unwrap()
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
        for h in self.held.lock().unwrap().iter().filter_map(Weak::upgrade) {
            h.lost.store(true, Ordering::Release);
        }
        self.changed.notify_all();
    }

    pub fn register(&self, held: &Arc<Held>) {
        let mut v = self.held.lock().unwrap();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(held));
    }

    /// Waits until `held` is lost or `until` passes; true if lost.
    pub fn wait_lost(&self, held: &Held, until: Option<Instant>) -> bool {
        let mut alive = self.alive_until.lock().unwrap();
        loop {
            if self.lost.load(Ordering::Acquire) || held.lost.load(Ordering::Acquire) {
                return true;
            }
            let now = Instant::now();
            if now >= *alive {
                return true;
            }
            let mut wake = *alive;
            if let Some(u) = until {
                if now >= u {
                    return false;
                }
                wake = wake.min(u);
            }
            alive = self.changed.wait_timeout(alive, wake - now).unwrap().0;
        }
    }

    /// One keep-alive; updates what we know.
    fn keep_alive(&self, inner: &Inner) {
        let sent = Instant::now();
        let alive = *self.alive_until.lock().unwrap();
        if sent >= alive {
            self.mark_lost();
            return;
        }
        // Never wait past the moment the lease may expire: then it is lost anyway.
        let deadline = alive.min(sent + inner.client.call_timeout);
        match inner.client.call_until(
            "lease keep-alive",
            "/v3/lease/keepalive",
            &json!({"ID": self.id.to_string()}),
            deadline,
        ) {
            Ok(r) => {
                let ttl = int(r.get("TTL"));
                if ttl <= 0 {
                    self.mark_lost(); // the lease is gone on the server
                } else {
                    *self.alive_until.lock().unwrap() = sent + Duration::from_secs(ttl as u64);
                    self.changed.notify_all();
                }
            }
            Err(_) => {
                if Instant::now() >= *self.alive_until.lock().unwrap() {
                    self.mark_lost();
                }
            }
        }
    }

    /// Marks lost every held key that is no longer in the queue (deleted by hand, or by an
    /// expiry we did not see yet).
    fn check_keys(&self, inner: &Inner) {
        let held: Vec<Arc<Held>> = self
            .held
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        if held.is_empty() {
            return;
        }
        let mut req = range_prefix(&inner.queue_prefix());
        req.insert("keys_only".into(), true.into());
        if let Ok(r) = inner
            .client
            .call("check held keys", "/v3/kv/range", &req.into())
        {
            let present: Vec<String> = kvs(&r).into_iter().map(|kv| kv.key).collect();
            for h in held {
                if !present.contains(&h.qkey) {
                    h.lost.store(true, Ordering::Release);
                    self.changed.notify_all();
                }
            }
        }
    }

    /// Revokes the lease (its keys go with it); best effort.
    pub fn revoke(&self, inner: &Inner) {
        let _ = inner.client.call_until(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({"ID": self.id.to_string()}),
            Instant::now() + inner.client.call_timeout.min(Duration::from_secs(1)),
        );
        self.mark_lost();
    }
}

/// The keep-alive thread of a handle: every third of the TTL (sooner after a failure), keeps
/// the lease alive, checks the held keys, and retries deleting keys left behind. Ends when the
/// handle is gone (`stop` disconnected).
pub(crate) fn keeper(inner: Weak<Inner>, stop: Receiver<()>) {
    let mut pause = Duration::from_millis(0);
    loop {
        match stop.recv_timeout(pause) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let session = inner.session.lock().unwrap().clone();
        let mut period = (inner.ttl / 3).max(Duration::from_millis(100));
        if let Some(s) = session
            && !s.lost.load(Ordering::Acquire)
        {
            s.keep_alive(&inner);
            s.check_keys(&inner);
            period = (s.ttl / 3).max(Duration::from_millis(100));
            if s.lost() {
                // Nothing to keep: a new request grants a new lease.
            } else if Instant::now() + period >= *s.alive_until.lock().unwrap() {
                period = Duration::from_millis(50);
            }
        }
        inner.delete_orphans();
        if !inner.orphans.lock().unwrap().is_empty() {
            period = period.min(Duration::from_millis(200));
        }
        pause = period;
    }
}
