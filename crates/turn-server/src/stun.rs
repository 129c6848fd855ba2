//! Minimal zero-copy STUN/TURN codec used by the core.
//!
//! shared-ice is the workspace's codec; this local helper exists because the relay had to be
//! built before shared-ice's API landed (see docs/turn-server.md). It borrows the datagram
//! (`Message<'a>`), never indexes or subtracts attacker-controlled lengths, and encodes into a
//! caller-owned `Vec<u8>` with MESSAGE-INTEGRITY and FINGERPRINT always written last.
#![deny(clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// RFC 8489 §5 magic cookie.
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length (RFC 8489 §5).
pub(crate) const HEADER_LEN: usize = 20;
/// FINGERPRINT XOR constant (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
pub(crate) mod method {
    pub(crate) const BINDING: u16 = 0x001;
    pub(crate) const ALLOCATE: u16 = 0x003;
    pub(crate) const REFRESH: u16 = 0x004;
    pub(crate) const SEND: u16 = 0x006;
    pub(crate) const DATA: u16 = 0x007;
    pub(crate) const CREATE_PERMISSION: u16 = 0x008;
    pub(crate) const CHANNEL_BIND: u16 = 0x009;
    pub(crate) const CONNECT: u16 = 0x00A;
    pub(crate) const CONNECTION_BIND: u16 = 0x00B;
}

/// STUN message classes (RFC 8489 §5).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 6062 §6.2).
pub(crate) mod attr {
    pub(crate) const MAPPED_ADDRESS: u16 = 0x0001;
    pub(crate) const USERNAME: u16 = 0x0006;
    pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub(crate) const ERROR_CODE: u16 = 0x0009;
    pub(crate) const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub(crate) const CHANNEL_NUMBER: u16 = 0x000C;
    pub(crate) const LIFETIME: u16 = 0x000D;
    pub(crate) const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub(crate) const DATA: u16 = 0x0013;
    pub(crate) const REALM: u16 = 0x0014;
    pub(crate) const NONCE: u16 = 0x0015;
    pub(crate) const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub(crate) const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub(crate) const EVEN_PORT: u16 = 0x0018;
    pub(crate) const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub(crate) const DONT_FRAGMENT: u16 = 0x001A;
    pub(crate) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub(crate) const RESERVATION_TOKEN: u16 = 0x0022;
    pub(crate) const PRIORITY: u16 = 0x0024;
    pub(crate) const USE_CANDIDATE: u16 = 0x0025;
    pub(crate) const PADDING: u16 = 0x0026;
    pub(crate) const RESPONSE_PORT: u16 = 0x0027;
    pub(crate) const CONNECTION_ID: u16 = 0x002A;
    pub(crate) const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub(crate) const SOFTWARE: u16 = 0x8022;
    pub(crate) const FINGERPRINT: u16 = 0x8028;
}

/// Why a buffer is not a STUN message.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("first two bits are not zero")]
    NotStun,
    #[error("bad magic cookie")]
    BadCookie,
    #[error("message length {0} not a multiple of 4")]
    BadLength(usize),
    #[error("attribute {ty:#06x} length {len} overruns the message")]
    BadAttributeLength { ty: u16, len: usize },
}

/// 96-bit transaction id.
#[derive(Clone, Copy, Eq, Hash, PartialEq)]
pub(crate) struct TransactionId(pub(crate) [u8; 12]);

impl std::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A parsed, borrowed STUN message. Attributes are validated on parse and read lazily.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Message<'a> {
    raw: &'a [u8],
    pub(crate) method: u16,
    pub(crate) class: Class,
    pub(crate) tid: TransactionId,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let arr: [u8; 4] = s.try_into().ok()?;
    Some(u32::from_be_bytes(arr))
}

