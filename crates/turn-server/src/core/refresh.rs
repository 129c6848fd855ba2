//! Refresh (RFC 8656 §7.3): extend or delete an allocation.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::auth::Authed;
use super::{Core, FiveTuple};
use crate::stun::{Message, attr};

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
        let requested = msg.u32_attr(attr::LIFETIME);
        if requested == Some(0) {
            self.delete(slot);
            self.reply_ok(now, from, msg, authed, Some(0));
            return;
        }
        let lifetime = self.lifetime(msg, false);
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        self.reply_ok(now, from, msg, authed, Some(lifetime));
    }
}
