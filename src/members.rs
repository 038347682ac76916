//! The main-lock registry: which processes own a table, and in which mode.
//!
//! Entries change only under the table's `flock` (a cold path: join and leave), so the logic
//! here is sequential; the atomics let `status` read the registry without the lock. Like every
//! part of the file, entries are validated on every read: a hostile value is treated as an
//! empty entry, never trusted as an index or a PID.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::liveness::{Liveness, Owner, Registration};
use crate::share::Share;
use crate::sys::PID_MAX;

const MODE_EXCLUSIVE: u32 = 1;
const MODE_SHARED: u32 = 2;

/// One registry entry: a cache line in the mapped file.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct Member {
    /// Owner PID; 0 = empty.
    pub pid: AtomicU32,
    /// 1 = exclusive, 2 = shared.
    pub mode: AtomicU32,
    /// Owner's start time (clock ticks after boot).
    pub start: AtomicU64,
    /// When it joined, ns since the Unix epoch.
    pub joined_ns: AtomicU64,
    /// Its registration in the process table: generation << 32 | index + 1 (the liveness).
    pub reg: AtomicU64,
    _reserved: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<Member>() == crate::layout::MEMBER_SIZE as usize);

/// A registered owner, as read from the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registered {
    /// Index of the entry.
    pub index: usize,
    /// Its owner.
    pub pid: u32,
    /// Start time.
    pub start: u64,
    /// Mode.
    pub share: Share,
    /// Join time (ns since the epoch).
    pub joined_ns: u64,
    /// Its registration.
    pub owner: Owner,
}

/// Reads an entry; `None` for empty or nonsensical ones.
fn read(index: usize, m: &Member) -> Option<Registered> {
    let pid = m.pid.load(Relaxed);
    let share = match m.mode.load(Relaxed) {
        MODE_EXCLUSIVE => Share::Exclusive,
        MODE_SHARED => Share::Shared,
        _ => return None,
    };
    if pid == 0 || pid > PID_MAX {
        return None;
    }
    let reg = m.reg.load(Relaxed);
    let reg_index = (reg as u32).checked_sub(1)?;
    Some(Registered {
        owner: Owner::full(reg_index, (reg >> 32) as u32),
        index,
        pid,
        start: m.start.load(Relaxed),
        share,
        joined_ns: m.joined_ns.load(Relaxed),
    })
}

/// All entries that look valid (alive or not).
pub(crate) fn entries(members: &[Member]) -> Vec<Registered> {
    members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| read(i, m))
        .collect()
}

/// What the registry holds, split by liveness. Call under the flock.
#[derive(Debug, Default)]
pub(crate) struct Census {
    /// Live owners.
    pub live: Vec<Registered>,
    /// Entries of dead owners (or garbage) that were cleared.
    pub cleared: usize,
}

/// Clears dead and garbage entries and returns the live ones. Call under the flock.
pub(crate) fn census(members: &[Member], liveness: &impl Liveness) -> Census {
    let mut c = Census::default();
    for (i, m) in members.iter().enumerate() {
        match read(i, m) {
            Some(r) if liveness.is_alive(r.owner) => c.live.push(r),
            Some(_) => {
                clear(m);
                c.cleared += 1;
            }
            None => {
                if m.pid.load(Relaxed) != 0 || m.mode.load(Relaxed) != 0 {
                    clear(m);
                    c.cleared += 1;
                }
            }
        }
    }
    c
}

fn clear(m: &Member) {
    m.pid.store(0, Relaxed);
    m.mode.store(0, Relaxed);
    m.start.store(0, Relaxed);
    m.joined_ns.store(0, Relaxed);
    m.reg.store(0, Relaxed);
}

/// Why a join was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    /// Held by live owners in a mode that excludes us.
    Busy {
        /// Their mode.
        share: Share,
        /// Their PIDs.
        pids: Vec<u32>,
    },
    /// This process is registered already.
    AlreadyRegistered,
    /// No free entry.
    Full,
}

