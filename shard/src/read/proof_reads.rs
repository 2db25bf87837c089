//! `VerifiedRead` and `HistoricalRead` on the owning core (SPEC §5.1 items 3–4, §7.7, §8.7): the
//! row of one key at a height, the header of that height, the state proof from the tree at that
//! height, and on request the chain proof `trusted_height+1 ..= height` from the archive. The
//! state at the height comes from `history` (current state, recent ring, or a replay). A request
//! that needs neither the leader's read-index check nor a replay is answered inline.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::constants::CHAIN_PROOF_HEADERS_MAX;
use crate::metrics::ProofKind;
use crate::read::history::{self, StateAt};
use crate::read::reads;
use crate::reply::ReplySender;
use crate::round::group::{now_secs, Group};
use crate::round::group_data::GroupData;
use ledger_core::constants::KEY_BYTES_MAX;
use ledger_core::state::ScopeState;
use ledger_core::types::*;
use ledger_wire::messages::{Request, Response, ResponseEnvelope, Status};
use std::rc::Rc;
use std::time::Instant;

/// A `VerifiedRead` or `HistoricalRead`, normalized.
#[derive(Debug, Clone)]
struct ProofRead {
    verified: bool,
    namespace_id: i64,
    vault_id: Option<i64>,
    key: String,
    /// `None` = current state (TTL by wall clock); `Some` = that height (TTL by block time).
    at_height: Option<u64>,
    include_proof: bool,
    include_chain_proof: bool,
    trusted_height: Option<u64>,
    linearizable: bool,
}

impl ProofRead {
    fn parse(request: Request) -> Result<ProofRead, Status> {
        let read = match request {
            Request::VerifiedRead {
                namespace_id,
                vault_id,
                key,
                at_height,
                include_chain_proof,
                trusted_height,
                consistency,
            } => ProofRead {
                verified: true,
                namespace_id,
                vault_id,
                key,
                at_height: at_height.filter(|h| *h > 0),
                include_proof: true,
                include_chain_proof,
                trusted_height,
                linearizable: consistency.unwrap_or(ReadConsistency::Linearizable)
                    == ReadConsistency::Linearizable,
            },
            Request::HistoricalRead {
                namespace_id,
                vault_id,
                key,
                at_height,
                include_proof,
                include_chain_proof,
                trusted_height,
            } => {
                if include_chain_proof && !include_proof {
                    return Err(Status::invalid("include_chain_proof needs include_proof"));
                }
                ProofRead {
                    verified: false,
                    namespace_id,
                    vault_id,
                    key,
                    at_height: Some(at_height),
                    include_proof,
                    include_chain_proof,
                    trusted_height,
                    linearizable: false,
                }
            }
            other => return Err(Status::internal(format!("{} is not a proof read", other.op_name()))),
        };
        if read.key.is_empty() || read.key.len() > KEY_BYTES_MAX {
            return Err(Status::invalid(format!("key must be 1..={KEY_BYTES_MAX} bytes")));
        }
        if read.include_chain_proof && read.trusted_height.is_none() {
            return Err(Status::invalid("include_chain_proof needs trusted_height"));
        }
        Ok(read)
    }

    fn scope_key(&self) -> ScopeKey {
        ScopeKey::new(NamespaceId(self.namespace_id), self.vault_id.map(VaultId))
    }
}

/// Answers one proof read: inline when possible, else in a spawned task.
pub fn handle(group: Rc<Group>, request: Request, request_id: u64, reply: ReplySender) {
    let read = match ProofRead::parse(request) {
        Ok(read) => read,
        Err(status) => {
            let _ = reply.try_send(ResponseEnvelope { request_id, result: Err(status), leader_hint: None });
            return;
        }
    };
    if !read.linearizable {
        match answer_now(&group, &read) {
            Ok(Some(response)) => {
                let _ =
                    reply.try_send(ResponseEnvelope { request_id, result: Ok(response), leader_hint: None });
                return;
            }
            Err(status) => {
                let _ =
                    reply.try_send(ResponseEnvelope { request_id, result: Err(status), leader_hint: None });
                return;
            }
            Ok(None) => {}
        }
    }
    glommio::spawn_local(async move {
        let result = answer(&group, &read).await;
        let _ = reply.try_send(ResponseEnvelope { request_id, result, leader_hint: None });
    })
    .detach();
}

/// The full path: read-index check if linearizable, then the state at the height (rebuilt if
/// needed).
async fn answer(group: &Group, read: &ProofRead) -> Result<Response, Status> {
    if read.linearizable {
        reads::ensure_linearizable(group).await?;
    }
    if let Some(response) = answer_now(group, read)? {
        return Ok(response);
    }
    let height = read.at_height.ok_or_else(|| Status::internal("current state needs no rebuild"))?;
    let state = history::rebuild(group, read.scope_key(), height).await?;
    let data = group.data.borrow();
    let scope = reads::readable_scope(&data, read.namespace_id, read.vault_id)?;
    respond(&data, scope, &StateAt::Rebuilt(state), read)
}

