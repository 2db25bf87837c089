//! Scope reads on the owning core (SPEC §5.1, §8.6): answered from the group's applied in-memory
//! state, `Eventual` inline and `Linearizable` after openraft's read-index check. Pagination uses
//! the MAC'd tokens of SPEC §5.7 (`page_token`). TTL filtering uses this node's wall clock
//! (SPEC §3.8). A list pinned below the tip (an older `at_height`, or a page token issued before
//! later blocks) is answered by `list_on` over the state `history::rebuild` reconstructs (§8.7).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::read::page_token::{height_unavailable, query_hash, PageToken, MSG_INVALID, PAGE_TOKEN_KEY_LEN};
use crate::round::group::{now_secs, vault_unavailable, Group};
use crate::round::group_data::GroupData;
use ledger_core::constants::{page_size, BATCH_READ_KEYS_MAX, BLOCK_RANGE_MAX};
use ledger_core::state::ScopeState;
use ledger_core::types::*;
use ledger_wire::messages::{BatchReadItem, Request, Response, Status, StatusCode, VaultInfo};

pub type TokenKey = [u8; PAGE_TOKEN_KEY_LEN];

/// Filter fields of each list request, hashed into its page tokens (SPEC §5.7).
#[derive(rkyv::Archive, rkyv::Serialize)]
struct EntitiesFilter {
    namespace_id: i64,
    vault_id: Option<i64>,
    key_prefix: String,
    at_height: Option<u64>,
    include_expired: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct RelationshipsFilter {
    namespace_id: i64,
    vault_id: i64,
    resource: Option<String>,
    relation: Option<String>,
    subject: Option<String>,
    at_height: Option<u64>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct ResourcesFilter {
    namespace_id: i64,
    vault_id: i64,
    resource_type: String,
    at_height: Option<u64>,
}

/// Whether a request must pass the leader's read-index check before it is answered.
pub fn needs_linearizable(request: &Request) -> bool {
    match request {
        Request::Read { consistency, .. }
        | Request::BatchRead { consistency, .. }
        | Request::ListRelationships { consistency, .. }
        | Request::ListResources { consistency, .. }
        | Request::ListEntities { consistency, .. } => *consistency == ReadConsistency::Linearizable,
        // SPEC §5.1 item 9: always linearizable.
        Request::GetClientState { .. } => true,
        _ => false,
    }
}

/// Whether a request is a list that needs the cluster's page-token key.
pub fn needs_token_key(request: &Request) -> bool {
    matches!(
        request,
        Request::ListRelationships { .. } | Request::ListResources { .. } | Request::ListEntities { .. }
    )
}

/// SPEC §8.6: confirm leadership for the current term and wait until the read index is applied.
pub async fn ensure_linearizable(group: &Group) -> Result<(), Status> {
    match group.raft.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e.forward_to_leader().is_some() || !group.is_leader() {
                Err(Status {
                    code: StatusCode::NotLeader,
                    message: format!("linearizable read needs the leader of group {}", group.id),
                    leader_hint: group.leader_hint(),
                    detail: None,
                })
            } else {
                Err(Status::unavailable(format!("read index of group {} failed: {e}", group.id)))
            }
        }
    }
}

/// A scope that may be read: exists, not deleted (nor its namespace), Healthy.
pub fn readable_scope(
    data: &GroupData,
    namespace_id: i64,
    vault_id: Option<i64>,
) -> Result<&ScopeState, Status> {
    let key = ScopeKey::new(NamespaceId(namespace_id), vault_id.map(VaultId));
    let scope = existing_scope(data, key)?;
    if scope.meta.health != VaultHealth::Healthy {
        return Err(vault_unavailable(key, &scope.meta.health));
    }
    Ok(scope)
}

