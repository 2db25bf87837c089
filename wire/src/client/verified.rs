//! Verified reads and verified writes on top of `Client` / `WriteSession` (SPEC §5.1 items 3–4,
//! §7.7): the response is checked with `ledger_core::verify` before the caller sees it, and a
//! proof that fails comes back as the distinct `ClientError::ProofInvalid`, never as data.

use super::{Client, WriteOutcome, WriteSession};
use crate::error::ClientError;
use crate::messages::{Request, Response, StatusCode, WriteSuccess};
use ledger_core::types::{BlockHeader, ChainProof, Entity, Operation, ReadConsistency, StateProof};
use ledger_core::verify::{
    verify_read, verify_write, ExpiryClock, ReadClaim, TrustedBlock, VerifyError, WriteClaim,
};

/// How to run a verified read.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifiedReadOptions {
    /// Read the state at this height (None = current).
    pub at_height: Option<u64>,
    /// A block the caller already trusts: the header must be it or be reached from it by a chain
    /// proof, which is requested automatically. None = check the proof against the returned
    /// header only.
    pub trusted: Option<TrustedBlock>,
    /// None = the server default (Linearizable).
    pub consistency: Option<ReadConsistency>,
}

/// A verified-read response (SPEC §5.1 item 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRead {
    /// TTL-filtered value.
    pub value: Option<Vec<u8>>,
    /// The committed row the proof covers (expired rows included).
    pub entity: Option<Entity>,
    pub block_height: u64,
    pub block_header: BlockHeader,
    pub state_proof: StateProof,
    pub chain_proof: Option<ChainProof>,
}

/// Verifies a verified-read response for `key`. `historical` says whether TTL was judged at the
/// block's time (a read with `at_height`) or at the server's wall clock (current state).
pub fn verify_read_response(
    key: &str,
    read: &VerifiedRead,
    historical: bool,
    trusted: Option<&TrustedBlock>,
) -> Result<(), VerifyError> {
    let claim = ReadClaim {
        key,
        value: read.value.as_deref(),
        entity: read.entity.as_ref(),
        block_height: read.block_height,
        clock: if historical { ExpiryClock::BlockTime } else { ExpiryClock::WallClock },
    };
    verify_read(&claim, &read.block_header, &read.state_proof, read.chain_proof.as_ref(), trusted)
}

/// Verifies that `success` proves the inclusion of the transaction `(client_id, sequence,
/// operations)` in scope `(namespace_id, vault_id)` (SPEC §7.7 "Write proof"). `operations` are
/// as sent (a `BatchWrite`'s groups concatenated). The write must have asked for the proof.
pub fn verify_write_success(
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: &str,
    sequence: u64,
    operations: &[Operation],
    success: &WriteSuccess,
) -> Result<(), VerifyError> {
    let claim = WriteClaim {
        namespace_id,
        vault_id: vault_id.unwrap_or(0),
        operations,
        client_id,
        sequence,
        tx_id: &success.tx_id,
        actor: &success.actor,
        timestamp: success.tx_timestamp,
        block_height: success.block_height,
    };
    verify_write(&claim, success.block_header.as_ref(), success.tx_proof.as_ref())
}

impl Client {
    /// `VerifiedRead` whose response is verified before it is returned; a failing proof is
    /// `ClientError::ProofInvalid`.
    pub async fn verified_read(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        key: impl Into<String>,
        options: VerifiedReadOptions,
    ) -> Result<VerifiedRead, ClientError> {
        let key = key.into();
        let read = self.verified_read_unchecked(namespace_id, vault_id, key.clone(), options).await?;
        let historical = options.at_height.is_some_and(|h| h > 0);
        verify_read_response(&key, &read, historical, options.trusted.as_ref())
            .map_err(ClientError::ProofInvalid)?;
        Ok(read)
    }

    /// `VerifiedRead` without client-side checks (for tools that verify later, e.g. offline).
    /// With a trusted block below the read height it asks for the chain proof; when the current
    /// tip turns out to be the trusted block itself it reads at that height instead.
    pub async fn verified_read_unchecked(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        key: impl Into<String>,
        options: VerifiedReadOptions,
    ) -> Result<VerifiedRead, ClientError> {
        let key = key.into();
        let at_height = options.at_height.filter(|h| *h > 0);
        let trusted_height = options.trusted.map(|t| t.height);
        let wants_chain = match (trusted_height, at_height) {
            (Some(t), Some(h)) => t < h,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let request = |at_height: Option<u64>, include_chain_proof: bool| Request::VerifiedRead {
            namespace_id,
            vault_id,
            key: key.clone(),
            at_height,
            include_chain_proof,
            trusted_height: if include_chain_proof { trusted_height } else { None },
            consistency: options.consistency,
        };
        let response = match self.call(request(at_height, wants_chain)).await {
            Err(ClientError::Status { code: StatusCode::InvalidArgument, .. })
                if wants_chain && at_height.is_none() =>
            {
                // The tip is not above the trusted height: read the trusted block itself.
                self.call(request(trusted_height, false)).await?
            }
            other => other?,
        };
        match response {
            Response::VerifiedRead {
                value,
                entity,
                block_height,
                block_header,
                state_proof,
                chain_proof,
            } => Ok(VerifiedRead { value, entity, block_height, block_header, state_proof, chain_proof }),
            other => Err(ClientError::Protocol(format!("unexpected response to VerifiedRead: {other:?}"))),
        }
    }

    /// `HistoricalRead` of `key` at `at_height` without a proof: `(value, block_height)`.
    pub async fn historical_read(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        key: impl Into<String>,
        at_height: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let request = Request::HistoricalRead {
            namespace_id,
            vault_id,
            key: key.into(),
            at_height,
            include_proof: false,
            include_chain_proof: false,
            trusted_height: None,
        };
        match self.call(request).await? {
            Response::HistoricalRead { value, .. } => Ok(value),
            other => Err(ClientError::Protocol(format!("unexpected response to HistoricalRead: {other:?}"))),
        }
    }
}

impl WriteSession {
    /// `write` with `include_tx_proof`, verifying that the returned proof includes exactly this
    /// transaction (`ClientError::ProofInvalid` otherwise). An `AlreadyCommitted` outcome carries
    /// no proof and is returned as is; `Rejected` needs none.
    pub async fn write_verified(&mut self, operations: Vec<Operation>) -> Result<WriteOutcome, ClientError> {
        let outcome = self.write_with_proof(operations.clone(), true).await?;
        if let WriteOutcome::Committed { sequence, success } = &outcome {
            let (namespace_id, vault_id) = self.scope();
            verify_write_success(namespace_id, vault_id, self.client_id(), *sequence, &operations, success)
                .map_err(ClientError::ProofInvalid)?;
        }
        Ok(outcome)
    }
}
