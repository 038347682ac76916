//! This process's registration in a table: taking it, adopting a parent's, and the exec
//! guardian that keeps it across `exec`.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::*;

use crate::error::{Error, Result};
use crate::liveness::Registration;
use crate::procs;
use crate::sys;

use super::{Cold, Region, io_err};

impl Region {
    /// This process's registration in the table, if it has one (no system call).
    #[inline]
    pub(crate) fn registration(&self, pid: u32) -> Option<Registration> {
        if self.reg_pid.load(Acquire) != pid {
            return None;
        }
        Some(Registration::of_word(self.reg_id.load(Relaxed)))
    }

    /// This process's registration, registering now if it has none (cold: takes the flock).
    #[cold]
    pub(crate) fn register(&self) -> Result<Registration> {
        let (pid, _) = sys::current_identity();
        match self.registration(pid) {
            Some(r) => Ok(r),
            None => self.cold()?.registration(),
        }
    }

    /// Takes over `from`'s registration when this region (the same file, mapped earlier by the
    /// same handle) has none for this process: `from` is about to be dropped, and with it the
    /// descriptor whose lock vouches for the registration.
    pub(crate) fn adopt_registration(&self, from: &Region) {
        let (pid, _) = sys::current_identity();
        if !self.same_file(from) || self.registration(pid).is_some() {
            return;
        }
        let Some(reg) = from.registration(pid) else {
            return;
        };
        let lock = from
            .reg_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut mine = self.reg_lock.lock().unwrap_or_else(|p| p.into_inner());
        *mine = lock;
        self.reg_id.store(reg.word(), Relaxed);
        self.reg_pid.store(pid, Release);
    }

    /// Forks the exec guardian of our registration (see `sys::fork_guardian`), registering
    /// first if needed: the registration then lives exactly as long as the calling thread, and
    /// so as long as the program it is about to `exec`. The caller checked that the process
    /// has one thread. `None` when no descriptor vouches for the registration.
    pub(crate) fn fork_exec_guardian(&self) -> Result<Option<u32>> {
        self.register()?;
        let lock = self.reg_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reg) = lock.as_ref() else {
            return Ok(None);
        };
        // A keyed table's kernel locks on the lock file held by this process's guards go with
        // the registration (`super::kernel_locks`): the guardian keeps them too, so that neither
        // the program nor its children hold them, and they end with the program.
        let pid = sys::current_identity().0;
        let kernel = self.kernel_locks.lock().unwrap_or_else(|p| p.into_inner());
        let mut keep = vec![reg.as_fd()];
        keep.extend(super::kernel_locks::descriptions_of(&kernel, pid));
        sys::fork_guardian(&keep)
            .map(Some)
            .map_err(io_err(&self.path, crate::error::IoOp::ForkExecGuardian))
    }
}

impl Cold<'_> {
    /// This process's registration, taken now if it has none (or only its parent's).
    pub(crate) fn registration(&self) -> Result<Registration> {
        let r = self.region;
        let (pid, start) = sys::current_identity();
        if let Some(reg) = r.registration(pid) {
            return Ok(reg);
        }
        let Some(cold) = self.guard.as_ref() else {
            return Err(Error::Removed {
                path: r.path.clone(),
            });
        };
        // Tracked at once, so that a child forked from here on does not keep it.
        let lock = sys::ForkLocal::new(
            sys::reopen(&cold.file, &r.path)
                .map_err(io_err(&r.path, crate::error::IoOp::ReopenForRegistration))?,
        );
        let reg = procs::register(
            r.procs(),
            r.geometry.procs_offset(),
            &lock,
            r.anchor.get(),
            pid,
            start,
            sys::now_ns(),
            |i| r.ring().fingerprints_naming(i),
        )
        .map_err(|e| match e {
            procs::RegisterError::Full => Error::ProcessTableFull {
                path: r.path.clone(),
                capacity: r.geometry.proc_capacity,
            },
            procs::RegisterError::Io(e) => io_err(&r.path, crate::error::IoOp::RegistrationLock)(e),
        })?;
        // A forked child drops its copy of the parent's lock description here (the parent's
        // own descriptor keeps the parent's registration).
        *r.reg_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        r.reg_id.store(reg.word(), Relaxed);
        r.reg_pid.store(pid, Release);
        Ok(reg)
    }
}
