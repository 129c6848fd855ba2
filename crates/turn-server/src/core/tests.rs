//! Deterministic scenario tests of the sans-IO core with a simulated clock.
use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use std::net::{IpAddr, SocketAddr};

use self::wire::{
    self as stun, Builder, Class, Message, TransactionId, attr, method, rest_credentials,
};
use super::allocate::MAX_BIND_RETRIES;
use super::stats::{AllocResult, AuthFail, QuotaKind};
use super::*;
use crate::policy::DenyClass;
use crate::quota::SharedQuota;

mod wire;

const UNIX0: u64 = 1_800_000_000;

struct Sim {
    core: Core<StdRng>,
    start: Instant,
    now: Instant,
    out: Vec<Vec<u8>>,
    relays: HashMap<RelayToken, SocketAddr>,
    closed: Vec<RelayToken>,
    fail_next_open: usize,
    tid: u32,
    connects: Vec<(u32, SocketAddr)>,
    splices: Vec<(FiveTuple, u32)>,
    /// Stream connections the core closed (`Command::CloseConnection`).
    closed_conns: Vec<FiveTuple>,
}

fn cfg() -> CoreConfig {
    CoreConfig {
        realm: "test".into(),
        relay_ip4: Some("192.0.2.1".parse().unwrap()),
        relay_ip6: None,
        external_ip4: None,
        external_ip6: None,
        default_lifetime: 600,
        max_lifetime: 3600,
        bandwidth: 0,
        unauth_rate: 1000,
        auth_rate: 2000,
        rate_sources: 65_536,
        rate_v6_prefix: 64,
        strict_expiry: false,
        nonce_lifetime: 600,
        permission_lifetime: PERMISSION_LIFETIME,
        channel_lifetime: CHANNEL_LIFETIME,
        nonce_key: None,
        worker: 0,
        max_permissions: 256,
        max_channels: 256,
        tx_cache_max: 65_536,
        offload: false,
    }
}

impl Sim {
    fn new(cfg: CoreConfig, policy: PeerPolicy) -> Self {
        Self::with_quota(
            cfg,
            policy,
            Arc::new(SharedQuota::new(0, 0, (40000, 40009))),
        )
    }
    fn with_quota(cfg: CoreConfig, policy: PeerPolicy, q: Arc<SharedQuota>) -> Self {
        let now = Instant::now();
        let core = Core::new(
            cfg,
            StdRng::seed_from_u64(7),
            RestSecrets::new(["s3cret".into(), "old".into()]),
            &[],
            policy,
            q,
        );
        Self {
            core,
            start: now,
            now,
            out: Vec::new(),
            relays: HashMap::new(),
            closed: Vec::new(),
            fail_next_open: 0,
            tid: 0,
            connects: Vec::new(),
            splices: Vec::new(),
            closed_conns: Vec::new(),
        }
    }
    fn unix(&self) -> u64 {
        UNIX0 + self.now.duration_since(self.start).as_secs()
    }
    fn advance(&mut self, secs: u64) {
        let target = self.now + Duration::from_secs(secs);
        // Step through every timeout like a runtime would.
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= target) {
            self.now = t.max(self.now);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }
    fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(Transmit::ToClient { data, .. }) = self.core.poll_transmit() {
                self.out.push(data);
                any = true;
            }
            while let Some(c) = self.core.poll_command() {
                any = true;
                match c {
                    Command::OpenRelaySocket { relay, bind } => {
                        let ok = if self.fail_next_open > 0 {
                            self.fail_next_open -= 1;
                            false
                        } else {
                            true
                        };
                        if ok {
                            self.relays.insert(relay, bind);
                        }
                        self.core.relay_opened(self.now, relay, ok);
                    }
                    Command::CloseRelaySocket { relay } => {
                        self.relays.remove(&relay);
                        self.closed.push(relay);
                    }
                    Command::CloseConnection { client } => self.closed_conns.push(client),
                    Command::OpenTcpRelay { relay, bind } => {
                        self.relays.insert(relay, bind);
                        self.core.relay_opened(self.now, relay, true);
                    }
                    Command::ConnectPeer { conn_id, peer, .. } => {
                        self.connects.push((conn_id, peer))
                    }
                    Command::SpliceData { client, conn_id } => self.splices.push((client, conn_id)),
                }
            }
            if !any {
                break;
            }
        }
    }
    fn input(&mut self, from: FiveTuple, buf: &[u8]) -> Option<Relay> {
        let unix = self.unix();
        let r = self.core.handle_input(self.now, unix, from, buf);
        self.drain();
        r
    }
    fn next_tid(&mut self) -> TransactionId {
        // Unique for 2^32 requests (floods must not hit the transaction cache).
        self.tid += 1;
        let mut t = [self.tid as u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        TransactionId(t)
    }
}

fn client(port: u16) -> FiveTuple {
    FiveTuple {
        proto: Proto::Udp,
        local: "192.0.2.1:3478".parse().unwrap(),
        remote: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
    }
}

#[derive(Clone)]
struct Creds {
    user: String,
    pass: String,
    nonce: Option<Vec<u8>>,
}

impl Creds {
    fn rest(secret: &[u8], expiry: u64) -> Self {
        let (user, pass) = rest_credentials(secret, expiry, "alice");
        Self {
            user,
            pass,
            nonce: None,
        }
    }
    fn key(&self) -> [u8; 16] {
        shared_ice::auth::long_term_key(&self.user, "test", &self.pass)
    }
}

/// Builds a request; `attrs` adds method attributes; auth added when creds have a nonce.
fn request(
    tid: TransactionId,
    m: u16,
    creds: Option<&Creds>,
    fp: bool,
    attrs: impl FnOnce(&mut Builder<'_>),
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = Builder::new(&mut out, m, Class::Request, tid);
    attrs(&mut b);
    let mut key = None;
    if let Some(c) = creds
        && let Some(n) = &c.nonce
    {
        b.attr(attr::USERNAME, c.user.as_bytes());
        b.attr(attr::REALM, b"test");
        b.attr(attr::NONCE, n);
        key = Some(c.key());
    }
    assert!(b.finish(key.as_ref().map(|k| &k[..]), fp));
    out
}

fn last(sim: &mut Sim) -> Vec<u8> {
    assert!(!sim.out.is_empty(), "no answer");
    sim.out.remove(0)
}

fn error_code(m: &Message<'_>) -> Option<u16> {
    m.get(attr::ERROR_CODE)
        .map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
}

/// Full Allocate with the 401 round trip; returns the relayed address.
fn allocate(sim: &mut Sim, from: FiveTuple, creds: &mut Creds) -> SocketAddr {
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, None, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(from, &r);
    let ans = last(sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(error_code(&m), Some(401));
    assert!(m.has(attr::FINGERPRINT), "client used FINGERPRINT");
    assert_eq!(m.get(attr::REALM), Some(&b"test"[..]));
    creds.nonce = Some(m.get(attr::NONCE).unwrap().to_vec());
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, Some(creds), true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(from, &r);
    let ans = last(sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(
        m.class,
        Class::Success,
        "allocate failed: {:?}",
        error_code(&m)
    );
    assert!(m.integrity_ok(&creds.key()));
    assert!(m.fingerprint_ok() && m.has(attr::FINGERPRINT));
    assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
    assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(from.remote));
    // Retransmission gets the identical answer.
    sim.input(from, &r);
    assert_eq!(last(sim), ans);
    m.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap()
}

/// A ChannelBind of channel `n` to `peer`; its error code, if any.
fn channel_bind(
    sim: &mut Sim,
    from: FiveTuple,
    creds: &Creds,
    n: u32,
    peer: SocketAddr,
) -> Option<u16> {
    simple(sim, from, creds, method::CHANNEL_BIND, |b| {
        b.u32_attr(attr::CHANNEL_NUMBER, n << 16);
        b.xor_addr(attr::XOR_PEER_ADDRESS, peer);
    })
}

fn simple(
    sim: &mut Sim,
    from: FiveTuple,
    creds: &Creds,
    m: u16,
    attrs: impl FnOnce(&mut Builder<'_>),
) -> Option<u16> {
    let tid = sim.next_tid();
    let r = request(tid, m, Some(creds), false, attrs);
    sim.input(from, &r);
    let ans = last(sim);
    let msg = Message::parse(&ans).unwrap();
    assert_eq!(msg.tid, tid);
    if msg.class == Class::Success {
        assert!(msg.integrity_ok(&creds.key()));
        None
    } else {
        error_code(&msg)
    }
}

fn peer() -> SocketAddr {
    "203.0.113.9:5000".parse().unwrap()
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn cached_keys_follow_secrets_and_expiry() {
    // The per-username key cache (one username shared by every Mattermost user of a day)
    // must never outlive the secret that produced the key, nor the username's expiry.
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 100);
    allocate(&mut sim, client(1), &mut a);
    // Same username from another client: served (from the cache).
    let mut b = Creds::rest(b"s3cret", UNIX0 + 100);
    allocate(&mut sim, client(2), &mut b);
    // A wrong password for the same username still fails with a cached key around.
    let mut bad = Creds {
        pass: "d3JvbmcK".into(),
        ..Creds::rest(b"s3cret", UNIX0 + 100)
    };
    bad.nonce = b.nonce.clone();
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, Some(&bad), false, |bb| {
        bb.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(client(3), &r);
    assert_eq!(
        error_code(&Message::parse(&last(&mut sim)).unwrap()),
        Some(401)
    );
    // The username expires: a new allocation with the cached key is refused.
    sim.advance(101);
    let mut c = Creds::rest(b"s3cret", UNIX0 + 100);
    c.nonce = None;
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, None, false, |bb| {
        bb.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(client(4), &r);
    c.nonce = Some(
        Message::parse(&last(&mut sim))
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .to_vec(),
    );
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, Some(&c), false, |bb| {
        bb.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(client(4), &r);
    assert_eq!(
        error_code(&Message::parse(&last(&mut sim)).unwrap()),
        Some(401),
        "expired username served from the cache"
    );
    // SIGHUP drops the secret: a key cached under it no longer opens anything.
    let mut d = Creds::rest(b"s3cret", UNIX0 + 10_000);
    allocate(&mut sim, client(5), &mut d);
    sim.core
        .set_credentials(RestSecrets::new(["other".into()]), &[]);
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, Some(&d), false, |bb| {
        bb.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(client(6), &r);
    assert_eq!(
        error_code(&Message::parse(&last(&mut sim)).unwrap()),
        Some(401),
        "removed secret's key served from the cache"
    );
}

#[test]
fn allocate_refresh_expiry_channel_rebind() {
    let mut c0 = cfg();
    c0.nonce_lifetime = 7200;
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let c = client(1111);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    let relayed = allocate(&mut sim, c, &mut creds);
    assert_eq!(relayed.ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
    assert!((40000..=40009).contains(&relayed.port()));
    let token = *sim.relays.keys().next().unwrap();

    // No permission yet: data from the peer is dropped, ChannelData on an unbound channel too.
    assert_eq!(
        sim.core.handle_peer_data(sim.now, token, peer(), b"hi"),
        None
    );
    assert_eq!(sim.input(c, &channel_data(0x4000, b"x")), None);

    // ChannelBind installs channel + permission.
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4000, peer()), None);
    let cd = channel_data(0x4000, b"hello");
    assert_eq!(
        sim.input(c, &cd),
        Some(Relay::ToPeer {
            relay: token,
            peer: peer(),
            payload: 4..9
        })
    );
    assert_eq!(
        sim.core.handle_peer_data(sim.now, token, peer(), b"abc"),
        Some(Relay::ToClient {
            client: c,
            header: [0x40, 0, 0, 3],
            padding: 0
        })
    );
    assert_eq!(sim.core.stats().packets[0][0], 1);
    assert_eq!(sim.core.stats().packets[1][0], 1);

    // Refresh at 500 s keeps the allocation past 600 s.
    sim.advance(500);
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 3600);
        }),
        None
    );
    // The channel (600 s) still works at 550 s, permission (300 s) was not refreshed → dropped.
    sim.advance(50);
    assert_eq!(sim.input(c, &cd), None, "permission expired at 300 s");
    // Rebinding the same channel refreshes the permission.
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4000, peer()), None);
    assert!(sim.input(c, &cd).is_some());
    // Channel 0x4000 is bound to peer(): binding it to another peer fails; so does binding
    // peer() to another number.
    let other: SocketAddr = "203.0.113.10:5000".parse().unwrap();
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4000, other), Some(400));
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4001, peer()), Some(400));
    // Let the channel expire (600 s after the rebind) but stay within the 300 s cool-down:
    // still reserved for its peer.
    sim.advance(610);
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 3600);
        }),
        None
    );
    assert_eq!(sim.input(c, &cd), None, "channel expired");
    assert_eq!(
        channel_bind(&mut sim, c, &creds, 0x4000, other),
        Some(400),
        "number reserved during cool-down"
    );
    // After the cool-down the number can be bound to a new peer.
    sim.advance(300);
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4000, other), None);

    // Refresh 0 deletes: the relay socket closes and the port returns.
    let free_before = sim.core.gauges(sim.now).relay_ports_free;
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 0);
        }),
        None
    );
    assert_eq!(sim.closed, vec![token]);
    assert_eq!(sim.core.gauges(sim.now).relay_ports_free, free_before + 1);
    assert_eq!(sim.core.allocation_count(), 0);
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 600);
        }),
        Some(437)
    );
}

