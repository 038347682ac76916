//! Arbitrary interleavings of enqueue, grant, release, death, PID reuse and reclaim on the
//! in-memory ring, with the invariants asserted after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockticket::fuzzing::run_bytes(data);
});
