//! STUN message codec (RFC 8489) with the TURN attributes of RFC 8656, 6156 and 6062.
//!
//! [`Message::parse`] validates the header and the attribute layout once, without
//! allocating, and then hands out borrowed views; typed getters decode single
//! attributes on demand. [`MessageBuilder`] writes into a caller-owned `Vec<u8>`.
//!
//! Parsing rules (RFC 8489 §5, §6.3, §14):
//! * the first two bits are zero, the magic cookie matches, the length is a multiple
//!   of 4 and equals the bytes after the header exactly;
//! * every attribute, including its padding, lies within the declared length;
//! * nothing follows FINGERPRINT;
//! * attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and
//!   FINGERPRINT (and after MESSAGE-INTEGRITY-SHA256 other than FINGERPRINT) are
//!   ignored: [`Message::attributes`] does not yield them;
//! * when an attribute repeats, getters return the first one (XOR-PEER-ADDRESS and
//!   the raw iterator yield all of them).

pub mod attr;
mod builder;
mod message;
#[cfg(test)]
mod tests;

use core::fmt;
use std::net::SocketAddr;

pub use self::builder::MessageBuilder;
#[cfg(any(test, fuzzing))]
pub use self::message::exercise_accessors;
pub use self::message::{
    AddressErrorCode, Attributes, ErrorCodeAttr, Icmp, Message, PasswordAlgorithm,
};
pub(crate) use self::message::{HmacSha1, HmacSha256, encode_address, padded_len};
pub use crate::error::{DecodeError, EncodeError};
use crate::reader::Reader;

/// The fixed magic cookie in every STUN message ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)).
pub const HEADER_LEN: usize = 20;
/// Value XORed into the CRC-32 of FINGERPRINT ([RFC 8489 §14.7](https://www.rfc-editor.org/rfc/rfc8489#section-14.7)).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Size of a MESSAGE-INTEGRITY attribute including its header (HMAC-SHA1, 20 bytes).
pub const INTEGRITY_ATTR_LEN: usize = 24;
/// Size of a full MESSAGE-INTEGRITY-SHA256 attribute including its header.
pub const INTEGRITY_SHA256_ATTR_LEN: usize = 36;
/// Size of a FINGERPRINT attribute including its header.
pub const FINGERPRINT_ATTR_LEN: usize = 8;
/// REQUESTED-TRANSPORT protocol number for UDP ([RFC 8656 §18.8](https://www.rfc-editor.org/rfc/rfc8656#section-18.8)).
pub const PROTOCOL_UDP: u8 = 17;
/// REQUESTED-TRANSPORT protocol number for TCP ([RFC 6062 §6.1](https://www.rfc-editor.org/rfc/rfc6062#section-6.1)).
pub const PROTOCOL_TCP: u8 = 6;
/// PASSWORD-ALGORITHM number for MD5 ([RFC 8489 §18.5](https://www.rfc-editor.org/rfc/rfc8489#section-18.5)).
pub const PASSWORD_ALGORITHM_MD5: u16 = 0x0001;
/// PASSWORD-ALGORITHM number for SHA-256 ([RFC 8489 §18.5](https://www.rfc-editor.org/rfc/rfc8489#section-18.5)).
pub const PASSWORD_ALGORITHM_SHA256: u16 = 0x0002;

