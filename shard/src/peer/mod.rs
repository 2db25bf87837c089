//! The node-to-node side of a core (SPEC §5.6, §8.1 step 3, §10.9): the outbound connection pool
//! (`pool`), openraft ↔ wire conversions (`convert`), the handling of peer calls that reach this
//! core (`serve`), and forwarding a request this node cannot answer to the node that can
//! (`forward`, and for a group this node is not a member of, `outside`, with its block streams
//! relayed from a member, `watch_relay`), and the archive back-fill after a snapshot install
//! (`backfill`).

pub mod backfill;
pub mod convert;
pub mod credential;
pub mod forward;
pub mod outside;
pub mod pool;
pub mod serve;
pub mod watch_relay;
