//! Token authentication and scopes (SPEC §4.1, §11.1 `auth_tokens`; D42). The table holds each
//! token's id, the blake3 hash of its secret (never the secret) and its scope. A connection
//! presents a secret in its `Hello`; every request it sends is checked against the table current
//! on its core, which the node swaps on SIGHUP (`AuthState`).

use ledger_wire::messages::{NamespaceSelector, Request, Status, StatusCode};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// blake3 of a token secret.
pub type SecretHash = [u8; 32];

/// Which namespaces a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    All,
    /// Namespace ids.
    Only(Vec<i64>),
}

/// One `auth_tokens` entry as configured. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub id: String,
    pub secret: String,
    pub namespaces: Namespaces,
    /// Writes allowed (`access = "read-write"`); reads always are.
    pub write: bool,
    /// Registry and cluster operations (namespace/vault lifecycle, membership, recovery).
    pub admin: bool,
    /// The cluster's node credential: accepted on `Role::Peer` connections, allowed everything.
    pub peer: bool,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("namespaces", &self.namespaces)
            .field("write", &self.write)
            .field("admin", &self.admin)
            .field("peer", &self.peer)
            .finish()
    }
}

impl TokenSpec {
    /// The simple form `id = "secret"`: everything, peer role included.
    pub fn full(id: &str, secret: &str) -> TokenSpec {
        TokenSpec {
            id: id.to_string(),
            secret: secret.to_string(),
            namespaces: Namespaces::All,
            write: true,
            admin: true,
            peer: true,
        }
    }
}

/// An authenticated token: what a connection keeps between requests.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    pub id: Arc<str>,
    hash: SecretHash,
    pub namespaces: Namespaces,
    pub write: bool,
    pub admin: bool,
    pub peer: bool,
}

/// The configured tokens; empty = authentication off.
#[derive(Debug, Default)]
pub struct AuthTable {
    tokens: Vec<Arc<Token>>,
}

pub fn hash_secret(secret: &str) -> SecretHash {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Equality of two hashes in time independent of where they differ.
pub fn constant_time_eq(a: &SecretHash, b: &SecretHash) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl AuthTable {
    pub fn new(specs: &[TokenSpec]) -> AuthTable {
        let tokens = specs
            .iter()
            .map(|spec| {
                Arc::new(Token {
                    id: spec.id.as_str().into(),
                    hash: hash_secret(&spec.secret),
                    namespaces: spec.namespaces.clone(),
                    write: spec.write,
                    admin: spec.admin,
                    peer: spec.peer,
                })
            })
            .collect();
        AuthTable { tokens }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token whose secret hashes to `hash`. Every entry is compared, whatever matched, so
    /// the time taken says nothing about which entry did.
    pub fn find(&self, hash: &SecretHash) -> Option<Arc<Token>> {
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.hash, hash) {
                found = Some(token.clone());
            }
        }
        found
    }
}

/// What a request needs of the token that sends it (D42).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any authenticated token: node info, node health, a namespace looked up by name.
    Any,
    /// Read this namespace's data.
    Read(i64),
    /// Read across every namespace (listings, events, replication status): a token for all
    /// namespaces.
    ReadAll,
    /// Write this namespace's data.
    Write(i64),
    /// Registry and cluster operations.
    Admin,
    /// Node-to-node calls (SPEC §5.6).
    Peer,
}

pub fn access_of(request: &Request) -> Access {
    use Request::*;
    match request {
        Read { namespace_id, .. }
        | BatchRead { namespace_id, .. }
        | GetBlock { namespace_id, .. }
        | GetBlockRange { namespace_id, .. }
        | GetTip { namespace_id, .. }
        | GetClientState { namespace_id, .. }
        | ListRelationships { namespace_id, .. }
        | ListResources { namespace_id, .. }
        | ListEntities { namespace_id, .. }
        | GetVault { namespace_id, .. }
        | VerifiedRead { namespace_id, .. }
        | HistoricalRead { namespace_id, .. }
        | CompareStateRoots { namespace_id, .. }
        | GetVaultHealth { namespace_id, .. }
        | WatchBlocks { namespace_id, .. } => Access::Read(*namespace_id),
        HealthCheck { namespace_id: Some(namespace_id), .. } => Access::Read(*namespace_id),
        GetNamespace { by: NamespaceSelector::Id(namespace_id) } => Access::Read(*namespace_id),
        Write { namespace_id, .. } | BatchWrite { namespace_id, .. } => Access::Write(*namespace_id),
        GetNodeInfo
        | GetPeers { .. }
        | HealthCheck { namespace_id: None, .. }
        | GetNamespace { by: NamespaceSelector::Name(_) }
        | CancelStream { .. } => Access::Any,
        ListNamespaces { .. }
        | GetSystemState { .. }
        | ListVaults
        | GetClusterInfo
        | GetGroupStatus
        | LagReport { .. }
        | GetEvents { .. } => Access::ReadAll,
        CreateNamespace { .. }
        | DeleteNamespace { .. }
        | CreateVault { .. }
        | DeleteVault { .. }
        | CheckIntegrity { .. }
        | CreateSnapshot { .. }
        | RecoverVault { .. }
        | SimulateDivergence { .. }
        | ForceGc { .. }
        | JoinCluster { .. }
        | LeaveCluster { .. }
        | NodeStopping { .. }
        | SetPartition { .. }
        | TransferLeadership { .. } => Access::Admin,
        Peer(_) | AnnouncePeer { .. } => Access::Peer,
    }
}

