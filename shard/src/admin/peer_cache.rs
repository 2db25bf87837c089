//! Discovery's peer cache and `GetPeers` (SPEC §10.3, §5.5 item 38, D71). A member keeps
//! `discovery_cache_path` (default `{data_dir}/peers.cache`) equal to the other members of
//! `_system` it knows, so that a node started later with no reachable `--peers` (or none) still
//! finds the cluster: bootstrap and join mode try the static peers, then the cache's entries
//! (older than `discovery_cache_ttl_secs` only if nothing else is found), then the DNS names of
//! `discovery_domain` (server/src/discovery.rs). The file is the SPEC's JSON:
//! `{"cached_at": unix_secs, "peers": [{"addr": "ip:port"}]}`, replaced whole (temporary file,
//! fsync, rename).
//!
//! Beside the members, the cache keeps the peers this node heard of by gossip (D76): an
//! `AnnouncePeer` from another node (`_system`'s leader announces every member that joins to
//! the others, and all members when it takes office), and every `PEER_REFRESH` (5 minutes) the `GetPeers` answers of up to three known
//! peers picked at random. A gossiped peer not heard of again for an hour is pruned.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge.
#![allow(clippy::result_large_err)]

use crate::round::group::Group;
use crate::shard::Shard;
use ledger_core::types::{GroupId, Timestamp};
use ledger_wire::messages::{PeerInfo, Request, Response, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
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

/// Gossiped peers kept at most (the oldest goes first).
const GOSSIP_MAX: usize = 1024;
/// SPEC §10.3: a gossiped peer unseen for longer is pruned.
pub const GOSSIP_MAX_AGE_SECS: u64 = 3600;

/// One gossiped address: the node it belongs to and when it was last seen (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardPeer {
    pub node_id: u64,
    pub last_seen: u64,
}

/// The peers this node heard of from others (`AnnouncePeer`, other nodes' `GetPeers`), by
/// `ip:port`. Lives on core 0.
#[derive(Debug, Default)]
pub struct Gossip {
    peers: BTreeMap<String, HeardPeer>,
}

impl Gossip {
    /// Merges `peer` as of `now` (unix seconds). Refused whole (false) when it names no address,
    /// no port, or an address that is not a private IP (SPEC §5.5). A `last_seen` of zero (the
    /// sender does not know) or in the future counts as now.
    pub fn merge(&mut self, peer: &PeerInfo, now: u64) -> bool {
        let ips: Option<Vec<IpAddr>> = peer.addresses.iter().map(|a| a.parse::<IpAddr>().ok()).collect();
        let Some(ips) = ips.filter(|ips| !ips.is_empty() && ips.iter().all(|ip| is_private(*ip))) else {
            return false;
        };
        if peer.port == 0 {
            return false;
        }
        let said = u64::try_from(peer.last_seen.secs).unwrap_or(0);
        let seen = if said == 0 || said > now { now } else { said };
        for ip in ips {
            let addr = SocketAddr::new(ip, peer.port).to_string();
            if !self.peers.contains_key(&addr) && self.peers.len() >= GOSSIP_MAX {
                let oldest = self.peers.iter().min_by_key(|(_, p)| p.last_seen).map(|(a, _)| a.clone());
                if let Some(oldest) = oldest {
                    self.peers.remove(&oldest);
                }
            }
            let entry =
                self.peers.entry(addr).or_insert(HeardPeer { node_id: peer.node_id, last_seen: seen });
            entry.node_id = peer.node_id;
            entry.last_seen = entry.last_seen.max(seen);
        }
        true
    }

