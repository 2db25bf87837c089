//! The byte-exact hashes of SPEC §7.1–7.5 and §7.8 (blake3): block, operation, transaction and
//! group hashes, the transaction Merkle tree with its inclusion proofs, chain-proof verification
//! and the snapshot chain commitment. Every client-verifiable digest is defined here and nowhere
//! else, so a layout change cannot drift between writer and verifier. Inputs are fed to one
//! `blake3::Hasher` piece by piece (or assembled on the stack) to avoid per-call allocation.

use crate::error::ProofError;
use crate::types::*;
use rkyv::{Archive, Deserialize, Serialize};

/// Decode 64 hex digits at compile time (used for the SPEC §7.9 constants).
pub const fn hex32(s: &str) -> Hash {
    let b = s.as_bytes();
    assert!(b.len() == 64, "hex32 needs 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// Lower-case hex of a hash, for logs, events and test assertions.
pub fn to_hex(hash: &Hash) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `H("")` (SPEC §7.2, §7.9): the tx Merkle root of an entry without transactions.
pub const EMPTY_HASH: Hash = hex32("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
/// The state root of an empty scope (SPEC §7.6, §7.9).
pub const EMPTY_STATE_ROOT: Hash = ZERO_HASH;

/// Size of the fixed block-hash input (SPEC §7.3).
pub const BLOCK_HASH_INPUT_BYTES: usize = 148;
const _: () = assert!(BLOCK_HASH_INPUT_BYTES == 8 + 8 + 8 + 32 + 32 + 32 + 8 + 4 + 8 + 8);

/// `H(bytes)`.
#[inline]
pub fn h(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// The plain Merkle parent `H(left ‖ right)` of the tx tree (SPEC §7.5) and of §7.8 folds.
#[inline]
pub fn merkle_parent(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    h(&buf)
}

/// SPEC §7.3: blake3 over the 148-byte fixed encoding of a header (`leader_id` excluded).
pub fn block_hash(header: &BlockHeader) -> Hash {
    let mut buf = [0u8; BLOCK_HASH_INPUT_BYTES];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&header.height.to_be_bytes());
    put(&header.namespace_id.to_be_bytes());
    put(&header.vault_id.to_be_bytes());
    put(&header.previous_hash);
    put(&header.tx_merkle_root);
    put(&header.state_root);
    put(&header.timestamp.secs.to_be_bytes());
    put(&header.timestamp.nanos.to_be_bytes());
    put(&header.term.to_be_bytes());
    put(&header.committed_index.to_be_bytes());
    assert!(at == BLOCK_HASH_INPUT_BYTES);
    h(&buf)
}

/// Feed `len u32 LE ‖ bytes` (the SPEC §7.4 length-prefixed string/bytes encoding).
#[inline]
fn put_lp(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("hashed field longer than u32::MAX bytes");
    hasher.update(&len.to_le_bytes());
    hasher.update(bytes);
}

/// Operation type bytes of SPEC §7.4.
pub mod op_type {
    pub const SET_ENTITY: u8 = 0x01;
    pub const DELETE_ENTITY: u8 = 0x02;
    pub const EXPIRE_ENTITY: u8 = 0x03;
    pub const CREATE_RELATIONSHIP: u8 = 0x04;
    pub const DELETE_RELATIONSHIP: u8 = 0x05;
}

/// Condition type bytes of SPEC §3.3 / §7.4.
pub mod cond_type {
    pub const NONE: u8 = 0x00;
    pub const MUST_NOT_EXIST: u8 = 0x01;
    pub const MUST_EXIST: u8 = 0x02;
    pub const VERSION_EQUALS: u8 = 0x03;
    pub const VALUE_EQUALS: u8 = 0x04;
}

/// SPEC §7.4: `op_hash = H(op_type u8 ‖ op_data)`.
pub fn op_hash(op: &Operation) -> Hash {
    let mut hasher = blake3::Hasher::new();
    match op {
        Operation::SetEntity { key, value, expires_at, condition } => {
            hasher.update(&[op_type::SET_ENTITY]);
            put_lp(&mut hasher, key.as_bytes());
            put_lp(&mut hasher, value);
            hasher.update(&expires_at.unwrap_or(0).to_be_bytes());
            match condition {
                None => {
                    hasher.update(&[cond_type::NONE]);
                }
                Some(SetCondition::MustNotExist) => {
                    hasher.update(&[cond_type::MUST_NOT_EXIST]);
                }
                Some(SetCondition::MustExist) => {
                    hasher.update(&[cond_type::MUST_EXIST]);
                }
                Some(SetCondition::VersionEquals(v)) => {
                    hasher.update(&[cond_type::VERSION_EQUALS]);
                    hasher.update(&v.to_be_bytes());
                }
                Some(SetCondition::ValueEquals(bytes)) => {
                    hasher.update(&[cond_type::VALUE_EQUALS]);
                    put_lp(&mut hasher, bytes);
                }
            }
        }
        Operation::DeleteEntity { key } => {
            hasher.update(&[op_type::DELETE_ENTITY]);
            put_lp(&mut hasher, key.as_bytes());
        }
        Operation::ExpireEntity { key, expired_at } => {
            hasher.update(&[op_type::EXPIRE_ENTITY]);
            put_lp(&mut hasher, key.as_bytes());
            hasher.update(&expired_at.to_be_bytes());
        }
        Operation::CreateRelationship { resource, relation, subject } => {
            hasher.update(&[op_type::CREATE_RELATIONSHIP]);
            put_lp(&mut hasher, resource.as_bytes());
            put_lp(&mut hasher, relation.as_bytes());
            put_lp(&mut hasher, subject.as_bytes());
        }
        Operation::DeleteRelationship { resource, relation, subject } => {
            hasher.update(&[op_type::DELETE_RELATIONSHIP]);
            put_lp(&mut hasher, resource.as_bytes());
            put_lp(&mut hasher, relation.as_bytes());
            put_lp(&mut hasher, subject.as_bytes());
        }
    }
    *hasher.finalize().as_bytes()
}

/// SPEC §7.4: the canonical transaction hash (the tx Merkle leaf).
pub fn tx_hash(tx: &Transaction) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&tx.id);
    put_lp(&mut hasher, tx.client_id.as_bytes());
    hasher.update(&tx.sequence.to_be_bytes());
    put_lp(&mut hasher, tx.actor.as_bytes());
    hasher.update(&tx.timestamp.secs.to_be_bytes());
    hasher.update(&tx.timestamp.nanos.to_be_bytes());
    let op_count = u32::try_from(tx.operations.len()).expect("more than u32::MAX operations");
    hasher.update(&op_count.to_be_bytes());
    for op in &tx.operations {
        hasher.update(&op_hash(op));
    }
    *hasher.finalize().as_bytes()
}

/// SPEC §7.5: Merkle root over `leaves` (odd levels duplicate their last node; one leaf is its own
/// root; no leaves ⇒ `EMPTY_HASH`). Allocates one scratch level of half the input size.
pub fn tx_merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => return EMPTY_HASH,
        1 => return leaves[0],
        _ => {}
    }
    let mut level: Vec<Hash> = leaves.chunks(2).map(pair_parent).collect();
    while level.len() > 1 {
        let next = level.len().div_ceil(2);
        for i in 0..next {
            let left = level[2 * i];
            let right = if 2 * i + 1 < level.len() { level[2 * i + 1] } else { left };
            level[i] = merkle_parent(&left, &right);
        }
        level.truncate(next);
    }
    level[0]
}