#[test]
fn allocation_expires_without_refresh() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(1);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    allocate(&mut sim, c, &mut creds);
    sim.advance(599);
    assert_eq!(sim.core.allocation_count(), 1);
    assert!(sim.closed.is_empty());
    sim.advance(2);
    assert_eq!(sim.core.allocation_count(), 0);
    assert_eq!(sim.closed.len(), 1);
    assert_eq!(sim.core.gauges(sim.now).relay_ports_free, 10);
}

#[test]
fn call_outlives_its_credentials_unless_strict() {
    for strict in [false, true] {
        let mut c2 = cfg();
        c2.strict_expiry = strict;
        c2.nonce_lifetime = 3600;
        let mut sim = Sim::new(c2, PeerPolicy::default());
        let c = client(2);
        // Credentials valid for 100 s more.
        let mut creds = Creds::rest(b"old", UNIX0 + 100);
        allocate(&mut sim, c, &mut creds);
        sim.advance(200);
        let r = simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        });
        if strict {
            assert_eq!(r, Some(401));
        } else {
            assert_eq!(
                r, None,
                "expired REST credentials keep working on their allocation"
            );
            assert_eq!(
                simple(&mut sim, c, &creds, method::REFRESH, |b| {
                    b.u32_attr(attr::LIFETIME, 600);
                }),
                None
            );
        }
        // A new allocation with the expired username is refused.
        let c3 = client(3);
        let tid = sim.next_tid();
        sim.input(
            c3,
            &request(tid, method::ALLOCATE, Some(&creds), false, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            }),
        );
        let ans = last(&mut sim);
        assert_eq!(error_code(&Message::parse(&ans).unwrap()), Some(401));
        assert!(sim.core.stats().auth_failures[AuthFail::Expired as usize] >= 1);
    }
}

#[test]
fn auth_failures() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(4);
    let mut good = Creds::rest(b"s3cret", UNIX0 + 1000);
    // Get a nonce.
    let tid = sim.next_tid();
    sim.input(
        c,
        &request(tid, method::ALLOCATE, None, false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
    );
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    assert!(
        !m.has(attr::FINGERPRINT),
        "no FINGERPRINT when the client does not use it"
    );
    assert!(!m.has(attr::SOFTWARE));
    good.nonce = Some(m.get(attr::NONCE).unwrap().to_vec());
    let alloc = |sim: &mut Sim, cr: &Creds| {
        let tid = sim.next_tid();
        sim.input(
            c,
            &request(tid, method::ALLOCATE, Some(cr), false, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            }),
        );
        let a = last(sim);
        error_code(&Message::parse(&a).unwrap())
    };
    let mut wrong = good.clone();
    wrong.pass = "nope".into();
    assert_eq!(alloc(&mut sim, &wrong), Some(401));
    let mut unknown_secret = Creds::rest(b"other", UNIX0 + 1000);
    unknown_secret.nonce = good.nonce.clone();
    assert_eq!(alloc(&mut sim, &unknown_secret), Some(401));
    let mut bad_user = good.clone();
    bad_user.user = "alice".into();
    assert_eq!(alloc(&mut sim, &bad_user), Some(401));
    let mut stale = good.clone();
    stale.nonce = Some(b"00000001aaaaaaaaaaaaaaaa".to_vec());
    assert_eq!(alloc(&mut sim, &stale), Some(438));
    // Nonces expire: after nonce_lifetime the same nonce gets 438, with a fresh one in it.
    sim.advance(601);
    assert_eq!(alloc(&mut sim, &good), Some(438));
    let s = sim.core.stats();
    assert_eq!(s.auth_failures[AuthFail::BadIntegrity as usize], 2);
    assert_eq!(s.auth_failures[AuthFail::BadUsername as usize], 1);
    assert_eq!(s.auth_failures[AuthFail::StaleNonce as usize], 2);
    assert_eq!(s.allocations[AllocResult::Unauthorized as usize], 6);
    // The old (second) secret still works: rotation does not drop anyone.
    let mut rotated = Creds::rest(b"old", UNIX0 + 5000);
    allocate(&mut sim, c, &mut rotated);
}

#[test]
fn error_codes() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(5);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, c, &mut creds);
    // 437: second Allocate on the same 5-tuple.
    assert_eq!(
        simple(&mut sim, c, &creds, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(437)
    );
    let c2 = client(6);
    let a2 = |sim: &mut Sim, f: &dyn Fn(&mut Builder<'_>)| {
        simple(sim, c2, &creds, method::ALLOCATE, |b| f(b))
    };
    // 400 missing REQUESTED-TRANSPORT; 442 SCTP; 400 TCP relay over UDP (RFC 6062 §5.1);
    // 440 IPv6 without an IPv6 relay; 400 conflicts.
    assert_eq!(a2(&mut sim, &|_| {}), Some(400));
    assert_eq!(
        a2(&mut sim, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        }),
        Some(400)
    );
    assert_eq!(
        a2(&mut sim, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
        }),
        Some(442)
    );
    assert_eq!(
        a2(&mut sim, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
        Some(440)
    );
    assert_eq!(
        a2(&mut sim, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::EVEN_PORT, &[0x80]);
            b.attr(attr::RESERVATION_TOKEN, &[0; 8]);
        }),
        Some(400)
    );
    // 420 unknown comprehension-required attribute.
    assert_eq!(
        a2(&mut sim, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(0x7777, &[1, 2, 3, 4]);
        }),
        Some(420)
    );
    // 441: another user on this allocation's 5-tuple.
    let mut other = Creds::rest(b"s3cret", UNIX0 + 999);
    other.nonce = creds.nonce.clone();
    assert_eq!(
        simple(&mut sim, c, &other, method::REFRESH, |_| {}),
        Some(441)
    );
    // 443 family mismatch, 403 forbidden peers, 400 bad channel numbers.
    assert_eq!(
        simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, "[2001:db8::1]:1".parse().unwrap());
        }),
        Some(443)
    );
    assert_eq!(
        simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, "127.0.0.1:1".parse().unwrap());
        }),
        Some(403)
    );
    assert_eq!(
        simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
            b.xor_addr(
                attr::XOR_PEER_ADDRESS,
                "169.254.169.254:80".parse().unwrap(),
            );
        }),
        Some(403),
        "one denied peer fails the whole request"
    );
    assert_eq!(sim.core.gauges(sim.now).permissions, 0);
    for n in [0x3FFFu32, 0x8000, 0xFFFF] {
        assert_eq!(channel_bind(&mut sim, c, &creds, n, peer()), Some(400));
    }
    assert_eq!(sim.core.stats().denied[DenyClass::Loopback.index()], 1);
    assert_eq!(sim.core.stats().denied[DenyClass::LinkLocal.index()], 1);
    // Connect on a UDP allocation.
    assert_eq!(
        simple(&mut sim, c, &creds, method::CONNECT, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        }),
        Some(400)
    );
}

