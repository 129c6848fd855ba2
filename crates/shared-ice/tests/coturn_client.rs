//! A real, independent TURN client against shared-ice: coturn's `turnutils_uclient`
//! (Debian `coturn`) talks to a minimal responder written with shared-ice on
//! 127.0.0.1. Its TURN REST credentials (`-W secret`) are minted by coturn, so this
//! checks that credentials minted by another implementation verify with
//! `RestSecrets::authenticate`, that coturn's requests parse, and that coturn accepts
//! our responses (it only moves on to CreatePermission/ChannelBind and sends
//! ChannelData after it accepted the Allocate success; with a wrong MESSAGE-INTEGRITY
//! it does not).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shared_ice::auth::{RestSecret, RestSecrets, parse_rest_username};
use shared_ice::channel::{ChannelData, is_channel_data};
use shared_ice::stun::{
    AddressFamily, Class, Message, MessageBuilder, Method, PROTOCOL_UDP, error_code,
};

const REALM: &str = "test";
const NONCE: &str = "0123456789abcdef";
const PEER: &str = "127.0.0.1:3480";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the responder saw; asserted by the tests.
#[derive(Debug, Default)]
struct Seen {
    unauthenticated_allocates: usize,
    authenticated: Vec<Method>,
    peers: Vec<SocketAddr>,
    channel_data: usize,
    bad_integrity_rejections: usize,
}

/// Runs uclient against a shared-ice responder for at most `budget`. With
/// `corrupt_success`, Allocate success responses are signed with a wrong key.
fn run(corrupt_success: bool, budget: Duration) -> Seen {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let child = Command::new("turnutils_uclient")
        .args([
            "-u",
            "alice",
            "-W",
            "s3cret",
            "-n",
            "3",
            "-c",
            "-e",
            "127.0.0.1",
            "-r",
            "3480",
        ])
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_uclient not found: install Debian package coturn (scripts/test does)");
    let _child = Killed(child);

    let secrets = RestSecrets::new([RestSecret::new("rotated-out"), RestSecret::new("s3cret")]);
    let mut seen = Seen::default();
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(1500);
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline && seen.channel_data < 3 {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let pkt = &buf[..n];
        if pkt.first().is_some_and(|b| is_channel_data(*b)) {
            let cd = ChannelData::parse(pkt).unwrap();
            assert_eq!(cd.data().len(), 100, "uclient's default message length");
            seen.channel_data += 1;
            continue;
        }
        let m = Message::parse(pkt).unwrap();
        assert!(m.check_fingerprint(), "coturn adds FINGERPRINT");
        if m.class() == Class::Indication {
            continue; // Send indications are not used with channels, but harmless.
        }
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.unknown_comprehension_required().count(), 0, "{m:?}");
        out.clear();
        if !m.has_integrity() {
            assert_eq!(m.method(), Method::ALLOCATE);
            assert_eq!(m.requested_transport().unwrap(), Some(PROTOCOL_UDP));
            assert_eq!(
                m.requested_address_family().unwrap(),
                Some(AddressFamily::V4)
            );
            seen.unauthenticated_allocates += 1;
            MessageBuilder::error_response(&mut out, &m, error_code::UNAUTHENTICATED)
                .realm(REALM)
                .nonce(NONCE)
                .finish_with_fingerprint()
                .unwrap();
            sock.send_to(&out, from).unwrap();
            continue;
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let auth = secrets.authenticate(&m, REALM, unix_now, 0).unwrap();
        assert_eq!(auth.secret_index, 1, "minted with the second live secret");
        let username = m.username().unwrap().unwrap();
        let (expiry, user) = parse_rest_username(username).unwrap();
        assert_eq!(user, "alice");
        assert!(expiry > unix_now);
        assert_eq!(
            (m.realm().unwrap(), m.nonce().unwrap()),
            (Some(REALM), Some(NONCE))
        );
        seen.authenticated.push(m.method());
        let b = MessageBuilder::success_response(&mut out, &m);
        let b = match m.method() {
            Method::ALLOCATE => b
                .xor_relayed_address("127.0.0.1:40000".parse().unwrap())
                .xor_mapped_address(from)
                .lifetime(600),
            Method::REFRESH => b.lifetime(m.lifetime().unwrap().unwrap_or(600)),
            Method::CREATE_PERMISSION | Method::CHANNEL_BIND => {
                for p in m.xor_peer_addresses() {
                    seen.peers.push(p.unwrap());
                }
                if m.method() == Method::CHANNEL_BIND {
                    assert!(m.channel_number().unwrap().is_some());
                }
                b
            }
            other => panic!("unexpected request {other:?}"),
        };
        let key = if corrupt_success && m.method() == Method::ALLOCATE {
            seen.bad_integrity_rejections += 1;
            [0u8; 16]
        } else {
            *auth.key.as_bytes()
        };
        let resp = b.finish_with_integrity_and_fingerprint(&key).unwrap();
        sock.send_to(resp, from).unwrap();
    }
    seen
}

#[test]
fn coturn_uclient_allocates_binds_and_relays_through_shared_ice() {
    let seen = run(false, Duration::from_secs(20));
    println!("{seen:?}");
    assert!(seen.unauthenticated_allocates >= 1);
    assert_eq!(seen.authenticated.first(), Some(&Method::ALLOCATE));
    assert!(
        seen.authenticated.contains(&Method::CHANNEL_BIND)
            || seen.authenticated.contains(&Method::CREATE_PERMISSION),
        "coturn never moved past Allocate: {seen:?}"
    );
    // uclient binds the peer given with -e/-r and the next port (its RTCP twin).
    let peer: SocketAddr = PEER.parse().unwrap();
    assert!(seen.peers.contains(&peer), "{seen:?}");
    assert!(
        seen.peers
            .iter()
            .all(|p| p.ip() == peer.ip() && (3480..=3481).contains(&p.port()))
    );
    assert_eq!(seen.channel_data, 3, "{seen:?}");
}

#[test]
fn coturn_uclient_rejects_a_success_with_bad_integrity() {
    let seen = run(true, Duration::from_secs(6));
    println!("{seen:?}");
    assert!(seen.bad_integrity_rejections >= 1);
    assert!(
        seen.authenticated.iter().all(|m| *m == Method::ALLOCATE),
        "coturn accepted a forged Allocate success: {seen:?}"
    );
    assert_eq!(seen.channel_data, 0);
}
