//! Safety by default against the real binary: forbidden peers (every class and IPv6
//! spelling → 403, counted), loopback only through an explicit --allow-peer, and malformed
//! input that leaves the server serving everyone else.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::raw::{RawClient, decode, encode};
use common::{REALM, SECRET, Server, unix_now};

fn creds() -> (String, String) {
    common::rest_credentials(SECRET.as_bytes(), unix_now() + 3600, "alice")
}

fn peer(s: &str) -> SocketAddr {
    SocketAddr::new(s.parse().unwrap(), 9)
}

#[test]
fn every_denied_class_and_spelling_gets_403() {
    // IPv4 and IPv6 relays so IPv6 spellings are checked by policy, not family (443).
    let server = Server::start(&[
        "--relay-ip",
        "::1",
        "--relay-ip",
        "127.0.0.1",
        "--deny-peer",
        "203.0.113.0/24",
    ]);
    let (u, p) = creds();
    let mut v4 = RawClient::new(server.addr(), &u, &p, REALM);
    assert_eq!(v4.allocate(1).class, 2, "IPv4 allocation");
    let mut v6 = RawClient::new(server.addr(), &u, &p, REALM);
    let a = v6.allocate(2);
    assert_eq!(a.class, 2, "IPv6 allocation: {a:?}");
    let cases: &[(&str, &str)] = &[
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("169.254.169.254", "link_local"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "other_reserved"),
        ("203.0.113.7", "deny_list"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd00:abcd::1", "private"),
        ("fe80::1", "link_local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b:1::a00:1", "private"),
        ("::ffff:169.254.169.254", "link_local"),
        ("64:ff9b::a9fe:a9fe", "link_local"),
        ("::ffff:100.64.0.1", "cgnat"),
        ("::ffff:224.0.0.1", "multicast"),
        ("::ffff:203.0.113.7", "deny_list"),
    ];
    let mut expected = std::collections::HashMap::<&str, f64>::new();
    for (ip, class) in cases {
        let c = if ip.contains(':') { &mut v6 } else { &mut v4 };
        let a = c.create_permission(peer(ip));
        assert_eq!(a.code, Some(403), "{ip} must be forbidden: {a:?}");
        let a = c.channel_bind(0x4001, peer(ip));
        assert_eq!(
            a.code,
            Some(403),
            "{ip} ChannelBind must be forbidden: {a:?}"
        );
        *expected.entry(class).or_default() += 2.0;
    }
    // Public addresses are allowed (permission only: no traffic is sent anywhere).
    assert_eq!(v4.create_permission(peer("192.0.2.1")).class, 2);
    assert_eq!(v6.create_permission(peer("2001:db8::1")).class, 2);
    // Wrong family → 443, not 403.
    assert_eq!(v4.create_permission(peer("2001:db8::1")).code, Some(443));
    let text = server.metrics_text();
    for (class, n) in expected {
        let series = format!("callrelay_turn_denied_peers_total{{class=\"{class}\"}}");
        let v = server.wait_metric(&series, |v| v >= n);
        assert_eq!(v, n, "{series}\n{text}");
    }
}

#[test]
fn loopback_only_with_explicit_allow() {
    let (u, p) = creds();
    let closed = Server::start(&[]);
    let mut c = RawClient::new(closed.addr(), &u, &p, REALM);
    assert_eq!(c.allocate(1).class, 2);
    assert_eq!(c.create_permission(peer("127.0.0.1")).code, Some(403));
    let open = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--relay-ip",
        "127.0.0.1",
        "--relay-ip",
        "::1",
    ]);
    let mut c = RawClient::new(open.addr(), &u, &p, REALM);
    assert_eq!(c.allocate(1).class, 2);
    assert_eq!(c.create_permission(peer("127.0.0.1")).class, 2);
    assert_eq!(
        c.create_permission(peer("127.0.0.2")).code,
        Some(403),
        "only the /32 is open"
    );
    let mut c6 = RawClient::new(open.addr(), &u, &p, REALM);
    assert_eq!(c6.allocate(2).class, 2);
    assert_eq!(
        c6.create_permission(peer("::1")).code,
        Some(403),
        "::1 is not 127.0.0.1/32"
    );
    assert_eq!(
        c6.create_permission(peer("::ffff:127.0.0.2")).code,
        Some(403)
    );
}

fn binding_ok_udp(server: &Server) {
    let c = RawClient::new(server.addr(), "x", "y", REALM);
    let tid = [7u8; 12];
    c.send_raw(&encode(0x001, 0, &tid, &[], None));
    let a = decode(&c.recv().expect("Binding answer"));
    assert_eq!(a.class, 2);
    assert!(a.get(0x0020).is_some(), "XOR-MAPPED-ADDRESS");
}

