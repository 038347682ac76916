//! Fuzzes the pure decoder of the payload region: any bytes, any capacity,
//! must give a value within the capacity or an error — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, region)) = data.split_first_chunk::<4>() else {
        return;
    };
    // A capacity in 1..=4096 from the first four bytes.
    let capacity = u64::from(u32::from_le_bytes(*head) % 4096) + 1;
    if let Ok(value) = lockticket::fuzzing::decode(region, capacity) {
        assert!(value.bytes.len() as u64 <= capacity);
    }
});