#[test]
fn quotas_and_capacity() {
    let q = Arc::new(SharedQuota::new(2, 3, (40000, 40001)));
    let mut sim = Sim::with_quota(cfg(), PeerPolicy::default(), q.clone());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, client(10), &mut a);
    allocate(&mut sim, client(11), &mut a);
    // Third for the same user → 486.
    assert_eq!(
        simple(&mut sim, client(12), &a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(486)
    );
    // Another user: ports exhausted → 508.
    let (u, p) = rest_credentials(b"s3cret", UNIX0 + 1000, "bob");
    let bob = Creds {
        user: u,
        pass: p,
        nonce: a.nonce.clone(),
    };
    assert_eq!(
        simple(&mut sim, client(13), &bob, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(508)
    );
    assert_eq!(q.total(), 2, "a refused allocation gives its quota back");
    let s = sim.core.stats();
    assert_eq!(s.quota[QuotaKind::User as usize], 1);
    assert_eq!(s.quota[QuotaKind::RelayPorts as usize], 1);
    assert_eq!(s.allocations[AllocResult::Quota as usize], 1);
    assert_eq!(s.allocations[AllocResult::Capacity as usize], 1);
}

#[test]
fn user_quota_counts_the_user_not_each_credential() {
    // Mattermost's Calls plugin (and the gateway) mint "<now + ttl>:<user>": every fetch
    // has a new expiry. The quota is per user, so it must count these together (it
    // counted each whole username on its own before, and never refused anything).
    let q = Arc::new(SharedQuota::new(2, 0, (40000, 40009)));
    let mut sim = Sim::with_quota(cfg(), PeerPolicy::default(), q.clone());
    let mut a1 = Creds::rest(b"s3cret", UNIX0 + 1000);
    let mut a2 = Creds::rest(b"s3cret", UNIX0 + 1001);
    allocate(&mut sim, client(30), &mut a1);
    allocate(&mut sim, client(31), &mut a2);
    let (u, p) = rest_credentials(b"s3cret", UNIX0 + 1002, "alice");
    let a3 = Creds {
        user: u,
        pass: p,
        nonce: a1.nonce.clone(),
    };
    assert_eq!(
        simple(&mut sim, client(32), &a3, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(486),
        "a third allocation of alice under a fresh credential is over her quota of 2"
    );
    // Another user is not affected.
    let (u, p) = rest_credentials(b"s3cret", UNIX0 + 1002, "bob");
    let mut bob = Creds {
        user: u,
        pass: p,
        nonce: None,
    };
    allocate(&mut sim, client(33), &mut bob);
    // Deleting one of alice's allocations gives her quota back.
    assert_eq!(
        simple(&mut sim, client(30), &a1, method::REFRESH, |b| {
            b.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        }),
        None
    );
    allocate(&mut sim, client(34), &mut a1.clone());
    assert_eq!(q.total(), 3);
}

#[test]
fn busy_port_retries_and_even_port_reservation() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    sim.fail_next_open = 2;
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, client(20), &mut a);
    assert_eq!(sim.relays.len(), 1);
    // EVEN-PORT with R bit: even port, token reserving port+1.
    let c = client(21);
    let tid = sim.next_tid();
    sim.input(
        c,
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::EVEN_PORT, &[0x80]);
        }),
    );
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    let port = m.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    let token = m.get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    let c2 = client(22);
    let tid = sim.next_tid();
    sim.input(
        c2,
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::RESERVATION_TOKEN, &token);
        }),
    );
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(
        m.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        port + 1
    );
}

#[test]
fn busy_ports_go_back_to_the_pool() {
    // A bind that fails (the port still held by a socket being closed, or by another
    // program) must not cost the pool that port for good: 30 allocate/delete cycles
    // on a 10-port pool, each with one busy port first, all succeed and leave it full.
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let full = sim.core.gauges(sim.now).relay_ports_free;
    assert_eq!(full, 10);
    for i in 0..30 {
        sim.fail_next_open = 1;
        let c = client(100 + i);
        allocate(&mut sim, c, &mut a);
        assert_eq!(
            sim.core.gauges(sim.now).relay_ports_free,
            full - 1,
            "cycle {i}"
        );
        assert_eq!(
            simple(&mut sim, c, &a, method::REFRESH, |b| {
                b.u32_attr(attr::LIFETIME, 0);
            }),
            None
        );
        assert_eq!(sim.core.gauges(sim.now).relay_ports_free, full, "cycle {i}");
    }
    // Every port busy (another program holds the range): 508 after a bounded number
    // of tries, and the pool is whole again.
    sim.fail_next_open = 1000;
    assert_eq!(
        simple(&mut sim, client(200), &a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(508)
    );
    assert_eq!(1000 - sim.fail_next_open, usize::from(MAX_BIND_RETRIES) + 1);
    assert_eq!(sim.core.gauges(sim.now).relay_ports_free, full);
    sim.fail_next_open = 0;
    allocate(&mut sim, client(201), &mut a);
}

#[test]
fn send_and_data_indications_and_external_ip() {
    let mut c = cfg();
    c.external_ip4 = Some("203.0.113.200".parse().unwrap());
    let mut sim = Sim::new(c, PeerPolicy::default());
    let cl = client(30);
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let relayed = allocate(&mut sim, cl, &mut a);
    assert_eq!(relayed.ip(), "203.0.113.200".parse::<IpAddr>().unwrap());
    let token = *sim.relays.keys().next().unwrap();
    assert_eq!(
        sim.relays[&token].ip(),
        "192.0.2.1".parse::<IpAddr>().unwrap()
    );
    let send = |sim: &mut Sim| {
        let tid = sim.next_tid();
        let mut out = Vec::new();
        let mut b = Builder::new(&mut out, method::SEND, Class::Indication, tid);
        b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        b.attr(attr::DATA, b"payload!");
        assert!(b.finish(None, true));
        let r = sim.input(cl, &out);
        (r, out)
    };
    assert_eq!(send(&mut sim).0, None, "no permission");
    assert_eq!(
        simple(&mut sim, cl, &a, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        }),
        None
    );
    let (r, buf) = send(&mut sim);
    let Some(Relay::ToPeer { payload, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(&buf[payload], b"payload!");
    // Peer data without a channel becomes a Data indication.
    assert_eq!(
        sim.core.handle_peer_data(sim.now, token, peer(), b"back"),
        None
    );
    sim.drain();
    let di = last(&mut sim);
    let m = Message::parse(&di).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Some(peer()));
    assert_eq!(m.get(attr::DATA), Some(&b"back"[..]));
    // Other IPs have no permission.
    assert_eq!(
        sim.core
            .handle_peer_data(sim.now, token, "203.0.113.99:1".parse().unwrap(), b"x"),
        None
    );
    assert!(sim.out.is_empty());
}

#[test]
fn binding_and_garbage() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(40);
    let tid = sim.next_tid();
    sim.input(c, &request(tid, method::BINDING, None, true, |_| {}));
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c.remote));
    assert!(m.fingerprint_ok() && m.has(attr::FINGERPRINT));
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x01\x00\x00\x21\x12\xa4",
        b"\x40\x00\xff\xff",
        &[0xff; 64],
        &[0u8; 20],
    ] {
        assert_eq!(sim.input(c, junk), None);
    }
    assert!(sim.out.is_empty());
    // Bad FINGERPRINT is dropped silently.
    let mut r = request(TransactionId([9; 12]), method::BINDING, None, true, |_| {});
    let n = r.len();
    r[n - 1] ^= 1;
    sim.input(c, &r);
    assert!(sim.out.is_empty());
}

#[test]
fn unauthenticated_rate_limit_and_small_answers() {
    let mut c = cfg();
    c.unauth_rate = 5;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let cl = client(50);
    let mut answered = 0;
    for i in 0..100u8 {
        let r = request(TransactionId([i; 12]), method::ALLOCATE, None, false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        sim.input(cl, &r);
        if let Some(a) = sim.out.pop() {
            answered += 1;
            // The challenge carries only ERROR-CODE, REALM, NONCE.
            assert!(a.len() <= 80, "{}", a.len());
        }
    }
    assert_eq!(answered, 10, "burst of 2x rate");
    sim.advance(1);
    sim.input(
        cl,
        &request(
            TransactionId([200; 12]),
            method::BINDING,
            None,
            false,
            |_| {},
        ),
    );
    assert_eq!(sim.out.len(), 1, "tokens refill with time");
    assert_eq!(sim.core.stats().quota[QuotaKind::RateLimit as usize], 90);
}

#[test]
fn bandwidth_bucket() {
    let mut c = cfg();
    c.bandwidth = 1000;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let cl = client(60);
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, cl, &mut a);
    assert_eq!(channel_bind(&mut sim, cl, &a, 0x4000, peer()), None);
    let cd = channel_data(0x4000, &[0u8; 100]);
    let passed = (0..20).filter(|_| sim.input(cl, &cd).is_some()).count();
    assert_eq!(passed, 10);
    assert_eq!(sim.core.stats().quota[QuotaKind::Bandwidth as usize], 10);
}

