//! Preloading the key space: every scope gets keys `0..key_space` written before the run, in
//! transactions of up to `PRELOAD_ITEMS_MAX` operations (fewer for large values), several in
//! flight per connection, so that reads hit and writes update existing rows as in steady state.

use crate::constants::{PRELOAD_INFLIGHT_PER_CONN, PRELOAD_ITEMS_MAX, PRELOAD_TX_BYTES_MAX};
use crate::error::LoadgenError;
use crate::scopes::Scope;
use crate::workload::{key_name, mix_seed, value_bytes};
use ledger_core::types::Operation;
use ledger_wire::{Client, RetryPolicy, WriteOutcome, WriteSession};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Salt separating preload values from the values of measured writes under the same seed.
const PRELOAD_VALUE_SALT: u64 = 0x0070_7265_6c6f_6164; // "preload" in ASCII

/// Operations per preload transaction for values of `value_size` bytes.
pub fn items_per_tx(value_size: u64) -> u64 {
    let per_item = usize::try_from(value_size).unwrap_or(usize::MAX).saturating_add(32);
    (PRELOAD_TX_BYTES_MAX / per_item).clamp(1, PRELOAD_ITEMS_MAX) as u64
}

/// The operations of preload chunk `chunk` (keys `chunk × items ..`, clipped to the key space).
pub fn chunk_operations(
    chunk: u64,
    items: u64,
    key_space: u64,
    value_size: u64,
    seed: u64,
) -> Vec<Operation> {
    let first = chunk * items;
    let last = (first + items).min(key_space);
    let size = usize::try_from(value_size).unwrap_or(usize::MAX);
    (first..last)
        .map(|k| Operation::SetEntity {
            key: key_name(k),
            value: value_bytes(mix_seed(seed ^ PRELOAD_VALUE_SALT, k), size),
            expires_at: None,
            condition: None,
        })
        .collect()
}

/// What the preload needs to know.
#[derive(Debug, Clone)]
pub struct PreloadPlan {
    pub key_space: u64,
    pub value_size: u64,
    pub seed: u64,
    /// Prefix of the preload writers' client ids (unique per run).
    pub client_id_prefix: String,
}

/// Writes every key of every scope; returns the number of keys written.
pub async fn preload(clients: &[Client], scopes: &[Scope], plan: PreloadPlan) -> Result<u64, LoadgenError> {
    let items = items_per_tx(plan.value_size);
    let chunks_per_scope = plan.key_space.div_ceil(items);
    let total_chunks = chunks_per_scope * scopes.len() as u64;
    let next_chunk = Arc::new(AtomicU64::new(0));
    let scopes = Arc::new(scopes.to_vec());
    let plan = Arc::new(plan);
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for t in 0..PRELOAD_INFLIGHT_PER_CONN {
            let (client, next_chunk, scopes, plan) =
                (client.clone(), Arc::clone(&next_chunk), Arc::clone(&scopes), Arc::clone(&plan));
            let client_id = format!("{}-c{c}-t{t}", plan.client_id_prefix);
            tasks.push(tokio::spawn(async move {
                let mut sessions: HashMap<usize, WriteSession> = HashMap::new();
                loop {
                    let index = next_chunk.fetch_add(1, Ordering::Relaxed);
                    if index >= total_chunks {
                        return Ok::<(), LoadgenError>(());
                    }
                    let scope_index = usize::try_from(index / chunks_per_scope).unwrap_or(usize::MAX);
                    let chunk = index % chunks_per_scope;
                    let scope = scopes[scope_index];
                    let session = sessions.entry(scope_index).or_insert_with(|| {
                        WriteSession::new(client.clone(), scope.namespace_id, Some(scope.vault_id))
                            .with_client_id(client_id.clone())
                            .with_retry_policy(preload_retry_policy())
                    });
                    let ops = chunk_operations(chunk, items, plan.key_space, plan.value_size, plan.seed);
                    let step = format!("preloading {}/{} chunk {chunk}", scope.namespace_id, scope.vault_id);
                    match session.write(ops).await {
                        Ok(WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. }) => {}
                        Ok(WriteOutcome::Rejected(e)) => {
                            return Err(LoadgenError::SetupRejected {
                                step,
                                message: format!("{:?}: {}", e.code, e.message),
                            })
                        }
                        Err(source) => return Err(LoadgenError::Setup { step, source }),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.map_err(|e| LoadgenError::Worker { message: e.to_string() })??;
    }
    Ok(plan.key_space * scopes.len() as u64)
}

/// The preload outlasts a leader election (a cluster under load may hold one): a retryable
/// failure is retried with the same sequence for up to about a minute before setup gives up.
fn preload_retry_policy() -> RetryPolicy {
    RetryPolicy {
        base: std::time::Duration::from_millis(crate::constants::RETRY_BACKOFF_BASE_MS),
        cap: std::time::Duration::from_millis(crate::constants::RECONNECT_BACKOFF_CAP_MS),
        max_attempts: crate::constants::PRELOAD_RETRY_ATTEMPTS,
        jitter: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t90_chunks_cover_the_key_space_once() {
        // Proves the chunking writes each key exactly once and respects the per-tx bounds.
        assert_eq!(items_per_tx(100), PRELOAD_ITEMS_MAX as u64);
        assert_eq!(items_per_tx(1024 * 1024), 1);
        let (key_space, items) = (2500u64, items_per_tx(100));
        let mut keys = Vec::new();
        for chunk in 0..key_space.div_ceil(items) {
            let ops = chunk_operations(chunk, items, key_space, 8, 1);
            assert!(ops.len() as u64 <= items);
            for op in ops {
                let Operation::SetEntity { key, value, .. } = op else { panic!("preload only sets") };
                assert_eq!(value.len(), 8);
                keys.push(key);
            }
        }
        let expected: Vec<String> = (0..key_space).map(key_name).collect();
        assert_eq!(keys, expected);
    }
}
