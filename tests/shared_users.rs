//! A 0666 table shared by two users in a sticky directory (/dev/shm, /tmp): the last one out
//! may not be the file's owner, and the kernel then refuses the unlink. That must be quiet and
//! harmless: the unlock succeeds, the retired file is revived by the next user, and the
//! owner's own last unlock removes it. Needs root (to act as two users); skips otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use lockticket::{LockTicket, Share};

const USER_A: u32 = 65534;
const USER_B: u32 = 65533;

fn dispatch(role: &str, args: &[String]) {
    match role {
        // Becomes uid/gid args[1], joins table args[0] (0666), then on each line heard:
        // "unlock" leaves and reports, "join" joins again.
        "user" => {
            use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
            let id: u32 = args[1].parse().unwrap();
            let dropped = setgroups(&[])
                .and_then(|()| setgid(Gid::from_raw(id)))
                .and_then(|()| setuid(Uid::from_raw(id)));
            if let Err(e) = dropped {
                say(format!("skipped: cannot become uid {id}: {e}"));
                return;
            }
            let lt = LockTicket::builder(&args[0])
                .permissions(0o666)
                .open()
                .unwrap();
            let mut main = Some(lt.main_lock(Share::Shared).unwrap());
            say("joined");
            loop {
                match hear().as_str() {
                    "unlock" => {
                        let r = main.take().map(|m| m.unlock());
                        say(format!("unlocked {r:?}"));
                    }
                    "join" => {
                        main = Some(lt.main_lock(Share::Shared).unwrap());
                        say("joined");
                    }
                    _ => break,
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

#[test]
fn the_last_user_out_of_a_sticky_directory_leaves_quietly() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: acting as two users needs root");
        return;
    }
    let dir = std::path::Path::new("/dev/shm").join(unique("sticky"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let path = dir.join("shared.lt");
    let p = path.to_str().unwrap();
    let mut a = Helper::spawn("user", &[p, &USER_A.to_string()]);
    let first = a.next();
    if first.starts_with("skipped") {
        eprintln!("{first}");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    assert_eq!(first, "joined");
    let mut b = Helper::spawn("user", &[p, &USER_B.to_string()]);
    assert_eq!(b.next(), "joined");
    // A (the file's owner) leaves first; B, the last one out, may not unlink A's file.
    a.send("unlock");
    assert_eq!(a.next(), "unlocked Some(Ok(()))");
    b.send("unlock");
    assert_eq!(
        b.next(),
        "unlocked Some(Ok(()))",
        "no error for a harmless leftover"
    );
    assert!(path.exists(), "the sticky directory kept A's file");
    // The leftover is revived by the next user, and its owner's last unlock removes it.
    a.send("join");
    assert_eq!(a.next(), "joined");
    a.send("unlock");
    assert_eq!(a.next(), "unlocked Some(Ok(()))");
    assert!(!path.exists(), "the owner's last unlock removes the file");
    a.send("exit");
    b.send("exit");
    let _ = (a.finish(), b.finish());
    let _ = std::fs::remove_dir_all(&dir);
}
