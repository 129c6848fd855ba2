//! Sans-IO framing of a TURN TCP/TLS byte stream into STUN and ChannelData frames
//! ([RFC 8656 §12.5](https://www.rfc-editor.org/rfc/rfc8656#section-12.5), RFC 6062).
//!
//! The runtime appends what it reads to a buffer and asks [`Framer::next_frame`] how
//! long the first complete frame is; it then hands that slice to
//! [`Message::parse`](crate::stun::Message::parse) or
//! [`ChannelData::parse`](crate::channel::ChannelData::parse) and drops it from the
//! buffer. Nothing is allocated. An error means the stream is out of sync or abusive
//! and the connection should be closed.

use core::fmt;

use crate::channel;
use crate::reader::Reader;
use crate::stun::{HEADER_LEN, MAGIC_COOKIE};

/// The largest frame either protocol can express: a STUN header plus a 65535-byte body.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 0xFFFF;

/// What the first frame in the buffer is.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum FrameKind {
    /// A STUN message (first two bits `00`).
    Stun,
    /// A ChannelData message (first two bits `01`), including its stream padding.
    ChannelData,
}

/// A complete frame at the start of the buffer.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Its length in bytes, including ChannelData padding: consume this many bytes.
    pub len: usize,
}

/// Why the stream cannot be framed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum FrameError {
    /// The first byte starts neither STUN (`00`) nor ChannelData (`01`).
    InvalidFirstByte {
        /// The byte found.
        byte: u8,
    },
    /// The frame would be longer than the configured maximum.
    TooLarge {
        /// Frame length announced by the header.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A STUN header with the wrong magic cookie.
    BadMagicCookie {
        /// The value found.
        cookie: u32,
    },
    /// A STUN header whose length is not a multiple of 4.
    UnalignedLength {
        /// The declared length.
        len: u16,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidFirstByte { byte } => {
                write!(
                    f,
                    "stream byte {byte:#04x} starts neither STUN nor ChannelData"
                )
            }
            Self::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds maximum {max}"),
            Self::BadMagicCookie { cookie } => write!(f, "bad magic cookie {cookie:#010x}"),
            Self::UnalignedLength { len } => {
                write!(f, "STUN length {len} is not a multiple of 4")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a byte stream into frames; holds only the size limit.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Framer {
    max_frame_len: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl Framer {
    /// A framer rejecting frames longer than `max_frame_len` bytes.
    #[must_use]
    pub const fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The configured maximum frame length.
    #[must_use]
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The first complete frame in `buf`, `Ok(None)` when more bytes are needed, or an
    /// error as soon as the bytes seen so far cannot start a valid frame.
    pub fn next_frame(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut r = Reader::new(buf);
        let Some(first) = r.u8() else { return Ok(None) };
        let kind = match first & 0xC0 {
            0x00 => FrameKind::Stun,
            0x40 => FrameKind::ChannelData,
            _ => return Err(FrameError::InvalidFirstByte { byte: first }),
        };
        let mut r = Reader::new(buf);
        let (Some(_), Some(len)) = (r.u16(), r.u16()) else {
            return Ok(None);
        };
        let frame_len = match kind {
            FrameKind::Stun => {
                if len % 4 != 0 {
                    return Err(FrameError::UnalignedLength { len });
                }
                if let Some(cookie) = r.u32()
                    && cookie != MAGIC_COOKIE
                {
                    return Err(FrameError::BadMagicCookie { cookie });
                }
                HEADER_LEN + usize::from(len)
            }
            FrameKind::ChannelData => channel::HEADER_LEN + channel::padded_len(usize::from(len)),
        };
        if frame_len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: frame_len,
                max: self.max_frame_len,
            });
        }
        if buf.len() < frame_len {
            return Ok(None);
        }
        Ok(Some(Frame {
            kind,
            len: frame_len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::channel::{ChannelData, ChannelNumber, Padding, encode};
    use crate::stun::{Class, Message, MessageBuilder, Method, TransactionId};

    fn stun_msg(n: u8) -> Vec<u8> {
        let mut b = Vec::new();
        MessageBuilder::new(
            &mut b,
            Class::Request,
            Method::REFRESH,
            TransactionId([n; 12]),
        )
        .lifetime(u32::from(n))
        .finish_with_fingerprint()
        .unwrap();
        b
    }

    #[test]
    fn frames_stun_and_channel_data() {
        let f = Framer::default();
        let s = stun_msg(1);
        assert_eq!(
            f.next_frame(&s),
            Ok(Some(Frame {
                kind: FrameKind::Stun,
                len: s.len()
            }))
        );
        for cut in 0..s.len() {
            assert_eq!(f.next_frame(&s[..cut]), Ok(None), "cut {cut}");
        }
        let mut cd = Vec::new();
        encode(
            &mut cd,
            ChannelNumber::new(0x4001).unwrap(),
            b"abcde",
            Padding::Stream,
        )
        .unwrap();
        assert_eq!(
            f.next_frame(&cd),
            Ok(Some(Frame {
                kind: FrameKind::ChannelData,
                len: 12
            }))
        );
        assert_eq!(
            f.next_frame(&cd[..9]),
            Ok(None),
            "padding is part of the frame"
        );
        // The highest channel number (RFC 5766 range) frames too.
        let reserved = [0x7F, 0xFF, 0x00, 0x01, 9, 0, 0, 0];
        assert_eq!(
            f.next_frame(&reserved),
            Ok(Some(Frame {
                kind: FrameKind::ChannelData,
                len: 8
            }))
        );
    }

    #[test]
    fn frame_errors_are_exact() {
        let f = Framer::new(100);
        assert_eq!(
            f.next_frame(&[0x80]),
            Err(FrameError::InvalidFirstByte { byte: 0x80 })
        );
        assert_eq!(
            f.next_frame(&[0xC0, 0, 0]),
            Err(FrameError::InvalidFirstByte { byte: 0xC0 })
        );
        assert_eq!(
            f.next_frame(&[0x00, 0x01, 0x00, 0x02]),
            Err(FrameError::UnalignedLength { len: 2 })
        );
        assert_eq!(
            f.next_frame(&[0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4]),
            Err(FrameError::BadMagicCookie {
                cookie: 0x0102_0304
            })
        );
        // Too large is reported as soon as the length is known, before the body arrives.
        assert_eq!(
            f.next_frame(&[0x00, 0x01, 0x00, 84]),
            Err(FrameError::TooLarge { len: 104, max: 100 })
        );
        assert_eq!(
            f.next_frame(&[0x40, 0x00, 0x00, 97]),
            Err(FrameError::TooLarge { len: 104, max: 100 })
        );
        assert_eq!(f.next_frame(&[0x40, 0x00, 0x00, 96]), Ok(None));
        assert_eq!(f.next_frame(&[]), Ok(None));
        assert_eq!(f.next_frame(&[0x00, 0x01, 0x00]), Ok(None));
    }

    proptest! {
        /// A stream of frames delivered in arbitrary chunks is reassembled exactly.
        #[test]
        fn reassembles_random_splits(
            frames in proptest::collection::vec((any::<bool>(), 0u8..=255, proptest::collection::vec(any::<u8>(), 0..70)), 1..12),
            chunks in proptest::collection::vec(1usize..40, 1..200),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (is_stun, n, data) in &frames {
                if *is_stun {
                    let m = stun_msg(*n);
                    expected.push((FrameKind::Stun, m.clone()));
                    stream.extend_from_slice(&m);
                } else {
                    let ch = ChannelNumber::new(0x4000 + u16::from(*n)).unwrap();
                    let start = stream.len();
                    encode(&mut stream, ch, data, Padding::Stream).unwrap();
                    expected.push((FrameKind::ChannelData, stream[start..].to_vec()));
                }
            }
            let framer = Framer::default();
            let mut buf: Vec<u8> = Vec::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut chunk = chunks.iter().cycle();
            while pos < stream.len() {
                let n = (*chunk.next().unwrap()).min(stream.len() - pos);
                buf.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
                while let Some(frame) = framer.next_frame(&buf).unwrap() {
                    let bytes: Vec<u8> = buf.drain(..frame.len).collect();
                    match frame.kind {
                        FrameKind::Stun => prop_assert!(Message::parse(&bytes).unwrap().check_fingerprint()),
                        FrameKind::ChannelData => { ChannelData::parse(&bytes).unwrap(); }
                    }
                    got.push((frame.kind, bytes));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..70_000) {
            let f = Framer::new(max);
            if let Ok(Some(frame)) = f.next_frame(&bytes) {
                prop_assert!(frame.len <= bytes.len() && frame.len <= max);
            }
        }
    }
}
