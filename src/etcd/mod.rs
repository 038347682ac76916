//! The same token locks over an etcd cluster, for processes on several machines (feature
//! `etcd`).
//!
//! A lock is a queue of keys under `lockticket/NAME/q/`, one per request, each attached to
//! the lease of the requesting handle's session, ordered by their *create revision*:
//!
//! * **FIFO**: a request is granted when no earlier key conflicts with it: a writer waits for
//!   every earlier key, a reader only for earlier writers (etcd's read-write mutex recipe).
//!   Each waiter watches only the one key before it (no herd), and checks its own key after
//!   every wait.
//! * **Liveness** is the lease, kept alive by a background thread every third of the TTL
//!   (default 10 s). A killed holder's keys vanish when its lease expires: the next waiter is
//!   granted within the TTL and told [`previous_holder_died`](crate::Guard::previous_holder_died).
//! * **Loss is reported**: [`EtcdGuard::lost`] turns true as soon as the lease *could* have
//!   expired (measured from when the last successful keep-alive was sent), or once the key is
//!   found deleted; [`EtcdGuard::wait_lost`] waits for it; fenced writes through the guard then
//!   fail with [`Error::EtcdLost`].
//! * **Fencing token** = the key's create revision: larger for every later grant in the
//!   whole cluster. [`EtcdGuard::put_fenced`] writes a key only if the guard's key still
//!   exists, in one transaction; the payload is written that way.
//! * **Cancel-safe**: a request that times out, fails or is dropped deletes its own keys (named
//!   by the client, so even a grant that raced the cancel is released); a deletion that fails
//!   is retried by the keep-alive thread.
//!
//! Every call has a deadline ([`EtcdBuilder::call_timeout`]) and is retried across the
//! endpoints within it: a leader change costs about one election.
//!
//! ```no_run
//! use lockticket::Guard;
//! use lockticket::etcd::EtcdLockTicket;
//!
//! # fn main() -> lockticket::Result<()> {
//! let lt = EtcdLockTicket::builder("nightly-report")
//!     .endpoints(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
//!     .open()?;
//! let token = lt.token_lock()?;
//! if token.previous_holder_died() {
//!     // the last holder's lease ended while it held the lock: check its work
//! }
//! // Writes that must not come from an overtaken holder go through the guard:
//! token.set_payload(format!("done by {}", std::process::id()).as_bytes())?;
//! drop(token);
//! # Ok(()) }
//! ```
//!
//! Code written once for both backends takes a [`TokenLocks`](crate::TokenLocks) (the handles)
//! and uses [`Guard`] (the guards): the same requests, the same questions.
//!
//! Async code awaits the same requests ([`EtcdRequest::lock_async`],
//! [`EtcdLockTicket::token_lock_async`], the owned forms): runtime-agnostic, cancel-safe
//! futures ([`EtcdLockFuture`]), each pending one served by a thread of its own.
//!
//! # What has no etcd meaning
//!
//! The etcd handle has no main lock (a table on etcd needs no owner and is never removed:
//! an idle lock is no keys at all), no lock files or descriptor form (`table_for_lock_file`,
//! `FdLock`), no capacities (ring, payload, process table: etcd's own limits apply, a payload
//! up to about 1.5 MB), no bounded fairness (always strict FIFO) and no repair (there is no
//! shared state to repair: a dead process's keys go with its lease). These calls simply do not
//! exist on [`EtcdLockTicket`], so asking for them is a compile error, and the command rejects
//! the matching options with `--etcd` as a usage error. Tokens are not re-entrant here either,
//! but no deadlock is detected: a thread asking twice waits for itself until its timeout.
//!
//! The client talks to etcd's JSON gateway (`/v3/...`, etcd 3.4 and later) over plain HTTP
//! with the standard library and `serde_json`: no gRPC stack, no protoc, no async runtime.
//! `docs/etcd.md` explains that choice, the guarantees and the failure table.

mod async_lock;
mod client;
mod http;
mod session;

pub use self::async_lock::EtcdLockFuture;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use self::async_lock::Stop;
use self::client::{Client, b64, int, kvs, range_prefix};
use self::http::Endpoint;
use self::session::{Held, Session};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::patience::Patience;
use crate::share::Share;

/// The environment variable [`EtcdBuilder::endpoints_from_env`] reads: client URLs separated
/// by commas (`http://10.0.0.1:2379,http://10.0.0.2:2379`).
pub const ENDPOINTS_ENV: &str = "LOCKTICKET_ETCD";

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The default deadline of one call to etcd (retries across endpoints included).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The default key prefix: a lock named `NAME` lives under `lockticket/NAME/`.
pub const DEFAULT_PREFIX: &str = "lockticket/";

/// Options of an [`EtcdLockTicket`]; made by [`EtcdLockTicket::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::etcd::EtcdLockTicket::builder("deploy")
///     .endpoints(["http://127.0.0.1:2379"])
///     .ttl(Duration::from_secs(5))
///     .call_timeout(Duration::from_secs(1))
///     .open()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct EtcdBuilder {
    name: String,
    endpoints: Vec<String>,
    from_env: bool,
    ttl: Duration,
    call_timeout: Duration,
    prefix: String,
}

