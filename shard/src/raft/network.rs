//! openraft's network for one group (SPEC §5.6, §10.9): every RPC to a peer goes through this
//! core's peer connection pool (`peer/pool.rs`), one connection per peer node shared by all the
//! core's groups, as a `Request::Peer` envelope; the receiving node's router hands it to the
//! core owning the group there (`peer/serve.rs`).

use crate::constants::{
    COMMIT_NOTICE_ATTEMPTS_MAX, COMMIT_NOTICE_DELAY, COMMIT_NOTICE_WINDOW, SNAPSHOT_CHUNK_BYTES,
};
use crate::peer::convert::*;
use crate::peer::pool::{PeerError, PeerPool};
use crate::raft::commit_notice::{Acked, CommitNotice, Due, Heartbeat};
use crate::raft::contact::LeaderContact;
use crate::raft::log_store::{clamp_to_durable, LogStore};
use crate::raft::type_config::{Snapshot, TypeConfig, Vote};
use ledger_core::types::GroupId;
use ledger_wire::messages::{Request, Response, Status, StatusCode};
use ledger_wire::peer::{PeerRequest, PeerResponse};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What went wrong on the way to a peer, as openraft sees it.
#[derive(Debug, thiserror::Error)]
pub enum PeerRpcError {
    #[error(transparent)]
    Transport(#[from] PeerError),
    #[error("node {node} refused the call: {status}")]
    Refused { node: u64, status: Status },
    #[error("node {node} answered {what} with an unexpected response")]
    Unexpected { node: u64, what: &'static str },
}

/// Creates a [`PeerClient`] per target; cheap (openraft calls it per stream and per election).
#[derive(Clone)]
pub struct PeerNetworkFactory {
    group: GroupId,
    pool: Rc<PeerPool>,
    /// The group's log on this node: a follower is told an entry is committed only once it is
    /// durable here too (D50).
    log: LogStore,
    /// How long after an acknowledgement an empty AppendEntries may be answered here (D58).
    notice_window: Duration,
    heartbeat: Duration,
    /// Where a peer's answer that accepted this node's term is noted (the `stale` flag).
    contact: Rc<LeaderContact>,
}

impl PeerNetworkFactory {
    pub fn new(
        group: GroupId,
        pool: Rc<PeerPool>,
        log: LogStore,
        heartbeat: Duration,
        contact: Rc<LeaderContact>,
    ) -> PeerNetworkFactory {
        let notice_window = COMMIT_NOTICE_WINDOW.min(heartbeat / 2);
        PeerNetworkFactory { group, pool, log, notice_window, heartbeat, contact }
    }
}

/// One group's client to one peer node.
#[derive(Clone)]
pub struct PeerClient {
    group: GroupId,
    target: u64,
    addr: String,
    pool: Rc<PeerPool>,
    log: LogStore,
    /// This client's follower as of its last acknowledged AppendEntries (D58); fresh per client,
    /// so only a replication stream's own calls open the window.
    notice: Rc<RefCell<CommitNotice>>,
    notice_window: Duration,
    heartbeat: Duration,
    contact: Rc<LeaderContact>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            log: self.log.clone(),
            notice: Rc::default(),
            notice_window: self.notice_window,
            heartbeat: self.heartbeat,
            contact: self.contact.clone(),
        }
    }
}

impl PeerClient {
    async fn call(&self, request: PeerRequest, option: &RPCOption) -> Result<PeerResponse, PeerRpcError> {
        let answer = self
            .pool
            .call(self.target, &self.addr, Request::Peer(Box::new(request)), option.hard_ttl())
            .await?;
        match answer {
            Ok(Response::Peer(response)) => Ok(response),
            Ok(_) => Err(PeerRpcError::Unexpected { node: self.target, what: "a raft call" }),
            Err(status) => Err(PeerRpcError::Refused { node: self.target, status }),
        }
    }