/// STUN error codes and their recommended reason phrases
/// ([RFC 8489 §14.8](https://www.rfc-editor.org/rfc/rfc8489#section-14.8),
/// [RFC 8656 §19](https://www.rfc-editor.org/rfc/rfc8656#section-19), RFC 6062 §6.3).
pub mod error_code {
    /// 300 Try Alternate (RFC 8489 §14.8).
    pub const TRY_ALTERNATE: u16 = 300;
    /// 400 Bad Request (RFC 8489 §14.8).
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated (RFC 8489 §14.8).
    pub const UNAUTHENTICATED: u16 = 401;
    /// 403 Forbidden (RFC 8656 §19).
    pub const FORBIDDEN: u16 = 403;
    /// 405 Mobility Forbidden (RFC 8016 §3.4).
    pub const MOBILITY_FORBIDDEN: u16 = 405;
    /// 420 Unknown Attribute (RFC 8489 §14.8).
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 437 Allocation Mismatch (RFC 8656 §19).
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce (RFC 8489 §14.8).
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported (RFC 8656 §19).
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// 441 Wrong Credentials (RFC 8656 §19).
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// 442 Unsupported Transport Protocol (RFC 8656 §19).
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
    /// 443 Peer Address Family Mismatch (RFC 8656 §19).
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// 446 Connection Already Exists (RFC 6062 §6.3).
    pub const CONNECTION_ALREADY_EXISTS: u16 = 446;
    /// 447 Connection Timeout or Failure (RFC 6062 §6.3).
    pub const CONNECTION_TIMEOUT_OR_FAILURE: u16 = 447;
    /// 486 Allocation Quota Reached (RFC 8656 §19).
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// 487 Role Conflict (RFC 8445 §7.3.1.1).
    pub const ROLE_CONFLICT: u16 = 487;
    /// 500 Server Error (RFC 8489 §14.8).
    pub const SERVER_ERROR: u16 = 500;
    /// 508 Insufficient Capacity (RFC 8656 §19).
    pub const INSUFFICIENT_CAPACITY: u16 = 508;

    /// The recommended reason phrase for `code` (empty for unknown codes).
    #[must_use]
    pub const fn reason(code: u16) -> &'static str {
        match code {
            TRY_ALTERNATE => "Try Alternate",
            BAD_REQUEST => "Bad Request",
            UNAUTHENTICATED => "Unauthenticated",
            FORBIDDEN => "Forbidden",
            MOBILITY_FORBIDDEN => "Mobility Forbidden",
            UNKNOWN_ATTRIBUTE => "Unknown Attribute",
            ALLOCATION_MISMATCH => "Allocation Mismatch",
            STALE_NONCE => "Stale Nonce",
            ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
            WRONG_CREDENTIALS => "Wrong Credentials",
            UNSUPPORTED_TRANSPORT_PROTOCOL => "Unsupported Transport Protocol",
            PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
            CONNECTION_ALREADY_EXISTS => "Connection Already Exists",
            CONNECTION_TIMEOUT_OR_FAILURE => "Connection Timeout or Failure",
            ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
            ROLE_CONFLICT => "Role Conflict",
            SERVER_ERROR => "Server Error",
            INSUFFICIENT_CAPACITY => "Insufficient Capacity",
            _ => "",
        }
    }
}

/// The 96-bit transaction id ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)).
/// `Debug` and `Display` print it as hex.
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// The raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl From<[u8; 12]> for TransactionId {
    fn from(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({self})")
    }
}

/// The message class ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Class {
    /// A request (C1 C0 = 00).
    Request,
    /// An indication (01).
    Indication,
    /// A success response (10).
    Success,
    /// An error response (11).
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Self::Request => 0x0000,
            Self::Indication => 0x0010,
            Self::Success => 0x0100,
            Self::Error => 0x0110,
        }
    }
}

/// A 12-bit STUN method ([RFC 8489 §5](https://www.rfc-editor.org/rfc/rfc8489#section-5)).
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Method(u16);

impl Method {
    /// Binding ([RFC 8489 §18.2](https://www.rfc-editor.org/rfc/rfc8489#section-18.2)).
    pub const BINDING: Self = Self(0x001);
    /// Allocate ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const ALLOCATE: Self = Self(0x003);
    /// Refresh ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const REFRESH: Self = Self(0x004);
    /// Send, indication only ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const SEND: Self = Self(0x006);
    /// Data, indication only ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const DATA: Self = Self(0x007);
    /// CreatePermission ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const CREATE_PERMISSION: Self = Self(0x008);
    /// ChannelBind ([RFC 8656 §17](https://www.rfc-editor.org/rfc/rfc8656#section-17)).
    pub const CHANNEL_BIND: Self = Self(0x009);
    /// Connect, TURN-TCP ([RFC 6062 §6.1](https://www.rfc-editor.org/rfc/rfc6062#section-6.1)).
    pub const CONNECT: Self = Self(0x00A);
    /// ConnectionBind, TURN-TCP ([RFC 6062 §6.1](https://www.rfc-editor.org/rfc/rfc6062#section-6.1)).
    pub const CONNECTION_BIND: Self = Self(0x00B);
    /// ConnectionAttempt, TURN-TCP ([RFC 6062 §6.1](https://www.rfc-editor.org/rfc/rfc6062#section-6.1)).
    pub const CONNECTION_ATTEMPT: Self = Self(0x00C);

