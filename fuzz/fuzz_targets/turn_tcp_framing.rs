//! A TCP/TLS byte stream through the `Framer`, delivered in fuzzer-chosen chunks:
//! never panics, frames never exceed the limit or the buffer, and chunking never
//! changes the result (the framer is a pure function of the buffered bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ice::channel::ChannelData;
use shared_ice::framing::{FrameKind, Framer};
use shared_ice::stun::Message;

/// Frames `stream`, feeding it `chunk` bytes at a time; returns the frames (kind and
/// length) and whether an error stopped it. Like the turn-server's reader, it frames
/// from an offset into the buffer and drops the consumed bytes once per delivered
/// chunk (draining after every frame would make a long stream of small frames
/// quadratic). Frames are consecutive slices of `stream` from its start, so equal
/// (kind, length) sequences mean equal frame bytes. `parse` runs the codecs on every
/// frame (once per input is enough: the runs must agree).
fn run(
    framer: &Framer,
    stream: &[u8],
    chunk: usize,
    parse: bool,
) -> (Vec<(FrameKind, usize)>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let mut off = 0;
        loop {
            let rest = buf.get(off..).unwrap_or_default();
            match framer.next_frame(rest) {
                Ok(Some(f)) => {
                    assert!(f.len > 0 && f.len <= rest.len() && f.len <= framer.max_frame_len());
                    let bytes = rest.get(..f.len).unwrap_or_default();
                    match f.kind {
                        FrameKind::Stun => {
                            assert!(bytes.first().is_some_and(|b| b & 0xC0 == 0));
                            if parse {
                                let _ = Message::parse(bytes);
                            }
                        }
                        FrameKind::ChannelData => {
                            assert!(bytes.first().is_some_and(|b| b & 0xC0 == 0x40));
                            if parse {
                                let _ = ChannelData::parse(bytes);
                            }
                        }
                    }
                    frames.push((f.kind, f.len));
                    off += f.len;
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        buf.drain(..off);
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b, c], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([a, b])) * 2;
    let framer = Framer::new(max);
    let whole = run(&framer, stream, stream.len(), true);
    let chunked = run(&framer, stream, usize::from(c), false);
    let bytewise = run(&framer, stream, 1, false);
    assert_eq!(whole, chunked);
    assert_eq!(whole, bytewise);
});