#[test]
fn bytes_the_kernel_relayed_count_against_the_bandwidth() {
    let mut c = cfg();
    c.bandwidth = 1000;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let cl = client(61);
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, cl, &mut a);
    assert_eq!(channel_bind(&mut sim, cl, &a, 0x4000, peer()), None);
    // the kernel relayed 600 of the allocation's 1000 bytes: 400 are left here
    sim.core.charge_offloaded(sim.now, cl, 600);
    let cd = channel_data(0x4000, &[0u8; 100]);
    let passed = (0..20).filter(|_| sim.input(cl, &cd).is_some()).count();
    assert_eq!(passed, 4);
    // more than a second's worth: a debt of at most one burst, repaid by the refill
    sim.core.charge_offloaded(sim.now, cl, 5000);
    sim.now += Duration::from_millis(1500);
    let passed = (0..20).filter(|_| sim.input(cl, &cd).is_some()).count();
    assert_eq!(passed, 5, "1500 ms refill minus the 1000-byte debt");
    // an unknown client: nothing to charge, nothing breaks
    sim.core.charge_offloaded(sim.now, client(62), 1000);
    // what this path relayed, for the kernel's bucket: the 9 datagrams that passed
    assert_eq!(sim.core.relayed_bytes(cl), Some(900));
    assert_eq!(sim.core.relayed_bytes(client(62)), None);
}

#[test]
fn tcp_connection_close_frees_allocation() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut cl = client(70);
    cl.proto = Proto::Tcp;
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, cl, &mut a);
    assert_eq!(sim.core.gauges(sim.now).allocations, [0, 1, 0]);
    sim.core.connection_closed(cl);
    sim.drain();
    assert_eq!(sim.core.allocation_count(), 0);
    assert_eq!(sim.closed.len(), 1);
}

#[test]
fn draining_refuses_new_allocations() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, client(80), &mut a);
    sim.core.set_draining();
    assert_eq!(
        simple(&mut sim, client(81), &a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(508)
    );
    assert_eq!(
        simple(&mut sim, client(80), &a, method::REFRESH, |_| {}),
        None,
        "existing allocations keep working"
    );
}

#[test]
fn dual_stack_and_ipv6_allocations() {
    let mut c = cfg();
    c.relay_ip6 = Some("2001:db8::1".parse().unwrap());
    let mut sim = Sim::new(c, PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let cl = client(90);
    allocate(&mut sim, cl, &mut a);
    sim.relays.clear();
    // ADDITIONAL-ADDRESS-FAMILY: one IPv4 and one IPv6 relayed address, two relay sockets.
    let c2 = client(91);
    let tid = sim.next_tid();
    sim.input(
        c2,
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
    );
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    let (addrs, err) = m.relayed_addresses();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    assert_eq!(err, None);
    assert_eq!(sim.relays.len(), 2);
    // Both families are reachable; ChannelData to an IPv6 peer leaves the IPv6 relay.
    let p6: SocketAddr = "[2001:db8:ffff::9]:7".parse().unwrap();
    assert_eq!(channel_bind(&mut sim, c2, &a, 0x4002, p6), None);
    let Some(Relay::ToPeer { relay, peer, .. }) = sim.input(c2, &channel_data(0x4002, b"v6"))
    else {
        panic!()
    };
    assert_eq!(peer, p6);
    assert!(sim.relays[&relay].is_ipv6());
    // REQUESTED-ADDRESS-FAMILY IPv6 only.
    let c3 = client(92);
    let tid = sim.next_tid();
    sim.input(
        c3,
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
    );
    let ans = last(&mut sim);
    let (addrs, _) = Message::parse(&ans).unwrap().relayed_addresses();
    assert_eq!(addrs.len(), 1);
    assert!(addrs[0].is_ipv6());
    // Without an IPv6 relay address, dual-stack degrades to IPv4 + ADDRESS-ERROR-CODE 440.
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, client(93), &mut a);
    let c4 = client(94);
    let tid = sim.next_tid();
    sim.input(
        c4,
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
    );
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(m.class, Class::Success);
    let (addrs, err) = m.relayed_addresses();
    assert_eq!(addrs.len(), 1);
    assert_eq!(err, Some(440));
}

#[test]
fn rfc6062_connect_connection_attempt_and_bind() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let tcp_alloc = |sim: &mut Sim, cl: FiveTuple, a: &Creds| {
        simple(sim, cl, a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    };
    // Prime the nonce with a UDP allocation, then: TCP relaying over UDP is refused.
    allocate(&mut sim, client(100), &mut a);
    let udp2 = client(101);
    assert_eq!(tcp_alloc(&mut sim, udp2, &a), Some(400));
    let mut ctl = client(102);
    ctl.proto = Proto::Tcp;
    assert_eq!(tcp_alloc(&mut sim, ctl, &a), None);
    let relay = *sim.relays.keys().max_by_key(|t| t.slot).unwrap();
    let connect = |sim: &mut Sim, p: SocketAddr| {
        simple(sim, ctl, &a, method::CONNECT, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, p);
        })
    };
    // Forbidden peers, then a public one: the runtime is asked to connect.
    assert_eq!(
        connect(&mut sim, "127.0.0.1:80".parse().unwrap()),
        Some(403)
    );
    let tid = sim.next_tid();
    sim.input(
        ctl,
        &request(tid, method::CONNECT, Some(&a), false, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        }),
    );
    assert!(sim.out.is_empty(), "answer waits for the TCP connect");
    let (id, p) = sim.connects.pop().unwrap();
    assert_eq!(p, peer());
    sim.core.tcp_peer_connected(sim.now, id, true);
    sim.drain();
    let ans = last(&mut sim);
    let m = Message::parse(&ans).unwrap();
    assert_eq!((m.class, m.tid), (Class::Success, tid));
    assert_eq!(m.u32_attr(attr::CONNECTION_ID), Some(id));
    assert_eq!(
        connect(&mut sim, peer()),
        Some(446),
        "one connection per peer"
    );
    // A failed connect → 447.
    let other: SocketAddr = "203.0.113.50:443".parse().unwrap();
    let tid = sim.next_tid();
    sim.input(
        ctl,
        &request(tid, method::CONNECT, Some(&a), false, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, other);
        }),
    );
    let (id2, _) = sim.connects.pop().unwrap();
    sim.core.tcp_peer_connected(sim.now, id2, false);
    sim.drain();
    assert_eq!(
        error_code(&Message::parse(&last(&mut sim)).unwrap()),
        Some(447)
    );
    // ConnectionBind on a new TCP connection splices it to the peer connection, once.
    let mut data = client(103);
    data.proto = Proto::Tcp;
    let bind = |sim: &mut Sim, from: FiveTuple, id: u32| {
        simple(sim, from, &a, method::CONNECTION_BIND, |b| {
            b.u32_attr(attr::CONNECTION_ID, id);
        })
    };
    assert_eq!(
        bind(&mut sim, ctl, id),
        Some(400),
        "not on the control connection"
    );
    assert_eq!(bind(&mut sim, data, id), None);
    assert_eq!(sim.splices, vec![(data, id)]);
    let mut data2 = client(104);
    data2.proto = Proto::Tcp;
    assert_eq!(bind(&mut sim, data2, id), Some(400), "an id binds once");
    // Incoming peer connections: only from permitted IPs, announced by ConnectionAttempt.
    assert_eq!(
        sim.core
            .tcp_peer_incoming(sim.now, relay, "198.51.100.99:5555".parse().unwrap()),
        None
    );
    let from_peer: SocketAddr = SocketAddr::new(peer().ip(), 6000);
    let id3 = sim
        .core
        .tcp_peer_incoming(sim.now, relay, from_peer)
        .expect("permitted by the Connect");
    sim.drain();
    let ind = last(&mut sim);
    let m = Message::parse(&ind).unwrap();
    assert_eq!(
        (m.method, m.class),
        (method::CONNECTION_ATTEMPT, Class::Indication)
    );
    assert_eq!(m.u32_attr(attr::CONNECTION_ID), Some(id3));
    assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Some(from_peer));
    // Unbound for 30 s: gone.
    sim.advance(31);
    assert_eq!(bind(&mut sim, data2, id3), Some(400));
}

