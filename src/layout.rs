//! The file layout of a lock table, and its validation.
//!
//! Everything here is plain data and pure functions: no OS calls, no `unsafe`. The byte-by-byte
//! description lives in `docs/format.md`; the constants below are the source of truth and the
//! compile-time assertions in `region` (header), `ring` (slots) and `members` (registry) tie
//! the in-memory structs to them. Public for tools and tests that read or forge table files;
//! the format is versioned by [`FORMAT_VERSION`].
//!
//! ```text
//! offset            size                      what
//! 0                 4096                      header page (fixed fields, then hot words)
//! RING_OFFSET       ring_capacity * 64        token slots, one cache line each
//! members_offset    member_capacity * 64      main-lock registry, one cache line each
//! procs_offset      proc_capacity * 64        process table (registrations), one line each
//! payload_offset    payload::region_len(cap)  payload region (page aligned, mapped apart)
//! ```

use bytemuck::{Pod, Zeroable};

/// First eight bytes of every lock table.
pub const MAGIC: [u8; 8] = *b"LCKTCKT\0";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// The first format version with a process table (claim words name registrations, not PIDs).
pub const FIRST_VERSION_WITH_PROCESS_TABLE: u32 = 2;
/// The first format version with a fairness mode in the header (and the bypass words).
pub const FIRST_VERSION_WITH_FAIRNESS: u32 = 3;
/// Size of the header page.
pub const HEADER_SIZE: u64 = 4096;
/// Size of one token slot (one cache line).
pub const SLOT_SIZE: u64 = 64;
/// Size of one main-lock registry entry (one cache line).
pub const MEMBER_SIZE: u64 = 64;
/// Size of one process-table entry (one cache line).
pub const PROC_SIZE: u64 = 64;
/// Where the token ring starts.
pub const RING_OFFSET: u64 = HEADER_SIZE;
/// Page size assumed for the payload region's alignment (and its length's multiple).
pub const PAGE: u64 = 4096;
/// Bits of a PID in the words that name a process: a slot's claim word (see `ring`) and the
/// payload's writer lock. Linux PIDs are below `PID_MAX_LIMIT` = 2^22.
pub const PID_BITS: u32 = 22;
/// Bits of a claim word's owner field that hold the registration's index + 1 (0 = unclaimed).
pub const REG_INDEX_BITS: u32 = 16;
/// Bits of a claim word's owner field that hold the low bits of the registration's
/// generation, above the index: enough to tell a reused registration from its previous owner
/// in the few nanoseconds before the full generation is published in the slot.
pub const GEN_FP_BITS: u32 = 15;
const _: () = assert!(REG_INDEX_BITS + GEN_FP_BITS == 31);

/// Smallest accepted ring capacity.
pub const MIN_RING_CAPACITY: u32 = 2;
/// Largest accepted ring capacity (a slot index must fit the lap arithmetic comfortably).
pub const MAX_RING_CAPACITY: u32 = 1 << 16;
/// Default ring capacity: the number of requests that can be queued at once.
pub const DEFAULT_RING_CAPACITY: u32 = 1024;
/// Largest accepted main-lock registry.
pub const MAX_MEMBER_CAPACITY: u32 = 4096;
/// Default size of the main-lock registry.
pub const DEFAULT_MEMBER_CAPACITY: u32 = 1024;
/// Default size of the process table: how many processes can use a table at once.
pub const DEFAULT_PROC_CAPACITY: u32 = 1024;
/// Largest accepted process table (an index + 1 must fit [`REG_INDEX_BITS`]).
pub const MAX_PROC_CAPACITY: u32 = 32768;
const _: () = assert!(MAX_PROC_CAPACITY < 1 << REG_INDEX_BITS);
/// Default payload capacity in bytes.
pub const DEFAULT_PAYLOAD_CAPACITY: u64 = 4096;
/// Largest accepted payload capacity in bytes.
pub const MAX_PAYLOAD_CAPACITY: u64 = 16 << 20;

