//! Building and sending answers: plain errors, and authenticated answers kept in the
//! transaction cache for retransmissions.

use std::time::Instant;

use rand::RngCore;
use shared_ice::DecodeError;
use shared_ice::auth::LongTermKey;
use shared_ice::stun::{Class, Message, MessageBuilder, Method, TransactionId, error_code};

use super::auth::Authed;
use super::{Core, FiveTuple, SOFTWARE, TRANSACTION_CACHE, Transmit};

/// Encodes a message into a new buffer of `capacity`: `attrs` adds the attributes, then
/// MESSAGE-INTEGRITY with `key` and FINGERPRINT when `fingerprint`. `None` when it does
/// not encode (too long for STUN): nothing is sent then.
pub(super) fn encode(
    capacity: usize,
    head: (Method, Class, TransactionId),
    key: Option<&LongTermKey>,
    fingerprint: bool,
    attrs: impl for<'b> FnOnce(MessageBuilder<'b>) -> MessageBuilder<'b>,
) -> Option<Vec<u8>> {
    let (method, class, tid) = head;
    let mut out = Vec::with_capacity(capacity);
    let b = attrs(MessageBuilder::new(&mut out, class, method, tid));
    if let Err(e) = b.finish_with(key.map(|k| &k.as_bytes()[..]), fingerprint) {
        tracing::debug!(error = %e, ?method, "answer not encoded, not sent");
        return None;
    }
    Some(out)
}

/// The error code a request whose attribute does not decode is answered with
/// ([`DecodeError::error_code`]; 400 for the rest, which a parsed message cannot produce).
pub(super) fn code_of(e: DecodeError) -> u16 {
    e.error_code().unwrap_or(error_code::BAD_REQUEST)
}

impl<R: RngCore> Core<R> {
    /// Queues `data` for `client`.
    pub(super) fn send(&mut self, client: FiveTuple, data: Vec<u8>) {
        self.transmits
            .push_back(Transmit::ToClient { client, data });
    }

    /// Unauthenticated error answer with an empty reason phrase.
    pub(super) fn error_plain(&mut self, from: FiveTuple, msg: &Message<'_>, code: u16, fp: bool) {
        let head = (msg.method(), Class::Error, msg.transaction_id());
        if let Some(out) = encode(40, head, None, fp, |b| b.error_code(code, "")) {
            self.send(from, out);
        }
    }

    /// Authenticated answer: SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT when the client uses it;
    /// cached for retransmissions.
    pub(super) fn send_authed(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        out: Vec<u8>,
    ) {
        if self.tx_cache.len() < self.cfg.tx_cache_max {
            self.tx_cache.insert(
                (from, msg.transaction_id()),
                (now + TRANSACTION_CACHE, out.clone()),
            );
            self.arm(now);
        } else {
            self.stats.tx_cache_full += 1;
        }
        self.send(from, out);
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
        tracing::debug!(method = ?msg.method(), code, reason, tid = ?msg.transaction_id(), "request rejected");
        let head = (msg.method(), Class::Error, msg.transaction_id());
        let Some(out) = encode(96, head, Some(&authed.key), msg.has_fingerprint(), |b| {
            b.error_code(code, reason).software(SOFTWARE)
        }) else {
            return;
        };
        self.send_authed(now, from, msg, out);
    }

    pub(super) fn reply_ok(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        lifetime: Option<u32>,
    ) {
        let head = (msg.method(), Class::Success, msg.transaction_id());
        let Some(out) = encode(96, head, Some(&authed.key), msg.has_fingerprint(), |b| {
            let b = match lifetime {
                Some(l) => b.lifetime(l),
                None => b,
            };
            b.software(SOFTWARE)
        }) else {
            return;
        };
        self.send_authed(now, from, msg, out);
    }
}
