//! Client-side verification of what a server returns (SPEC §7.4–§7.7): a point read (state proof
//! against its header, the header against a trusted block directly or through a chain proof, and
//! the TTL-filtered value against the proven row) and a write (the transaction hash recomputed
//! from the client's own request plus the returned id, actor and timestamp, then its Merkle path
//! to the header's `tx_merkle_root`). Pure functions over the SPEC §4.4 types, so the wire client,
//! the CLI's offline `ledger verify` and third-party tests all run exactly the same checks.

use crate::error::ProofError;
use crate::hash::{block_hash, tx_hash, tx_proof_root, verify_chain};
use crate::smt::verify_state_proof;
use crate::types::*;

/// Why a read or write response does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("the returned entity is for key {got:?}, not {expected:?}")]
    EntityKeyMismatch { expected: String, got: String },
    #[error("the returned value differs from the proven entity's value")]
    ValueMismatch,
    #[error("a value is returned but no entity row is proven")]
    ValueWithoutEntity,
    #[error("the value is withheld but the proven entity is not expired")]
    ValueHidden,
    #[error("the value is returned but the proven entity had expired at the block's time")]
    ValueExpired,
    #[error("block_height {response} differs from the header's height {header}")]
    HeightMismatch { response: u64, header: u64 },
    #[error("the header hash {computed} differs from the trusted block hash {trusted}")]
    TrustedHashMismatch { computed: String, trusted: String },
    #[error("the trusted height {trusted} is above the proven height {header}")]
    TrustedAboveHeader { trusted: u64, header: u64 },
    #[error("a chain proof from trusted height {trusted} to height {header} is needed")]
    ChainProofMissing { trusted: u64, header: u64 },
    #[error("chain proof starts at height {got}, expected {expected}")]
    ChainStart { expected: u64, got: u64 },
    #[error("the header is of scope {got_namespace}/{got_vault}, expected {namespace}/{vault}")]
    ScopeMismatch { namespace: i64, vault: i64, got_namespace: i64, got_vault: i64 },
    #[error("the write response carries no block header")]
    HeaderMissing,
    #[error("the write response carries no transaction proof")]
    TxProofMissing,
    #[error("the proof's leaf is not the hash of this transaction")]
    TxHashMismatch,
    #[error("the transaction proof does not lead to the header's tx_merkle_root")]
    TxRootMismatch,
}

/// A block the verifier already trusts: its height and block hash (SPEC §7.3), e.g. taken from a
/// header it verified earlier or from an out-of-band source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedBlock {
    pub height: u64,
    pub block_hash: Hash,
}

impl TrustedBlock {
    pub fn of(header: &BlockHeader) -> TrustedBlock {
        TrustedBlock { height: header.height, block_hash: block_hash(header) }
    }
}

/// When the server judged TTL for the returned `value` (SPEC §3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryClock {
    /// A current read: the node's wall clock, which is at or after the block's time but unknown
    /// to the verifier, so a hidden value only needs a non-zero expiry.
    WallClock,
    /// A historical read: the timestamp of the block at the read height.
    BlockTime,
}

/// What a read response claims about one key.
#[derive(Debug, Clone, Copy)]
pub struct ReadClaim<'a> {
    pub key: &'a str,
    /// The TTL-filtered value.
    pub value: Option<&'a [u8]>,
    /// The raw committed row the state proof covers (`None` = absent).
    pub entity: Option<&'a Entity>,
    pub block_height: u64,
    pub clock: ExpiryClock,
}

/// SPEC §7.7: checks a read response. The state proof must prove `entity` (or the key's absence)
/// under `header.state_root`; `value` must be `entity`'s value unless TTL hides it; and when
/// `trusted` is given the header must be that block (same height) or be reached from it by
/// `chain` (headers `trusted.height + 1 ..= header.height`).
pub fn verify_read(
    claim: &ReadClaim<'_>,
    header: &BlockHeader,
    state_proof: &StateProof,
    chain: Option<&ChainProof>,
    trusted: Option<&TrustedBlock>,
) -> Result<(), VerifyError> {
    if claim.block_height != header.height {
        return Err(VerifyError::HeightMismatch { response: claim.block_height, header: header.height });
    }
    if let Some(entity) = claim.entity {
        if entity.key != claim.key {
            return Err(VerifyError::EntityKeyMismatch {
                expected: claim.key.to_string(),
                got: entity.key.clone(),
            });
        }
    }
    let row = claim.entity.map(|e| (e.value.as_slice(), e.expires_at, e.version));
    verify_state_proof(state_proof, claim.key.as_bytes(), row, header)?;
    check_value(claim, header)?;
    match trusted {
        None => Ok(()),
        Some(trusted) => verify_header_trust(header, chain, trusted),
    }
}

