//! Text and JSON renderings of records. JSON uses snake_case field names as in SPEC §4.4 and
//! hashes as lowercase hex.

use ledger_core::types::*;
use ledger_wire::messages::{NamespaceInfo, VaultInfo};
use serde_json::{json, Value};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes as UTF-8 text when they are, else `0x…` hex.
pub fn text_or_hex(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", hex(bytes)),
    }
}

pub fn timestamp(ts: &Timestamp) -> Value {
    json!({"secs": ts.secs, "nanos": ts.nanos})
}

pub fn header(h: &BlockHeader) -> Value {
    json!({
        "height": h.height,
        "namespace_id": h.namespace_id,
        "vault_id": h.vault_id,
        "previous_hash": hex(&h.previous_hash),
        "tx_merkle_root": hex(&h.tx_merkle_root),
        "state_root": hex(&h.state_root),
        "timestamp": timestamp(&h.timestamp),
        "leader_id": h.leader_id,
        "term": h.term,
        "committed_index": h.committed_index,
    })
}

pub fn block(b: &Block, block_hash: &Hash, body_pruned: bool) -> Value {
    json!({
        "header": header(&b.header),
        "block_hash": hex(block_hash),
        "body_pruned": body_pruned,
        "transactions": b.transactions.iter().map(crate::cli::verify::transaction_json).collect::<Vec<_>>(),
    })
}

pub fn namespace(n: &NamespaceInfo) -> Value {
    json!({
        "namespace_id": n.namespace_id,
        "name": n.name,
        "group_id": n.group_id,
        "status": format!("{:?}", n.status).to_lowercase(),
        "config_version": n.config_version,
    })
}

pub fn health(h: &VaultHealth) -> Value {
    match h {
        VaultHealth::Healthy => json!({"state": "healthy"}),
        VaultHealth::Diverged { expected, computed, at_height } => json!({
            "state": "diverged", "expected": hex(expected), "computed": hex(computed), "at_height": at_height,
        }),
        VaultHealth::Recovering { started_at, attempt, exhausted } => json!({
            "state": "recovering", "started_at": timestamp(started_at), "attempt": attempt, "exhausted": exhausted,
        }),
    }
}

pub fn vault(v: &VaultInfo) -> Value {
    json!({
        "namespace_id": v.namespace_id,
        "vault_id": v.vault_id,
        "group_id": v.group_id,
        "height": v.height,
        "state_root": hex(&v.state_root),
        "status": format!("{:?}", v.status).to_lowercase(),
        "retention": {"mode": format!("{:?}", v.retention_policy.mode).to_lowercase(),
                      "retention_blocks": v.retention_policy.retention_blocks},
        "health": health(&v.health),
        "last_block_timestamp": timestamp(&v.last_block_timestamp),
        "leader": v.leader,
        "nodes": v.nodes,
    })
}

pub fn op_status(s: &OpStatus) -> &'static str {
    match s {
        OpStatus::Created => "created",
        OpStatus::Updated => "updated",
        OpStatus::Deleted => "deleted",
        OpStatus::Expired => "expired",
        OpStatus::AlreadyExists => "already_exists",
        OpStatus::NotFound => "not_found",
    }
}

pub fn write_error(e: &WriteError) -> String {
    let mut line = format!("{:?}: {}", e.code, e.message);
    if !e.key.is_empty() && !e.message.contains(&e.key) {
        line.push_str(&format!(" (key {})", e.key));
    }
    if let Some(v) = e.current_version {
        line.push_str(&format!(", current version {v}"));
    }
    line
}