#[test]
fn relay_to_relay_is_delivered_in_process() {
    let mut sim = Sim::new(
        cfg(),
        PeerPolicy::new(vec!["192.0.2.1/32".parse().unwrap()], vec![]),
    );
    let (ca, cb) = (client(110), client(111));
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let mut b = a.clone();
    let ra = allocate(&mut sim, ca, &mut a);
    let rb = allocate(&mut sim, cb, &mut b);
    // A talks to B's relayed address on channel 0x4000; B has no permission for A yet.
    assert_eq!(channel_bind(&mut sim, ca, &a, 0x4000, rb), None);
    assert_eq!(
        sim.input(ca, &channel_data(0x4000, b"hi")),
        None,
        "B's permission is still enforced"
    );
    // B binds channel 0x4567 to A's relayed address: A's ChannelData now reaches B in
    // process, re-headed with B's channel number, without touching a relay socket.
    assert_eq!(channel_bind(&mut sim, cb, &b, 0x4567, ra), None);
    assert_eq!(
        sim.input(ca, &channel_data(0x4000, b"hello")),
        Some(Relay::ToClient {
            client: cb,
            header: [0x45, 0x67, 0, 5],
            padding: 0
        })
    );
    let st = sim.core.stats();
    // The refused first datagram left A's relay (to_peer) like on the wire; B dropped it.
    assert_eq!(
        (st.packets[0][0], st.packets[1][0]),
        (2, 1),
        "counted both ways"
    );
    assert_eq!(st.in_process, [1, 0], "one accepted in-process delivery");
    // Without a channel on B's side, B gets a Data indication from A's relayed address.
    let mut sim2 = Sim::new(
        cfg(),
        PeerPolicy::new(vec!["192.0.2.1/32".parse().unwrap()], vec![]),
    );
    let mut a2 = Creds::rest(b"s3cret", UNIX0 + 1000);
    let mut b2 = a2.clone();
    let ra2 = allocate(&mut sim2, ca, &mut a2);
    let rb2 = allocate(&mut sim2, cb, &mut b2);
    assert_eq!(channel_bind(&mut sim2, ca, &a2, 0x4000, rb2), None);
    assert_eq!(
        simple(&mut sim2, cb, &b2, method::CREATE_PERMISSION, |bb| {
            bb.xor_addr(attr::XOR_PEER_ADDRESS, ra2);
        }),
        None
    );
    assert_eq!(sim2.input(ca, &channel_data(0x4000, b"x")), None);
    let di = last(&mut sim2);
    let m = Message::parse(&di).unwrap();
    assert_eq!(
        (m.method, m.xor_addr(attr::XOR_PEER_ADDRESS)),
        (method::DATA, Some(ra2))
    );
}

#[test]
fn relay_to_relay_across_workers_is_handed_off() {
    // Two workers (shards) sharing the quota and the relay-port owner table, as in the
    // runtime: A's allocation on worker 0, B's on worker 1.
    let q = Arc::new(SharedQuota::new(0, 0, (40000, 40009)));
    let pol = || PeerPolicy::new(vec!["192.0.2.1/32".parse().unwrap()], vec![]);
    let mut w0 = Sim::with_quota(cfg(), pol(), q.clone());
    let mut w1 = Sim::with_quota(CoreConfig { worker: 1, ..cfg() }, pol(), q.clone());
    let (ca, cb) = (client(110), client(111));
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    let mut b = a.clone();
    let ra = allocate(&mut w0, ca, &mut a);
    let rb = allocate(&mut w1, cb, &mut b);
    assert_eq!(channel_bind(&mut w0, ca, &a, 0x4000, rb), None);
    // Worker 0 does not own B's relayed address: it hands the payload to worker 1.
    let r = w0.input(ca, &channel_data(0x4000, b"hello"));
    let Some(Relay::ToWorker {
        worker,
        peer,
        src,
        payload,
        ..
    }) = r
    else {
        panic!("expected a hand-off to worker 1, got {r:?}");
    };
    assert_eq!((worker, peer, src, payload), (1, rb, ra, 4..9));
    // B has no permission for A's relayed address yet: worker 1 drops it, sends nothing.
    let now = w1.now;
    assert_eq!(w1.core.handle_relayed(now, rb, ra, b"hello"), None);
    assert!(w1.core.poll_transmit().is_none(), "nothing for B");
    assert_eq!(w1.core.stats().packets[1][0], 0);
    // B binds a channel to A: the hand-off becomes ChannelData with B's channel number.
    assert_eq!(channel_bind(&mut w1, cb, &b, 0x4567, ra), None);
    assert_eq!(
        w1.core.handle_relayed(now, rb, ra, b"hello"),
        Some(Relay::ToClient {
            client: cb,
            header: [0x45, 0x67, 0, 5],
            padding: 0
        })
    );
    assert_eq!(w0.core.stats().packets[0][0], 1, "A counts to_peer");
    let st = w1.core.stats();
    assert_eq!(
        (st.packets[1][0], st.in_process),
        (1, [0, 1]),
        "B counts to_client"
    );
    // A relayed address worker 1 does not hold (freed meanwhile): dropped.
    let gone: SocketAddr = "192.0.2.1:40099".parse().unwrap();
    assert_eq!(w1.core.handle_relayed(now, gone, ra, b"x"), None);
    // B deletes its allocation: the owner table forgets the port, and A's packets to that
    // address take the ordinary path through A's relay socket.
    assert_eq!(
        simple(&mut w1, cb, &b, method::REFRESH, |bb| {
            bb.u32_attr(attr::LIFETIME, 0);
        }),
        None
    );
    assert_eq!(w1.core.handle_relayed(now, rb, ra, b"hello"), None);
    assert!(matches!(
        w0.input(ca, &channel_data(0x4000, b"hello")),
        Some(Relay::ToPeer { peer, .. }) if peer == rb
    ));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), port in 1u16..) {
            let mut sim = Sim::new(cfg(), PeerPolicy::default());
            let _ = sim.input(client(port), &bytes);
            let mut b = bytes.clone();
            if b.len() >= 8 {
                b[0] = 0; b[1] = 3; b[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                let _ = sim.input(client(port), &b);
            }
        }

        #[test]
        fn any_lifetime_is_capped(l in any::<u32>()) {
            let mut sim = Sim::new(cfg(), PeerPolicy::default());
            let c = client(9);
            let mut a = Creds::rest(b"s3cret", UNIX0 + 10_000);
            allocate(&mut sim, c, &mut a);
            let tid = sim.next_tid();
            sim.input(c, &request(tid, method::REFRESH, Some(&a), false, |b| { b.u32_attr(attr::LIFETIME, l); }));
            let ans = last(&mut sim);
            let m = Message::parse(&ans).unwrap();
            prop_assert_eq!(m.u32_attr(attr::LIFETIME), Some(l.min(3600)));
        }
    }
}

/// RFC 8489 §6.3.1: an unknown comprehension-required attribute (type < 0x8000) gets 420
/// with UNKNOWN-ATTRIBUTES naming it, whatever the method (Binding included); an unknown
/// comprehension-optional one is ignored.
#[test]
fn unknown_comprehension_required_attribute_gets_420_for_every_method() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(70);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 1000);
    allocate(&mut sim, c, &mut creds);
    for m in [
        method::BINDING,
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::CONNECT,
        method::CONNECTION_BIND,
    ] {
        for authed in [false, true] {
            let tid = sim.next_tid();
            let r = request(tid, m, authed.then_some(&creds), true, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                b.attr(0x7777, &[1, 2, 3, 4]);
                b.attr(0x0042, &[]);
            });
            sim.input(c, &r);
            let ans = last(&mut sim);
            let msg = Message::parse(&ans).unwrap();
            assert_eq!(msg.tid, tid);
            assert_eq!((msg.method, msg.class), (m, Class::Error), "method {m:#x}");
            assert_eq!(error_code(&msg), Some(420), "method {m:#x} authed {authed}");
            assert_eq!(
                msg.get(attr::UNKNOWN_ATTRIBUTES),
                Some(&[0x77, 0x77, 0x00, 0x42][..]),
                "method {m:#x}"
            );
            assert!(msg.fingerprint_ok() && msg.has(attr::FINGERPRINT));
            assert!(sim.out.is_empty());
        }
    }
    // Comprehension-optional (>= 0x8000) unknown attributes are ignored.
    let tid = sim.next_tid();
    sim.input(
        c,
        &request(tid, method::BINDING, None, false, |b| {
            b.attr(0x8777, &[1, 2, 3, 4]);
        }),
    );
    let ans = last(&mut sim);
    let msg = Message::parse(&ans).unwrap();
    assert_eq!(msg.class, Class::Success);
    assert_eq!(msg.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c.remote));
}

/// Issue 11 item 1: a flood of unauthenticated requests from more source addresses than the
/// rate-limit table holds (spoofed UDP) must not silence new clients. With the table full
/// and the flood still running, a fresh address gets its 401 and completes an Allocate; the
/// table stays at its fixed size and counts what it replaced.
#[test]
fn rate_table_full_of_a_flood_still_answers_a_new_client() {
    let mut c = cfg();
    c.unauth_rate = 5;
    c.rate_sources = 4096;
    let table = c.rate_sources;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let flood = |sim: &mut Sim, i: u32| {
        let from = FiveTuple {
            proto: Proto::Udp,
            local: "192.0.2.1:3478".parse().unwrap(),
            remote: SocketAddr::new(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 40000),
        };
        let r = request(TransactionId([9; 12]), method::ALLOCATE, None, false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        sim.input(from, &r);
    };
    // Four times as many sources as entries: every set of the table is full.
    let sources = 4 * table as u32;
    for i in 0..sources {
        flood(&mut sim, i);
    }
    assert_eq!(sim.core.rate.capacity(), table, "the table never grows");
    assert!(
        sim.core.rate.len() >= table * 99 / 100,
        "the flood filled the table: {}",
        sim.core.rate.len()
    );
    let evicted = sim.core.stats().rate_evictions;
    assert!(evicted >= u64::from(sources) - table as u64, "{evicted}");
    sim.out.clear();
    // The flood goes on between every step of the new client's Allocate.
    let mut next = sources;
    for port in [1000u16, 1001, 1002] {
        for _ in 0..1000 {
            flood(&mut sim, next);
            next += 1;
        }
        sim.out.clear();
        let fresh = FiveTuple {
            remote: SocketAddr::new("198.51.100.200".parse().unwrap(), port),
            ..client(port)
        };
        let mut creds = Creds::rest(b"s3cret", UNIX0 + 1000);
        allocate(&mut sim, fresh, &mut creds);
        assert_eq!(sim.core.rate.capacity(), table);
    }
    assert_eq!(sim.core.allocation_count(), 3);
    assert!(sim.core.stats().rate_evictions > evicted);
}

/// IPv6 sources share an entry per /64: a flood from one /64 (a single host can use all
/// of it) takes one entry and is limited as one source, whatever addresses it cycles through.
#[test]
fn ipv6_sources_are_limited_per_prefix() {
    let mut c = cfg();
    c.unauth_rate = 5;
    c.relay_ip6 = Some("2001:db8::1".parse().unwrap());
    let mut sim = Sim::new(c, PeerPolicy::default());
    let from = |host: u64| FiveTuple {
        proto: Proto::Udp,
        local: "[2001:db8::1]:3478".parse().unwrap(),
        remote: SocketAddr::new(
            IpAddr::from((0x2001_0db8_0001_0002u128 << 64 | u128::from(host)).to_be_bytes()),
            5000,
        ),
    };
    for host in 0..1000u64 {
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&host.to_be_bytes());
        sim.input(
            from(host * 7919 + 1),
            &request(TransactionId(tid), method::BINDING, None, false, |_| {}),
        );
    }
    assert_eq!(
        sim.out.len(),
        10,
        "one /64 gets one burst (2 x unauth_rate)"
    );
    assert_eq!(sim.core.rate.len(), 1);
    assert_eq!(sim.core.stats().rate_evictions, 0);
    // Another /64 has its own budget.
    let other = FiveTuple {
        remote: "[2001:db8:1:3::1]:5000".parse().unwrap(),
        ..from(0)
    };
    sim.out.clear();
    let tid = sim.next_tid();
    sim.input(other, &request(tid, method::BINDING, None, false, |_| {}));
    assert_eq!(sim.out.len(), 1);
}