impl Token {
    fn covers(&self, namespace_id: i64) -> bool {
        match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Only(ids) => ids.contains(&namespace_id),
        }
    }

    /// `Ok` when this token may send a request needing `access`, else the `PermissionDenied`.
    // The refusal is answered as the wire `Status` at once; boxing it would only allocate.
    #[allow(clippy::result_large_err)]
    pub fn allows(&self, access: Access) -> Result<(), Status> {
        if self.peer {
            return Ok(());
        }
        let denied = |why: String| Err(Status::new(StatusCode::PermissionDenied, why));
        match access {
            Access::Any => Ok(()),
            Access::Read(ns) | Access::Write(ns) if !self.covers(ns) => {
                denied(format!("token `{}` is not allowed namespace {ns}", self.id))
            }
            Access::Read(_) => Ok(()),
            Access::Write(_) if self.write => Ok(()),
            Access::Write(_) => denied(format!("token `{}` is read-only", self.id)),
            Access::ReadAll if self.namespaces == Namespaces::All => Ok(()),
            Access::ReadAll => {
                denied(format!("token `{}` is limited to some namespaces; this needs all of them", self.id))
            }
            Access::Admin if self.admin => Ok(()),
            Access::Admin => denied(format!("token `{}` is not an admin token", self.id)),
            Access::Peer => denied(format!("token `{}` is not the cluster's peer token", self.id)),
        }
    }
}

/// One core's current table, replaced on SIGHUP. Connections remember the generation they
/// resolved their credential at and resolve it again when it moved: one `Cell` read per request.
#[derive(Debug, Default)]
pub struct AuthState {
    table: RefCell<Arc<AuthTable>>,
    generation: Cell<u64>,
}

impl AuthState {
    pub fn new(table: Arc<AuthTable>) -> AuthState {
        AuthState { table: RefCell::new(table), generation: Cell::new(0) }
    }

    pub fn replace(&self, table: Arc<AuthTable>) {
        *self.table.borrow_mut() = table;
        self.generation.set(self.generation.get() + 1);
    }

    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn table(&self) -> Arc<AuthTable> {
        self.table.borrow().clone()
    }
}

/// A connection's standing: its credential's hash (the secret itself is not kept) and the token
/// it resolved to under the table of `generation`.
pub struct Credential {
    hash: Option<SecretHash>,
    generation: u64,
    enabled: bool,
    token: Option<Arc<Token>>,
}

impl Credential {
    pub fn new(secret: Option<&str>, state: &AuthState) -> Credential {
        let hash = secret.map(hash_secret);
        let mut credential = Credential { hash, generation: 0, enabled: false, token: None };
        credential.resolve(state);
        credential
    }

    fn resolve(&mut self, state: &AuthState) {
        let table = state.table();
        self.generation = state.generation();
        self.enabled = table.enabled();
        self.token = self.hash.as_ref().and_then(|hash| table.find(hash));
    }

