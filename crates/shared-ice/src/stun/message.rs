//! [`Message`]: the validated, borrowed view of one STUN message, its typed attribute
//! getters and integrity/fingerprint checks, and the attribute value codecs the builder
//! shares.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::*;
use crate::channel::ChannelNumber;
use crate::reader::Reader;

/// A validated, borrowed STUN message.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    header: Header,
    /// Offset of the MESSAGE-INTEGRITY attribute header, when honoured.
    integrity: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, when honoured.
    integrity_sha256: Option<usize>,
    /// Offset of the FINGERPRINT attribute header.
    fingerprint: Option<usize>,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Attribute values (USERNAME, DATA, …) are deliberately not printed.
        f.debug_struct("Message")
            .field("class", &self.header.class)
            .field("method", &self.header.method)
            .field("transaction_id", &self.header.transaction_id)
            .field("len", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Message<'a> {
    /// Parses exactly one STUN message occupying all of `buf`, without allocating.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let header = Header::parse(buf)?;
        let declared = header.message_len();
        if buf.len() < declared {
            return Err(DecodeError::Truncated {
                needed: declared,
                got: buf.len(),
            });
        }
        if buf.len() > declared {
            return Err(DecodeError::TrailingBytes {
                declared,
                got: buf.len(),
            });
        }
        let body = buf.get(HEADER_LEN..).unwrap_or_default();
        let mut r = Reader::new(body);
        let mut offset = HEADER_LEN;
        let mut integrity = None;
        let mut integrity_sha256 = None;
        let mut fingerprint = None;
        while r.remaining() > 0 {
            let (Some(ty), Some(len)) = (r.u16(), r.u16()) else {
                // Unreachable while the length is 4-aligned, but never trust that.
                return Err(DecodeError::Truncated {
                    needed: offset + 4,
                    got: buf.len(),
                });
            };
            if fingerprint.is_some() {
                return Err(DecodeError::FingerprintNotLast);
            }
            let padded = padded_len(len);
            if r.take(padded).is_none() {
                return Err(DecodeError::AttributeTruncated {
                    ty,
                    len,
                    remaining: r.remaining(),
                });
            }
            match ty {
                attr::MESSAGE_INTEGRITY if integrity.is_none() && integrity_sha256.is_none() => {
                    if len != 20 {
                        return Err(DecodeError::BadAttributeLength { ty, len });
                    }
                    integrity = Some(offset);
                }
                attr::MESSAGE_INTEGRITY_SHA256 if integrity_sha256.is_none() => {
                    if !(16..=32).contains(&len) || len % 4 != 0 {
                        return Err(DecodeError::BadAttributeLength { ty, len });
                    }
                    integrity_sha256 = Some(offset);
                }
                attr::FINGERPRINT => {
                    if len != 4 {
                        return Err(DecodeError::BadAttributeLength { ty, len });
                    }
                    fingerprint = Some(offset);
                }
                _ => {}
            }
            offset += 4 + padded;
        }
        Ok(Self {
            buf,
            header,
            integrity,
            integrity_sha256,
            fingerprint,
        })
    }

    /// The decoded header.
    #[must_use]
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// Message class.
    #[must_use]
    pub const fn class(&self) -> Class {
        self.header.class
    }

    /// Message method.
    #[must_use]
    pub const fn method(&self) -> Method {
        self.header.method
    }

    /// Transaction id.
    #[must_use]
    pub const fn transaction_id(&self) -> TransactionId {
        self.header.transaction_id
    }

    /// The whole message as received.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Raw attributes in order as `(type, value)` (value without padding), skipping the
    /// ones RFC 8489 says to ignore after MESSAGE-INTEGRITY.
    #[must_use]
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            r: Reader::new(self.buf.get(HEADER_LEN..).unwrap_or_default()),
            after_integrity: false,
        }
    }

    /// The value of the first attribute of type `ty`.
    #[must_use]
    pub fn attribute(&self, ty: u16) -> Option<&'a [u8]> {
        self.attributes().find(|&(t, _)| t == ty).map(|(_, v)| v)
    }

    /// Comprehension-required attribute types (< 0x8000) that shared-ice does not know
    /// ([`attr::is_known`]): non-empty means a request must get 420 with these in
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).
    pub fn unknown_comprehension_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes()
            .map(|(t, _)| t)
            .filter(|&t| attr::is_comprehension_required(t) && !attr::is_known(t))
    }

    /// USERNAME (RFC 8489 §14.3), UTF-8, at most 512 bytes.
    pub fn username(&self) -> Result<Option<&'a str>, DecodeError> {
        self.text(attr::USERNAME, attr::MAX_USERNAME_LEN)
    }

    /// REALM (RFC 8489 §14.9).
    pub fn realm(&self) -> Result<Option<&'a str>, DecodeError> {
        self.text(attr::REALM, attr::MAX_TEXT_LEN)
    }

    /// NONCE (RFC 8489 §14.10).
    pub fn nonce(&self) -> Result<Option<&'a str>, DecodeError> {
        self.text(attr::NONCE, attr::MAX_TEXT_LEN)
    }

    /// SOFTWARE (RFC 8489 §14.14).
    pub fn software(&self) -> Result<Option<&'a str>, DecodeError> {
        self.text(attr::SOFTWARE, attr::MAX_TEXT_LEN)
    }

    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    pub fn alternate_domain(&self) -> Result<Option<&'a str>, DecodeError> {
        self.text(attr::ALTERNATE_DOMAIN, attr::MAX_TEXT_LEN)
    }

    /// USERHASH (RFC 8489 §14.4), 32 bytes.
    pub fn userhash(&self) -> Result<Option<[u8; 32]>, DecodeError> {
        self.fixed(attr::USERHASH)
    }

    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub fn lifetime(&self) -> Result<Option<u32>, DecodeError> {
        Ok(self.fixed(attr::LIFETIME)?.map(u32::from_be_bytes))
    }

    /// CONNECTION-ID (RFC 6062 §6.2.1).
    pub fn connection_id(&self) -> Result<Option<u32>, DecodeError> {
        Ok(self.fixed(attr::CONNECTION_ID)?.map(u32::from_be_bytes))
    }

    /// PRIORITY (RFC 8445 §16.1).
    pub fn priority(&self) -> Result<Option<u32>, DecodeError> {
        Ok(self.fixed(attr::PRIORITY)?.map(u32::from_be_bytes))
    }

    /// The protocol number in REQUESTED-TRANSPORT (RFC 8656 §18.8): 17 (UDP) or 6 (TCP).
    pub fn requested_transport(&self) -> Result<Option<u8>, DecodeError> {
        Ok(self.fixed::<4>(attr::REQUESTED_TRANSPORT)?.map(|[p, ..]| p))
    }

    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6). An unknown family is an error that
    /// maps to 440.
    pub fn requested_address_family(&self) -> Result<Option<AddressFamily>, DecodeError> {
        self.family(attr::REQUESTED_ADDRESS_FAMILY)
    }

    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11). Only IPv6 is meaningful here; the
    /// caller decides what to do with IPv4.
    pub fn additional_address_family(&self) -> Result<Option<AddressFamily>, DecodeError> {
        self.family(attr::ADDITIONAL_ADDRESS_FAMILY)
    }

    /// EVEN-PORT (RFC 8656 §18.7): `Some(reserve_next_port)` when present.
    pub fn even_port(&self) -> Result<Option<bool>, DecodeError> {
        Ok(self.fixed::<1>(attr::EVEN_PORT)?.map(|[b]| b & 0x80 != 0))
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.10), 8 bytes.
    pub fn reservation_token(&self) -> Result<Option<[u8; 8]>, DecodeError> {
        self.fixed(attr::RESERVATION_TOKEN)
    }

    /// Whether DONT-FRAGMENT (RFC 8656 §18.9) is present.
    #[must_use]
    pub fn dont_fragment(&self) -> bool {
        self.attribute(attr::DONT_FRAGMENT).is_some()
    }

    /// Whether USE-CANDIDATE (RFC 8445 §16.1) is present.
    #[must_use]
    pub fn use_candidate(&self) -> bool {
        self.attribute(attr::USE_CANDIDATE).is_some()
    }

    /// CHANNEL-NUMBER (RFC 8656 §18.1), validated to 0x4000..=0x7FFF ([`ChannelNumber`]).
    pub fn channel_number(&self) -> Result<Option<ChannelNumber>, DecodeError> {
        let Some([hi, lo, _, _]) = self.fixed::<4>(attr::CHANNEL_NUMBER)? else {
            return Ok(None);
        };
        let channel = u16::from_be_bytes([hi, lo]);
        ChannelNumber::new(channel)
            .map(Some)
            .ok_or(DecodeError::BadChannelNumber { channel })
    }

    /// DATA (RFC 8656 §18.4).
    #[must_use]
    pub fn data(&self) -> Option<&'a [u8]> {
        self.attribute(attr::DATA)
    }

    /// Every XOR-PEER-ADDRESS (RFC 8656 §18.3), in order; several are allowed in
    /// CreatePermission.
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + 'a {
        self.xor_addresses(attr::XOR_PEER_ADDRESS)
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn xor_mapped_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.address(attr::XOR_MAPPED_ADDRESS, true)
    }

    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5). Responses may carry two (IPv4 and IPv6,
    /// RFC 8656 §7.3); see [`xor_relayed_addresses`](Self::xor_relayed_addresses).
    pub fn xor_relayed_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.address(attr::XOR_RELAYED_ADDRESS, true)
    }

    /// Every XOR-RELAYED-ADDRESS in order (dual allocations, RFC 8656 §7.3).
    pub fn xor_relayed_addresses(
        &self,
    ) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + 'a {
        self.xor_addresses(attr::XOR_RELAYED_ADDRESS)
    }

    /// Every XOR-ed address attribute of type `ty`, in order.
    fn xor_addresses(&self, ty: u16) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + 'a {
        let tid = self.header.transaction_id;
        self.attributes()
            .filter(move |&(t, _)| t == ty)
            .map(move |(t, v)| decode_address(t, v, Some(&tid)))
    }

    /// MAPPED-ADDRESS (RFC 8489 §14.1), not XORed.
    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.address(attr::MAPPED_ADDRESS, false)
    }

    /// ALTERNATE-SERVER (RFC 8489 §14.15), not XORed.
    pub fn alternate_server(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.address(attr::ALTERNATE_SERVER, false)
    }

    /// ERROR-CODE (RFC 8489 §14.8).
    pub fn error_code(&self) -> Result<Option<ErrorCodeAttr<'a>>, DecodeError> {
        let Some(v) = self.attribute(attr::ERROR_CODE) else {
            return Ok(None);
        };
        let mut r = Reader::new(v);
        let (Some(_), Some(class), Some(number)) = (r.u16(), r.u8(), r.u8()) else {
            return Err(DecodeError::BadAttributeLength {
                ty: attr::ERROR_CODE,
                len: len16(v),
            });
        };
        let code = decode_code(attr::ERROR_CODE, class, number)?;
        let reason = text_value(attr::ERROR_CODE, r.rest(), attr::MAX_TEXT_LEN)?;
        Ok(Some(ErrorCodeAttr { code, reason }))
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    pub fn address_error_code(&self) -> Result<Option<AddressErrorCode<'a>>, DecodeError> {
        let ty = attr::ADDRESS_ERROR_CODE;
        let Some(v) = self.attribute(ty) else {
            return Ok(None);
        };
        let mut r = Reader::new(v);
        let (Some(family), Some(_), Some(class), Some(number)) = (r.u8(), r.u8(), r.u8(), r.u8())
        else {
            return Err(DecodeError::BadAttributeLength { ty, len: len16(v) });
        };
        let family =
            AddressFamily::from_u8(family).ok_or(DecodeError::BadAddressFamily { ty, family })?;
        let code = decode_code(ty, class, number)?;
        let reason = text_value(ty, r.rest(), attr::MAX_TEXT_LEN)?;
        Ok(Some(AddressErrorCode {
            family,
            code,
            reason,
        }))
    }

    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub fn password_algorithm(&self) -> Result<Option<PasswordAlgorithm<'a>>, DecodeError> {
        let ty = attr::PASSWORD_ALGORITHM;
        let Some(v) = self.attribute(ty) else {
            return Ok(None);
        };
        let mut r = Reader::new(v);
        let alg = read_password_algorithm(&mut r)
            .ok_or(DecodeError::BadAttributeLength { ty, len: len16(v) })?;
        if r.remaining() != 0 {
            return Err(DecodeError::BadAttributeLength { ty, len: len16(v) });
        }
        Ok(Some(alg))
    }

    /// The algorithms in PASSWORD-ALGORITHMS (RFC 8489 §14.11), in order; an item is
    /// `Err` (and iteration stops) when the list is malformed.
    pub fn password_algorithms(
        &self,
    ) -> impl Iterator<Item = Result<PasswordAlgorithm<'a>, DecodeError>> + 'a {
        let ty = attr::PASSWORD_ALGORITHMS;
        let v = self.attribute(ty).unwrap_or_default();
        let mut r = Reader::new(v);
        let mut failed = false;
        core::iter::from_fn(move || {
            if failed || r.remaining() == 0 {
                return None;
            }
            let item = read_password_algorithm(&mut r)
                .ok_or(DecodeError::BadAttributeLength { ty, len: len16(v) });
            failed = item.is_err();
            Some(item)
        })
    }

    /// ICMP (RFC 8656 §18.13).
    pub fn icmp(&self) -> Result<Option<Icmp>, DecodeError> {
        Ok(self
            .fixed::<8>(attr::ICMP)?
            .map(|[_, _, a, b, d0, d1, d2, d3]| {
                let tc = u16::from_be_bytes([a, b]);
                Icmp {
                    // 7-bit type then 9-bit code (RFC 8656 §18.13 figure).
                    icmp_type: (tc >> 9) as u8,
                    icmp_code: tc & 0x01FF,
                    error_data: u32::from_be_bytes([d0, d1, d2, d3]),
                }
            }))
    }

    /// Whether a MESSAGE-INTEGRITY attribute is present (and honoured).
    #[must_use]
    pub const fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    /// Whether a MESSAGE-INTEGRITY-SHA256 attribute is present (and honoured).
    #[must_use]
    pub const fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    /// Whether a FINGERPRINT attribute is present.
    #[must_use]
    pub const fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) with `key` (the long-term
    /// key, or the short-term password). The HMAC covers the message up to the
    /// attribute with the header length rewritten to end right after it. Compared in
    /// constant time. `false` when the attribute is absent.
    #[must_use]
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(off) = self.integrity else {
            return false;
        };
        let Some(expected) = self.attr_value_at(off, 20) else {
            return false;
        };
        let Some(mac) = mac_prefix::<HmacSha1>(self.buf, off, INTEGRITY_ATTR_LEN, key) else {
            return false;
        };
        mac.finalize()
            .into_bytes()
            .as_slice()
            .ct_eq(expected)
            .into()
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), possibly truncated to 16..32
    /// bytes, with `key`. Constant-time. `false` when absent.
    #[must_use]
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> bool {
        let Some(off) = self.integrity_sha256 else {
            return false;
        };
        let Some(len) = self.attr_len_at(off) else {
            return false;
        };
        let Some(expected) = self.attr_value_at(off, len) else {
            return false;
        };
        let Some(mac) = mac_prefix::<HmacSha256>(self.buf, off, 4 + len, key) else {
            return false;
        };
        let mac = mac.finalize().into_bytes();
        mac.get(..len)
            .is_some_and(|m| bool::from(m.ct_eq(expected)))
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7): CRC-32 of everything before it, XOR
    /// 0x5354554E. `false` when absent.
    #[must_use]
    pub fn check_fingerprint(&self) -> bool {
        let Some(off) = self.fingerprint else {
            return false;
        };
        let (Some(covered), Some(value)) = (self.buf.get(..off), self.attr_value_at(off, 4)) else {
            return false;
        };
        let crc = crc32fast::hash(covered) ^ FINGERPRINT_XOR;
        value == crc.to_be_bytes()
    }

    fn attr_len_at(&self, off: usize) -> Option<usize> {
        let b = self.buf.get(off + 2..off + 4)?;
        Some(usize::from(u16::from_be_bytes(b.try_into().ok()?)))
    }

    fn attr_value_at(&self, off: usize, len: usize) -> Option<&'a [u8]> {
        self.buf.get(off + 4..off + 4 + len)
    }

    fn text(&self, ty: u16, max: usize) -> Result<Option<&'a str>, DecodeError> {
        self.attribute(ty)
            .map(|v| text_value(ty, v, max))
            .transpose()
    }

    fn fixed<const N: usize>(&self, ty: u16) -> Result<Option<[u8; N]>, DecodeError> {
        let Some(v) = self.attribute(ty) else {
            return Ok(None);
        };
        <[u8; N]>::try_from(v)
            .map(Some)
            .map_err(|_| DecodeError::BadAttributeLength { ty, len: len16(v) })
    }

    fn family(&self, ty: u16) -> Result<Option<AddressFamily>, DecodeError> {
        let Some([family, ..]) = self.fixed::<4>(ty)? else {
            return Ok(None);
        };
        AddressFamily::from_u8(family)
            .map(Some)
            .ok_or(DecodeError::BadAddressFamily { ty, family })
    }

    fn address(&self, ty: u16, xor: bool) -> Result<Option<SocketAddr>, DecodeError> {
        let tid = self.header.transaction_id;
        self.attribute(ty)
            .map(|v| decode_address(ty, v, xor.then_some(&tid)))
            .transpose()
    }
}

