//! Cross-crate integration tests live under `tests/`; this library holds their shared harness.
