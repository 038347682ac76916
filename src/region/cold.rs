//! The cold-path lock of a table: this process's threads (a mutex) and other processes
//! (`flock`, dropped by the kernel if we die).

use crate::error::{Error, Result};
use crate::sys;

use super::{Cold, ColdFile, Region, io_err};

impl Region {
    /// Exclusive access to the table's cold paths: serialises this process's threads (mutex)
    /// and other processes (flock, released by the kernel if we die).
    ///
    /// A forked child first opens a description of its own: the one it inherited is its
    /// parent's (or /dev/null, see `sys::ForkLocal`), and a flock on a shared description
    /// would let both run a cold path at once.
    pub(crate) fn cold(&self) -> Result<Cold<'_>> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cold) = guard.as_mut() else {
            return Err(Error::Removed {
                path: self.path.clone(),
            });
        };
        if cold.pid != sys::current_identity().0 {
            *cold = ColdFile::open(&self.probe, &self.path)?;
        }
        sys::flock_exclusive(&cold.file).map_err(io_err(&self.path, crate::error::IoOp::Flock))?;
        Ok(Cold {
            guard,
            region: self,
        })
    }
}

impl Drop for Cold<'_> {
    fn drop(&mut self) {
        if let Some(cold) = self.guard.as_ref() {
            sys::flock_unlock(&cold.file);
        }
    }
}
