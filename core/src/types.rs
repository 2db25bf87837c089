//! The domain types of SPEC §4.4 and §7.1: what clients send, what blocks hold, and what is hashed.
//! They are rkyv-archivable so that the same structs travel in frames, Raft log entries and the
//! block archive without a second representation.

use rkyv::{Archive, Deserialize, Serialize};

/// A blake3 digest.
pub type Hash = [u8; 32];
/// A transaction id (UUID bytes), assigned by the group leader.
pub type TxId = [u8; 16];

/// 32 zero bytes: `previous_hash` of genesis and the hash of an empty state-tree subtree.
pub const ZERO_HASH: Hash = [0u8; 32];

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash))]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// Tenant id; 0 is `_system` (SPEC §1.4).
    NamespaceId(i64)
);
id_newtype!(
    /// Vault id, globally unique; 0 is the namespace scope (SPEC §3.1).
    VaultId(i64)
);
id_newtype!(
    /// Raft group id; 0 hosts `_system`.
    GroupId(u32)
);
id_newtype!(
    /// Index of a core shard on this node.
    CoreId(u16)
);
id_newtype!(
    /// Snowflake node id (SPEC §10.1).
    NodeId(u64)
);

/// `(namespace, vault)`: the address of one chain. `vault == VaultId(0)` is the namespace scope.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash))]
pub struct ScopeKey {
    pub namespace_id: NamespaceId,
    pub vault_id: VaultId,
}

impl ScopeKey {
    pub fn new(namespace_id: NamespaceId, vault_id: Option<VaultId>) -> Self {
        ScopeKey { namespace_id, vault_id: vault_id.unwrap_or(VaultId(0)) }
    }

    /// The storage scope id of SPEC §3.5: the vault id, or `-namespace_id` for a namespace scope.
    pub fn scope_id(&self) -> i64 {
        if self.vault_id.0 == 0 {
            -self.namespace_id.0
        } else {
            self.vault_id.0
        }
    }

    pub fn is_namespace_scope(&self) -> bool {
        self.vault_id.0 == 0
    }
}

impl std::fmt::Display for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace_id.0, self.vault_id.0)
    }
}

