//! The `ledger-server` process: configuration, data directory, placement, one glommio executor
//! per core running its shard and router, the metrics/health endpoint, and signal handling.
//! Wiring only: the request path lives in `ledger-router` and `ledger-shard`.

pub mod auth_config;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod discovery;
pub mod logging;
pub mod metrics_http;
pub mod metrics_text;
pub mod node;
pub mod node_alloc;
mod node_placement;
pub mod tls;
