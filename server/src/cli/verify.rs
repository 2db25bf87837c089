//! The JSON forms of verified reads and block ranges that `ledger get --verify --json` and
//! `ledger blocks --json` print, and the offline checker behind `ledger verify FILE`, which
//! parses them back and re-runs SPEC §7 on them with `ledger_core::verify` and
//! `ledger_core::hash` only (no server). Every byte string is lowercase hex so the files are
//! exact; the format is documented in docs/verification.md.

use super::render::{self, hex};
use ledger_core::hash::{block_hash, tx_hash, tx_merkle_root, EMPTY_HASH};
use ledger_core::types::*;
use ledger_core::verify::{verify_read, ExpiryClock, ReadClaim, TrustedBlock};
use serde_json::{json, Map, Value};

/// Most blocks a `blocks` file may hold (SPEC §3.6 range limit, times a generous factor for
/// concatenated ranges).
pub const VERIFY_FILE_BLOCKS_MAX: usize = 100_000;
/// Largest file `ledger verify` reads.
pub const VERIFY_FILE_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// A verified read as the CLI got it, ready to print.
pub struct VerifiedReadView<'a> {
    pub namespace_id: i64,
    pub vault_id: Option<i64>,
    pub key: &'a str,
    /// The `at_height` asked for (TTL then judged at the block's time).
    pub at_height: Option<u64>,
    pub value: Option<&'a [u8]>,
    pub entity: Option<&'a Entity>,
    pub block_height: u64,
    pub header: &'a BlockHeader,
    pub state_proof: &'a StateProof,
    pub chain_proof: Option<&'a ChainProof>,
    pub trusted: Option<TrustedBlock>,
}

pub fn entity_json(e: &Entity) -> Value {
    json!({"key": e.key, "value": hex(&e.value), "expires_at": e.expires_at, "version": e.version})
}

pub fn state_proof_json(p: &StateProof) -> Value {
    json!({
        "key": hex(&p.key),
        "leaf": p.leaf.map(|l| json!({"key_hash": hex(&l.key_hash), "value_hash": hex(&l.value_hash)})),
        "siblings": p.siblings.iter().map(|s| hex(s)).collect::<Vec<_>>(),
        "block_height": p.block_height,
        "state_root": hex(&p.state_root),
    })
}

/// `{"kind": "verified_read", ...}` (docs/verification.md §2).
pub fn verified_read_json(r: &VerifiedReadView<'_>) -> Value {
    json!({
        "kind": "verified_read",
        "namespace_id": r.namespace_id,
        "vault_id": r.vault_id.unwrap_or(0),
        "key": r.key,
        "at_height": r.at_height,
        "value": r.value.map(hex),
        "entity": r.entity.map(entity_json),
        "block_height": r.block_height,
        "block_header": render::header(r.header),
        "block_hash": hex(&block_hash(r.header)),
        "state_proof": state_proof_json(r.state_proof),
        "chain_proof": r.chain_proof.map(|c| json!({"headers": c.headers.iter().map(render::header).collect::<Vec<_>>()})),
        "trusted": r.trusted.map(|t| json!({"height": t.height, "block_hash": hex(&t.block_hash)})),
    })
}

fn condition_json(c: &Option<SetCondition>) -> Value {
    match c {
        None => Value::Null,
        Some(SetCondition::MustNotExist) => json!({"type": "must_not_exist"}),
        Some(SetCondition::MustExist) => json!({"type": "must_exist"}),
        Some(SetCondition::VersionEquals(v)) => json!({"type": "version_equals", "version": v}),
        Some(SetCondition::ValueEquals(b)) => json!({"type": "value_equals", "value": hex(b)}),
    }
}

