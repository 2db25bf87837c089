//! Raw frames over a blocking `std::net::TcpStream`, for tests that must send what no well-behaved
//! client would (bad headers, truncated frames, garbage payloads) and observe exactly how the
//! server answers: a `Goaway` with a given code, or a plain close.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use ledger_wire::codec::{encode_frame_to_vec, Frame, FrameReader};
use ledger_wire::constants::MAX_FRAME_BYTES_DEFAULT;
use ledger_wire::frame::{FrameHeader, FrameKind};
use ledger_wire::messages::{Goaway, Hello, HelloAck, Role, PROTOCOL_VERSION};

/// Guard against a server that neither answers nor closes: a read blocked this long fails the
/// test instead of hanging it. Not a timing assertion; a healthy server answers in milliseconds.
pub const READ_GUARD: Duration = Duration::from_secs(30);

/// How the server ended a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A `Goaway` frame, then the close.
    Goaway(Goaway),
    /// Closed (FIN or RST) without a `Goaway`.
    Closed,
}

/// One complete frame: a correct header (magic, version 1, flags 0, length, checksum) for
/// `payload`, which is sent as is (it need not be a valid archive).
pub fn frame_bytes(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader::for_payload(kind, payload).expect("payload fits a frame");
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A `Hello` frame with the given protocol version in the payload (the header says version 1).
pub fn hello_frame(protocol_version: u16) -> Vec<u8> {
    let hello = Hello {
        protocol_version,
        role: Role::Client,
        node_id: None,
        client_name: "ledger-tests/raw".to_string(),
        credential: None,
        namespace_hint: None,
    };
    encode_frame_to_vec(FrameKind::Hello, &hello).expect("encode Hello")
}

/// A raw client connection.
pub struct RawConn {
    stream: TcpStream,
    reader: FrameReader,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect raw socket");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(READ_GUARD)).expect("read timeout");
        RawConn { stream, reader: FrameReader::new(MAX_FRAME_BYTES_DEFAULT), buf: Vec::new() }
    }

    /// Connects and completes a valid Hello/HelloAck exchange.
    pub fn connect_with_hello(addr: &str) -> (RawConn, HelloAck) {
        let mut conn = RawConn::connect(addr);
        conn.send(&hello_frame(PROTOCOL_VERSION)).expect("send Hello");
        let frame = conn.next_frame().expect("HelloAck frame");
        assert_eq!(frame.kind(), FrameKind::HelloAck);
        let ack = frame.decode::<HelloAck>().expect("valid HelloAck");
        (conn, ack)
    }

    /// Writes bytes; an error means the server already closed (which some tests accept).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes: the server sees end of stream but can still answer.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The next whole frame from the server, or `None` at end of stream / reset.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let mut input: &[u8] = &self.buf;
            let result = self.reader.read_from(&mut input);
            let consumed = self.buf.len() - input.len();
            self.buf.drain(..consumed);
            match result {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => panic!("server sent an invalid frame: {e}"),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("server neither answered nor closed within {READ_GUARD:?}")
                }
                // Reset or similar: the server closed with our bytes unread.
                Err(_) => return None,
            }
        }
    }

    /// Reads frames (skipping `Pong`/`HelloAck`/`ResponseBatch`) until a `Goaway` or the close.
    pub fn ending(&mut self) -> Ending {
        while let Some(frame) = self.next_frame() {
            if frame.kind() == FrameKind::Goaway {
                let goaway = frame.decode::<Goaway>().expect("valid Goaway");
                // After a Goaway the server closes: nothing else may follow.
                assert!(self.next_frame().is_none(), "frames after Goaway {goaway:?}");
                return Ending::Goaway(goaway);
            }
        }
        Ending::Closed
    }
}
