//! coturn's own client (`turnutils_uclient`) against our server and `turnutils_peer`, all on
//! loopback: UDP, TCP, TLS; channels and Send/Data indications; REST credentials; wrong and
//! expired credentials fail. CI installs Debian `coturn`.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{REALM, SECRET, Server, TempDir, free_port, unix_now};

struct Peer(Child, u16);

impl Peer {
    fn start() -> Self {
        // A port can be taken between free_port() and the peer's bind (tests run in
        // parallel): a peer that exits is started again on another port.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new("turnutils_peer")
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("turnutils_peer (Debian package coturn) must be installed");
            // Wait until the peer holds its port, read from /proc/net/udp: probing by
            // binding the port ourselves could take it at the very moment the peer binds
            // (the peer then exits and the port stays free).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if udp_bound_on_loopback(port) {
                    return Self(child, port);
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "turnutils_peer did not bind {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("turnutils_peer exited three times without binding its port");
    }
}

/// Whether a UDP socket is bound to 127.0.0.1:`port` (from /proc/net/udp).
fn udp_bound_on_loopback(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
    })
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs uclient (bounded to 40 s) and returns (success, combined output).
fn uclient(args: &[&str]) -> (bool, String) {
    let child = Command::new("turnutils_uclient")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turnutils_uclient (Debian package coturn) must be installed");
    let (status, text) = common::output_within(child, Duration::from_secs(40));
    (status.is_some_and(|s| s.success()), text)
}

/// Last "tot_send_msgs=N, tot_recv_msgs=M" of the run.
fn totals(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="))
        .unwrap_or("");
    let num = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("tot_send_msgs="), num("tot_recv_msgs="))
}

fn assert_zero_loss(ok: bool, out: &str, expected: u64) {
    let (sent, recv) = totals(out);
    assert!(ok, "uclient failed:\n{out}");
    assert_eq!(sent, expected, "sent\n{out}");
    assert_eq!(recv, sent, "lost packets\n{out}");
    assert!(out.contains("Total lost packets 0 (0.000000%)"), "{out}");
}

fn run(server: &Server, peer: &Peer, extra: &[&str], n: u64, m: u64) -> (bool, String) {
    let port = server.port.to_string();
    let peer_port = peer.1.to_string();
    let n_s = n.to_string();
    let m_s = m.to_string();
    let mut args = vec![
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-p",
        &port,
        "-n",
        &n_s,
        "-m",
        &m_s,
        "-z",
        "5",
        "-W",
        SECRET,
        "-u",
        "alice",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    uclient(&args)
}

#[test]
fn udp_channels_and_indications_zero_loss() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let peer = Peer::start();
    // Channel mode (default): 2 clients x (RTP + RTCP) x 20 messages.
    let (ok, out) = run(&server, &peer, &[], 20, 2);
    assert_zero_loss(ok, &out, 40);
    // Send/Data indication mode.
    let (ok, out) = run(&server, &peer, &["-s"], 20, 2);
    assert_zero_loss(ok, &out, 40);
    let to_peer = server.wait_metric(
        "callrelay_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"}",
        |v| v >= 80.0,
    );
    assert!(to_peer >= 80.0, "{to_peer}");
    assert!(server.metric("callrelay_turn_requests_total{method=\"channel_bind\"}") >= 4.0);
    let text = server.metrics_text();
    assert!(
        common::metric_value(&text, "callrelay_turn_allocations_total{result=\"ok\"}") >= 4.0,
        "{text}"
    );
    assert_eq!(server.stop(), Some(0));
}

/// Issue 11 item 7: 100 concurrent TURN-over-TCP clients from one address (an office
/// behind one NAT) all finish. Over TCP a client never retransmits (RFC 8489 §6.2.2), so a
/// request the per-source limit dropped left it hanging ~40 s: coturn's uclient with
/// 60-100 clients never finished against the old server.
#[test]
fn hundred_tcp_clients_from_one_address_all_finish() {
    let server = Server::start_with_relay_ports(600, &["--allow-peer", "127.0.0.1/32"]);
    let peer = Peer::start();
    let started = Instant::now();
    let (ok, out) = run(&server, &peer, &["-t"], 5, 100);
    let took = started.elapsed();
    assert_zero_loss(ok, &out, 5 * 100);
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("100 TCP clients from one address finished in {took:?}");
    let ok = "callrelay_turn_allocations_total{result=\"ok\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metric_strict(ok) < 100.0 {
        assert!(Instant::now() < deadline, "{}", server.metrics_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        server.metric_strict("callrelay_turn_rate_limit_closed_total"),
        0.0
    );
    assert_eq!(
        server.metric_strict("callrelay_turn_quota_rejections_total{kind=\"rate_limit\"}"),
        0.0
    );
}

