//! The fixed 16-byte frame header of SPEC §4.2 and the payload checksum. This is the only place
//! that knows the byte layout of a header; everything above it works on `FrameHeader` values.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `b"LDGR"` |
//! | 4 | 2 | protocol version, u16 LE (= 1) |
//! | 6 | 1 | kind (`FrameKind`) |
//! | 7 | 1 | flags (0 in v1) |
//! | 8 | 4 | payload length, u32 LE |
//! | 12 | 4 | first 4 bytes of blake3(payload) |

use crate::constants::{FRAME_HEADER_BYTES, FRAME_MAGIC};
use crate::error::FrameError;
use crate::messages::PROTOCOL_VERSION;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 4;
const KIND_OFFSET: usize = 6;
const FLAGS_OFFSET: usize = 7;
const LEN_OFFSET: usize = 8;
const CHECKSUM_OFFSET: usize = 12;
const CHECKSUM_BYTES: usize = 4;

// The fields tile the header exactly, with no gap and no overlap.
const _: () = assert!(MAGIC_OFFSET + FRAME_MAGIC.len() == VERSION_OFFSET);
const _: () = assert!(VERSION_OFFSET + size_of::<u16>() == KIND_OFFSET);
const _: () = assert!(KIND_OFFSET + size_of::<u8>() == FLAGS_OFFSET);
const _: () = assert!(FLAGS_OFFSET + size_of::<u8>() == LEN_OFFSET);
const _: () = assert!(LEN_OFFSET + size_of::<u32>() == CHECKSUM_OFFSET);
const _: () = assert!(CHECKSUM_OFFSET + CHECKSUM_BYTES == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_HEADER_BYTES == 16);

/// What a frame carries; each kind has exactly one rkyv root type (see `FrameKind::root_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    HelloAck = 2,
    RequestBatch = 3,
    ResponseBatch = 4,
    /// One item of a `WatchBlocks` stream (root type `StreamItem`, SPEC §4.3).
    StreamItem = 5,
    /// The last frame of a stream (root type `StreamEnd`, SPEC §4.3).
    StreamEnd = 6,
    Goaway = 7,
    Ping = 8,
    Pong = 9,
}

impl FrameKind {
    /// Every kind, in wire order.
    pub const ALL: [FrameKind; 9] = [
        FrameKind::Hello,
        FrameKind::HelloAck,
        FrameKind::RequestBatch,
        FrameKind::ResponseBatch,
        FrameKind::StreamItem,
        FrameKind::StreamEnd,
        FrameKind::Goaway,
        FrameKind::Ping,
        FrameKind::Pong,
    ];

    /// The wire byte of this kind.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Parses the wire byte; unknown values are an error that ends the connection.
    pub fn from_u8(byte: u8) -> Result<FrameKind, FrameError> {
        match byte {
            1 => Ok(FrameKind::Hello),
            2 => Ok(FrameKind::HelloAck),
            3 => Ok(FrameKind::RequestBatch),
            4 => Ok(FrameKind::ResponseBatch),
            5 => Ok(FrameKind::StreamItem),
            6 => Ok(FrameKind::StreamEnd),
            7 => Ok(FrameKind::Goaway),
            8 => Ok(FrameKind::Ping),
            9 => Ok(FrameKind::Pong),
            found => Err(FrameError::UnknownKind { found }),
        }
    }

    /// Name of the rkyv root type of this kind's payload (in `messages`).
    pub fn root_type(self) -> &'static str {
        match self {
            // A pong echoes the ping's payload.
            FrameKind::Pong => "Ping",
            kind => kind.name(),
        }
    }

    /// Name of the kind, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "Hello",
            FrameKind::HelloAck => "HelloAck",
            FrameKind::RequestBatch => "RequestBatch",
            FrameKind::ResponseBatch => "ResponseBatch",
            FrameKind::StreamItem => "StreamItem",
            FrameKind::StreamEnd => "StreamEnd",
            FrameKind::Goaway => "Goaway",
            FrameKind::Ping => "Ping",
            FrameKind::Pong => "Pong",
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The first 4 bytes of blake3(payload), as carried at header offset 12.
pub fn payload_checksum(payload: &[u8]) -> [u8; 4] {
    let digest = blake3::hash(payload);
    let mut checksum = [0u8; CHECKSUM_BYTES];
    checksum.copy_from_slice(&digest.as_bytes()[..CHECKSUM_BYTES]);
    checksum
}

/// A parsed frame header. `decode` only returns headers whose magic, version, kind, flags and
/// length are acceptable; the checksum is checked against the payload with `verify_payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub payload_len: u32,
    pub checksum: [u8; 4],
}

impl FrameHeader {
    /// The header of a frame carrying `payload`.
    pub fn for_payload(kind: FrameKind, payload: &[u8]) -> Result<FrameHeader, FrameError> {
        let payload_len = u32::try_from(payload.len())
            .map_err(|_| FrameError::TooLarge { len: u32::MAX, max: u32::MAX })?;
        Ok(FrameHeader { kind, payload_len, checksum: payload_checksum(payload) })
    }

