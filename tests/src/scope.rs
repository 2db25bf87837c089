//! Client-side helpers shared by the integration tests: connecting, creating a namespace + vault,
//! building operations, retrying while a restarted node elects itself, and walking a scope's
//! chain with the continuity check of SPEC §12 invariant 3.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use ledger_core::hash::block_hash;
use ledger_core::types::{Block, Hash, Operation, ReadConsistency, SetCondition, ZERO_HASH};
use ledger_wire::client::{Client, ClientOptions};
use ledger_wire::error::ClientError;
use ledger_wire::messages::{Request, Response};

/// Most blocks one `GetBlockRange` may return (SPEC §3.6).
pub const BLOCK_RANGE_MAX: u64 = 1000;

/// Attempts of `retry_transient` before giving up.
const TRANSIENT_ATTEMPTS_MAX: u32 = 200;

pub async fn connect(addr: &str) -> Client {
    Client::connect(addr, ClientOptions::default()).await.expect("connect client")
}

/// A client presenting the token `secret` (servers with `auth_tokens`); `follow_leaders` off
/// makes a follower forward the client's writes.
pub async fn connect_with_token(addr: &str, secret: Option<&str>, follow_leaders: bool) -> Client {
    let options =
        ClientOptions { credential: secret.map(str::to_string), follow_leaders, ..ClientOptions::default() };
    Client::connect(addr, options).await.expect("connect client")
}

/// Creates namespace `name` and one vault in it; returns `(namespace_id, vault_id)`.
pub async fn create_scope(client: &Client, name: &str) -> (i64, i64) {
    let (namespace_id, _group) = client.create_namespace(name).await.expect("create namespace");
    let vault_id = client.create_vault(namespace_id, None).await.expect("create vault");
    (namespace_id, vault_id)
}

pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Operation {
    Operation::SetEntity { key: key.into(), value: value.into(), expires_at: None, condition: None }
}

pub fn set_if(key: impl Into<String>, value: impl Into<Vec<u8>>, condition: SetCondition) -> Operation {
    Operation::SetEntity {
        key: key.into(),
        value: value.into(),
        expires_at: None,
        condition: Some(condition),
    }
}

/// Runs `call` until it does not fail with a retryable error (`Unavailable`, a lost connection):
/// a node that just restarted may answer before its groups have a leader again.
pub async fn retry_transient<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt < TRANSIENT_ATTEMPTS_MAX => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

/// A linearizable read (retried while the group elects itself after a restart).
pub async fn read_linearizable(
    client: &Client,
    namespace_id: i64,
    vault_id: Option<i64>,
    key: &str,
) -> Option<Vec<u8>> {
    retry_transient(|| client.read_with(namespace_id, vault_id, key, ReadConsistency::Linearizable))
        .await
        .expect("linearizable read")
}

/// A scope's chain tip (the client library's own `Tip` type is not exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeTip {
    pub height: u64,
    pub block_hash: Hash,
    pub state_root: Hash,
}

/// `GetTip`, retried while the group elects itself.
pub async fn tip(client: &Client, namespace_id: i64, vault_id: Option<i64>) -> ScopeTip {
    let tip = retry_transient(|| client.get_tip(namespace_id, vault_id)).await.expect("GetTip");
    ScopeTip { height: tip.height, block_hash: tip.block_hash, state_root: tip.state_root }
}

/// `GetClientState`, retried while the group elects itself.
pub async fn client_state(client: &Client, namespace_id: i64, vault_id: Option<i64>, client_id: &str) -> u64 {
    retry_transient(|| client.get_client_state(namespace_id, vault_id, client_id))
        .await
        .expect("GetClientState")
}

/// Every block of a scope from genesis to its tip, fetched with `GetBlockRange`, after checking
/// chain continuity: genesis has height 0 and `previous_hash == ZERO_HASH`, heights are
/// consecutive and each `previous_hash == block_hash(previous header)`. Keyed by height.
pub async fn walk_chain(client: &Client, namespace_id: i64, vault_id: Option<i64>) -> BTreeMap<u64, Block> {
    let tip = tip(client, namespace_id, vault_id).await;
    let mut blocks = BTreeMap::new();
    let mut start = 0;
    while start <= tip.height {
        let end = (start + BLOCK_RANGE_MAX - 1).min(tip.height);
        let request = Request::GetBlockRange { namespace_id, vault_id, start_height: start, end_height: end };
        let response = retry_transient(|| client.call(request.clone())).await.expect("GetBlockRange");
        let Response::GetBlockRange { blocks: page, current_tip } = response else {
            panic!("unexpected response to GetBlockRange: {response:?}");
        };
        assert!(current_tip >= tip.height, "tip went backwards: {current_tip} < {}", tip.height);
        assert_eq!(
            page.len() as u64,
            end - start + 1,
            "GetBlockRange {start}..={end} returned {} blocks",
            page.len()
        );
        for block in page {
            blocks.insert(block.header.height, block);
        }
        start = end + 1;
    }
    let mut previous: Option<&Block> = None;
    for (height, block) in &blocks {
        assert_eq!(block.header.namespace_id, namespace_id, "block {height} of another namespace");
        assert_eq!(block.header.vault_id, vault_id.unwrap_or(0), "block {height} of another vault");
        match previous {
            None => {
                assert_eq!(*height, 0, "chain does not start at genesis");
                assert_eq!(block.header.previous_hash, ZERO_HASH, "genesis previous_hash is not ZERO_HASH");
            }
            Some(prev) => {
                assert_eq!(*height, prev.header.height + 1, "heights not consecutive");
                assert_eq!(
                    block.header.previous_hash,
                    block_hash(&prev.header),
                    "chain break at height {height} of scope ({namespace_id}, {vault_id:?})"
                );
            }
        }
        previous = Some(block);
    }
    let last = previous.expect("at least genesis");
    assert_eq!(block_hash(&last.header), tip.block_hash, "tip hash differs from the last block's hash");
    assert_eq!(last.header.state_root, tip.state_root, "tip root differs from the last block's root");
    blocks
}
