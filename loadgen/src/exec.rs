//! Turning one `OpSpec` into calls on the wire client and classifying the outcome. Each worker owns
//! an `Executor`: its connection handle and, per scope, a `WriteSession` under the worker's own
//! client id, so sequences are correct (SPEC §6.4) however many workers write to one scope.

use crate::codes::{client_error_code, write_error_code};
use crate::constants::LIST_LIMIT;
use crate::scopes::Scope;
use crate::workload::{key_name, list_prefix, value_bytes, OpSpec};
use ledger_core::types::{Operation, ReadConsistency};
use ledger_wire::client::VerifiedReadOptions;
use ledger_wire::messages::{Request, Response};
use ledger_wire::{Client, ClientError, WriteOutcome, WriteSession};
use std::sync::Arc;
use std::time::Duration;

/// Pause before replacing a lost connection, so a dead server is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

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
    scopes: Arc<Vec<Scope>>,
    /// One lazily created session per scope.
    sessions: Vec<Option<WriteSession>>,
    client_id: String,
    consistency: ReadConsistency,
    value_size: usize,
}

impl Executor {
    pub fn new(
        client: Client,
        scopes: Arc<Vec<Scope>>,
        client_id: String,
        consistency: ReadConsistency,
        value_size: usize,
    ) -> Executor {
        let sessions = scopes.iter().map(|_| None).collect();
        Executor { client, scopes, sessions, client_id, consistency, value_size }
    }

    fn session(&mut self, scope: usize) -> &mut WriteSession {
        let s = self.scopes[scope];
        let (client, client_id) = (&self.client, &self.client_id);
        self.sessions[scope].get_or_insert_with(|| {
            WriteSession::new(client.clone(), s.namespace_id, Some(s.vault_id))
                .with_client_id(client_id.clone())
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

    /// Runs `op`; `Err` carries the failure's report code.
    pub async fn execute(&mut self, op: &OpSpec) -> Result<Success, FailureCode> {
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
                    Err(e) => {
                        if e.is_connection_lost() {
                            self.reconnect().await;
                        }
                        Err(client_error_code(&e))
                    }
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
            Ok(_) => Err("protocol".to_string()),
            Err(e) => {
                if e.is_connection_lost() {
                    self.reconnect().await;
                }
                Err(client_error_code(&e))
            }
        }
    }

    async fn write(&mut self, scope: usize, keys: &[u64], value_seed: u64) -> Result<Success, FailureCode> {
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
            Ok(WriteOutcome::Rejected(e)) => Err(write_error_code(&e)),
            // The session already retried and reconnected as SPEC §6.4 allows.
            Err(e) => Err(client_error_code(&e)),
        }
    }

    /// Replaces the worker's connection after it was lost (sessions reconnect on their own).
    async fn reconnect(&mut self) {
        tokio::time::sleep(RECONNECT_PAUSE).await;
        if let Ok(client) = self.client.reconnect().await {
            self.client = client;
        }
    }
}
