//! Relay to relay through the real binary with several workers: both clients' allocations
//! on this server (the one-to-one call), each sending ChannelData to the other's relayed
//! address. With `--workers 2` the kernel spreads the clients over both workers, so some
//! pairs straddle them: those packets are handed from worker to worker in process, with
//! the receiving allocation's permission still enforced.
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::raw::{COOKIE, RawClient};
use common::{REALM, SECRET, Server, unix_now};

fn client(server: &Server) -> RawClient {
    let (user, pass) = common::rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "alice");
    RawClient::new(server.addr(), &user, &pass, REALM)
}

/// XOR-RELAYED-ADDRESS (IPv4) of an Allocate success.
fn relayed(c: &mut RawClient) -> SocketAddr {
    let a = c.allocate(1);
    assert_eq!(a.class, 2, "allocate failed: {:?}", a.code);
    let v = a.get(0x0016).expect("XOR-RELAYED-ADDRESS");
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (COOKIE >> 16) as u16;
    let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ COOKIE;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn relay_to_relay_across_workers_enforces_permissions() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--workers", "2"]);
    const PAIRS: usize = 16;
    let mut keep = Vec::new();
    for i in 0..PAIRS {
        let (mut a, mut b) = (client(&server), client(&server));
        let (ra, rb) = (relayed(&mut a), relayed(&mut b));
        assert_eq!(a.channel_bind(0x4000, rb).class, 2);
        // B has no permission for A's relayed address: the packet must not reach B.
        b.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        a.send_raw(&channel_data(0x4000, format!("probe {i}").as_bytes()));
        assert_eq!(b.recv(), None, "pair {i}: delivered without B's permission");
        b.sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // With B's channel to A, both directions arrive re-headed with the receiver's channel.
        assert_eq!(b.channel_bind(0x4001, ra).class, 2);
        let msg = format!("hello {i}");
        a.send_raw(&channel_data(0x4000, msg.as_bytes()));
        assert_eq!(
            b.recv().as_deref(),
            Some(&channel_data(0x4001, msg.as_bytes())[..]),
            "pair {i}: A → B"
        );
        b.send_raw(&channel_data(0x4001, b"back"));
        assert_eq!(
            a.recv().as_deref(),
            Some(&channel_data(0x4000, b"back")[..]),
            "pair {i}: B → A"
        );
        keep.push((a, b));
    }
    // Every accepted packet went in process (none through a relay socket and back), and
    // some pairs straddled the two workers (all 16 on one worker: chance 2^-16).
    let same = r#"callrelay_turn_relayed_in_process_total{path="same_worker"}"#;
    let cross = r#"callrelay_turn_relayed_in_process_total{path="cross_worker"}"#;
    let total = (2 * PAIRS) as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (s, c) = loop {
        let t = server.metrics_text();
        let (s, c) = (
            common::metric_value(&t, same),
            common::metric_value(&t, cross),
        );
        if s + c >= total || std::time::Instant::now() > deadline {
            break (s, c);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s + c, total, "same {s} + cross {c} in-process deliveries");
    assert!(
        c >= 2.0,
        "no pair straddled the workers (same {s}, cross {c})"
    );
    assert_eq!(
        server.metric(
            r#"callrelay_turn_relayed_packets_total{direction="to_client",transport="udp"}"#
        ),
        total,
        "dropped probes are not counted as relayed"
    );
    drop(keep);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn bursts_leave_as_separate_datagrams_in_order() {
    // Bursts of equal-sized packets (a video frame) are what the server sends with one GSO
    // `sendmsg`: the receiver must still see each datagram on its own, in order, with a
    // shorter last one and a change of size inside the burst.
    bursts_in_order(false);
}

#[test]
fn tcp_bursts_leave_as_separate_datagrams_in_order() {
    // ChannelData frames that arrive in one TCP read leave toward the peer in one GSO
    // send: each must still be its own datagram, in order, without the stream padding
    // (odd sizes, so every frame is padded on the stream).
    bursts_in_order(true);
}

/// 60 datagrams (1200, then 172 bytes, every 20th 100; +1 each over TCP so that every
/// frame is padded) to the peer and back, checked one by one.
fn bursts_in_order(tcp: bool) {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let p = peer.local_addr().unwrap();
    let mut c = if tcp {
        let (user, pass) = common::rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "alice");
        RawClient::new_tcp(server.addr(), &user, &pass, REALM)
    } else {
        client(&server)
    };
    let relay = relayed(&mut c);
    assert_eq!(c.channel_bind(0x4000, p).class, 2);
    let odd = usize::from(tcp);
    let size = |i: usize| {
        odd + match i % 20 {
            19 => 100,
            _ if i < 40 => 1200,
            _ => 172,
        }
    };
    let payload = |i: usize| {
        let mut v = vec![(i % 251) as u8; size(i)];
        v[..4].copy_from_slice(&(i as u32).to_be_bytes());
        v
    };
    const N: usize = 60;
    if tcp {
        // all frames in one write, each padded to 4 bytes as the stream requires
        let mut stream = Vec::new();
        for i in 0..N {
            let mut f = channel_data(0x4000, &payload(i));
            f.resize(f.len().next_multiple_of(4), 0);
            stream.extend_from_slice(&f);
        }
        c.send_raw(&stream);
    } else {
        for i in 0..N {
            c.send_raw(&channel_data(0x4000, &payload(i)));
        }
    }
    let mut buf = [0u8; 2048];
    for i in 0..N {
        let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
        assert_eq!(from, relay);
        assert_eq!(&buf[..n], &payload(i)[..], "datagram {i} toward the peer");
    }
    // And back: the peer's burst reaches the client as ChannelData, one per datagram.
    for i in 0..N {
        peer.send_to(&payload(i), relay).unwrap();
    }
    client_gets_in_order(&c, N, payload);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn tcp_client_that_stops_reading_gets_every_frame_in_order_later() {
    // Frames toward a TCP client are written straight from the relay path while the socket
    // takes them; once it is full (the client stopped reading) the connection's writer
    // task takes over. Nothing may be lost or reordered across that hand-over, within the
    // per-client queue limit (768 KB; this sends 300 KB).
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p = peer.local_addr().unwrap();
    let (user, pass) = common::rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "alice");
    let mut c = RawClient::new_tcp_small_window(server.addr(), &user, &pass, REALM);
    let relay = relayed(&mut c);
    assert_eq!(c.channel_bind(0x4000, p).class, 2);
    const N: usize = 300;
    let payload = |i: usize| {
        let mut v = vec![(i % 251) as u8; 1000 + i % 7];
        v[..4].copy_from_slice(&(i as u32).to_be_bytes());
        v
    };
    // The client does not read while the peer sends (in small groups, so that the relay
    // socket's receive buffer never overflows).
    for i in 0..N {
        peer.send_to(&payload(i), relay).unwrap();
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The client starts reading only once the server has relayed every datagram toward it
    // (queued or written while it did not read): waited for on the server's count, not
    // guessed with a sleep.
    let to_client =
        r#"callrelay_turn_relayed_packets_total{direction="to_client",transport="tcp"}"#;
    assert_eq!(
        server.wait_metric(to_client, |v| v >= N as f64),
        N as f64,
        "datagrams relayed toward the non-reading client"
    );
    client_gets_in_order(&c, N, payload);
    assert_eq!(server.stop(), Some(0));
}

/// The client receives `payload(0..n)` as ChannelData on channel 0x4000, one each, in
/// order, nothing lost or cut.
fn client_gets_in_order(c: &RawClient, n: usize, payload: impl Fn(usize) -> Vec<u8>) {
    for i in 0..n {
        assert_eq!(
            c.recv().as_deref(),
            Some(&channel_data(0x4000, &payload(i))[..]),
            "datagram {i} toward the client (lost, cut or reordered)"
        );
    }
}
