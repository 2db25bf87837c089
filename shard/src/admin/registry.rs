//! The `_system` registry of SPEC §10.4 as this node's service layer reads and writes it: record
//! types (rkyv values of ordinary `_system` entities), their keys, the id counters of SPEC §1.4 and
//! the namespace-name rules of SPEC §3.6. Pure: callers pass the `_system` scope state in.

use ledger_core::constants::NAMESPACE_NAME_BYTES_MAX;
use ledger_core::state::ScopeState;
use ledger_core::types::{NamespaceStatus, Operation, SetCondition, Timestamp};
use rkyv::{Archive, Deserialize, Serialize};

pub const SYSTEM_CLIENT: &str = "system:admin";
pub const KEY_SEQ_NAMESPACE: &str = "_meta:seq:namespace";
pub const KEY_SEQ_VAULT: &str = "_meta:seq:vault";
pub const KEY_SEQ_GROUP: &str = "_meta:seq:group";
pub const KEY_PAGE_TOKEN: &str = "_meta:page_token_key";
pub const KEY_CLUSTER_ID: &str = "_meta:cluster_id";
/// The cluster's `replication_factor` (SPEC §10.5), written once at bootstrap: i64 LE, 0 (or
/// missing: a cluster bootstrapped before it was recorded) = every member in every data group.
pub const KEY_REPLICATION_FACTOR: &str = "_meta:replication_factor";

/// `ns:{id}` (SPEC §10.4 NamespaceRegistry).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub namespace_id: i64,
    pub name: String,
    pub group_id: u32,
    pub status: NamespaceStatus,
    /// Bumped on every change of this record (cache invalidation hint).
    pub config_version: u64,
    /// Vaults of this namespace that are not deleted (gates DeleteNamespace).
    pub vaults_live: u64,
    pub created_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

/// `group:{id}` (SPEC §10.4 GroupInfo); the counts drive least-loaded placement (SPEC §10.5).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group_id: u32,
    pub members: Vec<u64>,
    pub core_hint: u16,
    pub namespaces: u64,
    pub vaults: u64,
}

/// `_meta:vault:{id}`: which namespace a vault id was allocated to and whether it is deleted.
/// Lets DeleteVault answer from the registry and lets core 0 re-create a scope whose
/// `CreateScope` never ran (crash or lost leadership between the registry write and the scope
/// creation). Under `_meta:` because clients can never write there (SPEC §3.7).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    pub vault_id: i64,
    pub namespace_id: i64,
    pub group_id: u32,
    pub status: ledger_core::types::VaultStatus,
    pub retention: ledger_core::types::RetentionPolicy,
}

/// `node:{id}` (SPEC §10.4 NodeInfo, the parts this layer knows).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: u64,
    pub address: String,
}

pub fn ns_key(id: i64) -> String {
    format!("ns:{id}")
}
pub fn ns_name_key(name: &str) -> String {
    format!("ns_name:{name}")
}
pub fn vault_key(id: i64) -> String {
    format!("_meta:vault:{id}")
}
pub fn group_key(id: u32) -> String {
    format!("group:{id}")
}
pub fn node_key(id: u64) -> String {
    format!("node:{id}")
}
/// `_meta:node_stopped:{id}`: the node said it was stopping on purpose (D74); value: unix secs
/// as i64 LE. Removed once `_system`'s leader hears from the node again.
pub const NODE_STOPPED_PREFIX: &str = "_meta:node_stopped:";
pub fn node_stopped_key(id: u64) -> String {
    format!("{NODE_STOPPED_PREFIX}{id}")
}

/// The nodes with a `_meta:node_stopped:` record.
pub fn stopped_nodes(system: &ScopeState) -> std::collections::BTreeSet<u64> {
    system
        .entities_from(std::ops::Bound::Included(NODE_STOPPED_PREFIX))
        .take_while(|(key, _)| key.starts_with(NODE_STOPPED_PREFIX))
        .filter_map(|(key, _)| key[NODE_STOPPED_PREFIX.len()..].parse().ok())
        .collect()
}

/// Registry records are encoded like every other value the shard stores.
pub use crate::codec::encode;

/// A registry record, or `None` if its bytes do not decode (reported by the caller as absent).
pub fn decode<T>(bytes: &[u8]) -> Option<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::BoxedError>>,
{
    crate::codec::decode("registry record", bytes).ok()
}

/// A counter's next value (SPEC §1.4: i64 LE, missing ⇒ 1).
pub fn counter(system: &ScopeState, key: &str) -> i64 {
    system
        .get_entity(key)
        .and_then(|row| <[u8; 8]>::try_from(row.value.as_slice()).ok())
        .map(i64::from_le_bytes)
        .unwrap_or(1)
}

/// Every recorded node (`node:{id}`) with its address.
pub fn node_addresses(system: &ScopeState) -> std::collections::BTreeMap<u64, String> {
    crate::admin::system_voters::members_in_join_order(system).into_iter().collect()
}

/// The data groups whose recorded members leave `node` out.
pub fn groups_without(system: &ScopeState, node: u64) -> std::collections::BTreeSet<u32> {
    groups(system)
        .into_iter()
        .filter(|g| g.group_id != 0 && !g.members.contains(&node))
        .map(|g| g.group_id)
        .collect()
}

