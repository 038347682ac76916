//! Multi-process tests of the main lock: the original's table (exclusive/shared, absent or
//! held), our improvements (dead owners reclaimed, double registration refused, exact file
//! modes), cleanup by the last owner, and the race between the last one out and a joiner.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use lockticket::{Error, LockTicket, Share};

fn share_of(s: &str) -> Share {
    match s {
        "shared" => Share::Shared,
        "exclusive" => Share::Exclusive,
        other => panic!("bad share {other:?}"),
    }
}

fn share_arg(s: Share) -> &'static str {
    match s {
        Share::Shared => "shared",
        Share::Exclusive => "exclusive",
    }
}

/// The variant of an error, for messages between processes.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::MainLockBusy { .. } => "MainLockBusy",
        Error::AlreadyRegistered { .. } => "AlreadyRegistered",
        Error::DoubtfulPermissions { .. } => "DoubtfulPermissions",
        Error::NotCreated { .. } => "NotCreated",
        Error::Removed { .. } => "Removed",
        Error::Corrupted { .. } => "Corrupted",
        _ => "Other",
    }
}

/// Reports a failure to the parent (so it shows in the test's panic) and exits.
fn fail(msg: String) -> ! {
    say(format!("fail {msg}"));
    std::process::exit(1)
}

/// Microseconds a racer stays out of the table between iterations (yielding): pacing that
/// makes all owners leave at once often, so tables are removed and recreated while others
/// join. Not a synchronisation: nothing waits for anything.
const OUTSIDE: [u32; 4] = [0, 100, 300, 1000];

