//! Holding this process's registration across `exec`: [`ExecGuardian`].

use crate::error::{Error, Result};
use crate::sys;

use super::LockTicket;

/// The guardian process of [`LockTicket::hold_across_exec`], which keeps this process's
/// registration alive across `exec`. Dropped (when `exec` failed), it kills and reaps the
/// guardian; after a successful `exec` nothing drops it, and the guardian lives exactly as
/// long as the program.
///
/// ```no_run
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::LockTicket::open("myapp")?;
/// let guardian = lt.hold_across_exec()?;
/// println!("guardian: {:?}", guardian.pid());
/// drop(guardian); // not exec'ing after all: the guardian ends
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ExecGuardian {
    pid: Option<u32>,
}

impl ExecGuardian {
    /// The guardian's PID; `None` where no guardian is needed (no OFD locks on this system:
    /// the registration is judged by PID and start time, which `exec` keeps).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl Drop for ExecGuardian {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            sys::end_child(pid);
        }
    }
}

impl LockTicket {
    /// Keeps this process's registration in the table — and so its tokens and main lock —
    /// alive across `exec`, until the program it execs exits, and no longer: for a process
    /// that holds a token and then execs the program that is to hold it (`lockticket exec
    /// -F`).
    ///
    /// It forks a *guardian*: a tiny child that keeps the descriptor whose OFD lock vouches
    /// for the registration (and nothing else: its standard streams are /dev/null), ignores
    /// the signals sent to whole process groups, and is killed by the kernel when the calling
    /// thread — after `exec`, the program — ends (`PR_SET_PDEATHSIG`). The registration's
    /// descriptor stays close-on-exec, so the program and the children it starts never hold
    /// it: the lock ends with the program, not with its last background child. The program
    /// has one more child process, which never exits before it (a program that waits for
    /// *all* its children to end would wait for it).
    ///
    /// Call it from a **single-threaded** process, right before `exec` (the death signal
    /// follows the thread that forked the guardian): with more threads it fails with
    /// [`Error::NotSingleThreaded`]. If `exec` fails, drop the returned [`ExecGuardian`]: it
    /// ends the guardian, and the registration is this process's again.
    ///
    /// ```no_run
    /// use std::os::unix::process::CommandExt;
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::LockTicket::open("myapp")?;
    /// let token = lt.token_lock()?;
    /// let guardian = lt.hold_across_exec()?;
    /// let err = std::process::Command::new("make").exec(); // returns only on failure
    /// drop(guardian);
    /// drop(token);
    /// eprintln!("cannot run make: {err}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn hold_across_exec(&self) -> Result<ExecGuardian> {
        let table = self.table()?;
        if let Some(threads) = sys::thread_count()
            && threads > 1
        {
            return Err(Error::NotSingleThreaded {
                path: self.path.clone(),
                threads,
            });
        }
        Ok(ExecGuardian {
            pid: table.fork_exec_guardian()?,
        })
    }
}
