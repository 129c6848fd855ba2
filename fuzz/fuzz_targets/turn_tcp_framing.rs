//! A TCP/TLS byte stream through the `Framer`, delivered in fuzzer-chosen chunks:
//! never panics, frames never exceed the limit or the buffer, and chunking never
//! changes the result (the framer is a pure function of the buffered bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ice::channel::ChannelData;
use shared_ice::framing::{FrameKind, Framer};
use shared_ice::stun::Message;

/// Frames `stream`, feeding it `chunk` bytes at a time; returns the frames and the
/// error (if any) that stopped it.
fn run(framer: &Framer, stream: &[u8], chunk: usize) -> (Vec<(FrameKind, Vec<u8>)>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match framer.next_frame(&buf) {
                Ok(Some(f)) => {
                    assert!(f.len <= buf.len() && f.len <= framer.max_frame_len());
                    let bytes: Vec<u8> = buf.drain(..f.len).collect();
                    match f.kind {
                        FrameKind::Stun => assert!(bytes.first().is_some_and(|b| b & 0xC0 == 0)),
                        FrameKind::ChannelData => {
                            assert!(bytes.first().is_some_and(|b| b & 0xC0 == 0x40));
                            let _ = ChannelData::parse(&bytes);
                        }
                    }
                    if f.kind == FrameKind::Stun {
                        let _ = Message::parse(&bytes);
                    }
                    frames.push((f.kind, bytes));
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b, c], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([a, b])) * 2;
    let framer = Framer::new(max);
    let whole = run(&framer, stream, stream.len());
    let chunked = run(&framer, stream, usize::from(c));
    let bytewise = run(&framer, stream, 1);
    assert_eq!(whole, chunked);
    assert_eq!(whole, bytewise);
});
