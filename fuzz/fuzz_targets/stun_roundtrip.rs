//! parse → rebuild with `MessageBuilder` → parse: the rebuilt message carries the
//! same header, attributes and typed values, and its integrity and fingerprint verify
//! (the hickory `message.rs` round-trip idea).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ice::EncodeError;
use shared_ice::stun::{Message, MessageBuilder, attr};

const KEY: &[u8] = b"round-trip key";

fuzz_target!(|data: &[u8]| {
    let Ok(m1) = Message::parse(data) else { return };
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m1.class(), m1.method(), m1.transaction_id());
    for (ty, value) in m1.attributes() {
        if !matches!(
            ty,
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
        ) {
            b = b.attribute(ty, value);
        }
    }
    let bytes = match b.finish_with_integrity_and_fingerprint(KEY) {
        Ok(bytes) => bytes.to_vec(),
        // The original was within 32 bytes of the 64 KiB limit.
        Err(EncodeError::MessageTooLong { .. }) => return,
        Err(e) => panic!("rebuilding a parsed message failed: {e}"),
    };
    let m2 = Message::parse(&bytes).expect("rebuilt message must parse");
    assert!(m2.verify_integrity(KEY));
    assert!(m2.check_fingerprint());
    assert_eq!(
        (m1.class(), m1.method(), m1.transaction_id()),
        (m2.class(), m2.method(), m2.transaction_id())
    );
    let plain = |m: &Message<'_>| -> Vec<(u16, Vec<u8>)> {
        m.attributes()
            .filter(|(t, _)| {
                !matches!(
                    *t,
                    attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
                )
            })
            .map(|(t, v)| (t, v.to_vec()))
            .collect()
    };
    assert_eq!(plain(&m1), plain(&m2));
    assert_eq!(m1.username(), m2.username());
    assert_eq!(m1.realm(), m2.realm());
    assert_eq!(m1.nonce(), m2.nonce());
    assert_eq!(m1.lifetime(), m2.lifetime());
    assert_eq!(m1.channel_number(), m2.channel_number());
    assert_eq!(
        m1.xor_peer_addresses().collect::<Vec<_>>(),
        m2.xor_peer_addresses().collect::<Vec<_>>()
    );
    assert_eq!(m1.xor_mapped_address(), m2.xor_mapped_address());
    assert_eq!(m1.xor_relayed_address(), m2.xor_relayed_address());
    assert_eq!(m1.error_code(), m2.error_code());
    assert_eq!(m1.requested_transport(), m2.requested_transport());
    assert_eq!(
        m1.unknown_comprehension_required().collect::<Vec<_>>(),
        m2.unknown_comprehension_required().collect::<Vec<_>>()
    );
});