#[test]
fn tcp_channels_and_indications_zero_loss() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let peer = Peer::start();
    let (ok, out) = run(&server, &peer, &["-t"], 20, 2);
    assert_zero_loss(ok, &out, 40);
    let (ok, out) = run(&server, &peer, &["-t", "-s"], 20, 2);
    assert_zero_loss(ok, &out, 40);
    let v = server.wait_metric(
        "callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"tcp\"}",
        |v| v >= 80.0,
    );
    assert!(v >= 80.0, "{v}");
    // uclient closes its TCP connections: their allocations are gone. Wait first for the
    // report that counts them (the gauge in the same report is then newer than their
    // creation), or waiting for 0 could read the gauge from before they existed.
    let made = server.wait_metric("callrelay_turn_allocations_total{result=\"ok\"}", |v| {
        v >= 4.0
    });
    assert!(made >= 4.0, "{made}");
    let active = server.wait_metric(
        "callrelay_turn_allocations_active{transport=\"tcp\"}",
        |v| v == 0.0,
    );
    assert_eq!(active, 0.0);
}

/// Self-signed certificate via the openssl CLI (test only; the server itself uses rustls).
pub fn self_signed(dir: &TempDir) -> (String, String) {
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl CLI must be installed to make a test certificate")
        .success();
    assert!(ok);
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[test]
fn tls_channels_and_indications_zero_loss() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(&dir);
    let tls_port = free_port();
    let tls = format!("127.0.0.1:{tls_port}");
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--tls-listen",
        &tls,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    let peer = Peer::start();
    let port = tls_port.to_string();
    let peer_port = peer.1.to_string();
    for mode in [&[][..], &["-s"][..]] {
        let mut args = vec![
            "-t",
            "-S",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-p",
            &port,
            "-n",
            "20",
            "-m",
            "2",
            "-z",
            "5",
            "-W",
            SECRET,
            "-u",
            "alice",
        ];
        args.extend_from_slice(mode);
        args.push("127.0.0.1");
        let (ok, out) = uclient(&args);
        assert_zero_loss(ok, &out, 40);
    }
    let v = server.wait_metric(
        "callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"tls\"}",
        |v| v >= 80.0,
    );
    assert!(v >= 80.0, "{v}");
}

