//! Codec hot paths: parse + verify a typical TURN Allocate, build its response,
//! ChannelData parse, stream framing; plus the webrtc-rs `stun` crate doing the same
//! parse + verify as a reference. Numbers and command: docs/performance.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shared_ice::auth::{RestSecret, RestSecrets, long_term_key, mint_with_ttl};
use shared_ice::channel::{self, ChannelData, ChannelNumber, Padding};
use shared_ice::framing::Framer;
use shared_ice::stun::{Class, Message, MessageBuilder, Method, PROTOCOL_UDP, TransactionId};

const REALM: &str = "callrelay";
const NOW: u64 = 1_700_000_000;

/// A second-round Allocate as browsers send it: USERNAME, REALM, NONCE,
/// REQUESTED-TRANSPORT, MESSAGE-INTEGRITY, FINGERPRINT (REST username).
fn allocate_request(secrets: &RestSecrets) -> (Vec<u8>, [u8; 16]) {
    let creds = mint_with_ttl(secrets.current().unwrap(), "mattermost", NOW, 86_400);
    let key = long_term_key(&creds.username, REALM, &creds.password);
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        Class::Request,
        Method::ALLOCATE,
        TransactionId([0x5A; 12]),
    )
    .requested_transport(PROTOCOL_UDP)
    .username(&creds.username)
    .realm(REALM)
    .nonce("c2b5d1e0a9f84b7c8d2e3f4a5b6c7d8e")
    .software("Chrome WebRTC")
    .finish_with_integrity_and_fingerprint(&key)
    .unwrap();
    (buf, key)
}

fn benches(c: &mut Criterion) {
    let secrets = RestSecrets::new([
        RestSecret::new("current secret"),
        RestSecret::new("previous secret"),
    ]);
    let (req, key) = allocate_request(&secrets);

    c.bench_function("stun/parse_only_allocate", |b| {
        b.iter(|| Message::parse(black_box(&req)).unwrap().transaction_id())
    });

    c.bench_function("stun/parse_verify_allocate", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&req)).unwrap();
            assert!(m.check_fingerprint());
            assert_eq!(m.unknown_comprehension_required().count(), 0);
            let _ = black_box((
                m.username().unwrap(),
                m.realm().unwrap(),
                m.nonce().unwrap(),
            ));
            assert_eq!(m.requested_transport().unwrap(), Some(PROTOCOL_UDP));
            assert!(m.verify_integrity(black_box(&key)));
        })
    });

    // Full REST authentication without a key cache: HMAC-SHA1 + base64 + MD5 per
    // secret, then the MESSAGE-INTEGRITY check (current secret matches first).
    c.bench_function("auth/rest_authenticate_allocate", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&req)).unwrap();
            secrets
                .authenticate(&m, REALM, NOW, 60)
                .unwrap()
                .secret_index
        })
    });

    let mut out = Vec::with_capacity(1500);
    let relayed = "203.0.113.7:50123".parse().unwrap();
    let mapped = "198.51.100.20:61000".parse().unwrap();
    c.bench_function("stun/build_allocate_success", |b| {
        let m = Message::parse(&req).unwrap();
        b.iter(|| {
            out.clear();
            MessageBuilder::success_response(&mut out, &m)
                .xor_relayed_address(relayed)
                .xor_mapped_address(mapped)
                .lifetime(600)
                .software("callrelay")
                .finish_with_integrity_and_fingerprint(black_box(&key))
                .unwrap()
                .len()
        })
    });

    let payload = vec![0xAB; 1200]; // a typical SRTP packet
    let ch = ChannelNumber::new(0x4001).unwrap();
    let mut cd = Vec::new();
    channel::encode(&mut cd, ch, &payload, Padding::Datagram).unwrap();
    c.bench_function("channel/parse_1200B", |b| {
        b.iter(|| {
            let d = ChannelData::parse(black_box(&cd)).unwrap();
            (d.channel(), d.data().len())
        })
    });
    c.bench_function("channel/header_1200B", |b| {
        b.iter(|| channel::header(black_box(ch), black_box(1200)))
    });

    let mut stream = Vec::new();
    channel::encode(&mut stream, ch, &payload, Padding::Stream).unwrap();
    stream.extend_from_slice(&req);
    let framer = Framer::default();
    c.bench_function("framing/next_frame", |b| {
        b.iter(|| framer.next_frame(black_box(&stream)).unwrap().unwrap().len)
    });

    // Reference: the webrtc-rs `stun` crate decoding and verifying the same request.
    let their_key = stun::integrity::MessageIntegrity(key.to_vec());
    c.bench_function("reference_stun_crate/parse_verify_allocate", |b| {
        b.iter(|| {
            let mut m = stun::message::Message::new();
            m.raw = black_box(&req).to_vec();
            m.decode().unwrap();
            stun::fingerprint::FINGERPRINT.check(&m).unwrap();
            their_key.check(&mut m).unwrap();
        })
    });
}

criterion_group!(codec, benches);
criterion_main!(codec);
