//! Node-level work that is not one group's: `requests` (registry and node requests, served by
//! core 0), `registry` (the `_system` records and their keys) and `internal` (calls between cores
//! that are not client requests), `membership` (join and leave, SPEC §10.6), `replicas` (which
//! nodes each data group has, SPEC §10.5).

pub mod internal;
pub mod learner_routes;
pub mod membership;
pub mod node_loss;
pub mod peer_cache;
pub mod registry;
pub mod replicas;
pub mod requests;
pub mod system_voters;
