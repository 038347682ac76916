//! Other users' bytes in text output (issue 17, item 8): a holder whose command line carries
//! terminal escape sequences, BEL and a newline followed by a forged status line must not make
//! `lockticket status` or `exec --verbose` write raw control bytes or a line of its choosing.
//! Nothing sleeps to synchronise: the holder's command creates a file the test waits for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);
const FORGED: &str = "holders  none: the lock is free";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockticket")
}

/// The holder, killed when the test ends, however it ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + BOUND;
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {path:?}");
        std::thread::sleep(Duration::from_millis(2)); // polling a file the command makes
    }
}

/// Fails when `bytes` has a control byte other than its own line ends, or a line that starts
/// with the forged text.
fn assert_clean(what: &str, bytes: &[u8]) {
    let bad: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
        .collect();
    assert!(
        bad.is_empty(),
        "{what} wrote raw control bytes {bad:?}: {:?}",
        String::from_utf8_lossy(bytes)
    );
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with(FORGED)),
        "{what} printed a forged line: {text:?}"
    );
    assert!(
        !text.contains('\u{202e}'),
        "{what} printed a bidi override: {text:?}"
    );
}

#[test]
fn a_holders_command_line_cannot_write_control_bytes_or_forge_lines() {
    let dir: PathBuf = std::env::temp_dir().join(format!("cli-escape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (held, go) = (dir.join("held"), dir.join("go"));
    let name = format!("cli-escape-{}", std::process::id());
    let evil = format!("\x1b[2J\x1b]0;owned\x07\u{202e}\n{FORGED}");
    let script = format!(
        "touch '{}'; i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 9; \
         sleep 0.01; done",
        held.display(),
        go.display()
    );
    // The hostile bytes first (argv[0]), so that no truncation hides them.
    use std::os::unix::process::CommandExt;
    let holder = Holder(
        Command::new(bin())
            .arg0(&evil)
            .args(["exec", &name, "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&held);

    let run = |args: &[&str]| -> Output {
        Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let st = run(&["status", &name]);
    assert!(st.status.success(), "{st:?}");
    assert_clean("status", &st.stdout);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("\\e[2J"),
        "the command line is shown escaped: {text}"
    );
    assert_clean("status (stderr)", &st.stderr);

    let v = run(&["exec", "--verbose", "-w", "0.05", &name, "true"]);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("held by pid"),
        "{v:?}"
    );
    assert_clean("exec --verbose (stderr)", &v.stderr);
    assert_clean("exec --verbose (stdout)", &v.stdout);

    // --json stays valid and carries the command line as it is (JSON escapes it).
    let j = run(&["status", "--json", &name]);
    assert_clean("status --json", &j.stdout);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    let cmd = v["holders"][0]["command"].as_str().unwrap();
    assert!(cmd.contains(&evil), "{cmd:?}");

    std::fs::write(&go, b"").unwrap();
    let mut holder = holder;
    let deadline = Instant::now() + BOUND;
    while holder.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the holder did not finish");
        std::thread::sleep(Duration::from_millis(2)); // polling an exit
    }
    let _ = std::fs::remove_dir_all(&dir);
}
