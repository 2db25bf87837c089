//! The inputs of a write's latency budget (issue 15 item 2), measured rather than guessed: what it
//! costs to make 4 KiB durable on one directory's disk, and one loopback TCP round trip.
//!
//! - `fsync/append_4k`: a 4 KiB write at the end of a growing file, then `fdatasync`. The file's
//!   size changes, so the filesystem commits metadata with the data: an append-only log that
//!   does not pre-allocate pays this.
//! - `fsync/overwrite_4k`: a 4 KiB overwrite of a page of a file that was written in full and
//!   fsync'd before the clock starts, then `fdatasync`: only the data block goes to disk, the
//!   floor a pre-allocated log can reach.
//! - `net/loopback_rtt_64b`: a 64-byte message to an echo thread over 127.0.0.1 and the echo
//!   back (TCP_NODELAY on both ends, blocking reads): a peer hop between two processes on one
//!   host, wake-ups included.
//!
//! The files live in `--fsync-dir` (default: the system temp directory) and are removed after
//! the run; the figure only means something when that directory is on the data directory's disk.

use crate::constants::{
    FSYNC_PAGE_BYTES, FSYNC_RING_PAGES, RTT_MESSAGE_BYTES, RTT_READ_TIMEOUT_SECS, SAMPLES_FAST, SAMPLES_FSYNC,
};
use crate::error::BenchError;
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

pub const NAMES: [&str; 3] = ["fsync/append_4k", "fsync/overwrite_4k", "net/loopback_rtt_64b"];

/// Attaches the step that failed to an I/O error.
fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { step, source }
}

/// A 4 KiB page whose first bytes carry `stamp`, so consecutive writes never carry equal bytes.
fn stamp_page(page: &mut [u8; FSYNC_PAGE_BYTES], stamp: u64) {
    page[..8].copy_from_slice(&stamp.to_le_bytes());
}

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) -> Result<(), BenchError> {
    let dir = options.fsync_dir();
    let plan = Plan { samples: options.samples(SAMPLES_FSYNC), inner: 1, items: 1, unit: "fsync" };
    if options.selects(NAMES[0]) {
        out(append(&dir, plan)?);
    }
    if options.selects(NAMES[1]) {
        out(overwrite(&dir, plan)?);
    }
    if options.selects(NAMES[2]) {
        let plan = Plan { samples: options.samples(SAMPLES_FAST), inner: 1, items: 1, unit: "rtt" };
        out(loopback(plan)?);
    }
    Ok(())
}

/// `fsync/append_4k`: each iteration appends one page to a fresh file and syncs its data.
fn append(dir: &Path, plan: Plan) -> Result<Outcome, BenchError> {
    let file = tempfile::NamedTempFile::new_in(dir).map_err(BenchError::TempFile)?;
    let mut page = [0xA5u8; FSYNC_PAGE_BYTES];
    let mut pages = 0u64;
    let mut failure = None;
    let outcome = measure(NAMES[0], plan, || {
        if failure.is_none() {
            stamp_page(&mut page, pages);
            failure = sync_page(file.as_file(), &page, pages * FSYNC_PAGE_BYTES as u64).err();
        }
        pages += 1;
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// `fsync/overwrite_4k`: a ring of pages is written and fsync'd untimed; each iteration overwrites
/// the next page of the ring and syncs its data.
fn overwrite(dir: &Path, plan: Plan) -> Result<Outcome, BenchError> {
    let file = tempfile::NamedTempFile::new_in(dir).map_err(BenchError::TempFile)?;
    let mut page = [0x5Au8; FSYNC_PAGE_BYTES];
    for index in 0..FSYNC_RING_PAGES {
        stamp_page(&mut page, index);
        file.as_file().write_all_at(&page, index * FSYNC_PAGE_BYTES as u64).map_err(io("pre-allocate"))?;
    }
    // fsync, not fdatasync: the file's size and extents must be on disk before the clock starts.
    file.as_file().sync_all().map_err(io("pre-sync"))?;
    let mut writes = 0u64;
    let mut failure = None;
    let outcome = measure(NAMES[1], plan, || {
        if failure.is_none() {
            stamp_page(&mut page, FSYNC_RING_PAGES + writes);
            let offset = (writes % FSYNC_RING_PAGES) * FSYNC_PAGE_BYTES as u64;
            failure = sync_page(file.as_file(), &page, offset).err();
        }
        writes += 1;
    });
    let length = file.as_file().metadata().map_err(io("stat"))?.len();
    if length != FSYNC_RING_PAGES * FSYNC_PAGE_BYTES as u64 {
        return Err(BenchError::Check(format!("{}: the file grew to {length} bytes", NAMES[1])));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// One timed step of the fsync benches: write `page` at `offset`, then `fdatasync`.
fn sync_page(file: &File, page: &[u8], offset: u64) -> Result<(), BenchError> {
    file.write_all_at(page, offset).map_err(io("write"))?;
    file.sync_data().map_err(io("fdatasync"))
}

/// `net/loopback_rtt_64b`: one connection to an echo thread; each iteration sends one message and
/// reads its echo.
fn loopback(plan: Plan) -> Result<Outcome, BenchError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io("bind"))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let echo = std::thread::spawn(move || echo_one(&listener));
    let mut client = TcpStream::connect(addr).map_err(io("connect"))?;
    client.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    // A stuck echo fails the bench instead of hanging it.
    client.set_read_timeout(Some(Duration::from_secs(RTT_READ_TIMEOUT_SECS))).map_err(io("read timeout"))?;
    let mut message = [0u8; RTT_MESSAGE_BYTES];
    let mut reply = [0u8; RTT_MESSAGE_BYTES];
    let mut sent = 0u64;
    let mut failure = None;
    let outcome = measure(NAMES[2], plan, || {
        if failure.is_none() {
            message[..8].copy_from_slice(&sent.to_le_bytes());
            failure = client
                .write_all(&message)
                .and_then(|()| client.read_exact(&mut reply))
                .map_err(io("round trip"))
                .err();
            if failure.is_none() && reply != message {
                failure = Some(BenchError::Check(format!("{}: the echo differs", NAMES[2])));
            }
        }
        sent += 1;
    });
    // Closing our end ends the echo loop.
    drop(client);
    match echo.join() {
        Ok(result) => result?,
        Err(_) => return Err(BenchError::Check(format!("{}: the echo thread panicked", NAMES[2]))),
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// Accepts one connection and echoes fixed-size messages until the peer closes it.
fn echo_one(listener: &TcpListener) -> Result<(), BenchError> {
    let (mut stream, _) = listener.accept().map_err(io("accept"))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let mut message = [0u8; RTT_MESSAGE_BYTES];
    loop {
        match stream.read_exact(&mut message) {
            Ok(()) => stream.write_all(&message).map_err(io("echo"))?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io("echo")(e)),
        }
    }
}
