//! The payload region: a small byte value handed between processes.
//!
//! The region is a page-aligned part of the table file, mapped on its own
//! (`MAP_SHARED`). Writers are serialised by a lock word in the region that
//! names the writer (`Payload::with_writer`; a dead writer's lock is taken
//! over); readers take no lock at all and never see a torn
//! value: a double buffer plus a sequence word lets a reader detect that the
//! buffer it copied may have been overwritten, and retry.
//!
//! # Layout
//!
//! All integers are `u64` in **native** byte order (the file never leaves the
//! machine) and every field is 8-byte aligned; every block starts on a 64-byte
//! cache line. `C` is the capacity in bytes (`0 < C <= 16 MiB`) fixed at
//! creation and known to every process from the table header; it is not
//! stored in the region. `S = round_up(C, 64)` is the data stride.
//!
//! | offset                | size | field                                                    |
//! |-----------------------|------|----------------------------------------------------------|
//! | 0                     | 8    | `seq`: the sequence word (see below)                     |
//! | 8                     | 8    | `writer`: writer lock, 0 = free, else start time << 22 \| PID |
//! | 16                    | 48   | reserved, zero                                           |
//! | 64 + b·(64+S)         | 8    | buffer `b` (0 or 1): `generation` of the value           |
//! | 64 + b·(64+S) + 8     | 8    | buffer `b`: `length` of the value in bytes (`<= C`)      |
//! | 64 + b·(64+S) + 16    | 8    | buffer `b`: `checksum` (see below)                       |
//! | 64 + b·(64+S) + 24    | 40   | buffer `b`: reserved, zero                               |
//! | 64 + b·(64+S) + 64    | S    | buffer `b`: data; bytes `[0, length)` are the value      |
//! | 64 + 2·(64+S)         | …    | padding, up to [`region_len`]`(C)`, a multiple of 4096   |
//!
//! So buffer 0 starts at byte 64, buffer 1 at byte `128 + S`, and the bytes
//! actually used end at `192 + 2·S`.
//!
//! **Sequence word.** `seq` counts half-steps of writes: a writer makes it odd
//! (`2k → 2k+1`) before touching the spare buffer and even again
//! (`2k+1 → 2k+2`) to publish. The published buffer is `(seq >> 1) & 1`,
//! so one atomic store both switches the current buffer and bumps the
//! sequence: no (sequence, index) pair can ever be seen half-updated, and
//! there is no index that could be out of range. An odd `seq` left behind by
//! a writer that died mid-write is harmless: the published buffer is still
//! `(seq >> 1) & 1` and the next writer reuses the spare buffer. Every
//! counter wraps (`wrapping_add`); the parity rule holds across the wrap.
//!
//! **Checksum.** A 64-bit word-at-a-time hash in four independent lanes (so
//! the CPU overlaps their multiplies). With `mix(h, w) = rotl((h ^ w) · K, 31)`,
//! `K = 0x9E37_79B9_7F4A_7C15`: lane 0 starts as `mix(0, generation)`, lane 1
//! as `mix(0, length)`, lanes 2 and 3 as 0; data word `i` (8-byte native-endian
//! words, the last one zero-padded) is mixed into lane `i % 4`; the result is
//! the MurmurHash3 `fmix64` finaliser of
//! `lane0 ^ rotl(lane1, 16) ^ rotl(lane2, 32) ^ rotl(lane3, 48)`.
//! Each step is a bijection of its lane and of its word, so any change
//! confined to one word (in particular any single flipped bit or byte) is
//! always detected. `checksum(0, 0, []) == 0`, so an **all-zero region is
//! valid**: it holds the empty value at generation 0 (a freshly created tmpfs
//! file needs no initialisation).
//!
//! # Protocol
//!
//! Writer (holding the writer lock): load `seq = v` (Acquire); the current
//! buffer is `c = (v >> 1) & 1`, the spare is `1 - c`; store `v | 1`
//! (Release) if `v` is even; release fence; store the spare buffer's header
//! (`generation = generation[c] + 1`, length, checksum) and data with relaxed
//! atomic stores; store `(v | 1) + 1` (Release) — the publication.
//!
//! Reader (no lock): load `seq = v1` (Acquire); copy the header and data of
//! buffer `(v1 >> 1) & 1`; acquire fence; load `seq = v2`. That buffer is
//! only rewritten by the writer that moves `seq` to `(v1 & !1) + 3`, so the
//! copy is whole if `v2 - (v1 & !1) <= 2` (wrapping); otherwise retry
//! (bounded, then [`PayloadError::Busy`]). A whole copy whose length exceeds
//! `C` or whose checksum does not match is corruption
//! ([`PayloadError::Corrupt`]), since only a process writing outside the
//! protocol can produce it.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use crossbeam_utils::Backoff;

use crate::layout::{MAX_PAYLOAD_CAPACITY, PAGE};
use crate::liveness::{Liveness, Owner, Registration};

