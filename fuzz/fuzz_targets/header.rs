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
    if let Ok((h, g)) = validate_header(bytes, len, lockticket::payload::region_len) {
        assert_eq!(h.magic, layout::MAGIC);
        assert!(g.ring_capacity.is_power_of_two());
        assert_eq!(g.file_size(), len);
        assert!(g.payload_offset() % layout::PAGE == 0);
    }
});