/// An iterator over raw `(type, value)` attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    r: Reader<'a>,
    after_integrity: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ty = self.r.u16()?;
            let len = self.r.u16()?;
            let padded = self.r.take(padded_len(len))?;
            let value = padded.get(..usize::from(len))?;
            if self.after_integrity
                && ty != attr::MESSAGE_INTEGRITY_SHA256
                && ty != attr::FINGERPRINT
            {
                continue;
            }
            if ty == attr::MESSAGE_INTEGRITY || ty == attr::MESSAGE_INTEGRITY_SHA256 {
                self.after_integrity = true;
            }
            return Some((ty, value));
        }
    }
}

/// A decoded ERROR-CODE attribute.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ErrorCodeAttr<'a> {
    /// The code, 300..=699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

/// A decoded ADDRESS-ERROR-CODE attribute (RFC 8656 §18.12).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AddressErrorCode<'a> {
    /// The family the error is about.
    pub family: AddressFamily,
    /// The code, 300..=699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

/// One entry of PASSWORD-ALGORITHM(S) (RFC 8489 §14.11–14.12).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PasswordAlgorithm<'a> {
    /// Algorithm number ([`PASSWORD_ALGORITHM_MD5`], [`PASSWORD_ALGORITHM_SHA256`]).
    pub algorithm: u16,
    /// Algorithm parameters (empty for MD5 and SHA-256).
    pub params: &'a [u8],
}

