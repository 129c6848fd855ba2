//! Arbitrary bytes through `Message::parse` and every accessor: nothing may panic,
//! and what parses must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ice::stun::{Header, Message};

fuzz_target!(|data: &[u8]| {
    let header = Header::parse(data);
    let Ok(m) = Message::parse(data) else { return };
    // A message that parses has a header that parses, and it spans the input.
    let header = header.expect("Message::parse accepted what Header::parse rejected");
    assert_eq!(header.message_len(), data.len());
    assert_eq!(m.as_bytes(), data);
    assert_eq!(m.transaction_id(), header.transaction_id);
    let mut total = 0usize;
    for (_, v) in m.attributes() {
        total += 4 + v.len().next_multiple_of(4);
    }
    assert!(20 + total <= data.len());
    let _ = m.unknown_comprehension_required().count();
    let _ = (
        m.username(),
        m.realm(),
        m.nonce(),
        m.software(),
        m.alternate_domain(),
    );
    let _ = (m.userhash(), m.lifetime(), m.connection_id(), m.priority());
    let _ = (
        m.requested_transport(),
        m.requested_address_family(),
        m.additional_address_family(),
    );
    let _ = (
        m.even_port(),
        m.reservation_token(),
        m.dont_fragment(),
        m.use_candidate(),
    );
    let _ = (m.channel_number(), m.data(), m.xor_peer_addresses().count());
    let _ = (
        m.xor_mapped_address(),
        m.xor_relayed_address(),
        m.xor_relayed_addresses().count(),
    );
    let _ = (
        m.mapped_address(),
        m.alternate_server(),
        m.error_code(),
        m.address_error_code(),
    );
    let _ = (
        m.password_algorithm(),
        m.password_algorithms().count(),
        m.icmp(),
    );
    let _ = (
        m.verify_integrity(b"fuzz"),
        m.verify_integrity_sha256(b"fuzz"),
    );
    if m.check_fingerprint() {
        assert!(m.has_fingerprint());
    }
});
