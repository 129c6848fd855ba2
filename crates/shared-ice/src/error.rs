//! Codec errors: one enum for decoding (STUN and ChannelData) and one for encoding.
//!
//! Both are small `Copy` values that carry the numbers needed to debug a packet
//! without allocating; [`DecodeError::error_code`] maps a decode error to the STUN
//! error response a server should send, in one place.

use core::fmt;

use crate::stun::{attr, error_code};

/// Why bytes could not be decoded as a STUN message, one of its attributes, or a
/// ChannelData message.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header or the declared length requires.
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first two bits of a STUN message are not zero (RFC 8489 §5).
    NotStun {
        /// The offending first byte.
        first_byte: u8,
    },
    /// The magic cookie is not 0x2112A442 (RFC 8489 §5).
    BadMagicCookie {
        /// The value found.
        cookie: u32,
    },
    /// The message length is not a multiple of 4 (RFC 8489 §5).
    UnalignedLength {
        /// The declared length.
        len: u16,
    },
    /// More bytes than the header declares (a datagram carries exactly one message).
    TrailingBytes {
        /// Bytes the header declares (including the header and allowed padding).
        declared: usize,
        /// Bytes present.
        got: usize,
    },
    /// An attribute's value (with padding) runs past the end of the message.
    AttributeTruncated {
        /// Attribute type.
        ty: u16,
        /// Declared value length.
        len: u16,
        /// Bytes left in the message after the attribute header.
        remaining: usize,
    },
    /// An attribute has a length its type does not allow.
    BadAttributeLength {
        /// Attribute type.
        ty: u16,
        /// Declared value length.
        len: u16,
    },
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    FingerprintNotLast,
    /// An address attribute names a family other than IPv4 (0x01) or IPv6 (0x02).
    BadAddressFamily {
        /// Attribute type.
        ty: u16,
        /// The family byte found.
        family: u8,
    },
    /// A text attribute is not valid UTF-8.
    InvalidUtf8 {
        /// Attribute type.
        ty: u16,
    },
    /// An ERROR-CODE or ADDRESS-ERROR-CODE outside 300..=699 (RFC 8489 §14.8).
    BadErrorCode {
        /// Attribute type.
        ty: u16,
        /// The class digit (hundreds).
        class: u8,
        /// The number (0..=255 on the wire, must be < 100).
        number: u8,
    },
    /// A channel number outside 0x4000..=0x7FFF (see [`ChannelNumber`](crate::channel::ChannelNumber)).
    BadChannelNumber {
        /// The channel number found.
        channel: u16,
    },
}

impl DecodeError {
    /// The STUN error code to answer a *request* with, or `None` when the bytes
    /// must be silently discarded (RFC 8489 §6.3: anything that is not
    /// recognisably a well-formed STUN message gets no reply).
    ///
    /// * header-level problems (truncated, not STUN, bad cookie, bad length,
    ///   trailing bytes) → `None`;
    /// * an unsupported family in REQUESTED-ADDRESS-FAMILY or
    ///   ADDITIONAL-ADDRESS-FAMILY → 440 (Address Family not Supported, RFC 8656 §7.2);
    /// * every other malformed attribute → 400 (Bad Request).
    ///
    /// 420 (Unknown Attribute) is not a decode error: see
    /// [`Message::unknown_comprehension_required`](crate::stun::Message::unknown_comprehension_required).
    #[must_use]
    pub const fn error_code(self) -> Option<u16> {
        match self {
            Self::Truncated { .. }
            | Self::NotStun { .. }
            | Self::BadMagicCookie { .. }
            | Self::UnalignedLength { .. }
            | Self::TrailingBytes { .. } => None,
            Self::BadAddressFamily {
                ty: attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY,
                ..
            } => Some(error_code::ADDRESS_FAMILY_NOT_SUPPORTED),
            Self::AttributeTruncated { .. }
            | Self::BadAttributeLength { .. }
            | Self::FingerprintNotLast
            | Self::BadAddressFamily { .. }
            | Self::InvalidUtf8 { .. }
            | Self::BadErrorCode { .. }
            | Self::BadChannelNumber { .. } => Some(error_code::BAD_REQUEST),
        }
    }
}

/// Formats an attribute type as its registry name, or hex when unknown.
struct AttrName(u16);

