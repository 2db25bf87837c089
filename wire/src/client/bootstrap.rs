//! How a client finds the cluster (SPEC §10.3 "clients bootstrap the same way", D76): the
//! configured addresses in their order, then the nodes of a local cache of `GetSystemState`,
//! keyed by the registry's `version`. Once connected, the client asks for the registry only if
//! it is newer than the cached version (`if_version_greater_than`), and rewrites the cache with
//! the nodes it lists, so a client whose configured nodes are all gone still reaches the nodes
//! that joined since. The cache is JSON: `{"version": N, "cached_at": unix_secs, "nodes":
//! ["ip:port", …]}`, written whole through a temporary file and a rename; a cache that cannot be
//! read or written is ignored (it only ever adds candidates). The client falls back on every
//! candidate when its node is gone (`ClientOptions::fallback_addrs`, `Client::reconnect`, D78).

use super::{Client, ClientOptions};
use crate::error::ClientError;
use crate::messages::{Request, Response, SystemNode};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCache {
    /// `_system`'s version (its applied index) the nodes were listed at.
    pub version: u64,
    pub cached_at: u64,
    pub nodes: Vec<String>,
}

impl NodeCache {
    /// The cache at `path`; `None` when missing or not this JSON.
    pub fn read(path: &Path) -> Option<NodeCache> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

/// Where to connect, in order: the configured addresses, then the cached nodes not among them.
pub fn candidates(configured: &[String], cache: Option<&NodeCache>) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for addr in configured.iter().chain(cache.map(|c| c.nodes.as_slice()).unwrap_or_default()) {
        if !addr.is_empty() && !all.contains(addr) {
            all.push(addr.clone());
        }
    }
    all
}

/// The nodes a connection falls back to: those given, then the candidates not among them.
fn fallbacks(given: &[String], candidates: &[String]) -> Vec<String> {
    let mut all = given.to_vec();
    all.extend(candidates.iter().filter(|c| !given.contains(c)).cloned());
    all
}

/// Each node's `ip:port` (its first address).
pub fn node_addrs(nodes: &[SystemNode]) -> Vec<String> {
    let mut addrs: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let ip = n.addresses.first()?;
            Some(if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]:{}", n.port)
            } else {
                format!("{ip}:{}", n.port)
            })
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

impl Client {
    /// Connects to the first candidate that answers (the configured addresses, then the nodes of
    /// the cache at `cache_path`), then refreshes that cache if the registry is newer than it.
    /// Fails with the last candidate's error when none answers.
    pub async fn connect_any(
        configured: &[String],
        cache_path: Option<&Path>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let cache = cache_path.and_then(NodeCache::read);
        let mut last_error = None;
        let all = candidates(configured, cache.as_ref());
        let options = ClientOptions { fallback_addrs: fallbacks(&options.fallback_addrs, &all), ..options };
        for addr in all {
            match Client::connect(addr.as_str(), options.clone()).await {
                Ok(client) => {
                    if let Some(path) = cache_path {
                        client.refresh_node_cache(path, cache.as_ref().map_or(0, |c| c.version)).await;
                    }
                    return Ok(client);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| ClientError::Closed { reason: "no address to connect to".to_string() }))
    }

    /// Rewrites the cache at `path` when the registry is newer than `version`. Best effort.
    pub async fn refresh_node_cache(&self, path: &Path, version: u64) {
        let request = Request::GetSystemState { if_version_greater_than: version };
        let Ok(Response::GetSystemState { version: newer, nodes, .. }) = self.call(request).await else {
            return;
        };
        if newer <= version || nodes.is_empty() {
            return;
        }
        let cached_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = NodeCache { version: newer, cached_at, nodes: node_addrs(&nodes) }.write(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::NodeCapabilities;

    #[test]
    fn t01_configured_first_then_cached_without_duplicates() {
        let cache =
            NodeCache { version: 9, cached_at: 1, nodes: vec!["10.0.0.2:1".into(), "10.0.0.3:1".into()] };
        let configured = vec!["10.0.0.2:1".to_string(), "10.0.0.1:1".into()];
        assert_eq!(candidates(&configured, Some(&cache)), vec!["10.0.0.2:1", "10.0.0.1:1", "10.0.0.3:1"]);
        assert_eq!(candidates(&[], Some(&cache)), vec!["10.0.0.2:1", "10.0.0.3:1"]);
        assert_eq!(candidates(&configured, None), vec!["10.0.0.2:1", "10.0.0.1:1"]);
    }

    #[test]
    fn t02_cache_round_trip_and_node_addresses() {
        let dir = std::env::temp_dir().join(format!("ledger-node-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("nodes.json");
        assert_eq!(NodeCache::read(&path), None);
        let node = |ip: &str, port| SystemNode {
            node_id: 1,
            addresses: vec![ip.to_string()],
            port,
            capabilities: NodeCapabilities { can_lead: true, max_vaults: 0, cores: 1 },
            last_heartbeat: Default::default(),
        };
        let addrs = node_addrs(&[node("10.0.0.2", 7), node("fd00::1", 7), node("10.0.0.2", 7)]);
        assert_eq!(addrs, vec!["10.0.0.2:7", "[fd00::1]:7"]);
        let cache = NodeCache { version: 4, cached_at: 5, nodes: addrs };
        cache.write(&path).expect("write");
        assert_eq!(NodeCache::read(&path), Some(cache));
        std::fs::write(&path, b"junk").expect("junk");
        assert_eq!(NodeCache::read(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
