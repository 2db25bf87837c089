//! Setup of the scopes under load: namespaces named `loadgen-<i>` are reused when they exist and
//! created otherwise, and each gets `--vaults-per-ns` active vaults (existing ones first, lowest id
//! first). Reusing keeps repeated runs from piling up namespaces on a test cluster.

use crate::constants::NAMESPACE_PREFIX;
use crate::error::LoadgenError;
use ledger_core::types::VaultStatus;
use ledger_wire::messages::{NamespaceSelector, Request, Response, StatusCode};
use ledger_wire::{Client, ClientError};

/// One vault under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub namespace_id: i64,
    pub vault_id: i64,
}

fn setup_error(step: impl Into<String>) -> impl FnOnce(ClientError) -> LoadgenError {
    let step = step.into();
    move |source| LoadgenError::Setup { step, source }
}

fn is_status(error: &ClientError, wanted: StatusCode) -> bool {
    matches!(error, ClientError::Status { code, .. } if *code == wanted)
}

/// The id of namespace `name`, creating it if needed.
async fn ensure_namespace(client: &Client, name: &str) -> Result<i64, LoadgenError> {
    match client.get_namespace(NamespaceSelector::Name(name.to_string())).await {
        Ok(info) => return Ok(info.namespace_id),
        Err(e) if is_status(&e, StatusCode::NotFound) => {}
        Err(e) => return Err(setup_error(format!("looking up namespace {name}"))(e)),
    }
    match client.create_namespace(name).await {
        Ok((namespace_id, _group)) => Ok(namespace_id),
        // Another loader created it between our lookup and our create.
        Err(e) if is_status(&e, StatusCode::AlreadyExists) => client
            .get_namespace(NamespaceSelector::Name(name.to_string()))
            .await
            .map(|info| info.namespace_id)
            .map_err(setup_error(format!("looking up namespace {name}"))),
        Err(e) => Err(setup_error(format!("creating namespace {name}"))(e)),
    }
}

/// Active vault ids of `namespace_id` known to the node, ascending.
async fn existing_vaults(client: &Client, namespace_id: i64) -> Result<Vec<i64>, LoadgenError> {
    let step = "listing vaults";
    match client.call(Request::ListVaults).await.map_err(setup_error(step))? {
        Response::ListVaults { vaults } => {
            let mut ids: Vec<i64> = vaults
                .iter()
                .filter(|v| v.namespace_id == namespace_id && v.status == VaultStatus::Active)
                .map(|v| v.vault_id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        }
        other => Err(LoadgenError::UnexpectedResponse { step: step.into(), response: format!("{other:?}") }),
    }
}

/// Namespaces `loadgen-0 .. loadgen-(namespaces-1)`, each with `vaults_per_ns` vaults.
pub async fn ensure_scopes(
    client: &Client,
    namespaces: u64,
    vaults_per_ns: u64,
) -> Result<Vec<Scope>, LoadgenError> {
    let mut scopes = Vec::new();
    for i in 0..namespaces {
        let name = format!("{NAMESPACE_PREFIX}{i}");
        let namespace_id = ensure_namespace(client, &name).await?;
        let mut vaults = existing_vaults(client, namespace_id).await?;
        vaults.truncate(usize::try_from(vaults_per_ns).unwrap_or(usize::MAX));
        while (vaults.len() as u64) < vaults_per_ns {
            let vault_id = client
                .create_vault(namespace_id, None)
                .await
                .map_err(setup_error(format!("creating a vault in namespace {name}")))?;
            vaults.push(vault_id);
        }
        scopes.extend(vaults.into_iter().map(|vault_id| Scope { namespace_id, vault_id }));
    }
    Ok(scopes)
}