/// A cache line: the control block and the buffer headers each take one.
const LINE: u64 = 64;
/// Bytes of the control block (the `seq` word plus reserved space).
const CONTROL_LEN: u64 = LINE;
/// Bytes of a buffer header (generation, length, checksum, reserved).
const HEADER_LEN: u64 = LINE;
/// Offset of the `seq` word in the region.
const OFF_SEQ: u64 = 0;
/// Offset of the writer-lock word: 0 = free, else the writer's identity (see
/// [`writer_identity`]).
const OFF_WRITER: u64 = 8;
/// Offsets of the header fields inside a buffer.
const OFF_GENERATION: u64 = 0;
const OFF_LENGTH: u64 = 8;
const OFF_CHECKSUM: u64 = 16;
/// A reader gives up with [`PayloadError::Busy`] after this many attempts.
const MAX_READ_ATTEMPTS: u32 = 1000;

/// Multiplier of the checksum's mixing step (2^64 / golden ratio, odd).
const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The payload writer-lock value naming registration `me`: its generation above its index
/// + 1 — a whole registration in one word (never 0), judged like a claim word's owner.
pub(crate) fn writer_identity(me: Registration) -> u64 {
    me.word()
}

fn writer_owner(word: u64) -> Owner {
    Owner::full(
        ((word as u32).wrapping_sub(1)) & 0x7fff_ffff,
        (word >> 32) as u32,
    )
}

/// A complete value read from (or decoded out of) the payload region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadValue {
    /// The value's bytes (at most the capacity).
    pub bytes: Vec<u8>,
    /// Number of values published up to and including this one (0 for the
    /// initial empty value); wraps around.
    pub generation: u64,
}

/// Errors of the payload region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The value does not fit the capacity fixed at creation; nothing was
    /// changed.
    #[error("payload of {len} bytes exceeds the table's payload capacity of {capacity} bytes")]
    TooLarge {
        /// Length of the rejected value.
        len: u64,
        /// The region's capacity.
        capacity: u64,
    },
    /// Writers kept replacing the value while a reader copied it.
    #[error("payload kept changing during {attempts} read attempts; try again")]
    Busy {
        /// How many copies were attempted.
        attempts: u32,
    },
    /// The region holds bytes no correct writer produces.
    #[error("payload region is corrupt: {0}")]
    Corrupt(String),
    /// A region snapshot is shorter than the layout for its capacity (only `decode`).
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    #[error(
        "payload region snapshot of {len} bytes is shorter than the {needed} bytes its layout needs"
    )]
    Truncated {
        /// Length of the snapshot.
        len: u64,
        /// Bytes the layout for the capacity needs.
        needed: u64,
    },
    /// A capacity outside `1..=MAX_PAYLOAD_CAPACITY`.
    #[error("invalid payload capacity {0} (must be between 1 and {max} bytes)", max = MAX_PAYLOAD_CAPACITY)]
    InvalidCapacity(u64),
}

/// `x` rounded up to a multiple of `to` (a power of two), saturating.
const fn round_up(x: u64, to: u64) -> u64 {
    x.saturating_add(to - 1) & !(to - 1)
}

/// Bytes reserved for the data of each buffer.
const fn data_stride(capacity: u64) -> u64 {
    round_up(capacity, LINE)
}

/// Offset of buffer `index` (0 or 1) from the start of the region.
const fn buffer_offset(capacity: u64, index: u64) -> u64 {
    CONTROL_LEN + index * (HEADER_LEN + data_stride(capacity))
}

/// Bytes of the region the layout actually uses (before page padding).
const fn used_len(capacity: u64) -> u64 {
    CONTROL_LEN
        .saturating_add(2u64.saturating_mul(HEADER_LEN.saturating_add(data_stride(capacity))))
}

/// Size in bytes of the payload region for `capacity` payload bytes: a
/// multiple of 4096. Meaningful for capacities in `1..=MAX_PAYLOAD_CAPACITY` (check
/// them first with the table header's validation); saturates beyond.
pub const fn region_len(capacity: u64) -> u64 {
    round_up(used_len(capacity), PAGE)
}

/// `Ok` if `capacity` is in `1..=MAX_PAYLOAD_CAPACITY`.
pub(crate) fn validate_capacity(capacity: u64) -> Result<(), PayloadError> {
    if capacity == 0 || capacity > MAX_PAYLOAD_CAPACITY {
        Err(PayloadError::InvalidCapacity(capacity))
    } else {
        Ok(())
    }
}

/// Index of the published buffer for a sequence word.
#[inline]
const fn current_index(seq: u64) -> u64 {
    (seq >> 1) & 1
}

/// Whether the buffer chosen by `before` cannot have been rewritten if the
/// sequence word read `after` once the copy was done.
#[inline]
const fn buffer_stable(before: u64, after: u64) -> bool {
    after.wrapping_sub(before & !1) <= 2
}

