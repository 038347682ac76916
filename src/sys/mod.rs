//! OS plumbing: process identity, /proc (and [`OsLiveness`] over it), futexes, flock, statfs,
//! pidfd, file allocation, the neutering remap.
//!
//! Every system call of the crate goes through this module, so the algorithm modules stay free
//! of OS calls and can be tested in memory. The one exception is creating the mappings, which
//! `region` does through `memmap2`. This module knows no file format.

mod clock;
mod dir;
mod file;
mod fork;
mod fs;
mod futex;
mod identity;
mod map;
mod os_liveness;
mod process;
#[cfg(test)]
mod tests;

pub(crate) use clock::*;
pub(crate) use dir::*;
pub(crate) use file::*;
pub(crate) use fork::*;
pub(crate) use fs::*;
pub(crate) use futex::*;
pub(crate) use identity::*;
pub(crate) use map::*;
pub(crate) use os_liveness::pid_alive;
pub(crate) use process::*;
