//! Synthetic inputs shared by the benches: 32-byte keys, 100-byte values, one-operation
//! transactions, block headers, a populated state tree and a 1000-request frame. Deterministic, so
//! two runs measure the same bytes.

use crate::constants::{KEY_BYTES, VALUE_BYTES};
use ledger_core::state::{BlockContext, EntityRow, ScopeState};
use ledger_core::types::{
    BlockHeader, NamespaceId, Operation, RetentionPolicy, ScopeKey, Timestamp, Transaction, VaultId,
};
use ledger_wire::messages::{Request, RequestBatch, RequestEnvelope};

/// The key of row `i`: exactly `KEY_BYTES` bytes.
pub fn key(i: u64) -> String {
    let k = format!("entity:{i:0width$}", width = KEY_BYTES - "entity:".len());
    debug_assert_eq!(k.len(), KEY_BYTES);
    k
}

/// A `VALUE_BYTES`-byte value that differs per `(i, version)`.
pub fn value(i: u64, version: u64) -> Vec<u8> {
    let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    (0..VALUE_BYTES).map(|b| (seed >> ((b % 8) * 8)) as u8 ^ b as u8).collect()
}

/// Spreads consecutive counters over `0..rows` so dirty keys land all over the tree.
pub fn spread(counter: u64, rows: u64) -> u64 {
    counter.wrapping_mul(0x5851_f42d_4c95_7f2d) % rows
}

pub fn set_entity(i: u64, version: u64) -> Operation {
    Operation::SetEntity { key: key(i), value: value(i, version), expires_at: None, condition: None }
}

/// A committed-looking transaction with one `SetEntity`.
pub fn transaction(i: u64) -> Transaction {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    Transaction {
        id,
        client_id: "bench-client".to_string(),
        sequence: i + 1,
        operations: vec![set_entity(i, 1)],
        timestamp: Timestamp { secs: 1_700_000_000, nanos: 123 },
        actor: "client:bench-client".to_string(),
    }
}

pub fn header(height: u64, state_root: [u8; 32]) -> BlockHeader {
    BlockHeader {
        height,
        namespace_id: 1,
        vault_id: 2,
        previous_hash: [7u8; 32],
        tx_merkle_root: [9u8; 32],
        state_root,
        timestamp: Timestamp { secs: 1_700_000_000, nanos: 456 },
        leader_id: 1,
        term: 3,
        committed_index: height * 2,
    }
}

/// The block context the benches build blocks under.
pub fn block_context(index: u64) -> BlockContext {
    BlockContext {
        timestamp: Timestamp { secs: 1_700_000_000, nanos: 0 },
        leader_id: 1,
        term: 2,
        committed_index: index,
    }
}

/// A scope (namespace 1, vault 2) holding `rows` entity rows (version 1, no expiry), rebuilt the
/// way a replica restarts: `from_rows` recomputes the state tree.
pub fn scope(rows: u64) -> ScopeState {
    let key_of_scope = ScopeKey::new(NamespaceId(1), Some(VaultId(2)));
    let genesis = ScopeState::genesis(key_of_scope, RetentionPolicy::default(), &block_context(1));
    let entities =
        (0..rows).map(|i| (key(i), EntityRow { value: value(i, 1), expires_at: 0, version: 1 })).collect();
    ScopeState::from_rows(genesis.meta.clone(), entities, Vec::new(), Vec::new())
}

/// A frame's worth of `Write` requests, each setting one 32 B key to a 100 B value.
pub fn request_batch(requests: usize) -> RequestBatch {
    let items = (0..requests as u64)
        .map(|i| RequestEnvelope {
            request_id: i + 1,
            deadline_ms: 0,
            on_behalf_of: None,
            request: Request::Write {
                namespace_id: 1,
                vault_id: Some(2),
                client_id: "bench-client".to_string(),
                sequence: i + 1,
                operations: vec![set_entity(i, 1)],
                include_tx_proof: false,
            },
        })
        .collect();
    RequestBatch { items }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_fixture_sizes() {
        // Proves keys and values have the sizes the result lines claim.
        assert_eq!(key(0).len(), KEY_BYTES);
        assert_eq!(key(999_999_999).len(), KEY_BYTES);
        assert_eq!(value(3, 1).len(), VALUE_BYTES);
        assert_ne!(value(3, 1), value(3, 2));
        assert!(spread(12345, 1000) < 1000);
        assert_eq!(scope(10).key_count(), 10);
        assert_eq!(scope(10).tree().len(), 10);
        assert_eq!(request_batch(3).items.len(), 3);
    }
}