/// A scope that exists and is not deleted, whatever its health.
pub fn existing_scope(data: &GroupData, key: ScopeKey) -> Result<&ScopeState, Status> {
    let not_found = || {
        if key.is_namespace_scope() {
            Status::not_found(format!("namespace {} not found", key.namespace_id))
        } else {
            Status::not_found(format!("vault {} not found in namespace {}", key.vault_id, key.namespace_id))
        }
    };
    let scope = data.scopes.get(&key).ok_or_else(not_found)?;
    if scope.meta.status == VaultStatus::Deleted {
        return Err(not_found());
    }
    let ns_key = ScopeKey { namespace_id: key.namespace_id, vault_id: VaultId(0) };
    if data.scopes.get(&ns_key).is_none_or(|ns| ns.meta.status == VaultStatus::Deleted) {
        return Err(Status::not_found(format!("namespace {} not found", key.namespace_id)));
    }
    Ok(scope)
}

fn visible(row_expires_at: u64, now: u64) -> bool {
    row_expires_at == 0 || now < row_expires_at
}

/// Checks `at_height` against the tip: the tip itself is served; above it is invalid; below it
/// needs historical reconstruction, which this build does not have yet.
fn check_at_height(at_height: Option<u64>, tip: u64) -> Result<(), Status> {
    match at_height {
        None => Ok(()),
        Some(h) if h == tip => Ok(()),
        Some(h) if h > tip => Err(Status::invalid("at_height out of range")),
        Some(h) => Err(height_unavailable(h, tip)),
    }
}

/// Decodes and checks a page token; `None` for the first page.
fn page_start(
    token: &str,
    key: &TokenKey,
    namespace_id: i64,
    vault_id: i64,
    qh: [u8; 8],
    tip: u64,
) -> Result<Option<PageToken>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let t = PageToken::decode(token, key)?;
    t.check(namespace_id, vault_id, qh, Some(tip))?;
    Ok(Some(t))
}

fn next_token(
    key: &TokenKey,
    namespace_id: i64,
    vault_id: i64,
    last: Option<Vec<u8>>,
    tip: u64,
    qh: [u8; 8],
) -> String {
    match last {
        Some(last_key) => {
            PageToken { namespace_id, vault_id, last_key, at_height: tip, query_hash: qh }.encode(key)
        }
        None => String::new(),
    }
}

pub fn relationship_key(r: &Relationship) -> String {
    format!("rel:{}#{}@{}", r.resource, r.relation, r.subject)
}

/// Inverse of `relationship_key` (unique because SPEC §3.4 forbids `#`/`@` where they'd clash).
pub fn parse_relationship_key(key: &str) -> Option<Relationship> {
    let rest = key.strip_prefix("rel:")?;
    let (resource, rest) = rest.split_once('#')?;
    let (relation, subject) = rest.split_once('@')?;
    Some(Relationship { resource: resource.into(), relation: relation.into(), subject: subject.into() })
}