impl EtcdBuilder {
    /// The members' client URLs (`http://HOST:PORT`, or `HOST:PORT`, or `HOST` for port
    /// 2379). Replaces earlier ones.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["http://10.0.0.1:2379", "10.0.0.2:2379"])
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn endpoints<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.endpoints = urls
            .into_iter()
            .flat_map(|u| {
                u.as_ref()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        self.from_env = false;
        self
    }

    /// Takes the endpoints from [`ENDPOINTS_ENV`] (`LOCKTICKET_ETCD`) when `open` runs; an
    /// error there if it is unset or empty.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// // LOCKTICKET_ETCD=http://10.0.0.1:2379,http://10.0.0.2:2379
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs").endpoints_from_env().open()?;
    /// # Ok(()) }
    /// ```
    pub fn endpoints_from_env(mut self) -> Self {
        self.from_env = true;
        self
    }

    /// The lease TTL (whole seconds, 1 s to 1 h; default [`DEFAULT_TTL`]): how long a killed
    /// or paused holder keeps the lock, and how soon a holder cut off from etcd learns it
    /// lost it.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["127.0.0.1:2379"])
    ///     .ttl(std::time::Duration::from_secs(3))
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The deadline of one call to etcd, retries across the endpoints included (default
    /// [`DEFAULT_CALL_TIMEOUT`]); a call that does not get an answer in time fails with
    /// [`Error::EtcdUnavailable`]. One attempt on one member takes at most a third of it.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["127.0.0.1:2379"])
    ///     .call_timeout(std::time::Duration::from_millis(500))
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The key prefix (default [`DEFAULT_PREFIX`]); every process of a lock must use the same.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["127.0.0.1:2379"])
    ///     .prefix("myapp/locks/")
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the options and makes the handle. No network call is made yet: the first lock
    /// request grants the session lease.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["127.0.0.1:2379"])
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn open(self) -> Result<EtcdLockTicket> {
        let urls = if self.from_env {
            let v = std::env::var(ENDPOINTS_ENV).unwrap_or_default();
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        } else {
            self.endpoints.clone()
        };
        if urls.is_empty() {
            return Err(Error::InvalidOption(format!(
                "no etcd endpoints for lock {:?}: give them with \
                 EtcdLockTicket::builder(..).endpoints([\"http://HOST:2379\"]), or set \
                 {ENDPOINTS_ENV}=http://HOST:2379,... and use endpoints_from_env()",
                self.name
            )));
        }
        let endpoints = urls
            .iter()
            .map(|u| Endpoint::parse(u).map_err(|e| Error::InvalidOption(format!("etcd: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        valid_name(&self.name)?;
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            return Err(Error::InvalidOption(format!(
                "etcd lease TTL {:?} is out of range: give 1 s to 1 h (whole seconds)",
                self.ttl
            )));
        }
        if self.call_timeout < Duration::from_millis(10) {
            return Err(Error::InvalidOption(format!(
                "etcd call timeout {:?} is too short: give at least 10 ms",
                self.call_timeout
            )));
        }
        let inner = Inner {
            client: Client::new(endpoints, self.call_timeout, self.name.clone()),
            keys: format!("{}{}/", self.prefix, self.name),
            name: self.name,
            ttl: Duration::from_secs(self.ttl.as_secs()),
            session: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            keeper: Mutex::new(None),
            pid: std::process::id(),
            ids: Ids::new(),
        };
        Ok(EtcdLockTicket {
            inner: Arc::new(inner),
        })
    }
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
        })
    }
}

/// What a handle and its guards share.
#[derive(Debug)]
pub(crate) struct Inner {
    client: Client,
    name: String,
    /// `PREFIX/NAME/`.
    keys: String,
    ttl: Duration,
    session: Mutex<Option<Arc<Session>>>,
    /// Keys whose deletion failed: retried by the keep-alive thread.
    orphans: Mutex<Vec<String>>,
    /// Dropping it stops the keep-alive thread.
    keeper: Mutex<Option<Sender<()>>>,
    /// The process that made the handle: a forked child's copy revokes nothing.
    pid: u32,
    /// The names of this handle's requests.
    ids: Ids,
}

/// The names of a handle's requests (`ID` in `q/w/ID`, `h/ID`): a random base per handle, the
/// PID (a forked child's copy names its own), and a slot number that is **reused** once the
/// request's keys are known to be deleted. etcd keeps a deleted key in its index until it
/// compacts its history, and the queue's range compare visits every such key: a fresh name
/// per request made every acquire slower by ~0.16 ms per 1,000 earlier requests on the lock
/// (4.6 ms after 20,000) until the next compaction; reused names keep that to a few keys per
/// handle, as etcd's own lock (one key per lease) does. A slot is given back only when every
/// write of its request was answered at its first attempt (no earlier attempt can still be
/// applied later, to a newer request of the same name) and its keys were deleted.
#[derive(Debug)]
struct Ids {
    base: String,
    free: Mutex<Vec<u64>>,
    next: std::sync::atomic::AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        Ids {
            base: random_id(),
            free: Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A slot and the request name it makes.
    fn take(&self) -> (u64, String) {
        let slot = self
            .free
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        (
            slot,
            format!("{}{:x}-{slot:x}", self.base, std::process::id()),
        )
    }

    fn give(&self, slot: u64) {
        self.free.lock().unwrap().push(slot);
    }
}

impl Inner {
    fn queue_prefix(&self) -> String {
        format!("{}q/", self.keys)
    }

    fn payload_key(&self) -> String {
        format!("{}payload", self.keys)
    }

    /// The current session, or a new one.
    fn session(self: &Arc<Self>) -> Result<Arc<Session>> {
        let mut slot = self.session.lock().unwrap();
        if let Some(s) = slot.as_ref()
            && !s.lost()
        {
            return Ok(s.clone());
        }
        let s = Session::grant(self)?;
        *slot = Some(s.clone());
        drop(slot);
        let mut k = self.keeper.lock().unwrap();
        if k.is_none() {
            let (tx, rx) = std::sync::mpsc::channel();
            let weak = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("lockticket-etcd-keepalive".into())
                .spawn(move || session::keeper(weak, rx))
                .map_err(|e| Error::EtcdUnavailable {
                    name: self.name.clone(),
                    op: "start the keep-alive thread",
                    endpoints: self.client.endpoints_text(),
                    detail: e.to_string(),
                })?;
            *k = Some(tx);
        }
        Ok(s)
    }

    /// Deletes `keys` now, or leaves them to the keep-alive thread. True if they were
    /// deleted by the first attempt (no other attempt of this call is left to be applied).
    fn delete_keys(&self, keys: &[&str]) -> bool {
        let ops: Vec<Value> = keys
            .iter()
            .map(|k| json!({"request_delete_range": {"key": b64(k.as_bytes())}}))
            .collect();
        match self.client.txn_counted("delete keys", vec![], ops, vec![]) {
            Ok((_, _, _, attempts)) => attempts == 1,
            Err(_) => {
                self.orphans
                    .lock()
                    .unwrap()
                    .extend(keys.iter().map(|k| k.to_string()));
                false
            }
        }
    }

