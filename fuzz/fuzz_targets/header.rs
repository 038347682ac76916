//! The table header validator never panics, and accepts only what it can stand behind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockticket::layout::{self, validate_header};

fuzz_target!(|data: &[u8]| {
    // First 8 bytes: the file length to claim; the rest: the file's first bytes.
    let (len, bytes) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l) % (1 << 40), rest),
        None => (data.len() as u64, data),
    };
    // For odd lengths, give the header a valid magic and checksum, so the fuzzer reaches the
    // checks behind them instead of stopping at the checksum.
    let mut fixed = bytes.to_vec();
    if len % 2 == 1 && fixed.len() >= layout::FIXED_HEADER_SIZE {
        fixed[..8].copy_from_slice(&layout::MAGIC);
        let sum = layout::fnv1a(&fixed[..layout::FIXED_HEADER_SIZE - 8]);
        fixed[layout::FIXED_HEADER_SIZE - 8..layout::FIXED_HEADER_SIZE]
            .copy_from_slice(&sum.to_ne_bytes());
    }
    let bytes = &fixed[..];
    if let Ok((h, g)) = validate_header(bytes, len, lockticket::fuzzing::region_len) {
        assert_eq!(h.magic, layout::MAGIC);
        assert!(g.ring_capacity.is_power_of_two());
        assert_eq!(g.file_size(), len);
        assert!(g.payload_offset() % layout::PAGE == 0);
    }
});