/// Answers a scope read from applied state (the caller has done any linearizable check).
/// `token_key` is required for list requests only.
pub fn answer(group: &Group, request: &Request, token_key: Option<&TokenKey>) -> Result<Response, Status> {
    let stale = || group.is_stale();
    let data = group.data.borrow();
    let now = now_secs();
    match request {
        Request::Read { namespace_id, vault_id, key, .. } => {
            let scope = readable_scope(&data, *namespace_id, *vault_id)?;
            let value = scope.get_entity(key).filter(|r| visible(r.expires_at, now)).map(|r| r.value.clone());
            Ok(Response::Read { value, block_height: scope.meta.height, stale: stale() })
        }
        Request::BatchRead { namespace_id, vault_id, keys, .. } => {
            if keys.len() > BATCH_READ_KEYS_MAX {
                return Err(Status::invalid(format!(
                    "{} keys exceed the BatchRead limit of {BATCH_READ_KEYS_MAX}",
                    keys.len()
                )));
            }
            let scope = readable_scope(&data, *namespace_id, *vault_id)?;
            let results = keys
                .iter()
                .map(|k| {
                    let value =
                        scope.get_entity(k).filter(|r| visible(r.expires_at, now)).map(|r| r.value.clone());
                    BatchReadItem { key: k.clone(), found: value.is_some(), value }
                })
                .collect();
            Ok(Response::BatchRead { results, block_height: scope.meta.height, stale: stale() })
        }
        Request::GetTip { namespace_id, vault_id } => {
            let scope = readable_scope(&data, *namespace_id, *vault_id)?;
            Ok(Response::GetTip {
                height: scope.meta.height,
                block_hash: scope.meta.last_block_hash,
                state_root: scope.meta.state_root,
            })
        }
        Request::GetClientState { namespace_id, vault_id, client_id } => {
            let scope = readable_scope(&data, *namespace_id, *vault_id)?;
            Ok(Response::GetClientState {
                last_committed_sequence: scope.client_state(client_id).last_committed_seq,
            })
        }
        Request::ListEntities { namespace_id, vault_id, at_height, .. } => {
            let key = token_key.ok_or_else(|| Status::unavailable("page token key not loaded yet"))?;
            let scope = readable_scope(&data, *namespace_id, *vault_id)?;
            check_at_height(*at_height, scope.meta.height)?;
            list_on(scope, request, key, now)
        }
        Request::ListRelationships { namespace_id, vault_id, at_height, .. }
        | Request::ListResources { namespace_id, vault_id, at_height, .. } => {
            let key = token_key.ok_or_else(|| Status::unavailable("page token key not loaded yet"))?;
            if *vault_id == 0 {
                return Err(Status::invalid(format!("{} needs a vault_id", request.op_name())));
            }
            let scope = readable_scope(&data, *namespace_id, Some(*vault_id))?;
            check_at_height(*at_height, scope.meta.height)?;
            list_on(scope, request, key, now)
        }
        Request::GetVault { namespace_id, vault_id } => {
            if *vault_id == 0 {
                return Err(Status::invalid("GetVault needs a vault_id"));
            }
            let key = ScopeKey::new(NamespaceId(*namespace_id), Some(VaultId(*vault_id)));
            let scope = data.scopes.get(&key).ok_or_else(|| {
                Status::not_found(format!("vault {vault_id} not found in namespace {namespace_id}"))
            })?;
            Ok(Response::GetVault(vault_info(group, scope)))
        }
        other => Err(Status::internal(format!("{} is not a scope read", other.op_name()))),
    }
}

/// One page of a list request served from `scope`, the state at the pagination's pinned height
/// (the current state, or one rebuilt by `history::rebuild` for an older pinned height, SPEC
/// §5.7, §8.7). `now` judges TTL: the wall clock for current state, the block time at the
/// pinned height for history (SPEC §3.8).
pub fn list_on(scope: &ScopeState, request: &Request, key: &TokenKey, now: u64) -> Result<Response, Status> {
    match request {
        Request::ListEntities { .. } => list_entities_on(scope, request, key, now),
        Request::ListRelationships { .. } => list_relationships_on(scope, request, key),
        Request::ListResources { .. } => list_resources_on(scope, request, key),
        other => Err(not_a_list_request(other)),
    }
}

/// The answer to a request that `list_on` (or one of its per-kind steps) was handed but is not a
/// list, or not of the step's kind.
fn not_a_list_request(request: &Request) -> Status {
    Status::internal(format!("{} is not a list request", request.op_name()))
}

/// `list_on` for a `ListEntities` page: entities by key prefix, after the page token's last key.
fn list_entities_on(
    scope: &ScopeState,
    request: &Request,
    key: &TokenKey,
    now: u64,
) -> Result<Response, Status> {
    let tip = scope.meta.height;
    let Request::ListEntities {
        namespace_id,
        vault_id,
        key_prefix,
        at_height,
        include_expired,
        limit,
        page_token,
        ..
    } = request
    else {
        return Err(not_a_list_request(request));
    };
    let filter = EntitiesFilter {
        namespace_id: *namespace_id,
        vault_id: *vault_id,
        key_prefix: key_prefix.clone(),
        at_height: *at_height,
        include_expired: *include_expired,
    };
    let qh = query_hash(&filter);
    let vault = vault_id.unwrap_or(0);
    let start = page_start(page_token, key, *namespace_id, vault, qh, tip)?;
    let start_after = match &start {
        Some(t) => Some(String::from_utf8(t.last_key.clone()).map_err(|_| Status::invalid(MSG_INVALID))?),
        None => None,
    };
    let (entities, last) =
        scope.list_entities(key_prefix, start_after.as_deref(), page_size(*limit), *include_expired, now);
    let next_page_token = next_token(key, *namespace_id, vault, last.map(String::into_bytes), tip, qh);
    Ok(Response::ListEntities { entities, block_height: tip, next_page_token })
}