/// `main_mode` value: the table was created by an exclusive main lock.
pub const MAIN_EXCLUSIVE: u32 = 1;
/// `main_mode` value: the table was created by a shared main lock.
pub const MAIN_SHARED: u32 = 2;

/// `fairness` value: strict FIFO (the default).
pub const FAIRNESS_STRICT: u32 = 1;
/// `fairness` value: bounded bypass (see `Fairness::Bounded`); `bound_us` holds the bound.
pub const FAIRNESS_BOUNDED: u32 = 2;

/// The fixed part of the header (offset 0, 136 bytes), written once at creation.
///
/// All integers are in the machine's native byte order: a table is shared by the processes
/// of one machine only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FixedHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// [`HEADER_SIZE`].
    pub header_size: u32,
    /// Total file size in bytes.
    pub file_size: u64,
    /// Offset of the token ring ([`RING_OFFSET`]).
    pub ring_offset: u64,
    /// Number of token slots, a power of two.
    pub ring_capacity: u32,
    /// [`SLOT_SIZE`].
    pub slot_size: u32,
    /// Offset of the main-lock registry.
    pub members_offset: u64,
    /// Number of registry entries.
    pub member_capacity: u32,
    /// [`MEMBER_SIZE`].
    pub member_size: u32,
    /// Offset of the payload region (page aligned).
    pub payload_offset: u64,
    /// Payload capacity in bytes.
    pub payload_capacity: u64,
    /// Length of the payload region in bytes (page multiple).
    pub payload_region_len: u64,
    /// File mode requested at creation (permission bits).
    pub permissions: u32,
    /// [`MAIN_EXCLUSIVE`] or [`MAIN_SHARED`].
    pub main_mode: u32,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// A random value drawn at creation; tells incarnations at one path apart.
    pub nonce: u64,
    /// Offset of the process table (version 2).
    pub procs_offset: u64,
    /// Number of process-table entries (version 2).
    pub proc_capacity: u32,
    /// [`PROC_SIZE`] (version 2).
    pub proc_size: u32,
    /// [`FAIRNESS_STRICT`] or [`FAIRNESS_BOUNDED`] (version 3).
    pub fairness: u32,
    /// The bypass bound in microseconds: 0 for strict, at least 1 for bounded (version 3).
    pub bound_us: u32,
    /// FNV-1a 64 over the 128 bytes before this field.
    pub checksum: u64,
}

/// Size of [`FixedHeader`] in bytes.
pub const FIXED_HEADER_SIZE: usize = core::mem::size_of::<FixedHeader>();
const _: () = assert!(FIXED_HEADER_SIZE == 136);

/// Offsets of the mutable header words (each on its own pair of cache lines).
pub mod hot {
    /// `u32`: non-zero once the last owner has retired the table (about to unlink it).
    pub const RETIRED: u64 = 136;
    /// `u32`: non-zero once a user found the table's path no longer naming this file while
    /// it was not retired: 1 removed, 2 replaced by another file (anything else: removed).
    pub const REMOVED: u64 = 140;
    /// `u64`: a hint of the next ticket to hand out (never beyond it; see `ring`).
    pub const TAIL: u64 = 256;
    /// `u64`: oldest ticket not yet released.
    pub const HEAD: u64 = 384;
    /// `u64`: ticket + 1 of a holder that died holding, until the next holder takes note.
    pub const DEAD_HOLDER: u64 = 512;
    /// `u64`: number of slots reclaimed from dead processes.
    pub const RECLAIMED: u64 = 520;
    /// `u64`: number of times the ring was rebuilt after it was found inconsistent (zero in
    /// every table that never needed it, so tables of this format from before it was
    /// counted read correctly).
    pub const REPAIRS: u64 = 528;
    /// `u64`: the last fencing token handed out (zero in tables of this format from before
    /// fencing tokens existed, which then start from 1).
    pub const FENCE: u64 = 536;
    /// `u32`: the bypass word of a bounded table: 0, or the owner field of the process that
    /// holds the token ahead of the queue (index + 1, generation bits), bit 31 once it has
    /// entered (see `ring::bypass`).
    pub const BYPASS: u64 = 640;
    /// `u32`: non-zero when a granted request sleeps until the bypass word is cleared.
    pub const BYPASS_WAITERS: u64 = 644;
    /// `u64`: the thread tag of the bypass holder (tells a thread that asks again).
    pub const BYPASS_THREAD: u64 = 648;
    /// `u64`: number of grants ahead of the queue.
    pub const BYPASSES: u64 = 656;
}