fn dispatch(role: &str, args: &[String]) {
    match role {
        // Takes the main lock in mode args[1] on table args[0] and holds it until told.
        "own" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let g = match lt.main_lock(share_of(&args[1])) {
                Ok(g) => g,
                Err(e) => {
                    say(format!("refused {} {e}", kind(&e)));
                    return;
                }
            };
            say(format!(
                "owned created={} reclaimed={}",
                g.created(),
                g.reclaimed()
            ));
            match hear().as_str() {
                "unlock" => match g.unlock() {
                    Ok(()) => say("unlocked ok"),
                    Err(e) => say(format!("unlocked err {e}")),
                },
                "drop" => {
                    drop(g);
                    say("dropped");
                }
                _ => {} // EOF: the parent is gone; leave quietly
            }
        }
        // Holds the exclusive token (no main lock) until told.
        "token" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let g = lt.token_lock().unwrap();
            say("held");
            let _ = hear();
            g.unlock().unwrap();
            say("released");
        }
        // The cron job the OOM killer takes: owns the table alone, holds the token, leaves a
        // payload for the repair, then aborts on command (nobody waits on the token).
        "die-holding" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let main = lt.main_lock(Share::Exclusive).unwrap();
            let tok = lt.token_lock().unwrap();
            lt.set_payload(b"half-done: job 17").unwrap();
            say("held");
            let _ = hear();
            std::mem::forget((main, tok));
            std::process::abort();
        }
        // Last one out vs joiner: join, count under the token, leave; K times.
        "race" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            let counter = Counter::open(Path::new(&args[1]));
            let k: u32 = args[2].parse().unwrap();
            let me = std::process::id();
            say("ready");
            if hear() != "go" {
                return;
            }
            let (mut created, mut reclaimed) = (0u32, 0u32);
            for i in 0..k {
                let main = lt
                    .main_lock(Share::Shared)
                    .unwrap_or_else(|e| fail(format!("iteration {i}: main_lock: {e}")));
                created += u32::from(main.created());
                reclaimed += u32::from(main.reclaimed());
                let tok = lt
                    .token_lock()
                    .unwrap_or_else(|e| fail(format!("iteration {i}: token_lock: {e}")));
                counter.bump();
                let st = lt
                    .status()
                    .unwrap_or_else(|e| fail(format!("iteration {i}: status: {e}")));
                if !st.path.exists() {
                    fail(format!(
                        "iteration {i}: {} does not exist while we own it",
                        st.path.display()
                    ));
                }
                if !st.members.iter().any(|m| m.pid == me) {
                    fail(format!(
                        "iteration {i}: the table in use does not list us (pid {me}) as owner: {st}"
                    ));
                }
                drop(tok);
                main.unlock()
                    .unwrap_or_else(|e| fail(format!("iteration {i}: unlock: {e}")));
                // Stay out a while (varying), so that every owner is often out at once and
                // the table is removed and recreated while others join.
                let t0 = std::time::Instant::now();
                let us = u128::from(OUTSIDE[i as usize % OUTSIDE.len()]);
                while t0.elapsed().as_micros() < us {
                    std::thread::yield_now();
                }
            }
            say(format!("done created={created} reclaimed={reclaimed}"));
        }
        // Creates table args[0] (shared) on "go", pinned to CPU args[1]; holds it until told.
        "create-pinned" => {
            pin_to_cpu(args[1].parse().unwrap());
            let lt = LockTicket::open(&args[0]).unwrap();
            say("ready");
            if hear() != "go" {
                return;
            }
            let g = lt.main_lock(Share::Shared).unwrap();
            say(format!(
                "owned created={} reclaimed={}",
                g.created(),
                g.reclaimed()
            ));
            let _ = hear();
            g.unlock().unwrap();
            say("unlocked");
        }
        // Pinned to CPU args[2] with a real-time priority, sleeps until a file named args[1]
        // appears in directory args[0], then at once takes the main lock (shared) on it.
        "pounce" => {
            let dir = std::path::PathBuf::from(&args[0]);
            pin_to_cpu(args[2].parse().unwrap());
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: sets our own scheduling policy; fails harmlessly without privileges.
            let rt = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
            let fd = watch_creations(&dir);
            say(format!("watching rt={rt}"));
            wait_for_creation(fd, &args[1]);
            let lt = LockTicket::open(dir.join(&args[1])).unwrap();
            let g = lt.main_lock(Share::Shared).unwrap();
            say(format!(
                "owned created={} reclaimed={}",
                g.created(),
                g.reclaimed()
            ));
            let _ = hear();
            g.unlock().unwrap();
            say("unlocked");
        }
        // Creates table args[0] with mode args[2] under umask args[1] (octal), holds it.
        "umask" => {
            let mask = u32::from_str_radix(&args[1], 8).unwrap();
            let perms = u32::from_str_radix(&args[2], 8).unwrap();
            // SAFETY: umask has no preconditions; this helper process is ours alone.
            unsafe { libc::umask(mask as libc::mode_t) };
            let lt = LockTicket::builder(&args[0])
                .permissions(perms)
                .open()
                .unwrap();
            let g = lt.main_lock(Share::Exclusive).unwrap();
            say(format!("created {}", g.created()));
            let _ = hear();
            g.unlock().unwrap();
            say("unlocked");
        }
        // Opens table args[0], maps it (status), then uses up every descriptor this process
        // may have (RLIMIT_NOFILE lowered to just above its open ones, the holes filled) and
        // asks for the token: the registration cannot open its descriptor.
        "out-of-fds" => {
            let lt = LockTicket::open(&args[0]).unwrap();
            lt.status().unwrap();
            let highest = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap();
            let lim = libc::rlimit {
                rlim_cur: highest + 1,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: setrlimit with a valid rlimit struct.
            let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            let lim = libc::rlimit {
                rlim_cur: highest + 1,
                rlim_max: highest + 1,
            };
            // SAFETY: as above (lowering the hard limit too when raising it was refused).
            if rc != 0 && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                panic!("setrlimit: {}", std::io::Error::last_os_error());
            }
            let mut fillers = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                fillers.push(f);
            }
            match lt.token_lock() {
                Ok(_) => say("locked"),
                Err(e) => say(format!("error {e}")),
            }
        }
        // Creates and removes tables in directory args[0] until killed.
        "create-loop" => {
            for i in 0.. {
                let lt = LockTicket::builder(format!("loop-{}", i % 4))
                    .directory(&args[0])
                    .open()
                    .unwrap();
                let g = lt.main_lock(Share::Exclusive).unwrap();
                g.unlock().unwrap();
                if i == 0 {
                    say("started");
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Pins this process to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity work on
    // it and on our own process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The first CPU this process may run on.
fn first_cpu() -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(rc, 0);
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap()
    }
}

/// An inotify descriptor watching `dir` for new entries.
fn watch_creations(dir: &Path) -> libc::c_int {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain inotify calls on a descriptor we own and a NUL-terminated path.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC);
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO);
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Blocks until an entry called `name` is created in the watched directory.
fn wait_for_creation(fd: libc::c_int, name: &str) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into our buffer from our inotify descriptor.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0, "inotify read: {}", std::io::Error::last_os_error());
        let mut off = 0;
        while off + 16 <= n as usize {
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let raw = &buf[off + 16..off + 16 + len];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
            if &raw[..end] == name.as_bytes() {
                return;
            }
            off += 16 + len;
        }
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn table(tag: &str) -> (LockTicket, String) {
    let name = unique(tag);
    (LockTicket::open(&name).unwrap(), name)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn open_creates_nothing() {
    let scratch = Scratch::new("opennothing");
    let lt = LockTicket::builder("x")
        .directory(&scratch.0)
        .open()
        .unwrap();
    let by_path = LockTicket::open(scratch.join("y.lt")).unwrap();
    assert!(!lt.path().exists());
    assert!(!by_path.path().exists());
    assert!(listing(&scratch.0).is_empty(), "{:?}", listing(&scratch.0));
    let e = lt.status().unwrap_err();
    assert!(matches!(e, Error::NotCreated { .. }), "{e}");
    assert!(listing(&scratch.0).is_empty(), "status created something");
}

#[test]
fn exclusive_on_absent_creates_and_the_owner_removes() {
    let (lt, _) = table("create");
    assert!(!lt.path().exists());
    let g = lt.main_lock(Share::Exclusive).unwrap();
    assert!(g.created());
    assert!(!g.reclaimed());
    assert!(lt.path().exists());
    let st = lt.status().unwrap();
    assert_eq!(st.members.len(), 1, "{st}");
    assert_eq!(st.members[0].pid, std::process::id());
    assert_eq!(st.members[0].share, Share::Exclusive);
    assert!(st.members[0].alive);
    g.unlock().unwrap();
    assert!(
        !lt.path().exists(),
        "the only owner's unlock removes the table"
    );
    let e = lt.status().unwrap_err();
    assert!(matches!(e, Error::NotCreated { .. }), "{e}");

    // Shared on absent creates too; Drop leaves like unlock.
    let g = lt.main_lock(Share::Shared).unwrap();
    assert!(g.created());
    assert_eq!(lt.status().unwrap().members[0].share, Share::Shared);
    drop(g);
    assert!(
        !lt.path().exists(),
        "drop of the only owner removes the table"
    );
}

#[test]
fn no_order_of_unlocks_or_drops_leaves_the_table_behind() {
    // The main guard goes before a token guard: explicitly, or by a struct's field order.
    let (lt, _) = table("droporder");
    let main = lt.main_lock(Share::Exclusive).unwrap();
    let tok = lt.token_lock().unwrap();
    main.unlock().unwrap();
    assert!(
        lt.path().exists(),
        "a held token keeps the table while its holder runs"
    );
    drop(tok);
    let path = lt.path().to_path_buf();
    drop(lt);
    assert!(
        !path.exists(),
        "the handle's drop removes the deferred table"
    );

    struct Job<'a> {
        _main: lockticket::MainGuard<'a>,
        _tok: lockticket::TokenGuard<'a>,
    }
    let (lt, _) = table("droporder-struct");
    let job = Job {
        _main: lt.main_lock(Share::Shared).unwrap(),
        _tok: lt.token_lock().unwrap(),
    };
    drop(job); // fields drop in order: the main guard first
    let path = lt.path().to_path_buf();
    drop(lt);
    assert!(
        !path.exists(),
        "a struct's drop order left the table behind"
    );
}

