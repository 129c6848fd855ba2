//! Writing STUN messages into a caller-owned buffer.

use std::net::SocketAddr;

use hmac::Mac;

use super::{
    AddressFamily, Class, EncodeError, FINGERPRINT_XOR, HEADER_LEN, HmacSha1, HmacSha256, Icmp,
    MAGIC_COOKIE, Message, Method, PasswordAlgorithm, TransactionId, attr, encode_address,
    error_code, message_type, padded_len,
};
use crate::channel::ChannelNumber;

/// Builds one STUN message at the end of a caller-owned `Vec<u8>`.
///
/// Nothing is allocated once the vector has enough capacity (keep one buffer per
/// socket task and `clear()` it between messages). Attribute methods return
/// `&mut Self` so they chain; the first error (a value too long, an invalid error
/// code) is remembered and returned by the `finish*` call, which then removes the
/// partial message from the buffer. The `finish*` methods consume the builder, so
/// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are always the last attributes and are
/// computed over exactly what precedes them.
///
/// ```
/// use shared_ice::stun::{Class, Message, MessageBuilder, Method, TransactionId};
///
/// let mut buf = Vec::with_capacity(1500);
/// let tid = TransactionId([7; 12]);
/// let bytes = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, tid)
///     .software("example")
///     .finish_with_fingerprint()?
///     .to_vec();
/// let msg = Message::parse(&bytes)?;
/// assert!(msg.check_fingerprint());
/// assert_eq!(msg.software()?, Some("example"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
    err: Option<EncodeError>,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message at the end of `buf` (existing contents are kept).
    pub fn new(buf: &'b mut Vec<u8>, class: Class, method: Method, tid: TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        Self {
            buf,
            start,
            tid,
            err: None,
        }
    }

    /// Starts a success response to `request` (same method and transaction id).
    pub fn success_response(buf: &'b mut Vec<u8>, request: &Message<'_>) -> Self {
        Self::new(
            buf,
            Class::Success,
            request.method(),
            request.transaction_id(),
        )
    }

    /// Starts an error response to `request` carrying ERROR-CODE `code` with its
    /// recommended reason phrase.
    pub fn error_response(buf: &'b mut Vec<u8>, request: &Message<'_>, code: u16) -> Self {
        Self::new(
            buf,
            Class::Error,
            request.method(),
            request.transaction_id(),
        )
        .error_code(code, error_code::reason(code))
    }

    /// The transaction id being written.
    #[must_use]
    pub const fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// Adds an attribute with a raw value (padding is added).
    pub fn attribute(mut self, ty: u16, value: &[u8]) -> Self {
        self.put(ty, value);
        self
    }

    /// USERNAME (RFC 8489 §14.3), at most 512 bytes.
    pub fn username(mut self, username: &str) -> Self {
        self.text(attr::USERNAME, username, attr::MAX_USERNAME_LEN);
        self
    }

    /// REALM (RFC 8489 §14.9).
    pub fn realm(mut self, realm: &str) -> Self {
        self.text(attr::REALM, realm, attr::MAX_TEXT_LEN);
        self
    }

    /// NONCE (RFC 8489 §14.10).
    pub fn nonce(mut self, nonce: &str) -> Self {
        self.text(attr::NONCE, nonce, attr::MAX_TEXT_LEN);
        self
    }

    /// SOFTWARE (RFC 8489 §14.14).
    pub fn software(mut self, software: &str) -> Self {
        self.text(attr::SOFTWARE, software, attr::MAX_TEXT_LEN);
        self
    }

    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    pub fn alternate_domain(mut self, domain: &str) -> Self {
        self.text(attr::ALTERNATE_DOMAIN, domain, attr::MAX_TEXT_LEN);
        self
    }

    /// USERHASH (RFC 8489 §14.4).
    pub fn userhash(self, hash: &[u8; 32]) -> Self {
        self.attribute(attr::USERHASH, hash)
    }

    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub fn lifetime(self, secs: u32) -> Self {
        self.attribute(attr::LIFETIME, &secs.to_be_bytes())
    }

    /// CONNECTION-ID (RFC 6062 §6.2.1).
    pub fn connection_id(self, id: u32) -> Self {
        self.attribute(attr::CONNECTION_ID, &id.to_be_bytes())
    }

    /// PRIORITY (RFC 8445 §16.1).
    pub fn priority(self, priority: u32) -> Self {
        self.attribute(attr::PRIORITY, &priority.to_be_bytes())
    }

    /// USE-CANDIDATE (RFC 8445 §16.1).
    pub fn use_candidate(self) -> Self {
        self.attribute(attr::USE_CANDIDATE, &[])
    }

    /// ICE-CONTROLLED with its tie-breaker (RFC 8445 §16.1).
    pub fn ice_controlled(self, tie_breaker: u64) -> Self {
        self.attribute(attr::ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }

    /// ICE-CONTROLLING with its tie-breaker (RFC 8445 §16.1).
    pub fn ice_controlling(self, tie_breaker: u64) -> Self {
        self.attribute(attr::ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    /// REQUESTED-TRANSPORT (RFC 8656 §18.8); see [`PROTOCOL_UDP`](super::PROTOCOL_UDP).
    pub fn requested_transport(self, protocol: u8) -> Self {
        self.attribute(attr::REQUESTED_TRANSPORT, &[protocol, 0, 0, 0])
    }

    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub fn requested_address_family(self, family: AddressFamily) -> Self {
        self.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[family.to_u8(), 0, 0, 0])
    }

    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    pub fn additional_address_family(self, family: AddressFamily) -> Self {
        self.attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[family.to_u8(), 0, 0, 0])
    }

    /// EVEN-PORT (RFC 8656 §18.7) with the R (reserve next port) bit.
    pub fn even_port(self, reserve_next: bool) -> Self {
        self.attribute(attr::EVEN_PORT, &[if reserve_next { 0x80 } else { 0 }])
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub fn reservation_token(self, token: [u8; 8]) -> Self {
        self.attribute(attr::RESERVATION_TOKEN, &token)
    }

    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub fn dont_fragment(self) -> Self {
        self.attribute(attr::DONT_FRAGMENT, &[])
    }

    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub fn channel_number(self, channel: ChannelNumber) -> Self {
        let [hi, lo] = channel.get().to_be_bytes();
        self.attribute(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
    }

    /// DATA (RFC 8656 §18.4).
    pub fn data(self, data: &[u8]) -> Self {
        self.attribute(attr::DATA, data)
    }

    /// XOR-PEER-ADDRESS (RFC 8656 §18.3); call once per peer.
    pub fn xor_peer_address(mut self, addr: SocketAddr) -> Self {
        self.address(attr::XOR_PEER_ADDRESS, addr, true);
        self
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn xor_mapped_address(mut self, addr: SocketAddr) -> Self {
        self.address(attr::XOR_MAPPED_ADDRESS, addr, true);
        self
    }

    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub fn xor_relayed_address(mut self, addr: SocketAddr) -> Self {
        self.address(attr::XOR_RELAYED_ADDRESS, addr, true);
        self
    }

    /// MAPPED-ADDRESS (RFC 8489 §14.1), for old RFC 3489 clients.
    pub fn mapped_address(mut self, addr: SocketAddr) -> Self {
        self.address(attr::MAPPED_ADDRESS, addr, false);
        self
    }

    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub fn alternate_server(mut self, addr: SocketAddr) -> Self {
        self.address(attr::ALTERNATE_SERVER, addr, false);
        self
    }

    /// ERROR-CODE (RFC 8489 §14.8): `code` in 300..=699 and a reason phrase.
    pub fn error_code(mut self, code: u16, reason: &str) -> Self {
        let Some([class, number]) = self.split_code(code) else {
            return self;
        };
        self.text_with_prefix(attr::ERROR_CODE, &[0, 0, class, number], reason);
        self
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    pub fn address_error_code(mut self, family: AddressFamily, code: u16, reason: &str) -> Self {
        let Some([class, number]) = self.split_code(code) else {
            return self;
        };
        self.text_with_prefix(
            attr::ADDRESS_ERROR_CODE,
            &[family.to_u8(), 0, class, number],
            reason,
        );
        self
    }

    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13), e.g. from
    /// [`Message::unknown_comprehension_required`].
    pub fn unknown_attributes(mut self, types: impl IntoIterator<Item = u16>) -> Self {
        if let Some(pos) = self.begin(attr::UNKNOWN_ATTRIBUTES) {
            for ty in types {
                self.buf.extend_from_slice(&ty.to_be_bytes());
            }
            self.end(attr::UNKNOWN_ATTRIBUTES, pos);
        }
        self
    }

    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub fn password_algorithm(mut self, alg: PasswordAlgorithm<'_>) -> Self {
        self.password_algorithms_attr(attr::PASSWORD_ALGORITHM, [alg]);
        self
    }

    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub fn password_algorithms<'p>(
        mut self,
        algs: impl IntoIterator<Item = PasswordAlgorithm<'p>>,
    ) -> Self {
        self.password_algorithms_attr(attr::PASSWORD_ALGORITHMS, algs);
        self
    }

    /// ICMP (RFC 8656 §18.13).
    pub fn icmp(self, icmp: Icmp) -> Self {
        let tc = (u16::from(icmp.icmp_type & 0x7F) << 9) | (icmp.icmp_code & 0x01FF);
        let [a, b] = tc.to_be_bytes();
        let [d0, d1, d2, d3] = icmp.error_data.to_be_bytes();
        self.attribute(attr::ICMP, &[0, 0, a, b, d0, d1, d2, d3])
    }

    /// Finishes the message without integrity or fingerprint.
    pub fn finish(self) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(None, false)
    }

    /// Finishes with FINGERPRINT (RFC 8489 §14.7) as the last attribute.
    pub fn finish_with_fingerprint(self) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(None, true)
    }

    /// Finishes with MESSAGE-INTEGRITY (HMAC-SHA1 with `key`, RFC 8489 §14.5).
    pub fn finish_with_integrity(self, key: &[u8]) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(Some((Integrity::Sha1, key)), false)
    }

    /// Finishes with MESSAGE-INTEGRITY then FINGERPRINT.
    pub fn finish_with_integrity_and_fingerprint(
        self,
        key: &[u8],
    ) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(Some((Integrity::Sha1, key)), true)
    }

    /// Finishes with what the caller decides at run time: MESSAGE-INTEGRITY (HMAC-SHA1)
    /// when `integrity_key` is given, then FINGERPRINT when `fingerprint` (a server
    /// answers with FINGERPRINT when the request carried one, RFC 8489 §7.3). The same
    /// bytes as the matching fixed `finish*` method.
    pub fn finish_with(
        self,
        integrity_key: Option<&[u8]>,
        fingerprint: bool,
    ) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(integrity_key.map(|k| (Integrity::Sha1, k)), fingerprint)
    }

    /// Finishes with MESSAGE-INTEGRITY-SHA256 (32 bytes, RFC 8489 §14.6).
    pub fn finish_with_integrity_sha256(self, key: &[u8]) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(Some((Integrity::Sha256, key)), false)
    }

    /// Finishes with MESSAGE-INTEGRITY-SHA256 then FINGERPRINT.
    pub fn finish_with_integrity_sha256_and_fingerprint(
        self,
        key: &[u8],
    ) -> Result<&'b [u8], EncodeError> {
        self.finish_inner(Some((Integrity::Sha256, key)), true)
    }

    fn finish_inner(
        self,
        integrity: Option<(Integrity, &[u8])>,
        fingerprint: bool,
    ) -> Result<&'b [u8], EncodeError> {
        let Self {
            buf, start, err, ..
        } = self;
        if let Some(e) = err {
            buf.truncate(start);
            return Err(e);
        }
        let body = buf.len().saturating_sub(start + HEADER_LEN);
        let trailer = integrity.map_or(0, |(i, _)| i.attr_len()) + if fingerprint { 8 } else { 0 };
        let total = body + trailer;
        if total > usize::from(u16::MAX) {
            buf.truncate(start);
            return Err(EncodeError::MessageTooLong { len: total });
        }
        if let Some((kind, key)) = integrity {
            set_length(buf, start, body + kind.attr_len());
            let covered = buf.get(start..).unwrap_or_default();
            match kind {
                Integrity::Sha1 => {
                    let mac = mac_over::<HmacSha1>(key, covered);
                    push_attr(buf, attr::MESSAGE_INTEGRITY, &mac);
                }
                Integrity::Sha256 => {
                    let mac = mac_over::<HmacSha256>(key, covered);
                    push_attr(buf, attr::MESSAGE_INTEGRITY_SHA256, &mac);
                }
            }
        }
        set_length(buf, start, total);
        if fingerprint {
            let covered = buf.get(start..).unwrap_or_default();
            let crc = crc32fast::hash(covered) ^ FINGERPRINT_XOR;
            push_attr(buf, attr::FINGERPRINT, &crc.to_be_bytes());
        }
        let buf: &'b Vec<u8> = buf;
        Ok(buf.get(start..).unwrap_or_default())
    }

    fn put(&mut self, ty: u16, value: &[u8]) {
        if let Some(pos) = self.begin(ty) {
            self.buf.extend_from_slice(value);
            self.end(ty, pos);
        }
    }

    fn begin(&mut self, ty: u16) -> Option<usize> {
        if self.err.is_some() {
            return None;
        }
        let pos = self.buf.len();
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        Some(pos)
    }

    fn end(&mut self, ty: u16, pos: usize) {
        let len = self.buf.len().saturating_sub(pos + 4);
        let Ok(len16) = u16::try_from(len) else {
            self.buf.truncate(pos);
            self.err = Some(EncodeError::AttributeTooLong { ty, len });
            return;
        };
        if let Some(slot) = self.buf.get_mut(pos + 2..pos + 4) {
            slot.copy_from_slice(&len16.to_be_bytes());
        }
        let pad = padded_len(len16) - len;
        self.buf.resize(self.buf.len() + pad, 0);
    }

    fn text(&mut self, ty: u16, value: &str, max: usize) -> &mut Self {
        self.text_with_prefix(ty, &[], value)
            .check_text(ty, value.len(), max)
    }

    fn check_text(&mut self, ty: u16, len: usize, max: usize) -> &mut Self {
        if len > max && self.err.is_none() {
            self.err = Some(EncodeError::ValueTooLong { ty, len, max });
        }
        self
    }

    fn text_with_prefix(&mut self, ty: u16, prefix: &[u8], value: &str) -> &mut Self {
        if ty == attr::ERROR_CODE || ty == attr::ADDRESS_ERROR_CODE {
            self.check_text(ty, value.len(), attr::MAX_TEXT_LEN);
        }
        if let Some(pos) = self.begin(ty) {
            self.buf.extend_from_slice(prefix);
            self.buf.extend_from_slice(value.as_bytes());
            self.end(ty, pos);
        }
        self
    }

    fn split_code(&mut self, code: u16) -> Option<[u8; 2]> {
        if !(300..=699).contains(&code) {
            if self.err.is_none() {
                self.err = Some(EncodeError::BadErrorCode { code });
            }
            return None;
        }
        // Both fit a byte: class is 3..=6, number < 100.
        Some([(code / 100) as u8, (code % 100) as u8])
    }

    fn address(&mut self, ty: u16, addr: SocketAddr, xor: bool) -> &mut Self {
        let (value, n) = encode_address(&addr, xor.then_some(&self.tid));
        self.put(ty, value.get(..n).unwrap_or_default());
        self
    }

    fn password_algorithms_attr<'p>(
        &mut self,
        ty: u16,
        algs: impl IntoIterator<Item = PasswordAlgorithm<'p>>,
    ) -> &mut Self {
        if let Some(pos) = self.begin(ty) {
            for alg in algs {
                let Ok(plen) = u16::try_from(alg.params.len()) else {
                    self.err = Some(EncodeError::AttributeTooLong {
                        ty,
                        len: alg.params.len(),
                    });
                    self.buf.truncate(pos);
                    return self;
                };
                self.buf.extend_from_slice(&alg.algorithm.to_be_bytes());
                self.buf.extend_from_slice(&plen.to_be_bytes());
                self.buf.extend_from_slice(alg.params);
                let pad = padded_len(plen) - alg.params.len();
                self.buf.resize(self.buf.len() + pad, 0);
            }
            self.end(ty, pos);
        }
        self
    }
}

#[derive(Clone, Copy)]
enum Integrity {
    Sha1,
    Sha256,
}

impl Integrity {
    const fn attr_len(self) -> usize {
        match self {
            Self::Sha1 => super::INTEGRITY_ATTR_LEN,
            Self::Sha256 => super::INTEGRITY_SHA256_ATTR_LEN,
        }
    }
}

fn mac_over<M: Mac + hmac::digest::KeyInit>(key: &[u8], covered: &[u8]) -> hmac::digest::Output<M> {
    #[expect(
        clippy::expect_used,
        reason = "infallible: HMAC accepts keys of any length (longer ones are hashed first)"
    )]
    let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(covered);
    mac.finalize().into_bytes()
}

fn set_length(buf: &mut [u8], start: usize, len: usize) {
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    if let Some(slot) = buf.get_mut(start + 2..start + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends an attribute whose value length is a multiple of 4 (no padding needed).
fn push_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    debug_assert!(value.len().is_multiple_of(4));
    buf.extend_from_slice(&ty.to_be_bytes());
    buf.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
    buf.extend_from_slice(value);
}