/// An operation with every field exact (values hex), enough to recompute its §7.4 hash.
pub fn operation_json(op: &Operation) -> Value {
    match op {
        Operation::SetEntity { key, value, expires_at, condition } => json!({
            "type": "set_entity", "key": key, "value": hex(value),
            "expires_at": expires_at.unwrap_or(0), "condition": condition_json(condition),
        }),
        Operation::DeleteEntity { key } => json!({"type": "delete_entity", "key": key}),
        Operation::ExpireEntity { key, expired_at } => {
            json!({"type": "expire_entity", "key": key, "expired_at": expired_at})
        }
        Operation::CreateRelationship { resource, relation, subject } => json!({
            "type": "create_relationship", "resource": resource, "relation": relation, "subject": subject,
        }),
        Operation::DeleteRelationship { resource, relation, subject } => json!({
            "type": "delete_relationship", "resource": resource, "relation": relation, "subject": subject,
        }),
    }
}

pub fn transaction_json(tx: &Transaction) -> Value {
    json!({
        "id": hex(&tx.id),
        "client_id": tx.client_id,
        "sequence": tx.sequence,
        "actor": tx.actor,
        "timestamp": render::timestamp(&tx.timestamp),
        "operations": tx.operations.iter().map(operation_json).collect::<Vec<_>>(),
        "tx_hash": hex(&tx_hash(tx)),
    })
}

/// `{"kind": "blocks", ...}` (docs/verification.md §3).
pub fn blocks_json(namespace_id: i64, vault_id: Option<i64>, blocks: &[Block], current_tip: u64) -> Value {
    let blocks: Vec<Value> = blocks
        .iter()
        .map(|b| {
            json!({
                "header": render::header(&b.header),
                "block_hash": hex(&block_hash(&b.header)),
                "body_pruned": b.header.height > 0 && b.transactions.is_empty(),
                "transactions": b.transactions.iter().map(transaction_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "kind": "blocks",
        "namespace_id": namespace_id,
        "vault_id": vault_id.unwrap_or(0),
        "current_tip": current_tip,
        "blocks": blocks,
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing back (strict: every field the checks use must be present and well-formed)

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("missing field {name:?}"))
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{what} is not an object"))
}

fn u64_of(v: &Value, name: &str) -> Result<u64, String> {
    field(v, name)?.as_u64().ok_or_else(|| format!("{name} is not an unsigned integer"))
}

fn i64_of(v: &Value, name: &str) -> Result<i64, String> {
    field(v, name)?.as_i64().ok_or_else(|| format!("{name} is not an integer"))
}

fn str_of<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    field(v, name)?.as_str().ok_or_else(|| format!("{name} is not a string"))
}

fn bytes_from_hex(s: &str, what: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{what}: odd number of hex digits"));
    }
    // Digits are checked one by one: `u8::from_str_radix` would also take "+f" and "AB", and
    // the files have one spelling per byte string.
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(high), Some(low)) => Ok(high << 4 | low),
            _ => Err(format!("{what}: not lowercase hex")),
        })
        .collect()
}

fn bytes_of(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    bytes_from_hex(str_of(v, name)?, name)
}

fn hash_from(s: &str, what: &str) -> Result<Hash, String> {
    let bytes = bytes_from_hex(s, what)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{what}: not 32 bytes"))
}

fn hash_of(v: &Value, name: &str) -> Result<Hash, String> {
    hash_from(str_of(v, name)?, name)
}

fn timestamp_of(v: &Value, name: &str) -> Result<Timestamp, String> {
    let ts = field(v, name)?;
    let nanos = u32::try_from(u64_of(ts, "nanos")?).map_err(|_| format!("{name}.nanos out of range"))?;
    Ok(Timestamp { secs: i64_of(ts, "secs")?, nanos })
}