    fn delete_orphans(&self) {
        let keys: Vec<String> = std::mem::take(&mut *self.orphans.lock().unwrap());
        if keys.is_empty() {
            return;
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let _ = self.delete_keys(&refs);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            return; // a forked child's copy: the lease and the keys are the parent's
        }
        self.delete_orphans();
        if let Some(s) = self.session.lock().unwrap().take() {
            s.revoke(self);
        }
    }
}

/// A lock on etcd, shared by processes on any machine that reach the cluster: the etcd
/// counterpart of [`LockTicket`](crate::LockTicket)'s token lock and payload. Cheap to clone
/// (clones share one session lease); `Send + Sync`.
///
/// ```no_run
/// use std::time::Duration;
/// use lockticket::etcd::EtcdLockTicket;
/// # fn main() -> lockticket::Result<()> {
/// let lt = EtcdLockTicket::from_env("cron-cleanup")?; // LOCKTICKET_ETCD=http://...
/// match lt.token_lock_timeout(Duration::from_secs(1))? {
///     Some(token) => { /* we hold it */ drop(token) }
///     None => eprintln!("another host runs the cleanup"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdLockTicket {
    inner: Arc<Inner>,
}

impl EtcdLockTicket {
    /// Starts the options of the lock `name` (1 to 200 characters from `A-Z a-z 0-9 - _ .`).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::builder("jobs")
    ///     .endpoints(["http://127.0.0.1:2379"])
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(name: impl Into<String>) -> EtcdBuilder {
        EtcdBuilder {
            name: name.into(),
            endpoints: Vec::new(),
            from_env: false,
            ttl: DEFAULT_TTL,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }

    /// Opens `name` on the endpoints in `LOCKTICKET_ETCD`, with default options.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// # Ok(()) }
    /// ```
    pub fn from_env(name: impl Into<String>) -> Result<EtcdLockTicket> {
        Self::builder(name).endpoints_from_env().open()
    }

    /// The lock's name.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// assert_eq!(lt.name(), "jobs");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The lease TTL in use.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// assert_eq!(lt.ttl(), lockticket::etcd::DEFAULT_TTL);
    /// # Ok(()) }
    /// ```
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// A token request: exclusive and blocking until changed.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = lt.request().shared().timeout(Duration::from_millis(500)).lock()?;
    /// # Ok(()) }
    /// ```
    pub fn request(&self) -> EtcdRequest<'_> {
        EtcdRequest {
            lt: self,
            share: Share::Exclusive,
            patience: Patience::Forever,
        }
    }

    /// Takes the exclusive token, waiting as long as it takes.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock(&self) -> Result<EtcdGuard> {
        self.acquire(Share::Exclusive, Patience::Forever)
            .map(|g| g.expect("a request without a deadline is granted"))
    }