#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
)]
#[rkyv(derive(Debug))]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub enum ReadConsistency {
    #[default]
    Eventual,
    Linearizable,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Direction {
    Left,
    Right,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum SetCondition {
    MustNotExist,
    MustExist,
    VersionEquals(u64),
    ValueEquals(Vec<u8>),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Operation {
    CreateRelationship {
        resource: String,
        relation: String,
        subject: String,
    },
    DeleteRelationship {
        resource: String,
        relation: String,
        subject: String,
    },
    SetEntity {
        key: String,
        value: Vec<u8>,
        expires_at: Option<u64>,
        condition: Option<SetCondition>,
    },
    DeleteEntity {
        key: String,
    },
    /// Produced only by the GC; rejected from clients.
    ExpireEntity {
        key: String,
        expired_at: u64,
    },
}

impl Operation {
    /// The entity key an entity operation names (`None` for relationship operations).
    pub fn entity_key(&self) -> Option<&str> {
        match self {
            Operation::SetEntity { key, .. }
            | Operation::DeleteEntity { key }
            | Operation::ExpireEntity { key, .. } => Some(key),
            Operation::CreateRelationship { .. } | Operation::DeleteRelationship { .. } => None,
        }
    }
}

/// Per-operation result (SPEC §3.9).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum OpStatus {
    Created,
    Updated,
    Deleted,
    Expired,
    AlreadyExists,
    NotFound,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Transaction {
    pub id: TxId,
    pub client_id: String,
    pub sequence: u64,
    pub operations: Vec<Operation>,
    pub timestamp: Timestamp,
    pub actor: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BlockHeader {
    pub height: u64,
    pub namespace_id: i64,
    pub vault_id: i64,
    pub previous_hash: Hash,
    pub tx_merkle_root: Hash,
    pub state_root: Hash,
    pub timestamp: Timestamp,
    pub leader_id: u64,
    pub term: u64,
    pub committed_index: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Block {
    pub header: BlockHeader,
    pub transactions: Vec<Transaction>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BlockAnnouncement {
    pub namespace_id: i64,
    pub vault_id: i64,
    pub height: u64,
    pub block_hash: Hash,
    pub state_root: Hash,
    pub timestamp: Timestamp,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Entity {
    pub key: String,
    pub value: Vec<u8>,
    pub expires_at: u64,
    pub version: u64,
}

/// A relationship tuple. Its order is the byte order of its key `rel:{resource}#{relation}@{subject}`
/// (SPEC §5.1 item 10 lists in that order), with a field-wise tie-break so the order stays
/// consistent with `Eq` even for tuples that would not pass validation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Relationship {
    pub resource: String,
    pub relation: String,
    pub subject: String,
}

impl Relationship {
    pub fn new(resource: impl Into<String>, relation: impl Into<String>, subject: impl Into<String>) -> Self {
        Relationship { resource: resource.into(), relation: relation.into(), subject: subject.into() }
    }

    /// The local key of the relationship row (SPEC §3.4): `rel:{resource}#{relation}@{subject}`.
    pub fn key(&self) -> String {
        let mut key =
            String::with_capacity(6 + self.resource.len() + self.relation.len() + self.subject.len());
        key.push_str("rel:");
        key.push_str(&self.resource);
        key.push('#');
        key.push_str(&self.relation);
        key.push('@');
        key.push_str(&self.subject);
        key
    }

    /// The bytes of `key()` after the constant `rel:` prefix, without allocating.
    fn key_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.resource
            .bytes()
            .chain(std::iter::once(b'#'))
            .chain(self.relation.bytes())
            .chain(std::iter::once(b'@'))
            .chain(self.subject.bytes())
    }
}

impl Ord for Relationship {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key_bytes().cmp(other.key_bytes()).then_with(|| {
            (&self.resource, &self.relation, &self.subject).cmp(&(
                &other.resource,
                &other.relation,
                &other.subject,
            ))
        })
    }
}

impl PartialOrd for Relationship {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Transaction inclusion proof (SPEC §7.7); siblings bottom-up.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MerkleProof {
    pub leaf_hash: Hash,
    pub siblings: Vec<(Hash, Direction)>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ChainProof {
    pub headers: Vec<BlockHeader>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StateLeaf {
    pub key_hash: Hash,
    pub value_hash: Hash,
}

/// Sparse-Merkle path for one key (SPEC §7.6–7.7); siblings root → leaf.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StateProof {
    pub key: Vec<u8>,
    pub leaf: Option<StateLeaf>,
    pub siblings: Vec<Hash>,
    pub block_height: u64,
    pub state_root: Hash,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum VaultHealth {
    Healthy,
    Diverged { expected: Hash, computed: Hash, at_height: u64 },
    Recovering { started_at: Timestamp, attempt: u8, exhausted: bool },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum VaultStatus {
    Active,
    ReadOnly,
    Deleted,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum NamespaceStatus {
    Active,
    Deleted,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RetentionMode {
    Full,
    Compacted,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RetentionPolicy {
    pub mode: RetentionMode,
    pub retention_blocks: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { mode: RetentionMode::Full, retention_blocks: 10_000 }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WriteErrorCode {
    KeyExists,
    KeyNotFound,
    VersionMismatch,
    ValueMismatch,
    AlreadyCommitted,
    SequenceGap,
}

/// A domain error of a write (SPEC §4.6): returned inside a successful response.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteError {
    pub code: WriteErrorCode,
    pub key: String,
    pub current_version: Option<u64>,
    pub current_value: Option<Vec<u8>>,
    pub message: String,
    pub committed_tx_id: Option<TxId>,
    pub committed_block_height: Option<u64>,
    pub last_committed_sequence: Option<u64>,
}

/// Durable per-(scope, client) idempotency record (SPEC §6.2).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ClientState {
    pub last_committed_seq: u64,
    pub last_committed_tx_id: TxId,
    pub last_committed_block_height: u64,
}

/// One scope's part of a group block (SPEC §7.1).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct VaultEntry {
    pub namespace_id: i64,
    pub vault_id: i64,
    pub vault_height: u64,
    pub previous_vault_hash: Hash,
    pub transactions: Vec<Transaction>,
    pub tx_merkle_root: Hash,
    pub state_root: Hash,
}

/// The unit appended to a group's Raft log (SPEC §7.1).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupBlock {
    pub group_id: u32,
    pub group_height: u64,
    pub previous_group_hash: Hash,
    pub vault_entries: Vec<VaultEntry>,
    pub timestamp: Timestamp,
    pub leader_id: u64,
    pub term: u64,
    pub committed_index: u64,
}

impl GroupBlock {
    /// The client-visible header of entry `i` (SPEC §7.1: entry fields plus the group block's
    /// timestamp, leader, term and index).
    pub fn header_of(&self, entry: &VaultEntry) -> BlockHeader {
        BlockHeader {
            height: entry.vault_height,
            namespace_id: entry.namespace_id,
            vault_id: entry.vault_id,
            previous_hash: entry.previous_vault_hash,
            tx_merkle_root: entry.tx_merkle_root,
            state_root: entry.state_root,
            timestamp: self.timestamp,
            leader_id: self.leader_id,
            term: self.term,
            committed_index: self.committed_index,
        }
    }
}

/// Scope lifecycle commands carried as their own log entries (SPEC §8.4).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum AdminCommand {
    CreateScope {
        namespace_id: i64,
        vault_id: i64,
        retention_policy: RetentionPolicy,
        timestamp: Timestamp,
        leader_id: u64,
    },
    SetScopeStatus {
        namespace_id: i64,
        vault_id: i64,
        status: VaultStatus,
    },
}

/// Payload of an application log entry (SPEC §8.4).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum LogPayload {
    /// Shared: openraft clones an entry each time it reads it from the log for apply, and the
    /// archive keeps the applied block; the archived form is a plain `GroupBlock`'s.
    Block(#[rkyv(with = rkyv::with::Unshare)] std::sync::Arc<GroupBlock>),
    Admin(AdminCommand),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `LogPayload` as it was before blocks were shared: the log and archive bytes on disk.
    #[derive(Archive, Serialize, Deserialize)]
    enum PlainLogPayload {
        Block(GroupBlock),
        #[allow(dead_code)]
        Admin(AdminCommand),
    }

    fn a_block() -> GroupBlock {
        let tx = Transaction {
            id: [3; 16],
            client_id: "client".into(),
            sequence: 7,
            operations: vec![Operation::SetEntity {
                key: "k".into(),
                value: vec![1, 2, 3],
                expires_at: Some(9),
                condition: None,
            }],
            timestamp: Timestamp { secs: 5, nanos: 6 },
            actor: "actor".into(),
        };
        GroupBlock {
            group_id: 1,
            group_height: 2,
            previous_group_hash: [4; 32],
            vault_entries: vec![VaultEntry {
                namespace_id: 1,
                vault_id: 2,
                vault_height: 3,
                previous_vault_hash: [5; 32],
                transactions: vec![tx],
                tx_merkle_root: [6; 32],
                state_root: [7; 32],
            }],
            timestamp: Timestamp { secs: 5, nanos: 6 },
            leader_id: 1,
            term: 1,
            committed_index: 4,
        }
    }

    #[test]
    fn shared_block_payloads_encode_as_plain_blocks_did() {
        let shared = rkyv::to_bytes::<rkyv::rancor::Error>(&LogPayload::Block(Arc::new(a_block()))).unwrap();
        let plain = rkyv::to_bytes::<rkyv::rancor::Error>(&PlainLogPayload::Block(a_block())).unwrap();
        assert_eq!(shared.as_slice(), plain.as_slice());
        let back = rkyv::from_bytes::<LogPayload, rkyv::rancor::Error>(&plain).unwrap();
        assert_eq!(back, LogPayload::Block(Arc::new(a_block())));
    }
}
