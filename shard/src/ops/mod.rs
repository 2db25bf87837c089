//! The operator's requests (SPEC §5.3 items 25, 29–30, 32–36; §9.8–9.9; §11.2): what
//! `ledger-admin` asks of a running cluster beyond the registry. `cluster` reports Raft status
//! and replication lag, `leadership` hands a group's leadership to another voter, and
//! `vault_repair` tracks scope health and rebuilds a Diverged scope, after `archive_repair` has
//! fetched again the archived blocks it needs that are missing or damaged here.

pub mod archive_repair;
pub mod balance;
pub mod cluster;
pub mod leadership;
pub mod vault_repair;
