//! The native protocol: frame header, message types, codec and the client library (SPEC §4).

pub mod messages;