fn pair_parent(pair: &[Hash]) -> Hash {
    match pair {
        [left, right] => merkle_parent(left, right),
        [only] => merkle_parent(only, only),
        _ => unreachable!("chunks(2) yields one or two hashes"),
    }
}

/// SPEC §7.7: the inclusion proof of `leaves[index]`, siblings bottom-up. Panics when `index` is out
/// of range (a caller bug: the caller picked the index from the same slice).
pub fn tx_merkle_proof(leaves: &[Hash], index: usize) -> MerkleProof {
    assert!(index < leaves.len(), "tx_merkle_proof index {index} out of {} leaves", leaves.len());
    let mut siblings = Vec::new();
    let mut level: Vec<Hash> = leaves.to_vec();
    let mut at = index;
    while level.len() > 1 {
        let sibling = if at.is_multiple_of(2) {
            let right = if at + 1 < level.len() { level[at + 1] } else { level[at] };
            (right, Direction::Right)
        } else {
            (level[at - 1], Direction::Left)
        };
        siblings.push(sibling);
        level = level.chunks(2).map(pair_parent).collect();
        at /= 2;
    }
    MerkleProof { leaf_hash: leaves[index], siblings }
}

/// The root a tx inclusion proof leads to (SPEC §7.7).
pub fn tx_proof_root(proof: &MerkleProof) -> Hash {
    proof.siblings.iter().fold(proof.leaf_hash, |cur, (sibling, direction)| match direction {
        Direction::Left => merkle_parent(sibling, &cur),
        Direction::Right => merkle_parent(&cur, sibling),
    })
}

