//! The native protocol: frame header, message types, codec and the client library (SPEC §4).
//!
//! `frame` and `codec` are runtime-agnostic (the server uses them from glommio with
//! `default-features = false`); `client` needs tokio and is behind the default `client` feature.

pub mod codec;
pub mod constants;
pub mod error;
pub mod frame;
pub mod messages;
pub mod peer;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(test)]
mod proptests;

#[cfg(feature = "client")]
pub mod client;

pub use codec::{
    archived_len, decode_frame, deserialize, encode_frame, encode_frame_limited, Frame, FrameBudget,
    FrameReader,
};
pub use error::{CodecError, FrameError};
pub use frame::{FrameHeader, FrameKind};

#[cfg(feature = "client")]
pub use client::{CallOptions, Client, ClientOptions, ClientTls, RetryPolicy, WriteOutcome, WriteSession};
#[cfg(feature = "client")]
pub use error::ClientError;
