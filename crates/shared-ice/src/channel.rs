//! TURN ChannelData messages ([RFC 8656 §12](https://www.rfc-editor.org/rfc/rfc8656#section-12)).
//!
//! A ChannelData message is a 4-byte header (channel number, data length) followed
//! by the application data. Over UDP the data need not be padded; over TCP/TLS it is
//! padded to a multiple of 4 (RFC 8656 §12.5).
//!
//! ## Channel number range (decided here, once)
//! RFC 5766 allowed channels 0x4000..=0x7FFF; RFC 8656 §12 narrowed that to
//! 0x4000..=0x4FFF and reserved 0x5000..=0x7FFF (so that TURN channels do not collide
//! with DTLS-SRTP/QUIC demultiplexing, RFC 7983). Clients in the field still use the
//! old range: coturn's `turnutils_uclient` picks random channels up to 0x7FFF (seen in
//! `tests/coturn_client.rs`) and libwebrtc's `kMaxChannelNumber` is 0x7FFF. A TURN
//! server port carries no DTLS-SRTP or QUIC, so the collision RFC 8656 avoids cannot
//! happen there, and rejecting those clients would break calls. [`ChannelNumber`]
//! therefore accepts the RFC 5766 range 0x4000..=0x7FFF (as coturn does); a client
//! that follows RFC 8656 only ever uses a subset of it. The stream
//! [framer](crate::framing) treats every first byte 0x40..=0x7F as ChannelData.

use core::fmt;

use crate::error::{DecodeError, EncodeError};
use crate::reader::Reader;

/// Size of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// A TURN channel number, validated to 0x4000..=0x7FFF (see the module docs for why not
/// RFC 8656's 0x4FFF).
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// Lowest valid channel number (RFC 8656 §12, RFC 5766 §11).
    pub const MIN: u16 = 0x4000;
    /// Highest accepted channel number (RFC 5766 §11; RFC 8656 §12 would stop at 0x4FFF).
    pub const MAX: u16 = 0x7FFF;

    /// A channel number, or `None` outside 0x4000..=0x7FFF.
    #[must_use]
    pub const fn new(n: u16) -> Option<Self> {
        if n >= Self::MIN && n <= Self::MAX {
            Some(Self(n))
        } else {
            None
        }
    }

    /// The number.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for ChannelNumber {
    type Error = DecodeError;

    fn try_from(channel: u16) -> Result<Self, Self::Error> {
        Self::new(channel).ok_or(DecodeError::BadChannelNumber { channel })
    }
}

impl From<ChannelNumber> for u16 {
    fn from(c: ChannelNumber) -> Self {
        c.0
    }
}

impl fmt::Debug for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelNumber({:#06x})", self.0)
    }
}

impl fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// Whether a datagram or frame starting with `first_byte` is ChannelData rather than
/// STUN (the top two bits are `01`, RFC 8656 §12 and RFC 7983).
#[must_use]
pub const fn is_channel_data(first_byte: u8) -> bool {
    first_byte & 0xC0 == 0x40
}

/// A borrowed ChannelData message.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ChannelData<'a> {
    channel: ChannelNumber,
    data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message occupying `buf`: up to 3 bytes of padding after
    /// the data are accepted (needed over TCP/TLS, optional over UDP); more is an error.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let (Some(channel), Some(len)) = (r.u16(), r.u16()) else {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN,
                got: buf.len(),
            });
        };
        let channel = ChannelNumber::try_from(channel)?;
        let len = usize::from(len);
        let Some(data) = r.take(len) else {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN + len,
                got: buf.len(),
            });
        };
        if r.remaining() > padding_len(len) {
            return Err(DecodeError::TrailingBytes {
                declared: HEADER_LEN + padded_len(len),
                got: buf.len(),
            });
        }
        Ok(Self { channel, data })
    }

    /// The channel number.
    #[must_use]
    pub const fn channel(&self) -> ChannelNumber {
        self.channel
    }

    /// The application data.
    #[must_use]
    pub const fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// The 4-byte ChannelData header for `len` bytes of data on `channel`; write it in
/// front of data already in a buffer to relay without copying the payload.
#[must_use]
pub const fn header(channel: ChannelNumber, len: u16) -> [u8; 4] {
    let [c0, c1] = channel.0.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    [c0, c1, l0, l1]
}

/// Padding bytes (0..=3) after `len` data bytes on a stream transport.
#[must_use]
pub const fn padding_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// `len` rounded up to a multiple of 4.
#[must_use]
pub const fn padded_len(len: usize) -> usize {
    len + padding_len(len)
}

