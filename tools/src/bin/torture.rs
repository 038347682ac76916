//! Torture test: worker processes hammer one lock table with exclusive and shared tokens and
//! payload writes while a supervisor SIGKILLs random workers at random moments and starts
//! replacements, and SIGSTOPs others for random lengths (stalls) before SIGCONTing them.
//! Everything the workers observe goes into a shared "witness" file, checked against the
//! lock's promises: mutual exclusion, FIFO, whole payloads, progress, and a counter that only
//! an exclusive lock keeps exact.
//!
//! ```text
//! cargo run --release -p lockticket-tools --bin torture                    # 6 workers, 20 s, 5 kills/s
//!                                                            # and 20 stalls/s
//! cargo run --release -p lockticket-tools --bin torture -- --procs 8 --seconds 300 --kill-rate 5 --stall-rate 20
//! cargo run --release -p lockticket-tools --bin torture -- --stall-rate 0    # kills only
//! cargo run --release -p lockticket-tools --bin torture -- --ring 2 --procs 12   # a ring smaller than the crowd
//! cargo run --release -p lockticket-tools --bin torture -- --seed 1234       # the supervisor's random choices again
//! ```
//!
//! Options: `--procs N` (default 6, at most 64), `--seconds S` (20), `--kill-rate K` kills per
//! second (5; 0 = none), `--stall-rate S` stalls per second (20; 0 = none), `--ring N` token
//! slots (8, so that more workers than slots sometimes wait for a free slot), `--repair-rate R`
//! calls of `repair` per second from a handle of its own (0 = none; each must find nothing
//! to do, the table is never corrupt), `--payload N`
//! payload capacity in bytes (262144: large values take long enough to write that a kill can
//! land mid-write), `--seed S` (default: from the clock and the PID; it repeats the
//! supervisor's random choices, not the interleavings). The last line
//! on stdout is the one-line summary (ending in `result=ok` or `result=FAIL(…)`); the exit
//! status is non-zero on any violation. Details (kills and stalls by phase, counts, the first
//! library error of each kind) go to stderr.
//!
//! # The run
//!
//! The supervisor creates the table and keeps a shared main lock on it for the whole run,
//! creates the witness file, and starts the workers (this program again, `--worker`). At
//! exponentially distributed moments (mean `1 / kill-rate`) it SIGKILLs a worker — a third of
//! the time a random one, a third one that holds a token, a third one that is writing the
//! payload (watched for up to 5 ms) — reaps it and starts a replacement.
//!
//! At other exponentially distributed moments (mean `1 / stall-rate`, a random stream of its
//! own so that a seed repeats the kills' choices whatever the stall rate) it *stalls* a worker
//! that is not already stopped: SIGSTOP, wait until `/proc` shows it stopped (up to 50 ms;
//! otherwise SIGCONT at once and count it `missed`), keep it stopped for a log-uniform length
//! between 2 µs and 300 ms, SIGCONT. A fifth of the stalls hit a random worker; the others are
//! aimed (watched for up to 5 ms, except holders) at one that holds a token, one that is
//! *releasing* (the phase marker stored right before `unlock()`, until it is back to idle),
//! one waiting for a grant, one writing the payload. Stalls under 1 ms are timed by the
//! supervisor on the spot, longer ones end in its loop; several workers may be stopped at
//! once, and a stopped worker may be killed (SIGKILL ends a stall; no SIGCONT needed). The
//! phase counted is the one the worker was stopped in. A stall is what the scheduler or a
//! debugger can do to any process at any instruction: the lock must neither take a stopped
//! holder for dead nor be confused when it resumes with stale views (say, a releaser stopped
//! between freeing its slot and moving `head`).
//!
//! Each worker loops:
//! 4 % of cycles write the payload with no token, 8 % read it with no token; the others
//! request a token, exclusive 70 % / shared 30 %, blocking 60 % / with a random timeout of
//! 0–5 ms 25 % / `try_` 15 %, and run the checks below under it. Under an exclusive token a
//! worker also writes the payload (30 %), reads it (15 %), takes a FIFO certificate (2 %) or
//! sleeps up to 300 µs holding the token (5 %). At the end the supervisor continues every
//! stopped worker (and checks none still shows stopped: `left_stopped` fails the run), sets a
//! stop flag, waits up to 10 s for the workers, settles the books and removes the table and
//! the witness.
//!
//! # What is checked, exactly
//!
//! The witness file (`/dev/shm/lockticket-torture-PID.witness`, mapped `MAP_SHARED` by every
//! process) holds a header and one *record per worker incarnation* (a replacement gets a fresh
//! record, so nothing a dead worker left is ever overwritten). A record has the worker's PID, its
//! *life* (`ALIVE`, `KILLING` — set by the supervisor *before* it sends SIGKILL —, `DEAD` — set
//! after it reaped the process —, `EXITED`), its pending request, its critical-section state and
//! its counters. A process is *confirmed dead* when its record says `DEAD`/`EXITED`, or when
//! it says `KILLING` and `/proc/PID` shows a zombie or nothing (the PID cannot have been reused:
//! the supervisor has not reaped it yet). The lock only reclaims a slot once its owner is a
//! zombie or gone, so by the time a later holder looks, a killed process is `KILLING` or `DEAD`.
//! A stopped process (`T` in `/proc`) is alive, `ALIVE` in its record, and never confirmed
//! dead: whatever it holds, it holds legitimately, and anyone inside with it is a violation.
//!
//! * **Mutual exclusion.** An exclusive holder CASes the "who holds" word from 0 to its record
//!   id and back at the end, and checks it still holds its id before leaving. A shared holder
//!   raises its record's `reading` flag, checks the "who holds" word is 0, reads, lowers the
//!   flag. The exclusive holder checks that no worker's `reading` flag is up. A non-zero word or
//!   a raised flag is excused only when its owner is confirmed dead (it was killed inside its
//!   section); otherwise it is a violation: two live processes were inside at once.
//! * **The counter.** Each exclusive section increments a shared counter with a split
//!   load–yield–store (an atomic word, so a race shows as a lost update, not as undefined
//!   behaviour). A worker records `intent = v + 1` and marks its section *open* before storing,
//!   then in one store marks it closed and counts it completed. The next exclusive holder that
//!   finds a dead worker's id in the "who holds" word repairs the books: if that section was
//!   open, the counter reads `intent` (the store landed: counted in `landed`) or `intent - 1`
//!   (it did not); anything else is a lost update. At the end, `counter == Σ completed +
//!   landed` exactly (`counter_ok`).
//! * **Payloads.** Every payload is self-checking: 8-byte length, 8-byte seed, then bytes
//!   generated from the seed by xorshift (16 bytes to the capacity). Writers write under the
//!   exclusive token, and sometimes with no token at all (concurrent writers, serialised by the
//!   library). Every shared holder, some exclusive ones and some workers with no token at all
//!   read the payload and check it is whole (`torn_payloads`), and that its generation never goes backwards for that reader
//!   (`rollbacks`). Workers are killed in the middle of writes, too.
//! * **FIFO**, with no false positives. Each request draws a number `r` from a global sequence
//!   *before* calling the lock and publishes `(r, mode, blocking)` in its record as a single
//!   word. A *certifier* (the supervisor every tick, and 2 % of exclusive holders) draws `s0`,
//!   takes [`status`](lockticket::LockTicket::status), draws `s1`; for every live request in
//!   the snapshot whose owner's published request has `r < s0` and is still the same pending
//!   request, it CASes the delta `s1 - r` into that word. Such a request was then certainly in
//!   the queue before `s1` (the snapshot saw its claim, and it was the only request of its
//!   process from before `s0` to after `s1`). Every holder B with number `r_B` then checks
//!   every other worker A: if A's *blocking* request is certified with `s1_A < r_B` (so A
//!   entered the queue before B even started to ask), A is alive, still pending, and A or B is
//!   exclusive, then B was granted before an earlier conflicting request: a FIFO violation
//!   (or a mutual exclusion one). Requests with a timeout or `try_` are never counted as the
//!   earlier request A (they may legitimately leave the queue at any time, before their
//!   record is cleared); as B they are checked like any other.
//! * **Progress.** The supervisor counts a *stuck interval* when the witness's grant counter
//!   does not move for 250 ms (the reclaim bound of a few ms, plus generous slack) while a
//!   request that started before the last grant is still pending; it stops watching (and
//!   restarts the interval) when it was itself not scheduled for 100 ms, and while any worker
//!   is stopped (a stopped holder or a stopped request at the head legitimately holds up
//!   everyone behind it), so the 250 ms count only time with no worker stopped. The longest
//!   gap between grants is measured the same way; `max_wait_ms` includes stalls.
//! * Every library error is counted (`lib_errors`; the first of each kind — digits ignored —
//!   is kept in the witness with its count and time and printed at the end), and so are
//!   workers that exit on their own (`crashes`), workers that do not stop within 10 s at the
//!   end (`stragglers`) and workers still stopped after the final SIGCONT (`left_stopped`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockticket::{Fairness, LockTicket, Share};
use memmap2::MmapRaw;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Bounded tables: scheduling slack of the wait check (a 2-core machine with more workers
/// than cores and the supervisor: a runnable process may wait this long for a CPU).
const BOUNDED_SLACK: Duration = Duration::from_millis(250);
/// Most workers at once (the `active` table of the witness).
const MAX_PROCS: usize = 64;
/// Witness magic: "LTtortur".
const MAGIC: u64 = 0x4c54_746f_7274_7572;
/// No grant for this long while a request waits: a stuck interval.
const STUCK: Duration = Duration::from_millis(250);
/// How long a holder waits for a killed process to be confirmed dead.
const DEATH_BOUND: Duration = Duration::from_secs(5);
/// Stall lengths: log-uniform between these.
const STALL_MIN: Duration = Duration::from_micros(2);
const STALL_MAX: Duration = Duration::from_millis(300);
/// Stalls shorter than this are timed by the supervisor on the spot (spinning); longer ones
/// are continued by its loop.
const STALL_INLINE: Duration = Duration::from_millis(1);
/// How long the supervisor waits for a SIGSTOPped worker to show as stopped in `/proc`.
const STOP_BOUND: Duration = Duration::from_millis(50);
/// Distinct kinds of library error messages kept in the witness (digits ignored).
const ERR_KINDS: usize = 8;
/// Words (8 bytes each) of text kept per error kind.
const ERR_WORDS: usize = 32;

// Record `life` values.
const ALIVE: u64 = 1;
const KILLING: u64 = 2;
const DEAD: u64 = 3;
const EXITED: u64 = 4;

// Record `phase` values: where a worker is (for the kill and stall statistics).
const PHASES: [&str; 9] = [
    "starting",
    "idle",
    "requesting",
    "holding_exclusive",
    "holding_shared",
    "writing_payload_under_token",
    "writing_payload_without_token",
    "dawdling_with_token",
    "releasing",
];
const P_STARTING: u64 = 0;
const P_IDLE: u64 = 1;
const P_REQUESTING: u64 = 2;
const P_EXCLUSIVE: u64 = 3;
const P_SHARED: u64 = 4;
const P_WRITE: u64 = 5;
const P_FREE_WRITE: u64 = 6;
const P_DAWDLE: u64 = 7;
/// Set right before `unlock()` of a token, until the worker is back to idle.
const P_RELEASING: u64 = 8;

// The request word: `r << 24 | delta << 4 | flags`; 0 = no request.
const REQ_PENDING: u64 = 1;
const REQ_EXCLUSIVE: u64 = 2;
const REQ_BLOCKING: u64 = 4;
const REQ_SHIFT: u32 = 24;
const DELTA_SHIFT: u32 = 4;
const DELTA_MASK: u64 = (1 << 20) - 1;

// ---------------------------------------------------------------------------------------------
// The witness file.

/// Shared words of the witness file. Everything is an `AtomicU64`: all-zero is the initial state.
#[repr(C, align(128))]
struct Header {
    magic: AtomicU64,
    /// Record id (index + 1) of the worker inside an exclusive section; 0 = none.
    holder: AtomicU64,
    /// Incremented non-atomically (load, yield, store) inside exclusive sections.
    counter: AtomicU64,
    /// Grants seen by workers (monotonic).
    grants: AtomicU64,
    /// The global request / certificate sequence.
    seq: AtomicU64,
    /// Set by the supervisor at the end: workers finish their cycle and exit.
    stop: AtomicU64,
    /// Sections of dead workers whose counter store landed (see the module docs).
    landed: AtomicU64,
    /// Dead workers' ids found in the "who holds" word and cleared.
    stale_holders: AtomicU64,
    mutex_violations: AtomicU64,
    fifo_violations: AtomicU64,
    torn_payloads: AtomicU64,
    rollbacks: AtomicU64,
    counter_mismatches: AtomicU64,
    lib_errors: AtomicU64,
    /// `previous_holder_died()` reports.
    died_reports: AtomicU64,
    payload_writes: AtomicU64,
    free_writes: AtomicU64,
    payload_reads: AtomicU64,
    /// Most shared holders seen inside at once.
    max_overlap: AtomicU64,
    /// Certificates written, and FIFO comparisons made against a certificate.
    certificates: AtomicU64,
    fifo_checks: AtomicU64,
    /// Record id currently occupying each worker slot (0 = none).
    active: [AtomicU64; MAX_PROCS],
    /// Bounded tables: the bypass bound in ns (0: a strict table, FIFO is checked).
    bound_ns: AtomicU64,
    /// When the supervisor last stopped, continued or killed a worker (`now_ns`), and how
    /// many are stopped now: the bounded wait check skips requests disturbed so.
    disturbed_ns: AtomicU64,
    stopped_now: AtomicU64,
    /// When the supervisor started the workers (`now_ns`).
    start_ns: AtomicU64,
    /// The first [`ERR_KINDS`] distinct library errors (see [`note_lib_error`]): kind (a hash
    /// of the message with digits ignored; 0 = free), occurrences, time of the first one,
    /// text length (0 until the text is written), text.
    err_kind: [AtomicU64; ERR_KINDS],
    err_count: [AtomicU64; ERR_KINDS],
    err_ns: [AtomicU64; ERR_KINDS],
    err_len: [AtomicU64; ERR_KINDS],
    err_text: [[AtomicU64; ERR_WORDS]; ERR_KINDS],
    /// Library errors of further kinds (not kept).
    err_unkept: AtomicU64,
}

/// One worker incarnation.
#[repr(C, align(128))]
struct Record {
    pid: AtomicU64,
    life: AtomicU64,
    phase: AtomicU64,
    /// The pending request (see `REQ_*`).
    req: AtomicU64,
    /// `2 * completed exclusive sections + open`.
    done: AtomicU64,
    /// The counter value an open section stores.
    intent: AtomicU64,
    /// 1 while inside a shared section.
    reading: AtomicU64,
    cycles: AtomicU64,
    exclusive: AtomicU64,
    shared: AtomicU64,
    /// Requests with a timeout or `try_` that came back empty.
    gave_up: AtomicU64,
    max_wait_ns: AtomicU64,
    /// At least the time (`now_ns`) its pending request was certified (only grows).
    cert_ns: AtomicU64,
}

struct Witness {
    map: MmapRaw,
    records: usize,
}

const HEADER_LEN: usize = std::mem::size_of::<Header>();
const RECORD_LEN: usize = std::mem::size_of::<Record>();

impl Witness {
    fn create(path: &Path, records: usize) -> std::io::Result<Witness> {
        // A leftover of an earlier supervisor with our PID that was killed: not ours to keep.
        let _ = std::fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len((HEADER_LEN + records * RECORD_LEN) as u64)?;
        let w = Witness::map(&file)?;
        w.header().magic.store(MAGIC, SeqCst);
        Ok(w)
    }

    fn open(path: &Path) -> std::io::Result<Witness> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let w = Witness::map(&file)?;
        if w.header().magic.load(SeqCst) != MAGIC {
            return Err(std::io::Error::other("not a torture witness file"));
        }
        Ok(w)
    }

    fn map(file: &File) -> std::io::Result<Witness> {
        let len = file.metadata()?.len() as usize;
        if len < HEADER_LEN {
            return Err(std::io::Error::other("witness file too short"));
        }
        let map = MmapRaw::map_raw(file)?;
        if map.len() < len {
            return Err(std::io::Error::other("witness mapping too short"));
        }
        Ok(Witness {
            map,
            records: (len - HEADER_LEN) / RECORD_LEN,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned (≥ Header's 128-byte alignment), at least
        // HEADER_LEN bytes long (checked in `map`), shared and writable; every field is an
        // AtomicU64, for which any bit pattern is valid and which is only accessed atomically
        // by every process. Nobody truncates the file while it is mapped, and the reference
        // lives no longer than `self`, which owns the mapping.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// Record `i` (0-based); `i < self.records`.
    fn rec(&self, i: usize) -> &Record {
        assert!(i < self.records, "record {i} out of range");
        // SAFETY: as in `header`: the record lies inside the mapping (i < records, checked
        // above; records was computed from the file length), is 128-byte aligned (HEADER_LEN
        // and RECORD_LEN are multiples of 128 and the mapping is page-aligned), and holds only
        // AtomicU64 fields.
        unsafe { &*(self.map.as_ptr().add(HEADER_LEN + i * RECORD_LEN) as *const Record) }
    }

    /// The record named by id `id` (index + 1), if it exists.
    fn by_id(&self, id: u64) -> Option<&Record> {
        (id >= 1 && id <= self.records as u64).then(|| self.rec(id as usize - 1))
    }

    /// The records of the workers running now (with their ids).
    fn active(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.header().active.iter().filter_map(|a| {
            let id = a.load(SeqCst);
            self.by_id(id).map(|r| (id, r))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Small tools.

/// xorshift64*: small, fast, good enough to pick moments and lengths.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 = xorshift(self.0);
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A self-checking payload: length, seed, then xorshift bytes from the seed.
fn make_payload(seed: u64, len: usize) -> Vec<u8> {
    let len = len.max(16);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v.extend_from_slice(&seed.to_le_bytes());
    let mut x = seed | 1;
    while v.len() < len {
        x = xorshift(x);
        let n = (len - v.len()).min(8);
        v.extend_from_slice(&x.to_le_bytes()[..n]);
    }
    v
}

/// True when `b` is empty (never written) or a whole payload from [`make_payload`].
fn payload_is_whole(b: &[u8]) -> bool {
    if b.is_empty() {
        return true;
    }
    if b.len() < 16 {
        return false;
    }
    let len = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let seed = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    if len != b.len() as u64 {
        return false;
    }
    let mut x = seed | 1;
    b[16..].chunks(8).all(|chunk| {
        x = xorshift(x);
        chunk == &x.to_le_bytes()[..chunk.len()]
    })
}

/// Process state letter from `/proc/PID/stat`; `None` when the process does not exist.
fn proc_state(pid: u64) -> Option<u8> {
    let bytes = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    bytes.get(close + 2).copied()
}

/// Is the process of `rec` certainly dead? Waits (bounded) while the supervisor is killing it.
/// `false` means it is (or, after [`DEATH_BOUND`], still seems) alive.
fn confirmed_dead(rec: &Record) -> bool {
    let deadline = Instant::now() + DEATH_BOUND;
    loop {
        let life = rec.life.load(SeqCst);
        if life == DEAD || life == EXITED {
            return true;
        }
        // Not reaped yet (life is read first), so the PID still names that process.
        let pid = rec.pid.load(SeqCst);
        if pid != 0 && matches!(proc_state(pid), None | Some(b'Z' | b'X')) {
            return true;
        }
        if life != KILLING || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The kind of a library error message: a hash of its text where every word starting with a
/// digit (ticket numbers, PIDs, `0x…` words) counts as the same word. Never 0.
fn error_kind(text: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
    let mut in_number = false;
    let mut prev_alnum = false;
    for b in text.bytes() {
        let alnum = b.is_ascii_alphanumeric();
        if in_number && alnum {
            continue;
        }
        in_number = alnum && !prev_alnum && b.is_ascii_digit();
        prev_alnum = alnum;
        let b = if in_number { b'#' } else { b };
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash | 1
}

/// Counts a library error, and keeps its text in the witness when it is the first of its kind
/// (see [`error_kind`]). Returns true for the first of its kind.
fn note_lib_error(h: &Header, text: &str) -> bool {
    h.lib_errors.fetch_add(1, SeqCst);
    let kind = error_kind(text);
    for i in 0..ERR_KINDS {
        // Kinds claim entries in order, so a kind is in at most one entry.
        match h.err_kind[i].compare_exchange(0, kind, SeqCst, SeqCst) {
            Ok(_) => {
                h.err_ns[i].store(now_ns(), SeqCst);
                h.err_count[i].fetch_add(1, SeqCst);
                let bytes = &text.as_bytes()[..text.len().min(ERR_WORDS * 8)];
                for (word, chunk) in h.err_text[i].iter().zip(bytes.chunks(8)) {
                    let mut b = [0u8; 8];
                    b[..chunk.len()].copy_from_slice(chunk);
                    word.store(u64::from_le_bytes(b), SeqCst);
                }
                h.err_len[i].store(bytes.len() as u64, SeqCst);
                return true;
            }
            Err(k) if k == kind => {
                h.err_count[i].fetch_add(1, SeqCst);
                return false;
            }
            Err(_) => {}
        }
    }
    h.err_unkept.fetch_add(1, SeqCst);
    false
}

/// Prints the kept library errors (after the run: nobody writes them any more).
fn print_lib_errors(h: &Header) {
    let total = h.lib_errors.load(SeqCst);
    if total == 0 {
        return;
    }
    eprintln!("torture: {total} library errors; the first of each kind:");
    let start = h.start_ns.load(SeqCst);
    for i in 0..ERR_KINDS {
        if h.err_kind[i].load(SeqCst) == 0 {
            break;
        }
        let len = h.err_len[i].load(SeqCst) as usize;
        let mut bytes: Vec<u8> = h.err_text[i]
            .iter()
            .flat_map(|w| w.load(SeqCst).to_le_bytes())
            .collect();
        bytes.truncate(len.min(ERR_WORDS * 8));
        let text = if len == 0 {
            "(text lost: its writer was killed while writing it)".into()
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        eprintln!(
            "torture:   {}x, first after {:.3} s: {text}",
            h.err_count[i].load(SeqCst),
            h.err_ns[i].load(SeqCst).saturating_sub(start) as f64 / 1e9
        );
    }
    let unkept = h.err_unkept.load(SeqCst);
    if unkept != 0 {
        eprintln!("torture:   and {unkept} of further kinds (not kept)");
    }
}

/// Certifies queued requests (see the module docs): returns how many were certified.
fn certify(w: &Witness, lt: &LockTicket) -> lockticket::Result<u64> {
    let h = w.header();
    let s0 = h.seq.fetch_add(1, SeqCst) + 1;
    let st = lt.status()?;
    let s1 = h.seq.fetch_add(1, SeqCst) + 1;
    let mut n = 0;
    for e in st.holders.iter().chain(st.queue.iter()) {
        if !e.alive {
            continue;
        }
        let Some((_, rec)) = w
            .active()
            .find(|(_, r)| r.pid.load(SeqCst) == u64::from(e.pid))
        else {
            continue;
        };
        let req = rec.req.load(SeqCst);
        let r = req >> REQ_SHIFT;
        let exclusive = req & REQ_EXCLUSIVE != 0;
        let delta = s1.wrapping_sub(r);
        if req & REQ_PENDING == 0
            || req & REQ_BLOCKING == 0
            || (req >> DELTA_SHIFT) & DELTA_MASK != 0
            || r >= s0
            || exclusive != (e.share == Share::Exclusive)
            || delta > DELTA_MASK
        {
            continue;
        }
        // Before the CAS, and only ever raised: a reader of a certified request finds a time at
        // least as late as its certification (a stalled certifier's late write cannot lower it).
        rec.cert_ns.fetch_max(now_ns(), SeqCst);
        if rec
            .req
            .compare_exchange(req, req | (delta << DELTA_SHIFT), SeqCst, SeqCst)
            .is_ok()
        {
            n += 1;
        }
    }
    h.certificates.fetch_add(n, Relaxed);
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Options.

#[derive(Clone, Debug)]
struct Options {
    procs: usize,
    seconds: f64,
    kill_rate: f64,
    stall_rate: f64,
    repair_rate: f64,
    ring: u32,
    payload: usize,
    seed: Option<u64>,
    fairness: Fairness,
}

/// Arguments of a worker process.
struct WorkerArgs {
    record: usize,
    name: String,
    witness: PathBuf,
    seed: u64,
    payload: usize,
}

enum Role {
    Supervisor(Options),
    Worker(WorkerArgs),
}

const USAGE: &str = "usage: torture [--procs N] [--seconds S] [--kill-rate K] [--stall-rate S] \
                     [--repair-rate R] [--ring N] [--payload BYTES] [--seed S] [--fairness strict|bounded[:MS]]";

fn parse_args() -> Result<Role, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Options {
        procs: 6,
        seconds: 20.0,
        kill_rate: 5.0,
        stall_rate: 20.0,
        repair_rate: 0.0,
        ring: 8,
        payload: 262144,
        seed: None,
        fairness: Fairness::Strict,
    };
    let mut worker: Option<usize> = None;
    let (mut name, mut witness) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--help" || a == "-h" {
            return Err(USAGE.into());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}\n{USAGE}");
        match a.as_str() {
            "--procs" => o.procs = v.parse().map_err(|e| bad(&e))?,
            "--seconds" => o.seconds = v.parse().map_err(|e| bad(&e))?,
            "--kill-rate" => o.kill_rate = v.parse().map_err(|e| bad(&e))?,
            "--stall-rate" => o.stall_rate = v.parse().map_err(|e| bad(&e))?,
            "--repair-rate" => o.repair_rate = v.parse().map_err(|e| bad(&e))?,
            "--ring" => o.ring = v.parse().map_err(|e| bad(&e))?,
            "--payload" => o.payload = v.parse().map_err(|e| bad(&e))?,
            "--seed" => o.seed = Some(v.parse().map_err(|e| bad(&e))?),
            "--fairness" => o.fairness = v.parse().map_err(|e| bad(&e))?,
            "--worker" => worker = Some(v.parse().map_err(|e| bad(&e))?),
            "--name" => name = Some(v.clone()),
            "--witness" => witness = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown option {a}\n{USAGE}")),
        }
    }
    if let Some(record) = worker {
        return Ok(Role::Worker(WorkerArgs {
            record,
            name: name.ok_or("--worker needs --name")?,
            witness: witness.ok_or("--worker needs --witness")?,
            seed: o.seed.unwrap_or(0),
            payload: o.payload,
        }));
    }
    if !(2..=MAX_PROCS).contains(&o.procs) {
        return Err(format!("--procs: 2 to {MAX_PROCS}"));
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0) {
        return Err("--seconds: a positive number".into());
    }
    if !(o.kill_rate.is_finite() && o.kill_rate >= 0.0) {
        return Err("--kill-rate: a number >= 0".into());
    }
    if !(o.stall_rate.is_finite() && o.stall_rate >= 0.0) {
        return Err("--stall-rate: a number >= 0".into());
    }
    if !(o.repair_rate.is_finite() && o.repair_rate >= 0.0) {
        return Err("--repair-rate: a number >= 0".into());
    }
    if o.payload < 16 {
        return Err("--payload: at least 16 bytes".into());
    }
    Ok(Role::Supervisor(o))
}

fn main() {
    match parse_args() {
        Ok(Role::Worker(a)) => worker(a),
        Ok(Role::Supervisor(o)) => match supervise(o) {
            Ok(true) => {}
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("torture: {e}");
                std::process::exit(2);
            }
        },
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker.

struct Worker<'a> {
    w: &'a Witness,
    lt: &'a LockTicket,
    me: &'a Record,
    id: u64,
    rng: Rng,
    payload: usize,
    last_generation: u64,
    errors_shown: u32,
}

fn worker(a: WorkerArgs) {
    // Never outlive the supervisor, even if it is killed.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let w = match Witness::open(&a.witness) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("torture worker: witness {}: {e}", a.witness.display());
            std::process::exit(3);
        }
    };
    if a.record >= w.records {
        eprintln!("torture worker: no record {}", a.record);
        std::process::exit(3);
    }
    let me = w.rec(a.record);
    me.pid.store(u64::from(std::process::id()), SeqCst);
    let lt = match LockTicket::open(&a.name) {
        Ok(lt) => lt,
        Err(e) => {
            eprintln!("torture worker: open: {e}");
            note_lib_error(w.header(), &format!("open: {e}"));
            std::process::exit(3);
        }
    };
    let mut wk = Worker {
        w: &w,
        lt: &lt,
        me,
        id: a.record as u64 + 1,
        rng: Rng::new(a.seed ^ (a.record as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ns()),
        payload: a.payload,
        last_generation: 0,
        errors_shown: 0,
    };
    me.phase.store(P_IDLE, SeqCst);
    while w.header().stop.load(Relaxed) == 0 {
        wk.cycle();
    }
    std::process::exit(0);
}

impl Worker<'_> {
    /// A library error: counted, kept if of a new kind, shown on stderr if it is the first of
    /// its kind in the run or among this worker's first two.
    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        let h = self.w.header();
        let text = format!("{what}: {e}");
        let first = note_lib_error(h, &text);
        if first || self.errors_shown < 2 {
            self.errors_shown += 1;
            eprintln!(
                "torture worker {} (pid {}) after {:.3} s: {text}",
                self.id,
                std::process::id(),
                now_ns().saturating_sub(h.start_ns.load(SeqCst)) as f64 / 1e9
            );
        }
    }

    fn violation(&self, counter: &AtomicU64, what: &str) {
        counter.fetch_add(1, SeqCst);
        eprintln!(
            "torture worker {} (pid {}): VIOLATION: {what}",
            self.id,
            std::process::id()
        );
    }

    fn payload_value(&mut self) -> Vec<u8> {
        let max = self.payload as u64;
        let len = if self.rng.below(2) == 0 {
            16 + self.rng.below(48.min(max - 15))
        } else {
            16 + self.rng.below(max - 15)
        };
        make_payload(self.rng.next(), len as usize)
    }

    /// Reads the payload and checks it is whole and not older than the last one seen.
    fn check_payload(&mut self) {
        let h = self.w.header();
        match self.lt.payload_with_generation() {
            Ok((bytes, generation)) => {
                h.payload_reads.fetch_add(1, Relaxed);
                if !payload_is_whole(&bytes) {
                    self.violation(
                        &h.torn_payloads,
                        &format!("torn payload of {} bytes", bytes.len()),
                    );
                }
                if generation < self.last_generation {
                    self.violation(
                        &h.rollbacks,
                        &format!(
                            "payload generation went back from {} to {generation}",
                            self.last_generation
                        ),
                    );
                }
                self.last_generation = generation;
            }
            Err(e) => self.error("payload", e),
        }
    }

    fn cycle(&mut self) {
        let h = self.w.header();
        let free = self.rng.below(100);
        if (4..12).contains(&free) {
            // A payload read with no token, racing every writer.
            self.check_payload();
            return;
        }
        if free < 4 {
            // A payload write with no token: concurrent writers, serialised by the library.
            let v = self.payload_value();
            self.me.phase.store(P_FREE_WRITE, SeqCst);
            match self.lt.set_payload(&v) {
                Ok(()) => {
                    h.free_writes.fetch_add(1, Relaxed);
                }
                Err(e) => self.error("set_payload", e),
            }
            self.me.phase.store(P_IDLE, SeqCst);
            return;
        }
        let exclusive = self.rng.below(100) < 70;
        let how = self.rng.below(100);
        let blocking = how < 60;
        let r = h.seq.fetch_add(1, SeqCst) + 1;
        let mut flags = REQ_PENDING;
        if exclusive {
            flags |= REQ_EXCLUSIVE;
        }
        if blocking {
            flags |= REQ_BLOCKING;
        }
        self.me.req.store((r << REQ_SHIFT) | flags, SeqCst);
        self.me.phase.store(P_REQUESTING, SeqCst);
        let t0 = Instant::now();
        let lt = self.lt;
        let got = if blocking {
            if exclusive {
                lt.token_lock().map(Some)
            } else {
                lt.token_lock_shared().map(Some)
            }
        } else if how < 85 {
            let d = Duration::from_micros(self.rng.below(5000));
            if exclusive {
                lt.token_lock_timeout(d)
            } else {
                lt.token_lock_shared_timeout(d)
            }
        } else if exclusive {
            lt.try_token_lock()
        } else {
            lt.try_token_lock_shared()
        };
        // Cleared before the token is released (the FIFO check relies on it).
        self.me.req.store(0, SeqCst);
        match got {
            Ok(Some(g)) => {
                let waited = t0.elapsed().as_nanos() as u64;
                self.me.max_wait_ns.fetch_max(waited, Relaxed);
                h.grants.fetch_add(1, SeqCst);
                self.me.cycles.fetch_add(1, Relaxed);
                if g.previous_holder_died() {
                    h.died_reports.fetch_add(1, Relaxed);
                }
                self.check_fifo(r, exclusive);
                if exclusive {
                    self.exclusive_section();
                } else {
                    self.shared_section();
                }
                self.me.phase.store(P_RELEASING, SeqCst);
                if let Err(e) = g.unlock() {
                    self.error("unlock", e);
                }
            }
            Ok(None) => {
                self.me.gave_up.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.error("token request", e);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.me.phase.store(P_IDLE, SeqCst);
    }

    /// Under a token granted to request `r`: no live worker whose blocking request was
    /// certainly queued before `r` started, and conflicts with ours, may still be waiting.
    fn check_fifo(&self, r: u64, exclusive: bool) {
        let h = self.w.header();
        for (id, rec) in self.w.active() {
            if id == self.id {
                continue;
            }
            let req = rec.req.load(SeqCst);
            let delta = (req >> DELTA_SHIFT) & DELTA_MASK;
            if req & REQ_PENDING == 0 || req & REQ_BLOCKING == 0 || delta == 0 {
                continue;
            }
            let ra = req >> REQ_SHIFT;
            let a_exclusive = req & REQ_EXCLUSIVE != 0;
            if !(exclusive || a_exclusive) {
                continue;
            }
            let bound = h.bound_ns.load(Relaxed);
            if bound != 0 && !self.over_bound(rec, bound) {
                continue; // bounded: going ahead of a request within the bound is allowed
            }
            h.fifo_checks.fetch_add(1, Relaxed);
            if ra + delta < r && rec.life.load(SeqCst) == ALIVE {
                self.violation(
                    &h.fifo_violations,
                    &format!(
                        "granted request {r} ({}) while worker {id}'s {} request {ra}, \
                         queued before {}, still waits",
                        if exclusive { "exclusive" } else { "shared" },
                        if a_exclusive { "exclusive" } else { "shared" },
                        ra + delta
                    ),
                );
            }
        }
    }

    /// Bounded tables: worker `rec`'s certified request has waited longer than the bound plus
    /// [`BOUNDED_SLACK`] by now, with no worker stopped, continued or killed since it was
    /// certified (a stopped process may have been the head, or the request itself between
    /// its claim and its wait). Nobody may then go ahead of it: the promise is that once the
    /// head runs nobody goes ahead of it (issue 21), and a request that waited that long with
    /// nothing stopped has been run by the scheduler long ago (and a request certified before
    /// ours was queued before we asked).
    fn over_bound(&self, rec: &Record, bound: u64) -> bool {
        let h = self.w.header();
        let cert = rec.cert_ns.load(SeqCst);
        let now = now_ns();
        cert != 0
            && h.stopped_now.load(SeqCst) == 0
            && h.disturbed_ns.load(SeqCst) < cert
            && now.saturating_sub(cert) > bound + BOUNDED_SLACK.as_nanos() as u64
    }

    fn exclusive_section(&mut self) {
        let h = self.w.header();
        self.me.phase.store(P_EXCLUSIVE, SeqCst);
        let mut ok = true;
        // Who holds? Only a dead worker's id may be left there.
        let stale = h.holder.load(SeqCst);
        if stale != 0 {
            ok &= self.repair_stale_holder(stale);
        }
        if h.holder
            .compare_exchange(0, self.id, SeqCst, SeqCst)
            .is_err()
        {
            ok = false;
        }
        // No live reader inside.
        for (id, rec) in self.w.active() {
            if id != self.id && rec.reading.load(SeqCst) != 0 && !confirmed_dead(rec) {
                ok = false;
            }
        }
        // The non-atomic increment, with the books kept for a death at any instruction.
        let v = h.counter.load(Relaxed);
        let done = self.me.done.load(SeqCst) & !1;
        self.me.intent.store(v + 1, SeqCst);
        self.me.done.store(done | 1, SeqCst);
        if self.rng.below(4) == 0 {
            std::thread::yield_now();
        } else {
            for _ in 0..self.rng.below(64) {
                std::hint::spin_loop();
            }
        }
        h.counter.store(v + 1, Relaxed);
        let what = self.rng.below(100);
        if what < 30 {
            let v = self.payload_value();
            self.me.phase.store(P_WRITE, SeqCst);
            match self.lt.set_payload(&v) {
                Ok(()) => {
                    h.payload_writes.fetch_add(1, Relaxed);
                }
                Err(e) => self.error("set_payload", e),
            }
            self.me.phase.store(P_EXCLUSIVE, SeqCst);
        } else if what < 45 {
            self.check_payload();
        } else if what < 47 {
            if let Err(e) = certify(self.w, self.lt) {
                self.error("status", e);
            }
        } else if what < 52 {
            self.me.phase.store(P_DAWDLE, SeqCst);
            std::thread::sleep(Duration::from_micros(self.rng.below(300)));
            self.me.phase.store(P_EXCLUSIVE, SeqCst);
        }
        if h.holder.load(SeqCst) != self.id {
            ok = false;
        }
        self.me.done.store(done + 2, SeqCst);
        self.me.exclusive.fetch_add(1, Relaxed);
        if h.holder
            .compare_exchange(self.id, 0, SeqCst, SeqCst)
            .is_err()
        {
            ok = false;
        }
        if !ok {
            self.violation(
                &h.mutex_violations,
                "another live process was inside the exclusive section",
            );
        }
    }

    /// The "who holds" word names `stale`, not us: excused (and the books repaired) only if
    /// that worker is dead. Returns false for a violation.
    fn repair_stale_holder(&self, stale: u64) -> bool {
        let h = self.w.header();
        let Some(rec) = self.w.by_id(stale) else {
            return false; // garbage: nobody writes that
        };
        if !confirmed_dead(rec) {
            return false;
        }
        settle_dead_section(h, rec);
        h.stale_holders.fetch_add(1, SeqCst);
        h.holder.compare_exchange(stale, 0, SeqCst, SeqCst).is_ok()
    }

    fn shared_section(&mut self) {
        let h = self.w.header();
        self.me.phase.store(P_SHARED, SeqCst);
        self.me.reading.store(1, SeqCst);
        let holder = h.holder.load(SeqCst);
        if holder != 0 && !self.w.by_id(holder).is_some_and(confirmed_dead) {
            self.violation(
                &h.mutex_violations,
                &format!("shared token granted while worker {holder} is in its exclusive section"),
            );
        }
        let inside = self
            .w
            .active()
            .filter(|(_, r)| r.reading.load(SeqCst) != 0)
            .count() as u64;
        h.max_overlap.fetch_max(inside, Relaxed);
        self.check_payload();
        self.me.shared.fetch_add(1, Relaxed);
        self.me.reading.store(0, SeqCst);
    }
}

/// Accounts for the open section of a dead worker (the counter store may or may not have
/// landed); nobody else touches the counter meanwhile (we hold the token, or all are dead).
fn settle_dead_section(h: &Header, rec: &Record) {
    let done = rec.done.load(SeqCst);
    if done & 1 == 0 {
        return;
    }
    let intent = rec.intent.load(SeqCst);
    let c = h.counter.load(Relaxed);
    if c == intent {
        h.landed.fetch_add(1, SeqCst);
    } else if c.wrapping_add(1) != intent {
        h.counter_mismatches.fetch_add(1, SeqCst);
        eprintln!("torture: VIOLATION: counter {c}, a dead worker's open section meant {intent}");
    }
    rec.done.store(done & !1, SeqCst);
}

// ---------------------------------------------------------------------------------------------
// The supervisor.

struct Slot {
    child: Option<Child>,
    record: usize,
    /// SIGSTOPped: since when (seen stopped), and when to SIGCONT it.
    stall: Option<(Instant, Instant)>,
}

struct Supervisor<'a> {
    o: &'a Options,
    w: &'a Witness,
    name: String,
    witness_path: PathBuf,
    seed: u64,
    exe: PathBuf,
    slots: Vec<Slot>,
    next_record: usize,
    kills: u64,
    kills_by_phase: [u64; PHASES.len()],
    /// Stalls that landed (the worker was seen stopped), by its phase then.
    stalls: u64,
    stalls_by_phase: [u64; PHASES.len()],
    /// SIGSTOPs the worker did not obey within [`STOP_BOUND`] (it was continued at once).
    stalls_missed: u64,
    /// Times the stall schedule fell 50 ms behind and its backlog was dropped.
    stalls_dropped: u64,
    /// Stopped workers SIGKILLed (a kill ends a stall too).
    killed_stopped: u64,
    max_stopped_together: u64,
    max_stall: Duration,
    stalled_total: Duration,
    crashes: u64,
    out_of_records: bool,
}

impl Supervisor<'_> {
    /// Starts a worker in slot `i` with a fresh record.
    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        if self.next_record >= self.w.records {
            self.out_of_records = true;
            self.w.header().active[i].store(0, SeqCst);
            self.slots[i].child = None;
            return Ok(());
        }
        let record = self.next_record;
        self.next_record += 1;
        let rec = self.w.rec(record);
        rec.phase.store(P_STARTING, SeqCst);
        rec.life.store(ALIVE, SeqCst);
        self.w.header().active[i].store(record as u64 + 1, SeqCst);
        let child = Command::new(&self.exe)
            .arg("--worker")
            .arg(record.to_string())
            .arg("--name")
            .arg(&self.name)
            .arg("--witness")
            .arg(&self.witness_path)
            .arg("--seed")
            .arg(self.seed.to_string())
            .arg("--payload")
            .arg(self.o.payload.to_string())
            .stdin(Stdio::null())
            .spawn()?;
        rec.pid.store(u64::from(child.id()), SeqCst);
        self.slots[i] = Slot {
            child: Some(child),
            record,
            stall: None,
        };
        Ok(())
    }

    /// SIGKILLs the worker in slot `i` and reaps it. Returns the phase it died in. A stopped
    /// worker dies too (SIGKILL needs no SIGCONT); its stall ends here.
    fn kill(&mut self, i: usize) -> Option<u64> {
        let slot = &mut self.slots[i];
        let mut child = slot.child.take()?;
        let record = slot.record;
        let was_stopped = slot.stall.take();
        if let Some((at, _)) = was_stopped {
            self.killed_stopped += 1;
            let len = at.elapsed();
            self.max_stall = self.max_stall.max(len);
            self.stalled_total += len;
        }
        // A kill is no disturbance for the bounded check (a dead request is not checked, and
        // a dead head is reclaimed: nobody may then go ahead of an over-bound waiter either);
        // the end of a stall is.
        if was_stopped.is_some() {
            self.disturb(-1);
        }
        let rec = self.w.rec(record);
        rec.life.store(KILLING, SeqCst);
        let _ = child.kill();
        let _ = child.wait();
        rec.life.store(DEAD, SeqCst);
        Some(rec.phase.load(SeqCst))
    }

    /// True while some worker is SIGSTOPped.
    fn any_stopped(&self) -> bool {
        self.slots.iter().any(|s| s.stall.is_some())
    }

    /// Slots with a running worker that is not stopped.
    fn stallable(&self, i: usize) -> bool {
        self.slots[i].child.is_some() && self.slots[i].stall.is_none()
    }

    /// SIGSTOPs the worker in slot `i` for `d`, from the moment `/proc` shows it stopped.
    /// Returns its phase then, or `None` if it did not stop within [`STOP_BOUND`] (it is then
    /// continued at once). A stall shorter than [`STALL_INLINE`] is timed and ended here;
    /// a longer one by [`resume_due`](Self::resume_due).
    fn stall(&mut self, i: usize, d: Duration) -> Option<u64> {
        if !self.stallable(i) {
            return None;
        }
        let slot = &self.slots[i];
        let pid = slot.child.as_ref()?.id();
        let rec = self.w.rec(slot.record);
        // The child is not reaped before `kill` or `reap_exited`, so `pid` is still ours.
        let target = Pid::from_raw(pid as i32);
        self.disturb(1);
        signal::kill(target, Signal::SIGSTOP).ok()?;
        let asked = Instant::now();
        loop {
            match proc_state(u64::from(pid)) {
                Some(b'T' | b't') => break,
                None | Some(b'Z' | b'X') => {
                    self.disturb(-1);
                    return None; // exited on its own: reap_exited's
                }
                _ => {}
            }
            if asked.elapsed() > STOP_BOUND {
                let _ = signal::kill(target, Signal::SIGCONT);
                self.disturb(-1);
                self.stalls_missed += 1;
                return None;
            }
            std::thread::yield_now();
        }
        let at = Instant::now();
        let phase = rec.phase.load(SeqCst);
        self.slots[i].stall = Some((at, at + d));
        let stopped = self.slots.iter().filter(|s| s.stall.is_some()).count() as u64;
        self.max_stopped_together = self.max_stopped_together.max(stopped);
        if d < STALL_INLINE {
            while at.elapsed() < d {
                std::hint::spin_loop();
            }
            self.resume(i);
        }
        Some(phase)
    }

    /// SIGCONTs the worker in slot `i` if it is stopped.
    fn resume(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some((at, _)) = slot.stall.take() else {
            return;
        };
        if let Some(c) = slot.child.as_ref() {
            let _ = signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        self.disturb(-1);
        let len = at.elapsed();
        self.max_stall = self.max_stall.max(len);
        self.stalled_total += len;
    }

    /// Notes a stop (+1) or the end of one (-1) for the bounded wait check.
    fn disturb(&self, stopped: i64) {
        let h = self.w.header();
        h.disturbed_ns.fetch_max(now_ns(), SeqCst);
        match stopped {
            1 => {
                h.stopped_now.fetch_add(1, SeqCst);
            }
            _ => {
                h.stopped_now.fetch_sub(1, SeqCst);
            }
        }
        h.disturbed_ns.fetch_max(now_ns(), SeqCst);
    }

    /// Continues the stalls that are due; returns when the next one is.
    fn resume_due(&mut self, now: Instant) -> Option<Instant> {
        for i in 0..self.slots.len() {
            if self.slots[i].stall.is_some_and(|(_, until)| until <= now) {
                self.resume(i);
            }
        }
        self.slots
            .iter()
            .filter_map(|s| s.stall.map(|(_, u)| u))
            .min()
    }

    /// Continues every stopped worker, and checks none still shows as stopped (bounded).
    /// Returns how many are left stopped (a failure: never expected).
    fn resume_all(&mut self) -> u64 {
        for i in 0..self.slots.len() {
            self.resume(i);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let stopped: Vec<u32> = self
                .slots
                .iter()
                .filter_map(|s| s.child.as_ref().map(Child::id))
                .filter(|&pid| matches!(proc_state(u64::from(pid)), Some(b'T' | b't')))
                .collect();
            if stopped.is_empty() {
                return 0;
            }
            if Instant::now() >= deadline {
                eprintln!("torture: workers still stopped after SIGCONT: {stopped:?}");
                return stopped.len() as u64;
            }
            for &pid in &stopped {
                let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reaps workers that exited on their own (a crash while the run goes on).
    fn reap_exited(&mut self) -> std::io::Result<()> {
        for i in 0..self.slots.len() {
            let exited = match self.slots[i].child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                let rec = self.w.rec(self.slots[i].record);
                rec.life.store(EXITED, SeqCst);
                self.slots[i].child = None;
                self.slots[i].stall = None;
                self.crashes += 1;
                eprintln!(
                    "torture: worker {} (pid {}) exited on its own: {status}",
                    self.slots[i].record + 1,
                    rec.pid.load(SeqCst)
                );
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// True when a request that started before sequence number `mark` is still pending.
    fn waiting_since(&self, mark: u64) -> bool {
        self.w.active().any(|(_, r)| {
            let req = r.req.load(SeqCst);
            req & REQ_PENDING != 0 && req >> REQ_SHIFT < mark && r.life.load(SeqCst) == ALIVE
        })
    }

    /// Stops every worker: SIGCONT for the stopped ones, the stop flag, then SIGKILL for
    /// those not gone within 10 s. Returns the stragglers and the workers that stayed stopped.
    fn stop_all(&mut self) -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let left_stopped = self.resume_all();
        self.w.header().stop.store(1, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut running = 0;
            for slot in &mut self.slots {
                if let Some(c) = slot.child.as_mut() {
                    if c.try_wait()?.is_some() {
                        self.w.rec(slot.record).life.store(EXITED, SeqCst);
                        slot.child = None;
                    } else {
                        running += 1;
                    }
                }
            }
            if running == 0 {
                return Ok((0, left_stopped));
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stragglers = 0;
        for i in 0..self.slots.len() {
            if let Some(phase) = self.kill(i) {
                stragglers += 1;
                eprintln!(
                    "torture: worker {} did not stop within 10 s ({})",
                    self.slots[i].record + 1,
                    PHASES[phase as usize % PHASES.len()]
                );
            }
        }
        Ok((stragglers, left_stopped))
    }
}

fn supervise(o: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let seed = o
        .seed
        .unwrap_or_else(|| now_ns() ^ (u64::from(pid) << 32) ^ 0x5eed);
    eprintln!(
        "torture: procs={} seconds={} kill_rate={} stall_rate={} ring={} payload={} fairness={} \
         seed={seed}",
        o.procs, o.seconds, o.kill_rate, o.stall_rate, o.ring, o.payload, o.fairness
    );
    let mut rng = Rng::new(seed);
    let name = format!("torture-{pid}");
    let lt = LockTicket::builder(&name)
        .ring_capacity(o.ring)
        .payload_capacity(o.payload)
        .fairness(o.fairness)
        .open()?;
    let owner = lt.main_lock(Share::Shared)?;
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let witness_path = dir.join(format!("lockticket-torture-{pid}.witness"));
    // Enough records for every replacement the kill rate can ask for, with a wide margin.
    let records = o.procs + (o.seconds * o.kill_rate * 2.0) as usize + 64;
    let w = Witness::create(&witness_path, records)?;
    let h = w.header();
    h.bound_ns.store(
        match o.fairness {
            Fairness::Strict => 0,
            Fairness::Bounded(d) => d.as_nanos().max(1) as u64,
        },
        SeqCst,
    );
    let mut sup = Supervisor {
        o: &o,
        w: &w,
        name,
        witness_path: witness_path.clone(),
        seed,
        exe: std::env::current_exe()?,
        slots: (0..o.procs)
            .map(|_| Slot {
                child: None,
                record: 0,
                stall: None,
            })
            .collect(),
        next_record: 0,
        kills: 0,
        kills_by_phase: [0; PHASES.len()],
        stalls: 0,
        stalls_by_phase: [0; PHASES.len()],
        stalls_missed: 0,
        stalls_dropped: 0,
        killed_stopped: 0,
        max_stopped_together: 0,
        max_stall: Duration::ZERO,
        stalled_total: Duration::ZERO,
        crashes: 0,
        out_of_records: false,
    };
    // The stalls' choices come from a stream of their own, so that a seed repeats the kills'
    // choices whatever the stall rate.
    let mut stall_rng = Rng::new(seed ^ 0x57a1_1000_57a1_1000);
    // The repairer: `repair` (what `lockticket repair` does, from a handle of its own) at
    // random moments while everything else runs. The table is never corrupt, so every call
    // must find nothing to do (issue 17: a repair that judged a moving ring broke exclusion).
    let repairing = AtomicBool::new(true);
    let repairs = RepairCounts::default();
    let outcome = std::thread::scope(|scope| {
        if o.repair_rate > 0.0 {
            let (name, repairing, repairs) = (sup.name.clone(), &repairing, &repairs);
            let mut rng = Rng::new(seed ^ 0x4e9a_14e9_a14e_9a14);
            scope.spawn(move || repairer(&name, o.repair_rate, &mut rng, repairing, repairs));
        }
        let outcome = run(&mut sup, &lt, &mut rng, &mut stall_rng);
        repairing.store(false, SeqCst);
        outcome
    });
    // Whatever happened, no worker survives the supervisor's run, and none stays stopped.
    let stragglers = sup.stop_all();
    let (stuck, max_grant_gap, max_holder_reclaim, stragglers, left_stopped) =
        match (outcome, stragglers) {
            (Ok((a, b, c)), Ok((s, l))) => (a, b, c, s, l),
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_file(&witness_path);
                return Err(e);
            }
        };

    // The books: a stale "who holds" word names a worker killed inside its section.
    let stale = h.holder.load(SeqCst);
    if stale != 0 {
        match w.by_id(stale) {
            Some(rec) if confirmed_dead(rec) => {
                settle_dead_section(h, rec);
                h.stale_holders.fetch_add(1, SeqCst);
                h.holder.store(0, SeqCst);
            }
            _ => {
                h.mutex_violations.fetch_add(1, SeqCst);
            }
        }
    }
    let used = sup.next_record;
    let sum = |f: fn(&Record) -> u64| (0..used).map(|i| f(w.rec(i))).sum::<u64>();
    let completed = sum(|r| r.done.load(SeqCst) >> 1);
    let counter = h.counter.load(SeqCst);
    let landed = h.landed.load(SeqCst);
    let mismatches = h.counter_mismatches.load(SeqCst);
    let counter_ok = counter == completed + landed && mismatches == 0;
    if counter != completed + landed {
        eprintln!(
            "torture: VIOLATION: counter {counter} != completed {completed} + landed {landed}"
        );
    }
    let max_wait_ns = (0..used)
        .map(|i| w.rec(i).max_wait_ns.load(SeqCst))
        .max()
        .unwrap_or(0);
    let st = lt.status()?;
    let leftover = st
        .holders
        .iter()
        .chain(&st.queue)
        .filter(|t| t.alive)
        .count();
    if leftover != 0 {
        eprintln!("torture: live requests left in the table after the run:\n{st}");
    }
    let reclaims = st.reclaimed_slots;
    let path = lt.path().to_path_buf();
    owner.unlock()?;
    let table_removed = !path.exists();
    drop(lt);
    std::fs::remove_file(&witness_path)?;

    let v = |a: &AtomicU64| a.load(SeqCst);
    let mutex = v(&h.mutex_violations);
    let fifo = v(&h.fifo_violations);
    let torn = v(&h.torn_payloads);
    let rollbacks = v(&h.rollbacks);
    let lib_errors = v(&h.lib_errors);
    let cycles = v(&h.grants);
    let mut failures = Vec::new();
    for (bad, what) in [
        (mutex != 0, "mutex_violations"),
        (fifo != 0, "fifo_violations"),
        (torn != 0, "torn_payloads"),
        (rollbacks != 0, "rollbacks"),
        (stuck != 0, "stuck_intervals"),
        (!counter_ok, "counter"),
        (lib_errors != 0, "lib_errors"),
        (sup.crashes != 0, "crashes"),
        (stragglers != 0, "stragglers"),
        (left_stopped != 0, "left_stopped"),
        (leftover != 0, "live_requests_left"),
        (v(&repairs.rebuilt) != 0, "repair_rebuilt_a_healthy_table"),
        (v(&repairs.errors) != 0, "repair_errors"),
        (!table_removed, "table_not_removed"),
    ] {
        if bad {
            failures.push(what);
        }
    }
    let phases: Vec<String> = PHASES
        .iter()
        .zip(sup.kills_by_phase)
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    eprintln!("torture: kills by phase: {}", phases.join(" "));
    let phases: Vec<String> = PHASES
        .iter()
        .zip(sup.stalls_by_phase)
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    eprintln!("torture: stalls by phase: {}", phases.join(" "));
    eprintln!(
        "torture: stalls: landed={} missed={} backlog_dropped={} killed_while_stopped={} \
         max_stopped_together={} \
         max_stall_ms={:.1} stopped_total_s={:.1} left_stopped={left_stopped}",
        sup.stalls,
        sup.stalls_missed,
        sup.stalls_dropped,
        sup.killed_stopped,
        sup.max_stopped_together,
        sup.max_stall.as_secs_f64() * 1e3,
        sup.stalled_total.as_secs_f64()
    );
    print_lib_errors(h);
    if o.repair_rate > 0.0 {
        eprintln!(
            "torture: repairs: calls={} rebuilt={} errors={}",
            v(&repairs.calls),
            v(&repairs.rebuilt),
            v(&repairs.errors)
        );
    }
    eprintln!(
        "torture: detail: exclusive={} shared={} gave_up={} payload_writes={} free_writes={} \
         payload_reads={} max_readers_together={} died_reports={} stale_holders={} landed={} \
         counter={counter} certificates={} fifo_checks={} rollbacks={rollbacks} \
         lib_errors={lib_errors} crashes={} stragglers={stragglers} workers_started={used} \
         max_grant_gap_ms={:.1} max_holder_kill_to_next_grant_ms={:.1}{} result={}",
        sum(|r| r.exclusive.load(SeqCst)),
        sum(|r| r.shared.load(SeqCst)),
        sum(|r| r.gave_up.load(SeqCst)),
        v(&h.payload_writes),
        v(&h.free_writes),
        v(&h.payload_reads),
        v(&h.max_overlap),
        v(&h.died_reports),
        v(&h.stale_holders),
        landed,
        v(&h.certificates),
        v(&h.fifo_checks),
        sup.crashes,
        max_grant_gap.as_secs_f64() * 1e3,
        max_holder_reclaim.as_secs_f64() * 1e3,
        if sup.out_of_records {
            " (record space ran out: later kills were not replaced)"
        } else {
            ""
        },
        if failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL({})", failures.join(","))
        }
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "torture: procs={} seconds={} cycles={cycles} kills={} stalls={} reclaims={reclaims} \
         max_wait_ms={:.1} mutex_violations={mutex} fifo_violations={fifo} torn_payloads={torn} \
         stuck_intervals={stuck} counter_ok={counter_ok} lib_errors={lib_errors} seed={seed} \
         result={}",
        o.procs,
        o.seconds,
        sup.kills,
        sup.stalls,
        max_wait_ns as f64 / 1e6,
        if failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL({})", failures.join(","))
        }
    )?;
    out.flush()?;
    Ok(failures.is_empty())
}

/// What the repairer saw.
#[derive(Default)]
struct RepairCounts {
    calls: AtomicU64,
    rebuilt: AtomicU64,
    errors: AtomicU64,
}

/// Calls `repair` on table `name` at exponentially distributed moments (mean `1 / rate`)
/// while `running`; a rebuild or an error is a failure (the table is never corrupt).
fn repairer(name: &str, rate: f64, rng: &mut Rng, running: &AtomicBool, n: &RepairCounts) {
    let lt = match LockTicket::open(name) {
        Ok(lt) => lt,
        Err(e) => {
            eprintln!("torture: repairer: {e}");
            n.errors.fetch_add(1, SeqCst);
            return;
        }
    };
    while running.load(SeqCst) {
        // Pacing, not synchronisation.
        std::thread::sleep(poisson_delay(rng, rate).min(Duration::from_secs(1)));
        n.calls.fetch_add(1, SeqCst);
        match lt.repair() {
            Ok(None) => {}
            Ok(Some(r)) => {
                eprintln!("torture: VIOLATION: repair rebuilt a healthy table: {r}");
                n.rebuilt.fetch_add(1, SeqCst);
            }
            Err(e) => {
                eprintln!("torture: repair failed: {e}");
                n.errors.fetch_add(1, SeqCst);
            }
        }
    }
}

/// Picks a worker slot whose worker is in one of `phases` (watching for up to 5 ms when
/// `watch`), or any slot when `phases` is empty or nobody is found; only slots that `ok`
/// accepts. `None` when no slot is acceptable.
fn pick(
    sup: &Supervisor<'_>,
    rng: &mut Rng,
    phases: &[u64],
    watch: bool,
    ok: impl Fn(&Supervisor<'_>, usize) -> bool,
) -> Option<usize> {
    let h = sup.w.header();
    let any: Vec<usize> = (0..sup.o.procs).filter(|&j| ok(sup, j)).collect();
    if any.is_empty() {
        return None;
    }
    let since = Instant::now();
    while !phases.is_empty() {
        let busy: Vec<usize> = (0..sup.o.procs)
            .filter(|&j| {
                let id = h.active[j].load(SeqCst);
                ok(sup, j)
                    && sup
                        .w
                        .by_id(id)
                        .is_some_and(|r| phases.contains(&r.phase.load(SeqCst)))
            })
            .collect();
        if !busy.is_empty() {
            return Some(busy[rng.below(busy.len() as u64) as usize]);
        }
        if !watch || since.elapsed() > Duration::from_millis(5) {
            break;
        }
        std::thread::yield_now();
    }
    Some(any[rng.below(any.len() as u64) as usize])
}

/// Phases in which a worker holds a token.
const HOLDING: [u64; 5] = [P_EXCLUSIVE, P_SHARED, P_WRITE, P_DAWDLE, P_RELEASING];

/// An exponentially distributed delay of mean `1 / rate`; never for rate 0.
fn poisson_delay(rng: &mut Rng, rate: f64) -> Duration {
    if rate > 0.0 {
        Duration::from_secs_f64(-(1.0 - rng.unit()).ln() / rate)
    } else {
        Duration::MAX
    }
}

/// The supervisor's loop: kills and replacements, stalls, certificates, the stuck detector.
/// Returns the stuck intervals, the longest gap between grants, and the longest time from
/// killing a holder to the next grant.
fn run(
    sup: &mut Supervisor<'_>,
    lt: &LockTicket,
    rng: &mut Rng,
    stall_rng: &mut Rng,
) -> Result<(u64, Duration, Duration), Box<dyn std::error::Error>> {
    let w = sup.w;
    let h = w.header();
    h.start_ns.store(now_ns(), SeqCst);
    for i in 0..sup.o.procs {
        sup.spawn(i)?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(sup.o.seconds);
    let (kill_rate, stall_rate) = (sup.o.kill_rate, sup.o.stall_rate);
    let mut next_kill = start.checked_add(poisson_delay(rng, kill_rate));
    let mut next_stall = start.checked_add(poisson_delay(stall_rng, stall_rate));
    let (lo, hi) = (STALL_MIN.as_secs_f64().ln(), STALL_MAX.as_secs_f64().ln());
    let mut grants = h.grants.load(SeqCst);
    let mut last_grant = Instant::now();
    let mut mark = h.seq.load(SeqCst);
    let mut stuck = 0u64;
    let mut stuck_counted = false;
    let mut last_tick = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut max_reclaim = Duration::ZERO;
    // A killed holder: when, and the grant count then.
    let mut holder_killed: Option<(Instant, u64)> = None;
    let mut status_errors = 0u32;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now.duration_since(last_tick) > Duration::from_millis(100) || sup.any_stopped() {
            // We were not running, or a worker is stopped (it may legitimately hold up
            // everyone behind it): we cannot vouch for the interval. Start a new one.
            last_grant = now;
            mark = h.seq.load(SeqCst);
            stuck_counted = false;
        }
        last_tick = now;

        // Kills, at the chosen moments.
        while let Some(t) = next_kill.filter(|&t| t <= now && t < end) {
            // A third of the kills hit a random worker; a third are aimed at one that holds a
            // token, a third at one writing the payload (watched for up to 5 ms). The victim
            // may have moved on by the time the signal lands: its phase at death says. A
            // stopped worker may be killed too (SIGKILL ends its stall).
            let aim = rng.below(3);
            let phases: &[u64] = match aim {
                1 => &HOLDING,
                2 => &[P_WRITE, P_FREE_WRITE],
                _ => &[],
            };
            let i = pick(sup, rng, phases, aim == 2, |s, j| {
                s.slots[j].child.is_some()
            })
            .unwrap_or(0);
            if let Some(phase) = sup.kill(i) {
                sup.kills += 1;
                sup.kills_by_phase[phase as usize % PHASES.len()] += 1;
                if matches!(phase, P_EXCLUSIVE | P_WRITE | P_DAWDLE | P_RELEASING)
                    && holder_killed.is_none()
                    && !sup.any_stopped()
                {
                    holder_killed = Some((Instant::now(), h.grants.load(SeqCst)));
                }
                sup.spawn(i)?;
            }
            next_kill = t.checked_add(poisson_delay(rng, kill_rate));
        }

        // Stalls: SIGSTOP, a log-uniform wait, SIGCONT. A fifth hit a random worker; the
        // others are aimed at one that holds a token, one that is releasing it (between the
        // phase marker and the end of `unlock`), one waiting for a grant, one writing the
        // payload (all but the first watched for up to 5 ms). Workers already stopped are
        // left alone; several may be stopped at once.
        while let Some(t) = next_stall.filter(|&t| t <= Instant::now() && t < end) {
            // Stalls due end first: with every worker stopped, nothing is left to stall.
            sup.resume_due(Instant::now());
            let aim = stall_rng.below(5);
            let phases: &[u64] = match aim {
                1 => &HOLDING,
                2 => &[P_RELEASING],
                3 => &[P_REQUESTING],
                4 => &[P_WRITE, P_FREE_WRITE],
                _ => &[],
            };
            let d = Duration::from_secs_f64((lo + stall_rng.unit() * (hi - lo)).exp());
            if let Some(i) = pick(sup, stall_rng, phases, aim >= 2, |s, j| s.stallable(j))
                && let Some(phase) = sup.stall(i, d)
            {
                sup.stalls += 1;
                sup.stalls_by_phase[phase as usize % PHASES.len()] += 1;
                // The time from a holder's kill to the next grant now includes a stall.
                holder_killed = None;
            }
            next_stall = t.checked_add(poisson_delay(stall_rng, stall_rate));
            // More stalls asked for than the supervisor can make (each waits for its worker
            // to stop, some watch for a phase): drop the backlog rather than fall behind.
            let now = Instant::now();
            if next_stall.is_some_and(|n| n + Duration::from_millis(50) < now) {
                sup.stalls_dropped += 1;
                next_stall = now.checked_add(poisson_delay(stall_rng, stall_rate));
            }
        }
        let next_resume = sup.resume_due(Instant::now());
        sup.reap_exited()?;

        // Certificates for the FIFO check.
        if let Err(e) = certify(w, lt) {
            status_errors += 1;
            note_lib_error(h, &format!("status: {e}"));
            if status_errors <= 5 {
                eprintln!("torture: status: {e}");
            }
        }

        // Progress.
        let g = h.grants.load(SeqCst);
        let now = Instant::now();
        if let Some((t, g0)) = holder_killed
            && g > g0
        {
            max_reclaim = max_reclaim.max(now.duration_since(t));
            holder_killed = None;
        }
        if g != grants {
            max_gap = max_gap.max(now.duration_since(last_grant));
            grants = g;
            last_grant = now;
            mark = h.seq.load(SeqCst);
            stuck_counted = false;
        } else if !stuck_counted
            && now.duration_since(last_grant) > STUCK
            && sup.waiting_since(mark)
        {
            stuck += 1;
            stuck_counted = true;
            eprintln!(
                "torture: STUCK: no grant for {:?} while requests wait; table:\n{}",
                now.duration_since(last_grant),
                lt.status()
                    .map_or_else(|e| e.to_string(), |s| s.to_string())
            );
        }
        let nap = [next_kill, next_stall, next_resume]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .fold(Duration::from_millis(1), Duration::min);
        std::thread::sleep(nap);
    }
    Ok((stuck, max_gap, max_reclaim))
}