#[test]
fn a_live_owner_excludes_conflicting_modes_in_both_directions() {
    // (helper's mode, our mode, should we get in)
    let cases = [
        (Share::Exclusive, Share::Exclusive, false),
        (Share::Exclusive, Share::Shared, false),
        (Share::Shared, Share::Exclusive, false),
        (Share::Shared, Share::Shared, true),
    ];
    for (theirs, ours, joins) in cases {
        let (lt, name) = table("busy");
        let mut h = Helper::spawn("own", &[&name, share_arg(theirs)]);
        assert_eq!(h.expect("owned"), "created=true reclaimed=false");
        match lt.main_lock(ours) {
            Ok(g) => {
                assert!(
                    joins,
                    "{ours} joined a table held {theirs} by pid {}",
                    h.pid()
                );
                assert!(!g.created() && !g.reclaimed());
                let st = lt.status().unwrap();
                let mut pids: Vec<u32> = st.members.iter().map(|m| m.pid).collect();
                pids.sort();
                let mut want = vec![h.pid(), std::process::id()];
                want.sort();
                assert_eq!(pids, want, "{st}");
                g.unlock().unwrap();
                assert!(
                    lt.path().exists(),
                    "a non-last owner's unlock keeps the table"
                );
            }
            Err(e) => {
                assert!(!joins, "{ours} on a table held {theirs}: {e}");
                match &e {
                    Error::MainLockBusy { share, pids, path } => {
                        assert_eq!(*share, theirs);
                        assert_eq!(pids, &[h.pid()]);
                        assert_eq!(path, lt.path());
                    }
                    other => panic!("expected MainLockBusy, got {other:?}"),
                }
                assert!(e.to_string().contains(&lt.path().display().to_string()));
                let st = lt.status().unwrap();
                assert_eq!(st.members.len(), 1, "a refused request left a trace: {st}");
            }
        }
        h.send("unlock");
        assert_eq!(h.expect("unlocked"), "ok");
        assert!(!lt.path().exists(), "the last owner removes the table");
    }

    // The other direction: we hold, the helper asks.
    for (ours, theirs, joins) in cases {
        let (lt, name) = table("busy2");
        let g = lt.main_lock(ours).unwrap();
        let mut h = Helper::spawn("own", &[&name, share_arg(theirs)]);
        let said = h.next();
        if joins {
            assert_eq!(said, "owned created=false reclaimed=false");
            h.send("unlock");
            assert_eq!(h.expect("unlocked"), "ok");
            assert!(
                lt.path().exists(),
                "a non-last owner's unlock keeps the table"
            );
        } else {
            assert!(
                said.starts_with("refused MainLockBusy"),
                "{theirs} while we hold {ours}: {said}"
            );
            assert!(said.contains(&std::process::id().to_string()), "{said}");
        }
        g.unlock().unwrap();
        assert!(!lt.path().exists());
    }
}