    /// Unreachable peers make openraft back off; anything else is retried on the next tick.
    fn rpc_error<E: std::error::Error>(
        &self,
        e: PeerRpcError,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        match &e {
            PeerRpcError::Transport(PeerError::Unreachable { .. }) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            // A group still being created on the peer (SPEC §5.6: the sender retries).
            PeerRpcError::Refused { status, .. } if status.code == StatusCode::NotFound => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    /// D58: the delayed commit notice. Sends an empty AppendEntries with the pending commit once
    /// `COMMIT_NOTICE_DELAY` has passed without another call, retrying while the leader's log
    /// is not yet durable up to it; its answer only updates what the follower acknowledged.
    fn spawn_notice(&self) {
        let client = self.clone();
        glommio::spawn_local(async move {
            for _ in 0..COMMIT_NOTICE_ATTEMPTS_MAX {
                let since = client.notice.borrow().sends();
                glommio::timer::sleep(COMMIT_NOTICE_DELAY).await;
                let durable = client.log.durable_log_id();
                let due = client.notice.borrow_mut().due(since, |c| clamp_to_durable(c, durable));
                let (acked, commit) = match due {
                    Due::Void => break,
                    Due::NotYet => continue,
                    Due::Send(acked, commit) => (acked, commit),
                };
                let rpc = AppendEntriesRequest::<TypeConfig> {
                    vote: acked.vote,
                    prev_log_id: acked.last,
                    leader_commit: commit,
                    entries: Vec::new(),
                };
                let send = client.notice.borrow_mut().sending();
                let (vote, prev_log_id, entries, leader_commit) = append_to_wire(&rpc);
                let request = PeerRequest::AppendEntries {
                    group_id: client.group.0,
                    vote,
                    prev_log_id,
                    entries,
                    leader_commit,
                };
                let sent_at = Instant::now();
                let answer = client.call(request, &RPCOption::new(client.heartbeat)).await;
                let mut notice = client.notice.borrow_mut();
                match answer {
                    Ok(PeerResponse::AppendEntries(ledger_wire::peer::AppendOutcome::Success)) => {
                        notice.acked(send, Acked { at: sent_at, commit, ..acked });
                    }
                    _ => notice.forget(),
                }
                break;
            }
            client.notice.borrow_mut().done();
        })
        .detach();
    }

    fn unexpected<E: std::error::Error>(
        &self,
        what: &'static str,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        self.rpc_error(PeerRpcError::Unexpected { node: self.target, what })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // D50: the leader counts its own entries as appended before its sync ends, so its commit
        // index can pass what is durable here. A follower that applied such an entry could see
        // it lost with this node's power, so followers learn commits only up to what is durable
        // here (the entry then is on this node and on the follower quorum that committed it).
        let mut rpc = rpc;
        let announced = rpc.leader_commit;
        rpc.leader_commit = rpc.leader_commit.and_then(|c| clamp_to_durable(c, self.log.durable_log_id()));
        if rpc.entries.is_empty() {
            // The commit as openraft announced it: one not yet durable here is still news, which
            // the notice delivers once it is.
            let decision =
                self.notice.borrow_mut().heartbeat(&rpc.vote, rpc.prev_log_id, announced, self.notice_window);
            if let Heartbeat::Answer { schedule } = decision {
                if schedule {
                    self.spawn_notice();
                }
                return Ok(AppendEntriesResponse::Success);
            }
        }
        let send = self.notice.borrow_mut().sending();
        let sent = Acked {
            at: Instant::now(),
            vote: rpc.vote,
            last: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            commit: rpc.leader_commit,
        };
        let (vote, prev_log_id, mut entries, leader_commit) = append_to_wire(&rpc);
        // A follower far behind is sent up to `RAFT_PAYLOAD_ENTRIES_MAX` entries at once, which
        // can outgrow a frame: send the prefix that fits in half of one and report a partial
        // success, so openraft sends the rest next (otherwise it would retry the same too-large
        // call forever and the follower would never catch up).
        let budget = self.pool.max_frame_bytes() as usize / 2;
        let mut fits = 0;
        let mut bytes = 0usize;
        for entry in &entries {
            if fits > 0 && bytes + entry.len() > budget {
                break;
            }
            bytes += entry.len();
            fits += 1;
        }
        let partial =
            (fits < entries.len()).then(|| rpc.entries.get(fits.saturating_sub(1)).map(|e| e.log_id));
        entries.truncate(fits);
        let request =
            PeerRequest::AppendEntries { group_id: self.group.0, vote, prev_log_id, entries, leader_commit };
        let result = match self.call(request, &option).await {
            Ok(PeerResponse::AppendEntries(ledger_wire::peer::AppendOutcome::Success))
                if partial.is_some() =>
            {
                Ok(AppendEntriesResponse::PartialSuccess(partial.flatten()))
            }
            Ok(PeerResponse::AppendEntries(outcome)) => Ok(append_response_from_wire(outcome)),
            Ok(_) => Err(self.unexpected("append_entries")),
            Err(e) => Err(self.rpc_error(e)),
        };
        // D58: only a plain success tells what the follower holds; anything else (a partial
        // success, a conflict, a higher vote, an error) makes the next empty call go out for real.
        let sent_at = sent.at;
        match &result {
            Ok(AppendEntriesResponse::Success) => self.notice.borrow_mut().acked(send, sent),
            _ => self.notice.borrow_mut().forget(),
        }
        // Any answer but a higher vote accepted this node as the term's leader.
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.contact.acked_by(self.target, sent_at);
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>>
    {
        let request = PeerRequest::InstallSnapshot {
            group_id: self.group.0,
            vote: vote_to_wire(&rpc.vote),
            meta: snapshot_meta_to_wire(&rpc.meta),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        match self.call(request, &option).await {
            Ok(PeerResponse::InstallSnapshot { vote }) => {
                Ok(InstallSnapshotResponse { vote: vote_from_wire(vote) })
            }
            Ok(_) => Err(self.unexpected("install_snapshot")),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let (vote, last_log_id) = vote_request_to_wire(&rpc);
        match self.call(PeerRequest::Vote { group_id: self.group.0, vote, last_log_id }, &option).await {
            Ok(PeerResponse::Vote { vote, vote_granted, last_log_id }) => {
                Ok(vote_response_from_wire(vote, vote_granted, last_log_id))
            }
            Ok(_) => Err(self.unexpected("vote")),
            Err(e) => {
                if let PeerRpcError::Refused { status, .. } = &e {
                    if status.message.starts_with(crate::peer::serve::NOT_A_MEMBER)
                        && !self.contact.told_not_a_member.replace(true)
                    {
                        crate::event!(error, "not_a_member", group = %self.group, peer = self.target, message = %status.message);
                    }
                }
                Err(self.rpc_error(e))
            }
        }
    }

    /// Streams the snapshot in `SNAPSHOT_CHUNK_BYTES` chunks; the last one carries `done`.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let bytes = snapshot.snapshot.into_inner();
        let meta = snapshot_meta_to_wire(&snapshot.meta);
        let send = async {
            let mut offset = 0usize;
            loop {
                let end = (offset + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
                let done = end == bytes.len();
                let request = PeerRequest::InstallSnapshot {
                    group_id: self.group.0,
                    vote: vote_to_wire(&vote),
                    meta: meta.clone(),
                    offset: offset as u64,
                    data: bytes[offset..end].to_vec(),
                    done,
                };
                let answer = self.call(request, &option).await;
                let reply_vote = match answer {
                    Ok(PeerResponse::InstallSnapshot { vote }) => vote_from_wire(vote),
                    Ok(_) => {
                        let e = PeerRpcError::Unexpected { node: self.target, what: "install_snapshot" };
                        return Err(StreamingError::Network(NetworkError::new(&e)));
                    }
                    Err(e @ PeerRpcError::Transport(PeerError::Unreachable { .. })) => {
                        return Err(StreamingError::Unreachable(Unreachable::new(&e)))
                    }
                    Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
                };
                if reply_vote > vote || done {
                    return Ok(SnapshotResponse { vote: reply_vote });
                }
                offset = end;
            }
        };
        futures::pin_mut!(send);
        futures::pin_mut!(cancel);
        match futures::future::select(send, cancel).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right((closed, _)) => Err(StreamingError::Closed(closed)),
        }
    }
}
