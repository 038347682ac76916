//! Real etcd servers for the tests: members started from the `etcd` binary on PATH, on free
//! loopback ports, with their data on tmpfs and fast elections, stopped by PID on drop (also
//! when a test panics). Without an etcd binary a test prints `SKIP: ...` and passes, except
//! under `CI=true`, where that is a failure.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
pub struct Member {
    pub name: String,
    pub client: String,
    pub peer: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Member {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }
}

/// A running cluster; stopped and its data removed on drop.
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: PathBuf,
    /// The etcd binary and `--initial-cluster`, to start a member again.
    bin: PathBuf,
    initial: String,
}

/// Finds the etcd binary, or says why the test is skipped (and fails under CI).
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join("etcd");
        if p.is_file() {
            return Some(p);
        }
    }
    // Debian's package puts it in /usr/bin; also look where a root PATH may not.
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "no etcd binary on PATH under CI=true: .ci/run installs Debian's etcd-server \
             (apt-get install -y etcd-server etcd-client)"
        );
    }
    println!("SKIP: no etcd binary on PATH (apt-get install etcd-server etcd-client)");
    None
}

/// Free loopback ports (bound once and released; the race with other programs is tiny).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn tmpfs_dir(tag: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = base.join(format!(
        "lockticket-etcd-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Cluster {
    /// Starts `n` members and waits until each answers; `None` (after a SKIP line) without
    /// an etcd binary.
    pub fn start(tag: &str, n: usize) -> Option<Cluster> {
        let bin = etcd_binary()?;
        for attempt in 0..3 {
            let mut c = Cluster::spawn(&bin, tag, n);
            if c.wait_healthy(Duration::from_secs(20)) {
                return Some(c);
            }
            let logs: Vec<String> = c
                .members
                .iter()
                .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
                .collect();
            eprintln!("etcd cluster did not come up (attempt {attempt}): {logs:?}");
            c.stop_all();
        }
        panic!("etcd did not start three times in a row");
    }

    fn spawn(bin: &Path, tag: &str, n: usize) -> Cluster {
        let dir = tmpfs_dir(tag);
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                child: None,
                log: dir.join(format!("m{i}.log")),
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        let initial = initial.join(",");
        let mut c = Cluster {
            members,
            dir,
            bin: bin.to_path_buf(),
            initial,
        };
        for i in 0..n {
            c.launch(i);
        }
        c
    }

    /// Starts member `i` (again: with the data it had, it rejoins the cluster).
    fn launch(&mut self, i: usize) {
        let (bin, dir, initial) = (&self.bin, &self.dir, &self.initial);
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let mut cmd = Command::new(bin);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // The member dies with the thread that started it, even if the test binary is
        // SIGKILLed (its drop stops it otherwise).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd
            .args([
                "--name",
                &m.name,
                "--data-dir",
                dir.join(&m.name).to_str().unwrap(),
                "--listen-client-urls",
                &m.client,
                "--advertise-client-urls",
                &m.client,
                "--listen-peer-urls",
                &m.peer,
                "--initial-advertise-peer-urls",
                &m.peer,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                dir.file_name().unwrap().to_str().unwrap(),
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--log-level=warn",
            ])
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// Waits until every running member serves a linearizable read.
    pub fn wait_healthy(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let url = self.members[i].client.clone();
            let lt = lockticket::etcd::EtcdLockTicket::builder("health")
                .endpoints([url.as_str()])
                .call_timeout(Duration::from_millis(300))
                .open()
                .unwrap();
            loop {
                if lt.payload().is_ok() {
                    break;
                }
                if let Some(Ok(Some(_))) = self.members[i].child.as_mut().map(|c| c.try_wait()) {
                    return false; // it exited
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10)); // polling a server's start
            }
        }
        true
    }

    /// All client URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the current leader, asked of member `via` with etcdctl.
    pub fn leader(&self) -> Option<usize> {
        let ids: Vec<(usize, u64, u64)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .filter_map(|(i, m)| {
                let out = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &m.client,
                        "--command-timeout=1s",
                        "endpoint",
                        "status",
                        "-w",
                        "fields",
                    ])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let field = |f: &str| -> Option<u64> {
                    text.lines()
                        .find(|l| l.trim_start().starts_with(&format!("\"{f}\"")))
                        .and_then(|l| l.rsplit(':').next())
                        .and_then(|v| v.trim().parse().ok())
                };
                Some((i, field("MemberID")?, field("Leader")?))
            })
            .collect();
        let (_, _, leader) = *ids.first()?;
        ids.iter()
            .find(|(_, id, _)| *id == leader)
            .map(|(i, _, _)| *i)
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again after a [`kill`](Cluster::kill) (no-op if it runs).
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            self.launch(i);
        }
    }

    /// Sends `sig` to member `i`.
    pub fn signal(&self, i: usize, sig: i32) {
        let pid = self.members[i].pid();
        assert!(pid > 0);
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe { libc_kill(pid, sig) };
    }

    fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            if let Some(c) = &self.members[i].child {
                // A stopped member must be continued to die cleanly on SIGKILL's reap.
                let pid = c.id() as i32;
                // SAFETY: as above.
                unsafe { libc_kill(pid, SIGCONT) };
            }
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The keys under `prefix`, through etcdctl (None if etcdctl is missing).
    pub fn keys(&self, prefix: &str) -> Option<Vec<String>> {
        let m = self.members.iter().find(|m| m.child.is_some())?;
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &m.client,
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .ok()?;
        assert!(out.status.success(), "etcdctl get failed: {out:?}");
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[allow(unused_imports)] // not every user takes every signal
pub use libc::{SIGCONT, SIGKILL, SIGSTOP};

unsafe fn libc_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc::kill(pid, sig) }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc_kill(pid as i32, sig) };
}