#[test]
fn registering_twice_is_refused() {
    for (first, second) in [
        (Share::Exclusive, Share::Exclusive),
        (Share::Exclusive, Share::Shared),
        (Share::Shared, Share::Shared),
        (Share::Shared, Share::Exclusive),
    ] {
        let (lt, name) = table("twice");
        let g = lt.main_lock(first).unwrap();
        let e = lt.main_lock(second).unwrap_err();
        assert!(
            matches!(&e, Error::AlreadyRegistered { pid, .. } if *pid == std::process::id()),
            "{first} then {second}: {e:?}"
        );
        // A second handle of the same process is the same process.
        let other = LockTicket::open(&name).unwrap();
        let e = other.main_lock(second).unwrap_err();
        assert!(matches!(e, Error::AlreadyRegistered { .. }), "{e:?}");
        let st = lt.status().unwrap();
        assert_eq!(st.members.len(), 1, "{st}");
        g.unlock().unwrap();
        assert!(!lt.path().exists());
    }
}

#[test]
fn a_table_whose_owners_all_died_is_reclaimed() {
    for (dead_mode, ours) in [
        (Share::Exclusive, Share::Exclusive),
        (Share::Exclusive, Share::Shared),
        (Share::Shared, Share::Exclusive),
        (Share::Shared, Share::Shared),
    ] {
        let (lt, name) = table("orphan");
        let mut h = Helper::spawn("own", &[&name, share_arg(dead_mode)]);
        h.expect("owned");
        let dead = h.pid();
        h.kill();
        assert!(lt.path().exists(), "SIGKILL leaves the file behind");
        let g = lt.main_lock(ours).unwrap();
        assert!(g.reclaimed(), "{ours} over a dead {dead_mode} owner: {g:?}");
        let st = lt.status().unwrap();
        assert_eq!(
            st.members
                .iter()
                .map(|m| (m.pid, m.share))
                .collect::<Vec<_>>(),
            [(std::process::id(), ours)],
            "the dead owner {dead} is gone: {st}"
        );
        g.unlock().unwrap();
        assert!(!lt.path().exists());
    }
}

