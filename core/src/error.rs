//! The error enums of the core crate: request validation (`ValidationError`, mapped by the edge to
//! `InvalidArgument` / `PermissionDenied`) and proof verification (`ProofError`). Domain outcomes of
//! writes (`WriteError`, per-op statuses) are values in `types`, not errors.

use crate::types::Hash;

/// A client request violates SPEC §3.4, §3.6 or §3.7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

/// Why a transaction-inclusion, state or chain proof does not verify (SPEC §7.7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("proof is for a different key")]
    KeyMismatch,
    #[error("proof has {0} siblings, more than 256")]
    TooManySiblings(usize),
    #[error("membership claimed but the proof carries no leaf")]
    MissingLeaf,
    #[error("membership claimed but the leaf belongs to another key")]
    LeafKeyMismatch,
    #[error("leaf value hash does not match the claimed row")]
    ValueMismatch,
    #[error("absence claimed but the proof's leaf is the key itself")]
    KeyPresent,
    #[error("absence claimed but the proof's leaf does not lie on the key's path")]
    LeafOffPath,
    #[error("recomputed root {computed:02x?} differs from the proof's state root {claimed:02x?}")]
    RootMismatch { computed: Hash, claimed: Hash },
    #[error("proof state root differs from the header's state root")]
    HeaderRootMismatch,
    #[error("proof height {proof} differs from header height {header}")]
    HeightMismatch { proof: u64, header: u64 },
    #[error("chain proof carries no headers")]
    EmptyChain,
    #[error("chain proof header at position {index} has height {got}, expected {expected}")]
    ChainHeightGap { index: usize, expected: u64, got: u64 },
    #[error("chain proof header at height {height} does not link to its predecessor")]
    ChainLinkBroken { height: u64 },
    #[error("chain proof does not end at the response header")]
    ChainTargetMismatch,
}
