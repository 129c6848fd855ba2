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
    shared_ice::stun::exercise_accessors(&m);
    let _ = (
        m.verify_integrity(b"fuzz"),
        m.verify_integrity_sha256(b"fuzz"),
    );
    if m.check_fingerprint() {
        assert!(m.has_fingerprint());
    }
});