#[test]
fn an_orphan_takeover_keeps_the_died_flag_and_the_payload() {
    for ours in [Share::Exclusive, Share::Shared] {
        let (lt, name) = table("diedorphan");
        let mut h = Helper::spawn("die-holding", &[&name]);
        h.expect("held");
        h.send("abort");
        let st = h.finish();
        assert!(!st.success(), "the holder was meant to abort: {st:?}");
        let g = lt.main_lock(ours).unwrap();
        assert!(g.reclaimed() && !g.created(), "{g:?}");
        assert_eq!(
            lt.payload().unwrap(),
            b"half-done: job 17",
            "the payload the dead holder left is what the repair needs"
        );
        let tok = lt.token_lock().unwrap();
        assert!(
            tok.previous_holder_died(),
            "the holder died holding the token, with nobody waiting"
        );
        drop(tok);
        let tok = lt.token_lock().unwrap();
        assert!(!tok.previous_holder_died(), "reported once");
        drop(tok);
        g.unlock().unwrap();
        assert!(!lt.path().exists());
    }
}

#[test]
fn one_dead_owner_among_live_ones_is_not_a_reclaim() {
    let (lt, name) = table("halfdead");
    let mut alive = Helper::spawn("own", &[&name, "shared"]);
    alive.expect("owned created=true");
    let mut dead = Helper::spawn("own", &[&name, "shared"]);
    dead.expect("owned created=false");
    dead.kill();
    let g = lt.main_lock(Share::Shared).unwrap();
    assert!(!g.reclaimed() && !g.created(), "{g:?}");
    let mut excl = Helper::spawn("own", &[&name, "exclusive"]);
    let said = excl.expect("refused");
    assert!(said.starts_with("MainLockBusy"), "{said}");
    let mut pids: Vec<u32> = lt.status().unwrap().members.iter().map(|m| m.pid).collect();
    pids.sort();
    let mut want = vec![alive.pid(), std::process::id()];
    want.sort();
    assert_eq!(pids, want, "the dead owner's entry is cleared");
    g.unlock().unwrap();
    alive.send("unlock");
    assert_eq!(alive.expect("unlocked"), "ok");
    assert!(!lt.path().exists());
}

#[test]
fn reclaiming_an_orphan_keeps_a_live_token_holder_on_the_same_table() {
    let (lt, name) = table("orphantoken");
    let mut owner = Helper::spawn("own", &[&name, "exclusive"]);
    owner.expect("owned");
    let mut holder = Helper::spawn("token", &[&name]);
    holder.expect("held");
    owner.kill();
    let g = lt.main_lock(Share::Exclusive).unwrap();
    assert!(g.reclaimed(), "{g:?}");
    assert!(
        !g.created(),
        "a table with a live token holder must be kept, not recreated"
    );
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders.iter().map(|t| t.pid).collect::<Vec<_>>(),
        [holder.pid()],
        "{st}"
    );
    assert!(
        lt.try_token_lock().unwrap().is_none(),
        "the holder still excludes us"
    );
    holder.send("x");
    holder.expect("released");
    assert!(lt.try_token_lock().unwrap().is_some());
    g.unlock().unwrap();
    assert!(!lt.path().exists());
}