/// A decoded ICMP attribute (RFC 8656 §18.13).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Icmp {
    /// ICMP type (7 bits).
    pub icmp_type: u8,
    /// ICMP code (9 bits).
    pub icmp_code: u16,
    /// Error data (the next-hop MTU for "packet too big"/"fragmentation needed").
    pub error_data: u32,
}

/// Attribute value length rounded up to a multiple of 4.
pub(crate) const fn padded_len(len: u16) -> usize {
    (len as usize + 3) & !3
}

fn len16(v: &[u8]) -> u16 {
    u16::try_from(v.len()).unwrap_or(u16::MAX)
}

fn text_value(ty: u16, v: &[u8], max: usize) -> Result<&str, DecodeError> {
    if v.len() > max {
        return Err(DecodeError::BadAttributeLength { ty, len: len16(v) });
    }
    core::str::from_utf8(v).map_err(|_| DecodeError::InvalidUtf8 { ty })
}

fn decode_code(ty: u16, class: u8, number: u8) -> Result<u16, DecodeError> {
    let class = class & 0x07;
    if !(3..=6).contains(&class) || number >= 100 {
        return Err(DecodeError::BadErrorCode { ty, class, number });
    }
    Ok(u16::from(class) * 100 + u16::from(number))
}

fn read_password_algorithm<'a>(r: &mut Reader<'a>) -> Option<PasswordAlgorithm<'a>> {
    let algorithm = r.u16()?;
    let plen = r.u16()?;
    let padded = r.take(padded_len(plen))?;
    let params = padded.get(..usize::from(plen))?;
    Some(PasswordAlgorithm { algorithm, params })
}

