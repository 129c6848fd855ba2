//! The control endpoint (docs/turn-server.md, "Control endpoint") over real HTTP against
//! the real binary: a permission the gateway installs lets a peer's datagrams reach the
//! client with no CreatePermission from it; wrong secret, unknown relay, policy denial,
//! oversized body and a server without a secret are refused and counted.
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::raw::{COOKIE, RawClient, decode};
use common::{REALM, SECRET, Server, unix_now};

const CONTROL: &str = "control-secret-for-tests-0123456789";

/// One HTTP/1.0 request to the metrics listener: (status, body).
fn http(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(server.metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn install(
    server: &Server,
    secret: Option<&str>,
    relay: SocketAddr,
    peer: IpAddr,
) -> (u16, String) {
    http(
        server,
        "POST",
        "/control/permission",
        secret,
        &format!("{{\"relay\":\"{relay}\",\"peer\":\"{peer}\"}}"),
    )
}

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

fn counted(server: &Server, result: &str) -> f64 {
    server.metric(&format!(
        "callrelay_turn_control_requests_total{{result=\"{result}\"}}"
    ))
}

#[test]
fn installed_permissions_let_peers_in_without_create_permission() {
    // Two workers: allocations land on both, and each request must reach the owner.
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--workers",
        "2",
        "--control-secret",
        CONTROL,
    ]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..8 {
        let mut c = client(&server);
        let relay = relayed(&mut c);
        c.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // no permission: the peer's datagram is dropped at the relay
        peer.send_to(format!("before {i}").as_bytes(), relay)
            .unwrap();
        assert_eq!(
            c.recv(),
            None,
            "allocation {i}: relayed without a permission"
        );

        let (status, body) = install(
            &server,
            Some(CONTROL),
            relay,
            peer.local_addr().unwrap().ip(),
        );
        assert_eq!((status, body.trim()), (200, "{\"result\":\"installed\"}"));
        c.sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let msg = format!("after {i}");
        peer.send_to(msg.as_bytes(), relay).unwrap();
        let got = c.recv().expect("the peer's datagram reaches the client");
        let d = decode(&got);
        // a Data indication (0x0017) from the peer, carrying its bytes
        assert_eq!(u16::from_be_bytes([got[0], got[1]]), 0x0017);
        assert_eq!(d.get(0x0013), Some(msg.as_bytes()));
    }
    assert_eq!(counted(&server, "installed"), 8.0);
}

#[test]
fn refusals_are_answered_and_counted() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--control-secret", CONTROL]);
    let mut c = client(&server);
    let relay = relayed(&mut c);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();

    // wrong or missing secret: 401, and nothing else is told
    assert_eq!(
        install(&server, Some("not-the-secret-at-all"), relay, lo).0,
        401
    );
    assert_eq!(install(&server, None, relay, lo).0, 401);
    let almost = &CONTROL[..CONTROL.len() - 1];
    assert_eq!(install(&server, Some(almost), relay, lo).0, 401);
    assert_eq!(counted(&server, "unauthorized"), 3.0);

    // no allocation has that relayed address (a port nobody owns, and a wrong IP on an
    // owned port)
    let unknown = SocketAddr::new(relay.ip(), relay.port() ^ 1);
    assert_eq!(install(&server, Some(CONTROL), unknown, lo).0, 404);
    let other_ip = SocketAddr::new("127.0.0.2".parse().unwrap(), relay.port());
    assert_eq!(install(&server, Some(CONTROL), other_ip, lo).0, 404);
    assert_eq!(counted(&server, "no_allocation"), 2.0);

    // the peer policy decides as for CreatePermission (10/8 is private: denied)
    let (status, body) = install(&server, Some(CONTROL), relay, "10.1.2.3".parse().unwrap());
    assert_eq!((status, body.trim()), (403, "{\"result\":\"denied\"}"));
    assert_eq!(counted(&server, "denied"), 1.0);
    // (the workers report their counters twice a second)
    assert_eq!(
        server.wait_metric(
            "callrelay_turn_denied_peers_total{class=\"private\"}",
            |v| v == 1.0,
        ),
        1.0
    );

    // bad JSON, wrong family, oversized body
    assert_eq!(
        http(&server, "POST", "/control/permission", Some(CONTROL), "{").0,
        400
    );
    assert_eq!(
        install(&server, Some(CONTROL), relay, "::1".parse().unwrap()).0,
        400
    );
    assert_eq!(counted(&server, "bad_request"), 2.0);
    let big = format!(
        "{{\"relay\":\"{relay}\",\"peer\":\"127.0.0.1\",\"x\":\"{}\"}}",
        "a".repeat(600)
    );
    assert_eq!(
        http(&server, "POST", "/control/permission", Some(CONTROL), &big).0,
        413
    );
    assert_eq!(counted(&server, "too_large"), 1.0);
    // the allocation itself was never touched by the refusals: installing still works
    assert_eq!(install(&server, Some(CONTROL), relay, lo).0, 200);
}

#[test]
fn rate_limit_answers_429_and_counts() {
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--control-secret",
        CONTROL,
        "--control-rate",
        "5",
    ]);
    let mut c = client(&server);
    let relay = relayed(&mut c);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let statuses: Vec<u16> = (0..12)
        .map(|_| install(&server, Some(CONTROL), relay, lo).0)
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count() as f64;
    assert_eq!(counted(&server, "rate_limited"), limited);
}

#[test]
fn without_a_secret_there_is_no_endpoint() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let mut c = client(&server);
    let relay = relayed(&mut c);
    let (status, _) = install(&server, Some(CONTROL), relay, "127.0.0.1".parse().unwrap());
    assert_eq!(status, 404);
    // and the metrics still answer
    assert!(server.metrics_text().contains("callrelay_turn_build_info"));
    // the secret never shows in the log
    let server = Server::start(&["--control-secret", CONTROL]);
    assert!(!server.log.lock().unwrap().contains(CONTROL));
}