    /// The 16 wire bytes of this header (version 1, flags 0).
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        bytes[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&FRAME_MAGIC);
        bytes[VERSION_OFFSET..KIND_OFFSET].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes[KIND_OFFSET] = self.kind.to_u8();
        bytes[FLAGS_OFFSET] = 0;
        bytes[LEN_OFFSET..CHECKSUM_OFFSET].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes[CHECKSUM_OFFSET..FRAME_HEADER_BYTES].copy_from_slice(&self.checksum);
        bytes
    }

    /// Parses and checks a header from the first 16 bytes of `bytes`, in wire order: magic,
    /// version, kind, flags, then `payload_len <= max_frame_bytes`. Extra bytes are ignored.
    pub fn decode(bytes: &[u8], max_frame_bytes: u32) -> Result<FrameHeader, FrameError> {
        let Some(bytes) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(FrameError::Truncated { needed: FRAME_HEADER_BYTES, available: bytes.len() });
        };
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[MAGIC_OFFSET..VERSION_OFFSET]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let kind = FrameKind::from_u8(bytes[KIND_OFFSET])?;
        let flags = bytes[FLAGS_OFFSET];
        if flags != 0 {
            return Err(FrameError::BadFlags { found: flags });
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[LEN_OFFSET..CHECKSUM_OFFSET]);
        let payload_len = u32::from_le_bytes(len);
        if payload_len > max_frame_bytes {
            return Err(FrameError::TooLarge { len: payload_len, max: max_frame_bytes });
        }
        let mut checksum = [0u8; CHECKSUM_BYTES];
        checksum.copy_from_slice(&bytes[CHECKSUM_OFFSET..FRAME_HEADER_BYTES]);
        Ok(FrameHeader { kind, payload_len, checksum })
    }

    /// Checks that `payload` is exactly this header's payload: its length, then its checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        let expected = self.payload_len as usize;
        if payload.len() < expected {
            return Err(FrameError::Truncated { needed: expected, available: payload.len() });
        }
        if payload.len() > expected {
            return Err(FrameError::Corrupt);
        }
        if payload_checksum(payload) != self.checksum {
            return Err(FrameError::Corrupt);
        }
        Ok(())
    }

    /// Header plus payload bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_len as usize
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::constants::MAX_FRAME_BYTES_DEFAULT;
    use crate::messages::GoawayCode;

    fn valid_header_bytes() -> [u8; FRAME_HEADER_BYTES] {
        FrameHeader::for_payload(FrameKind::Ping, b"payload").unwrap().encode()
    }

    #[test]
    fn t01_header_layout_matches_spec() {
        // Proves the byte layout of SPEC §4.2 by encoding a known header and reading fields back.
        let header = FrameHeader::for_payload(FrameKind::RequestBatch, b"abc").unwrap();
        let bytes = header.encode();
        assert_eq!(&bytes[0..4], b"LDGR");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(bytes[6], 3);
        assert_eq!(bytes[7], 0);
        assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &blake3::hash(b"abc").as_bytes()[..4]);
        assert_eq!(FrameHeader::decode(&bytes, MAX_FRAME_BYTES_DEFAULT).unwrap(), header);
    }

    #[test]
    fn t02_every_kind_round_trips_and_unknown_kinds_fail() {
        // Proves kinds 1..=9 parse to themselves and 0, 10..=255 are UnknownKind.
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind.to_u8()).unwrap(), kind);
        }
        for byte in (0u8..=0).chain(10..=255) {
            assert_eq!(FrameKind::from_u8(byte), Err(FrameError::UnknownKind { found: byte }));
        }
    }

    #[test]
    fn t03_each_header_error_and_its_goaway_code() {
        // Proves every FrameError of header decoding, by corrupting one field of a valid header.
        let max = MAX_FRAME_BYTES_DEFAULT;
        let mut b = valid_header_bytes();
        b[0] = b'X';
        let e = FrameHeader::decode(&b, max).unwrap_err();
        assert!(matches!(e, FrameError::BadMagic { .. }));
        assert_eq!(e.goaway_code(), GoawayCode::ProtocolError);

        let mut b = valid_header_bytes();
        b[4] = 2;
        let e = FrameHeader::decode(&b, max).unwrap_err();
        assert_eq!(e, FrameError::UnsupportedVersion { found: 2 });
        assert_eq!(e.goaway_code(), GoawayCode::UnsupportedVersion);

        let mut b = valid_header_bytes();
        b[6] = 0;
        let e = FrameHeader::decode(&b, max).unwrap_err();
        assert_eq!(e, FrameError::UnknownKind { found: 0 });
        assert_eq!(e.goaway_code(), GoawayCode::ProtocolError);

        let mut b = valid_header_bytes();
        b[7] = 0x80;
        let e = FrameHeader::decode(&b, max).unwrap_err();
        assert_eq!(e, FrameError::BadFlags { found: 0x80 });
        assert_eq!(e.goaway_code(), GoawayCode::ProtocolError);

        let b = valid_header_bytes();
        let e = FrameHeader::decode(&b, 6).unwrap_err();
        assert_eq!(e, FrameError::TooLarge { len: 7, max: 6 });
        assert_eq!(e.goaway_code(), GoawayCode::FrameTooLarge);
        assert!(FrameHeader::decode(&b, 7).is_ok());

        let e = FrameHeader::decode(&b[..15], max).unwrap_err();
        assert_eq!(e, FrameError::Truncated { needed: 16, available: 15 });
        assert_eq!(e.goaway_code(), GoawayCode::ProtocolError);

        let header = FrameHeader::decode(&b, max).unwrap();
        assert!(header.verify_payload(b"payload").is_ok());
        let e = header.verify_payload(b"paylaod").unwrap_err();
        assert_eq!(e, FrameError::Corrupt);
        assert_eq!(e.goaway_code(), GoawayCode::Corrupt);
        assert_eq!(
            header.verify_payload(b"pay").unwrap_err(),
            FrameError::Truncated { needed: 7, available: 3 }
        );
        assert_eq!(header.verify_payload(b"payload!").unwrap_err(), FrameError::Corrupt);
    }
}
