//! Typed convenience calls on `Client`: each builds one `Request`, sends it with `call`, and
//! unpacks the matching `Response` variant (any other variant is a protocol error).

use super::Client;
use crate::error::ClientError;
use crate::messages::{
    BatchReadItem, HealthStatus, NamespaceInfo, NamespaceSelector, Request, Response, VaultInfo, WriteResult,
};
use ledger_core::types::{Hash, Operation, ReadConsistency, RetentionPolicy};

fn unexpected(op: &str, response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response to {op}: {response:?}"))
}

/// The tip of a scope's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub height: u64,
    pub block_hash: Hash,
    pub state_root: Hash,
}

impl Client {
    /// Reads one entity value (`None` when absent or expired) with eventual consistency.
    pub async fn read(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        key: impl Into<String>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.read_with(namespace_id, vault_id, key, ReadConsistency::Eventual).await
    }

    /// Reads one entity value with the given consistency.
    pub async fn read_with(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        key: impl Into<String>,
        consistency: ReadConsistency,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let request = Request::Read { namespace_id, vault_id, key: key.into(), consistency };
        match self.call(request).await? {
            Response::Read { value, .. } => Ok(value),
            other => Err(unexpected("Read", &other)),
        }
    }

    /// Reads several keys from one consistent snapshot; results in request order.
    pub async fn batch_read(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        keys: Vec<String>,
        consistency: ReadConsistency,
    ) -> Result<Vec<BatchReadItem>, ClientError> {
        match self.call(Request::BatchRead { namespace_id, vault_id, keys, consistency }).await? {
            Response::BatchRead { results, .. } => Ok(results),
            other => Err(unexpected("BatchRead", &other)),
        }
    }

    /// One raw `Write` with a caller-managed sequence and no retry; most callers want
    /// `WriteSession`, which applies the SPEC §6.4 rules.
    pub async fn write(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        client_id: impl Into<String>,
        sequence: u64,
        operations: Vec<Operation>,
    ) -> Result<WriteResult, ClientError> {
        let request = Request::Write {
            namespace_id,
            vault_id,
            client_id: client_id.into(),
            sequence,
            operations,
            include_tx_proof: false,
        };
        match self.call(request).await? {
            Response::Write(result) => Ok(result),
            other => Err(unexpected("Write", &other)),
        }
    }

    /// The last sequence committed by `client_id` in a scope (0 if none), SPEC §6.2.
    pub async fn get_client_state(
        &self,
        namespace_id: i64,
        vault_id: Option<i64>,
        client_id: impl Into<String>,
    ) -> Result<u64, ClientError> {
        let request = Request::GetClientState { namespace_id, vault_id, client_id: client_id.into() };
        match self.call(request).await? {
            Response::GetClientState { last_committed_sequence } => Ok(last_committed_sequence),
            other => Err(unexpected("GetClientState", &other)),
        }
    }

    pub async fn get_tip(&self, namespace_id: i64, vault_id: Option<i64>) -> Result<Tip, ClientError> {
        match self.call(Request::GetTip { namespace_id, vault_id }).await? {
            Response::GetTip { height, block_hash, state_root } => Ok(Tip { height, block_hash, state_root }),
            other => Err(unexpected("GetTip", &other)),
        }
    }

    /// Creates a namespace; returns `(namespace_id, group_id)`.
    pub async fn create_namespace(&self, name: impl Into<String>) -> Result<(i64, u32), ClientError> {
        match self.call(Request::CreateNamespace { name: name.into(), group_id: None }).await? {
            Response::CreateNamespace { namespace_id, group_id } => Ok((namespace_id, group_id)),
            other => Err(unexpected("CreateNamespace", &other)),
        }
    }

    pub async fn get_namespace(&self, by: NamespaceSelector) -> Result<NamespaceInfo, ClientError> {
        match self.call(Request::GetNamespace { by }).await? {
            Response::GetNamespace(info) => Ok(info),
            other => Err(unexpected("GetNamespace", &other)),
        }
    }

    /// Creates a vault in a namespace with the given (or default) retention; returns its id.
    pub async fn create_vault(
        &self,
        namespace_id: i64,
        retention_policy: Option<RetentionPolicy>,
    ) -> Result<i64, ClientError> {
        let request = Request::CreateVault {
            namespace_id,
            replication_factor: 0,
            initial_nodes: Vec::new(),
            retention_policy,
        };
        match self.call(request).await? {
            Response::CreateVault { vault_id, .. } => Ok(vault_id),
            other => Err(unexpected("CreateVault", &other)),
        }
    }

    pub async fn get_vault(&self, namespace_id: i64, vault_id: i64) -> Result<VaultInfo, ClientError> {
        match self.call(Request::GetVault { namespace_id, vault_id }).await? {
            Response::GetVault(info) => Ok(info),
            other => Err(unexpected("GetVault", &other)),
        }
    }

    /// Node-level health (no scope) or a scope's health.
    pub async fn health_check(
        &self,
        namespace_id: Option<i64>,
        vault_id: Option<i64>,
    ) -> Result<(HealthStatus, String), ClientError> {
        match self.call(Request::HealthCheck { namespace_id, vault_id }).await? {
            Response::HealthCheck { status, message, .. } => Ok((status, message)),
            other => Err(unexpected("HealthCheck", &other)),
        }
    }
}
