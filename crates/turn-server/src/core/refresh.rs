//! Refresh (RFC 8656 §7.3): extend or delete an allocation.

use std::time::{Duration, Instant};

use rand::RngCore;

use shared_ice::stun::{Message, error_code};

use super::auth::Authed;
use super::reply::code_of;
use super::{Core, FiveTuple};

impl<R: RngCore> Core<R> {
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let lifetime = match self.lifetime(msg, false) {
            Ok(l) => l,
            Err(e) => {
                let code = code_of(e);
                return self.reply_error(now, from, msg, authed, code, error_code::reason(code));
            }
        };
        if msg.lifetime() == Ok(Some(0)) {
            self.delete(slot);
            self.reply_ok(now, from, msg, authed, Some(0));
            return;
        }
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        self.reply_ok(now, from, msg, authed, Some(lifetime));
    }
}