pub(crate) fn split_type(ty: u16) -> (u16, Class) {
    let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
    let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

pub(crate) fn join_type(method: u16, class: Class) -> u16 {
    let c: u16 = match class {
        Class::Request => 0,
        Class::Indication => 1,
        Class::Success => 2,
        Class::Error => 3,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

impl<'a> Message<'a> {
    /// Parses exactly one message; `buf` may be longer (the rest is ignored: TCP framing
    /// passes exact frames, UDP callers check `len()` against the datagram).
    pub(crate) fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let got = buf.len();
        let hdr = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated {
            needed: HEADER_LEN,
            got,
        })?;
        let ty = be16(hdr, 0).ok_or(DecodeError::NotStun)?;
        if ty & 0xC000 != 0 {
            return Err(DecodeError::NotStun);
        }
        if be32(hdr, 4) != Some(MAGIC_COOKIE) {
            return Err(DecodeError::BadCookie);
        }
        let body_len = be16(hdr, 2).ok_or(DecodeError::NotStun)? as usize;
        if !body_len.is_multiple_of(4) {
            return Err(DecodeError::BadLength(body_len));
        }
        let total = HEADER_LEN + body_len;
        let raw = buf
            .get(..total)
            .ok_or(DecodeError::Truncated { needed: total, got })?;
        let mut tid = [0u8; 12];
        tid.copy_from_slice(hdr.get(8..20).ok_or(DecodeError::NotStun)?);
        // Validate every attribute length up front so later reads cannot fail.
        let mut at = HEADER_LEN;
        while at < total {
            let aty = be16(raw, at).ok_or(DecodeError::Truncated {
                needed: at + 4,
                got: total,
            })?;
            let alen = be16(raw, at + 2).ok_or(DecodeError::Truncated {
                needed: at + 4,
                got: total,
            })? as usize;
            let end = at + 4 + alen.div_ceil(4) * 4;
            if end > total {
                return Err(DecodeError::BadAttributeLength { ty: aty, len: alen });
            }
            at = end;
        }
        let (method, class) = split_type(ty);
        Ok(Self {
            raw,
            method,
            class,
            tid: TransactionId(tid),
        })
    }

    /// The whole message bytes.
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterates over `(type, value, offset_of_attribute_header)`.
    pub(crate) fn attrs(&self) -> AttrIter<'a> {
        AttrIter {
            raw: self.raw,
            at: HEADER_LEN,
        }
    }

    /// First attribute of type `ty` that appears before MESSAGE-INTEGRITY/FINGERPRINT
    /// (attributes after integrity are ignored, RFC 8489 §14.5).
    pub(crate) fn get(&self, ty: u16) -> Option<&'a [u8]> {
        for (t, v, _) in self.attrs() {
            if t == ty {
                return Some(v);
            }
            if t == attr::MESSAGE_INTEGRITY || t == attr::FINGERPRINT {
                // Only FINGERPRINT itself may follow MESSAGE-INTEGRITY.
                if ty == attr::FINGERPRINT || ty == attr::MESSAGE_INTEGRITY {
                    continue;
                }
                return None;
            }
        }
        None
    }

    pub(crate) fn has(&self, ty: u16) -> bool {
        self.get(ty).is_some()
    }

    /// Comprehension-required attributes we do not understand (RFC 8489 §6.3.1 → 420).
    pub(crate) fn unknown_required(&self, known: &[u16], out: &mut Vec<u16>) {
        for (t, _, _) in self.attrs() {
            if t < 0x8000 && !known.contains(&t) && !out.contains(&t) {
                out.push(t);
            }
            if t == attr::MESSAGE_INTEGRITY {
                break;
            }
        }
    }

    pub(crate) fn u32_attr(&self, ty: u16) -> Option<u32> {
        self.get(ty).and_then(|v| be32(v, 0))
    }

    pub(crate) fn xor_addr(&self, ty: u16) -> Option<SocketAddr> {
        self.get(ty).and_then(|v| decode_xor_addr(v, &self.tid))
    }

    /// All XOR-PEER-ADDRESS attributes (CreatePermission may carry several).
    pub(crate) fn xor_addrs(&self, ty: u16) -> impl Iterator<Item = Option<SocketAddr>> + 'a {
        let tid = self.tid;
        self.attrs()
            .take_while(|(t, _, _)| *t != attr::MESSAGE_INTEGRITY)
            .filter(move |(t, _, _)| *t == ty)
            .map(move |(_, v, _)| decode_xor_addr(v, &tid))
    }

    pub(crate) fn has_fingerprint(&self) -> bool {
        self.attrs().any(|(t, _, _)| t == attr::FINGERPRINT)
    }

    /// Checks FINGERPRINT when present; true when absent.
    pub(crate) fn fingerprint_ok(&self) -> bool {
        for (t, v, off) in self.attrs() {
            if t == attr::FINGERPRINT {
                let Some(prefix) = self.raw.get(..off) else {
                    return false;
                };
                let want = crc32fast::hash(prefix) ^ FINGERPRINT_XOR;
                return be32(v, 0) == Some(want);
            }
        }
        true
    }

    /// Verifies MESSAGE-INTEGRITY (HMAC-SHA1) with `key`. Constant-time comparison.
    pub(crate) fn integrity_ok(&self, key: &[u8]) -> bool {
        for (t, v, off) in self.attrs() {
            if t == attr::MESSAGE_INTEGRITY {
                let Some(prefix) = self.raw.get(..off) else {
                    return false;
                };
                let Some(after_hdr) = prefix.get(4..) else {
                    return false;
                };
                // Length field covers up to and including MESSAGE-INTEGRITY.
                let len = (off + 24 - HEADER_LEN) as u16;
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
                    return false;
                };
                mac.update(prefix.get(..2).unwrap_or_default());
                mac.update(&len.to_be_bytes());
                mac.update(after_hdr);
                return mac.verify_slice(v).is_ok();
            }
        }
        false
    }
}

