use super::*;

#[test]
fn framing_follows_max_frame() {
    // The runtime's framer as configured from `max_frame` (default 16384).
    let f = Framer::new(16_384);
    assert_eq!(f.next_frame(&[0x00, 0x01]), Ok(None));
    assert_eq!(
        f.next_frame(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]),
        Ok(Some(shared_ice::framing::Frame {
            kind: shared_ice::framing::FrameKind::ChannelData,
            len: 12
        }))
    );
    assert!(f.next_frame(&[0x80]).is_err());
    // "GET " reads as a ChannelData frame of 21540 bytes: over max_frame, closed.
    assert!(f.next_frame(b"GET / HTTP/1.1").is_err());
    // A STUN header with a wrong magic cookie is not TURN: closed.
    assert!(f.next_frame(&[0, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef]).is_err());
}
