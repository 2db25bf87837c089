//! `WriteSession`: idempotent writes to one scope under the client rules of SPEC §6.4. It owns a
//! `client_id` and its sequence: learns `last_committed_sequence` with `GetClientState` before
//! the first write and after a `SequenceGap`, sends each new transaction at last + 1, retries the
//! identical transaction with the same sequence on `Unavailable`, `DeadlineExceeded`, timeouts
//! and lost connections (reconnecting), and treats `AlreadyCommitted` as done.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::Client;
use crate::constants::{RETRY_ATTEMPTS_MAX, RETRY_BACKOFF_BASE_MS, RETRY_BACKOFF_CAP_MS};
use crate::error::ClientError;
use crate::messages::{Request, Response, StatusCode, WriteResult, WriteSuccess};
use ledger_core::types::{Operation, TxId, WriteError, WriteErrorCode};

/// Backoff between attempts: `base × 2^n`, capped at `cap`, jittered into `[d/2, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts including the first; at least 1.
    pub max_attempts: u32,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(RETRY_BACKOFF_BASE_MS),
            cap: Duration::from_millis(RETRY_BACKOFF_CAP_MS),
            max_attempts: RETRY_ATTEMPTS_MAX,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl RngCore) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let full = self.base.saturating_mul(factor).min(self.cap);
        if !self.jitter || full.is_zero() {
            return full;
        }
        let half = full / 2;
        let spread = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.gen_range(0..=spread))
    }
}

/// How a write ended. Condition failures are values, not errors (SPEC §4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed by this call (or a cached success of an earlier attempt).
    Committed { sequence: u64, success: WriteSuccess },
    /// The sequence was already committed, by an earlier attempt of this transaction; done.
    /// The ids identify the client's last committed transaction (SPEC §6.3).
    AlreadyCommitted { sequence: u64, committed_tx_id: Option<TxId>, committed_block_height: Option<u64> },
    /// Rejected by a condition (KeyExists, VersionMismatch, ...); no sequence consumed.
    Rejected(WriteError),
}

/// One writer identity in one scope. Writes through `&mut self` are sequential; use several
/// sessions (distinct client ids) for parallel writers.
#[derive(Debug)]
pub struct WriteSession {
    client: Client,
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: String,
    /// The sequence the next new transaction uses; `None` until learned from the server.
    next_sequence: Option<u64>,
    policy: RetryPolicy,
    rng: StdRng,
}

impl WriteSession {
    /// A session with a random client id `cli-<16 hex digits>`.
    pub fn new(client: Client, namespace_id: i64, vault_id: Option<i64>) -> WriteSession {
        let mut rng = StdRng::from_entropy();
        let client_id = format!("cli-{:016x}", rng.next_u64());
        WriteSession {
            client,
            namespace_id,
            vault_id,
            client_id,
            next_sequence: None,
            policy: RetryPolicy::default(),
            rng,
        }
    }

    /// Uses a fixed client id (e.g. to continue after a restart).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self.next_sequence = None;
        self
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Seeds the jitter, for reproducible tests.
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `(namespace_id, vault_id)` of the scope this session writes to.
    pub fn scope(&self) -> (i64, Option<i64>) {
        (self.namespace_id, self.vault_id)
    }

    /// The connection in use (replaced after a reconnect).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Continues on another connection (one the caller already replaced), keeping the sequence.
    pub fn replace_client(&mut self, client: Client) {
        self.client = client;
    }

    /// The sequence the next new transaction will use, once known.
    pub fn next_sequence(&self) -> Option<u64> {
        self.next_sequence
    }

    /// Asks the server for `last_committed_sequence` (with retries) and continues after it.
    pub async fn sync_sequence(&mut self) -> Result<u64, ClientError> {
        let mut attempt = 0;
        loop {
            let result =
                self.client.get_client_state(self.namespace_id, self.vault_id, self.client_id.clone()).await;
            match result {
                Ok(last) => {
                    let next = last.saturating_add(1);
                    self.next_sequence = Some(next);
                    return Ok(next);
                }
                Err(e) => self.backoff_or_fail(e, &mut attempt).await?,
            }
        }
    }

    /// Commits `operations` as one transaction (`Write`).
    pub async fn write(&mut self, operations: Vec<Operation>) -> Result<WriteOutcome, ClientError> {
        self.write_with_proof(operations, false).await
    }

    /// `write`, optionally asking for the block header and Merkle proof.
    pub async fn write_with_proof(
        &mut self,
        operations: Vec<Operation>,
        include_tx_proof: bool,
    ) -> Result<WriteOutcome, ClientError> {
        let (namespace_id, vault_id, client_id) = (self.namespace_id, self.vault_id, self.client_id.clone());
        self.submit(|sequence| Request::Write {
            namespace_id,
            vault_id,
            client_id: client_id.clone(),
            sequence,
            operations: operations.clone(),
            include_tx_proof,
        })
        .await
    }