    /// Takes a shared (reader) token, waiting as long as it takes.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = lt.token_lock_shared()?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock_shared(&self) -> Result<EtcdGuard> {
        self.acquire(Share::Shared, Patience::Forever)
            .map(|g| g.expect("a request without a deadline is granted"))
    }

    /// The exclusive token if it is free now (`None` otherwise); never waits for other
    /// holders (one round trip to etcd).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// if let Some(token) = lt.try_token_lock()? { /* ... */ }
    /// # Ok(()) }
    /// ```
    pub fn try_token_lock(&self) -> Result<Option<EtcdGuard>> {
        self.acquire(Share::Exclusive, Patience::NoWait)
    }

    /// A shared token if no writer holds or waits now (`None` otherwise).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = lt.try_token_lock_shared()?;
    /// # Ok(()) }
    /// ```
    pub fn try_token_lock_shared(&self) -> Result<Option<EtcdGuard>> {
        self.acquire(Share::Shared, Patience::NoWait)
    }

    /// The exclusive token, waiting at most `timeout` (`None` if it ran out; the request
    /// then leaves no key behind).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock_timeout(std::time::Duration::from_secs(3))?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock_timeout(&self, timeout: Duration) -> Result<Option<EtcdGuard>> {
        self.request().timeout(timeout).lock()
    }

    /// A shared token, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = lt.token_lock_shared_timeout(std::time::Duration::from_secs(3))?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock_shared_timeout(&self, timeout: Duration) -> Result<Option<EtcdGuard>> {
        self.request().shared().timeout(timeout).lock()
    }

    /// The payload, whole (empty if none was written). Any process may read it.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let value: Vec<u8> = lt.payload()?;
    /// # Ok(()) }
    /// ```
    pub fn payload(&self) -> Result<Vec<u8>> {
        let key = self.inner.payload_key();
        let r = self.inner.client.call(
            "read the payload",
            "/v3/kv/range",
            &json!({"key": b64(key.as_bytes())}),
        )?;
        Ok(kvs(&r).pop().map(|kv| kv.value).unwrap_or_default())
    }

    /// Replaces the payload on behalf of the holder whose queue key is `holder_key` and whose
    /// fencing token is `token` (what `lockticket exec --etcd` gives its command as
    /// `LOCKTICKET_ETCD_KEY` and `LOCKTICKET_FENCING_TOKEN`): written only if that holder
    /// still holds the lock, in one transaction; [`Error::EtcdLost`] otherwise. For a
    /// process that does not own the guard itself; a guard's owner uses
    /// [`EtcdGuard::set_payload`].
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let key = std::env::var("LOCKTICKET_ETCD_KEY").unwrap();
    /// let token: u64 = std::env::var("LOCKTICKET_FENCING_TOKEN").unwrap().parse().unwrap();
    /// lt.set_payload_fenced(&key, token, b"step 3 done")?;
    /// # Ok(()) }
    /// ```
    pub fn set_payload_fenced(&self, holder_key: &str, token: u64, value: &[u8]) -> Result<()> {
        let key = self.inner.payload_key();
        let op = if value.is_empty() {
            json!({"request_delete_range": {"key": b64(key.as_bytes())}})
        } else {
            json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value)}})
        };
        let (ok, _, _) = self.inner.client.txn(
            "fenced payload write",
            vec![own_compare(holder_key, token as i64)],
            vec![op],
            vec![],
        )?;
        if ok {
            Ok(())
        } else {
            Err(Error::EtcdLost {
                name: self.inner.name.clone(),
                token,
                why: "the holder's key is gone from etcd",
            })
        }
    }

    /// The names of the locks under this handle's prefix that have keys on the cluster
    /// (requests, holder records or a payload).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("any")?;
    /// for name in lt.list()? { println!("{name}"); }
    /// # Ok(()) }
    /// ```
    pub fn list(&self) -> Result<Vec<String>> {
        let prefix = &self.inner.keys[..self.inner.keys.len() - self.inner.name.len() - 1];
        let mut req = range_prefix(prefix);
        req.insert("keys_only".into(), true.into());
        let r = self
            .inner
            .client
            .call("list the locks", "/v3/kv/range", &req.into())?;
        let mut names: Vec<String> = kvs(&r)
            .into_iter()
            .filter_map(|kv| {
                let rest = kv.key.strip_prefix(prefix)?;
                Some(rest.split('/').next()?.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    /// The queue: holders first, then waiters in order, with their hosts, PIDs, lease TTLs
    /// and fencing tokens.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// for e in lt.status()?.queue {
    ///     println!("{} {} {}:{} token {}", if e.holding { "holds" } else { "waits" },
    ///         e.share, e.host, e.pid, e.fencing_token);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> Result<EtcdStatus> {
        let mut req = range_prefix(&self.inner.queue_prefix());
        req.insert("sort_target".into(), "CREATE".into());
        req.insert("sort_order".into(), "ASCEND".into());
        let r = self
            .inner
            .client
            .call("read the queue", "/v3/kv/range", &req.into())?;
        let mut queue = Vec::new();
        let mut writer_seen = false;
        for (i, kv) in kvs(&r).into_iter().enumerate() {
            let share = if kv
                .key
                .starts_with(&format!("{}w/", self.inner.queue_prefix()))
            {
                Share::Exclusive
            } else {
                Share::Shared
            };
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            let holding = match share {
                Share::Exclusive => i == 0,
                Share::Shared => !writer_seen,
            };
            writer_seen |= share == Share::Exclusive;
            let ttl = self
                .inner
                .client
                .call(
                    "read a lease",
                    "/v3/lease/timetolive",
                    &json!({"ID": kv.lease.to_string()}),
                )
                .map(|t| int(t.get("TTL")))
                .unwrap_or(-1);
            queue.push(EtcdQueueEntry {
                key: kv.key,
                share,
                holding,
                host: v
                    .get("host")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                pid: v.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32,
                lease: kv.lease,
                lease_ttl: (ttl >= 0).then(|| Duration::from_secs(ttl as u64)),
                fencing_token: kv.create_revision as u64,
            });
        }
        let payload_len = self.payload()?.len();
        Ok(EtcdStatus {
            name: self.inner.name.clone(),
            revision: client::revision(&r),
            queue,
            payload_len,
        })
    }

    fn acquire(&self, share: Share, patience: Patience) -> Result<Option<EtcdGuard>> {
        self.acquire_with(share, patience, None)
    }

    /// The request; `stop` (an async request's) ends a wait early with `Ok(None)`, its keys
    /// deleted (`async_lock`).
    pub(crate) fn acquire_with(
        &self,
        share: Share,
        patience: Patience,
        stop: Option<&Stop>,
    ) -> Result<Option<EtcdGuard>> {
        let inner = &self.inner;
        let session = inner.session()?;
        let (slot, id) = inner.ids.take();
        let q = inner.queue_prefix();
        let qkey = match share {
            Share::Exclusive => format!("{q}w/{id}"),
            Share::Shared => format!("{q}r/{id}"),
        };
        let hkey = format!("{}h/{id}", inner.keys);
        let mut pending = Pending {
            inner,
            keys: [qkey.clone(), hkey.clone()],
            armed: true,
            slot: Some(slot),
            reusable: true,
        };
        // Who conflicts with us: every earlier key for a writer, earlier writers for a reader.
        let conflicts = match share {
            Share::Exclusive => q.clone(),
            Share::Shared => format!("{q}w/"),
        };
        let me = json!({
            "host": hostname(),
            "pid": std::process::id(),
            "share": share.to_string(),
        })
        .to_string();
        let put_q = json!({"request_put": {
            "key": b64(qkey.as_bytes()),
            "value": b64(me.as_bytes()),
            "lease": session.id.to_string(),
        }});
        let mut empty = range_prefix(&conflicts);
        empty.insert("target".into(), "CREATE".into());
        empty.insert("result".into(), "EQUAL".into());
        empty.insert("create_revision".into(), "0".into());
        // One transaction: "nothing conflicting is queued" → our key and the holder record
        // (granted); otherwise → our key (queued), or nothing for a no-wait request. Nothing
        // is read back: a key this transaction creates has the transaction's revision as its
        // create revision. Only a retried call (its first attempt may have been applied, so
        // our key may be older) reads the key back. The gateway's cost grows with the
        // request's size, so the branches carry only what they need.
        let mut success = vec![put_q.clone()];
        success.extend(grant_ops(inner, &hkey, &qkey));
        let failure = match patience {
            Patience::NoWait => vec![],
            _ => vec![put_q],
        };
        // (A write that fails may still be applied later: its name is not reused.)
        pending.reusable = false;
        let (ok, mut resp, mut rev, attempts) =
            inner
                .client
                .txn_counted("enqueue", vec![Value::Object(empty)], success, failure)?;
        pending.reusable = attempts == 1;
        if attempts > 1 {
            // Our key's own create revision, and what the grant reads, read again.
            let (_, r, _) = inner.client.txn(
                "enqueue",
                vec![],
                vec![
                    json!({"request_range": {"key": b64(qkey.as_bytes()), "keys_only": true}}),
                    holders_count(inner),
                ],
                vec![],
            )?;
            rev = own_revision(r.first());
            resp = r;
        }
        if matches!(patience, Patience::NoWait) && !ok {
            // Nothing was written, unless an earlier attempt whose answer was lost granted
            // us the lock: then `pending` releases it.
            pending.armed = rev != 0 && attempts > 1;
            return Ok(None);
        }
        if rev == 0 {
            return Err(inner.protocol("enqueue", "the new queue key was not found"));
        }
        if ok {
            pending.armed = false;
            return Ok(Some(self.granted(
                &session,
                share,
                rev,
                &resp,
                &mut pending,
            )));
        }
        let deadline = match patience {
            Patience::Until(d) => Some(d),
            _ => None,
        };
        let recheck = (inner.ttl / 3).max(Duration::from_millis(200));
        loop {
            if stop.is_some_and(Stop::stopped) {
                return Ok(None); // `pending` deletes our keys
            }
            // Our key, and the conflicting key just before it (linearizable).
            let mut pred = range_prefix(&conflicts);
            pred.insert("max_create_revision".into(), (rev - 1).to_string().into());
            pred.insert("sort_target".into(), "CREATE".into());
            pred.insert("sort_order".into(), "DESCEND".into());
            pred.insert("limit".into(), "1".into());
            pred.insert("keys_only".into(), true.into());
            let lease_expired = || Error::EtcdLeaseExpired {
                name: inner.name.clone(),
                ttl: session.ttl,
            };
            let before = if share == Share::Exclusive {
                // A writer asks in one transaction: "our key is there, and no key in the
                // queue is older" (a compare over a range holds for every key in it; ours is
                // one, so the range is never empty) → the holder record: granted. Otherwise
                // → our key (is it still there?) and the key just before it.
                let mut none_older = range_prefix(&conflicts);
                none_older.insert("target".into(), "CREATE".into());
                none_older.insert("result".into(), "GREATER".into());
                none_older.insert("create_revision".into(), (rev - 1).to_string().into());
                let was = std::mem::replace(&mut pending.reusable, false);
                let (first, resp, _, attempts) = inner.client.txn_counted(
                    "wait in the queue",
                    vec![own_compare(&qkey, rev), Value::Object(none_older)],
                    grant_ops(inner, &hkey, &qkey),
                    vec![
                        json!({"request_range": {"key": b64(qkey.as_bytes()), "keys_only": true}}),
                        json!({"request_range": pred}),
                    ],
                )?;
                pending.reusable = was && attempts == 1;
                if first {
                    if session.lost() {
                        return Err(lease_expired()); // `pending` deletes our keys
                    }
                    pending.armed = false;
                    return Ok(Some(self.granted(
                        &session,
                        share,
                        rev,
                        &resp,
                        &mut pending,
                    )));
                }
                if own_revision(resp.first()) != rev || session.lost() {
                    return Err(lease_expired());
                }
                let before = resp
                    .get(1)
                    .and_then(|r| r.get("response_range"))
                    .map(kvs)
                    .unwrap_or_default();
                match before.into_iter().next() {
                    Some(kv) => kv,
                    None => continue, // cannot be (one snapshot): ask again
                }
            } else {
                let (mine, resp, _) = inner.client.txn(
                    "wait in the queue",
                    vec![own_compare(&qkey, rev)],
                    vec![json!({"request_range": pred})],
                    vec![],
                )?;
                if !mine || session.lost() {
                    return Err(lease_expired());
                }
                let before = resp
                    .first()
                    .and_then(|r| r.get("response_range"))
                    .map(kvs)
                    .unwrap_or_default();
                let Some(before) = before.into_iter().next() else {
                    let was = std::mem::replace(&mut pending.reusable, false);
                    let (still, resp, _, attempts) = inner.client.txn_counted(
                        "take the granted lock",
                        vec![own_compare(&qkey, rev)],
                        grant_ops(inner, &hkey, &qkey),
                        vec![],
                    )?;
                    pending.reusable = was && attempts == 1;
                    if !still {
                        return Err(lease_expired());
                    }
                    pending.armed = false;
                    return Ok(Some(self.granted(
                        &session,
                        share,
                        rev,
                        &resp,
                        &mut pending,
                    )));
                };
                before
            };
            // Wait for that key to go (or a recheck, or the deadline).
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None); // `pending` deletes our keys
            }
            let until = deadline.map_or(now + recheck, |d| d.min(now + recheck));
            if let Ok(mut w) = inner.client.watch(&before.key, until) {
                let Some(_watching) = Stop::watching(stop, &w) else {
                    return Ok(None); // stopped: `pending` deletes our keys
                };
                // Made after our read: is the key still there (a deletion from now on is
                // reported by the watch)?
                // (The same key: names are reused, so a key of that name created since is
                // another request, behind us.)
                let still = inner.client.call(
                    "wait in the queue",
                    "/v3/kv/range",
                    &json!({"key": b64(before.key.as_bytes()), "keys_only": true}),
                )?;
                if kvs(&still).first().map(|kv| kv.create_revision) != Some(before.create_revision)
                {
                    continue;
                }
                while let Ok(Some(msg)) = w.next(until) {
                    let v: Value = serde_json::from_slice(&msg).unwrap_or(Value::Null);
                    let res = v.get("result").unwrap_or(&Value::Null);
                    let gone = match res.get("events") {
                        Some(Value::Array(evs)) => evs
                            .iter()
                            .any(|e| e.get("type").and_then(Value::as_str) == Some("DELETE")),
                        _ => false,
                    };
                    let canceled = res.get("canceled").and_then(Value::as_bool) == Some(true);
                    if gone || canceled || v.get("error").is_some() {
                        break;
                    }
                }
            } else {
                // No member accepts a watch now: poll again shortly (bounded by the deadline).
                let left = until.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(Duration::from_millis(50)));
            }
        }
    }

    fn granted(
        &self,
        session: &Arc<Session>,
        share: Share,
        rev: i64,
        resp: &[Value],
        pending: &mut Pending<'_>,
    ) -> EtcdGuard {
        let [qkey, hkey] = pending.keys.clone();
        // resp: [..., the count of the holder records, ours included]. Other holder records
        // are rare (shared holders, or a holder that died); only then are the records and the
        // queue read together: a record whose queue key is gone in the same snapshot is a
        // holder that died holding (a release deletes both at once).
        let hprefix = format!("{}h/", self.inner.keys);
        let others = resp
            .iter()
            .filter_map(|r| r.get("response_range"))
            .any(|r| int(r.get("count")) > 1);
        let mut dead = Vec::new();
        if others {
            let mut q = range_prefix(&self.inner.queue_prefix());
            q.insert("keys_only".into(), true.into());
            match self.inner.client.txn(
                "read the holder records",
                vec![],
                vec![
                    json!({"request_range": range_prefix(&hprefix)}),
                    json!({"request_range": q}),
                ],
                vec![],
            ) {
                Ok((_, r, _)) => {
                    let part = |i: usize| {
                        r.get(i)
                            .and_then(|r| r.get("response_range"))
                            .map(kvs)
                            .unwrap_or_default()
                    };
                    let queue: Vec<String> = part(1).into_iter().map(|kv| kv.key).collect();
                    for h in part(0) {
                        if h.key == hkey {
                            continue;
                        }
                        let v: Value = serde_json::from_slice(&h.value).unwrap_or(Value::Null);
                        let q = v.get("q").and_then(Value::as_str).unwrap_or("");
                        if !queue.iter().any(|k| k == q) {
                            dead.push(h.key);
                        }
                    }
                }
                // Unknown: say it may have died (the state it protected needs a check).
                Err(_) => dead.push(String::new()),
            }
        }
        let died = !dead.is_empty();
        dead.retain(|k| !k.is_empty());
        if !dead.is_empty() {
            let refs: Vec<&str> = dead.iter().map(String::as_str).collect();
            self.inner.delete_keys(&refs);
        }
        let held = Arc::new(Held {
            qkey: qkey.clone(),
            lost: AtomicBool::new(false),
        });
        session.register(&held);
        EtcdGuard {
            inner: self.inner.clone(),
            session: session.clone(),
            held,
            share,
            hkey,
            token: rev as u64,
            died,
            released: false,
            pid: std::process::id(),
            slot: pending.slot.take().filter(|_| pending.reusable),
        }
    }
}