/// `list_on` for a `ListRelationships` page: relationships matching the filter, after the page
/// token's last relationship.
fn list_relationships_on(scope: &ScopeState, request: &Request, key: &TokenKey) -> Result<Response, Status> {
    let tip = scope.meta.height;
    let Request::ListRelationships {
        namespace_id,
        vault_id,
        resource,
        relation,
        subject,
        at_height,
        limit,
        page_token,
        ..
    } = request
    else {
        return Err(not_a_list_request(request));
    };
    let filter = RelationshipsFilter {
        namespace_id: *namespace_id,
        vault_id: *vault_id,
        resource: resource.clone(),
        relation: relation.clone(),
        subject: subject.clone(),
        at_height: *at_height,
    };
    let qh = query_hash(&filter);
    let start = page_start(page_token, key, *namespace_id, *vault_id, qh, tip)?;
    let start_after = match &start {
        Some(t) => Some(
            std::str::from_utf8(&t.last_key)
                .ok()
                .and_then(parse_relationship_key)
                .ok_or_else(|| Status::invalid(MSG_INVALID))?,
        ),
        None => None,
    };
    let (relationships, more) = scope.list_relationships(
        resource.as_deref(),
        relation.as_deref(),
        subject.as_deref(),
        start_after.as_ref(),
        page_size(*limit),
    );
    let last = if more { relationships.last().map(|r| relationship_key(r).into_bytes()) } else { None };
    let next_page_token = next_token(key, *namespace_id, *vault_id, last, tip, qh);
    Ok(Response::ListRelationships { relationships, block_height: tip, next_page_token })
}

/// `list_on` for a `ListResources` page: resources of one type, after the page token's last one.
fn list_resources_on(scope: &ScopeState, request: &Request, key: &TokenKey) -> Result<Response, Status> {
    let tip = scope.meta.height;
    let Request::ListResources {
        namespace_id, vault_id, resource_type, at_height, limit, page_token, ..
    } = request
    else {
        return Err(not_a_list_request(request));
    };
    let filter = ResourcesFilter {
        namespace_id: *namespace_id,
        vault_id: *vault_id,
        resource_type: resource_type.clone(),
        at_height: *at_height,
    };
    let qh = query_hash(&filter);
    let start = page_start(page_token, key, *namespace_id, *vault_id, qh, tip)?;
    let start_after = match &start {
        Some(t) => Some(String::from_utf8(t.last_key.clone()).map_err(|_| Status::invalid(MSG_INVALID))?),
        None => None,
    };
    let (resources, more) = scope.list_resources(resource_type, start_after.as_deref(), page_size(*limit));
    let last = if more { resources.last().map(|r| r.clone().into_bytes()) } else { None };
    let next_page_token = next_token(key, *namespace_id, *vault_id, last, tip, qh);
    Ok(Response::ListResources { resources, block_height: tip, next_page_token })
}

