//! Building and sending answers: plain errors, and authenticated answers kept in the
//! transaction cache for retransmissions.

use std::time::Instant;

use rand::RngCore;
use shared_ice::DecodeError;
use shared_ice::auth::LongTermKey;
use shared_ice::stun::{Class, Message, MessageBuilder, Method, TransactionId, error_code};

use super::auth::Authed;
use super::{Core, FiveTuple, SOFTWARE, TRANSACTION_CACHE, Transmit};

/// An authenticated request as the method handlers see it: when it came, from where, the
/// message and who sent it. Every answer to it is built from these four.
pub(super) struct Req<'r> {
    pub(super) now: Instant,
    pub(super) from: FiveTuple,
    pub(super) msg: &'r Message<'r>,
    pub(super) authed: &'r Authed,
}

/// A refused request: the error code and reason phrase it is answered with. Method
/// handlers return it as their `Err`; the dispatcher sends the one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reject {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

impl Reject {
    /// 508 with its standard reason: a bound (quota, cap, relay ports) is reached.
    pub(super) const CAPACITY: Self = Self::code(error_code::INSUFFICIENT_CAPACITY);

    /// `code` with a reason phrase of our own.
    pub(super) const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// `code` with its standard reason phrase ([`error_code::reason`]).
    pub(super) const fn code(code: u16) -> Self {
        Self::new(code, error_code::reason(code))
    }

    /// 400 with a reason phrase of our own.
    pub(super) const fn bad_request(reason: &'static str) -> Self {
        Self::new(error_code::BAD_REQUEST, reason)
    }

    /// An attribute that does not decode ([`code_of`]), with `reason`.
    pub(super) fn decode(e: DecodeError, reason: &'static str) -> Self {
        Self::new(code_of(e), reason)
    }
}

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

    /// Authenticated error answer to `rq`.
    pub(super) fn reply_error(&mut self, rq: &Req<'_>, r: Reject) {
        let (msg, code, reason) = (rq.msg, r.code, r.reason);
        tracing::debug!(method = ?msg.method(), code, reason, tid = ?msg.transaction_id(), "request rejected");
        let head = (msg.method(), Class::Error, msg.transaction_id());
        let Some(out) = encode(96, head, Some(&rq.authed.key), msg.has_fingerprint(), |b| {
            b.error_code(code, reason).software(SOFTWARE)
        }) else {
            return;
        };
        self.send_authed(rq.now, rq.from, msg, out);
    }

    /// Authenticated success answer to `rq`, with LIFETIME when `lifetime` is given.
    pub(super) fn reply_ok(&mut self, rq: &Req<'_>, lifetime: Option<u32>) {
        let msg = rq.msg;
        let head = (msg.method(), Class::Success, msg.transaction_id());
        let Some(out) = encode(96, head, Some(&rq.authed.key), msg.has_fingerprint(), |b| {
            let b = match lifetime {
                Some(l) => b.lifetime(l),
                None => b,
            };
            b.software(SOFTWARE)
        }) else {
            return;
        };
        self.send_authed(rq.now, rq.from, msg, out);
    }
}

#[cfg(test)]
mod tests {
    use super::Reject;
    use shared_ice::stun::error_code;

    /// The standard reason phrases the handlers now take from shared-ice are the ones they
    /// used to spell out: the answers' bytes did not change.
    #[test]
    fn standard_reasons_are_the_phrases_on_the_wire() {
        use error_code::*;
        assert_eq!(Reject::CAPACITY, Reject::new(508, "Insufficient Capacity"));
        let phrases = [
            (ALLOCATION_MISMATCH, "Allocation Mismatch"),
            (WRONG_CREDENTIALS, "Wrong Credentials"),
            (FORBIDDEN, "Forbidden"),
            (ALLOCATION_QUOTA_REACHED, "Allocation Quota Reached"),
            (PEER_ADDRESS_FAMILY_MISMATCH, "Peer Address Family Mismatch"),
            (CONNECTION_ALREADY_EXISTS, "Connection Already Exists"),
            (
                UNSUPPORTED_TRANSPORT_PROTOCOL,
                "Unsupported Transport Protocol",
            ),
            (ADDRESS_FAMILY_NOT_SUPPORTED, "Address Family not Supported"),
        ];
        for (code, reason) in phrases {
            assert_eq!(Reject::code(code), Reject::new(code, reason));
        }
        let own = Reject::bad_request("Missing CONNECTION-ID");
        assert_eq!(own, Reject::new(400, "Missing CONNECTION-ID"));
    }
}