/// Deletes a request's keys unless it was granted (also on panic and on early return).
struct Pending<'a> {
    inner: &'a Inner,
    keys: [String; 2],
    armed: bool,
    /// The request's name slot, until a guard takes it.
    slot: Option<u64>,
    /// Every write so far was answered at its first attempt.
    reusable: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let deleted = if self.armed {
            self.inner.delete_keys(&[&self.keys[0], &self.keys[1]])
        } else {
            true // nothing was written, or a guard has the keys (and the slot)
        };
        if let Some(slot) = self.slot.take()
            && deleted
            && self.reusable
            && !std::thread::panicking()
        {
            self.inner.ids.give(slot);
        }
    }
}

/// The operations that take a granted lock: the holder record (no lease: it outlives a
/// holder that dies), then the number of holder records, to tell whether a previous holder
/// died (more than ours: [`granted`](EtcdLockTicket::granted) looks closer).
fn grant_ops(inner: &Inner, hkey: &str, qkey: &str) -> Vec<Value> {
    let hv = json!({"q": qkey}).to_string();
    vec![
        json!({"request_put": {"key": b64(hkey.as_bytes()), "value": b64(hv.as_bytes())}}),
        holders_count(inner),
    ]
}

/// "How many holder records are there" (a count only: the answer stays small).
fn holders_count(inner: &Inner) -> Value {
    let mut r = range_prefix(&format!("{}h/", inner.keys));
    r.insert("count_only".into(), true.into());
    json!({ "request_range": r })
}

