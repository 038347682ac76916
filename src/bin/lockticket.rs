//! The `lockticket` command (work in progress).
fn main() {}