#[test]
fn only_the_last_owner_removes_the_table() {
    let (lt, name) = table("lastout");
    let mine = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("own", &[&name, "shared"]);
    h.expect("owned created=false");
    mine.unlock().unwrap();
    assert!(
        lt.path().exists(),
        "a non-last owner's unlock removed the table"
    );
    h.send("unlock");
    assert_eq!(h.expect("unlocked"), "ok");
    assert!(
        !lt.path().exists(),
        "the last owner's unlock leaves the table behind"
    );

    // The other order, and leaving by Drop.
    let mut h = Helper::spawn("own", &[&name, "shared"]);
    h.expect("owned created=true");
    let mine = lt.main_lock(Share::Shared).unwrap();
    h.send("drop");
    h.expect("dropped");
    assert!(
        lt.path().exists(),
        "a non-last owner's drop removed the table"
    );
    assert_eq!(lt.status().unwrap().members.len(), 1);
    drop(mine);
    assert!(
        !lt.path().exists(),
        "the last owner's drop leaves the table behind"
    );
}

#[test]
fn files_get_exactly_the_requested_mode_whatever_the_umask() {
    let scratch = Scratch::new("umask");
    for (umask, perms) in [
        (0o077, 0o660),
        (0o077, 0o600),
        (0o000, 0o660),
        (0o000, 0o600),
        (0o022, 0o640),
    ] {
        let file = format!("t-{umask:03o}-{perms:03o}.lt");
        let path = scratch.join(&file);
        let (m, p) = (format!("{umask:o}"), format!("{perms:o}"));
        let mut h = Helper::spawn("umask", &[path.to_str().unwrap(), &m, &p]);
        assert_eq!(h.expect("created"), "true");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, perms,
            "umask {umask:03o}, requested {perms:03o}, got {mode:03o}"
        );
        assert_eq!(
            listing(&scratch.0),
            [file],
            "a temporary file was left behind"
        );
        h.send("x");
        h.expect("unlocked");
        assert!(!path.exists());
        assert!(listing(&scratch.0).is_empty());
    }
}

#[test]
fn an_existing_table_wider_than_requested_is_refused() {
    let scratch = Scratch::new("wider");
    let path = scratch.join("t.lt");
    let wide = LockTicket::builder(&path)
        .permissions(0o660)
        .open()
        .unwrap();
    let g = wide.main_lock(Share::Shared).unwrap();
    let narrow = LockTicket::builder(&path)
        .permissions(0o600)
        .open()
        .unwrap();
    for (op, r) in [
        (
            "main_lock(Shared)",
            narrow.main_lock(Share::Shared).map(drop),
        ),
        (
            "main_lock(Exclusive)",
            narrow.main_lock(Share::Exclusive).map(drop),
        ),
        ("status", narrow.status().map(drop)),
        ("token_lock", narrow.token_lock().map(drop)),
        ("payload", narrow.payload().map(drop)),
    ] {
        let e = r.expect_err(op);
        assert!(
            matches!(e, Error::DoubtfulPermissions { .. }),
            "{op}: {e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("doubtful permissions"), "{op}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{op}: {msg}");
    }
    // Other bits widened behind our back are refused even for a 0o660 request.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let e = LockTicket::builder(&path)
        .permissions(0o660)
        .open()
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, Error::DoubtfulPermissions { .. }), "{e:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    assert_eq!(wide.status().unwrap().members.len(), 1);
    g.unlock().unwrap();
    assert!(!path.exists());
}

