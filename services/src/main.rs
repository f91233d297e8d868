//! The `lifeline` binary.
fn main() {}
