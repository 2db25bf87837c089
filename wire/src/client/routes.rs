//! Leader routing (issue 14 item 3, D33): a `Client` connected to one node of a cluster learns,
//! per namespace, which node leads its group, from the `leader_hint` a node attaches when it
//! forwarded a request (or put in a `NotLeader`/`Unavailable` status), and then sends that
//! namespace's leader-only requests (writes, linearizable reads) to the leader over a side
//! connection of its own, saving the forwarding hop. Everything else stays on the connection the
//! client was made with. A side connection that fails, or a leader that turns out stale, is
//! forgotten; the next forwarded answer teaches the new leader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Client, ClientOptions};
use crate::error::ClientError;
use crate::messages::StatusCode;

/// How long a failed side connection to a node blocks new attempts to it.
const CONNECT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A leader this client learned: its node id and the address it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRoute {
    pub node_id: u64,
    pub address: String,
}

#[derive(Default)]
struct Table {
    /// Namespace → its group's leader, when that is not the node of the home connection.
    leaders: HashMap<i64, LeaderRoute>,
    /// Open side connections by leader address.
    clients: HashMap<String, Client>,
    /// Addresses being connected, or whose last attempt failed, with when that was.
    attempts: HashMap<String, (bool, Instant)>,
}

/// The routing state of one home connection, shared by its clones.
pub(super) struct Routes {
    /// The home connection's node (its address as the client dialled it).
    home: SocketAddr,
    /// Options for side connections: the home connection's, without routing of their own.
    options: ClientOptions,
    table: Mutex<Table>,
    /// Calls sent over side connections (for tests and tools).
    routed: AtomicU64,
}

impl Routes {
    pub fn new(home: SocketAddr, options: &ClientOptions) -> Routes {
        Routes {
            home,
            options: ClientOptions { follow_leaders: false, ..options.clone() },
            table: Mutex::new(Table::default()),
            routed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every operation is a few map calls that leave the table consistent.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The side connection to `namespace_id`'s learned leader, if one is open.
    pub fn client_for(&self, namespace_id: i64) -> Option<(Client, LeaderRoute)> {
        let table = self.lock();
        let route = table.leaders.get(&namespace_id)?;
        let client = table.clients.get(&route.address)?;
        client.closed_reason().is_none().then(|| (client.clone(), route.clone()))
    }

    pub fn leader_of(&self, namespace_id: i64) -> Option<LeaderRoute> {
        self.lock().leaders.get(&namespace_id).cloned()
    }

    pub fn count_routed(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Records that `hint` leads `namespace_id`'s group, and opens a side connection to it in
    /// the background when there is none (the calls meanwhile go on being forwarded).
    pub fn learn(self: &Arc<Self>, namespace_id: i64, hint: (u64, String)) {
        let (node_id, address) = hint;
        let is_home = address.parse::<SocketAddr>().is_ok_and(|a| a == self.home);
        let mut table = self.lock();
        if is_home {
            table.leaders.remove(&namespace_id);
            return;
        }
        table.leaders.insert(namespace_id, LeaderRoute { node_id, address: address.clone() });
        let open = table.clients.get(&address).is_some_and(|c| c.closed_reason().is_none());
        let busy = table
            .attempts
            .get(&address)
            .is_some_and(|(running, at)| *running || at.elapsed() < CONNECT_RETRY_AFTER);
        if open || busy {
            return;
        }
        table.clients.remove(&address);
        table.attempts.insert(address.clone(), (true, Instant::now()));
        drop(table);
        let routes = Arc::clone(self);
        tokio::spawn(async move {
            let connected = Client::connect(address.as_str(), routes.options.clone()).await;
            let mut table = routes.lock();
            match connected {
                Ok(client) => {
                    table.attempts.remove(&address);
                    table.clients.insert(address, client);
                }
                Err(_) => {
                    table.attempts.insert(address, (false, Instant::now()));
                }
            }
        });
    }

    /// After a call on the side connection to `route` failed with `error`: forgets the route
    /// when the connection is gone or the node no longer leads (a fresh hint replaces it).
    pub fn on_side_error(self: &Arc<Self>, namespace_id: i64, route: &LeaderRoute, error: &ClientError) {
        let stale = match error {
            ClientError::Status { code, .. } => {
                matches!(code, StatusCode::NotLeader | StatusCode::Unavailable)
            }
            other => other.is_connection_lost(),
        };
        if stale {
            let mut table = self.lock();
            if table.leaders.get(&namespace_id) == Some(route) {
                table.leaders.remove(&namespace_id);
            }
        }
    }
}