/// SPEC §7.7: a tx inclusion proof is valid iff it leads to the header's `tx_merkle_root`.
pub fn verify_tx_proof(proof: &MerkleProof, tx_merkle_root: &Hash) -> bool {
    tx_proof_root(proof) == *tx_merkle_root
}

/// SPEC §7.1: the internal group-chain hash of a group block; entry hashes are the block hashes of
/// the client-visible headers (`GroupBlock::header_of`).
pub fn group_hash(block: &GroupBlock) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&block.group_id.to_be_bytes());
    hasher.update(&block.group_height.to_be_bytes());
    hasher.update(&block.previous_group_hash);
    hasher.update(&block.timestamp.secs.to_be_bytes());
    hasher.update(&block.timestamp.nanos.to_be_bytes());
    hasher.update(&block.term.to_be_bytes());
    hasher.update(&block.committed_index.to_be_bytes());
    for entry in &block.vault_entries {
        hasher.update(&block_hash(&block.header_of(entry)));
    }
    *hasher.finalize().as_bytes()
}

/// SPEC §7.7 chain proof: `headers` continue the trusted header with consecutive heights, each
/// linked by `previous_hash` to the block hash of its predecessor. The caller separately checks
/// that the last header is the response header (or uses [`verify_chain_to`]).
pub fn verify_chain(trusted: &BlockHeader, proof: &ChainProof) -> Result<(), ProofError> {
    if proof.headers.is_empty() {
        return Err(ProofError::EmptyChain);
    }
    let mut previous_hash = block_hash(trusted);
    let mut previous_height = trusted.height;
    for (index, header) in proof.headers.iter().enumerate() {
        let expected = previous_height.checked_add(1).ok_or(ProofError::ChainHeightGap {
            index,
            expected: u64::MAX,
            got: header.height,
        })?;
        if header.height != expected {
            return Err(ProofError::ChainHeightGap { index, expected, got: header.height });
        }
        if header.previous_hash != previous_hash {
            return Err(ProofError::ChainLinkBroken { height: header.height });
        }
        previous_hash = block_hash(header);
        previous_height = header.height;
    }
    Ok(())
}

/// [`verify_chain`] plus "the last header equals the response header" (SPEC §7.7).
pub fn verify_chain_to(
    trusted: &BlockHeader,
    proof: &ChainProof,
    target: &BlockHeader,
) -> Result<(), ProofError> {
    verify_chain(trusted, proof)?;
    match proof.headers.last() {
        Some(last) if last == target => Ok(()),
        _ => Err(ProofError::ChainTargetMismatch),
    }
}

/// SPEC §7.8: the snapshot chain commitment of one scope over headers `from_height..=to_height`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ChainCommitment {
    pub accumulated_header_hash: Hash,
    pub state_root_accumulator: Hash,
    pub from_height: u64,
    pub to_height: u64,
}

/// One step of the §7.8 header fold: `acc = H(acc ‖ block_hash(h))`.
#[inline]
pub fn fold_header_hash(acc: &Hash, block_hash: &Hash) -> Hash {
    merkle_parent(acc, block_hash)
}