/// Decodes a (XOR-)address attribute value; `tid` is `Some` for XOR encoding.
fn decode_address(
    ty: u16,
    v: &[u8],
    tid: Option<&TransactionId>,
) -> Result<SocketAddr, DecodeError> {
    let bad_len = DecodeError::BadAttributeLength { ty, len: len16(v) };
    let mut r = Reader::new(v);
    let (Some(_), Some(family), Some(port)) = (r.u8(), r.u8(), r.u16()) else {
        return Err(bad_len);
    };
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if tid.is_some() {
        port ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        port
    };
    match AddressFamily::from_u8(family) {
        Some(AddressFamily::V4) => {
            let mut ip: [u8; 4] = r.rest().try_into().map_err(|_| bad_len)?;
            if tid.is_some() {
                for (b, k) in ip.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        Some(AddressFamily::V6) => {
            let mut ip: [u8; 16] = r.rest().try_into().map_err(|_| bad_len)?;
            if let Some(tid) = tid {
                for (b, k) in ip.iter_mut().zip(cookie.iter().chain(tid.0.iter())) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                0,
            )))
        }
        None => Err(DecodeError::BadAddressFamily { ty, family }),
    }
}

/// Encodes an address attribute value; returns the buffer and the bytes used (8 or 20).
/// `tid` is `Some` for XOR encoding.
pub(crate) fn encode_address(addr: &SocketAddr, tid: Option<&TransactionId>) -> ([u8; 20], usize) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let zero = [0u8; 12];
    let tid_bytes = tid.map_or(&zero, |t| &t.0);
    let mut ip = [0u8; 16];
    let (family, n) = match addr.ip() {
        IpAddr::V4(a) => {
            for (d, s) in ip.iter_mut().zip(a.octets()) {
                *d = s;
            }
            (AddressFamily::V4.to_u8(), 4)
        }
        IpAddr::V6(a) => {
            ip = a.octets();
            (AddressFamily::V6.to_u8(), 16)
        }
    };
    let mut port = addr.port();
    if tid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
        for (b, k) in ip.iter_mut().zip(cookie.iter().chain(tid_bytes.iter())) {
            *b ^= k;
        }
    }
    let [p0, p1] = port.to_be_bytes();
    let mut out = [0u8; 20];
    for (d, s) in out
        .iter_mut()
        .zip([0, family, p0, p1].iter().chain(ip.iter().take(n)))
    {
        *d = *s;
    }
    (out, 4 + n)
}

