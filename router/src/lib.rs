//! The per-node request front end (SPEC §8.1): the node's one listening socket, accepted from
//! on every core, frame decoding and the Hello handshake, namespace → group → core resolution,
//! dispatch to the owning core over its bounded flume inbox, and response fan-in per connection.

pub mod admission;
pub mod auth;
pub mod connection;
pub mod constants;
pub mod dispatch;
pub mod error;
pub mod handoff;
pub mod listen_socket;
pub mod listener;
pub mod observe;
pub mod placement;
pub mod route;
pub mod streams;
pub mod throttle;
pub mod tls_accept;

pub use error::ListenError;
pub use listen_socket::ListenSocket;
pub use listener::{serve, ListenerControl, RouterContext, RouterSettings};
