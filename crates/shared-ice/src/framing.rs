//! Sans-IO framing of a TURN TCP/TLS byte stream into STUN and ChannelData frames
//! ([RFC 8656 §12.5](https://www.rfc-editor.org/rfc/rfc8656#section-12.5), RFC 6062).
//!
//! The runtime appends what it reads to a buffer and asks [`Framer::next_frame`] how
//! long the first complete frame is; it then hands that slice to
//! [`Message::parse`](crate::stun::Message::parse) or
//! [`ChannelData::parse`](crate::channel::ChannelData::parse) and drops it from the
//! buffer. Nothing is allocated. An error means the stream is out of sync or abusive
//! and the connection should be closed.
#![deny(clippy::indexing_slicing)]

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
