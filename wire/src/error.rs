//! The errors of the wire crate, one thiserror enum per concern: framing (`FrameError`), payload
//! encoding/validation (`CodecError`) and the client library (`ClientError`). Framing and codec
//! errors know which `GoawayCode` a receiver must send before closing (SPEC §4.2–§4.3).

use crate::messages::GoawayCode;
#[cfg(feature = "client")]
use crate::messages::{ErrorDetail, Status, StatusCode};

/// A frame header or frame checksum is unacceptable. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found}")]
    UnsupportedVersion { found: u16 },
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    #[error("frame flags must be 0 in v1, got {found:#04x}")]
    BadFlags { found: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("frame checksum mismatch")]
    Corrupt,
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
}

impl FrameError {
    /// The Goaway code a receiver sends for this error before closing (SPEC §4.2).
    pub fn goaway_code(&self) -> GoawayCode {
        match self {
            FrameError::BadMagic { .. } => GoawayCode::ProtocolError,
            FrameError::UnsupportedVersion { .. } => GoawayCode::UnsupportedVersion,
            FrameError::UnknownKind { .. } => GoawayCode::ProtocolError,
            FrameError::BadFlags { .. } => GoawayCode::ProtocolError,
            FrameError::TooLarge { .. } => GoawayCode::FrameTooLarge,
            FrameError::Corrupt => GoawayCode::Corrupt,
            FrameError::Truncated { .. } => GoawayCode::ProtocolError,
        }
    }
}

/// A payload could not be encoded, or a received payload is not a valid archive of the expected
/// root type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// rkyv validation (bytecheck) rejected the payload.
    #[error("invalid {kind} payload: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("unexpected frame kind {found}, expected {expected}")]
    UnexpectedKind { expected: &'static str, found: &'static str },
    #[error("cannot encode payload: {message}")]
    Encode { message: String },
    #[error("payload of {len} bytes does not fit a frame (max {max})")]
    EncodeTooLarge { len: usize, max: u32 },
    #[error("cannot deserialize payload: {message}")]
    Deserialize { message: String },
}

impl CodecError {
    /// The Goaway code a receiver sends for this error before closing.
    pub fn goaway_code(&self) -> GoawayCode {
        match self {
            CodecError::Frame(e) => e.goaway_code(),
            CodecError::EncodeTooLarge { .. } => GoawayCode::FrameTooLarge,
            CodecError::Invalid { .. }
            | CodecError::UnexpectedKind { .. }
            | CodecError::Encode { .. }
            | CodecError::Deserialize { .. } => GoawayCode::ProtocolError,
        }
    }
}

/// Why a client call failed.
#[cfg(feature = "client")]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered the request with a transport-tier `Status` (SPEC §4.5).
    #[error("{code:?}: {message}")]
    Status { code: StatusCode, message: String, detail: Option<Box<ErrorDetail>> },
    /// The server sent `Goaway` and closed the connection.
    #[error("server sent goaway {code:?}: {message}")]
    Goaway { code: GoawayCode, message: String },
    /// A socket error; the connection is dead.
    #[error("i/o error: {0}")]
    Io(#[source] std::sync::Arc<std::io::Error>),
    /// The connection was closed (by the peer, by `Client::close`, or after an earlier error).
    #[error("connection closed: {reason}")]
    Closed { reason: String },
    /// The peer broke the protocol, or a message could not be encoded/decoded.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request alone encodes to more than the server's `max_frame_bytes` (from `HelloAck`),
    /// so it was never sent; the connection stays usable. Split it (fewer operations or keys).
    #[error("request of {len} bytes exceeds the server's max_frame_bytes of {max}; split it")]
    RequestTooLarge { len: usize, max: u32 },
    /// The call's deadline passed before a response arrived (the request may still take effect).
    #[error("deadline exceeded after {elapsed_ms} ms")]
    Timeout { elapsed_ms: u64 },
    /// The response arrived but its proof does not verify (SPEC §7.7): do not trust its content.
    #[error("proof invalid: {0}")]
    ProofInvalid(#[source] ledger_core::verify::VerifyError),
}

#[cfg(feature = "client")]
impl ClientError {
    /// Whether SPEC §6.4 lets the client retry the identical request (with the same sequence),
    /// after a backoff. `ResourceExhausted` is included: the server refuses such a request before
    /// it takes effect (a full queue, the concurrency cap), so only waiting helps.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { code, .. } => matches!(
                code,
                // NotLeader: the node asked could not find the leader in time; nothing was
                // proposed, and the next attempt finds the new one (SPEC §8.1, §10.8).
                StatusCode::Unavailable
                    | StatusCode::DeadlineExceeded
                    | StatusCode::ResourceExhausted
                    | StatusCode::NotLeader
            ),
            ClientError::Goaway { code, .. } => matches!(code, GoawayCode::Shutdown | GoawayCode::Idle),
            ClientError::Io(_) | ClientError::Closed { .. } | ClientError::Timeout { .. } => true,
            ClientError::Protocol(_) | ClientError::ProofInvalid(_) | ClientError::RequestTooLarge { .. } => {
                false
            }
        }
    }

    /// The server's hint of how long to wait before a retry can be admitted (a rate-limited
    /// write, SPEC §8.9), if it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Status { detail, .. } => match detail.as_deref() {
                Some(ErrorDetail::RetryAfter { ms }) => {
                    Some(std::time::Duration::from_millis(u64::from(*ms)))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the connection this error came from is unusable and must be replaced.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, ClientError::Goaway { .. } | ClientError::Io(_) | ClientError::Closed { .. })
    }
}

#[cfg(feature = "client")]
impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status {
            code: status.code,
            message: status.message,
            detail: status.detail.map(Box::new),
        }
    }
}

#[cfg(feature = "client")]
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(std::sync::Arc::new(e))
    }
}

#[cfg(feature = "client")]
impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

#[cfg(feature = "client")]
impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}