#[test]
fn last_one_out_never_races_a_joiner() {
    let name = unique("lastoutrace");
    let scratch = Scratch::new("lastoutrace");
    let counter = scratch.join("counter");
    let (helpers, k) = (4u64, 200u64);
    let mut hs: Vec<Helper> = (0..helpers)
        .map(|_| Helper::spawn("race", &[&name, counter.to_str().unwrap(), &k.to_string()]))
        .collect();
    for h in &mut hs {
        h.expect("ready");
    }
    for h in &mut hs {
        h.send("go");
    }
    let mut created = 0;
    for h in &mut hs {
        let done = h.expect("done");
        let mut parts = done.split_whitespace();
        let c: u32 = parts
            .next()
            .unwrap()
            .strip_prefix("created=")
            .unwrap()
            .parse()
            .unwrap();
        let r = parts.next().unwrap();
        assert_eq!(
            r, "reclaimed=0",
            "nobody died, yet a table was reclaimed: {done}"
        );
        created += c;
    }
    eprintln!("last one out vs joiner: the table was created {created} times");
    assert!(created >= 1);
    assert_eq!(
        Counter::open(&counter).get(),
        helpers * k,
        "increments were lost: two processes held tokens at once (two files at one path?)"
    );
    let lt = LockTicket::open(&name).unwrap();
    assert!(!lt.path().exists(), "the last one out removes the table");
}

/// A joiner that runs the instant a new table is linked into place (it sleeps on inotify,
/// with a real-time priority on the creator's CPU, so it preempts the creator right after the
/// `link`) must not mistake the table for an orphan: the creator is alive, it just has not
/// registered yet. Nobody died, so nothing may be "reclaimed", and the creator's table must
/// not be unlinked under it.
#[test]
fn a_table_being_created_is_not_reclaimed_by_a_joiner() {
    let scratch = Scratch::new("pounce");
    let file = "t.lt";
    let path = scratch.join(file);
    let cpu = first_cpu().to_string();
    let mut joiner = Helper::spawn("pounce", &[scratch.0.to_str().unwrap(), file, &cpu]);
    let rt = joiner.expect("watching rt=");
    if rt != "true" {
        eprintln!("no real-time priority here: the joiner may not preempt the creator");
    }
    let mut creator = Helper::spawn("create-pinned", &[path.to_str().unwrap(), &cpu]);
    creator.expect("ready");
    creator.send("go");
    let c = creator.expect("owned");
    let j = joiner.expect("owned");
    eprintln!("creator: {c}; joiner: {j}");
    assert!(
        !j.contains("reclaimed=true") && !c.contains("reclaimed=true"),
        "nobody died, yet a table was reclaimed (creator: {c}; joiner: {j})"
    );
    assert_eq!(
        c, "created=true reclaimed=false",
        "the creator's new table was taken away"
    );
    assert_eq!(j, "created=false reclaimed=false");
    let st = LockTicket::open(&path).unwrap().status().unwrap();
    assert_eq!(st.members.len(), 2, "{st}");
    creator.send("x");
    creator.expect("unlocked");
    joiner.send("x");
    joiner.expect("unlocked");
    assert!(!path.exists());
}

#[test]
fn running_out_of_descriptors_while_registering_says_so() {
    let (lt, p) = table("out-of-fds");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("out-of-fds", &[&p]);
    let said = h.next();
    let msg = said
        .strip_prefix("error ")
        .unwrap_or_else(|| panic!("{said}"));
    assert!(msg.contains("Too many open files"), "{msg}");
    assert!(msg.contains(&p), "{msg}");
    assert!(!msg.contains("/proc"), "{msg}");
    h.finish();
}

/// The names of the entries created in the directory `fd` watches so far (without blocking).
fn created_so_far(fd: libc::c_int) -> Vec<String> {
    let mut names = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: a non-blocking poll of our inotify descriptor, then a read into our buffer.
        let n = unsafe {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) <= 0 {
                return names;
            }
            libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
        };
        assert!(n > 0, "inotify read: {}", std::io::Error::last_os_error());
        let mut off = 0;
        while off + 16 <= n as usize {
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let raw = &buf[off + 16..off + 16 + len];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
            names.push(String::from_utf8_lossy(&raw[..end]).into_owned());
            off += 16 + len;
        }
    }
}

