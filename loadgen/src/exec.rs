//! Turning one `OpSpec` into calls on the wire client and classifying the outcome. Each worker owns
//! an `Executor`: its handle on the connection it shares (`ConnSlot`) and, per scope, a
//! `WriteSession` under the worker's own client id, so sequences are correct (SPEC §6.4) however
//! many workers write to one scope. A failure is paced: a lost connection is replaced once per
//! connection (reported once, with its cause), and a retryable error delays the worker's next
//! operation by a jittered exponential backoff, so nothing retries in a tight loop.

use crate::codes::{client_error_code, write_error_code};
use crate::conn_slot::{Backoff, ConnSlot, Health};
use crate::constants::LIST_LIMIT;
use crate::scopes::Scope;
use crate::workload::{key_name, list_prefix, value_bytes, OpSpec};
use ledger_core::types::{Operation, ReadConsistency};
use ledger_wire::client::VerifiedReadOptions;
use ledger_wire::messages::{Request, Response};
use ledger_wire::{Client, ClientError, RetryPolicy, WriteOutcome, WriteSession};
use std::sync::Arc;
use std::time::Instant;

/// The report code of an operation that did not succeed.
pub type FailureCode = String;

/// How a successful operation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// A read found its key, a list returned rows, a write committed.
    Hit,
    /// A read found no value or a list page came back empty (e.g. the preload did not cover it).
    Miss,
}

/// Executes the operations of one worker.
pub struct Executor {
    client: Client,
    /// The connection `client` belongs to, and the generation of `client` in it.
    slot: Arc<ConnSlot>,
    generation: u64,
    backoff: Backoff,
    /// Every outcome, for the run's all-failing watchdog.
    health: Arc<Health>,
    /// Reconnecting gives up at this instant (the end of the run).
    deadline: Instant,
    scopes: Arc<Vec<Scope>>,
    /// One lazily created session per scope.
    sessions: Vec<Option<WriteSession>>,
    client_id: String,
    consistency: ReadConsistency,
    value_size: usize,
    /// `false` for a flooding worker (the noisy neighbour): a failed write is neither retried
    /// nor followed by a backoff, so refusals come back as fast as the server gives them.
    paced: bool,
}

impl Executor {
    pub async fn new(
        slot: Arc<ConnSlot>,
        scopes: Arc<Vec<Scope>>,
        client_id: String,
        consistency: ReadConsistency,
        value_size: usize,
        backoff_seed: u64,
        health: Arc<Health>,
    ) -> Executor {
        let (client, generation) = slot.current().await;
        let sessions = scopes.iter().map(|_| None).collect();
        Executor {
            client,
            slot,
            generation,
            backoff: Backoff::new(backoff_seed),
            health,
            deadline: Instant::now(),
            scopes,
            sessions,
            client_id,
            consistency,
            value_size,
            paced: true,
        }
    }

    /// A worker that sends its next operation as soon as the last one is answered, whatever
    /// the answer (`--noisy-neighbour`'s flood): no retries, no backoff.
    pub fn unpaced(mut self) -> Executor {
        self.paced = false;
        self
    }

