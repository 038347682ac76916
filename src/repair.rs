//! Never a permanent outage: rebuilding a ring that was found inconsistent.
//!
//! The ring's algorithm never produces an impossible state (the interleaving model checks
//! every step), but bytes written by a buggy or hostile process, or a bug, could. Without a
//! way back, every user would then fail until someone removed the file. So a token call that
//! finds the ring inconsistent takes the cold lock, looks again, and when no live process is
//! named in any slot resets the ring and goes on (the repair is counted in
//! [`Status::repairs`](crate::Status::repairs)). When live processes have requests in it, an
//! automatic rebuild is not safe — a live holder whose claim was overwritten cannot be told
//! from a waiter — and the call fails with [`Error::Inconsistent`]; [`LockTicket::repair`]
//! (`lockticket repair NAME`) then rebuilds the ring around the live requests, in their
//! order, once none of them holds the token.

use crate::error::{Error, Result};
use crate::handle::LockTicket;
use crate::region::{Region, Repair, Repaired};

impl LockTicket {
    /// Rebuilds the table's token queue if it is inconsistent, keeping the requests of live
    /// processes in their order (what `lockticket repair NAME` does). `Ok(None)` when there
    /// was nothing to repair. Refuses with [`Error::RepairRefused`] while a live process is
    /// marked holding the token.
    ///
    /// Token calls repair a broken queue themselves when no live process has a request in
    /// it; this is for the case where some do (they got [`Error::Inconsistent`]).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-repair-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// assert_eq!(lt.repair()?, None); // a healthy table
    /// # Ok(()) }
    /// ```
    pub fn repair(&self) -> Result<Option<Repaired>> {
        let region = self.table()?;
        let cold = region.cold()?;
        match cold.repair_ring(true) {
            Repair::NotNeeded => Ok(None),
            Repair::Repaired(r) => Ok(Some(r)),
            Repair::Refused {
                problem, holders, ..
            } => Err(Error::RepairRefused {
                path: region.path().to_path_buf(),
                detail: problem,
                holders,
            }),
        }
    }

    /// After a token call found the ring broken: repairs it when that is safe. `Ok(true)`:
    /// repaired, try again; `Ok(false)`: the ring is consistent (the error was about our own
    /// request), report the original error.
    #[cold]
    pub(crate) fn recover(&self, region: &Region) -> Result<bool> {
        let cold = region.cold()?;
        match cold.repair_ring(false) {
            Repair::NotNeeded => Ok(false),
            Repair::Repaired(_) => Ok(true),
            Repair::Refused { problem, live, .. } => Err(Error::Inconsistent {
                path: region.path().to_path_buf(),
                detail: problem,
                live,
            }),
        }
    }
}