/// For a list request whose pagination is pinned below the scope's tip (an `at_height` below it,
/// or a page token issued before later blocks), the scope and pinned height to rebuild; `None`
/// when the current state answers it (or when the request is invalid, which `answer` reports).
pub fn historical_list_target(
    group: &Group,
    request: &Request,
    token_key: Option<&TokenKey>,
) -> Option<(ScopeKey, u64)> {
    let (namespace_id, vault_id, at_height, page_token) = match request {
        Request::ListEntities { namespace_id, vault_id, at_height, page_token, .. } => {
            (*namespace_id, *vault_id, *at_height, page_token)
        }
        Request::ListRelationships { namespace_id, vault_id, at_height, page_token, .. }
        | Request::ListResources { namespace_id, vault_id, at_height, page_token, .. }
            if *vault_id != 0 =>
        {
            (*namespace_id, Some(*vault_id), *at_height, page_token)
        }
        _ => return None,
    };
    let data = group.data.borrow();
    let scope = readable_scope(&data, namespace_id, vault_id).ok()?;
    let tip = scope.meta.height;
    let pinned = if page_token.is_empty() {
        at_height?
    } else {
        PageToken::decode(page_token, token_key?).ok()?.at_height
    };
    (pinned < tip).then_some((scope.meta.key, pinned))
}

/// `VaultInfo` of one scope as this replica sees it (SPEC §5.3 item 21).
pub fn vault_info(group: &Group, scope: &ScopeState) -> VaultInfo {
    let metrics = group.raft.metrics().borrow().clone();
    let nodes: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    VaultInfo {
        namespace_id: scope.meta.key.namespace_id.0,
        vault_id: scope.meta.key.vault_id.0,
        height: scope.meta.height,
        state_root: scope.meta.state_root,
        nodes,
        leader: metrics.current_leader,
        status: scope.meta.status,
        retention_policy: scope.meta.retention,
        health: scope.meta.health.clone(),
        group_id: group.id.0,
        last_block_timestamp: scope.meta.last_block_ts,
    }
}

/// Validates a `GetBlockRange` and returns the inclusive heights to fetch (maybe empty) and the tip.
pub fn block_range(start: u64, end: u64, tip: u64) -> Result<std::ops::RangeInclusive<u64>, Status> {
    if start > end {
        return Err(Status::invalid("start_height is greater than end_height"));
    }
    if end - start >= BLOCK_RANGE_MAX {
        return Err(Status::invalid(format!("a block range covers at most {BLOCK_RANGE_MAX} blocks")));
    }
    let end = end.min(tip);
    // `start > tip` gives an empty range, which is not an error (SPEC §5.1 item 7).
    #[allow(clippy::reversed_empty_ranges)]
    Ok(start..=end)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Relationship keys parse back to the same tuple, userset subjects included.
    #[test]
    fn t01_relationship_key_round_trip() {
        let r = Relationship {
            resource: "doc:1".into(),
            relation: "viewer".into(),
            subject: "group:eng#member".into(),
        };
        let k = relationship_key(&r);
        assert_eq!(k, "rel:doc:1#viewer@group:eng#member");
        assert_eq!(parse_relationship_key(&k).unwrap(), r);
        assert!(parse_relationship_key("doc:1#viewer@user:1").is_none());
        assert!(parse_relationship_key("rel:doc:1").is_none());
    }

    /// Block ranges: start > end and > 1000 blocks are invalid; end is truncated to the tip.
    #[test]
    fn t02_block_range_rules() {
        assert_eq!(block_range(0, 5, 3).unwrap(), 0..=3);
        assert!(block_range(5, 4, 10).is_err());
        assert!(block_range(0, 1000, 5000).is_err());
        assert_eq!(block_range(0, 999, 5000).unwrap(), 0..=999);
        assert!(block_range(7, 9, 3).unwrap().is_empty());
    }

    /// `at_height` equal to the tip is current state; above is invalid; below is unavailable.
    #[test]
    fn t03_at_height_rules() {
        assert!(check_at_height(None, 4).is_ok());
        assert!(check_at_height(Some(4), 4).is_ok());
        assert_eq!(check_at_height(Some(5), 4).unwrap_err().code, StatusCode::InvalidArgument);
        assert_eq!(check_at_height(Some(3), 4).unwrap_err().code, StatusCode::FailedPrecondition);
    }

    /// TTL: 0 never expires; an entity is absent from its `expires_at` second on.
    #[test]
    fn t04_ttl_visibility() {
        assert!(visible(0, u64::MAX));
        assert!(visible(10, 9));
        assert!(!visible(10, 10));
        assert!(!visible(10, 11));
    }
}