/// One mixing step of the checksum; a bijection in both `h` and `w`.
#[inline]
const fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(HASH_K).rotate_left(31)
}

/// MurmurHash3's 64-bit finaliser (a bijection with `fmix64(0) == 0`).
#[inline]
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h
}

/// The checksum of a value (see the module documentation).
fn checksum(generation: u64, data: &[u8]) -> u64 {
    let word = |chunk: &[u8]| {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        u64::from_ne_bytes(w)
    };
    let mut lanes = [mix(0, generation), mix(0, data.len() as u64), 0, 0];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (lane, chunk) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = mix(*lane, word(chunk));
        }
    }
    for (lane, chunk) in lanes.iter_mut().zip(blocks.remainder().chunks(8)) {
        *lane = mix(*lane, word(chunk));
    }
    fmix64(
        lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48),
    )
}

/// A buffer header as copied out of the region.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Which buffer it came from (0 or 1), for messages.
    index: u64,
    generation: u64,
    length: u64,
    checksum: u64,
}

/// The header's length as a `usize` if it fits the capacity. Shared by
/// [`decode`] and [`Payload::read`].
fn check_length(header: &Header, capacity: u64) -> Result<usize, PayloadError> {
    if header.length > capacity {
        return Err(PayloadError::Corrupt(format!(
            "buffer {} claims a length of {} bytes, more than the capacity of {} bytes",
            header.index, header.length, capacity
        )));
    }
    usize::try_from(header.length).map_err(|_| {
        PayloadError::Corrupt(format!(
            "buffer {} length {} does not fit in memory",
            header.index, header.length
        ))
    })
}

/// Verifies a whole copy (header plus `header.length` data bytes) and turns
/// it into a value. Shared by [`decode`] and [`Payload::read`].
fn finish(header: Header, data: Vec<u8>) -> Result<PayloadValue, PayloadError> {
    if data.len() as u64 != header.length {
        return Err(PayloadError::Corrupt(format!(
            "buffer {}: copied {} data bytes for a length of {}",
            header.index,
            data.len(),
            header.length
        )));
    }
    let computed = checksum(header.generation, &data);
    if computed != header.checksum {
        return Err(PayloadError::Corrupt(format!(
            "buffer {} checksum mismatch (generation {}, length {}): stored {:#018x}, computed {:#018x}",
            header.index, header.generation, header.length, header.checksum, computed
        )));
    }
    Ok(PayloadValue {
        bytes: data,
        generation: header.generation,
    })
}

/// Reads the native-endian `u64` at `offset` of a snapshot, if in bounds.
#[cfg(any(test, fuzzing))]
fn snapshot_u64(region: &[u8], offset: u64) -> Result<u64, PayloadError> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| region.get(start..start.checked_add(8)?))
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_ne_bytes)
        .ok_or_else(|| {
            PayloadError::Corrupt(format!("offset {offset} lies outside the region snapshot"))
        })
}

/// Decodes a byte snapshot of a payload region with capacity `capacity`:
/// a pure function, validating everything (the fuzz target). `region` may be
/// longer than the layout needs (e.g. the page-padded region); it must hold
/// at least the bytes used by both buffers.
#[cfg(any(test, fuzzing))]
pub fn decode(region: &[u8], capacity: u64) -> Result<PayloadValue, PayloadError> {
    validate_capacity(capacity)?;
    let needed = used_len(capacity);
    if (region.len() as u64) < needed {
        return Err(PayloadError::Truncated {
            len: region.len() as u64,
            needed,
        });
    }
    let index = current_index(snapshot_u64(region, OFF_SEQ)?);
    let base = buffer_offset(capacity, index);
    let header = Header {
        index,
        generation: snapshot_u64(region, base + OFF_GENERATION)?,
        length: snapshot_u64(region, base + OFF_LENGTH)?,
        checksum: snapshot_u64(region, base + OFF_CHECKSUM)?,
    };
    let len = check_length(&header, capacity)?;
    // `len <= capacity` and `base + HEADER_LEN + capacity <= needed <= region.len()`.
    let data = usize::try_from(base + HEADER_LEN)
        .ok()
        .and_then(|start| region.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            PayloadError::Corrupt(format!(
                "buffer {index} data lies outside the region snapshot"
            ))
        })?;
    finish(header, data.to_vec())
}

/// A view of a mapped payload region, borrowed from whoever owns the mapping: the borrow
/// checker keeps the mapping alive while the view is used.
#[derive(Clone, Copy)]
pub(crate) struct Payload<'a> {
    /// The region as native-endian words; `region_len(capacity) / 8` of them.
    words: &'a [AtomicU64],
    /// Capacity fixed at creation, known locally (never re-read from the
    /// mapping), in `1..=MAX_PAYLOAD_CAPACITY`.
    capacity: u64,
}