pub fn parse_header(v: &Value) -> Result<BlockHeader, String> {
    obj(v, "header")?;
    Ok(BlockHeader {
        height: u64_of(v, "height")?,
        namespace_id: i64_of(v, "namespace_id")?,
        vault_id: i64_of(v, "vault_id")?,
        previous_hash: hash_of(v, "previous_hash")?,
        tx_merkle_root: hash_of(v, "tx_merkle_root")?,
        state_root: hash_of(v, "state_root")?,
        timestamp: timestamp_of(v, "timestamp")?,
        leader_id: u64_of(v, "leader_id")?,
        term: u64_of(v, "term")?,
        committed_index: u64_of(v, "committed_index")?,
    })
}

fn parse_entity(v: &Value) -> Result<Entity, String> {
    Ok(Entity {
        key: str_of(v, "key")?.to_string(),
        value: bytes_of(v, "value")?,
        expires_at: u64_of(v, "expires_at")?,
        version: u64_of(v, "version")?,
    })
}

fn parse_state_proof(v: &Value) -> Result<StateProof, String> {
    let leaf = match field(v, "leaf")? {
        Value::Null => None,
        leaf => {
            Some(StateLeaf { key_hash: hash_of(leaf, "key_hash")?, value_hash: hash_of(leaf, "value_hash")? })
        }
    };
    let siblings = field(v, "siblings")?
        .as_array()
        .ok_or("siblings is not an array")?
        .iter()
        .map(|s| {
            s.as_str()
                .ok_or_else(|| "sibling is not a string".to_string())
                .and_then(|s| hash_from(s, "sibling"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StateProof {
        key: bytes_of(v, "key")?,
        leaf,
        siblings,
        block_height: u64_of(v, "block_height")?,
        state_root: hash_of(v, "state_root")?,
    })
}

fn parse_condition(v: &Value) -> Result<Option<SetCondition>, String> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(Some(match str_of(v, "type")? {
        "must_not_exist" => SetCondition::MustNotExist,
        "must_exist" => SetCondition::MustExist,
        "version_equals" => SetCondition::VersionEquals(u64_of(v, "version")?),
        "value_equals" => SetCondition::ValueEquals(bytes_of(v, "value")?),
        other => return Err(format!("unknown condition type {other:?}")),
    }))
}

fn parse_operation(v: &Value) -> Result<Operation, String> {
    let s = |name: &str| str_of(v, name).map(str::to_string);
    Ok(match str_of(v, "type")? {
        "set_entity" => {
            let expires_at = u64_of(v, "expires_at")?;
            Operation::SetEntity {
                key: s("key")?,
                value: bytes_of(v, "value")?,
                expires_at: (expires_at != 0).then_some(expires_at),
                condition: parse_condition(field(v, "condition")?)?,
            }
        }
        "delete_entity" => Operation::DeleteEntity { key: s("key")? },
        "expire_entity" => Operation::ExpireEntity { key: s("key")?, expired_at: u64_of(v, "expired_at")? },
        "create_relationship" => Operation::CreateRelationship {
            resource: s("resource")?,
            relation: s("relation")?,
            subject: s("subject")?,
        },
        "delete_relationship" => Operation::DeleteRelationship {
            resource: s("resource")?,
            relation: s("relation")?,
            subject: s("subject")?,
        },
        other => return Err(format!("unknown operation type {other:?}")),
    })
}

fn parse_transaction(v: &Value) -> Result<Transaction, String> {
    let id = bytes_of(v, "id")?;
    let id = <[u8; 16]>::try_from(id.as_slice()).map_err(|_| "transaction id is not 16 bytes".to_string())?;
    let operations = field(v, "operations")?
        .as_array()
        .ok_or("operations is not an array")?
        .iter()
        .map(parse_operation)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Transaction {
        id,
        client_id: str_of(v, "client_id")?.to_string(),
        sequence: u64_of(v, "sequence")?,
        operations,
        timestamp: timestamp_of(v, "timestamp")?,
        actor: str_of(v, "actor")?.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Checking

/// Checks a parsed `verified_read` or `blocks` document; `Ok` carries a one-line summary.
pub fn verify_document(doc: &Value) -> Result<String, String> {
    match str_of(doc, "kind")? {
        "verified_read" => verify_read_document(doc),
        "blocks" => verify_blocks_document(doc),
        other => Err(format!("unknown document kind {other:?}")),
    }
}

fn verify_read_document(doc: &Value) -> Result<String, String> {
    let key = str_of(doc, "key")?;
    let header = parse_header(field(doc, "block_header")?)?;
    let proof = parse_state_proof(field(doc, "state_proof")?)?;
    let entity = match field(doc, "entity")? {
        Value::Null => None,
        e => Some(parse_entity(e)?),
    };
    let value = match field(doc, "value")? {
        Value::Null => None,
        Value::String(s) => Some(bytes_from_hex(s, "value")?),
        _ => return Err("value is neither null nor a hex string".into()),
    };
    let chain = match field(doc, "chain_proof")? {
        Value::Null => None,
        c => Some(ChainProof {
            headers: field(c, "headers")?
                .as_array()
                .ok_or("chain_proof.headers is not an array")?
                .iter()
                .map(parse_header)
                .collect::<Result<Vec<_>, _>>()?,
        }),
    };
    let trusted = match doc.get("trusted").unwrap_or(&Value::Null) {
        Value::Null => None,
        t => Some(TrustedBlock { height: u64_of(t, "height")?, block_hash: hash_of(t, "block_hash")? }),
    };
    let at_height = doc.get("at_height").and_then(Value::as_u64).filter(|h| *h > 0);
    if let Some(at) = at_height {
        if at != header.height {
            return Err(format!("at_height {at} but the header is at height {}", header.height));
        }
    }
    if let Some(claimed) = doc.get("block_hash").and_then(Value::as_str) {
        if hash_from(claimed, "block_hash")? != block_hash(&header) {
            return Err("block_hash is not the hash of block_header".into());
        }
    }
    let scope = (i64_of(doc, "namespace_id")?, i64_of(doc, "vault_id")?);
    if scope != (header.namespace_id, header.vault_id) {
        return Err(format!(
            "the header is of scope {}/{}, not {}/{}",
            header.namespace_id, header.vault_id, scope.0, scope.1
        ));
    }
    let claim = ReadClaim {
        key,
        value: value.as_deref(),
        entity: entity.as_ref(),
        block_height: u64_of(doc, "block_height")?,
        clock: if at_height.is_some() { ExpiryClock::BlockTime } else { ExpiryClock::WallClock },
    };
    verify_read(&claim, &header, &proof, chain.as_ref(), trusted.as_ref()).map_err(|e| e.to_string())?;
    let what = if entity.is_some() { "present" } else { "absent" };
    Ok(format!("key {key:?} {what} at height {}", header.height))
}

fn verify_blocks_document(doc: &Value) -> Result<String, String> {
    let blocks = field(doc, "blocks")?.as_array().ok_or("blocks is not an array")?;
    if blocks.len() > VERIFY_FILE_BLOCKS_MAX {
        return Err(format!("more than {VERIFY_FILE_BLOCKS_MAX} blocks"));
    }
    let scope = (i64_of(doc, "namespace_id")?, i64_of(doc, "vault_id")?);
    let mut previous: Option<(u64, Hash)> = None;
    for b in blocks {
        let header = parse_header(field(b, "header")?)?;
        let height = header.height;
        if (header.namespace_id, header.vault_id) != scope {
            return Err(format!("block {height} is of another scope"));
        }
        let hash = block_hash(&header);
        if let Some(claimed) = b.get("block_hash").and_then(Value::as_str) {
            if hash_from(claimed, "block_hash")? != hash {
                return Err(format!("block {height}: block_hash is not the hash of its header"));
            }
        }
        match previous {
            None if height == 0 && header.previous_hash != ZERO_HASH => {
                return Err("genesis previous_hash is not ZERO_HASH".into());
            }
            None => {}
            // `checked_add`: after a block at u64::MAX nothing follows (no wrap to height 0).
            Some((h, _)) if h.checked_add(1) != Some(height) => {
                return Err(format!("block {height} follows block {h}: heights are not consecutive"));
            }
            Some((h, previous_hash)) if header.previous_hash != previous_hash => {
                return Err(format!("block {height}: previous_hash is not the hash of block {h}"));
            }
            Some(_) => {}
        }
        let transactions = field(b, "transactions")?
            .as_array()
            .ok_or("transactions is not an array")?
            .iter()
            .map(parse_transaction)
            .collect::<Result<Vec<_>, _>>()?;
        let pruned = b.get("body_pruned").and_then(Value::as_bool).unwrap_or(false);
        if !pruned {
            let leaves: Vec<Hash> = transactions.iter().map(tx_hash).collect();
            let root = tx_merkle_root(&leaves);
            if root != header.tx_merkle_root {
                return Err(format!("block {height}: tx_merkle_root does not match its transactions"));
            }
            if height == 0 && root != EMPTY_HASH {
                return Err("genesis carries transactions".into());
            }
        }
        previous = Some((height, hash));
    }
    match (blocks.first(), previous) {
        (Some(first), Some((last, _))) => {
            let first = u64_of(field(first, "header")?, "height")?;
            Ok(format!("{} blocks {first}..={last} link and hash correctly", blocks.len()))
        }
        _ => Ok("0 blocks".into()),
    }
}

/// `ledger verify FILE`: reads, parses and checks one document.
pub fn verify_file(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if meta.len() > VERIFY_FILE_BYTES_MAX {
        return Err(format!("{path} is larger than {VERIFY_FILE_BYTES_MAX} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
    verify_document(&doc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ledger_core::smt::{key_hash, leaf_value_hash, SparseMerkleTree};

    fn header(height: u64, previous_hash: Hash, state_root: Hash, tx_merkle_root: Hash) -> BlockHeader {
        BlockHeader {
            height,
            namespace_id: 4,
            vault_id: 5,
            previous_hash,
            tx_merkle_root,
            state_root,
            timestamp: Timestamp { secs: 1_700_000_000 + height as i64, nanos: 3 },
            leader_id: 1,
            term: 1,
            committed_index: height + 2,
        }
    }

    #[test]
    fn t01_read_document_round_trip_and_tamper() {
        // A rendered verified read parses back and verifies; changing the value, a sibling or
        // the header's state root makes it fail.
        let tree = SparseMerkleTree::from_leaves([
            (key_hash(b"user:1"), leaf_value_hash(b"user:1", b"alice", 0, 1)),
            (key_hash(b"user:2"), leaf_value_hash(b"user:2", b"bob", 0, 1)),
        ]);
        let genesis = header(0, ZERO_HASH, ZERO_HASH, EMPTY_HASH);
        let h1 = header(1, block_hash(&genesis), tree.root(), EMPTY_HASH);
        let (leaf, siblings) = tree.prove(b"user:1");
        let proof =
            StateProof { key: b"user:1".to_vec(), leaf, siblings, block_height: 1, state_root: tree.root() };
        let entity = Entity { key: "user:1".into(), value: b"alice".to_vec(), expires_at: 0, version: 1 };
        let chain = ChainProof { headers: vec![h1.clone()] };
        let view = VerifiedReadView {
            namespace_id: 4,
            vault_id: Some(5),
            key: "user:1",
            at_height: None,
            value: Some(b"alice"),
            entity: Some(&entity),
            block_height: 1,
            header: &h1,
            state_proof: &proof,
            chain_proof: Some(&chain),
            trusted: Some(TrustedBlock::of(&genesis)),
        };
        let doc = verified_read_json(&view);
        let text = doc.to_string();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert!(verify_document(&parsed).is_ok(), "{:?}", verify_document(&parsed));
        let mut bad = parsed.clone();
        bad["value"] = json!(hex(b"alicf"));
        assert!(verify_document(&bad).is_err());
        let mut bad = parsed.clone();
        bad["entity"]["value"] = json!(hex(b"alicf"));
        bad["value"] = json!(hex(b"alicf"));
        assert!(verify_document(&bad).is_err());
        let mut bad = parsed.clone();
        bad["state_proof"]["siblings"][0] = json!(hex(&[9u8; 32]));
        assert!(verify_document(&bad).is_err());
        let mut bad = parsed.clone();
        bad["trusted"]["block_hash"] = json!(hex(&[1u8; 32]));
        assert!(verify_document(&bad).is_err());
        let mut bad = parsed;
        bad["block_header"]["term"] = json!(9);
        bad["block_hash"] = Value::Null;
        assert!(verify_document(&bad).is_err());
    }

    #[test]
    fn t02_blocks_document_round_trip_and_tamper() {
        // A rendered block range verifies; a changed operation byte or a broken link fails.
        let tx = Transaction {
            id: [1; 16],
            client_id: "c".into(),
            sequence: 1,
            operations: vec![Operation::SetEntity {
                key: "k".into(),
                value: vec![0, 159, 146, 150],
                expires_at: Some(9),
                condition: Some(SetCondition::ValueEquals(vec![1, 2])),
            }],
            timestamp: Timestamp { secs: 5, nanos: 6 },
            actor: "client:c".into(),
        };
        let genesis = header(0, ZERO_HASH, ZERO_HASH, EMPTY_HASH);
        let h1 = header(1, block_hash(&genesis), [3; 32], tx_merkle_root(&[tx_hash(&tx)]));
        let blocks = vec![
            Block { header: genesis, transactions: vec![] },
            Block { header: h1, transactions: vec![tx] },
        ];
        let doc: Value = serde_json::from_str(&blocks_json(4, Some(5), &blocks, 1).to_string()).unwrap();
        assert!(verify_document(&doc).is_ok(), "{:?}", verify_document(&doc));
        let mut bad = doc.clone();
        bad["blocks"][1]["transactions"][0]["operations"][0]["value"] = json!("009f9297");
        assert!(verify_document(&bad).is_err());
        let mut bad = doc;
        bad["blocks"][0]["header"]["committed_index"] = json!(77);
        bad["blocks"][0]["block_hash"] = Value::Null;
        assert!(verify_document(&bad).is_err());
    }

    #[test]
    fn t90_issue_12_hex_is_lowercase_digits_only() {
        // Found while writing the verify_json fuzz target: `u8::from_str_radix` took "+f" and
        // "AB" as hex. Each byte string now has one spelling: lowercase digits only.
        assert_eq!(bytes_from_hex("00ff9a", "v"), Ok(vec![0, 255, 154]));
        for bad in ["+f", "FF", "0g", "-1", " 1", "\u{e9}"] {
            assert!(bytes_from_hex(bad, "v").is_err(), "{bad:?} was taken as hex");
        }
    }

    #[test]
    fn t90_issue_12_no_block_follows_height_u64_max() {
        // A block range whose heights go u64::MAX, 0 is not consecutive. `h + 1` overflowed
        // there (a panic in a debug build, a wrap to 0 that passed the check in release).
        let mut last = header(7, ZERO_HASH, [3; 32], EMPTY_HASH);
        last.height = u64::MAX;
        let next = header(0, block_hash(&last), [3; 32], EMPTY_HASH);
        let blocks =
            vec![Block { header: last, transactions: vec![] }, Block { header: next, transactions: vec![] }];
        let doc: Value = serde_json::from_str(&blocks_json(4, Some(5), &blocks, 1).to_string()).unwrap();
        let error = verify_document(&doc).unwrap_err();
        assert!(error.contains("not consecutive"), "{error}");
    }
}
