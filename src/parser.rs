//! Helpers for line-oriented DSLs.