/// The sizes a table is created with; validated on every open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Token slots (a power of two).
    pub ring_capacity: u32,
    /// Main-lock registry entries.
    pub member_capacity: u32,
    /// Process-table entries.
    pub proc_capacity: u32,
    /// Payload bytes.
    pub payload_capacity: u64,
    /// Payload region length (page multiple).
    pub payload_region_len: u64,
}

impl Geometry {
    /// Offset of the registry.
    pub fn members_offset(&self) -> u64 {
        RING_OFFSET + u64::from(self.ring_capacity) * SLOT_SIZE
    }
    /// Offset of the process table.
    pub fn procs_offset(&self) -> u64 {
        self.members_offset() + u64::from(self.member_capacity) * MEMBER_SIZE
    }
    /// Offset of the payload region (page aligned).
    pub fn payload_offset(&self) -> u64 {
        self.lock_len().div_ceil(PAGE) * PAGE
    }
    /// Length of the part mapped for locking (header, ring, registry, process table).
    pub fn lock_len(&self) -> u64 {
        self.procs_offset() + u64::from(self.proc_capacity) * PROC_SIZE
    }
    /// Total file size.
    pub fn file_size(&self) -> u64 {
        self.payload_offset() + self.payload_region_len
    }
}

/// What is wrong with the bytes at a table path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("file is empty")]
    Empty,
    /// Some bytes, but not a whole header.
    #[error("file is truncated: {len} bytes, a header needs {HEADER_SIZE}")]
    Truncated {
        /// Bytes present.
        len: u64,
    },
    /// Not our magic: some other file.
    #[error("not a lock table: a {len}-byte file that does not start with the table magic")]
    BadMagic {
        /// The first eight bytes (zero-padded when the file is shorter).
        found: [u8; 8],
        /// The file's size.
        len: u64,
    },
    /// Written by a newer lockticket.
    #[error("format version {found} is newer than the supported version {FORMAT_VERSION}")]
    NewerVersion {
        /// The version in the file.
        found: u32,
    },
    /// An older, unknown version (there is none before 1).
    #[error("unknown format version {found}")]
    UnknownVersion {
        /// The version in the file.
        found: u32,
    },
    /// Written by an older lockticket whose format this build no longer speaks.
    #[error(
        "format version {found} was written by an older lockticket (version 1: before 0.2, \
         which names processes by PID; version 2: before fairness modes); this build reads \
         version {FORMAT_VERSION} only: stop the processes of the old version, then remove the \
         file (`lockticket clean`, or rm) and let the new version create it (see \
         docs/migration.md)"
    )]
    OldVersion {
        /// The version in the file.
        found: u32,
    },
    /// The header checksum does not match: garbage or a torn creation.
    #[error("header checksum mismatch")]
    Checksum,
    /// A field holds a value this format never writes.
    #[error("bad header field {field}: {value}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The file's size disagrees with the header.
    #[error("file size {actual} does not match the header's {expected}")]
    SizeMismatch {
        /// Size in the header.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
}

/// FNV-1a 64-bit hash (small, dependency-free, good enough to catch garbage).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Builds the fixed header of a new table.
pub fn new_header(
    geometry: Geometry,
    permissions: u32,
    main_mode: u32,
    fairness: (u32, u32),
    created_ns: u64,
    nonce: u64,
) -> FixedHeader {
    let mut h = FixedHeader {
        magic: MAGIC,
        version: FORMAT_VERSION,
        header_size: HEADER_SIZE as u32,
        file_size: geometry.file_size(),
        ring_offset: RING_OFFSET,
        ring_capacity: geometry.ring_capacity,
        slot_size: SLOT_SIZE as u32,
        members_offset: geometry.members_offset(),
        member_capacity: geometry.member_capacity,
        member_size: MEMBER_SIZE as u32,
        payload_offset: geometry.payload_offset(),
        payload_capacity: geometry.payload_capacity,
        payload_region_len: geometry.payload_region_len,
        permissions,
        main_mode,
        created_ns,
        nonce,
        procs_offset: geometry.procs_offset(),
        proc_capacity: geometry.proc_capacity,
        proc_size: PROC_SIZE as u32,
        fairness: fairness.0,
        bound_us: fairness.1,
        checksum: 0,
    };
    h.checksum = header_checksum(&h);
    h
}

