//! The tests' view of the STUN codec: a `&mut` face over shared-ice's builder and parser
//! that keeps thousands of lines of scenarios short (`b.attr(..)`, `m.get(..)`). Test code
//! only: the core itself speaks `shared_ice::stun` directly.

use std::net::SocketAddr;

use shared_ice::channel::{ChannelData, ChannelNumber};
use shared_ice::stun as si;
pub(crate) use shared_ice::stun::{Class, MAGIC_COOKIE, TransactionId};

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
    pub(crate) const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// Attribute types (shared-ice's constants, re-exported under the names the core uses).
pub(crate) mod attr {
    pub(crate) use shared_ice::stun::attr::{
        ADDITIONAL_ADDRESS_FAMILY, CHANNEL_NUMBER, CONNECTION_ID, DATA, EVEN_PORT, LIFETIME, NONCE,
        REALM, REQUESTED_ADDRESS_FAMILY, REQUESTED_TRANSPORT, RESERVATION_TOKEN, SOFTWARE,
        USERNAME, XOR_MAPPED_ADDRESS, XOR_PEER_ADDRESS, XOR_RELAYED_ADDRESS,
    };
    pub(crate) use shared_ice::stun::attr::{ERROR_CODE, FINGERPRINT, UNKNOWN_ATTRIBUTES};
}

/// Valid channel numbers: shared-ice's `ChannelNumber` (0x4000-0x7FFF, see `permission.rs`).
pub(crate) fn valid_channel(n: u16) -> bool {
    ChannelNumber::new(n).is_some()
}

/// A parsed, borrowed STUN message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Message<'a> {
    inner: si::Message<'a>,
    pub(crate) method: u16,
    pub(crate) class: Class,
    pub(crate) tid: TransactionId,
}

impl<'a> Message<'a> {
    /// Parses exactly one message occupying all of `buf` (a UDP datagram or one frame).
    pub(crate) fn parse(buf: &'a [u8]) -> Result<Self, shared_ice::DecodeError> {
        let inner = si::Message::parse(buf)?;
        Ok(Self {
            method: inner.method().as_u16(),
            class: inner.class(),
            tid: inner.transaction_id(),
            inner,
        })
    }

    /// First attribute of type `ty` (attributes after MESSAGE-INTEGRITY are ignored).
    pub(crate) fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.inner.attribute(ty)
    }

    pub(crate) fn has(&self, ty: u16) -> bool {
        self.get(ty).is_some()
    }

    pub(crate) fn u32_attr(&self, ty: u16) -> Option<u32> {
        let v: [u8; 4] = self.get(ty)?.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// The first XOR-PEER-ADDRESS.
    pub(crate) fn peer_address(&self) -> Option<SocketAddr> {
        self.inner.xor_peer_addresses().next()?.ok()
    }

    pub(crate) fn xor_addr(&self, ty: u16) -> Option<SocketAddr> {
        match ty {
            attr::XOR_MAPPED_ADDRESS => self.inner.xor_mapped_address().ok().flatten(),
            attr::XOR_RELAYED_ADDRESS => self.inner.xor_relayed_address().ok().flatten(),
            _ => self.peer_address(),
        }
    }

    /// Whether the message carries FINGERPRINT (shared-ice's parser guarantees it is last).
    /// Every XOR-RELAYED-ADDRESS (dual-stack answers) and the ADDRESS-ERROR-CODE, if any.
    pub(crate) fn relayed_addresses(&self) -> (Vec<SocketAddr>, Option<u16>) {
        let addrs = self
            .inner
            .xor_relayed_addresses()
            .filter_map(Result::ok)
            .collect();
        let err = self
            .inner
            .address_error_code()
            .ok()
            .flatten()
            .map(|e| e.code);
        (addrs, err)
    }

    pub(crate) fn has_fingerprint(&self) -> bool {
        // The parser knows whether the message's own last attribute is FINGERPRINT. Looking
        // at the last 8 bytes instead is wrong: a Send indication whose DATA carries an ICE
        // check ends with the *inner* message's FINGERPRINT (Chromium sends exactly that).
        self.inner.has_fingerprint()
    }

    /// FINGERPRINT correct, or absent.
    pub(crate) fn fingerprint_ok(&self) -> bool {
        self.inner.check_fingerprint() || !self.has_fingerprint()
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) with `key`, constant-time.
    pub(crate) fn integrity_ok(&self, key: &[u8]) -> bool {
        self.inner.verify_integrity(key)
    }
}

/// Builds a message into a caller-owned buffer; `finish` appends MESSAGE-INTEGRITY and
/// FINGERPRINT last. A `&mut self` face over shared-ice's by-value builder.
pub(crate) struct Builder<'b> {
    inner: Option<si::MessageBuilder<'b>>,
}

