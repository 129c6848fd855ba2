//! Request dispatch: reflection-source filter, retransmission cache, unknown attributes
//! (420), Binding (RFC 8489), authentication, then the TURN method handlers.

use std::net::IpAddr;
use std::time::Instant;

use rand::RngCore;

use shared_ice::stun::{Class, Message, Method, error_code};

use super::reply::{Reject, Req, encode};
use super::stats::AllocResult;
use super::{Core, FiveTuple};

impl<R: RngCore> Core<R> {
    pub(super) fn request(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        msg: &Message<'_>,
    ) {
        self.count_method(msg.method());
        // Never answer sources that cannot be real (reflection targets): port 0,
        // unspecified, broadcast, multicast; IPv4-mapped spellings (a dual-stack socket's
        // view of IPv4) included.
        let ip = from.remote.ip().to_canonical();
        let bogus = from.remote.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if bogus {
            if msg.method() == Method::ALLOCATE {
                self.stats.allocations[AllocResult::Forbidden as usize] += 1;
            }
            return;
        }
        if let Some((_, cached)) = self.tx_cache.get(&(from, msg.transaction_id())) {
            let data = cached.clone();
            self.send(from, data);
            return;
        }
        let fp = msg.has_fingerprint();
        if !matches!(
            msg.method(),
            Method::BINDING
                | Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND
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
        for t in msg.unknown_comprehension_required() {
            if !unknown.contains(&t) {
                unknown.push(t);
            }
        }
        if !unknown.is_empty() {
            if self.rate_ok(now, from) {
                let head = (msg.method(), Class::Error, msg.transaction_id());
                let code = error_code::UNKNOWN_ATTRIBUTE;
                if let Some(out) = encode(48 + unknown.len() * 2, head, None, fp, |b| {
                    b.error_code(code, error_code::reason(code))
                        .unknown_attributes(unknown.iter().copied())
                }) {
                    self.send(from, out);
                }
            }
            self.scratch = unknown;
            return;
        }
        self.scratch = unknown;
        if msg.method() == Method::BINDING {
            if !self.rate_ok(now, from) {
                return;
            }
            let head = (Method::BINDING, Class::Success, msg.transaction_id());
            if let Some(out) = encode(48, head, None, fp, |b| b.xor_mapped_address(from.remote)) {
                self.send(from, out);
            }
            return;
        }
        let Ok(authed) = self.authenticate(now, unix_now, from, msg) else {
            if msg.method() == Method::ALLOCATE {
                self.stats.allocations[AllocResult::Unauthorized as usize] += 1;
            }
            return;
        };
        self.trust_source(now, from);
        if msg.method() == Method::ALLOCATE {
            return self.allocate(now, from, msg, authed);
        }
        let rq = Req {
            now,
            from,
            msg,
            authed: &authed,
        };
        let done = match msg.method() {
            Method::REFRESH => self.refresh(&rq),
            Method::CREATE_PERMISSION => self.create_permission(&rq),
            Method::CHANNEL_BIND => self.channel_bind(&rq),
            Method::CONNECT => self.connect(&rq),
            Method::CONNECTION_BIND => self.connection_bind(&rq),
            _ => Err(Reject::code(error_code::BAD_REQUEST)),
        };
        if let Err(r) = done {
            self.reply_error(&rq, r);
        }
    }
}
