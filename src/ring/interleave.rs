//! Runs the real ring code one shared-memory access at a time.
//!
//! Every multi-write operation of the ring (claim, publish, release, head advance, reclaim)
//! is marked with `step!()` between its accesses to shared words: "a process may be
//! preempted, stopped or killed here". In production builds the marks compile to nothing. In
//! tests and fuzzing builds each simulated process runs on a thread of its own, and a mark
//! ([`point`]) hands control back to a scheduler ([`Procs`]) that decides who takes the next
//! step. A test can so stop a process at any mark for any number of other processes' steps
//! (a stall of any length), or never let it run again (a kill at that instruction), and check
//! the invariants after every single step. Only one process thread runs at any time, so a
//! run is deterministic.
//!
//! A killed process stays frozen at its mark until the [`Procs`] is dropped; then it runs to
//! the end of its operation without stopping (a "ghost": nothing looks at the ring any more),
//! so that its thread can be joined while the ring's memory still exists.

use std::any::Any;
use std::cell::RefCell;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// What the scheduler tells a process thread.
enum Cmd {
    /// Start an operation.
    Run(Job),
    /// Go on to the next mark.
    Continue,
    /// Run to the end without stopping at marks (teardown).
    Ghost,
}

/// What a process thread tells the scheduler.
enum Event {
    /// Stopped at a mark.
    Paused,
    /// The operation returned this.
    Done(Box<dyn Any + Send>),
}

struct Ctl {
    go: Receiver<Cmd>,
    events: Sender<Event>,
    ghost: bool,
}

thread_local! {
    static CTL: RefCell<Option<Ctl>> = const { RefCell::new(None) };
}

/// A place where the calling process may be stopped or killed. Returns at once unless the
/// thread is a process of a [`Procs`] scheduler.
#[inline]
pub(crate) fn point() {
    CTL.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctl) = c.as_mut() else { return };
        if ctl.ghost || ctl.events.send(Event::Paused).is_err() {
            ctl.ghost = true;
            return;
        }
        match ctl.go.recv() {
            Ok(Cmd::Continue) => {}
            Ok(Cmd::Ghost) | Err(_) => ctl.ghost = true,
            Ok(Cmd::Run(_)) => panic!("interleave: an operation started on a busy process"),
        }
    })
}

/// Where a process stands after a scheduling step.
#[derive(Debug)]
pub(crate) enum Status<O> {
    /// Stopped at a mark, in the middle of its operation.
    Paused,
    /// Its operation returned this.
    Done(O),
}

/// One simulated process: a thread that runs operations when told to.
struct Proc {
    tx: Option<Sender<Cmd>>,
    rx: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    /// An operation is in flight (stopped at a mark).
    busy: bool,
    /// Killed: never scheduled again.
    frozen: bool,
}

/// A scheduler of simulated processes whose operations return `O`.
pub(crate) struct Procs<O> {
    procs: Vec<Proc>,
    _out: std::marker::PhantomData<fn() -> O>,
}

impl<O> Default for Procs<O> {
    fn default() -> Self {
        Procs {
            procs: Vec::new(),
            _out: std::marker::PhantomData,
        }
    }
}

impl<O: Send + 'static> Procs<O> {
    /// Starts a new, idle process thread. Returns its index.
    pub(crate) fn spawn(&mut self) -> usize {
        let (tx, go) = channel::<Cmd>();
        let (events, rx) = channel::<Event>();
        let thread = std::thread::spawn(move || {
            let done = events.clone();
            CTL.with(|c| {
                *c.borrow_mut() = Some(Ctl {
                    go,
                    events,
                    ghost: false,
                })
            });
            loop {
                let cmd = CTL.with(|c| c.borrow().as_ref().map(|ctl| ctl.go.recv()));
                match cmd {
                    Some(Ok(Cmd::Run(job))) => {
                        let out = job();
                        if done.send(Event::Done(out)).is_err() {
                            break;
                        }
                    }
                    Some(Ok(Cmd::Continue | Cmd::Ghost)) => {}
                    Some(Err(_)) | None => break, // the scheduler hung up
                }
            }
        });
        self.procs.push(Proc {
            tx: Some(tx),
            rx,
            thread: Some(thread),
            busy: false,
            frozen: false,
        });
        self.procs.len() - 1
    }

    /// Starts `op` on idle process `i` and runs it to its first mark (or its end).
    pub(crate) fn start(&mut self, i: usize, op: impl FnOnce() -> O + Send + 'static) -> Status<O> {
        let p = &mut self.procs[i];
        assert!(!p.busy && !p.frozen, "interleave: process {i} cannot start");
        p.busy = true;
        let job: Job = Box::new(move || Box::new(op()));
        self.send(i, Cmd::Run(job));
        self.wait(i)
    }

    /// Lets busy process `i` run to its next mark (or its end).
    pub(crate) fn step(&mut self, i: usize) -> Status<O> {
        let p = &self.procs[i];
        assert!(p.busy && !p.frozen, "interleave: process {i} cannot step");
        self.send(i, Cmd::Continue);
        self.wait(i)
    }

    /// Lets busy process `i` run to the end of its operation.
    #[cfg(test)]
    pub(crate) fn finish(&mut self, i: usize) -> O {
        loop {
            if let Status::Done(o) = self.step(i) {
                return o;
            }
        }
    }

    /// Kills process `i`: it never takes another step (its thread is only let go on drop).
    pub(crate) fn kill(&mut self, i: usize) {
        self.procs[i].frozen = true;
    }

    fn send(&mut self, i: usize, cmd: Cmd) {
        if let Some(tx) = &self.procs[i].tx {
            tx.send(cmd).expect("interleave: a process thread ended");
        }
    }

    fn wait(&mut self, i: usize) -> Status<O> {
        match self.procs[i].rx.recv() {
            Ok(Event::Paused) => Status::Paused,
            Ok(Event::Done(out)) => {
                self.procs[i].busy = false;
                match out.downcast::<O>() {
                    Ok(o) => Status::Done(*o),
                    Err(_) => unreachable!("interleave: every job returns O"),
                }
            }
            // The thread panicked: an assertion inside the ring failed. Surface it here.
            Err(_) => match self.procs[i].thread.take().map(JoinHandle::join) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                _ => panic!("interleave: process {i} vanished"),
            },
        }
    }
}

impl<O> Drop for Procs<O> {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(tx) = p.tx.take() {
                if p.busy {
                    // Frozen (killed) or stopped mid-operation: run to the end unobserved.
                    let _ = tx.send(Cmd::Ghost);
                    while let Ok(Event::Paused) = p.rx.recv() {}
                }
                drop(tx); // the thread's loop ends when its command channel closes
            }
        }
        for p in &mut self.procs {
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
    }
}