/// Iterator over attributes of a validated message.
pub(crate) struct AttrIter<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8], usize);
    fn next(&mut self) -> Option<Self::Item> {
        let ty = be16(self.raw, self.at)?;
        let len = be16(self.raw, self.at + 2)? as usize;
        let start = self.at + 4;
        let v = self.raw.get(start..start + len)?;
        let off = self.at;
        self.at = start + len.div_ceil(4) * 4;
        Some((ty, v, off))
    }
}

fn decode_xor_addr(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = be16(v, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
    match family {
        1 => {
            let a = be32(v, 4)? ^ MAGIC_COOKIE;
            if v.len() != 8 {
                return None;
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        2 => {
            let raw: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            if v.len() != 20 {
                return None;
            }
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(&tid.0);
            let mut out = [0u8; 16];
            for ((o, r), k) in out.iter_mut().zip(raw).zip(key) {
                *o = r ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(out)), port))
        }
        _ => None,
    }
}

/// Writes a message into a caller-owned buffer. `finish` appends MESSAGE-INTEGRITY and
/// FINGERPRINT last and fixes the header length.
pub(crate) struct Builder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
}

// The encoder only indexes the 20-byte header it wrote itself at `start`.
#[allow(clippy::indexing_slicing)]
impl<'b> Builder<'b> {
    pub(crate) fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&join_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        Self { buf, start, tid }
    }

    pub(crate) fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub(crate) fn u32_attr(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    pub(crate) fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend(reason.bytes().take(64));
        self.attr(attr::ERROR_CODE, &v)
    }

    pub(crate) fn xor_addr(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0u8; 8];
                v[1] = 1;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                v[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
                self.attr(ty, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[1] = 2;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(&self.tid.0);
                for (i, (o, k)) in ip.octets().iter().zip(key).enumerate() {
                    v[4 + i] = o ^ k;
                }
                self.attr(ty, &v)
            }
        }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub(crate) fn finish(mut self, integrity_key: Option<&[u8]>, fingerprint: bool) {
        if let Some(key) = integrity_key {
            // Length must include the MESSAGE-INTEGRITY attribute itself.
            let len = (self.buf.len() - self.start - HEADER_LEN + 24) as u16;
            self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("hmac accepts any key length");
            mac.update(&self.buf[self.start..]);
            let tag = mac.finalize().into_bytes();
            self.attr(attr::MESSAGE_INTEGRITY, &tag);
        }
        if fingerprint {
            let len = (self.buf.len() - self.start - HEADER_LEN + 8) as u16;
            self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
            let crc = crc32fast::hash(&self.buf[self.start..]) ^ FINGERPRINT_XOR;
            self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
        }
        self.set_len();
    }
}