/// Cost of CreatePermission and of a relayed packet with `n` permissions installed
/// (`cargo test -p turn-server --release --lib permission_cost -- --ignored --nocapture`).
#[test]
#[ignore = "measurement, prints numbers"]
fn permission_cost() {
    for n in [256usize, 20_000] {
        let mut sim = Sim::new(cfg(), PeerPolicy::default());
        let mut a = Creds::rest(b"s3cret", UNIX0 + 100_000);
        let c = client(9);
        let relay = allocate(&mut sim, c, &mut a);
        let token = *sim.relays.keys().next().unwrap();
        let _ = relay;
        let peer_n = |i: usize| {
            SocketAddr::new(
                IpAddr::from(std::net::Ipv4Addr::from(0x0B00_0000u32 + i as u32)),
                5000,
            )
        };
        let mut installed = 0;
        for i in 0..n {
            let p = peer_n(i);
            if simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
                b.xor_addr(attr::XOR_PEER_ADDRESS, p);
            })
            .is_none()
            {
                installed += 1;
            }
        }
        let last_peer = peer_n(installed - 1);
        let t = Instant::now();
        const K: u32 = 1_000;
        for _ in 0..K {
            simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
                b.xor_addr(attr::XOR_PEER_ADDRESS, last_peer);
            });
        }
        let cp = t.elapsed() / K;
        let t = Instant::now();
        const P: u32 = 100_000;
        let now = sim.now;
        for _ in 0..P {
            std::hint::black_box(sim.core.handle_peer_data(now, token, last_peer, b"hello"));
            sim.core.transmits.clear();
        }
        let pk = t.elapsed() / P;
        eprintln!(
            "permissions requested {n}, installed {installed}: CreatePermission {cp:?}, peer packet {pk:?}"
        );
    }
}

/// Issue 11 item 3: one allocation flooding CreatePermission / ChannelBind stops at the
/// per-allocation caps with 508 (counted), atomically, and the table stays usable.
#[test]
fn permission_and_channel_tables_are_capped() {
    let c0 = CoreConfig {
        max_permissions: 256,
        max_channels: 16,
        ..cfg()
    };
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 100_000);
    let c = client(9);
    allocate(&mut sim, c, &mut a);
    let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0B00_0000u32 + i));
    let mut codes = HashMap::<Option<u16>, u32>::new();
    for i in 0..2_000 {
        let p = SocketAddr::new(ip(i), 5000);
        let r = simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, p);
        });
        *codes.entry(r).or_default() += 1;
    }
    assert_eq!(codes.get(&None), Some(&256), "{codes:?}");
    assert_eq!(codes.get(&Some(508)), Some(&(2_000 - 256)), "{codes:?}");
    assert_eq!(
        sim.core.stats().quota[QuotaKind::Permissions as usize],
        1_744
    );
    assert_eq!(sim.core.gauges(sim.now).permissions, 256);
    // Refreshing an installed permission still works at the cap; a request with one known
    // and one new peer installs neither.
    let known = SocketAddr::new(ip(3), 1);
    let new = SocketAddr::new(ip(9_999), 1);
    assert_eq!(
        simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, known);
        }),
        None
    );
    assert_eq!(
        simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, known);
            b.xor_addr(attr::XOR_PEER_ADDRESS, new);
        }),
        Some(508)
    );
    let token = *sim.relays.keys().next().unwrap();
    assert!(
        sim.core
            .handle_peer_data(sim.now, token, new, b"x")
            .is_none()
    );
    assert!(sim.core.transmits.is_empty(), "no permission for {new}");
    // ChannelBind to a known peer IP: up to max_channels, then 508 counted as channels.
    for n in 0..16u16 {
        let p = SocketAddr::new(ip(u32::from(n)), 6000);
        assert_eq!(
            simple(&mut sim, c, &a, method::CHANNEL_BIND, |b| {
                b.attr(attr::CHANNEL_NUMBER, &[0x40, n as u8, 0, 0]);
                b.xor_addr(attr::XOR_PEER_ADDRESS, p);
            }),
            None
        );
    }
    assert_eq!(
        simple(&mut sim, c, &a, method::CHANNEL_BIND, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x20, 0, 0]);
            b.xor_addr(attr::XOR_PEER_ADDRESS, SocketAddr::new(ip(1), 7000));
        }),
        Some(508)
    );
    assert_eq!(sim.core.stats().quota[QuotaKind::Channels as usize], 1);
    // Rebinding an existing channel refreshes it; its traffic flows both ways.
    let p5 = SocketAddr::new(ip(5), 6000);
    assert_eq!(
        simple(&mut sim, c, &a, method::CHANNEL_BIND, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 5, 0, 0]);
            b.xor_addr(attr::XOR_PEER_ADDRESS, p5);
        }),
        None
    );
    assert!(matches!(
        sim.input(c, &channel_data(0x4005, b"hi")),
        Some(Relay::ToPeer { peer, .. }) if peer == p5
    ));
    assert!(matches!(
        sim.core.handle_peer_data(sim.now, token, p5, b"yo"),
        Some(Relay::ToClient { header, .. }) if header[..2] == [0x40, 5]
    ));
    // Once permissions expire the allocation can install new ones again.
    sim.advance(301);
    assert_eq!(
        simple(&mut sim, c, &a, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, new);
        }),
        None
    );
}

/// Issue 11 item 4: the port an EVEN-PORT reservation holds counts against the holder's
/// `user_quota` until it is redeemed or expires. Before, one user with `user_quota = 1` held
/// half the port range by allocating with EVEN-PORT (R bit) and deleting, over and over.
#[test]
fn even_port_reservations_count_against_the_user_quota() {
    let q = Arc::new(SharedQuota::new(2, 0, (40000, 40099)));
    let mut sim = Sim::with_quota(cfg(), PeerPolicy::default(), q.clone());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 1000);
    // Get a nonce with a plain allocation, then delete it.
    allocate(&mut sim, client(40), &mut a);
    assert_eq!(
        simple(&mut sim, client(40), &a, method::REFRESH, |b| {
            b.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        }),
        None
    );
    let even_r = |sim: &mut Sim, port: u16, creds: &Creds| {
        let tid = sim.next_tid();
        sim.input(
            client(port),
            &request(tid, method::ALLOCATE, Some(creds), false, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                b.attr(attr::EVEN_PORT, &[0x80]);
            }),
        );
        let ans = last(sim);
        let m = Message::parse(&ans).unwrap();
        (
            error_code(&m),
            m.get(attr::RESERVATION_TOKEN).map(<[u8]>::to_vec),
        )
    };
    let (code, token) = even_r(&mut sim, 41, &a);
    assert_eq!(code, None);
    let token = token.expect("R bit gives a token");
    let free = q.ports_free();
    // Delete it: the reservation still holds one unit of alice's quota of 2 ...
    assert_eq!(
        simple(&mut sim, client(41), &a, method::REFRESH, |b| {
            b.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        }),
        None
    );
    // ... so the attack loop (EVEN-PORT R, delete, again) stops at once, with fresh
    // credentials of the same user too.
    let (u, p) = rest_credentials(b"s3cret", UNIX0 + 1001, "alice");
    let fresh = Creds {
        user: u,
        pass: p,
        nonce: a.nonce.clone(),
    };
    for port in 42..62 {
        assert_eq!(even_r(&mut sim, port, &fresh).0, Some(486), "client {port}");
    }
    assert_eq!(
        q.ports_free(),
        free + 1,
        "only the deleted allocation's port came back"
    );
    assert_eq!(sim.core.stats().quota[QuotaKind::User as usize], 20);
    // Redeeming the token turns the reservation into an allocation (still one unit), so one
    // more plain allocation fits, and a third does not.
    let tid = sim.next_tid();
    sim.input(
        client(70),
        &request(tid, method::ALLOCATE, Some(&a), false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::RESERVATION_TOKEN, &token);
        }),
    );
    let ans = last(&mut sim);
    assert_eq!(Message::parse(&ans).unwrap().class, Class::Success);
    assert_eq!(
        simple(&mut sim, client(71), &a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        None
    );
    assert_eq!(
        simple(&mut sim, client(72), &a, method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        Some(486)
    );
    assert_eq!(q.total(), 2);
    // An expired reservation gives its unit back: delete both, reserve, wait 31 s.
    for port in [70, 71] {
        assert_eq!(
            simple(&mut sim, client(port), &a, method::REFRESH, |b| {
                b.attr(attr::LIFETIME, &[0, 0, 0, 0]);
            }),
            None
        );
    }
    assert_eq!(even_r(&mut sim, 73, &a).0, None);
    assert_eq!(
        simple(&mut sim, client(73), &a, method::REFRESH, |b| {
            b.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        }),
        None
    );
    assert_eq!(
        even_r(&mut sim, 74, &a).0,
        Some(486),
        "reservation still held"
    );
    sim.advance(31);
    assert_eq!(even_r(&mut sim, 75, &a).0, None, "reservation expired");
}

/// Issue 11 item 7: an office of 1,000 users behind one NAT address starts calls at 1,000
/// allocations per second, each with its credential-less first Allocate (401). Once one of
/// them has authenticated, the address gets `auth_rate`: every one succeeds. (The old
/// limit, `unauth_rate` for everyone, let about 100 + 50/s through.)
#[test]
fn office_behind_one_address_allocates_a_thousand_times() {
    let mut c = cfg();
    c.unauth_rate = 50;
    c.auth_rate = 2000;
    let q = Arc::new(SharedQuota::new(0, 0, (40000, 41999)));
    let mut sim = Sim::with_quota(c, PeerPolicy::default(), q);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 1000);
    for port in 0..1000u16 {
        sim.now += Duration::from_millis(1);
        allocate(&mut sim, client(10_000 + port), &mut creds);
    }
    assert_eq!(sim.core.allocation_count(), 1000);
    assert_eq!(sim.core.stats().quota[QuotaKind::RateLimit as usize], 0);
}