/// The TTL rule of SPEC §3.8 between the filtered `value` and the proven row.
fn check_value(claim: &ReadClaim<'_>, header: &BlockHeader) -> Result<(), VerifyError> {
    let block_secs = u64::try_from(header.timestamp.secs).unwrap_or(0);
    match (claim.value, claim.entity) {
        (Some(_), None) => Err(VerifyError::ValueWithoutEntity),
        (Some(value), Some(entity)) => {
            if value != entity.value.as_slice() {
                return Err(VerifyError::ValueMismatch);
            }
            if claim.clock == ExpiryClock::BlockTime && expired_at(entity.expires_at, block_secs) {
                return Err(VerifyError::ValueExpired);
            }
            Ok(())
        }
        (None, None) => Ok(()),
        (None, Some(entity)) => {
            let hidden_ok = match claim.clock {
                ExpiryClock::WallClock => entity.expires_at != 0,
                ExpiryClock::BlockTime => expired_at(entity.expires_at, block_secs),
            };
            if hidden_ok {
                Ok(())
            } else {
                Err(VerifyError::ValueHidden)
            }
        }
    }
}

fn expired_at(expires_at: u64, secs: u64) -> bool {
    expires_at != 0 && secs >= expires_at
}

/// The header is the trusted block, or a chain proof leads from the trusted block to it.
pub fn verify_header_trust(
    header: &BlockHeader,
    chain: Option<&ChainProof>,
    trusted: &TrustedBlock,
) -> Result<(), VerifyError> {
    if trusted.height > header.height {
        return Err(VerifyError::TrustedAboveHeader { trusted: trusted.height, header: header.height });
    }
    if trusted.height == header.height {
        let computed = block_hash(header);
        if computed != trusted.block_hash {
            return Err(VerifyError::TrustedHashMismatch {
                computed: crate::hash::to_hex(&computed),
                trusted: crate::hash::to_hex(&trusted.block_hash),
            });
        }
        return Ok(());
    }
    let Some(chain) = chain else {
        return Err(VerifyError::ChainProofMissing { trusted: trusted.height, header: header.height });
    };
    verify_chain_from(trusted, chain, header)
}

/// SPEC §7.7 chain proof from a trusted (height, hash) rather than a full header: the first
/// header sits at `trusted.height + 1` and links to `trusted.block_hash`; then `verify_chain`'s
/// rules; the last header equals `target`.
pub fn verify_chain_from(
    trusted: &TrustedBlock,
    chain: &ChainProof,
    target: &BlockHeader,
) -> Result<(), VerifyError> {
    let first = chain.headers.first().ok_or(ProofError::EmptyChain)?;
    let expected = trusted.height.saturating_add(1);
    if first.height != expected {
        return Err(VerifyError::ChainStart { expected, got: first.height });
    }
    if first.previous_hash != trusted.block_hash {
        return Err(ProofError::ChainLinkBroken { height: first.height }.into());
    }
    let rest = ChainProof { headers: chain.headers[1..].to_vec() };
    if !rest.headers.is_empty() {
        verify_chain(first, &rest)?;
    }
    match chain.headers.last() {
        Some(last) if last == target => Ok(()),
        _ => Err(ProofError::ChainTargetMismatch.into()),
    }
}

/// What a client knows about its own write plus the ids the server returned (SPEC §7.7
/// "Write proof"): enough to recompute the transaction hash.
#[derive(Debug, Clone, Copy)]
pub struct WriteClaim<'a> {
    pub namespace_id: i64,
    /// 0 = the namespace scope.
    pub vault_id: i64,
    /// The operations as sent; a `BatchWrite`'s groups concatenated in order.
    pub operations: &'a [Operation],
    pub client_id: &'a str,
    pub sequence: u64,
    /// From the response: `tx_id`, `actor`, `tx_timestamp`, `block_height`.
    pub tx_id: &'a TxId,
    pub actor: &'a str,
    pub timestamp: Timestamp,
    pub block_height: u64,
}

