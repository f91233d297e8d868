//! Placeholder until the policies land.