/// "Our queue key still exists, created at `rev`."
fn own_compare(qkey: &str, rev: i64) -> Value {
    json!({"key": b64(qkey.as_bytes()), "target": "CREATE", "result": "EQUAL",
           "create_revision": rev.to_string()})
}

fn own_revision(r: Option<&Value>) -> i64 {
    r.and_then(|r| r.get("response_range"))
        .and_then(|r| kvs(r).into_iter().next())
        .map_or(0, |kv| kv.create_revision)
}

impl Inner {
    fn protocol(&self, op: &'static str, detail: &str) -> Error {
        Error::EtcdProtocol {
            name: self.name.clone(),
            endpoint: self.client.endpoints_text(),
            op,
            detail: detail.to_string(),
        }
    }
}

/// This host's name (read once per process).
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// 16 hex digits, unique to this request: a per-process seed from the kernel's random source
/// (time and PID if it cannot be read), mixed with the PID (a forked child gets other ids)
/// and a counter (splitmix64) — no file opened per request.
fn random_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::io::Read;
        let mut b = [0u8; 8];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if ok {
            u64::from_ne_bytes(b)
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
        }
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z =
        seed ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("{z:016x}")
}

/// A token request on etcd: mode, then how long it may wait. Made by
/// [`EtcdLockTicket::request`]; the same shape as [`TokenRequest`](crate::TokenRequest).
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
/// let t = lt.request().exclusive().deadline(Instant::now() + Duration::from_secs(2)).lock()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use = "a request does nothing until `lock` is called"]
pub struct EtcdRequest<'a> {
    lt: &'a EtcdLockTicket,
    share: Share,
    patience: Patience,
}

impl<'a> EtcdRequest<'a> {
    /// Ask for a shared (reader) token.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let r = lt.request().shared().lock()?;
    /// # Ok(()) }
    /// ```
    pub fn shared(mut self) -> Self {
        self.share = Share::Shared;
        self
    }

    /// Ask for the exclusive token (the default).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let w = lt.request().exclusive().lock()?;
    /// # Ok(()) }
    /// ```
    pub fn exclusive(mut self) -> Self {
        self.share = Share::Exclusive;
        self
    }

    /// Ask for `share`.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let t = lt.request().mode(lockticket::Share::Shared).lock()?;
    /// # Ok(()) }
    /// ```
    pub fn mode(mut self, share: Share) -> Self {
        self.share = share;
        self
    }

    /// Do not wait: `None` unless the token is free now.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let t = lt.request().no_wait().lock()?;
    /// # Ok(()) }
    /// ```
    pub fn no_wait(mut self) -> Self {
        self.patience = Patience::NoWait;
        self
    }

    /// Wait at most `timeout`.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let t = lt.request().timeout(std::time::Duration::from_secs(1)).lock()?;
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.patience = match Instant::now().checked_add(timeout) {
            Some(d) => Patience::Until(d),
            None => Patience::Forever,
        };
        self
    }

    /// Wait until `deadline`.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let soon = std::time::Instant::now() + std::time::Duration::from_secs(1);
    /// let t = lt.request().deadline(soon).lock()?;
    /// # Ok(()) }
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.patience = Patience::Until(deadline);
        self
    }

    /// Wait as decided by `patience` (as [`TokenRequest::patience`](crate::TokenRequest::patience)).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let t = lt.request().patience(lockticket::Patience::NoWait).lock()?;
    /// # Ok(()) }
    /// ```
    pub fn patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Wait as long as it takes (the default).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let t = lt.request().forever().lock()?;
    /// # Ok(()) }
    /// ```
    pub fn forever(mut self) -> Self {
        self.patience = Patience::Forever;
        self
    }

    /// Sends the request: the guard, or `None` if it was not granted in time (no key is
    /// left behind then).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// if let Some(token) = lt.request().no_wait().lock()? { /* ... */ }
    /// # Ok(()) }
    /// ```
    pub fn lock(self) -> Result<Option<EtcdGuard>> {
        self.lt.acquire(self.share, self.patience)
    }
}