/// Recomputes `tx_hash` from the claim (SPEC §7.4) and checks the inclusion proof against the
/// header's `tx_merkle_root` (§7.5, §7.7), and that the header is of the claim's scope and height.
pub fn verify_write(
    claim: &WriteClaim<'_>,
    header: Option<&BlockHeader>,
    proof: Option<&MerkleProof>,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::HeaderMissing)?;
    let proof = proof.ok_or(VerifyError::TxProofMissing)?;
    if header.namespace_id != claim.namespace_id || header.vault_id != claim.vault_id {
        return Err(VerifyError::ScopeMismatch {
            namespace: claim.namespace_id,
            vault: claim.vault_id,
            got_namespace: header.namespace_id,
            got_vault: header.vault_id,
        });
    }
    if header.height != claim.block_height {
        return Err(VerifyError::HeightMismatch { response: claim.block_height, header: header.height });
    }
    let tx = Transaction {
        id: *claim.tx_id,
        client_id: claim.client_id.to_string(),
        sequence: claim.sequence,
        operations: claim.operations.to_vec(),
        timestamp: claim.timestamp,
        actor: claim.actor.to_string(),
    };
    if proof.leaf_hash != tx_hash(&tx) {
        return Err(VerifyError::TxHashMismatch);
    }
    if tx_proof_root(proof) != header.tx_merkle_root {
        return Err(VerifyError::TxRootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hash::{tx_merkle_proof, tx_merkle_root, EMPTY_HASH};
    use crate::smt::{key_hash, leaf_value_hash, SparseMerkleTree};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NS: i64 = 3;
    const VAULT: i64 = 9;

    /// A chain of `n + 1` headers (genesis..=n) whose state roots are given per height.
    fn chain_with_roots(roots: &[Hash], ts_secs: i64) -> Vec<BlockHeader> {
        let mut out: Vec<BlockHeader> = Vec::new();
        for (height, root) in roots.iter().enumerate() {
            let previous_hash = out.last().map(block_hash).unwrap_or(ZERO_HASH);
            out.push(BlockHeader {
                height: height as u64,
                namespace_id: NS,
                vault_id: VAULT,
                previous_hash,
                tx_merkle_root: EMPTY_HASH,
                state_root: *root,
                timestamp: Timestamp { secs: ts_secs + height as i64, nanos: 7 },
                leader_id: 1,
                term: 2,
                committed_index: 10 + height as u64,
            });
        }
        out
    }

    type Rows = BTreeMap<String, (Vec<u8>, u64, u64)>;

    fn tree_of(rows: &Rows) -> SparseMerkleTree {
        SparseMerkleTree::from_leaves(
            rows.iter()
                .map(|(k, (v, e, ver))| (key_hash(k.as_bytes()), leaf_value_hash(k.as_bytes(), v, *e, *ver))),
        )
    }

    fn proof_of(tree: &SparseMerkleTree, key: &str, height: u64) -> StateProof {
        let (leaf, siblings) = tree.prove(key.as_bytes());
        StateProof {
            key: key.as_bytes().to_vec(),
            leaf,
            siblings,
            block_height: height,
            state_root: tree.root(),
        }
    }

    fn entity_of(rows: &Rows, key: &str) -> Option<Entity> {
        rows.get(key).map(|(v, e, ver)| Entity {
            key: key.into(),
            value: v.clone(),
            expires_at: *e,
            version: *ver,
        })
    }

    #[test]
    fn t01_read_membership_absence_and_trust() {
        // A present and an absent key verify against their header alone, against a trusted
        // block at the same height, and through a chain proof from an earlier trusted block;
        // a wrong trusted hash, a missing chain proof and a trusted height above fail.
        let mut rows = Rows::new();
        rows.insert("user:1".into(), (b"alice".to_vec(), 0, 1));
        let tree = tree_of(&rows);
        let headers = chain_with_roots(&[ZERO_HASH, ZERO_HASH, tree.root(), tree.root()], 1_000);
        let header = &headers[3];
        let entity = entity_of(&rows, "user:1").unwrap();
        let claim = ReadClaim {
            key: "user:1",
            value: Some(b"alice"),
            entity: Some(&entity),
            block_height: 3,
            clock: ExpiryClock::WallClock,
        };
        let proof = proof_of(&tree, "user:1", 3);
        assert_eq!(verify_read(&claim, header, &proof, None, None), Ok(()));
        assert_eq!(verify_read(&claim, header, &proof, None, Some(&TrustedBlock::of(header))), Ok(()));
        let chain = ChainProof { headers: headers[2..=3].to_vec() };
        let trusted = TrustedBlock::of(&headers[1]);
        assert_eq!(verify_read(&claim, header, &proof, Some(&chain), Some(&trusted)), Ok(()));
        assert!(matches!(
            verify_read(&claim, header, &proof, None, Some(&trusted)),
            Err(VerifyError::ChainProofMissing { .. })
        ));
        let wrong = TrustedBlock { height: 1, block_hash: [7; 32] };
        assert!(verify_read(&claim, header, &proof, Some(&chain), Some(&wrong)).is_err());
        let above = TrustedBlock { height: 4, block_hash: [0; 32] };
        assert!(matches!(
            verify_read(&claim, header, &proof, None, Some(&above)),
            Err(VerifyError::TrustedAboveHeader { .. })
        ));
        let absent = ReadClaim {
            key: "user:2",
            value: None,
            entity: None,
            block_height: 3,
            clock: ExpiryClock::BlockTime,
        };
        assert_eq!(verify_read(&absent, header, &proof_of(&tree, "user:2", 3), None, None), Ok(()));
        // Claiming absence of a present key fails.
        let lie = ReadClaim { key: "user:1", value: None, entity: None, ..claim };
        assert!(verify_read(&lie, header, &proof, None, None).is_err());
    }

    #[test]
    fn t02_ttl_value_rules() {
        // The filtered value must match the row; a hidden value needs an expiry (wall clock) or
        // an expiry at or before the block time (historical); a shown value must not be expired
        // at the block time.
        let mut rows = Rows::new();
        rows.insert("k".into(), (b"v".to_vec(), 1_005, 2));
        let tree = tree_of(&rows);
        let headers = chain_with_roots(&[ZERO_HASH, tree.root()], 1_004); // height 1 at secs 1005
        let entity = entity_of(&rows, "k").unwrap();
        let proof = proof_of(&tree, "k", 1);
        let base = ReadClaim {
            key: "k",
            value: None,
            entity: Some(&entity),
            block_height: 1,
            clock: ExpiryClock::BlockTime,
        };
        assert_eq!(verify_read(&base, &headers[1], &proof, None, None), Ok(()));
        let shown = ReadClaim { value: Some(b"v"), ..base };
        assert_eq!(verify_read(&shown, &headers[1], &proof, None, None), Err(VerifyError::ValueExpired));
        let wall = ReadClaim { clock: ExpiryClock::WallClock, ..shown };
        assert_eq!(verify_read(&wall, &headers[1], &proof, None, None), Ok(()));
        let other = ReadClaim { value: Some(b"w"), ..wall };
        assert_eq!(verify_read(&other, &headers[1], &proof, None, None), Err(VerifyError::ValueMismatch));
        // A row without expiry can never be hidden.
        let mut forever = Rows::new();
        forever.insert("k".into(), (b"v".to_vec(), 0, 2));
        let tree = tree_of(&forever);
        let headers = chain_with_roots(&[ZERO_HASH, tree.root()], 1_004);
        let entity = entity_of(&forever, "k").unwrap();
        let hidden = ReadClaim {
            key: "k",
            value: None,
            entity: Some(&entity),
            block_height: 1,
            clock: ExpiryClock::WallClock,
        };
        assert_eq!(
            verify_read(&hidden, &headers[1], &proof_of(&tree, "k", 1), None, None),
            Err(VerifyError::ValueHidden)
        );
    }

    fn write_fixture(n: usize, index: usize) -> (Vec<Transaction>, BlockHeader, MerkleProof) {
        let txs: Vec<Transaction> = (0..n)
            .map(|i| Transaction {
                id: [i as u8; 16],
                client_id: format!("cli-{i}"),
                sequence: i as u64 + 1,
                operations: vec![Operation::SetEntity {
                    key: format!("k{i}"),
                    value: vec![i as u8],
                    expires_at: Some(50),
                    condition: Some(SetCondition::VersionEquals(2)),
                }],
                timestamp: Timestamp { secs: 1_700_000_000, nanos: 12 },
                actor: format!("client:cli-{i}"),
            })
            .collect();
        let leaves: Vec<Hash> = txs.iter().map(tx_hash).collect();
        let mut header = chain_with_roots(&[ZERO_HASH, ZERO_HASH], 1)[1].clone();
        header.tx_merkle_root = tx_merkle_root(&leaves);
        (txs, header, tx_merkle_proof(&leaves, index))
    }

    fn claim_of(tx: &Transaction) -> WriteClaim<'_> {
        WriteClaim {
            namespace_id: NS,
            vault_id: VAULT,
            operations: &tx.operations,
            client_id: &tx.client_id,
            sequence: tx.sequence,
            tx_id: &tx.id,
            actor: &tx.actor,
            timestamp: tx.timestamp,
            block_height: 1,
        }
    }

    #[test]
    fn t03_write_inclusion() {
        // Every transaction of blocks of 1..=7 transactions verifies from the client's view; a
        // changed op, sequence, actor, timestamp, scope, or missing proof fails.
        for n in 1..=7 {
            for index in 0..n {
                let (txs, header, proof) = write_fixture(n, index);
                let tx = &txs[index];
                assert_eq!(verify_write(&claim_of(tx), Some(&header), Some(&proof)), Ok(()));
                let mut ops = tx.operations.clone();
                ops.push(Operation::DeleteEntity { key: "x".into() });
                let claim = WriteClaim { operations: &ops, ..claim_of(tx) };
                assert_eq!(
                    verify_write(&claim, Some(&header), Some(&proof)),
                    Err(VerifyError::TxHashMismatch)
                );
                let claim = WriteClaim { sequence: tx.sequence + 1, ..claim_of(tx) };
                assert!(verify_write(&claim, Some(&header), Some(&proof)).is_err());
                let claim = WriteClaim { actor: "client:else", ..claim_of(tx) };
                assert!(verify_write(&claim, Some(&header), Some(&proof)).is_err());
                let claim = WriteClaim { timestamp: Timestamp { secs: 1, nanos: 0 }, ..claim_of(tx) };
                assert!(verify_write(&claim, Some(&header), Some(&proof)).is_err());
                let claim = WriteClaim { vault_id: VAULT + 1, ..claim_of(tx) };
                assert!(verify_write(&claim, Some(&header), Some(&proof)).is_err());
                assert_eq!(
                    verify_write(&claim_of(tx), Some(&header), None),
                    Err(VerifyError::TxProofMissing)
                );
                assert_eq!(verify_write(&claim_of(tx), None, Some(&proof)), Err(VerifyError::HeaderMissing));
                let mut bad_header = header.clone();
                bad_header.tx_merkle_root[0] ^= 1;
                assert_eq!(
                    verify_write(&claim_of(tx), Some(&bad_header), Some(&proof)),
                    Err(VerifyError::TxRootMismatch)
                );
            }
        }
    }

    /// Flips bit `bit` of byte `byte % len` of the header field chosen by `field`.
    fn tamper_header(header: &mut BlockHeader, field: u8, byte: usize, bit: u8) {
        let mask = 1u8 << (bit % 8);
        match field % 9 {
            0 => header.height ^= 1 << (byte % 64),
            1 => header.namespace_id ^= 1 << (byte % 63),
            2 => header.vault_id ^= 1 << (byte % 63),
            3 => header.previous_hash[byte % 32] ^= mask,
            4 => header.tx_merkle_root[byte % 32] ^= mask,
            5 => header.state_root[byte % 32] ^= mask,
            6 => header.timestamp.secs ^= 1 << (byte % 63),
            7 => header.term ^= 1 << (byte % 64),
            _ => header.committed_index ^= 1 << (byte % 64),
        }
    }

    fn arb_rows() -> impl Strategy<Value = Rows> {
        proptest::collection::btree_map(
            (0u8..48).prop_map(|i| format!("key:{i}")),
            (proptest::collection::vec(any::<u8>(), 0..6), prop_oneof![Just(0u64), 1u64..3_000], 1u64..9),
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn p01_every_read_proof_verifies_and_tampering_fails(
            rows in arb_rows(),
            probe in 0u8..64,
            field in any::<u8>(),
            byte in any::<usize>(),
            bit in any::<u8>(),
            chain_len in 1usize..5,
        ) {
            // A proof for a present or absent key, served with a chain proof from a trusted
            // block, verifies; flipping one bit of the value, expiry, version, a sibling, any
            // hashed header field, or any chain-proof header breaks it.
            let tree = tree_of(&rows);
            let mut roots = vec![ZERO_HASH; chain_len];
            roots.push(tree.root());
            let headers = chain_with_roots(&roots, 1_000);
            let height = chain_len as u64;
            let header = headers[chain_len].clone();
            let trusted = TrustedBlock::of(&headers[0]);
            let chain = ChainProof { headers: headers[1..].to_vec() };
            let key = format!("key:{probe}");
            let entity = entity_of(&rows, &key);
            let proof = proof_of(&tree, &key, height);
            let claim = ReadClaim {
                key: &key,
                value: entity.as_ref().map(|e| e.value.as_slice()),
                entity: entity.as_ref(),
                block_height: height,
                clock: ExpiryClock::WallClock,
            };
            prop_assert_eq!(verify_read(&claim, &header, &proof, Some(&chain), Some(&trusted)), Ok(()));

            if let Some(e) = &entity {
                let mut v = e.clone(); v.value.push(bit);
                let c = ReadClaim { entity: Some(&v), value: Some(&v.value), ..claim };
                prop_assert!(verify_read(&c, &header, &proof, Some(&chain), Some(&trusted)).is_err());
                let mut v = e.clone(); v.expires_at ^= 1 << (bit % 64);
                let c = ReadClaim { entity: Some(&v), ..claim };
                prop_assert!(verify_read(&c, &header, &proof, Some(&chain), Some(&trusted)).is_err());
                let mut v = e.clone(); v.version ^= 1 << (bit % 64);
                let c = ReadClaim { entity: Some(&v), ..claim };
                prop_assert!(verify_read(&c, &header, &proof, Some(&chain), Some(&trusted)).is_err());
            }
            if !proof.siblings.is_empty() {
                let mut bad = proof.clone();
                let i = byte % bad.siblings.len();
                bad.siblings[i][byte % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_read(&claim, &header, &bad, Some(&chain), Some(&trusted)).is_err());
            }
            // A tampered response header (the chain proof still ends in the original).
            let mut bad_header = header.clone();
            tamper_header(&mut bad_header, field, byte, bit);
            let mut bad_proof = proof.clone();
            bad_proof.block_height = bad_header.height;
            bad_proof.state_root = bad_header.state_root;
            let c = ReadClaim { block_height: bad_header.height, ..claim };
            prop_assert!(verify_read(&c, &bad_header, &bad_proof, Some(&chain), Some(&trusted)).is_err());
            prop_assert!(verify_read(&c, &bad_header, &bad_proof, None, Some(&TrustedBlock::of(&header))).is_err());
            // A tampered chain link (any header of the chain proof, any hashed field).
            let mut bad_chain = chain.clone();
            let at = byte % bad_chain.headers.len();
            tamper_header(&mut bad_chain.headers[at], field, byte / 7, bit);
            prop_assert!(verify_read(&claim, &header, &proof, Some(&bad_chain), Some(&trusted)).is_err());
        }

        #[test]
        fn p02_every_write_proof_verifies_and_tampering_fails(
            n in 1usize..12,
            pick in any::<usize>(),
            byte in any::<usize>(),
            bit in any::<u8>(),
        ) {
            // Every transaction of a block verifies; flipping a bit of the tx id or of any
            // proof sibling fails.
            let index = pick % n;
            let (txs, header, proof) = write_fixture(n, index);
            let tx = &txs[index];
            prop_assert_eq!(verify_write(&claim_of(tx), Some(&header), Some(&proof)), Ok(()));
            let mut id = tx.id;
            id[byte % 16] ^= 1 << (bit % 8);
            let claim = WriteClaim { tx_id: &id, ..claim_of(tx) };
            prop_assert!(verify_write(&claim, Some(&header), Some(&proof)).is_err());
            if !proof.siblings.is_empty() {
                let mut bad = proof.clone();
                let i = byte % bad.siblings.len();
                bad.siblings[i].0[byte % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_write(&claim_of(tx), Some(&header), Some(&bad)).is_err());
            }
        }
    }
}
