//! Request dispatch: reflection-source filter, retransmission cache, unknown attributes
//! (420), Binding (RFC 8489), authentication, then the TURN method handlers.

use std::net::IpAddr;
use std::time::Instant;

use rand::RngCore;

use super::stats::AllocResult;
use super::{Core, FiveTuple, Transmit};
use crate::stun::{Builder, Class, Message, attr, error_code, method};

impl<R: RngCore> Core<R> {
    pub(super) fn request(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
    ) {
        self.count_method(msg.method);
        // Never answer sources that cannot be real (reflection targets): port 0,
        // unspecified, broadcast, multicast; IPv4-mapped spellings (a dual-stack socket's
        // view of IPv4) included.
        let ip = from.remote.ip().to_canonical();
        let bogus = from.remote.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if bogus {
            if msg.method == method::ALLOCATE {
                self.stats.allocations[AllocResult::Forbidden as usize] += 1;
            }
            return;
        }
        if let Some((_, cached)) = self.tx_cache.get(&(from, msg.tid)) {
            self.transmits.push_back(Transmit::ToClient {
                client: from,
                data: cached.clone(),
            });
            return;
        }
        let fp = msg.has_fingerprint();
        if !matches!(
            msg.method,
            method::BINDING
                | method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND
        ) {
            if self.rate_ok(now, from) {
                self.error_plain(from, msg, error_code::BAD_REQUEST, fp);
            }
            return;
        }
        // Unknown comprehension-required attributes → 420 with UNKNOWN-ATTRIBUTES, for
        // every method including Binding (RFC 8489 §6.3.1).
        let mut unknown = std::mem::take(&mut self.scratch);
        unknown.clear();
        msg.unknown_required(&mut unknown);
        if !unknown.is_empty() {
            if self.rate_ok(now, from) {
                let mut out = Vec::with_capacity(48 + unknown.len() * 2);
                let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
                b.error(
                    error_code::UNKNOWN_ATTRIBUTE,
                    error_code::reason(error_code::UNKNOWN_ATTRIBUTE),
                );
                b.unknown_attributes(&unknown);
                if b.finish(None, fp) {
                    self.transmits.push_back(Transmit::ToClient {
                        client: from,
                        data: out,
                    });
                }
            }
            self.scratch = unknown;
            return;
        }
        self.scratch = unknown;
        if msg.method == method::BINDING {
            if !self.rate_ok(now, from) {
                return;
            }
            let mut out = Vec::with_capacity(48);
            let mut b = Builder::new(&mut out, method::BINDING, Class::Success, msg.tid);
            b.xor_addr(attr::XOR_MAPPED_ADDRESS, from.remote);
            if !b.finish(None, fp) {
                return;
            }
            self.transmits.push_back(Transmit::ToClient {
                client: from,
                data: out,
            });
            return;
        }
        let Ok(authed) = self.authenticate(now, unix_now, from, msg) else {
            if msg.method == method::ALLOCATE {
                self.stats.allocations[AllocResult::Unauthorized as usize] += 1;
            }
            return;
        };
        self.trust_source(now, from);
        match msg.method {
            method::ALLOCATE => self.allocate(now, from, msg, authed),
            method::REFRESH => self.refresh(now, from, msg, &authed),
            method::CREATE_PERMISSION => self.create_permission(now, from, msg, &authed),
            method::CHANNEL_BIND => self.channel_bind(now, from, msg, &authed),
            method::CONNECT => self.connect(now, from, msg, &authed),
            method::CONNECTION_BIND => self.connection_bind(now, from, msg, &authed),
            _ => self.reply_error(now, from, msg, &authed, 400, "Bad Request"),
        }
    }
}