/// The trusted budget needs a real round trip: requests that only claim the office's
/// address (spoofed, never authenticated) stay at `unauth_rate`.
#[test]
fn unauthenticated_sources_stay_at_the_unauth_rate() {
    let mut c = cfg();
    c.unauth_rate = 5;
    c.auth_rate = 2000;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let mut answered = 0;
    for i in 0..200u16 {
        sim.now += Duration::from_millis(5);
        let tid = TransactionId([(i % 250) as u8; 12]);
        sim.input(
            client(20_000 + i),
            &request(tid, method::BINDING, None, false, |_| {}),
        );
        answered += sim.out.drain(..).count();
    }
    // One second: the burst (10) plus 5/s.
    assert!((10..=16).contains(&answered), "{answered}");
}

/// Over TCP/TLS a client never retransmits (RFC 8489 §6.2.2): a request over the source's
/// stream budget is not dropped silently, its connection is closed (and counted), so the
/// client fails at once instead of waiting ~40 s. Below the budget every request is answered.
#[test]
fn stream_over_its_budget_is_closed_never_left_unanswered() {
    let mut c = cfg();
    c.unauth_rate = 5;
    c.auth_rate = 10;
    let mut sim = Sim::new(c, PeerPolicy::default());
    let tcp = FiveTuple {
        proto: Proto::Tcp,
        ..client(30_000)
    };
    let mut answered = 0;
    for i in 0..20u8 {
        sim.input(
            tcp,
            &request(TransactionId([i; 12]), method::BINDING, None, false, |_| {}),
        );
        answered += sim.out.drain(..).count();
    }
    // The stream budget (burst 2 x auth_rate) is separate from UDP's (2 x unauth_rate).
    assert_eq!(answered, 20);
    assert!(sim.closed_conns.is_empty());
    sim.input(
        tcp,
        &request(
            TransactionId([99; 12]),
            method::BINDING,
            None,
            false,
            |_| {},
        ),
    );
    assert!(sim.out.is_empty());
    assert_eq!(sim.closed_conns, vec![tcp]);
    assert_eq!(sim.core.stats().rate_limit_closed, 1);
    assert_eq!(
        sim.core.stats().quota[QuotaKind::RateLimit as usize],
        0,
        "closing is not counted as a UDP drop"
    );
    // UDP from the same address still has its own budget.
    sim.input(
        client(30_001),
        &request(
            TransactionId([98; 12]),
            method::BINDING,
            None,
            false,
            |_| {},
        ),
    );
    assert_eq!(sim.out.len(), 1);
}

/// Sources that cannot be real (reflection targets: port 0, unspecified, broadcast,
/// multicast, also spelled as IPv4-mapped IPv6 as a dual-stack socket reports them) get
/// no answer, whatever they send, and their Allocates count as `forbidden`. (From loopback
/// the kernel does not deliver most of these source addresses, so this is tested here.)
#[test]
fn impossible_sources_get_no_answer_and_are_counted() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 1000);
    // A nonce from a real source, so the authenticated requests below are otherwise valid.
    allocate(&mut sim, client(80), &mut creds);
    let before = sim.core.stats().allocations[AllocResult::Forbidden as usize];
    let sources = [
        "198.51.100.7:0",
        "0.0.0.0:5000",
        "255.255.255.255:5000",
        "224.0.0.1:5000",
        "239.255.255.250:1900",
        "[::]:5000",
        "[ff02::1]:5000",
        "[2001:db8::1]:0",
        "[::ffff:0.0.0.0]:5000",
        "[::ffff:255.255.255.255]:5000",
        "[::ffff:224.0.0.1]:5000",
    ];
    let mut allocates = 0;
    for s in sources {
        let from = FiveTuple {
            remote: s.parse().unwrap(),
            ..client(0)
        };
        for (m, authed) in [
            (method::BINDING, false),
            (method::ALLOCATE, false),
            (method::ALLOCATE, true),
            (method::REFRESH, true),
        ] {
            let tid = sim.next_tid();
            let r = request(tid, m, authed.then_some(&creds), true, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            });
            sim.input(from, &r);
            assert!(sim.out.is_empty(), "{s} method {m:#x} got an answer");
            allocates += usize::from(m == method::ALLOCATE);
        }
        // Not even a 420 or a 400.
        let tid = sim.next_tid();
        sim.input(
            from,
            &request(tid, method::BINDING, None, false, |b| {
                b.attr(0x7777, &[0; 4]);
            }),
        );
        assert!(sim.out.is_empty(), "{s}: 420 sent");
    }
    assert_eq!(
        sim.core.stats().allocations[AllocResult::Forbidden as usize] - before,
        allocates as u64
    );
    assert_eq!(sim.core.allocation_count(), 1);
}

/// The transaction cache is bounded by `transaction_cache`: past it, answers are not kept
/// (counted), so a retransmitted Allocate of that client is processed anew and gets 437
/// instead of its original answer; clients within the bound keep theirs.
#[test]
fn transaction_cache_is_bounded_and_counts_what_it_does_not_keep() {
    let c0 = CoreConfig {
        tx_cache_max: 2,
        ..cfg()
    };
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let mut a = Creds::rest(b"s3cret", UNIX0 + 100_000);
    // Each helper Allocate checks that its retransmission gets the identical answer.
    allocate(&mut sim, client(1), &mut a);
    allocate(&mut sim, client(2), &mut a);
    assert_eq!(sim.core.stats().tx_cache_full, 0);
    let c = client(3);
    let tid = sim.next_tid();
    let r = request(tid, method::ALLOCATE, Some(&a), true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    sim.input(c, &r);
    let first = last(&mut sim);
    assert_eq!(Message::parse(&first).unwrap().class, Class::Success);
    assert_eq!(sim.core.stats().tx_cache_full, 1);
    sim.input(c, &r);
    let again = last(&mut sim);
    assert_eq!(error_code(&Message::parse(&again).unwrap()), Some(437));
}

/// What the kernel fast path is told: exactly the live channel bindings of each UDP
/// allocation, each with the earliest of its channel, permission and allocation expiry,
/// and nothing once the allocation is gone (Refresh 0).
#[test]
fn offload_follows_channel_bindings_and_their_expiry() {
    let mut c0 = cfg();
    c0.offload = true;
    c0.nonce_lifetime = 7200;
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let c = client(2222);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    allocate(&mut sim, c, &mut creds);
    let bind = *sim.relays.values().next().unwrap();
    let mut syncs = Vec::new();
    while let Some(s) = sim.core.poll_offload() {
        syncs.push(s);
    }
    assert!(syncs.is_empty(), "no channel yet: {syncs:?}");

    let t0 = sim.now;
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4001, peer()), None);
    let s = sim.core.poll_offload().expect("a sync after ChannelBind");
    assert_eq!(s.client, c);
    assert_eq!(
        s.bindings,
        [OffloadBinding {
            client: c.remote,
            server: c.local,
            relay: bind,
            peer: peer(),
            channel: 0x4001,
            // the permission (300 s) ends before the channel (600 s)
            expires: t0 + PERMISSION_LIFETIME,
        }]
    );
    assert_eq!(sim.core.poll_offload(), None);

    // CreatePermission at 200 s moves the binding's end with the permission's (500 s,
    // still before the channel's 600 s).
    sim.advance(200);
    assert_eq!(
        simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        }),
        None
    );
    let s = sim
        .core
        .poll_offload()
        .expect("a sync after CreatePermission");
    assert_eq!(s.bindings.len(), 1);
    assert_eq!(s.bindings[0].expires, sim.now + PERMISSION_LIFETIME);
    assert!(sim.now + PERMISSION_LIFETIME < t0 + CHANNEL_LIFETIME);

    // A channel to one of our own relayed addresses stays on the in-process path.
    let own: SocketAddr = "192.0.2.1:40005".parse().unwrap();
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4002, own), None);
    let s = sim.core.poll_offload().unwrap();
    assert_eq!(
        s.bindings.iter().map(|b| b.channel).collect::<Vec<_>>(),
        [0x4001]
    );

    // Refresh 0: the allocation goes, and so does every binding.
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 0);
        }),
        None
    );
    let s = sim.core.poll_offload().expect("a sync at deletion");
    assert_eq!((s.client, s.bindings.len()), (c, 0));
    assert_eq!(sim.core.poll_offload(), None);
}