    /// Sets when reconnect attempts stop (the end of the measured window).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    fn session(&mut self, scope: usize) -> &mut WriteSession {
        let s = self.scopes[scope];
        let (client, client_id, paced) = (&self.client, &self.client_id, self.paced);
        self.sessions[scope].get_or_insert_with(|| {
            let session = WriteSession::new(client.clone(), s.namespace_id, Some(s.vault_id))
                .with_client_id(client_id.clone());
            if paced {
                session
            } else {
                let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
                session.with_retry_policy(once)
            }
        })
    }

    /// Learns the starting sequence of every scope's session (before the clock starts, so the
    /// first measured writes do not pay for `GetClientState`).
    pub async fn prepare_writes(&mut self) -> Result<(), ClientError> {
        for scope in 0..self.scopes.len() {
            self.session(scope).sync_sequence().await?;
        }
        Ok(())
    }

    /// Runs `op`; `Err` carries the failure's report code. A failure has been paced (backoff,
    /// or a replaced connection) by the time this returns.
    pub async fn execute(&mut self, op: &OpSpec) -> Result<Success, FailureCode> {
        match self.attempt(op).await {
            Ok(success) => {
                self.backoff.succeeded();
                self.health.record_ok();
                Ok(success)
            }
            Err(Failure::Rejected(code)) => {
                // A failed condition is an answer: the server works.
                self.health.record_ok();
                Err(code)
            }
            Err(Failure::Client(error)) => {
                let code = client_error_code(&error);
                self.health.record_failure(&error.to_string());
                self.pace(&error).await;
                Err(code)
            }
        }
    }

    /// After a failed call: replaces the connection if it is gone (once per connection, however
    /// many workers share it), else waits the backoff when the error says to retry later.
    async fn pace(&mut self, error: &ClientError) {
        if let Some(cause) = self.client.closed_reason() {
            let (client, generation) = self.slot.replace(self.generation, &cause, self.deadline).await;
            self.client = client;
            self.generation = generation;
            for session in self.sessions.iter_mut().flatten() {
                session.replace_client(self.client.clone());
            }
        } else if self.paced && (error.is_retryable() || error.is_connection_lost()) {
            tokio::time::sleep(self.backoff.failed()).await;
        }
    }

    async fn attempt(&mut self, op: &OpSpec) -> Result<Success, Failure> {
        let scope_index = usize::try_from(op.scope()).unwrap_or(usize::MAX);
        let scope = self.scopes[scope_index];
        let request = match op {
            OpSpec::Read { key, .. } => Request::Read {
                namespace_id: scope.namespace_id,
                vault_id: Some(scope.vault_id),
                key: key_name(*key),
                consistency: self.consistency,
            },
            OpSpec::List { key, .. } => Request::ListEntities {
                namespace_id: scope.namespace_id,
                vault_id: Some(scope.vault_id),
                key_prefix: list_prefix(*key),
                at_height: None,
                include_expired: false,
                limit: LIST_LIMIT,
                page_token: String::new(),
                consistency: self.consistency,
            },
            OpSpec::Verified { key, .. } => {
                // The client library checks the state proof against the returned header (SPEC
                // §7.7); a proof that fails is an error, never a success.
                let options =
                    VerifiedReadOptions { consistency: Some(self.consistency), ..Default::default() };
                return match self
                    .client
                    .verified_read(scope.namespace_id, Some(scope.vault_id), key_name(*key), options)
                    .await
                {
                    Ok(read) => Ok(if read.value.is_some() { Success::Hit } else { Success::Miss }),
                    Err(e) => Err(Failure::Client(e)),
                };
            }
            OpSpec::Write { keys, value_seed, .. } => {
                return self.write(scope_index, keys, *value_seed).await
            }
        };
        match self.client.call(request).await {
            Ok(Response::Read { value: Some(_), .. }) => Ok(Success::Hit),
            Ok(Response::Read { value: None, .. }) => Ok(Success::Miss),
            Ok(Response::ListEntities { entities, .. }) => {
                Ok(if entities.is_empty() { Success::Miss } else { Success::Hit })
            }
            Ok(other) => Err(Failure::Client(ClientError::Protocol(format!(
                "unexpected response {}",
                other_name(&other)
            )))),
            Err(e) => Err(Failure::Client(e)),
        }
    }

    async fn write(&mut self, scope: usize, keys: &[u64], value_seed: u64) -> Result<Success, Failure> {
        let value_size = self.value_size;
        let operations: Vec<Operation> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Operation::SetEntity {
                key: key_name(*k),
                value: value_bytes(value_seed.wrapping_add(i as u64), value_size),
                expires_at: None,
                condition: None,
            })
            .collect();
        match self.session(scope).write(operations).await {
            Ok(WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. }) => Ok(Success::Hit),
            Ok(WriteOutcome::Rejected(e)) => Err(Failure::Rejected(write_error_code(&e))),
            // The session already retried (with backoff) and reconnected as SPEC §6.4 allows.
            Err(e) => Err(Failure::Client(e)),
        }
    }
}

/// How an attempt failed: a domain outcome (a failed condition, counted but not paced) or an
/// error of the call.
enum Failure {
    Rejected(FailureCode),
    Client(ClientError),
}

/// The variant name of an unexpected response, for its error message.
fn other_name(response: &Response) -> String {
    let debug = format!("{response:?}");
    debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}