/// The cluster's replication factor (`KEY_REPLICATION_FACTOR`; 0 = every member).
pub fn replication_factor(system: &ScopeState) -> u32 {
    system
        .get_entity(KEY_REPLICATION_FACTOR)
        .and_then(|row| <[u8; 8]>::try_from(row.value.as_slice()).ok())
        .map(i64::from_le_bytes)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

pub fn record<T>(system: &ScopeState, key: &str) -> Option<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::BoxedError>>,
{
    system.get_entity(key).and_then(|row| decode(&row.value))
}

pub fn namespace_by_name(system: &ScopeState, name: &str) -> Option<NamespaceRecord> {
    let id = system
        .get_entity(&ns_name_key(name))
        .and_then(|row| <[u8; 8]>::try_from(row.value.as_slice()).ok())
        .map(i64::from_le_bytes)?;
    record(system, &ns_key(id))
}

/// Every `ns:{id}` record, ascending by id.
pub fn namespaces(system: &ScopeState) -> Vec<NamespaceRecord> {
    let mut out: Vec<NamespaceRecord> = system
        .entities()
        .filter(|(k, _)| k.starts_with("ns:"))
        .filter_map(|(_, row)| decode::<NamespaceRecord>(&row.value))
        .collect();
    out.sort_by_key(|r| r.namespace_id);
    out
}

/// Every `group:{id}` record, ascending by id.
pub fn groups(system: &ScopeState) -> Vec<GroupRecord> {
    let mut out: Vec<GroupRecord> = system
        .entities()
        .filter(|(k, _)| k.starts_with("group:"))
        .filter_map(|(_, row)| decode::<GroupRecord>(&row.value))
        .collect();
    out.sort_by_key(|r| r.group_id);
    out
}

/// Every `_meta:vault:{id}` record, ascending by id.
pub fn vaults(system: &ScopeState) -> Vec<VaultRecord> {
    let mut out: Vec<VaultRecord> = system
        .entities()
        .filter(|(k, _)| k.starts_with("_meta:vault:"))
        .filter_map(|(_, row)| decode::<VaultRecord>(&row.value))
        .collect();
    out.sort_by_key(|r| r.vault_id);
    out
}

/// SPEC §10.5: fewest namespaces + vaults, ties → lowest id.
pub fn least_loaded(groups: &[GroupRecord]) -> Option<u32> {
    groups.iter().min_by_key(|g| (g.namespaces + g.vaults, g.group_id)).map(|g| g.group_id)
}

/// SPEC §3.6: 1..=128 bytes of `[a-zA-Z0-9_-]`.
pub fn validate_namespace_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAMESPACE_NAME_BYTES_MAX {
        return Err(format!("namespace name must be 1..={NAMESPACE_NAME_BYTES_MAX} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("namespace name may contain only [a-zA-Z0-9_-]".into());
    }
    Ok(())
}

pub fn set(key: impl Into<String>, value: Vec<u8>) -> Operation {
    Operation::SetEntity { key: key.into(), value, expires_at: None, condition: None }
}

pub fn set_if_absent(key: impl Into<String>, value: Vec<u8>) -> Operation {
    Operation::SetEntity {
        key: key.into(),
        value,
        expires_at: None,
        condition: Some(SetCondition::MustNotExist),
    }
}

pub fn set_counter(key: &str, next: i64) -> Operation {
    set(key, next.to_le_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Names follow SPEC §3.6 exactly: length bounds and the character class.
    #[test]
    fn t01_namespace_names() {
        assert!(validate_namespace_name("acme-corp_1").is_ok());
        assert!(validate_namespace_name(&"a".repeat(128)).is_ok());
        assert!(validate_namespace_name("").is_err());
        assert!(validate_namespace_name(&"a".repeat(129)).is_err());
        assert!(validate_namespace_name("a b").is_err());
        assert!(validate_namespace_name("a.b").is_err());
        assert!(validate_namespace_name("é").is_err());
    }

    /// Records survive an rkyv round trip through unaligned bytes; garbage decodes to `None`.
    #[test]
    fn t02_record_round_trip() {
        let r = NamespaceRecord {
            namespace_id: 7,
            name: "acme".into(),
            group_id: 2,
            status: NamespaceStatus::Active,
            config_version: 1,
            vaults_live: 3,
            created_at: Timestamp { secs: 5, nanos: 6 },
            deleted_at: None,
        };
        let mut bytes = vec![0u8];
        bytes.extend(encode(&r));
        assert_eq!(decode::<NamespaceRecord>(&bytes[1..]).unwrap(), r);
        assert!(decode::<NamespaceRecord>(b"nope").is_none());
    }

    /// Least-loaded placement counts namespaces plus vaults and breaks ties by the lowest id.
    #[test]
    fn t03_least_loaded() {
        let g =
            |id, n, v| GroupRecord { group_id: id, members: vec![], core_hint: 0, namespaces: n, vaults: v };
        assert_eq!(least_loaded(&[g(1, 1, 1), g(2, 0, 1), g(3, 1, 0)]), Some(2));
        assert_eq!(least_loaded(&[g(2, 0, 0), g(1, 0, 0)]), Some(1));
        assert_eq!(least_loaded(&[]), None);
    }
}
