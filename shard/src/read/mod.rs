//! Reads served from a group's applied state: `reads` (current rows and listings), `history`
//! (state at past heights), `proof_reads` (inclusion and chain proofs), `page_token` (MAC'd
//! continuation tokens) and `watch` (`WatchBlocks` streams).

pub mod history;
pub mod page_token;
pub mod proof_reads;
pub mod reads;
pub mod watch;
