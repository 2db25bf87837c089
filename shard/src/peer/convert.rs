//! openraft's RPC types ↔ the wire's peer messages (`ledger_wire::peer`). Entries travel in the
//! log store's stored form (`log_store::encode_entry`), so decoding a peer's entries runs the
//! same checks as reading them back from the core's log files.

use crate::error::ShardError;
use crate::raft::log_store::records::{LogIdRecord, MembershipRecord, VoteRecord};
use crate::raft::log_store::{decode_entry, encode_entry};
use crate::raft::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use ledger_wire::peer::{AppendOutcome, WireLogId, WireMembership, WireSnapshotMeta, WireVote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};

pub fn vote_to_wire(v: &Vote) -> WireVote {
    let r = VoteRecord::from(v);
    WireVote { term: r.term, node_id: r.node_id, committed: r.committed }
}

pub fn vote_from_wire(v: WireVote) -> Vote {
    VoteRecord { term: v.term, node_id: v.node_id, committed: v.committed }.into()
}

pub fn log_id_to_wire(id: &LogId) -> WireLogId {
    let r = LogIdRecord::from(id);
    WireLogId { term: r.term, node_id: r.node_id, index: r.index }
}

pub fn log_id_from_wire(id: WireLogId) -> LogId {
    LogIdRecord { term: id.term, node_id: id.node_id, index: id.index }.into()
}

fn opt_to_wire(id: &Option<LogId>) -> Option<WireLogId> {
    id.as_ref().map(log_id_to_wire)
}

fn opt_from_wire(id: Option<WireLogId>) -> Option<LogId> {
    id.map(log_id_from_wire)
}

pub fn vote_request_to_wire(rpc: &VoteRequest<u64>) -> (WireVote, Option<WireLogId>) {
    (vote_to_wire(&rpc.vote), opt_to_wire(&rpc.last_log_id))
}

pub fn vote_request_from_wire(vote: WireVote, last_log_id: Option<WireLogId>) -> VoteRequest<u64> {
    VoteRequest { vote: vote_from_wire(vote), last_log_id: opt_from_wire(last_log_id) }
}

pub fn vote_response_to_wire(r: &VoteResponse<u64>) -> (WireVote, bool, Option<WireLogId>) {
    (vote_to_wire(&r.vote), r.vote_granted, opt_to_wire(&r.last_log_id))
}

pub fn vote_response_from_wire(vote: WireVote, granted: bool, last: Option<WireLogId>) -> VoteResponse<u64> {
    VoteResponse { vote: vote_from_wire(vote), vote_granted: granted, last_log_id: opt_from_wire(last) }
}

/// The wire fields of an AppendEntries: vote, prev log id, stored entries, leader commit.
pub type WireAppend = (WireVote, Option<WireLogId>, Vec<Vec<u8>>, Option<WireLogId>);

pub fn append_to_wire(rpc: &AppendEntriesRequest<TypeConfig>) -> WireAppend {
    (
        vote_to_wire(&rpc.vote),
        opt_to_wire(&rpc.prev_log_id),
        rpc.entries.iter().map(encode_entry).collect(),
        opt_to_wire(&rpc.leader_commit),
    )
}

/// Rebuilds an AppendEntries from a peer; an entry that does not decode fails the whole call.
pub fn append_from_wire(
    vote: WireVote,
    prev_log_id: Option<WireLogId>,
    entries: &[Vec<u8>],
    leader_commit: Option<WireLogId>,
) -> Result<AppendEntriesRequest<TypeConfig>, ShardError> {
    let entries = entries.iter().map(|e| decode_entry(e)).collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest {
        vote: vote_from_wire(vote),
        prev_log_id: opt_from_wire(prev_log_id),
        entries,
        leader_commit: opt_from_wire(leader_commit),
    })
}

pub fn append_response_to_wire(r: &AppendEntriesResponse<u64>) -> AppendOutcome {
    match r {
        AppendEntriesResponse::Success => AppendOutcome::Success,
        AppendEntriesResponse::PartialSuccess(id) => AppendOutcome::PartialSuccess(opt_to_wire(id)),
        AppendEntriesResponse::Conflict => AppendOutcome::Conflict,
        AppendEntriesResponse::HigherVote(v) => AppendOutcome::HigherVote(vote_to_wire(v)),
    }
}

pub fn append_response_from_wire(r: AppendOutcome) -> AppendEntriesResponse<u64> {
    match r {
        AppendOutcome::Success => AppendEntriesResponse::Success,
        AppendOutcome::PartialSuccess(id) => AppendEntriesResponse::PartialSuccess(opt_from_wire(id)),
        AppendOutcome::Conflict => AppendEntriesResponse::Conflict,
        AppendOutcome::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_wire(v)),
    }
}

pub fn snapshot_meta_to_wire(meta: &SnapshotMeta) -> WireSnapshotMeta {
    let membership = MembershipRecord::from(meta.last_membership.membership());
    WireSnapshotMeta {
        last_log_id: opt_to_wire(&meta.last_log_id),
        membership_log_id: opt_to_wire(meta.last_membership.log_id()),
        membership: WireMembership { configs: membership.configs, nodes: membership.nodes },
        snapshot_id: meta.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_wire(meta: WireSnapshotMeta) -> SnapshotMeta {
    let membership = MembershipRecord { configs: meta.membership.configs, nodes: meta.membership.nodes };
    SnapshotMeta {
        last_log_id: opt_from_wire(meta.last_log_id),
        last_membership: StoredMembership::new(opt_from_wire(meta.membership_log_id), membership.into()),
        snapshot_id: meta.snapshot_id,
    }
}

pub fn install_from_wire(
    vote: WireVote,
    meta: WireSnapshotMeta,
    offset: u64,
    data: Vec<u8>,
    done: bool,
) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: vote_from_wire(vote),
        meta: snapshot_meta_from_wire(meta),
        offset,
        data,
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LeaderId};

    #[test]
    fn t01_votes_and_log_ids_round_trip() {
        let vote = Vote { leader_id: LeaderId { term: 7, node_id: 3 }, committed: true };
        assert_eq!(vote_from_wire(vote_to_wire(&vote)), vote);
        let id = LogId::new(CommittedLeaderId::new(5, 2), 99);
        assert_eq!(log_id_from_wire(log_id_to_wire(&id)), id);
        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(id)),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
        ] {
            assert_eq!(append_response_from_wire(append_response_to_wire(&r)), r);
        }
    }

    #[test]
    fn t02_append_entries_round_trip_through_stored_form() {
        let id = LogId::new(CommittedLeaderId::new(2, 1), 4);
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote { leader_id: LeaderId { term: 2, node_id: 1 }, committed: true },
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 3)),
            entries: vec![openraft::Entry { log_id: id, payload: openraft::EntryPayload::Blank }],
            leader_commit: Some(id),
        };
        let (vote, prev, entries, commit) = append_to_wire(&rpc);
        let back = append_from_wire(vote, prev, &entries, commit).expect("decodes");
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.prev_log_id, rpc.prev_log_id);
        assert_eq!(back.leader_commit, rpc.leader_commit);
        assert_eq!(back.entries.len(), 1);
        assert_eq!(back.entries[0].log_id, id);
        // A truncated entry is refused, not half-applied.
        let mut bad = entries.clone();
        bad[0].truncate(5);
        assert!(append_from_wire(vote, prev, &bad, commit).is_err());
    }
}
