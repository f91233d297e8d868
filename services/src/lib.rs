//! Lifeline services library.
