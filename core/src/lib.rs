//! Pure ledger logic: ids and domain types, hashing (SPEC §7), the sparse-Merkle state tree,
//! and the deterministic apply of transactions to a scope. No I/O, no async, no clock.

pub mod constants;
pub mod error;
pub mod hash;
pub mod hash_lanes;
pub mod rows;
pub mod smt;
#[cfg(any(test, feature = "test-support"))]
pub mod smt_check;
pub mod state;
pub mod types;
pub mod validate;
pub mod verify;

pub use error::{ProofError, ValidationError};
