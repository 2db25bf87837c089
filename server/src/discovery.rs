//! Where a bootstrapping or joining node looks for the cluster (SPEC §10.3, D71): the static
//! `peers`, then the peer cache's entries younger than `discovery_cache_ttl_secs`, then the
//! A/AAAA addresses of `discovery_domain` with this node's listen port; older cache entries only
//! when nothing else is found. Candidates are de-duplicated and shuffled, and worked out again at
//! every round, so a cache or a DNS record that changes meanwhile is seen. A member that answers
//! a joining node is asked `GetPeers`, and what it lists is merged into the cache.

use crate::config::Config;
use ledger_shard::admin::peer_cache;
use rand::seq::SliceRandom;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The discovery sources of one node (a copy of the configuration's, for threads).
#[derive(Debug, Clone)]
pub struct Discovery {
    pub peers: Vec<String>,
    pub cache_path: PathBuf,
    pub cache_ttl: Duration,
    pub domain: Option<String>,
    /// The port DNS names are combined with: this node's listen port.
    pub port: u16,
}

impl Discovery {
    pub fn from_config(config: &Config) -> Discovery {
        let port = config.listen_addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Discovery {
            peers: config.peers.clone(),
            cache_path: config.discovery_cache_path.clone(),
            cache_ttl: Duration::from_secs(config.discovery_cache_ttl_secs),
            domain: config.discovery_domain.clone(),
            port,
        }
    }

    /// This round's candidates, in SPEC §10.3's order of sources, then shuffled.
    pub fn candidates(&self) -> Vec<String> {
        let (fresh, stale) = match peer_cache::read(&self.cache_path) {
            Some(file) => {
                let addrs: Vec<String> = file.peers.into_iter().map(|p| p.addr).collect();
                let age = peer_cache::unix_now().saturating_sub(file.cached_at);
                if age <= self.cache_ttl.as_secs() {
                    (addrs, Vec::new())
                } else {
                    (Vec::new(), addrs)
                }
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut all = self.peers.clone();
        all.extend(fresh);
        if let Some(domain) = &self.domain {
            all.extend(resolve(domain, self.port));
        }
        if all.is_empty() {
            all = stale;
        }
        all.sort();
        all.dedup();
        all.shuffle(&mut rand::thread_rng());
        all
    }

    /// Merges what a member listed (`GetPeers`) into the cache, keeping the fresh entries.
    pub fn remember(&self, listed: &[ledger_wire::messages::PeerInfo]) {
        let mut addrs: Vec<String> = match peer_cache::read(&self.cache_path) {
            Some(file)
                if peer_cache::unix_now().saturating_sub(file.cached_at) <= self.cache_ttl.as_secs() =>
            {
                file.peers.into_iter().map(|p| p.addr).collect()
            }
            _ => Vec::new(),
        };
        for peer in listed {
            for ip in &peer.addresses {
                if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
                    if peer_cache::is_private(ip) {
                        addrs.push(SocketAddr::new(ip, peer.port).to_string());
                    }
                }
            }
        }
        if let Err(e) = peer_cache::write(&self.cache_path, &addrs, peer_cache::unix_now()) {
            ledger_shard::event!(warn, "peer_cache_not_written", path = %self.cache_path.display(), error = %e);
        }
    }
}

/// `domain`'s addresses with `port` (none when it does not resolve).
pub fn resolve(domain: &str, port: u16) -> Vec<String> {
    match (domain, port).to_socket_addrs() {
        Ok(addrs) => addrs.map(|a| a.to_string()).collect(),
        Err(e) => {
            ledger_shard::event!(warn, "discovery_dns_failed", domain = %domain, error = %e);
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(dir: &std::path::Path, peers: &[&str], domain: Option<&str>) -> Discovery {
        Discovery {
            peers: peers.iter().map(|p| p.to_string()).collect(),
            cache_path: dir.join("peers.cache"),
            cache_ttl: Duration::from_secs(3600),
            domain: domain.map(String::from),
            port: 7000,
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Static peers and fresh cache entries together, without duplicates; stale entries only
    /// when nothing else is found.
    #[test]
    fn t01_peers_then_fresh_cache_stale_only_as_a_last_resort() {
        let dir = tempfile::tempdir().expect("dir");
        let d = discovery(dir.path(), &["10.0.0.1:1"], None);
        assert_eq!(d.candidates(), vec!["10.0.0.1:1"]);
        peer_cache::write(&d.cache_path, &["10.0.0.2:1".into(), "10.0.0.1:1".into()], peer_cache::unix_now())
            .expect("write");
        assert_eq!(sorted(d.candidates()), vec!["10.0.0.1:1", "10.0.0.2:1"]);
        peer_cache::write(&d.cache_path, &["10.0.0.3:1".into()], peer_cache::unix_now() - 7200)
            .expect("write");
        assert_eq!(d.candidates(), vec!["10.0.0.1:1"], "a stale entry is not tried beside a peer");
        let alone = discovery(dir.path(), &[], None);
        assert_eq!(alone.candidates(), vec!["10.0.0.3:1"], "nothing else: the stale entry is tried");
    }

    /// A DNS name gives its addresses with the listen port.
    #[test]
    fn t02_dns_name_with_the_listen_port() {
        let dir = tempfile::tempdir().expect("dir");
        let d = discovery(dir.path(), &[], Some("localhost"));
        let found = d.candidates();
        assert!(found.iter().any(|a| a == "127.0.0.1:7000" || a == "[::1]:7000"), "{found:?}");
        assert!(resolve("name.invalid", 7000).is_empty());
    }

    /// `GetPeers`' private addresses join the cache; public ones never do.
    #[test]
    fn t03_listed_peers_are_remembered() {
        let dir = tempfile::tempdir().expect("dir");
        let d = discovery(dir.path(), &[], None);
        let peer = |ip: &str, port| ledger_wire::messages::PeerInfo {
            node_id: 1,
            addresses: vec![ip.to_string()],
            port,
            last_seen: Default::default(),
        };
        d.remember(&[peer("10.0.0.5", 50051), peer("8.8.8.8", 50051)]);
        assert_eq!(d.candidates(), vec!["10.0.0.5:50051"]);
        d.remember(&[peer("10.0.0.6", 50051)]);
        assert_eq!(sorted(d.candidates()), vec!["10.0.0.5:50051", "10.0.0.6:50051"]);
    }
}