fn header_checksum(h: &FixedHeader) -> u64 {
    let bytes = bytemuck::bytes_of(h);
    fnv1a(&bytes[..FIXED_HEADER_SIZE - 8])
}

/// Validates the first bytes of a table file of `file_len` bytes.
///
/// A pure function over bytes: it is the fuzz target `header`. `bytes` may be shorter than a
/// header (then the file is empty or truncated); `region_len` computes the payload region
/// length for a capacity, so that a header cannot name a region the payload code would
/// misread.
pub fn validate_header(
    bytes: &[u8],
    file_len: u64,
    region_len: impl Fn(u64) -> u64,
) -> Result<(FixedHeader, Geometry), HeaderError> {
    if file_len == 0 || bytes.is_empty() {
        return Err(HeaderError::Empty);
    }
    // What the file is comes first: a file that is not a table is never called a broken one.
    let mut found = [0u8; 8];
    let head = &bytes[..bytes.len().min(8)];
    found[..head.len()].copy_from_slice(head);
    if found != MAGIC {
        return Err(HeaderError::BadMagic {
            found,
            len: file_len,
        });
    }
    if file_len < HEADER_SIZE || bytes.len() < FIXED_HEADER_SIZE {
        return Err(HeaderError::Truncated { len: file_len });
    }
    let h: FixedHeader = bytemuck::pod_read_unaligned(&bytes[..FIXED_HEADER_SIZE]);
    if h.version > FORMAT_VERSION {
        return Err(HeaderError::NewerVersion { found: h.version });
    }
    if (1..FORMAT_VERSION).contains(&h.version) {
        return Err(HeaderError::OldVersion { found: h.version });
    }
    if h.version != FORMAT_VERSION {
        return Err(HeaderError::UnknownVersion { found: h.version });
    }
    if header_checksum(&h) != h.checksum {
        return Err(HeaderError::Checksum);
    }
    let bad = |field, value: u64| Err(HeaderError::BadField { field, value });
    if u64::from(h.header_size) != HEADER_SIZE {
        return bad("header_size", h.header_size.into());
    }
    if h.ring_offset != RING_OFFSET {
        return bad("ring_offset", h.ring_offset);
    }
    if u64::from(h.slot_size) != SLOT_SIZE {
        return bad("slot_size", h.slot_size.into());
    }
    if u64::from(h.member_size) != MEMBER_SIZE {
        return bad("member_size", h.member_size.into());
    }
    let cap = h.ring_capacity;
    if !cap.is_power_of_two() || !(MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&cap) {
        return bad("ring_capacity", cap.into());
    }
    if h.member_capacity == 0 || h.member_capacity > MAX_MEMBER_CAPACITY {
        return bad("member_capacity", h.member_capacity.into());
    }
    if h.payload_capacity == 0 || h.payload_capacity > MAX_PAYLOAD_CAPACITY {
        return bad("payload_capacity", h.payload_capacity);
    }
    if h.payload_region_len != region_len(h.payload_capacity) {
        return bad("payload_region_len", h.payload_region_len);
    }
    if h.main_mode != MAIN_EXCLUSIVE && h.main_mode != MAIN_SHARED {
        return bad("main_mode", h.main_mode.into());
    }
    if h.permissions & !0o7777 != 0 {
        return bad("permissions", h.permissions.into());
    }
    if u64::from(h.proc_size) != PROC_SIZE {
        return bad("proc_size", h.proc_size.into());
    }
    if h.proc_capacity == 0 || h.proc_capacity > MAX_PROC_CAPACITY {
        return bad("proc_capacity", h.proc_capacity.into());
    }
    match (h.fairness, h.bound_us) {
        (FAIRNESS_STRICT, 0) => {}
        (FAIRNESS_BOUNDED, b) if b > 0 => {}
        (FAIRNESS_STRICT | FAIRNESS_BOUNDED, b) => return bad("bound_us", b.into()),
        (f, _) => return bad("fairness", f.into()),
    }
    let g = Geometry {
        ring_capacity: cap,
        member_capacity: h.member_capacity,
        proc_capacity: h.proc_capacity,
        payload_capacity: h.payload_capacity,
        payload_region_len: h.payload_region_len,
    };
    if h.members_offset != g.members_offset() {
        return bad("members_offset", h.members_offset);
    }
    if h.procs_offset != g.procs_offset() {
        return bad("procs_offset", h.procs_offset);
    }
    if h.payload_offset != g.payload_offset() {
        return bad("payload_offset", h.payload_offset);
    }
    if h.file_size != g.file_size() {
        return bad("file_size", h.file_size);
    }
    if file_len != h.file_size {
        return Err(HeaderError::SizeMismatch {
            expected: h.file_size,
            actual: file_len,
        });
    }
    Ok((h, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_len(cap: u64) -> u64 {
        (cap * 2 + 4096).div_ceil(PAGE) * PAGE
    }

    fn geometry() -> Geometry {
        Geometry {
            ring_capacity: 8,
            member_capacity: 4,
            proc_capacity: 16,
            payload_capacity: 100,
            payload_region_len: region_len(100),
        }
    }

    fn header_bytes(h: &FixedHeader) -> Vec<u8> {
        let mut v = bytemuck::bytes_of(h).to_vec();
        v.resize(HEADER_SIZE as usize, 0);
        v
    }

    #[test]
    fn a_fresh_header_validates() {
        let g = geometry();
        let h = new_header(g, 0o600, MAIN_SHARED, (FAIRNESS_STRICT, 0), 1, 2);
        let (back, g2) = validate_header(&header_bytes(&h), g.file_size(), region_len).unwrap();
        assert_eq!(back, h);
        assert_eq!(g2, g);
        assert_eq!(g.payload_offset() % PAGE, 0);
    }

    #[test]
    fn bad_bytes_give_the_right_error() {
        let g = geometry();
        let h = new_header(g, 0o600, MAIN_SHARED, (FAIRNESS_STRICT, 0), 1, 2);
        let good = header_bytes(&h);
        let size = g.file_size();
        assert_eq!(validate_header(&[], 0, region_len), Err(HeaderError::Empty));
        assert!(matches!(
            validate_header(&good[..10], 10, region_len),
            Err(HeaderError::Truncated { len: 10 })
        ));
        let mut garbage = good.clone();
        garbage[0] = b'X';
        assert!(matches!(
            validate_header(&garbage, size, region_len),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut newer = h;
        newer.version = 7;
        assert_eq!(
            validate_header(&header_bytes(&newer), size, region_len),
            Err(HeaderError::NewerVersion { found: 7 })
        );
        let mut flipped = good.clone();
        flipped[33] ^= 1;
        assert_eq!(
            validate_header(&flipped, size, region_len),
            Err(HeaderError::Checksum)
        );
        assert!(matches!(
            validate_header(&good, size + 1, region_len),
            Err(HeaderError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn a_consistent_but_hostile_header_is_refused() {
        let mut g = geometry();
        g.ring_capacity = 6; // not a power of two
        let h = new_header(g, 0o600, MAIN_SHARED, (FAIRNESS_STRICT, 0), 1, 2);
        assert!(matches!(
            validate_header(&header_bytes(&h), g.file_size(), region_len),
            Err(HeaderError::BadField {
                field: "ring_capacity",
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), len in 0u64..1 << 40) {
            let _ = validate_header(&bytes, len, region_len);
        }
    }
}