/// SPEC §7.8 over `headers` (consecutive, ascending, heights F..=M; asserted). `None` when empty.
pub fn chain_commitment(headers: &[BlockHeader]) -> Option<ChainCommitment> {
    let first = headers.first()?;
    let last = headers.last()?;
    let mut acc = ZERO_HASH;
    let mut roots = Vec::with_capacity(headers.len());
    for (i, header) in headers.iter().enumerate() {
        assert!(header.height == first.height + i as u64, "chain commitment over non-consecutive headers");
        acc = fold_header_hash(&acc, &block_hash(header));
        roots.push(header.state_root);
    }
    Some(ChainCommitment {
        accumulated_header_hash: acc,
        state_root_accumulator: tx_merkle_root(&roots),
        from_height: first.height,
        to_height: last.height,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample_header(height: u64, previous_hash: Hash) -> BlockHeader {
        BlockHeader {
            height,
            namespace_id: 7,
            vault_id: 42,
            previous_hash,
            tx_merkle_root: EMPTY_HASH,
            state_root: h(&height.to_le_bytes()),
            timestamp: Timestamp { secs: 1_700_000_000 + height as i64, nanos: 5 },
            leader_id: 9,
            term: 3,
            committed_index: 100 + height,
        }
    }

    #[test]
    fn t01_spec_vectors_constants() {
        // SPEC §7.9: EMPTY_HASH = H(""), H(ZERO_HASH) and the merkle parent of two EMPTY_HASHes.
        assert_eq!(EMPTY_HASH, h(b""));
        assert_eq!(
            to_hex(&h(&ZERO_HASH)),
            "2ada83c1819a5372dae1238fc1ded123c8104fdaa15862aaee69428a1820fcda"
        );
        assert_eq!(
            to_hex(&merkle_parent(&EMPTY_HASH, &EMPTY_HASH)),
            "b99d33caaa1a76e7eddb06111289f5dfb09f5ef7c13c824652f1772baa985aa2"
        );
        assert_eq!(EMPTY_STATE_ROOT, [0u8; 32]);
    }

    #[test]
    fn t02_spec_vector_op_hash_delete() {
        // SPEC §7.9: op_hash(DeleteEntity "user:1"), which also pins the u32 LE length prefix.
        let op = Operation::DeleteEntity { key: "user:1".into() };
        assert_eq!(to_hex(&op_hash(&op)), "e441579ab9005ad2a8cfae92d900b522a3e00a7377e43febfb7c64baa57b9c80");
        let mut manual = vec![0x02u8];
        manual.extend_from_slice(&6u32.to_le_bytes());
        manual.extend_from_slice(b"user:1");
        assert_eq!(op_hash(&op), h(&manual));
    }

    #[test]
    fn t03_block_hash_layout() {
        // The block hash equals blake3 of the hand-assembled 148-byte BE layout; leader_id is excluded.
        let header = sample_header(5, h(b"prev"));
        let mut manual = Vec::new();
        manual.extend_from_slice(&header.height.to_be_bytes());
        manual.extend_from_slice(&header.namespace_id.to_be_bytes());
        manual.extend_from_slice(&header.vault_id.to_be_bytes());
        manual.extend_from_slice(&header.previous_hash);
        manual.extend_from_slice(&header.tx_merkle_root);
        manual.extend_from_slice(&header.state_root);
        manual.extend_from_slice(&header.timestamp.secs.to_be_bytes());
        manual.extend_from_slice(&header.timestamp.nanos.to_be_bytes());
        manual.extend_from_slice(&header.term.to_be_bytes());
        manual.extend_from_slice(&header.committed_index.to_be_bytes());
        assert_eq!(manual.len(), 148);
        assert_eq!(block_hash(&header), h(&manual));
        let mut other_leader = header.clone();
        other_leader.leader_id += 1;
        assert_eq!(block_hash(&other_leader), block_hash(&header));
        let mut other_term = header.clone();
        other_term.term += 1;
        assert_ne!(block_hash(&other_term), block_hash(&header));
    }

    #[test]
    fn t04_tx_hash_layout() {
        // tx_hash follows §7.4: mixed LE length prefixes and BE integers, op hashes appended.
        let ops = vec![
            Operation::SetEntity {
                key: "k".into(),
                value: b"v".to_vec(),
                expires_at: None,
                condition: Some(SetCondition::VersionEquals(3)),
            },
            Operation::CreateRelationship {
                resource: "doc:1".into(),
                relation: "viewer".into(),
                subject: "user:1".into(),
            },
        ];
        let tx = Transaction {
            id: [7u8; 16],
            client_id: "c1".into(),
            sequence: 9,
            operations: ops.clone(),
            timestamp: Timestamp { secs: -2, nanos: 11 },
            actor: "user:alice".into(),
        };
        let mut m = Vec::new();
        m.extend_from_slice(&[7u8; 16]);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(b"c1");
        m.extend_from_slice(&9u64.to_be_bytes());
        m.extend_from_slice(&10u32.to_le_bytes());
        m.extend_from_slice(b"user:alice");
        m.extend_from_slice(&(-2i64).to_be_bytes());
        m.extend_from_slice(&11u32.to_be_bytes());
        m.extend_from_slice(&2u32.to_be_bytes());
        let mut set = vec![0x01u8];
        set.extend_from_slice(&1u32.to_le_bytes());
        set.extend_from_slice(b"k");
        set.extend_from_slice(&1u32.to_le_bytes());
        set.extend_from_slice(b"v");
        set.extend_from_slice(&0u64.to_be_bytes());
        set.push(0x03);
        set.extend_from_slice(&3u64.to_be_bytes());
        assert_eq!(op_hash(&ops[0]), h(&set));
        m.extend_from_slice(&h(&set));
        m.extend_from_slice(&op_hash(&ops[1]));
        assert_eq!(tx_hash(&tx), h(&m));
    }

    #[test]
    fn t05_tx_merkle_small_trees() {
        // §7.5 edge cases: 0 leaves ⇒ EMPTY_HASH, 1 leaf ⇒ itself, 3 leaves duplicate the last.
        let l: Vec<Hash> = (0u8..3).map(|i| h(&[i])).collect();
        assert_eq!(tx_merkle_root(&[]), EMPTY_HASH);
        assert_eq!(tx_merkle_root(&l[..1]), l[0]);
        assert_eq!(tx_merkle_root(&l[..2]), merkle_parent(&l[0], &l[1]));
        let expected = merkle_parent(&merkle_parent(&l[0], &l[1]), &merkle_parent(&l[2], &l[2]));
        assert_eq!(tx_merkle_root(&l), expected);
    }

    #[test]
    fn t06_tx_merkle_proofs_1_to_17() {
        // Every leaf's proof verifies for trees of 1..=17 leaves, and any mutation of the leaf, of a
        // sibling byte or of a direction breaks it.
        for n in 1..=17usize {
            let leaves: Vec<Hash> = (0..n).map(|i| h(&(i as u64).to_be_bytes())).collect();
            let root = tx_merkle_root(&leaves);
            for i in 0..n {
                let proof = tx_merkle_proof(&leaves, i);
                assert!(verify_tx_proof(&proof, &root), "n={n} i={i}");
                let mut bad = proof.clone();
                bad.leaf_hash[0] ^= 1;
                assert!(!verify_tx_proof(&bad, &root));
                for s in 0..proof.siblings.len() {
                    let mut bad = proof.clone();
                    bad.siblings[s].0[31] ^= 0x80;
                    assert!(!verify_tx_proof(&bad, &root), "n={n} i={i} s={s}");
                    let mut flipped = proof.clone();
                    flipped.siblings[s].1 = match flipped.siblings[s].1 {
                        Direction::Left => Direction::Right,
                        Direction::Right => Direction::Left,
                    };
                    if flipped.siblings[s].0 != tx_proof_root_prefix(&proof, s) {
                        assert!(!verify_tx_proof(&flipped, &root), "n={n} i={i} s={s} flip");
                    }
                }
                if n > 1 {
                    let mut short = proof.clone();
                    short.siblings.pop();
                    assert!(!verify_tx_proof(&short, &root));
                }
            }
        }
    }

    /// The running hash just before sibling `s` is applied: flipping the direction of a sibling
    /// equal to it (a duplicated last node) legitimately leaves the root unchanged.
    fn tx_proof_root_prefix(proof: &MerkleProof, s: usize) -> Hash {
        let prefix = MerkleProof { leaf_hash: proof.leaf_hash, siblings: proof.siblings[..s].to_vec() };
        tx_proof_root(&prefix)
    }

    #[test]
    fn t07_chain_proof() {
        // A chain of 5 headers verifies from its genesis; gaps, broken links and a wrong target fail.
        let mut headers = vec![sample_header(0, ZERO_HASH)];
        for height in 1..5 {
            let previous = block_hash(&headers[height as usize - 1]);
            headers.push(sample_header(height, previous));
        }
        let proof = ChainProof { headers: headers[1..].to_vec() };
        assert_eq!(verify_chain(&headers[0], &proof), Ok(()));
        assert_eq!(verify_chain_to(&headers[0], &proof, &headers[4]), Ok(()));
        assert_eq!(verify_chain_to(&headers[0], &proof, &headers[3]), Err(ProofError::ChainTargetMismatch));
        assert_eq!(verify_chain(&headers[0], &ChainProof { headers: vec![] }), Err(ProofError::EmptyChain));
        let mut gap = proof.clone();
        gap.headers.remove(1);
        assert!(matches!(verify_chain(&headers[0], &gap), Err(ProofError::ChainHeightGap { .. })));
        let mut broken = proof.clone();
        broken.headers[2].state_root[0] ^= 1;
        assert_eq!(verify_chain(&headers[0], &broken), Err(ProofError::ChainLinkBroken { height: 4 }));
        // From a middle trusted header.
        let tail = ChainProof { headers: headers[3..].to_vec() };
        assert_eq!(verify_chain(&headers[2], &tail), Ok(()));
        assert!(verify_chain(&headers[1], &tail).is_err());
    }

    #[test]
    fn t08_chain_commitment_and_group_hash() {
        // §7.8 fold from ZERO_HASH and Merkle root of state roots; §7.1 group hash layout.
        let g = sample_header(0, ZERO_HASH);
        let h1 = sample_header(1, block_hash(&g));
        let c = chain_commitment(&[g.clone(), h1.clone()]).unwrap();
        let acc = merkle_parent(&merkle_parent(&ZERO_HASH, &block_hash(&g)), &block_hash(&h1));
        assert_eq!(c.accumulated_header_hash, acc);
        assert_eq!(c.state_root_accumulator, merkle_parent(&g.state_root, &h1.state_root));
        assert_eq!((c.from_height, c.to_height), (0, 1));
        assert_eq!(chain_commitment(&[]), None);

        let entry = VaultEntry {
            namespace_id: 7,
            vault_id: 42,
            vault_height: 1,
            previous_vault_hash: block_hash(&g),
            transactions: vec![],
            tx_merkle_root: EMPTY_HASH,
            state_root: h1.state_root,
        };
        let block = GroupBlock {
            group_id: 2,
            group_height: 1,
            previous_group_hash: ZERO_HASH,
            vault_entries: vec![entry.clone()],
            timestamp: h1.timestamp,
            leader_id: 9,
            term: h1.term,
            committed_index: h1.committed_index,
        };
        assert_eq!(block.header_of(&entry), h1);
        let mut m = Vec::new();
        m.extend_from_slice(&2u32.to_be_bytes());
        m.extend_from_slice(&1u64.to_be_bytes());
        m.extend_from_slice(&ZERO_HASH);
        m.extend_from_slice(&h1.timestamp.secs.to_be_bytes());
        m.extend_from_slice(&h1.timestamp.nanos.to_be_bytes());
        m.extend_from_slice(&h1.term.to_be_bytes());
        m.extend_from_slice(&h1.committed_index.to_be_bytes());
        m.extend_from_slice(&block_hash(&h1));
        assert_eq!(group_hash(&block), h(&m));
    }
}