impl std::fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("ptr", &self.words.as_ptr())
            .field("len", &(self.words.len() * 8))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<'a> Payload<'a> {
    /// Views `words` as a payload region of `capacity` bytes.
    ///
    /// `words` must be `region_len(capacity)` bytes long and `capacity` in
    /// `1..=MAX_PAYLOAD_CAPACITY`; every access is atomic, so other threads and
    /// processes may use the same memory concurrently (a hostile process
    /// writing garbage causes errors, never UB).
    pub(crate) fn new(words: &'a [AtomicU64], capacity: u64) -> Self {
        debug_assert!(validate_capacity(capacity).is_ok());
        debug_assert_eq!(words.len() as u64 * 8, region_len(capacity));
        Payload { words, capacity }
    }

    /// Capacity in bytes.
    #[allow(dead_code)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The atomic word at byte `offset` of the region.
    ///
    /// Every caller passes an 8-aligned offset computed from the local
    /// capacity and a length already checked against it, so
    /// `offset + 8 <= used_len(capacity) <= len` (and the index is checked
    /// anyway). Atomics rather than `read_volatile`: volatile accesses racing
    /// with writes are still data races (UB) in Rust's memory model, while
    /// relaxed atomic loads/stores of 8-byte words compile to plain `mov`s on
    /// x86-64 and aarch64, and their ordering is fixed by the fences and the
    /// `seq` word's acquire/release operations.
    #[inline]
    fn word(&self, offset: u64) -> &'a AtomicU64 {
        debug_assert!(offset.is_multiple_of(8));
        &self.words[(offset / 8) as usize]
    }

    /// `n` consecutive words from byte `offset` (8-aligned) of the region.
    #[inline]
    fn words(&self, offset: u64, n: usize) -> &'a [AtomicU64] {
        debug_assert!(offset.is_multiple_of(8));
        let start = (offset / 8) as usize;
        &self.words[start..start + n]
    }

    /// The sequence word.
    #[inline]
    fn seq(&self) -> &AtomicU64 {
        self.word(OFF_SEQ)
    }

    /// Copies the header of buffer `index` (relaxed loads).
    #[inline]
    fn load_header(&self, index: u64) -> Header {
        let base = buffer_offset(self.capacity, index);
        Header {
            index,
            generation: self.word(base + OFF_GENERATION).load(Ordering::Relaxed),
            length: self.word(base + OFF_LENGTH).load(Ordering::Relaxed),
            checksum: self.word(base + OFF_CHECKSUM).load(Ordering::Relaxed),
        }
    }

    /// Copies `len <= capacity` data bytes of buffer `index`, 8 bytes at a
    /// time (the last word is read whole: the data stride is a multiple of
    /// 64, so it lies inside the buffer).
    #[inline]
    fn copy_data(&self, index: u64, len: usize) -> Vec<u8> {
        debug_assert!(len as u64 <= self.capacity);
        let base = buffer_offset(self.capacity, index) + HEADER_LEN;
        let mut out = vec![0u8; len];
        let words = self.words(base, len.div_ceil(8));
        let mut chunks = out.chunks_exact_mut(8);
        for (chunk, word) in (&mut chunks).zip(words) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = words[len / 8].load(Ordering::Relaxed).to_ne_bytes();
            tail.copy_from_slice(&w[..tail.len()]);
        }
        out
    }

    /// Resets the region to "empty value, generation 0" — the same state as
    /// an all-zero region. Only for a region nobody else uses yet (creation).
    pub(crate) fn init(&self) {
        for index in 0..2 {
            let base = buffer_offset(self.capacity, index);
            for offset in (0..HEADER_LEN).step_by(8) {
                self.word(base + offset).store(0, Ordering::Relaxed);
            }
        }
        for offset in (8..CONTROL_LEN).step_by(8) {
            self.word(offset).store(0, Ordering::Relaxed);
        }
        self.seq().store(0, Ordering::Release);
    }

    /// Runs `f` as the only writer of the region.
    ///
    /// Writers take the lock word by CAS with their identity `me` (see
    /// [`writer_identity`]): threads of one process and other processes are
    /// serialised alike, in ~10 ns when uncontended. A writer that died holding
    /// it (killed mid-write) is recognised by `liveness` and its lock is taken
    /// over — the value it was writing was never published.
    pub(crate) fn with_writer<T>(
        &self,
        me: u64,
        liveness: &impl Liveness,
        f: impl FnOnce(&Self) -> T,
    ) -> T {
        let lock = self.word(OFF_WRITER);
        let backoff = Backoff::new();
        loop {
            let owner = match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(owner) => owner,
            };
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            // Held for long: a live writer is slow (or stopped); a dead one never lets go.
            if !liveness.is_alive(writer_owner(owner)) {
                let _ = lock.compare_exchange(owner, 0, Ordering::Relaxed, Ordering::Relaxed);
                continue;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let out = f(self);
        lock.store(0, Ordering::Release);
        out
    }

    /// Publishes `value` and returns its generation.
    ///
    /// The caller must hold the writer lock (writers are not serialised
    /// here). A value longer than the capacity returns
    /// [`PayloadError::TooLarge`] and changes nothing. A writer that dies at
    /// any point leaves the previous value readable.
    pub(crate) fn write(&self, value: &[u8]) -> Result<u64, PayloadError> {
        let len = value.len() as u64;
        if len > self.capacity {
            return Err(PayloadError::TooLarge {
                len,
                capacity: self.capacity,
            });
        }
        let seq = self.seq();
        // Acquire: the previous writer's buffer stores happen-before our
        // release store below, hence before any reader that loads it.
        let v = seq.load(Ordering::Acquire);
        let current = current_index(v);
        let spare = current ^ 1;
        let generation = self.load_header(current).generation.wrapping_add(1);
        let started = v | 1;
        if v != started {
            // Announce the write (readers of the current buffer are not
            // affected; readers of the spare one will see seq move by 3).
            seq.store(started, Ordering::Release);
        }
        // Orders the announcement before every store into the spare buffer:
        // a reader whose loads see any of them sees `seq >= started` after
        // its acquire fence.
        fence(Ordering::Release);

        let base = buffer_offset(self.capacity, spare);
        self.word(base + OFF_GENERATION)
            .store(generation, Ordering::Relaxed);
        self.word(base + OFF_LENGTH).store(len, Ordering::Relaxed);
        self.word(base + OFF_CHECKSUM)
            .store(checksum(generation, value), Ordering::Relaxed);
        let words = self.words(base + HEADER_LEN, value.len().div_ceil(8));
        let mut chunks = value.chunks_exact(8);
        for (chunk, word) in (&mut chunks).zip(words) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut w = [0u8; 8];
            w[..tail.len()].copy_from_slice(tail);
            words[value.len() / 8].store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }

        // Publication: switches the current buffer and bumps the sequence in
        // one store; everything above happens-before a reader's acquire load
        // of it.
        seq.store(started.wrapping_add(1), Ordering::Release);
        Ok(generation)
    }

    /// Reads the current value without any lock. Retries (bounded) while
    /// writers replace it; returns [`PayloadError::Busy`] if it never got a
    /// whole copy and [`PayloadError::Corrupt`] if a whole copy is invalid.
    pub(crate) fn read(&self) -> Result<PayloadValue, PayloadError> {
        let seq = self.seq();
        let backoff = Backoff::new();
        for _ in 0..MAX_READ_ATTEMPTS {
            let before = seq.load(Ordering::Acquire);
            let header = self.load_header(current_index(before));
            let length = check_length(&header, self.capacity);
            let data = match length {
                Ok(len) => self.copy_data(header.index, len),
                Err(_) => Vec::new(),
            };
            // If any load above saw a store of a writer that rewrites this
            // buffer, that writer's release fence synchronises with this
            // fence and the load below sees its announcement (or later).
            fence(Ordering::Acquire);
            let after = seq.load(Ordering::Relaxed);
            if !buffer_stable(before, after) {
                backoff.snooze();
                continue;
            }
            return length.and_then(|_| finish(header, data));
        }
        Err(PayloadError::Busy {
            attempts: MAX_READ_ATTEMPTS,
        })
    }

    /// Length and generation of the current value, best effort (no retry,
    /// no checksum; the length is whatever the header says, possibly more
    /// than the capacity in a corrupt file). For status displays.
    pub(crate) fn meta(&self) -> (u64, u64) {
        let v = self.seq().load(Ordering::Acquire);
        let header = self.load_header(current_index(v));
        (header.length, header.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A zeroed heap region standing in for the mapping.
    struct Region {
        words: Vec<AtomicU64>,
        capacity: u64,
    }

    impl Region {
        fn new(capacity: u64) -> Self {
            let len = region_len(capacity) as usize;
            Region {
                words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
                capacity,
            }
        }

        fn payload(&self) -> Payload<'_> {
            Payload::new(&self.words, self.capacity)
        }

        /// A copy of the region's bytes (no concurrent writers in callers).
        fn snapshot(&self) -> Vec<u8> {
            self.words
                .iter()
                .flat_map(|w| w.load(Ordering::Relaxed).to_ne_bytes())
                .collect()
        }

        fn put_u64(&self, offset: u64, value: u64) {
            self.payload().word(offset).store(value, Ordering::Relaxed);
        }

        fn get_u64(&self, offset: u64) -> u64 {
            self.payload().word(offset).load(Ordering::Relaxed)
        }

        fn current(&self) -> u64 {
            current_index(self.get_u64(OFF_SEQ))
        }
    }

    fn value_of(r: &Region) -> PayloadValue {
        r.payload().read().expect("read")
    }

    #[test]
    fn region_len_is_page_multiple_and_fits_layout() {
        for cap in [
            1,
            7,
            63,
            64,
            65,
            1000,
            4096,
            64 * 1024,
            MAX_PAYLOAD_CAPACITY,
        ] {
            let len = region_len(cap);
            assert_eq!(len % 4096, 0, "cap {cap}");
            assert!(len >= used_len(cap));
            assert!(buffer_offset(cap, 1) + HEADER_LEN + data_stride(cap) <= len);
        }
        assert_eq!(region_len(64), 4096);
        assert_eq!(region_len(1), 4096);
    }

    #[test]
    fn zero_region_reads_empty_generation_zero() {
        let r = Region::new(100);
        assert_eq!(
            value_of(&r),
            PayloadValue {
                bytes: vec![],
                generation: 0
            }
        );
        assert_eq!(r.payload().meta(), (0, 0));
        assert_eq!(checksum(0, &[]), 0);
        let zeros = vec![0u8; region_len(100) as usize];
        assert_eq!(decode(&zeros, 100).unwrap().generation, 0);
    }

    #[test]
    fn init_resets_to_empty() {
        let r = Region::new(100);
        r.payload().write(b"hello").unwrap();
        r.payload().write(b"world").unwrap();
        r.payload().init();
        assert_eq!(value_of(&r).bytes, b"");
        assert_eq!(value_of(&r).generation, 0);
        assert_eq!(r.payload().write(b"x").unwrap(), 1);
    }

    #[test]
    fn round_trips_empty_small_and_full() {
        for cap in [1u64, 8, 13, 64, 100, 4096] {
            let r = Region::new(cap);
            let full: Vec<u8> = (0..cap).map(|i| (i * 7 + 3) as u8).collect();
            let small: Vec<u8> = full.iter().copied().take(5).collect();
            for v in [&[][..], &small[..], &full[..], &[][..]] {
                let generation = r.payload().write(v).unwrap();
                let got = value_of(&r);
                assert_eq!(got.bytes, v, "cap {cap}");
                assert_eq!(got.generation, generation);
                assert_eq!(decode(&r.snapshot(), cap).unwrap(), got);
                assert_eq!(r.payload().meta(), (v.len() as u64, generation));
            }
        }
    }

    #[test]
    fn every_length_round_trips() {
        let r = Region::new(80);
        for len in 0..=80usize {
            let v: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0xA5).collect();
            r.payload().write(&v).unwrap();
            assert_eq!(value_of(&r).bytes, v);
        }
    }

    #[test]
    fn oversize_is_rejected_and_changes_nothing() {
        let r = Region::new(16);
        r.payload().write(b"keep me").unwrap();
        let before = r.snapshot();
        assert_eq!(
            r.payload().write(&[1u8; 17]),
            Err(PayloadError::TooLarge {
                len: 17,
                capacity: 16
            })
        );
        assert_eq!(r.snapshot(), before);
        assert_eq!(value_of(&r).bytes, b"keep me");
        assert_eq!(value_of(&r).generation, 1);
    }

    #[test]
    fn generations_increase() {
        let r = Region::new(32);
        for expect in 1..=10u64 {
            assert_eq!(r.payload().write(&expect.to_ne_bytes()).unwrap(), expect);
            assert_eq!(value_of(&r).generation, expect);
        }
    }

    #[test]
    fn generation_and_sequence_wrap() {
        let r = Region::new(32);
        // Sequence just before the wrap, current buffer 1 holding a valid
        // value at generation u64::MAX.
        let seq = u64::MAX - 1;
        r.put_u64(OFF_SEQ, seq);
        let base = buffer_offset(32, current_index(seq));
        r.put_u64(base + OFF_GENERATION, u64::MAX);
        r.put_u64(base + OFF_CHECKSUM, checksum(u64::MAX, &[]));
        assert_eq!(value_of(&r).generation, u64::MAX);
        for (i, expect) in [0u64, 1, 2, 3].into_iter().enumerate() {
            let v = [i as u8; 9];
            assert_eq!(r.payload().write(&v).unwrap(), expect);
            assert_eq!(
                value_of(&r),
                PayloadValue {
                    bytes: v.to_vec(),
                    generation: expect
                }
            );
        }
        // The sequence word wrapped through zero and kept alternating.
        assert_eq!(r.get_u64(OFF_SEQ), 6);
    }

    #[test]
    fn writer_killed_mid_write_leaves_previous_value() {
        for announce in [false, true] {
            let r = Region::new(64);
            r.payload().write(b"first value").unwrap();
            r.payload().write(b"second value, complete").unwrap();
            let seq = r.get_u64(OFF_SEQ);
            // Simulate a writer dying halfway through the spare buffer:
            // maybe announced, header half written, part of the data.
            if announce {
                r.put_u64(OFF_SEQ, seq | 1);
            }
            let spare = buffer_offset(64, current_index(seq) ^ 1);
            r.put_u64(spare + OFF_GENERATION, 3);
            r.put_u64(spare + OFF_LENGTH, 40);
            for off in (0..24).step_by(8) {
                r.put_u64(spare + HEADER_LEN + off, 0xDEAD_BEEF_DEAD_BEEF);
            }
            let got = value_of(&r);
            assert_eq!(got.bytes, b"second value, complete");
            assert_eq!(got.generation, 2);
            assert_eq!(decode(&r.snapshot(), 64).unwrap(), got);
            // The next writer recovers.
            assert_eq!(r.payload().write(b"third").unwrap(), 3);
            assert_eq!(value_of(&r).bytes, b"third");
            assert_eq!(r.get_u64(OFF_SEQ) & 1, 0);
        }
    }

    #[test]
    fn corruption_is_reported_not_panicked() {
        let r = Region::new(64);
        r.payload().write(b"some bytes here").unwrap();
        let base = buffer_offset(64, r.current());
        // Flipped data byte.
        let w = r.get_u64(base + HEADER_LEN);
        r.put_u64(base + HEADER_LEN, w ^ 0x100);
        assert!(matches!(r.payload().read(), Err(PayloadError::Corrupt(_))));
        assert!(matches!(
            decode(&r.snapshot(), 64),
            Err(PayloadError::Corrupt(_))
        ));
        r.put_u64(base + HEADER_LEN, w);
        assert!(r.payload().read().is_ok());
        // Oversize and absurd lengths.
        for bad in [65, 4096, u64::MAX, 1 << 63] {
            r.put_u64(base + OFF_LENGTH, bad);
            let e = r.payload().read().unwrap_err();
            assert!(
                matches!(&e, PayloadError::Corrupt(m) if m.contains("capacity")),
                "{e}"
            );
            assert_eq!(decode(&r.snapshot(), 64).unwrap_err(), e);
            let (len, _) = r.payload().meta();
            assert_eq!(len, bad);
        }
        // Hostile sequence words only ever select buffer 0 or 1.
        for seq in [u64::MAX, 1 << 63, 12345] {
            r.put_u64(OFF_SEQ, seq);
            let _ = r.payload().read();
            let _ = r.payload().meta();
            let _ = decode(&r.snapshot(), 64);
        }
        // Writers still work afterwards.
        r.payload().write(b"ok").unwrap();
        assert_eq!(value_of(&r).bytes, b"ok");
    }

    #[test]
    fn decode_rejects_short_and_bad_capacity() {
        let zeros = vec![0u8; 8192];
        assert_eq!(decode(&zeros, 0), Err(PayloadError::InvalidCapacity(0)));
        assert_eq!(
            decode(&zeros, MAX_PAYLOAD_CAPACITY + 1),
            Err(PayloadError::InvalidCapacity(MAX_PAYLOAD_CAPACITY + 1))
        );
        let needed = used_len(100);
        assert_eq!(
            decode(&zeros[..needed as usize - 1], 100),
            Err(PayloadError::Truncated {
                len: needed - 1,
                needed
            })
        );
        assert!(decode(&zeros[..needed as usize], 100).is_ok());
        assert!(matches!(
            decode(&[], 1),
            Err(PayloadError::Truncated { .. })
        ));
    }

    #[test]
    fn errors_have_clear_messages() {
        let e = PayloadError::TooLarge {
            len: 10,
            capacity: 4,
        };
        assert_eq!(
            e.to_string(),
            "payload of 10 bytes exceeds the table's payload capacity of 4 bytes"
        );
        assert!(
            PayloadError::InvalidCapacity(0)
                .to_string()
                .contains("16777216")
        );
    }

    /// A self-checking value: 8-byte seed, then bytes derived from it; the
    /// length is derived from the seed too.
    fn make_value(seed: u64, capacity: u64) -> Vec<u8> {
        let len = 8 + (fmix64(seed) % (capacity - 7)) as usize;
        let mut v = seed.to_ne_bytes().to_vec();
        let mut x = seed;
        while v.len() < len {
            x = fmix64(x.wrapping_add(HASH_K));
            v.push(x as u8);
        }
        v
    }

    /// Liveness for the writer-lock tests: registrations below index 100 are alive.
    struct LowPidsAlive;
    impl Liveness for LowPidsAlive {
        fn is_alive(&self, o: Owner) -> bool {
            o.index < 100
        }
    }

    fn reg(index: u32, generation: u32) -> Registration {
        Registration { index, generation }
    }

    #[test]
    fn the_writer_lock_serialises_writers() {
        let r = Region::new(64);
        let counter = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for pid in 1..=3u32 {
                let (r, counter) = (&r, &counter);
                s.spawn(move || {
                    for _ in 0..5000 {
                        r.payload().with_writer(
                            writer_identity(reg(pid, 7)),
                            &LowPidsAlive,
                            |_| {
                                // A non-atomic increment: exact only under mutual exclusion.
                                let v = counter.load(Ordering::Relaxed);
                                std::hint::spin_loop();
                                counter.store(v + 1, Ordering::Relaxed);
                            },
                        );
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 15_000);
        assert_eq!(r.get_u64(OFF_WRITER), 0, "released");
    }

    #[test]
    fn a_dead_writers_lock_is_taken_over() {
        let r = Region::new(64);
        let dead = writer_identity(reg(4000, 12345));
        r.put_u64(OFF_WRITER, dead);
        let g = r
            .payload()
            .with_writer(writer_identity(reg(5, 1)), &LowPidsAlive, |p| {
                p.write(b"after")
            });
        assert_eq!(g, Ok(1));
        assert_eq!(value_of(&r).bytes, b"after");
        assert_eq!(writer_owner(dead), Owner::full(4000, 12345));
    }

    #[test]
    fn concurrent_writers_and_readers_never_see_torn_values() {
        const CAP: u64 = 2048;
        const WRITES: u64 = 20_000;
        /// Bound on each reader's loop (they stop once the writers are done).
        const MAX_READS: u64 = 10_000_000;
        let region = Arc::new(Region::new(CAP));
        let lock = Arc::new(Mutex::new(()));
        let writers_done = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..2u64 {
            let (region, lock, writers_done) = (region.clone(), lock.clone(), writers_done.clone());
            writers.push(std::thread::spawn(move || {
                for i in 0..WRITES {
                    let value = make_value((w << 32) | i, CAP);
                    let _g = lock.lock().unwrap();
                    region.payload().write(&value).unwrap();
                }
                writers_done.fetch_add(1, Ordering::Release);
            }));
        }
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (region, writers_done) = (region.clone(), writers_done.clone());
            readers.push(std::thread::spawn(move || {
                let (mut last_generation, mut whole, mut busy) = (0, 0u64, 0u64);
                for _ in 0..MAX_READS {
                    if writers_done.load(Ordering::Acquire) == 2 {
                        break;
                    }
                    match region.payload().read() {
                        Ok(v) => {
                            assert!(v.generation >= last_generation, "generation went back");
                            last_generation = v.generation;
                            if v.generation == 0 {
                                assert!(v.bytes.is_empty());
                                continue;
                            }
                            let seed = u64::from_ne_bytes(v.bytes[..8].try_into().unwrap());
                            assert_eq!(v.bytes, make_value(seed, CAP), "torn value");
                            whole += 1;
                        }
                        Err(PayloadError::Busy { .. }) => busy += 1,
                        Err(e) => panic!("reader error: {e}"),
                    }
                }
                (whole, busy)
            }));
        }
        for w in writers {
            w.join().unwrap();
        }
        for r in readers {
            let (whole, busy) = r.join().unwrap();
            assert!(
                busy <= whole,
                "readers were mostly busy: {busy} busy, {whole} whole"
            );
        }
        let last = value_of(&region);
        assert_eq!(last.generation, 2 * WRITES);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decode_never_panics(capacity in 0u64..600, bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
                if let Ok(v) = decode(&bytes, capacity) {
                    prop_assert!(v.bytes.len() as u64 <= capacity);
                }
            }

            #[test]
            fn decode_never_panics_on_plausible_regions(
                capacity in 1u64..300,
                seq in any::<u64>(),
                words in proptest::collection::vec(any::<u64>(), 0..12),
                small_len in 0u64..400,
            ) {
                // A region with hostile header words but plausible lengths.
                let mut region = vec![0u8; region_len(capacity) as usize];
                region[..8].copy_from_slice(&seq.to_ne_bytes());
                for (i, w) in words.iter().enumerate() {
                    let b = buffer_offset(capacity, (i as u64 / 3) % 2) + (i as u64 % 3) * 8;
                    let w = if i % 3 == 1 { small_len } else { *w };
                    region[b as usize..b as usize + 8].copy_from_slice(&w.to_ne_bytes());
                }
                if let Ok(v) = decode(&region, capacity) {
                    prop_assert!(v.bytes.len() as u64 <= capacity);
                }
            }

            #[test]
            fn decode_round_trips_writes(
                capacity in 1u64..300,
                values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let r = Region::new(capacity);
                let mut last = PayloadValue { bytes: vec![], generation: 0 };
                for v in &values {
                    match r.payload().write(v) {
                        Ok(g) => last = PayloadValue { bytes: v.clone(), generation: g },
                        Err(e) => prop_assert_eq!(e, PayloadError::TooLarge { len: v.len() as u64, capacity }),
                    }
                    prop_assert_eq!(&r.payload().read().unwrap(), &last);
                }
                let mut snap = r.snapshot();
                prop_assert_eq!(&decode(&snap, capacity).unwrap(), &last);
                // Any flipped bit in the current header's checked fields or
                // value bytes is detected.
                let base = buffer_offset(capacity, r.current()) as usize;
                let mut positions: Vec<usize> = (base..base + 24).collect();
                positions.extend(base + HEADER_LEN as usize..base + HEADER_LEN as usize + last.bytes.len());
                let pos = positions[flip.index(positions.len())];
                snap[pos] ^= 1 << bit;
                prop_assert!(decode(&snap, capacity).is_err());
            }
        }
    }
}