/// Whether ChannelData is padded on the transport it is sent over.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Padding {
    /// UDP (and DTLS): no padding (RFC 8656 §12.5 makes it optional; we omit it).
    Datagram,
    /// TCP and TLS: padded to a multiple of 4 (required).
    Stream,
}

/// Appends a complete ChannelData message to `buf`; returns its length.
pub fn encode(
    buf: &mut Vec<u8>,
    channel: ChannelNumber,
    data: &[u8],
    padding: Padding,
) -> Result<usize, EncodeError> {
    let Ok(len) = u16::try_from(data.len()) else {
        return Err(EncodeError::MessageTooLong { len: data.len() });
    };
    let start = buf.len();
    buf.extend_from_slice(&header(channel, len));
    buf.extend_from_slice(data);
    if padding == Padding::Stream {
        buf.resize(buf.len() + padding_len(data.len()), 0);
    }
    Ok(buf.len() - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: u16) -> ChannelNumber {
        ChannelNumber::new(n).unwrap()
    }

    #[test]
    fn channel_number_range_is_rfc5766() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert_eq!(
            ChannelNumber::new(0x4000).map(ChannelNumber::get),
            Some(0x4000)
        );
        assert_eq!(
            ChannelNumber::new(0x4FFF).map(ChannelNumber::get),
            Some(0x4FFF)
        );
        // coturn's uclient used 0x77CA in tests/coturn_client.rs.
        assert_eq!(
            ChannelNumber::new(0x77CA).map(ChannelNumber::get),
            Some(0x77CA)
        );
        assert_eq!(
            ChannelNumber::new(0x7FFF).map(ChannelNumber::get),
            Some(0x7FFF)
        );
        assert!(ChannelNumber::new(0x8000).is_none());
        assert_eq!(
            ChannelNumber::try_from(0x8000),
            Err(DecodeError::BadChannelNumber { channel: 0x8000 })
        );
        assert_eq!(format!("{:?}", ch(0x4001)), "ChannelNumber(0x4001)");
    }

    #[test]
    fn parse_udp_unpadded_and_stream_padded() {
        let msg = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c'];
        let cd = ChannelData::parse(&msg).unwrap();
        assert_eq!(cd.channel(), ch(0x4001));
        assert_eq!(cd.data(), b"abc");
        let padded = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
        assert_eq!(ChannelData::parse(&padded).unwrap().data(), b"abc");
        let empty = [0x4F, 0xFF, 0, 0];
        assert_eq!(ChannelData::parse(&empty).unwrap().data(), b"");
    }

    #[test]
    fn parse_errors_are_exact() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x01, 0x00]),
            Err(DecodeError::Truncated { needed: 4, got: 3 })
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x01, 0x00, 0x05, 1, 2]),
            Err(DecodeError::Truncated { needed: 9, got: 6 })
        );
        assert_eq!(
            ChannelData::parse(&[0x80, 0x00, 0x00, 0x00]),
            Err(DecodeError::BadChannelNumber { channel: 0x8000 })
        );
        assert_eq!(
            ChannelData::parse(&[0x00, 0x01, 0x00, 0x00]),
            Err(DecodeError::BadChannelNumber { channel: 0x0001 })
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x01, 0x00, 0x01, 9, 0, 0, 0, 0]),
            Err(DecodeError::TrailingBytes {
                declared: 8,
                got: 9
            })
        );
    }

    #[test]
    fn encode_pads_only_streams() {
        let mut buf = Vec::new();
        assert_eq!(
            encode(&mut buf, ch(0x4002), b"hello", Padding::Datagram),
            Ok(9)
        );
        assert_eq!(buf, [0x40, 0x02, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']);
        buf.clear();
        assert_eq!(
            encode(&mut buf, ch(0x4002), b"hello", Padding::Stream),
            Ok(12)
        );
        assert_eq!(buf.get(9..), Some(&[0u8, 0, 0][..]));
        assert_eq!(ChannelData::parse(&buf).unwrap().data(), b"hello");
        let big = vec![0u8; 65_536];
        assert_eq!(
            encode(&mut buf, ch(0x4002), &big, Padding::Datagram),
            Err(EncodeError::MessageTooLong { len: 65_536 })
        );
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 3);
        assert_eq!(padded_len(4), 4);
        assert_eq!(header(ch(0x4003), 0x0102), [0x40, 0x03, 0x01, 0x02]);
        assert!(is_channel_data(0x40) && is_channel_data(0x7F));
        assert!(!is_channel_data(0x00) && !is_channel_data(0x80));
    }
}