fn binding_ok_tcp(server: &Server) {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&encode(0x001, 0, &[8u8; 12], &[], None))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 20 {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "closed");
        got += n;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    while got < 20 + len {
        got += s.read(&mut buf[got..]).unwrap();
    }
    assert_eq!(decode(&buf[..got]).class, 2);
}

/// Reads until the server closes the connection (bounded).
fn closed_by_server(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn malformed_input_leaves_everyone_else_served() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--max-frame", "2048"]);
    let (u, p) = creds();
    // A legitimate client with an allocation, before and after the garbage.
    let mut good = RawClient::new(server.addr(), &u, &p, REALM);
    assert_eq!(good.allocate(1).class, 2);

    let bad = RawClient::new(server.addr(), "x", "y", REALM);
    let valid = encode(0x001, 0, &[1u8; 12], &[(0x8022, b"hello".to_vec())], None);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        valid[..19].to_vec(),              // truncated header
        valid[..valid.len() - 4].to_vec(), // truncated body
        {
            let mut v = valid.clone();
            v[4] ^= 0xff; // bad cookie
            v
        },
        {
            let mut v = valid.clone();
            v[3] = 0x0a; // length not a multiple of 4
            v
        },
        {
            let mut v = valid.clone();
            v[3] = 0xfc; // length beyond the datagram
            v
        },
        {
            let mut v = valid.clone();
            v[23] = 0xff; // attribute length overruns the message
            v
        },
        vec![0x40, 0x01, 0xff, 0xff, 1, 2, 3], // ChannelData claiming 65535 bytes
        vec![0x40, 0x01, 0x00, 0x04],          // ChannelData without allocation
        vec![0xff; 1200],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for i in 0..50u8 {
        cases.push(
            (0..(i as usize * 7 % 300))
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect(),
        );
    }
    for c in &cases {
        if !c.is_empty() {
            bad.send_raw(c);
        }
    }
    // Garbage gets no answer at all (no reflection).
    assert!(bad.recv().is_none(), "garbage must not be answered");

    // TCP: garbage, oversized frame, truncated frame then close.
    let mut g = TcpStream::connect(server.addr()).unwrap();
    g.write_all(&[0xC0, 0, 0, 0, 1, 2, 3]).unwrap();
    assert!(closed_by_server(g), "garbage on TCP closes that connection");
    let mut o = TcpStream::connect(server.addr()).unwrap();
    o.write_all(&[0x40, 0x01, 0x10, 0x00]).unwrap(); // 4096-byte ChannelData > max_frame 2048
    assert!(
        closed_by_server(o),
        "oversized frame closes that connection"
    );
    let mut h = TcpStream::connect(server.addr()).unwrap();
    h.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_by_server(h), "HTTP on the TURN port is closed");
    let mut t = TcpStream::connect(server.addr()).unwrap();
    t.write_all(&valid[..10]).unwrap();
    drop(t);

    // Everyone else is still served, on both transports.
    binding_ok_udp(&server);
    binding_ok_tcp(&server);
    assert_eq!(good.create_permission(peer("127.0.0.1")).class, 2);
    let refresh = good.request(0x004, |_| vec![(0x000D, 600u32.to_be_bytes().to_vec())]);
    assert_eq!(refresh.class, 2);
    assert_eq!(server.stop(), Some(0), "clean exit after garbage");
}

#[test]
fn unauthenticated_answers_are_small_and_rate_limited() {
    let server = Server::start(&["--unauth-rate", "5"]);
    let c = RawClient::new(server.addr(), "x", "y", REALM);
    let mut answered = 0;
    for i in 0..60u8 {
        let req = encode(0x003, 0, &[i; 12], &[(0x0019, vec![17, 0, 0, 0])], None);
        c.send_raw(&req);
    }
    c.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Some(a) = c.recv() {
        assert!(a.len() <= 80, "401 challenge must stay small: {}", a.len());
        let d = decode(&a);
        assert_eq!(d.code, Some(401));
        assert!(
            d.get(0x8022).is_none(),
            "no SOFTWARE to unauthenticated clients"
        );
        answered += 1;
    }
    assert!(
        (5..=15).contains(&answered),
        "rate limit: answered {answered} of 60"
    );
    assert!(
        server.wait_metric(
            "callrelay_turn_quota_rejections_total{kind=\"rate_limit\"}",
            |v| v >= 40.0
        ) >= 40.0
    );
}
