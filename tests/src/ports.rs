//! Loopback ports for servers that must be told their address before they start (cluster nodes
//! named in each other's `--peers`, metrics endpoints, restarts on the same address).
//!
//! Binding port 0 and releasing it is not enough: the kernel hands the same ephemeral range to
//! every outgoing connection, so another test's client could take the port before the server
//! binds it (a CI run failed that way: "address already in use"). These ports come from below
//! the ephemeral range, which outgoing connections never use, and a process never hands out the
//! same port twice, so a node killed and restarted on its port keeps it.

use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out; the highest is just below the ephemeral range.
const FIRST_PORT: u32 = 10_000;

/// The kernel's ephemeral range (outgoing connections and port-0 binds take ports from it).
fn ephemeral_range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|n| n.parse::<u32>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

/// The ports this process may hand out: below the ephemeral range if there is room, else above.
fn usable_range() -> (u32, u32) {
    let (low, high) = ephemeral_range();
    if low > FIRST_PORT + 1_000 {
        (FIRST_PORT, low - 1)
    } else {
        (high + 1, 65_535)
    }
}

/// The next port to try; starts at an offset drawn from the process id so that test binaries run
/// side by side (or one after another, before TIME_WAIT ends) do not walk the same ports.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that was free when checked, outside the ephemeral range, and never handed
/// out before by this process.
pub fn free_addr() -> String {
    let (low, high) = usable_range();
    let span = high - low + 1;
    let seed = (std::process::id().wrapping_mul(7_919)) % span;
    let _ = NEXT.compare_exchange(0, seed + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = low + (NEXT.fetch_add(1, Ordering::Relaxed) - 1) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(listener);
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("no free loopback port in {low}..={high}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t01_ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let (low, high) = ephemeral_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let addr = free_addr();
            let port: u32 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
            assert!(port < low || port > high, "{port} is in the ephemeral range {low}..={high}");
            assert!(seen.insert(port), "{port} handed out twice");
        }
    }
}