/// Registers registration `me` of process `(pid, start)` in `share` mode, given the live
/// owners from [`census`]. Call under the flock. Returns the entry index. A process is
/// recognised by its registration, or by PID and start time (its other handles).
pub(crate) fn join(
    members: &[Member],
    live: &[Registered],
    me: Registration,
    (pid, start): (u32, u64),
    share: Share,
    now_ns: u64,
) -> Result<usize, JoinRefused> {
    if live
        .iter()
        .any(|r| r.owner == me.owner() || (r.pid == pid && r.start == start))
    {
        return Err(JoinRefused::AlreadyRegistered);
    }
    if let Some(first) = live.first()
        && (share == Share::Exclusive || live.iter().any(|r| r.share == Share::Exclusive))
    {
        return Err(JoinRefused::Busy {
            share: first.share,
            pids: live.iter().map(|r| r.pid).collect(),
        });
    }
    let (index, m) = members
        .iter()
        .enumerate()
        .find(|(_, m)| m.pid.load(Relaxed) == 0)
        .ok_or(JoinRefused::Full)?;
    m.start.store(start, Relaxed);
    m.joined_ns.store(now_ns, Relaxed);
    m.reg.store(me.word(), Relaxed);
    m.mode.store(
        if share == Share::Shared {
            MODE_SHARED
        } else {
            MODE_EXCLUSIVE
        },
        Relaxed,
    );
    m.pid.store(pid, Relaxed);
    Ok(index)
}

/// Removes the entry `index` if it is still ours. Call under the flock. Returns false when the
/// entry no longer names us (it was cleared as dead, or overwritten).
pub(crate) fn leave(members: &[Member], index: usize, pid: u32, start: u64) -> bool {
    match members
        .get(index)
        .and_then(|m| read(index, m).map(|r| (m, r)))
    {
        Some((m, r)) if r.pid == pid && r.start == start => {
            clear(m);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Registrations with these indices are dead.
    struct Dead(HashSet<u32>);
    impl Liveness for Dead {
        fn is_alive(&self, o: Owner) -> bool {
            !self.0.contains(&o.index)
        }
    }

    /// Joins process `pid` as registration index `pid`.
    fn join(
        m: &[Member],
        live: &[Registered],
        pid: u32,
        start: u64,
        share: Share,
        now: u64,
    ) -> Result<usize, JoinRefused> {
        super::join(
            m,
            live,
            Registration {
                index: pid,
                generation: 1,
            },
            (pid, start),
            share,
            now,
        )
    }

    fn table(n: usize) -> Vec<Member> {
        (0..n).map(|_| Member::default()).collect()
    }

    #[test]
    fn shared_owners_join_and_leave() {
        let m = table(4);
        let alive = Dead(HashSet::new());
        let i1 = join(&m, &census(&m, &alive).live, 10, 1, Share::Shared, 0).unwrap();
        let i2 = join(&m, &census(&m, &alive).live, 11, 1, Share::Shared, 0).unwrap();
        assert_ne!(i1, i2);
        assert_eq!(
            join(&m, &census(&m, &alive).live, 10, 1, Share::Shared, 0),
            Err(JoinRefused::AlreadyRegistered)
        );
        assert!(matches!(
            join(&m, &census(&m, &alive).live, 12, 1, Share::Exclusive, 0),
            Err(JoinRefused::Busy {
                share: Share::Shared,
                ..
            })
        ));
        assert!(leave(&m, i1, 10, 1));
        assert!(!leave(&m, i1, 10, 1));
        assert_eq!(census(&m, &alive).live.len(), 1);
    }

    #[test]
    fn exclusive_excludes_and_dead_owners_are_cleared() {
        let m = table(2);
        let none_dead = Dead(HashSet::new());
        join(&m, &census(&m, &none_dead).live, 10, 1, Share::Exclusive, 0).unwrap();
        assert!(matches!(
            join(&m, &census(&m, &none_dead).live, 11, 1, Share::Shared, 0),
            Err(JoinRefused::Busy {
                share: Share::Exclusive,
                ..
            })
        ));
        let ten_dead = Dead([10].into());
        let c = census(&m, &ten_dead);
        assert_eq!((c.live.len(), c.cleared), (0, 1));
        join(&m, &c.live, 11, 1, Share::Shared, 0).unwrap();
        join(&m, &census(&m, &ten_dead).live, 12, 1, Share::Shared, 0).unwrap();
        assert_eq!(
            join(&m, &census(&m, &ten_dead).live, 13, 1, Share::Shared, 0),
            Err(JoinRefused::Full)
        );
    }

    #[test]
    fn garbage_entries_are_ignored_and_cleared() {
        let m = table(2);
        m[0].pid.store(u32::MAX, Relaxed);
        m[0].mode.store(1, Relaxed);
        m[1].pid.store(5, Relaxed);
        m[1].mode.store(77, Relaxed);
        m[1].reg.store(3, Relaxed);
        assert!(entries(&m).is_empty());
        let c = census(&m, &Dead(HashSet::new()));
        assert_eq!((c.live.len(), c.cleared), (0, 2));
        assert!(!leave(&m, 99, 1, 1));
    }
}
