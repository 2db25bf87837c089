//! Pure ledger logic: ids and domain types, hashing (SPEC §7), the sparse-Merkle state tree,
//! and the deterministic apply of transactions to a scope. No I/O, no async, no clock.

pub mod types;
