//! Refresh (RFC 8656 §7.3): extend or delete an allocation.

use std::time::Duration;

use rand::RngCore;

use super::Core;
use super::reply::{Reject, Req, code_of};

impl<R: RngCore> Core<R> {
    pub(super) fn refresh(&mut self, rq: &Req<'_>) -> Result<(), Reject> {
        let slot = self.own_allocation(rq)?;
        let lifetime = self
            .lifetime(rq.msg, false)
            .map_err(|e| Reject::code(code_of(e)))?;
        if rq.msg.lifetime() == Ok(Some(0)) {
            self.delete(slot);
            self.reply_ok(rq, Some(0));
            return Ok(());
        }
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.expires = rq.now + Duration::from_secs(u64::from(lifetime));
        }
        self.offload_sync(slot, rq.now);
        self.reply_ok(rq, Some(lifetime));
        Ok(())
    }
}