    /// A method from its 12-bit number, or `None` when it does not fit 12 bits.
    #[must_use]
    pub const fn new(value: u16) -> Option<Self> {
        if value <= 0x0FFF {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The 12-bit method number.
    #[must_use]
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The registry name of a known method (for logs), or `None`.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x001 => "Binding",
            0x003 => "Allocate",
            0x004 => "Refresh",
            0x006 => "Send",
            0x007 => "Data",
            0x008 => "CreatePermission",
            0x009 => "ChannelBind",
            0x00A => "Connect",
            0x00B => "ConnectionBind",
            0x00C => "ConnectionAttempt",
            _ => return None,
        })
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Method({:#05x})", self.0),
        }
    }
}

/// Encodes class and method into the 14-bit message type (RFC 8489 §5, figure 3).
#[must_use]
pub const fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.bits()
}

/// Splits a message type into class and method (the two top bits are ignored).
#[must_use]
pub const fn split_message_type(ty: u16) -> (Class, Method) {
    let class = match ty & 0x0110 {
        0x0000 => Class::Request,
        0x0010 => Class::Indication,
        0x0100 => Class::Success,
        _ => Class::Error,
    };
    let m = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    (class, Method(m))
}

/// IP address family as carried in address attributes and
/// REQUESTED-ADDRESS-FAMILY ([RFC 8489 §14.1](https://www.rfc-editor.org/rfc/rfc8489#section-14.1)).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum AddressFamily {
    /// IPv4 (0x01).
    V4,
    /// IPv6 (0x02).
    V6,
}

impl AddressFamily {
    /// The wire value.
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::V4 => 0x01,
            Self::V6 => 0x02,
        }
    }

    /// From the wire value, or `None` for anything else.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x01 => Some(Self::V4),
            0x02 => Some(Self::V6),
            _ => None,
        }
    }

    /// The family of `addr`.
    #[must_use]
    pub const fn of(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => Self::V4,
            SocketAddr::V6(_) => Self::V6,
        }
    }
}

/// The decoded 20-byte STUN header; available even when the attributes are malformed,
/// so that a server can still answer 400 to the right transaction.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Header {
    /// Message class.
    pub class: Class,
    /// Message method.
    pub method: Method,
    /// Declared length of the attributes (not including the header).
    pub length: u16,
    /// Transaction id.
    pub transaction_id: TransactionId,
}

impl Header {
    /// Decodes and checks the header at the start of `buf` (first bits, magic cookie,
    /// length alignment). Does not look at anything after the first 20 bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let (Some(ty), Some(length), Some(cookie), Some(tid)) =
            (r.u16(), r.u16(), r.u32(), r.array::<12>())
        else {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN,
                got: buf.len(),
            });
        };
        if ty & 0xC000 != 0 {
            return Err(DecodeError::NotStun {
                first_byte: ty.to_be_bytes()[0],
            });
        }
        if cookie != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie { cookie });
        }
        if length % 4 != 0 {
            return Err(DecodeError::UnalignedLength { len: length });
        }
        let (class, method) = split_message_type(ty);
        Ok(Self {
            class,
            method,
            length,
            transaction_id: TransactionId(tid),
        })
    }

    /// Header plus attributes: the size of the whole message.
    #[must_use]
    pub const fn message_len(&self) -> usize {
        HEADER_LEN + self.length as usize
    }
}
