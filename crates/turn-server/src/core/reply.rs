//! Building and sending answers: plain errors, and authenticated answers kept in the
//! transaction cache for retransmissions.

use std::time::Instant;

use rand::RngCore;

use super::auth::Authed;
use super::{Core, FiveTuple, SOFTWARE, TRANSACTION_CACHE, Transmit};
use crate::auth::Key;
use crate::stun::{Builder, Class, Message, attr};

impl<R: RngCore> Core<R> {
    pub(super) fn error_plain(&mut self, from: FiveTuple, msg: &Message<'_>, code: u16, fp: bool) {
        let mut out = Vec::with_capacity(40);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(code, "");
        if !b.finish(None, fp) {
            return;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    /// Authenticated answer: SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT when the client uses it;
    /// cached for retransmissions.
    pub(super) fn send_authed(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        key: &Key,
        out: Vec<u8>,
    ) {
        let _ = (msg, key);
        if self.tx_cache.len() < self.cfg.tx_cache_max {
            self.tx_cache
                .insert((from, msg.tid), (now + TRANSACTION_CACHE, out.clone()));
            self.arm(now);
        } else {
            self.stats.tx_cache_full += 1;
        }
        self.transmits.push_back(Transmit::ToClient {
            client: from,
            data: out,
        });
    }

    pub(super) fn reply_error(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        code: u16,
        reason: &str,
    ) {
        tracing::debug!(method = msg.method, code, reason, tid = ?msg.tid, "request rejected");
        let mut out = Vec::with_capacity(96);
        let mut b = Builder::new(&mut out, msg.method, Class::Error, msg.tid);
        b.error(code, reason);
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        if !b.finish(Some(&authed.key.0), msg.has_fingerprint()) {
            return;
        }
        self.send_authed(now, from, msg, &authed.key, out);
    }

    pub(super) fn reply_ok(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        lifetime: Option<u32>,
    ) {
        let mut out = Vec::with_capacity(96);
        let mut b = Builder::new(&mut out, msg.method, Class::Success, msg.tid);
        if let Some(l) = lifetime {
            b.u32_attr(attr::LIFETIME, l);
        }
        b.attr(attr::SOFTWARE, SOFTWARE.as_bytes());
        if !b.finish(Some(&authed.key.0), msg.has_fingerprint()) {
            return;
        }
        self.send_authed(now, from, msg, &authed.key, out);
    }
}
