//! systemd watchdog (issue 13 §4): under `WATCHDOG_USEC` the real binary sends READY=1,
//! then WATCHDOG=1 every quarter of the interval while every worker's loop turns, to a
//! `NOTIFY_SOCKET` this test owns.
//!
//! Not shown here: the pings stopping when a worker hangs. Nothing outside the process
//! can stall one worker thread alone (SIGSTOP stops the whole process), and the binary
//! has no test hook for it; the check itself is `Watchdog::tick` in main.rs (a worker
//! whose heartbeat is older than half the interval withholds the ping, logged once).

mod common;
use common::*;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Datagrams received on `sock` until `until`, with their arrival times.
fn receive(sock: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

#[test]
fn watchdog_pings_arrive_every_quarter_interval_from_a_live_server() {
    let dir = TempDir::new("watchdog");
    let path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    // 4 s: a ping every 1 s, each worker must have turned within 2 s (they turn ≥ 1/s)
    let server = Server::start_wrapped(
        &["env", &notify, "WATCHDOG_USEC=4000000"],
        40,
        &["--workers", "2"],
    );
    let start = Instant::now();
    let got = receive(&sock, start + Duration::from_secs(5));
    let ready = got.iter().position(|(_, m)| m.contains("READY=1"));
    assert!(ready.is_some(), "no READY=1: {got:?}");
    let pings: Vec<Instant> = got
        .iter()
        .skip(ready.unwrap())
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 3, "{} pings in 5 s: {got:?}", pings.len());
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(2000),
            "ping gap {gap:?} (want ~1 s)"
        );
    }
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("systemd watchdog enabled")
    );
    assert!(!server.log.lock().unwrap().contains("stalled"));
    drop(server);
}

#[test]
fn no_pings_when_the_watchdog_is_meant_for_another_process() {
    let dir = TempDir::new("watchdog-pid");
    let path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    // WATCHDOG_PID of another process (pid 1): sd_watchdog_enabled says no
    let server = Server::start_wrapped(
        &["env", &notify, "WATCHDOG_USEC=1000000", "WATCHDOG_PID=1"],
        40,
        &[],
    );
    let got = receive(&sock, Instant::now() + Duration::from_secs(2));
    assert!(got.iter().any(|(_, m)| m.contains("READY=1")), "{got:?}");
    assert!(
        !got.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "{got:?}"
    );
    drop(server);
}