/// A scratch directory on tmpfs (where `O_TMPFILE` always works), removed on drop.
fn shm_scratch(tag: &str) -> Scratch {
    let p = Path::new("/dev/shm").join(unique(tag));
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

/// Issue 17, item 7: every valid name works, whatever its length and the creator's PID (the
/// temporary file a table was made in used to carry the name, the PID and 16 more characters,
/// and went past the 255 bytes a file name may have).
#[test]
fn names_of_214_to_218_characters_work() {
    for len in 214..=218 {
        let base = unique("long");
        let name = format!("{base}{}", "x".repeat(len - base.len()));
        assert_eq!(name.len(), len);
        let lt = LockTicket::open(&name).unwrap();
        let main = lt
            .main_lock(Share::Exclusive)
            .unwrap_or_else(|e| panic!("{len}: {e}"));
        assert!(main.created());
        lt.token_lock().unwrap().unlock().unwrap();
        lt.set_payload(b"long").unwrap();
        let path = lt.path().to_path_buf();
        assert!(path.exists());
        main.unlock().unwrap();
        assert!(!path.exists(), "{len}: the last owner removed it");
    }
}

/// Issue 17, item 9a: a table is made in a file without a name and linked into place, so no
/// temporary name ever appears in the directory (none can be left by a creator killed
/// half-way) — and none is left when creators are SIGKILLed at random points.
#[test]
fn creating_tables_never_names_a_temporary_file() {
    let s = shm_scratch("tmpfiles");
    let fd = watch_creations(&s.0);
    for i in 0..20 {
        let lt = LockTicket::builder(format!("t{}", i % 3))
            .directory(&s.0)
            .open()
            .unwrap();
        lt.main_lock(Share::Exclusive).unwrap().unlock().unwrap();
    }
    let created = created_so_far(fd);
    assert!(!created.is_empty());
    for name in &created {
        assert!(
            lockticket::table_name(std::ffi::OsStr::new(name)).is_some(),
            "only tables are ever named in the directory: {created:?}"
        );
    }
    // Creators killed mid-loop leave no temporary file either.
    for _ in 0..5 {
        let mut h = Helper::spawn("create-loop", &[s.0.to_str().unwrap()]);
        h.expect("started");
        created_so_far(fd); // what came before
        wait_until("more creations", || !created_so_far(fd).is_empty());
        h.kill();
    }
    // SAFETY: closing our inotify descriptor.
    unsafe { libc::close(fd) };
    let left: Vec<String> = listing(&s.0)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 17, item 10a: a lock file removed and made again with the same inode number (ext4
/// reuses them at once) is keyed to a new table, not to the old file's (its payload, its died
/// flag). Where this filesystem never reuses a number in 200 tries, says so and checks only
/// that the keys of the two files differ.
#[test]
fn a_lock_file_made_again_with_the_same_inode_gets_a_new_table() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new("reused-inode");
    let tables = shm_scratch("reused-inode-tables");
    let file = s.join("job.lock");
    let key = |f: &Path| {
        lockticket::table_for_lock_file(f, Some(&tables.0))
            .unwrap()
            .expect("a plain file is keyed")
    };
    std::fs::write(&file, b"").unwrap();
    let first = key(&file);
    let ino = std::fs::metadata(&file).unwrap().ino();
    // The old file's table, kept with a payload (the died flag lives beside it).
    let lt = LockTicket::builder(&first).keep(true).open().unwrap();
    lt.main_lock(Share::Exclusive).unwrap().unlock().unwrap();
    lt.set_payload(b"the old file's").unwrap();
    let mut reused = false;
    for _ in 0..200 {
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"").unwrap();
        let now = key(&file);
        assert_ne!(now, first, "another file, another table");
        if std::fs::metadata(&file).unwrap().ino() == ino {
            reused = true;
            let new = LockTicket::open(&now).unwrap();
            let _main = new.main_lock(Share::Exclusive).unwrap();
            assert_eq!(new.payload().unwrap(), b"", "nothing inherited");
            break;
        }
    }
    if !reused {
        eprintln!("this filesystem did not reuse the inode number in 200 tries");
    }
    drop(lt);
    let _ = std::fs::remove_file(&first);
}