impl fmt::Display for AttrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match attr::name(self.0) {
            Some(n) => f.write_str(n),
            None => write!(f, "attribute {:#06x}", self.0),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, got } => {
                write!(f, "truncated: need {needed} bytes, got {got}")
            }
            Self::NotStun { first_byte } => {
                write!(f, "not a STUN message (first byte {first_byte:#04x})")
            }
            Self::BadMagicCookie { cookie } => write!(f, "bad magic cookie {cookie:#010x}"),
            Self::UnalignedLength { len } => {
                write!(f, "message length {len} is not a multiple of 4")
            }
            Self::TrailingBytes { declared, got } => {
                write!(f, "{got} bytes present but only {declared} declared")
            }
            Self::AttributeTruncated { ty, len, remaining } => write!(
                f,
                "{} of length {len} runs past the message end ({remaining} bytes left)",
                AttrName(ty)
            ),
            Self::BadAttributeLength { ty, len } => {
                write!(f, "{} has invalid length {len}", AttrName(ty))
            }
            Self::FingerprintNotLast => f.write_str("attribute after FINGERPRINT"),
            Self::BadAddressFamily { ty, family } => {
                write!(
                    f,
                    "{} has unknown address family {family:#04x}",
                    AttrName(ty)
                )
            }
            Self::InvalidUtf8 { ty } => write!(f, "{} is not valid UTF-8", AttrName(ty)),
            Self::BadErrorCode { ty, class, number } => write!(
                f,
                "{} has invalid code (class {class}, number {number})",
                AttrName(ty)
            ),
            Self::BadChannelNumber { channel } => {
                write!(f, "channel number {channel:#06x} outside 0x4000..=0x7FFF")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded. The builder records the first error and
/// returns it from its `finish*` call; the partial message is removed from the buffer.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum EncodeError {
    /// An attribute value does not fit the 16-bit length field.
    AttributeTooLong {
        /// Attribute type.
        ty: u16,
        /// Value length requested.
        len: usize,
    },
    /// A text value is longer than the RFC allows.
    ValueTooLong {
        /// Attribute type.
        ty: u16,
        /// Value length requested.
        len: usize,
        /// Longest allowed.
        max: usize,
    },
    /// The whole message does not fit the 16-bit length field.
    MessageTooLong {
        /// Message body length requested.
        len: usize,
    },
    /// An error code outside 300..=699.
    BadErrorCode {
        /// The code requested.
        code: u16,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AttributeTooLong { ty, len } => {
                write!(f, "{} value of {len} bytes exceeds 65535", AttrName(ty))
            }
            Self::ValueTooLong { ty, len, max } => {
                write!(f, "{} value of {len} bytes exceeds {max}", AttrName(ty))
            }
            Self::MessageTooLong { len } => {
                write!(f, "message body of {len} bytes exceeds 65535")
            }
            Self::BadErrorCode { code } => write!(f, "error code {code} outside 300..=699"),
        }
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_in_one_place() {
        assert_eq!(DecodeError::BadMagicCookie { cookie: 0 }.error_code(), None);
        assert_eq!(
            DecodeError::Truncated { needed: 20, got: 3 }.error_code(),
            None
        );
        assert_eq!(
            DecodeError::BadAttributeLength {
                ty: attr::LIFETIME,
                len: 3
            }
            .error_code(),
            Some(400)
        );
        assert_eq!(
            DecodeError::BadAddressFamily {
                ty: attr::REQUESTED_ADDRESS_FAMILY,
                family: 9
            }
            .error_code(),
            Some(440)
        );
        assert_eq!(
            DecodeError::BadAddressFamily {
                ty: attr::XOR_PEER_ADDRESS,
                family: 9
            }
            .error_code(),
            Some(400)
        );
    }

    #[test]
    fn display_names_attributes() {
        let e = DecodeError::BadAttributeLength {
            ty: attr::LIFETIME,
            len: 3,
        };
        assert_eq!(e.to_string(), "LIFETIME has invalid length 3");
        let e = DecodeError::InvalidUtf8 { ty: 0x7001 };
        assert_eq!(e.to_string(), "attribute 0x7001 is not valid UTF-8");
        let e = EncodeError::BadErrorCode { code: 99 };
        assert_eq!(e.to_string(), "error code 99 outside 300..=699");
    }
}
