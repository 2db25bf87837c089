//! The secret this node presents to its peers (SPEC §4.1, D42): the peer token of `auth_tokens`
//! with the smallest id, or none when authentication is off. Shared by every core's pool and
//! replaced on SIGHUP; read only when a peer connection is opened.

use std::sync::RwLock;

#[derive(Default)]
pub struct PeerCredential(RwLock<Option<String>>);

impl PeerCredential {
    pub fn new(secret: Option<String>) -> PeerCredential {
        PeerCredential(RwLock::new(secret))
    }

    pub fn get(&self) -> Option<String> {
        self.0.read().map(|secret| secret.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn set(&self, secret: Option<String>) {
        match self.0.write() {
            Ok(mut current) => *current = secret,
            Err(poisoned) => *poisoned.into_inner() = secret,
        }
    }
}

impl std::fmt::Debug for PeerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|secret| secret.is_some()).unwrap_or(false);
        f.write_str(if set { "PeerCredential(<redacted>)" } else { "PeerCredential(None)" })
    }
}