/// Answers from memory, or `None` when the height has to be rebuilt.
fn answer_now(group: &Group, read: &ProofRead) -> Result<Option<Response>, Status> {
    let data = group.data.borrow();
    let scope = reads::readable_scope(&data, read.namespace_id, read.vault_id)?;
    let tip = scope.meta.height;
    let height = read.at_height.unwrap_or(tip);
    if height > tip {
        return Err(Status::invalid("at_height out of range"));
    }
    if read.include_chain_proof {
        let trusted = read.trusted_height.unwrap_or(u64::MAX);
        if trusted >= height {
            return Err(Status::invalid(format!(
                "include_chain_proof needs trusted_height below the block height {height}"
            )));
        }
        if height - trusted > CHAIN_PROOF_HEADERS_MAX {
            return Err(Status::invalid(format!(
                "a chain proof carries at most {CHAIN_PROOF_HEADERS_MAX} headers; raise trusted_height"
            )));
        }
    }
    match history::resolve(&data, scope, height) {
        Some(state) => respond(&data, scope, &state, read).map(Some),
        None => Ok(None),
    }
}

/// Builds the response from the state at the height.
fn respond(
    data: &GroupData,
    scope: &ScopeState,
    state: &StateAt<'_>,
    read: &ProofRead,
) -> Result<Response, Status> {
    let height = state.height();
    let header = header_if_needed(data, scope, state, read, height)?;
    let (value, entity) = value_and_entity(state.row(&read.key), header.as_ref(), read);
    let chain_proof = match read.trusted_height {
        Some(trusted) if read.include_chain_proof => {
            let started = Instant::now();
            let proof = chain_proof(data, scope, trusted, height)?;
            let took = started.elapsed();
            crate::metrics::with(|m| m.proof_generated(ProofKind::Chain, took));
            Some(proof)
        }
        _ => None,
    };
    if !read.include_proof {
        return Ok(Response::HistoricalRead {
            value,
            entity: None,
            block_height: height,
            block_header: None,
            state_proof: None,
            chain_proof: None,
        });
    }
    let header = match header {
        Some(header) => header,
        None => history::header_at(data, scope, height)?,
    };
    let state_proof = checked_state_proof(state, read, &header, scope, height)?;
    Ok(if read.verified {
        Response::VerifiedRead {
            value,
            entity,
            block_height: height,
            block_header: header,
            state_proof,
            chain_proof,
        }
    } else {
        Response::HistoricalRead {
            value,
            entity,
            block_height: height,
            block_header: Some(header),
            state_proof: Some(state_proof),
            chain_proof,
        }
    })
}

/// The header of the block read at, when the answer needs it (a proof, or a historical read's
/// clock): from memory if the state holds it, else from the archive.
fn header_if_needed(
    data: &GroupData,
    scope: &ScopeState,
    state: &StateAt<'_>,
    read: &ProofRead,
    height: u64,
) -> Result<Option<BlockHeader>, Status> {
    if !(read.include_proof || read.at_height.is_some()) {
        return Ok(None);
    }
    Ok(Some(match state.header_in_memory() {
        Some(header) => header,
        None => history::header_at(data, scope, height)?,
    }))
}

/// The value a reader sees (none once expired) and the stored entity, whatever its TTL.
fn value_and_entity(
    row: Option<history::Row>,
    header: Option<&BlockHeader>,
    read: &ProofRead,
) -> (Option<Vec<u8>>, Option<Entity>) {
    // SPEC §3.8: current reads judge TTL by this node's clock, historical reads by the block's.
    let clock = match (header, read.at_height) {
        (Some(header), Some(_)) => u64::try_from(header.timestamp.secs).unwrap_or(0),
        _ => now_secs(),
    };
    let value = row.as_ref().filter(|r| r.expires_at == 0 || clock < r.expires_at).map(|r| r.value.clone());
    let entity = row.map(|r| Entity {
        key: read.key.clone(),
        value: r.value,
        expires_at: r.expires_at,
        version: r.version,
    });
    (value, entity)
}

/// The key's state proof, timed, checked against the header's state root first.
fn checked_state_proof(
    state: &StateAt<'_>,
    read: &ProofRead,
    header: &BlockHeader,
    scope: &ScopeState,
    height: u64,
) -> Result<StateProof, Status> {
    let started = Instant::now();
    let state_proof = state.prove(&read.key);
    let took = started.elapsed();
    crate::metrics::with(|m| m.proof_generated(ProofKind::State, took));
    if state_proof.state_root != header.state_root {
        // Never serve a proof that cannot verify: the in-memory tree and the archive disagree.
        return Err(Status::internal(format!(
            "scope {}: state root at height {height} differs from the archived header",
            scope.meta.key
        )));
    }
    Ok(state_proof)
}

/// Headers `trusted+1 ..= height` (SPEC §7.7 chain proof).
fn chain_proof(
    data: &GroupData,
    scope: &ScopeState,
    trusted: u64,
    height: u64,
) -> Result<ChainProof, Status> {
    let mut headers = Vec::with_capacity(usize::try_from(height - trusted).unwrap_or(0));
    for h in trusted + 1..=height {
        headers.push(history::header_at(data, scope, h)?);
    }
    Ok(ChainProof { headers })
}