#[test]
fn offload_off_emits_nothing() {
    let mut sim = Sim::new(cfg(), PeerPolicy::default());
    let c = client(2223);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    allocate(&mut sim, c, &mut creds);
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4001, peer()), None);
    assert_eq!(sim.core.poll_offload(), None);
}

/// The expiry sweep tells the kernel path when a permission or a channel goes (the kernel
/// already stopped at the binding's own expiry; this frees the entries).
#[test]
fn offload_entries_go_with_the_expiry_sweep() {
    let mut c0 = cfg();
    c0.offload = true;
    c0.max_lifetime = 3600;
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let c = client(4444);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    allocate(&mut sim, c, &mut creds);
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 3600);
        }),
        None
    );
    assert_eq!(channel_bind(&mut sim, c, &creds, 0x4000, peer()), None);
    let mut last = None;
    while let Some(s) = sim.core.poll_offload() {
        last = Some(s);
    }
    assert_eq!(last.map(|s| s.bindings.len()), Some(1));
    // The permission (300 s) expires first: the next sweep drops the binding.
    sim.advance(301);
    let s = sim
        .core
        .poll_offload()
        .expect("a sync when the permission expired");
    assert_eq!((s.client, s.bindings.len()), (c, 0));
    assert_eq!(sim.core.poll_offload(), None);
}

/// A SIGHUP that denies a peer ends the permissions to it at once: ChannelData and peer
/// data stop in userspace, the kernel is told the binding is gone, and the channel
/// cools down as after expiry; other peers are untouched.
#[test]
fn a_policy_reload_that_denies_a_peer_ends_its_permissions_and_bindings() {
    let mut c0 = cfg();
    c0.offload = true;
    c0.nonce_lifetime = 7200;
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let c = client(2223);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    allocate(&mut sim, c, &mut creds);
    let other: SocketAddr = "198.51.100.20:6000".parse().unwrap();
    for (ch, p) in [(0x4001_0000, peer()), (0x4002_0000, other)] {
        assert_eq!(
            simple(&mut sim, c, &creds, method::CHANNEL_BIND, |b| {
                b.u32_attr(attr::CHANNEL_NUMBER, ch);
                b.xor_addr(attr::XOR_PEER_ADDRESS, p);
            }),
            None
        );
    }
    while sim.core.poll_offload().is_some() {}
    let token = *sim.relays.keys().next().unwrap();
    assert!(sim.input(c, &channel_data(0x4001, b"hello")).is_some());

    let deny: Vec<crate::policy::Cidr> = vec!["203.0.113.0/24".parse().unwrap()];
    assert_eq!(
        sim.core.set_policy(sim.now, PeerPolicy::new(vec![], deny)),
        1
    );
    assert_eq!(
        sim.input(c, &channel_data(0x4001, b"hello")),
        None,
        "ChannelData stops"
    );
    assert_eq!(
        sim.core.handle_peer_data(sim.now, token, peer(), b"abc"),
        None,
        "peer data stops"
    );
    let s = sim.core.poll_offload().expect("the kernel is told at once");
    assert_eq!(
        s.bindings.iter().map(|b| b.channel).collect::<Vec<_>>(),
        [0x4002],
        "the other peer's binding stays"
    );
    assert!(sim.input(c, &channel_data(0x4002, b"hello")).is_some());
    // the denied peer cannot be permitted again, and its channel number stays reserved
    assert_eq!(
        simple(&mut sim, c, &creds, method::CREATE_PERMISSION, |b| {
            b.xor_addr(attr::XOR_PEER_ADDRESS, peer());
        }),
        Some(403)
    );
    // a reload that denies nothing new ends nothing
    assert_eq!(sim.core.set_policy(sim.now, PeerPolicy::default()), 0);
}

#[test]
fn installed_permission_lets_the_other_allocation_in_and_expires_like_one() {
    // The gateway's control input (docs/turn-server.md, "Control endpoint"): B's
    // allocation gets a permission for A's relayed IP without a CreatePermission from B,
    // so A's first datagrams to B's relayed address reach B's client.
    let mut c0 = cfg();
    c0.offload = true;
    c0.nonce_lifetime = 7200;
    let mut sim = Sim::new(
        c0,
        PeerPolicy::new(vec!["192.0.2.1/32".parse().unwrap()], vec![]),
    );
    let (ca, cb) = (client(120), client(121));
    let mut a = Creds::rest(b"s3cret", UNIX0 + 86_400);
    let mut b = a.clone();
    let ra = allocate(&mut sim, ca, &mut a);
    let rb = allocate(&mut sim, cb, &mut b);
    while sim.core.poll_offload().is_some() {}
    // A's ChannelData to B's relayed address is delivered in process, with B's checks
    let send = |sim: &mut Sim, payload: &[u8]| {
        let r = sim.input(ca, &channel_data(0x4000, payload));
        assert_eq!(r, None, "B has no channel: a Data indication or nothing");
    };
    // A may send (its own permission), B has none for A: dropped at B.
    assert_eq!(
        simple(&mut sim, ca, &a, method::CHANNEL_BIND, |bb| {
            bb.u32_attr(attr::CHANNEL_NUMBER, 0x4000 << 16);
            bb.xor_addr(attr::XOR_PEER_ADDRESS, rb);
        }),
        None
    );
    while sim.core.poll_offload().is_some() {}
    send(&mut sim, b"early");
    assert!(sim.out.is_empty(), "B has no permission for A yet");

    assert_eq!(
        sim.core.install_permission(sim.now, rb, ra.ip()),
        InstallResult::Installed
    );
    // the kernel fast path hears of it as after a CreatePermission
    let s = sim
        .core
        .poll_offload()
        .expect("an offload sync, as CreatePermission");
    assert_eq!(s.client, cb);
    send(&mut sim, b"now");
    let di = last(&mut sim);
    let m = Message::parse(&di).unwrap();
    assert_eq!(
        (
            m.method,
            m.xor_addr(attr::XOR_PEER_ADDRESS),
            m.get(attr::DATA)
        ),
        (method::DATA, Some(ra), Some(&b"now"[..]))
    );
    assert_eq!(sim.core.gauges(sim.now).permissions, 2);

    // an ordinary permission: it ends 300 s later unless refreshed
    sim.advance(PERMISSION_LIFETIME.as_secs() - 1);
    send(&mut sim, b"still");
    assert!(!sim.out.is_empty(), "alive until its lifetime ends");
    sim.out.clear();
    sim.advance(2);
    // A refreshes its own permission (its channel lives 600 s); B's installed one has
    // expired
    assert_eq!(
        simple(&mut sim, ca, &a, method::CREATE_PERMISSION, |bb| {
            bb.xor_addr(attr::XOR_PEER_ADDRESS, rb);
        }),
        None
    );
    send(&mut sim, b"late");
    assert!(sim.out.is_empty(), "expired like any permission");
}

#[test]
fn installed_permission_refusals() {
    let mut c0 = cfg();
    c0.max_permissions = 1;
    let mut sim = Sim::new(c0, PeerPolicy::default());
    let c = client(130);
    let mut creds = Creds::rest(b"s3cret", UNIX0 + 86_400);
    let r = allocate(&mut sim, c, &mut creds);
    let ok: IpAddr = peer().ip();
    let other: IpAddr = "203.0.113.10".parse().unwrap();
    let unknown: SocketAddr = SocketAddr::new(r.ip(), r.port() ^ 1);
    assert_eq!(
        sim.core.install_permission(sim.now, unknown, ok),
        InstallResult::NoSuchAllocation
    );
    assert_eq!(
        sim.core
            .install_permission(sim.now, r, "2001:db8::1".parse().unwrap()),
        InstallResult::WrongFamily
    );
    let denied_before = sim.core.stats().denied;
    assert_eq!(
        sim.core
            .install_permission(sim.now, r, "10.1.2.3".parse().unwrap()),
        InstallResult::Denied(DenyClass::Private)
    );
    assert_eq!(
        sim.core.stats().denied[DenyClass::Private.index()],
        denied_before[DenyClass::Private.index()] + 1,
        "counted like a refused CreatePermission"
    );
    assert_eq!(
        sim.core.install_permission(sim.now, r, ok),
        InstallResult::Installed
    );
    // again: a refresh, not a second entry
    assert_eq!(
        sim.core.install_permission(sim.now, r, ok),
        InstallResult::Installed
    );
    let quota_before = sim.core.stats().quota[QuotaKind::Permissions as usize];
    assert_eq!(
        sim.core.install_permission(sim.now, r, other),
        InstallResult::Full
    );
    assert_eq!(
        sim.core.stats().quota[QuotaKind::Permissions as usize],
        quota_before + 1
    );
    // gone with its allocation
    assert_eq!(
        simple(&mut sim, c, &creds, method::REFRESH, |b| {
            b.u32_attr(attr::LIFETIME, 0);
        }),
        None
    );
    assert_eq!(
        sim.core.install_permission(sim.now, r, ok),
        InstallResult::NoSuchAllocation
    );
}