/// A token held on etcd; released on drop (or by [`unlock`](EtcdGuard::unlock)). Owns what it
/// needs (no lifetime), so it can move between threads. A copy inherited by a forked child
/// releases nothing (the token stays its parent's, as long as the parent keeps its lease
/// alive: the keep-alive thread does not exist in the child).
///
/// ```no_run
/// use lockticket::Guard;
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
/// let token = lt.token_lock()?;
/// println!("token #{} (previous holder died: {})", token.fencing_token(),
///     token.previous_holder_died());
/// token.unlock()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the token is released when the guard is dropped"]
pub struct EtcdGuard {
    inner: Arc<Inner>,
    session: Arc<Session>,
    held: Arc<Held>,
    share: Share,
    hkey: String,
    token: u64,
    died: bool,
    released: bool,
    /// The process that took it: a copy in a forked child releases nothing.
    pid: u32,
    /// The handle's name slot, given back once the keys are deleted (`None`: not reusable).
    slot: Option<u64>,
}

impl EtcdGuard {
    /// True once this guard can no longer prove it holds the token: its lease could have
    /// expired (no keep-alive succeeded for the TTL), or its key was found deleted. Never
    /// later than the lease could have expired on the server; it may be true while etcd still
    /// holds the key (then a fenced write would still succeed, but nothing else is promised).
    /// Stays true.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// for step in 0..10 {
    ///     if token.lost() { break } // stop: another process may hold it
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> bool {
        if self.held.lost.load(Ordering::Acquire) || self.session.lost() {
            self.held.lost.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Waits until the guard is [lost](EtcdGuard::lost) (returns at once if it is).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| { token.wait_lost(); eprintln!("lost the lock: stopping"); });
    /// # std::process::exit(0);
    /// });
    /// # Ok(()) }
    /// ```
    pub fn wait_lost(&self) {
        self.session.wait_lost(&self.held, None);
    }

    /// Waits until the guard is lost or `timeout` passes; true if lost.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// if token.wait_lost_timeout(std::time::Duration::from_secs(1)) { /* lost */ }
    /// # Ok(()) }
    /// ```
    pub fn wait_lost_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        self.session.wait_lost(&self.held, until)
    }

    /// The fencing token: this key's create revision, larger for every later grant on the
    /// cluster (also [`Guard::fencing_token`]).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// println!("LOCKTICKET_FENCING_TOKEN={}", token.fencing_token());
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// True when a previous holder's lease ended while it held the lock, instead of a
    /// release (also [`Guard::previous_holder_died`]).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// if lt.token_lock()?.previous_holder_died() { /* check what it left */ }
    /// # Ok(()) }
    /// ```
    pub fn previous_holder_died(&self) -> bool {
        self.died
    }

    /// Exclusive or shared (also [`Guard::share`]).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// assert_eq!(lt.token_lock_shared()?.share(), lockticket::Share::Shared);
    /// # Ok(()) }
    /// ```
    pub fn share(&self) -> Share {
        self.share
    }

    /// A handle on this guard's loss that another thread can keep (`'static`, cheap to
    /// clone) without borrowing the guard: to stop work from a watcher thread when the lock
    /// is lost.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// let loss = token.loss();
    /// std::thread::spawn(move || { loss.wait(); eprintln!("lost the lock"); std::process::exit(75) });
    /// # Ok(()) }
    /// ```
    pub fn loss(&self) -> EtcdLoss {
        EtcdLoss {
            session: self.session.clone(),
            held: self.held.clone(),
        }
    }

    /// The guard's queue key on etcd.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// assert!(token.key().starts_with("lockticket/jobs/q/w/"));
    /// # Ok(()) }
    /// ```
    pub fn key(&self) -> &str {
        &self.held.qkey
    }

    fn lost_error(&self, why: &'static str) -> Error {
        Error::EtcdLost {
            name: self.inner.name.clone(),
            token: self.token,
            why,
        }
    }