impl<'b> Builder<'b> {
    pub(crate) fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: TransactionId) -> Self {
        let method = si::Method::new(method).unwrap_or(si::Method::BINDING);
        Self {
            inner: Some(si::MessageBuilder::new(buf, class, method, tid)),
        }
    }

    fn map(
        &mut self,
        f: impl FnOnce(si::MessageBuilder<'b>) -> si::MessageBuilder<'b>,
    ) -> &mut Self {
        self.inner = self.inner.take().map(f);
        self
    }

    pub(crate) fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.map(|b| b.attribute(ty, value))
    }

    pub(crate) fn u32_attr(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    pub(crate) fn xor_addr(&mut self, ty: u16, addr: SocketAddr) -> &mut Self {
        match ty {
            attr::XOR_MAPPED_ADDRESS => self.map(|b| b.xor_mapped_address(addr)),
            attr::XOR_RELAYED_ADDRESS => self.map(|b| b.xor_relayed_address(addr)),
            _ => self.map(|b| b.xor_peer_address(addr)),
        }
    }

    /// Finishes the message; `false` if it could not be encoded (too long): the caller
    /// must not send the buffer then.
    #[must_use]
    pub(crate) fn finish(mut self, integrity_key: Option<&[u8]>, fingerprint: bool) -> bool {
        let Some(b) = self.inner.take() else {
            return false;
        };
        b.finish_with(integrity_key, fingerprint).is_ok()
    }
}

/// TURN REST credentials `(username, password)` for `user` under `secret`.
pub(crate) fn rest_credentials(secret: &[u8], expiry_unix: u64, user: &str) -> (String, String) {
    let c = shared_ice::auth::mint(
        &shared_ice::auth::RestSecret::new(secret),
        user,
        expiry_unix,
    );
    (c.username.clone(), c.password.clone())
}

/// ChannelData (RFC 8656 §12.4): `(channel, payload)`; up to 3 padding bytes allowed.
pub(crate) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    let cd = ChannelData::parse(buf).ok()?;
    Some((cd.channel().get(), cd.data()))
}

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
    fn rfc5769_request_through_the_facade() {
        let m = Message::parse(&REQ).unwrap();
        assert_eq!(m.method, method::BINDING);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert!(m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.integrity_ok(b"wrong"));
        assert!(m.has_fingerprint() && m.fingerprint_ok());
        let mut bad = REQ;
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        let m = Message::parse(&bad).unwrap();
        assert!(m.has_fingerprint() && !m.fingerprint_ok());
        assert!(Message::parse(REQ.get(..50).unwrap()).is_err());
    }

    #[test]
    fn send_indication_carrying_an_ice_check_has_no_outer_fingerprint() {
        // Chromium's Send indications carry a whole ICE check (ending in its own
        // FINGERPRINT) as DATA and no FINGERPRINT of their own. The DATA's last 8 bytes
        // must not be mistaken for the indication's FINGERPRINT, or every ICE check
        // through TURN is dropped as corrupt.
        let mut buf = Vec::new();
        let mut b = Builder::new(
            &mut buf,
            method::SEND,
            Class::Indication,
            TransactionId([3; 12]),
        );
        b.xor_addr(attr::XOR_PEER_ADDRESS, "127.0.0.1:40000".parse().unwrap());
        b.attr(attr::DATA, &REQ);
        assert!(b.finish(None, false));
        assert_eq!(
            buf.get(buf.len() - 8..buf.len() - 6),
            Some(&[0x80, 0x28][..])
        );
        let m = Message::parse(&buf).unwrap();
        assert!(!m.has_fingerprint());
        assert!(m.fingerprint_ok());
        assert_eq!(m.get(attr::DATA), Some(&REQ[..]));
    }

    #[test]
    fn build_roundtrip() {
        let tid = TransactionId([7; 12]);
        let mut buf = Vec::new();
        let mut b = Builder::new(&mut buf, method::ALLOCATE, Class::Success, tid);
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, "1.2.3.4:5678".parse().unwrap());
        b.xor_addr(attr::XOR_MAPPED_ADDRESS, "[2001:db8::1]:9".parse().unwrap());
        b.u32_attr(attr::LIFETIME, 600);
        assert!(b.finish(Some(b"key"), true));
        let m = Message::parse(&buf).unwrap();
        assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
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
        assert!(m.has_fingerprint() && m.fingerprint_ok());
        let mut plain = Vec::new();
        assert!(Builder::new(&mut plain, method::BINDING, Class::Request, tid).finish(None, false));
        assert!(!Message::parse(&plain).unwrap().has_fingerprint());
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
        assert!(valid_channel(0x4000) && valid_channel(0x7FFF));
        assert!(!valid_channel(0x3FFF) && !valid_channel(0x8000));
    }
}