    /// Drops the peers unseen for longer than `max_age` seconds; returns their addresses.
    pub fn prune(&mut self, now: u64, max_age: u64) -> Vec<String> {
        let old: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_seen) > max_age)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in &old {
            self.peers.remove(addr);
        }
        old
    }

    pub fn peers(&self) -> impl Iterator<Item = (&String, &HeardPeer)> {
        self.peers.iter()
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

/// Keeps the cache equal to the other members of `_system` and the gossiped peers (checked
/// every `period`, written when they changed); on `_system`'s leader, announces each member that
/// joins to the others; every `PEER_REFRESH`, merges other nodes' `GetPeers`. Runs on core 0 of
/// a cluster node.
pub async fn keep_cache(shard: Weak<Shard>, path: PathBuf, period: Duration) {
    let mut written: Option<Vec<String>> = read(&path).map(|f| f.peers.into_iter().map(|p| p.addr).collect());
    let mut announced: Option<BTreeSet<(u64, String)>> = None;
    let mut next_refresh = Instant::now() + crate::constants::PEER_REFRESH;
    loop {
        glommio::timer::sleep(period).await;
        let addrs = {
            let Some(shard) = shard.upgrade() else { return };
            if shard.is_closing() {
                return;
            }
            let Some(group) = shard.group(GroupId(0)) else { continue };
            let members = other_members(&shard, &group);
            if group.is_leader() {
                announce_joins(&shard, &members, &mut announced);
            } else {
                announced = None;
            }
            if Instant::now() >= next_refresh {
                next_refresh = Instant::now() + crate::constants::PEER_REFRESH;
                let shard = shard.clone();
                glommio::spawn_local(async move { refresh(&shard).await }).detach();
            }
            let now = unix_now();
            for addr in shard.peer_gossip.borrow_mut().prune(now, GOSSIP_MAX_AGE_SECS) {
                crate::event!(info, "peer_pruned", addr = %addr);
            }
            let own = shard.config.advertise_addr.clone();
            let gossip = shard.peer_gossip.borrow();
            let mut addrs: Vec<String> = members
                .into_iter()
                .map(|(_, a)| a)
                .chain(gossip.peers().map(|(a, _)| a.clone()))
                .filter(|a| *a != own)
                .collect();
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

/// SPEC §10.3 "on `_system` node-table changes, broadcast `AnnouncePeer`": `_system`'s leader
/// tells every other member about each member it had not seen at its previous look, and about
/// every member at its first look (a change a previous leader made may not have been announced).
fn announce_joins(shard: &Rc<Shard>, members: &[(u64, String)], seen: &mut Option<BTreeSet<(u64, String)>>) {
    let now: BTreeSet<(u64, String)> = members.iter().cloned().collect();
    let new: Vec<(u64, String)> = match seen {
        Some(before) => now.difference(before).cloned().collect(),
        None => now.iter().cloned().collect(),
    };
    *seen = Some(now);
    for (node_id, address) in new {
        let Some(peer) = peer_info(node_id, &address, unix_now()) else { continue };
        for (target, target_addr) in members.iter().filter(|(id, _)| *id != node_id).cloned() {
            let (shard, peer) = (shard.clone(), peer.clone());
            glommio::spawn_local(async move {
                let request = Request::AnnouncePeer { peer };
                let answer = shard.peers.call(target, &target_addr, request, ANNOUNCE_TIMEOUT).await;
                if !matches!(answer, Ok(Ok(Response::AnnouncePeer { accepted: true }))) {
                    crate::event!(debug, "peer_not_announced", node = node_id, to = target, answer = ?answer);
                }
            })
            .detach();
        }
        crate::event!(info, "peer_announcing", node = node_id, addr = %address);
    }
}

const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(3);

/// `address` (`ip:port`) as a `PeerInfo` seen at `now`; `None` unless the IP is private.
fn peer_info(node_id: u64, address: &str, now: u64) -> Option<PeerInfo> {
    let socket = address.parse::<SocketAddr>().ok().filter(|s| is_private(s.ip()))?;
    Some(PeerInfo {
        node_id,
        addresses: vec![socket.ip().to_string()],
        port: socket.port(),
        last_seen: Timestamp { secs: now as i64, nanos: 0 },
    })
}

/// SPEC §10.3's periodic refresh: asks up to `REFRESH_FANOUT` known peers (members and gossiped
/// ones), picked at random, for their `GetPeers` and merges what they list.
async fn refresh(shard: &Rc<Shard>) {
    let mut known: Vec<(u64, String)> = match shard.group(GroupId(0)) {
        Some(group) => other_members(shard, &group),
        None => Vec::new(),
    };
    known.extend(shard.peer_gossip.borrow().peers().map(|(a, p)| (p.node_id, a.clone())));
    known.retain(|(id, _)| *id != shard.config.node_id);
    known.sort();
    known.dedup();
    let picked: Vec<(u64, String)> = {
        use rand::seq::SliceRandom;
        known.choose_multiple(&mut rand::thread_rng(), REFRESH_FANOUT).cloned().collect()
    };
    let mut merged = 0usize;
    for (node, addr) in picked {
        let request = Request::GetPeers { max_peers: 0 };
        match shard.peers.call(node, &addr, request, ANNOUNCE_TIMEOUT).await {
            Ok(Ok(Response::GetPeers { peers, .. })) => {
                let now = unix_now();
                let mut gossip = shard.peer_gossip.borrow_mut();
                merged += peers
                    .iter()
                    .filter(|p| p.node_id != shard.config.node_id && gossip.merge(p, now))
                    .count();
            }
            other => crate::event!(debug, "peer_refresh_failed", node, answer = ?other),
        }
    }
    crate::event!(debug, "peer_cache_refreshed", merged);
}

/// Peers asked at each refresh.
const REFRESH_FANOUT: usize = 3;

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

    fn peer(node_id: u64, addresses: &[&str], port: u16, last_seen: i64) -> PeerInfo {
        PeerInfo {
            node_id,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            port,
            last_seen: Timestamp { secs: last_seen, nanos: 0 },
        }
    }

    #[test]
    fn t03_gossip_takes_private_addresses_only_and_whole() {
        let mut g = Gossip::default();
        assert!(!g.merge(&peer(1, &["8.8.8.8"], 7000, 0), 100), "a public address");
        assert!(!g.merge(&peer(1, &["10.0.0.1", "8.8.8.8"], 7000, 0), 100), "one public address refuses all");
        assert!(!g.merge(&peer(1, &["not-an-ip"], 7000, 0), 100));
        assert!(!g.merge(&peer(1, &[], 7000, 0), 100), "no address");
        assert!(!g.merge(&peer(1, &["10.0.0.1"], 0, 0), 100), "no port");
        assert_eq!(g.peers().count(), 0);
        assert!(g.merge(&peer(1, &["10.0.0.1", "fd00::1"], 7000, 0), 100));
        let listed: Vec<(String, HeardPeer)> = g.peers().map(|(a, p)| (a.clone(), *p)).collect();
        assert_eq!(
            listed,
            vec![
                ("10.0.0.1:7000".to_string(), HeardPeer { node_id: 1, last_seen: 100 }),
                ("[fd00::1]:7000".to_string(), HeardPeer { node_id: 1, last_seen: 100 }),
            ]
        );
    }

    #[test]
    fn t04_gossip_keeps_the_latest_sighting_and_prunes_after_an_hour() {
        let mut g = Gossip::default();
        assert!(g.merge(&peer(1, &["10.0.0.1"], 7000, 50), 100));
        assert!(g.merge(&peer(1, &["10.0.0.1"], 7000, 20), 100), "an older sighting changes nothing");
        assert!(g.merge(&peer(2, &["10.0.0.2"], 7000, 9_999), 100), "a future sighting counts as now");
        let seen: Vec<u64> = g.peers().map(|(_, p)| p.last_seen).collect();
        assert_eq!(seen, vec![50, 100]);
        assert_eq!(g.prune(50 + GOSSIP_MAX_AGE_SECS, GOSSIP_MAX_AGE_SECS), Vec::<String>::new());
        assert_eq!(g.prune(51 + GOSSIP_MAX_AGE_SECS, GOSSIP_MAX_AGE_SECS), vec!["10.0.0.1:7000".to_string()]);
        assert_eq!(g.peers().count(), 1);
    }

    #[test]
    fn t05_gossip_stays_bounded_dropping_the_oldest() {
        let mut g = Gossip::default();
        for i in 0..(GOSSIP_MAX as u16 + 10) {
            let ip = format!("10.0.{}.{}", i / 256, i % 256);
            assert!(g.merge(&peer(u64::from(i), &[ip.as_str()], 7000, i64::from(i) + 1), 1_000_000));
        }
        assert_eq!(g.peers().count(), GOSSIP_MAX);
        assert!(!g.peers().any(|(a, _)| a == "10.0.0.0:7000"), "the oldest went first");
    }

    #[test]
    fn t06_announced_peer_info_is_private_only() {
        assert_eq!(peer_info(3, "8.8.8.8:7000", 5), None);
        assert_eq!(peer_info(3, "localhost:7000", 5), None);
        let info = peer_info(3, "10.1.2.3:7000", 5).expect("private");
        assert_eq!((info.addresses, info.port, info.last_seen.secs), (vec!["10.1.2.3".to_string()], 7000, 5));
    }
}
