//! Payload set + get of 64 B and 4 KiB: lockticket's payload against the obvious alternative,
//! a tmpfs file written under `flock(LOCK_EX)` and read under `flock(LOCK_SH)`.
//!
//! `cargo bench -p lockticket-tools --bench payload` (`LOCKTICKET_BENCH_QUICK=1` for a short run).

mod support;

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lockticket::{LockTicket, Share};
use support::ShmFile;

const SIZES: [usize; 2] = [64, 4096];

/// A value in a file: an 8-byte length, then the bytes; writers take `LOCK_EX`, readers
/// `LOCK_SH` (without a lock a reader could see a torn value).
struct FileValue {
    file: File,
}

impl FileValue {
    fn flock(&self, op: libc::c_int) {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), op) };
        assert_eq!(rc, 0, "flock");
    }

    fn set(&self, value: &[u8]) {
        self.flock(libc::LOCK_EX);
        self.file
            .write_all_at(&(value.len() as u64).to_ne_bytes(), 0)
            .unwrap();
        self.file.write_all_at(value, 8).unwrap();
        self.flock(libc::LOCK_UN);
    }

    fn get(&self) -> Vec<u8> {
        self.flock(libc::LOCK_SH);
        let mut len = [0u8; 8];
        self.file.read_exact_at(&mut len, 0).unwrap();
        let mut v = vec![0u8; u64::from_ne_bytes(len) as usize];
        self.file.read_exact_at(&mut v, 8).unwrap();
        self.flock(libc::LOCK_UN);
        v
    }
}

fn payload(c: &mut Criterion) {
    let tag = support::unique_tag();
    let lt = LockTicket::builder(format!("bench-{tag}"))
        .payload_capacity(8192)
        .open()
        .unwrap();
    let keep = lt.main_lock(Share::Shared).unwrap();
    let shm = ShmFile::create(&tag, "payload", 8 + 8192);
    let file_value = FileValue {
        file: shm.file.try_clone().unwrap(),
    };

    let mut group = c.benchmark_group("payload");
    support::configure(&mut group);
    for size in SIZES {
        let value: Vec<u8> = (0..size).map(|i| i as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("lockticket_set_get", size),
            &value,
            |b, v| {
                b.iter(|| {
                    lt.set_payload(black_box(v)).unwrap();
                    black_box(lt.payload().unwrap())
                })
            },
        );
        assert_eq!(lt.payload().unwrap(), value);
        group.bench_with_input(BenchmarkId::new("lockticket_set", size), &value, |b, v| {
            b.iter(|| lt.set_payload(black_box(v)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("lockticket_get", size), &value, |b, _| {
            b.iter(|| black_box(lt.payload().unwrap()))
        });
        group.bench_with_input(
            BenchmarkId::new("file_flock_set_get", size),
            &value,
            |b, v| {
                b.iter(|| {
                    file_value.set(black_box(v));
                    black_box(file_value.get())
                })
            },
        );
        assert_eq!(file_value.get(), value);
    }
    group.finish();
    keep.unlock().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = payload
}
criterion_main!(benches);