    /// Writes `key` = `value` on etcd only if this guard still holds the token, in one
    /// transaction (conditioned on the guard's key existing with its create revision). An
    /// overtaken holder (paused past its TTL, cut off) gets [`Error::EtcdLost`] and writes
    /// nothing.
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// token.put_fenced("myapp/last-run", b"2026-12-05")?;
    /// # Ok(()) }
    /// ```
    pub fn put_fenced(&self, key: &str, value: &[u8]) -> Result<()> {
        self.fenced(json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(value)}}))
    }

    /// Deletes `key` on etcd only if this guard still holds the token (as
    /// [`put_fenced`](EtcdGuard::put_fenced)).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// token.delete_fenced("myapp/last-run")?;
    /// # Ok(()) }
    /// ```
    pub fn delete_fenced(&self, key: &str) -> Result<()> {
        self.fenced(json!({"request_delete_range": {"key": b64(key.as_bytes())}}))
    }

    fn fenced(&self, op: Value) -> Result<()> {
        if self.lost() {
            return Err(self.lost_error("its lease could have expired"));
        }
        let (ok, _, _) = self.inner.client.txn(
            "fenced write",
            vec![own_compare(&self.held.qkey, self.token as i64)],
            vec![op],
            vec![],
        )?;
        if !ok {
            self.held.lost.store(true, Ordering::Release);
            return Err(self.lost_error("its key is gone from etcd"));
        }
        Ok(())
    }

    /// Replaces the payload (fenced: only while this guard holds the token).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// token.set_payload(b"/var/tmp/job-17.json")?;
    /// # Ok(()) }
    /// ```
    pub fn set_payload(&self, value: &[u8]) -> Result<()> {
        self.put_fenced(&self.inner.payload_key(), value)
    }

    /// Removes the payload (fenced).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// token.clear_payload()?;
    /// # Ok(()) }
    /// ```
    pub fn clear_payload(&self) -> Result<()> {
        self.delete_fenced(&self.inner.payload_key())
    }

    /// Releases the token. An error says the lock had been lost meanwhile
    /// ([`Error::EtcdLost`]) or the release could not reach etcd (then the keep-alive
    /// thread keeps trying, and the lease ends it at the latest).
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// lt.token_lock()?.unlock()?;
    /// # Ok(()) }
    /// ```
    pub fn unlock(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.released || self.pid != std::process::id() {
            return Ok(()); // released already, or a forked child's copy: not ours to release
        }
        self.released = true;
        let was_lost = self.lost();
        let (q, h) = (self.held.qkey.clone(), self.hkey.clone());
        let del = |k: &str| json!({"request_delete_range": {"key": b64(k.as_bytes())}});
        // Both keys go in one transaction, without a compare: whether our queue key was still
        // there is the first deletion's count (the key's name is this request's alone, and
        // nothing creates it again once granted, so "there" means "created at our token").
        let deleted = |r: &[Value]| {
            int(r
                .first()
                .and_then(|r| r.get("response_delete_range"))
                .and_then(|r| r.get("deleted")))
        };
        let result =
            self.inner
                .client
                .txn_counted("release", vec![], vec![del(&q), del(&h)], vec![]);
        if let (Ok((_, _, _, 1)), Some(slot)) = (&result, self.slot.take()) {
            // Both keys are gone, and no other attempt can delete a later request's.
            self.inner.ids.give(slot);
        }
        match result {
            Ok((_, r, _, _)) if deleted(&r) > 0 && !was_lost => Ok(()),
            Ok((_, r, _, _)) if deleted(&r) > 0 => {
                Err(self.lost_error("its lease could have expired"))
            }
            // Retried: the first attempt may have released it (its answer was lost).
            Ok((_, _, _, attempts)) if attempts > 1 && !was_lost => Ok(()),
            Ok(_) => Err(self.lost_error("its key was gone at release")),
            Err(e) => {
                self.inner.orphans.lock().unwrap().extend([q, h]);
                Err(e)
            }
        }
    }
}

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

impl Guard for EtcdGuard {
    fn share(&self) -> Share {
        self.share
    }
    fn previous_holder_died(&self) -> bool {
        self.died
    }
    fn fencing_token(&self) -> u64 {
        self.token
    }
    fn lost(&self) -> bool {
        EtcdGuard::lost(self)
    }
}

/// The loss of one [`EtcdGuard`], watched from anywhere: [`EtcdGuard::loss`].
///
/// ```no_run
/// # fn main() -> lockticket::Result<()> {
/// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
/// let token = lt.token_lock()?;
/// let loss = token.loss();
/// assert!(!loss.lost());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdLoss {
    session: Arc<Session>,
    held: Arc<Held>,
}

impl EtcdLoss {
    /// As [`EtcdGuard::lost`].
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let loss = lt.token_lock()?.loss();
    /// // the guard was dropped (released): its loss is no longer watched, but the lease's is
    /// let _ = loss.lost();
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> bool {
        self.held.lost.load(Ordering::Acquire) || self.session.lost()
    }

    /// As [`EtcdGuard::wait_lost`].
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// let loss = token.loss();
    /// std::thread::spawn(move || loss.wait());
    /// # Ok(()) }
    /// ```
    pub fn wait(&self) {
        self.session.wait_lost(&self.held, None);
    }

    /// As [`EtcdGuard::wait_lost_timeout`].
    ///
    /// ```no_run
    /// # fn main() -> lockticket::Result<()> {
    /// # let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = lt.token_lock()?;
    /// assert!(!token.loss().wait_timeout(std::time::Duration::from_millis(10)));
    /// # Ok(()) }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        self.session.wait_lost(&self.held, until)
    }
}

/// The queue of a lock on etcd: [`EtcdLockTicket::status`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdStatus {
    /// The lock's name.
    pub name: String,
    /// The etcd revision the queue was read at.
    pub revision: i64,
    /// Holders first, then waiters, in FIFO order.
    pub queue: Vec<EtcdQueueEntry>,
    /// Bytes of payload.
    pub payload_len: usize,
}

/// One request in an [`EtcdStatus`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdQueueEntry {
    /// Its key on etcd.
    pub key: String,
    /// Exclusive or shared.
    pub share: Share,
    /// True if it holds the token, false if it waits.
    pub holding: bool,
    /// The requester's host name.
    pub host: String,
    /// The requester's PID (on its host).
    pub pid: u32,
    /// Its lease ID.
    pub lease: i64,
    /// Time left on its lease (`None` if it could not be read).
    pub lease_ttl: Option<Duration>,
    /// Its fencing token (the key's create revision).
    pub fencing_token: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<EtcdLockTicket>();
        send_sync::<EtcdGuard>();
    }

    #[test]
    fn options_are_checked() {
        let b = || EtcdLockTicket::builder("n").endpoints(["http://127.0.0.1:1"]);
        assert!(b().open().is_ok());
        assert!(b().ttl(Duration::from_millis(10)).open().is_err());
        assert!(
            EtcdLockTicket::builder("bad/name")
                .endpoints(["x"])
                .open()
                .is_err()
        );
        let e = EtcdLockTicket::builder("n").open().unwrap_err().to_string();
        assert!(e.contains("LOCKTICKET_ETCD"), "{e}");
        let e = EtcdLockTicket::builder("n")
            .endpoints(["https://x"])
            .open()
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS"), "{e}");
    }

    #[test]
    fn unreachable_cluster_fails_within_the_call_deadline() {
        // Port 1 on loopback: refused at once; the call retries until its deadline.
        let lt = EtcdLockTicket::builder("n")
            .endpoints(["http://127.0.0.1:1"])
            .call_timeout(Duration::from_millis(100))
            .open()
            .unwrap();
        let t0 = Instant::now();
        let e = lt.try_token_lock().unwrap_err();
        // Ends (never a hang); how soon after the call deadline is a bench figure.
        assert!(t0.elapsed() < Duration::from_secs(60));
        assert!(matches!(e, Error::EtcdUnavailable { .. }), "{e}");
    }
}
