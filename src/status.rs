//! A snapshot of a table: owners, holders, the queue, counters. Taken without any lock.
//!
//! [`Status`] is the one model of a table's state; `text` renders it as text (`Display`,
//! `lockticket status`), and the command's `--json` renders the same model (with its ages and
//! [`Status::in_use`]) as JSON.

mod text;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::handle::LockTicket;
use crate::liveness::Liveness;
use crate::members;
use crate::procs;
use crate::region::Region;
use crate::share::Share;

/// A registered owner of the table (main lock).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Its PID, as its own PID namespace numbers it.
    pub pid: u32,
    /// True when the owner registered from another PID namespace (or one that cannot be
    /// told): `pid` may name another process here.
    pub pid_foreign: bool,
    /// Exclusive or shared main lock.
    pub share: Share,
    /// False once the process is gone (its entry is cleared by the next main-lock call).
    pub alive: bool,
    /// When it registered.
    pub joined: Option<SystemTime>,
}

/// A token request: held or queued.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The requesting process, as its own PID namespace numbers it (0: its registration was
    /// taken over, it is gone).
    pub pid: u32,
    /// True when it registered from another PID namespace (or one that cannot be told):
    /// `pid` may name another process here.
    pub pid_foreign: bool,
    /// The process that created its handle (its parent, after a fork; itself otherwise).
    pub parent: u32,
    /// Exclusive or shared.
    pub share: Share,
    /// Its ticket number (FIFO position).
    pub ticket: u64,
    /// False when the process is dead (its slot is reclaimed by the next waiter that looks).
    pub alive: bool,
    /// Holders: when they got the token; waiters: when they entered the queue.
    pub since: Option<SystemTime>,
    /// A holder that took the token ahead of the queue (bounded tables); `ticket` is then the
    /// request it went ahead of.
    pub bypass: bool,
}

/// A snapshot of a table, from [`LockTicket::status`](crate::LockTicket::status).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The table file.
    pub path: PathBuf,
    /// Its format version.
    pub format_version: u32,
    /// Token slots.
    pub ring_capacity: u32,
    /// How the table orders requests (chosen at creation).
    pub fairness: crate::fairness::Fairness,
    /// Grants ahead of the queue since the table was created (bounded tables; 0 in strict
    /// ones).
    pub bypasses: u64,
    /// Payload capacity in bytes.
    pub payload_capacity: u64,
    /// Registered owners.
    pub members: Vec<MemberInfo>,
    /// Requests that hold the token now.
    pub holders: Vec<TokenInfo>,
    /// Requests waiting, in FIFO order.
    pub queue: Vec<TokenInfo>,
    /// Slots reclaimed from dead processes since the table was created.
    pub reclaimed_slots: u64,
    /// Times the token queue was rebuilt after it was found inconsistent (see
    /// [`LockTicket::repair`](crate::LockTicket::repair)); 0 in a healthy table.
    pub repairs: u64,
    /// The last fencing token handed out (see
    /// [`TokenGuard::fencing_token`](crate::TokenGuard::fencing_token)); 0 when none was asked
    /// for yet.
    pub last_fencing_token: u64,
    /// Length of the current payload in bytes.
    pub payload_len: u64,
    /// Generation of the current payload (0 = never set).
    pub payload_generation: u64,
    /// False when the table kept changing while it was read (the lists may then mix two
    /// moments; each entry is still one that existed).
    pub consistent: bool,
}

fn time(ns: u64) -> Option<SystemTime> {
    (ns != 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Reads a snapshot of `region`.
pub(crate) fn snapshot(region: &Region) -> Status {
    let ring = region.ring();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = ring.head_tail();
        let requests = ring.requests();
        let after = ring.head_tail();
        let consistent = before == after;
        if !consistent && attempt < 5 {
            continue;
        }
        let (mut holders, mut queue) = (Vec::new(), Vec::new());
        let liveness = region.liveness();
        for r in requests {
            let who = procs::registrant(region.procs(), r.owner);
            let info = TokenInfo {
                pid: who.map_or(0, |w| w.pid),
                pid_foreign: who.is_some_and(|w| w.foreign_pid),
                parent: r.parent,
                share: r.share,
                ticket: r.ticket,
                alive: liveness.is_alive(r.owner),
                since: time(r.since_ns),
                bypass: false,
            };
            if r.granted {
                holders.push(info)
            } else {
                queue.push(info)
            }
        }
        if let Some((owner, true)) = ring.bypasser() {
            let who = procs::registrant(region.procs(), owner);
            holders.insert(
                0,
                TokenInfo {
                    pid: who.map_or(0, |w| w.pid),
                    pid_foreign: who.is_some_and(|w| w.foreign_pid),
                    parent: 0,
                    share: Share::Exclusive,
                    ticket: ring.head(),
                    alive: liveness.is_alive(owner),
                    since: None,
                    bypass: true,
                },
            );
        }
        let members = members::entries(region.members())
            .into_iter()
            .map(|m| MemberInfo {
                pid: m.pid,
                pid_foreign: procs::registrant(region.procs(), m.owner)
                    .is_none_or(|w| w.foreign_pid),
                share: m.share,
                alive: liveness.is_alive(m.owner),
                joined: time(m.joined_ns),
            })
            .collect();
        let (payload_len, payload_generation) = region.payload().meta();
        let g = region.geometry();
        return Status {
            path: region.path().to_path_buf(),
            format_version: region.fixed().version,
            ring_capacity: g.ring_capacity,
            fairness: region.fairness(),
            bypasses: region.bypasses(),
            payload_capacity: g.payload_capacity,
            members,
            holders,
            queue,
            reclaimed_slots: region.reclaimed_slots(),
            repairs: region.repairs(),
            last_fencing_token: region.last_fence(),
            payload_len,
            payload_generation,
            consistent,
        };
    }
}

/// The text rendering ([`Status::to_text`]) with the path as it is, no command lines, and
/// the current time.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self.to_text(SystemTime::now(), &self.path.display().to_string(), |_| {
                None
            }),
        )
    }
}

impl LockTicket {
    /// A snapshot of the table: owners, holders, the queue in FIFO order, counters. Never
    /// blocks the lock. Fails with [`Error::NotCreated`](crate::Error::NotCreated) when there
    /// is no table.
    pub fn status(&self) -> Result<Status> {
        self.check_current_at_path()?;
        Ok(snapshot(self.table()?))
    }
}
