//! `user_quota` against the real binary (issue 11 item 4): it counts the user part of TURN
//! REST usernames, so freshly minted credentials of one user share it (webrtc-rs client),
//! and the second port an EVEN-PORT reservation holds counts against it (raw client: no
//! independent client sends EVEN-PORT).
mod common;

use std::sync::Arc;

use common::raw::RawClient;
use common::{REALM, SECRET, Server, unix_now};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};

fn rest(expiry: u64, user: &str) -> (String, String) {
    common::rest_credentials(SECRET.as_bytes(), expiry, user)
}

async fn webrtc_client(server: &Server, username: &str, password: &str) -> Client {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = server.addr().to_string();
    let c = Client::new(ClientConfig {
        stun_serv_addr: addr.clone(),
        turn_serv_addr: addr,
        username: username.into(),
        password: password.into(),
        realm: REALM.into(),
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

/// Credentials fetched again (a new expiry, as the gateway and the Calls plugin mint them)
/// do not give a user a new quota. Fails on main before 91cb051 (the quota was keyed on
/// the whole `expiry:user`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_credentials_of_one_user_share_the_quota() {
    let server = Server::start(&["--user-quota", "1"]);
    let (u1, p1) = rest(unix_now() + 3600, "alice");
    let (u2, p2) = rest(unix_now() + 3601, "alice");
    let (u3, p3) = rest(unix_now() + 3602, "bob");
    let c1 = webrtc_client(&server, &u1, &p1).await;
    let first = c1.allocate().await;
    assert!(first.is_ok(), "alice's first allocation: {:?}", first.err());
    let c2 = webrtc_client(&server, &u2, &p2).await;
    let second = c2.allocate().await;
    let err = second
        .err()
        .expect("alice's second allocation is over user_quota = 1");
    assert!(err.to_string().contains("486"), "{err}");
    let c3 = webrtc_client(&server, &u3, &p3).await;
    assert!(c3.allocate().await.is_ok(), "bob is not affected");
    assert_eq!(
        server.wait_metric(
            "callrelay_turn_quota_rejections_total{kind=\"user_allocations\"}",
            |v| v >= 1.0
        ),
        1.0
    );
    for c in [c1, c2, c3] {
        c.close().await.unwrap();
    }
    drop(first);
    assert_eq!(server.stop(), Some(0));
}

/// The attack of the issue: allocate with EVEN-PORT (R bit) and delete the allocation, over
/// and over, from new sockets. Each round left the reserved port held for 30 s: with
/// `user_quota = 1` one user took half the port range. Now the reservation counts against
/// the quota, so the port range stays free. Fails on old main (every round succeeds and
/// the relay ports run out).
#[test]
fn even_port_reservations_cannot_hoard_relay_ports() {
    let server = Server::start(&["--user-quota", "2"]);
    let total = f64::from(server.relay.1 - server.relay.0 + 1);
    let free_series = "callrelay_turn_relay_ports_free";
    assert_eq!(server.wait_metric(free_series, |v| v == total), total);
    let (u, p) = rest(unix_now() + 3600, "mallory");
    let even_r = |c: &mut RawClient| {
        c.request(0x003, |_| {
            vec![(0x0019, vec![17, 0, 0, 0]), (0x0018, vec![0x80])]
        })
    };
    let delete = |c: &mut RawClient| {
        let a = c.request(0x004, |_| vec![(0x000D, vec![0, 0, 0, 0])]);
        assert_eq!(a.class, 2, "refresh 0: {a:?}");
    };
    let mut granted = 0;
    let mut refused = 0;
    // Bounded: 30 rounds, each one request/answer pair on loopback with a 2 s read timeout.
    for _ in 0..30 {
        let mut c = RawClient::new(server.addr(), &u, &p, REALM);
        let a = even_r(&mut c);
        match a.code {
            None => {
                assert!(a.get(0x0022).is_some(), "R bit gives a RESERVATION-TOKEN");
                granted += 1;
                delete(&mut c);
            }
            Some(486) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        (granted, refused),
        (1, 29),
        "only the first round fits user_quota = 2"
    );
    let free = server.wait_metric(free_series, |v| v == total - 1.0);
    assert_eq!(free, total - 1.0, "one reserved port held, the rest free");
    assert_eq!(
        server.metric_strict("callrelay_turn_quota_rejections_total{kind=\"user_allocations\"}"),
        29.0
    );
    // An ordinary allocation of the same user still fits beside the reservation.
    let mut c = RawClient::new(server.addr(), &u, &p, REALM);
    assert_eq!(c.allocate(1).code, None);
    assert_eq!(server.stop(), Some(0));
}
