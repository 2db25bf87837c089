//! Where a request's reply goes. Its own module so that the block builder and the readers, which
//! answer requests, need not import the inbox message type (`msg`), which names the admin and watch
//! types above them.

use ledger_wire::messages::ResponseEnvelope;

/// Where a request's reply goes: the connection's response channel (fan-in, SPEC §8.1 step 4).
pub type ReplySender = flume::Sender<ResponseEnvelope>;
