//! Multi-process tests of the payload: whole values under concurrent writers and readers,
//! writers SIGKILLed mid-write, oversize values, typed values.

mod common;

use common::*;
use lockticket::{LockTicket, Share};

/// A self-checking value: 8 bytes of length, 8 bytes of seed, then bytes derived from the seed.
fn make(seed: u64, len: usize) -> Vec<u8> {
    let len = len.max(16);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v.extend_from_slice(&seed.to_le_bytes());
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// True when `v` is empty or a value `make` produced whole.
fn whole(v: &[u8]) -> bool {
    if v.is_empty() {
        return true;
    }
    if v.len() < 16 {
        return false;
    }
    let len = u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
    let seed = u64::from_le_bytes(v[8..16].try_into().unwrap());
    len == v.len() && make(seed, len) == v
}

fn dispatch(role: &str, args: &[String]) {
    let lt = LockTicket::open(&args[0]).unwrap();
    match role {
        // Writes self-checking values of varying length until killed (or `n` writes).
        "writer" => {
            let n: u64 = args[1].parse().unwrap();
            let me = u64::from(std::process::id());
            say("ready");
            for i in 0..n {
                let seed = me << 32 | i;
                lt.set_payload(&make(seed, 16 + (seed % 4000) as usize))
                    .unwrap();
                if i == 10 {
                    say("writing"); // the parent may kill us from here on, mid-write or not
                }
            }
            say("done");
        }
        // Reads until told to stop; reports torn values.
        "reader" => {
            let mut reads = 0u64;
            let mut torn = 0u64;
            let mut last_gen = 0u64;
            let mut backwards = 0u64;
            say("ready");
            loop {
                let (v, generation) = lt.payload_with_generation().unwrap();
                reads += 1;
                torn += u64::from(!whole(&v));
                backwards += u64::from(generation < last_gen);
                last_gen = generation;
                if reads.is_multiple_of(256) && std::fs::metadata(&args[1]).is_ok() {
                    break;
                }
            }
            say(format!("reads={reads} torn={torn} backwards={backwards}"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

#[test]
fn concurrent_writers_and_a_reader_see_only_whole_values() {
    let name = unique("payload-concurrent");
    let lt = LockTicket::open(&name).unwrap();
    let _main = lt.main_lock(Share::Shared).unwrap();
    let scratch = Scratch::new("payload-concurrent");
    let stop = scratch.join("stop");
    let mut reader = Helper::spawn("reader", &[&name, stop.to_str().unwrap()]);
    reader.expect("ready");
    let mut writers: Vec<Helper> = (0..3)
        .map(|_| Helper::spawn("writer", &[&name, "3000"]))
        .collect();
    for w in &mut writers {
        w.expect("ready");
    }
    for w in &mut writers {
        w.expect("writing");
        w.expect("done");
    }
    std::fs::write(&stop, "").unwrap();
    let report = reader.expect("reads=");
    assert!(report.contains("torn=0 backwards=0"), "{report}");
    let (v, generation) = lt.payload_with_generation().unwrap();
    assert!(whole(&v));
    assert_eq!(generation, 9000, "every write is one generation");
}

#[test]
fn writers_killed_mid_write_leave_a_whole_value() {
    let name = unique("payload-kill");
    let lt = LockTicket::open(&name).unwrap();
    let _main = lt.main_lock(Share::Shared).unwrap();
    let scratch = Scratch::new("payload-kill");
    let stop = scratch.join("stop");
    let mut reader = Helper::spawn("reader", &[&name, stop.to_str().unwrap()]);
    reader.expect("ready");
    for round in 0..12 {
        let mut w = Helper::spawn("writer", &[&name, "1000000"]);
        w.expect("ready");
        w.expect("writing");
        w.kill(); // at a random point of some write, holding the writer lock or not
        let v = lt.payload().unwrap();
        assert!(whole(&v), "round {round}: the last complete value survives");
        // The dead writer's lock is taken over: writing still works.
        lt.set_payload(&make(round, 100)).unwrap();
        assert_eq!(lt.payload().unwrap(), make(round, 100));
    }
    std::fs::write(&stop, "").unwrap();
    let report = reader.expect("reads=");
    assert!(report.contains("torn=0 backwards=0"), "{report}");
}

#[test]
fn round_trips_and_oversize_values() {
    let name = unique("payload-sizes");
    let lt = LockTicket::builder(&name)
        .payload_capacity(1000)
        .open()
        .unwrap();
    let _main = lt.main_lock(Share::Exclusive).unwrap();
    assert!(lt.payload().unwrap().is_empty(), "never set: empty");
    assert_eq!(lt.payload_with_generation().unwrap().1, 0);
    for len in [0usize, 1, 7, 8, 9, 64, 999, 1000] {
        let v: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        lt.set_payload(&v).unwrap();
        assert_eq!(lt.payload().unwrap(), v, "length {len}");
    }
    let before = lt.payload_with_generation().unwrap();
    let e = lt.set_payload(&[1u8; 1001]).unwrap_err();
    assert!(
        matches!(
            e,
            lockticket::Error::PayloadTooLarge {
                len: 1001,
                capacity: 1000,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("1001") && msg.contains("1000") && msg.contains(lt.path().to_str().unwrap()),
        "{msg}"
    );
    assert_eq!(
        lt.payload_with_generation().unwrap(),
        before,
        "an oversize value changes nothing"
    );
    lt.clear_payload().unwrap();
    assert!(lt.payload().unwrap().is_empty());
    assert_eq!(lt.status().unwrap().payload_len, 0);
}

#[test]
fn plain_old_data_values() {
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Job {
        row: u64,
        attempts: u32,
        flags: u32,
    }
    let name = unique("payload-pod");
    let lt = LockTicket::open(&name).unwrap();
    let _main = lt.main_lock(Share::Exclusive).unwrap();
    assert_eq!(lt.payload_pod::<Job>().unwrap(), None);
    let job = Job {
        row: 17,
        attempts: 2,
        flags: 0xA5,
    };
    lt.set_payload_pod(&job).unwrap();
    assert_eq!(lt.payload_pod::<Job>().unwrap(), Some(job));
    assert!(
        lt.payload_pod::<u32>().is_err(),
        "a size mismatch is an error, not garbage"
    );
}

#[cfg(feature = "serde")]
#[test]
fn structured_values() {
    use std::collections::BTreeMap;
    let name = unique("payload-serde");
    let lt = LockTicket::open(&name).unwrap();
    let _main = lt.main_lock(Share::Exclusive).unwrap();
    assert_eq!(lt.data::<Vec<String>>().unwrap(), None);
    let list = vec!["a".to_string(), "b".into()];
    lt.set_data(&list).unwrap();
    assert_eq!(lt.data::<Vec<String>>().unwrap(), Some(list));
    let map: BTreeMap<String, u64> = [("rows".to_string(), 3), ("done".into(), 1)].into();
    lt.set_data(&map).unwrap();
    assert_eq!(lt.data::<BTreeMap<String, u64>>().unwrap(), Some(map));
}
