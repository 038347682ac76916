//! Helper processes: the bench binary re-executed in a worker role (selected by an environment
//! variable), reporting over its stdout. Re-exec rather than `fork`: the child starts clean,
//! with no threads or locks inherited from the orchestrator.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// The variable naming a worker's role; unset in the orchestrator.
pub const ROLE_VAR: &str = "LOCKTICKET_BENCH_ROLE";
/// Prefix of report lines on a worker's stdout.
const PREFIX: &str = "@@ ";

/// The role this process was started in, if it is a worker.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A worker's parameter (an environment variable set by the orchestrator).
pub fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker parameter {name} missing"))
}

/// Reports a line to the orchestrator.
pub fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{}", msg.as_ref()).unwrap();
    out.flush().unwrap();
}

/// A worker process; killed (SIGKILL) and reaped on drop if still running.
pub struct Worker {
    child: Child,
    lines: Receiver<String>,
    reaped: bool,
}

impl Worker {
    /// Starts this executable again in `role`, with the parameters `vars`.
    pub fn spawn(role: &str, vars: &[(&str, String)]) -> Worker {
        Worker::spawn_in_group(role, vars, None)
    }

    /// Like [`spawn`](Self::spawn), in process group `group` (0: a new group led by the
    /// worker), so that a group can be SIGKILLed at once (a kill storm).
    pub fn spawn_in_group(role: &str, vars: &[(&str, String)], group: Option<i32>) -> Worker {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        if let Some(g) = group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, g);
        }
        cmd.env(ROLE_VAR, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn worker");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = line.strip_prefix(PREFIX)
                    && tx.send(msg.to_string()).is_err()
                {
                    break;
                }
            }
        });
        Worker {
            child,
            lines: rx,
            reaped: false,
        }
    }

    /// The worker's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next report line; panics after `bound`.
    pub fn hear(&mut self, bound: Duration) -> String {
        match self.lines.recv_timeout(bound) {
            Ok(line) => line,
            Err(e) => panic!("worker {} said nothing within {bound:?}: {e}", self.pid()),
        }
    }

    /// Sends SIGKILL and reaps the worker.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits for the worker to exit; panics if it failed.
    pub fn join(&mut self) {
        let status = self.child.wait().unwrap();
        self.reaped = true;
        assert!(
            status.success(),
            "worker {} failed: {status}",
            self.child.id()
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
        }
    }
}
