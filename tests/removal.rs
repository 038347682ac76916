//! A table removed (`rm`, systemd-logind's `RemoveIPC=yes`) or renamed (`mv`) under its users
//! is noticed and reported (issue 10): a waiter finds it within a few milliseconds and marks
//! it in the old file, and the holder's `unlock()` then reports that exclusion with the
//! processes that opened the path afterwards was not guaranteed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockticket::{Error, LockTicket, Share};

fn describe<T>(r: &lockticket::Result<T>) -> String {
    match r {
        Ok(_) => "Ok".to_string(),
        // "removed" or "replaced by another file": which one a user sees depends on whether
        // the newcomer created its table yet.
        Err(Error::TableRemoved { holder, .. }) => format!("TableRemoved holder={holder}"),
        Err(e) => format!("Err {e:?}"),
    }
}

fn dispatch(role: &str, args: &[String]) {
    if role == "relative" {
        return relative_then_chdir(&args[0]);
    }
    let lt = LockTicket::open(&args[0]).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    match role {
        "hold" => {
            let g = lt.token_lock().unwrap();
            say("held");
            let _ = hear();
            let r = g.unlock();
            say(format!("unlock {}", describe(&r)));
            if let Err(e) = &r {
                say(format!("message {e}"));
            }
        }
        "wait" => {
            say("joined");
            let r = lt.token_lock();
            say(format!("lock {}", describe(&r)));
            drop(r);
            // Every later call on the old table says so too.
            say(format!("status {}", describe(&lt.status())));
        }
        other => panic!("unknown role {other}"),
    }
    let _ = hear();
    say(format!("leave {}", describe(&main.unlock())));
}

/// The daemon of issue 17 (item 1): opens `./t.lt` in `dir`, then `chdir("/")`, and goes on
/// using the table through every kind of slow-path call.
fn relative_then_chdir(dir: &str) {
    std::env::set_current_dir(dir).unwrap();
    let lt = LockTicket::open("./t.lt").unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    drop(lt.token_lock().unwrap());
    say(format!("opened {}", lt.path().display()));
    std::env::set_current_dir("/").unwrap();
    say(format!("status {}", describe(&lt.status())));
    say(format!("lock {}", describe(&lt.token_lock())));
    say(format!("try {}", describe(&lt.try_token_lock())));
    say(format!(
        "timeout {}",
        describe(&lt.token_lock_timeout(Duration::from_millis(50)))
    ));
    say(format!("set {}", describe(&lt.set_payload(b"from /"))));
    assert_eq!(hear(), "wait");
    // Queued behind the other process: its waits check the table's path on every timeout.
    say("waiting");
    let g = lt.token_lock();
    say(format!("queued {}", describe(&g)));
    if let Ok(g) = g {
        say(format!("unlock {}", describe(&g.unlock())));
    }
    assert_eq!(hear(), "leave");
    say(format!("leave {}", describe(&main.unlock())));
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn removed_under_users(how: &str) {
    let name = unique(&format!("removed-{how}"));
    let lt = LockTicket::open(&name).unwrap();
    let path = lt.path().to_path_buf();
    let p = path.to_str().unwrap().to_string();
    let mut holder = Helper::spawn("hold", &[&p]);
    holder.expect("held");
    let mut waiter = Helper::spawn("wait", &[&p]);
    waiter.expect("joined");
    wait_until("the waiter queues", || {
        lt.status().is_ok_and(|st| st.queue.len() == 1)
    });
    let moved = path.with_extension("moved");
    match how {
        "rm" => std::fs::remove_file(&path).unwrap(),
        "mv" => std::fs::rename(&path, &moved).unwrap(),
        _ => unreachable!(),
    }
    let t0 = Instant::now();
    // A process that opens the path now gets a new table and the token at once, while the
    // old holder still holds its own: exclusion is not guaranteed, and everyone on the old
    // file must be told.
    let newcomer = LockTicket::open(&name).unwrap();
    let new_main = newcomer.main_lock(Share::Shared).unwrap();
    assert!(new_main.created(), "a new table at the path");
    let tok = newcomer
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the new table is free");
    let said = waiter.expect("lock");
    let found = t0.elapsed();
    assert_eq!(said, "TableRemoved holder=false", "{how}");
    eprintln!("{how}: the waiter found the removal in {found:?}");
    assert_eq!(waiter.expect("status"), "TableRemoved holder=false");
    holder.send("release");
    assert_eq!(
        holder.expect("unlock"),
        "TableRemoved holder=true",
        "the holder's unlock must say exclusion was not guaranteed"
    );
    let msg = holder.expect("message");
    assert!(
        msg.contains(&p) && msg.contains("not guaranteed") && msg.contains("RemoveIPC"),
        "{msg}"
    );
    // The old handle of this test process learns at its next call too.
    let e = lt.status().unwrap_err();
    assert!(matches!(e, Error::TableRemoved { .. }), "{e:?}");
    let e = lt.token_lock().unwrap_err();
    assert!(matches!(e, Error::TableRemoved { .. }), "{e:?}");
    for h in [&mut holder, &mut waiter] {
        h.send("leave");
        assert_eq!(h.expect("leave"), "TableRemoved holder=false");
    }
    drop(tok);
    new_main.unlock().unwrap();
    assert!(!path.exists(), "the new table's last owner removed it");
    let _ = std::fs::remove_file(&moved);
}

#[test]
fn a_table_removed_under_its_users_is_noticed_and_reported() {
    removed_under_users("rm");
}

#[test]
fn a_table_renamed_under_its_users_is_noticed_and_reported() {
    removed_under_users("mv");
}

/// Issue 17, item 1: a process that opened the table by a relative path and changed its
/// directory since must not take the table for removed (and mark it so for everyone): its
/// checks ask the directory it opened the table in, and its path is absolute from the start.
#[test]
fn a_relative_path_and_a_chdir_do_not_make_a_table_look_removed() {
    let s = Scratch::new("relative");
    let table = s.join("t.lt");
    let mut h = Helper::spawn("relative", &[s.0.to_str().unwrap()]);
    assert_eq!(
        h.expect("opened"),
        table.display().to_string(),
        "the path is absolute"
    );
    for call in ["status", "lock", "try", "timeout", "set"] {
        assert_eq!(h.expect(call), "Ok", "{call} after chdir");
    }
    // Another process, by the absolute path: the same table, usable, not marked.
    let lt = LockTicket::open(&table).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    assert!(!main.created(), "the same table");
    assert_eq!(lt.payload().unwrap(), b"from /");
    let tok = lt.token_lock().unwrap();
    h.send("wait");
    h.expect("waiting");
    wait_until("the helper queues", || {
        lt.status().is_ok_and(|st| st.queue.len() == 1)
    });
    drop(tok);
    assert_eq!(h.expect("queued"), "Ok");
    assert_eq!(h.expect("unlock"), "Ok");
    let st = lt.status().unwrap();
    assert_eq!(st.queue.len(), 0);
    main.unlock().unwrap();
    // The helper leaves last: it removes the table through the directory it opened it in.
    h.send("leave");
    assert_eq!(h.expect("leave"), "Ok");
    h.finish();
    assert!(
        !table.exists(),
        "the last owner (after its chdir) removed the table"
    );
}