    /// Commits the concatenated groups as one transaction (`BatchWrite`).
    pub async fn batch_write(&mut self, groups: Vec<Vec<Operation>>) -> Result<WriteOutcome, ClientError> {
        let (namespace_id, vault_id, client_id) = (self.namespace_id, self.vault_id, self.client_id.clone());
        self.submit(|sequence| Request::BatchWrite {
            namespace_id,
            vault_id,
            client_id: client_id.clone(),
            sequence,
            groups: groups.clone(),
            include_tx_proof: false,
        })
        .await
    }

    /// Sends the transaction built by `build(sequence)` until it is decided or retries run out.
    async fn submit(&mut self, build: impl Fn(u64) -> Request) -> Result<WriteOutcome, ClientError> {
        let mut sequence = match self.next_sequence {
            Some(next) => next,
            None => self.sync_sequence().await?,
        };
        let mut attempt = 0;
        // Whether some attempt may have reached a block: every `ResourceExhausted` is a refusal
        // before the write was queued (rate limit, full queue, concurrency cap, SPEC §8.9).
        let mut maybe_applied = false;
        loop {
            let outcome = match self.client.call(build(sequence)).await {
                Ok(Response::Write(WriteResult::Success(success))) => {
                    Some(WriteOutcome::Committed { sequence, success })
                }
                Ok(Response::Write(WriteResult::Error(error))) => match error.code {
                    WriteErrorCode::AlreadyCommitted => Some(WriteOutcome::AlreadyCommitted {
                        sequence,
                        committed_tx_id: error.committed_tx_id,
                        committed_block_height: error.committed_block_height,
                    }),
                    WriteErrorCode::SequenceGap => {
                        // Our idea of the sequence is ahead of the server's: earlier sequences
                        // never committed. Re-learn it and resend this transaction at last + 1.
                        attempt += 1;
                        if attempt >= self.policy.max_attempts.max(1) {
                            return Err(ClientError::Protocol(format!(
                                "sequence gap persists after {attempt} attempts: {}",
                                error.message
                            )));
                        }
                        sequence = self.sync_sequence().await?;
                        continue;
                    }
                    WriteErrorCode::KeyExists
                    | WriteErrorCode::KeyNotFound
                    | WriteErrorCode::VersionMismatch
                    | WriteErrorCode::ValueMismatch => {
                        // A condition failure consumes no sequence (SPEC §6.3).
                        self.next_sequence = Some(sequence);
                        return Ok(WriteOutcome::Rejected(error));
                    }
                },
                Ok(other) => {
                    return Err(ClientError::Protocol(format!("unexpected response to a write: {other:?}")));
                }
                Err(e) => {
                    maybe_applied |=
                        !matches!(e, ClientError::Status { code: StatusCode::ResourceExhausted, .. });
                    if let Err(e) = self.backoff_or_fail(e, &mut attempt).await {
                        // The outcome is unknown: the sequence may have committed, so it is
                        // never reused for a different transaction. One only ever refused was
                        // never queued, so the next transaction takes it.
                        let next = if maybe_applied { sequence.saturating_add(1) } else { sequence };
                        self.next_sequence = Some(next);
                        return Err(e);
                    }
                    None
                }
            };
            if let Some(outcome) = outcome {
                self.next_sequence = Some(sequence.saturating_add(1));
                return Ok(outcome);
            }
        }
    }

    /// After a failed attempt: returns the error if it is final, else reconnects when the
    /// connection is gone and sleeps the backoff delay.
    async fn backoff_or_fail(&mut self, error: ClientError, attempt: &mut u32) -> Result<(), ClientError> {
        if !error.is_retryable() {
            return Err(error);
        }
        // A rate-limited write is not tried again before the server said it could be admitted.
        let delay = self.policy.delay(*attempt, &mut self.rng).max(error.retry_after().unwrap_or_default());
        *attempt += 1;
        if *attempt >= self.policy.max_attempts.max(1) {
            return Err(error);
        }
        tokio::time::sleep(delay).await;
        // Only this session's own connection is replaced: a lost side connection to a learned
        // leader (`follow_leaders`) is the client's to forget, and the retry goes out here.
        if self.client.closed_reason().is_some() {
            // A failed reconnect is itself retryable; the next attempt fails fast and backs off.
            if let Ok(client) = self.client.reconnect().await {
                self.client = client;
            }
        }
        Ok(())
    }
}