    /// Checks one request: `Ok(token)` (`None` when authentication is off), `Unauthenticated`
    /// for a missing or unknown credential, `PermissionDenied` outside the token's scope.
    #[allow(clippy::result_large_err)]
    pub fn check(&mut self, state: &AuthState, access: Access) -> Result<Option<&Arc<Token>>, Status> {
        if self.generation != state.generation() {
            self.resolve(state);
        }
        if !self.enabled {
            return Ok(None);
        }
        let Some(token) = &self.token else {
            let why = match self.hash {
                None => "a credential is required: this server has auth_tokens configured",
                Some(_) => "unknown credential",
            };
            return Err(Status::new(StatusCode::Unauthenticated, why));
        };
        token.allows(access)?;
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(id: &str, secret: &str, namespaces: Namespaces, write: bool, admin: bool) -> TokenSpec {
        TokenSpec { id: id.into(), secret: secret.into(), namespaces, write, admin, peer: false }
    }

    fn table() -> AuthTable {
        AuthTable::new(&[
            TokenSpec::full("node", "node-secret-0123456789"),
            spec("ro", "ro-secret-0123456789", Namespaces::All, false, false),
            spec("ns7", "ns7-secret-0123456789", Namespaces::Only(vec![7]), true, false),
            spec("ops", "ops-secret-0123456789", Namespaces::Only(vec![]), false, true),
        ])
    }

    fn write(namespace_id: i64) -> Request {
        Request::Write {
            namespace_id,
            vault_id: None,
            client_id: "c".into(),
            sequence: 1,
            operations: vec![],
            include_tx_proof: false,
        }
    }

    fn code(result: Result<(), Status>) -> Option<StatusCode> {
        result.err().map(|s| s.code)
    }

    #[test]
    fn t01_constant_time_eq_compares_every_byte() {
        let a = hash_secret("alpha");
        assert!(constant_time_eq(&a, &a));
        for i in [0, 15, 31] {
            let mut b = a;
            b[i] ^= 1;
            assert!(!constant_time_eq(&a, &b), "differs at {i}");
        }
    }

    #[test]
    fn t02_find_by_secret_hash_only() {
        let table = table();
        assert_eq!(table.find(&hash_secret("ro-secret-0123456789")).unwrap().id.as_ref(), "ro");
        assert!(table.find(&hash_secret("ro")).is_none(), "an id is not a secret");
        assert!(table.find(&hash_secret("ro-secret-012345678")).is_none());
        assert!(AuthTable::default().find(&hash_secret("x")).is_none());
        assert!(!format!("{table:?}").contains("secret-0123"), "Debug shows hashes only");
        let spec = TokenSpec::full("a", "very-secret-value");
        assert!(!format!("{spec:?}").contains("very-secret"));
    }

    #[test]
    fn t03_scopes() {
        let table = table();
        let token = |secret: &str| table.find(&hash_secret(secret)).unwrap();
        let (node, ro, ns7, ops) = (
            token("node-secret-0123456789"),
            token("ro-secret-0123456789"),
            token("ns7-secret-0123456789"),
            token("ops-secret-0123456789"),
        );
        let denied = Some(StatusCode::PermissionDenied);
        let create = Request::CreateNamespace { name: "x".into(), group_id: None };
        let peer_call = Access::Peer;
        for access in [access_of(&write(7)), access_of(&create), access_of(&Request::ListVaults), peer_call] {
            assert_eq!(code(node.allows(access)), None, "{access:?}");
        }
        assert_eq!(code(ro.allows(access_of(&write(7)))), denied);
        assert_eq!(code(ro.allows(Access::Read(7))), None);
        assert_eq!(code(ro.allows(Access::ReadAll)), None);
        assert_eq!(code(ro.allows(access_of(&create))), denied);
        assert_eq!(code(ns7.allows(access_of(&write(7)))), None);
        assert_eq!(code(ns7.allows(access_of(&write(8)))), denied);
        assert_eq!(code(ns7.allows(Access::Read(8))), denied);
        assert_eq!(
            code(ns7.allows(access_of(&Request::ListNamespaces { page_token: String::new(), page_size: 0 }))),
            denied
        );
        assert_eq!(code(ns7.allows(access_of(&Request::GetNodeInfo))), None);
        assert_eq!(code(ns7.allows(peer_call)), denied);
        assert_eq!(code(ops.allows(access_of(&create))), None);
        assert_eq!(code(ops.allows(access_of(&write(7)))), denied);
    }

    #[test]
    fn t04_credential_follows_the_table_generation() {
        let state = AuthState::new(Arc::new(AuthTable::default()));
        let mut none = Credential::new(None, &state);
        let mut old = Credential::new(Some("old-secret-0123456789"), &state);
        assert!(none.check(&state, Access::Write(1)).unwrap().is_none(), "auth off: all pass");
        state.replace(Arc::new(AuthTable::new(&[TokenSpec::full("old", "old-secret-0123456789")])));
        assert_eq!(none.check(&state, Access::Any).unwrap_err().code, StatusCode::Unauthenticated);
        assert_eq!(old.check(&state, Access::Write(1)).unwrap().unwrap().id.as_ref(), "old");
        state.replace(Arc::new(AuthTable::new(&[TokenSpec::full("new", "new-secret-0123456789")])));
        let refused = old.check(&state, Access::Any).unwrap_err();
        assert_eq!(refused.code, StatusCode::Unauthenticated);
        assert_eq!(refused.message, "unknown credential");
        let mut new = Credential::new(Some("new-secret-0123456789"), &state);
        assert!(new.check(&state, Access::Peer).is_ok(), "the simple form is a peer token");
    }
}