#[test]
fn wrong_and_expired_credentials_fail() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let peer = Peer::start();
    let port = server.port.to_string();
    let peer_port = peer.1.to_string();
    let base = |user: &str, auth: &[&str]| {
        let mut a: Vec<String> = [
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-p",
            &port,
            "-n",
            "5",
            "-m",
            "1",
            "-z",
            "5",
            "-c",
            "-u",
            user,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(auth.iter().map(|s| s.to_string()));
        a.push("127.0.0.1".into());
        a
    };
    let call = |a: Vec<String>| uclient(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // Wrong shared secret.
    let (ok, out) = call(base("alice", &["-W", "not-the-secret"]));
    assert!(!ok, "wrong secret must fail:\n{out}");
    assert!(
        server.wait_metric(
            "callrelay_turn_auth_failures_total{reason=\"bad_integrity\"}",
            |v| v >= 1.0
        ) >= 1.0
    );

    // REST credentials minted by hand (uclient -u/-w): valid ones work (control) ...
    let good_user = format!("{}:alice", unix_now() + 3600);
    let good_pw = common::rest_password(SECRET.as_bytes(), &good_user);
    let (ok, out) = call(base(&good_user, &["-w", &good_pw]));
    assert!(ok, "valid REST credentials must work:\n{out}");
    assert_eq!(totals(&out).0, totals(&out).1, "{out}");
    // ... the same kind of credentials, expired, fail.
    let old_user = format!("{}:alice", unix_now() - 10);
    let old_pw = common::rest_password(SECRET.as_bytes(), &old_user);
    let (ok, out) = call(base(&old_user, &["-w", &old_pw]));
    assert!(!ok, "expired credentials must fail:\n{out}");
    assert!(
        server.wait_metric(
            "callrelay_turn_auth_failures_total{reason=\"expired\"}",
            |v| v >= 1.0
        ) >= 1.0
    );
    let _ = REALM;
}

#[test]
fn rfc6062_tcp_relay_zero_loss() {
    // -T: TCP relay (RFC 6062), client-to-client: one client Connects to the other's
    // relayed address, which sees a ConnectionAttempt; both ConnectionBind a data connection.
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let port = server.port.to_string();
    let (ok, out) = uclient(&[
        "-T",
        "-p",
        &port,
        "-n",
        "20",
        "-m",
        "2",
        "-z",
        "5",
        "-W",
        SECRET,
        "-u",
        "alice",
        "127.0.0.1",
    ]);
    assert_zero_loss(ok, &out, 40);
    assert!(
        server.wait_metric("callrelay_turn_requests_total{method=\"connect\"}", |v| v
            >= 1.0)
            >= 1.0
    );
    assert!(server.metric("callrelay_turn_requests_total{method=\"connection_bind\"}") >= 2.0);
    // uclient closed its data connections: their bytes are counted (40 x 100 each way).
    let up = server.wait_metric(
        "callrelay_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"tcp\"}",
        |v| v >= 4000.0,
    );
    assert!(up >= 4000.0, "{up}");
    // Without the loopback exception the Connect is forbidden and nothing flows.
    let closed = Server::start(&[]);
    let port = closed.port.to_string();
    let (ok, out) = uclient(&[
        "-T",
        "-p",
        &port,
        "-n",
        "5",
        "-m",
        "1",
        "-z",
        "5",
        "-W",
        SECRET,
        "-u",
        "alice",
        "127.0.0.1",
    ]);
    let (_, recv) = totals(&out);
    assert!(!ok || recv == 0, "loopback peer must be denied:\n{out}");
    assert!(
        closed.wait_metric(
            "callrelay_turn_denied_peers_total{class=\"loopback\"}",
            |v| v >= 1.0
        ) >= 1.0
    );
}

/// SHA-256 fingerprint of the certificate a TLS listener serves (openssl CLI).
fn served_fingerprint(port: u16) -> String {
    let connect = format!("127.0.0.1:{port}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | timeout 10 openssl s_client -connect {connect} 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn file_fingerprint(cert: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = TempDir::new("tls-reload");
    let (cert, key) = self_signed(&dir);
    let first = file_fingerprint(&cert);
    let tls_port = free_port();
    let tls = format!("127.0.0.1:{tls_port}");
    let cfg = dir.0.join("turn.toml");
    std::fs::write(
        &cfg,
        format!("auth_secret = [\"{SECRET}\"]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
    )
    .unwrap();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let server = Server::start(&["--config", &cfg_s, "--tls-listen", &tls]);
    assert_eq!(served_fingerprint(tls_port), first);
    // Renew the certificate in place (as an ACME hook would), then SIGHUP.
    let renewed = TempDir::new("tls-renewed");
    let (c2, k2) = self_signed(&renewed);
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let second = file_fingerprint(&cert);
    assert_ne!(first, second);
    server.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .log
        .lock()
        .unwrap()
        .contains("configuration reloaded")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        served_fingerprint(tls_port),
        second,
        "new connections get the renewed certificate"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn client_to_client_through_two_relays() {
    // -y: each client sends to the other client's relayed address, the one-to-one call
    // shape (delivered in process when both allocations sit on the same worker).
    let server = Server::start(&["--allow-peer", "127.0.0.1/32"]);
    let port = server.port.to_string();
    for extra in [&[][..], &["-s"][..]] {
        let mut args = vec![
            "-y", "-p", &port, "-n", "20", "-m", "2", "-z", "5", "-W", SECRET, "-u", "alice",
        ];
        args.extend_from_slice(extra);
        args.push("127.0.0.1");
        let (ok, out) = uclient(&args);
        // 2 pairs of clients, each with an RTP and an RTCP allocation, 20 messages each.
        assert_zero_loss(ok, &out, 80);
    }
}