/// Starts an HMAC over the message prefix before the attribute at `off`, with the
/// header length rewritten as if the message ended right after an attribute of
/// `attr_total` bytes placed at `off` (RFC 8489 §14.5–14.6).
pub(crate) fn mac_prefix<M: Mac + hmac::digest::KeyInit>(
    buf: &[u8],
    off: usize,
    attr_total: usize,
    key: &[u8],
) -> Option<M> {
    let mut mac = <M as Mac>::new_from_slice(key).ok()?;
    // `off` is an attribute offset we computed (>= HEADER_LEN), not wire data.
    let new_len = u16::try_from(off.checked_add(attr_total)?.checked_sub(HEADER_LEN)?).ok()?;
    mac.update(buf.get(..2)?);
    mac.update(&new_len.to_be_bytes());
    mac.update(buf.get(4..off)?);
    Some(mac)
}

/// HMAC-SHA1 as used by MESSAGE-INTEGRITY.
pub(crate) type HmacSha1 = Hmac<sha1::Sha1>;
/// HMAC-SHA256 as used by MESSAGE-INTEGRITY-SHA256.
pub(crate) type HmacSha256 = Hmac<sha2::Sha256>;

/// Calls every accessor of `m` once: the property tests and the cargo-fuzz targets share
/// it so that a new accessor is exercised by both. None may panic on any input.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub fn exercise_accessors(m: &Message<'_>) {
    for (_, v) in m.attributes() {
        let _ = v.len();
    }
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
        m.verify_integrity(b"k"),
        m.verify_integrity_sha256(b"k"),
        m.check_fingerprint(),
    );
}