/// Valid channel numbers, decided here once. RFC 8656 §12 narrowed the range to
/// 0x4000-0x4FFF, but RFC 5766 clients (coturn's `turnutils_uclient` among them) still pick
/// numbers up to 0x7FFF, so we accept the RFC 5766 range (as coturn does).
pub(crate) const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// ChannelData (RFC 8656 §12.4): returns `(channel, payload)`; `buf` may carry padding.
pub(crate) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    let ch = be16(buf, 0)?;
    if !CHANNEL_NUMBERS.contains(&ch) {
        return None;
    }
    let len = be16(buf, 2)? as usize;
    let payload = buf.get(4..4 + len)?;
    Some((ch, payload))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests index fixed vectors
mod tests {
    use super::*;
    use hex_literal::hex;

    // RFC 5769 §2.1 sample request (short-term credential, password "VOkJxbRl1RmTxUk/WvJxBt").
    const REQ: [u8; 108] = hex!(
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
        "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
        "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
    );

    #[test]
    fn rfc5769_request_integrity_and_fingerprint() {
        let m = Message::parse(&REQ).unwrap();
        assert_eq!(m.method, method::BINDING);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert!(m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.integrity_ok(b"wrong"));
        assert!(m.fingerprint_ok());
        let mut bad = REQ;
        bad[107] ^= 1;
        assert!(!Message::parse(&bad).unwrap().fingerprint_ok());
    }

    #[test]
    fn malformations() {
        assert!(matches!(
            Message::parse(&REQ[..10]),
            Err(DecodeError::Truncated {
                needed: 20,
                got: 10
            })
        ));
        let mut c = REQ;
        c[4] = 0;
        assert!(matches!(Message::parse(&c), Err(DecodeError::BadCookie)));
        let mut l = REQ;
        l[3] = 0x59;
        assert!(matches!(
            Message::parse(&l),
            Err(DecodeError::BadLength(0x59))
        ));
        let mut a = REQ;
        a[3] = 0x5c; // longer than buffer
        assert!(matches!(
            Message::parse(&a),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = REQ;
        b[20 + 3] = 0xff; // SOFTWARE length overruns
        assert!(matches!(
            Message::parse(&b),
            Err(DecodeError::BadAttributeLength { ty: 0x8022, .. })
        ));
        let mut n = REQ;
        n[0] = 0x80;
        assert!(matches!(Message::parse(&n), Err(DecodeError::NotStun)));
    }

    #[test]
    fn build_roundtrip() {
        let tid = TransactionId([7; 12]);
        let mut buf = Vec::new();
        let mut b = Builder::new(&mut buf, method::ALLOCATE, Class::Success, tid);
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, "1.2.3.4:5678".parse().unwrap());
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, "[2001:db8::1]:9".parse().unwrap());
        b.u32_attr(attr::LIFETIME, 600);
        b.error(401, "Unauthorized");
        b.finish(Some(b"key"), true);
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.method, method::ALLOCATE);
        assert_eq!(m.class, Class::Success);
        assert_eq!(
            m.xor_addr(attr::XOR_RELAYED_ADDRESS),
            Some("1.2.3.4:5678".parse().unwrap())
        );
        assert_eq!(
            m.xor_addr(attr::XOR_MAPPED_ADDRESS),
            Some("[2001:db8::1]:9".parse().unwrap())
        );
        assert_eq!(m.u32_attr(attr::LIFETIME), Some(600));
        assert!(m.integrity_ok(b"key"));
        assert!(m.fingerprint_ok());
    }

    #[test]
    fn channel_data() {
        assert_eq!(
            parse_channel_data(&hex!("40010003616263ff")),
            Some((0x4001, &b"abc"[..]))
        );
        assert_eq!(parse_channel_data(&hex!("40010009616263")), None);
        assert_eq!(
            parse_channel_data(&hex!("7001000161")),
            Some((0x7001, &b"a"[..]))
        );
        assert_eq!(parse_channel_data(&hex!("8001000161")), None);
    }
}
