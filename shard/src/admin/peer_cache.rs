//! Discovery's peer cache and `GetPeers` (SPEC §10.3, §5.5 item 38, D71). A member keeps
//! `discovery_cache_path` (default `{data_dir}/peers.cache`) equal to the other members of
//! `_system` it knows, so that a node started later with no reachable `--peers` (or none) still
//! finds the cluster: bootstrap and join mode try the static peers, then the cache's entries
//! (older than `discovery_cache_ttl_secs` only if nothing else is found), then the DNS names of
//! `discovery_domain` (server/src/discovery.rs). The file is the SPEC's JSON:
//! `{"cached_at": unix_secs, "peers": [{"addr": "ip:port"}]}`, replaced whole (temporary file,
//! fsync, rename).

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::{GroupId, Timestamp};
use ledger_wire::messages::{PeerInfo, Response, Status};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Weak;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFile {
    pub cached_at: u64,
    pub peers: Vec<CachedPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPeer {
    pub addr: String,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The cache at `path`; `None` when it is missing or not the SPEC's JSON.
pub fn read(path: &Path) -> Option<CacheFile> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Replaces the cache at `path` with `addrs` (sorted, without duplicates) as of `cached_at`.
pub fn write(path: &Path, addrs: &[String], cached_at: u64) -> std::io::Result<()> {
    let mut addrs = addrs.to_vec();
    addrs.sort();
    addrs.dedup();
    let file = CacheFile { cached_at, peers: addrs.into_iter().map(|addr| CachedPeer { addr }).collect() };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("cache.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// SPEC §5.5: discovery returns and accepts private addresses only (loopback, RFC 1918,
/// 100.64.0.0/10, link-local, fc00::/7).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The other members of `_system` with their addresses, as this replica knows them.
fn other_members(shard: &Shard, group: &Group) -> Vec<(u64, String)> {
    let metrics = group.raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != shard.config.node_id)
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect()
}

/// Keeps the cache equal to the other members of `_system` (checked every `period`, written
/// when they changed). Runs on core 0 of a cluster node.
pub async fn keep_cache(shard: Weak<Shard>, path: PathBuf, period: Duration) {
    let mut written: Option<Vec<String>> = read(&path).map(|f| f.peers.into_iter().map(|p| p.addr).collect());
    loop {
        glommio::timer::sleep(period).await;
        let addrs = {
            let Some(shard) = shard.upgrade() else { return };
            if shard.is_closing() {
                return;
            }
            let Some(group) = shard.group(GroupId(0)) else { continue };
            let mut addrs: Vec<String> = other_members(&shard, &group).into_iter().map(|(_, a)| a).collect();
            addrs.sort();
            addrs.dedup();
            addrs
        };
        if addrs.is_empty() || written.as_ref() == Some(&addrs) {
            continue;
        }
        let (target, list) = (path.clone(), addrs.clone());
        let result = glommio::executor().spawn_blocking(move || write(&target, &list, unix_now())).await;
        match result {
            Ok(()) => {
                crate::event!(info, "peer_cache_written", path = %path.display(), peers = addrs.len());
                written = Some(addrs);
            }
            Err(e) => crate::event!(warn, "peer_cache_not_written", path = %path.display(), error = %e),
        }
    }
}

/// One member of `_system` as this node sees it, for `GetPeers` and `GetSystemState`.
pub struct MemberSeen {
    pub node_id: u64,
    pub address: String,
    /// The address's IP and port when it is `ip:port` (else `None` and 0).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub voter: bool,
    /// Now for this node; the last answer for the others on `_system`'s leader; the last
    /// contact for the leader on a follower; zero otherwise.
    pub last_seen: Timestamp,
}

/// `_system`'s members (this node included, by id) and `_system`'s applied index here.
pub fn members_seen(shard: &Shard) -> Result<(u64, Vec<MemberSeen>), Status> {
    let group = shard.group(GroupId(0)).ok_or_else(|| Status::unavailable("group 0 is not on this core"))?;
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = |instant: Instant| -> Timestamp {
        let ago = now.saturating_duration_since(instant);
        let when = wall.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        let since = when.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: since.as_secs() as i64, nanos: since.subsec_nanos() }
    };
    let (leader, version, voters) = {
        let metrics = group.raft.metrics();
        let m = metrics.borrow();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        (m.current_leader, m.last_applied.map(|l| l.index).unwrap_or(0), voters)
    };
    let me = shard.config.node_id;
    let mut members = other_members(shard, &group);
    members.push((me, shard.config.advertise_addr.clone()));
    members.sort();
    let data = group.data.borrow();
    let seen = members
        .into_iter()
        .map(|(node_id, address)| {
            let socket = address.parse::<SocketAddr>().ok();
            let last_seen = if node_id == me {
                at(now)
            } else if leader == Some(me) {
                data.contact.last_ack(node_id).map(at).unwrap_or_default()
            } else if leader == Some(node_id) {
                data.contact.heard().map(at).unwrap_or_default()
            } else {
                Timestamp::default()
            };
            MemberSeen {
                node_id,
                ip: socket.map(|s| s.ip()),
                port: socket.map(|s| s.port()).unwrap_or(0),
                voter: voters.contains(&node_id) || voters.is_empty(),
                address,
                last_seen,
            }
        })
        .collect();
    Ok((version, seen))
}

/// `GetPeers` (SPEC §5.5 item 38) on core 0: the members of `_system` (this node included) with
/// a private IP address, at most `max_peers` (0 = all).
pub fn get_peers(shard: &Shard, max_peers: u32) -> Result<Response, Status> {
    let (version, members) = members_seen(shard)?;
    let mut peers: Vec<PeerInfo> = members
        .into_iter()
        .filter_map(|m| {
            let ip = m.ip.filter(|ip| is_private(*ip))?;
            Some(PeerInfo {
                node_id: m.node_id,
                addresses: vec![ip.to_string()],
                port: m.port,
                last_seen: m.last_seen,
            })
        })
        .collect();
    if max_peers > 0 {
        peers.truncate(max_peers as usize);
    }
    Ok(Response::GetPeers { peers, system_version: version })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file is the SPEC's JSON, written whole, sorted and without duplicates.
    #[test]
    fn t01_cache_round_trip_in_the_specs_format() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("peers.cache");
        assert_eq!(read(&path), None);
        let addrs = vec!["10.0.0.2:50051".to_string(), "10.0.0.1:50051".into(), "10.0.0.2:50051".into()];
        write(&path, &addrs, 1_700_000_000).expect("write");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(json["cached_at"], 1_700_000_000u64);
        assert_eq!(json["peers"][0]["addr"], "10.0.0.1:50051");
        assert_eq!(json["peers"].as_array().map(Vec::len), Some(2));
        std::fs::write(&path, b"not json").expect("garble");
        assert_eq!(read(&path), None);
    }

    #[test]
    fn t02_private_addresses_only() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(private.parse().expect("ip")), "{private}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "172.32.0.1", "2001:db8::1"] {
            assert!(!is_private(public.parse().expect("ip")), "{public}");
        }
    }
}
