//! CreatePermission (RFC 8656 §9) and ChannelBind (RFC 8656 §12), and the peer-address
//! checks both share.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngCore;

use super::allocation::{Channel, install_permission};
use super::auth::Authed;
use super::stats::QuotaKind;
use super::{CHANNEL_LIFETIME, Core, FiveTuple};
use shared_ice::stun::{Message, error_code};

use super::reply::code_of;

impl<R: RngCore> Core<R> {
    /// The request's first XOR-PEER-ADDRESS; a missing or malformed one is answered
    /// (400) and gives `None`.
    pub(super) fn first_peer(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Option<SocketAddr> {
        let (code, reason) = match msg.xor_peer_addresses().next() {
            Some(Ok(peer)) => return Some(peer),
            Some(Err(e)) => (code_of(e), "Bad XOR-PEER-ADDRESS"),
            None => (error_code::BAD_REQUEST, "Missing XOR-PEER-ADDRESS"),
        };
        self.reply_error(now, from, msg, authed, code, reason);
        None
    }

    /// Family and policy checks for a peer address. `Err((code, reason))` to answer.
    pub(super) fn check_peer(
        &mut self,
        slot: u32,
        peer: SocketAddr,
    ) -> Result<(), (u16, &'static str)> {
        let a = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .ok_or((error_code::ALLOCATION_MISMATCH, "Allocation Mismatch"))?;
        if a.relay_for(peer).is_none() {
            return Err((
                error_code::PEER_ADDRESS_FAMILY_MISMATCH,
                "Peer Address Family Mismatch",
            ));
        }
        if let Err(class) = self.policy.check(peer.ip()) {
            self.stats.denied[class.index()] += 1;
            tracing::debug!(class = class.label(), "peer denied by policy");
            return Err((error_code::FORBIDDEN, "Forbidden"));
        }
        Ok(())
    }

    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        let mut peers: Vec<SocketAddr> = Vec::new();
        for p in msg.xor_peer_addresses() {
            match p {
                Ok(p) => peers.push(p),
                Err(e) => {
                    let code = code_of(e);
                    return self.reply_error(now, from, msg, authed, code, "Bad XOR-PEER-ADDRESS");
                }
            }
        }
        if peers.is_empty() {
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                error_code::BAD_REQUEST,
                "Missing XOR-PEER-ADDRESS",
            );
        }
        for p in &peers {
            if let Err((code, reason)) = self.check_peer(slot, *p) {
                return self.reply_error(now, from, msg, authed, code, reason);
            }
        }
        let ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        let max = self.cfg.max_permissions;
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // All or nothing (RFC 8656 §10.2): a request that would pass the cap installs none.
        if !a.permissions_fit(&ips, max, now) {
            self.stats.quota[QuotaKind::Permissions as usize] += 1;
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                error_code::INSUFFICIENT_CAPACITY,
                "Insufficient Capacity",
            );
        }
        for ip in ips {
            install_permission(a, ip, now);
        }
        self.reply_ok(now, from, msg, authed, None);
    }

    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
    ) {
        let Some(slot) = self.own_allocation(now, from, msg, authed) else {
            return;
        };
        // Valid channel numbers are shared-ice's `ChannelNumber`: the RFC 5766 range
        // 0x4000-0x7FFF. RFC 8656 §12 narrowed it to 0x4000-0x4FFF, but RFC 5766 clients
        // (coturn's `turnutils_uclient` among them) still pick numbers above 0x4FFF, so we
        // accept the wider range, as coturn does.
        let number = match msg.channel_number() {
            Ok(Some(n)) => n.get(),
            Ok(None) => {
                let code = error_code::BAD_REQUEST;
                return self.reply_error(now, from, msg, authed, code, "Bad CHANNEL-NUMBER");
            }
            Err(e) => {
                let code = code_of(e);
                return self.reply_error(now, from, msg, authed, code, "Bad CHANNEL-NUMBER");
            }
        };
        let Some(peer) = self.first_peer(now, from, msg, authed) else {
            return;
        };
        if let Err((code, reason)) = self.check_peer(slot, peer) {
            return self.reply_error(now, from, msg, authed, code, reason);
        }
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // Entries linger CHANNEL_COOLDOWN after expiry: the same pairing may be rebound,
        // a different pairing of either the number or the peer may not (RFC 8656 §12).
        let conflict = a.channels.get(&number).is_some_and(|c| c.peer != peer)
            || a.channel_of.get(&peer).is_some_and(|n| *n != number);
        if conflict {
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                error_code::BAD_REQUEST,
                "Channel or peer already bound",
            );
        }
        let expires = now + CHANNEL_LIFETIME;
        let is_new = !a.channels.contains_key(&number);
        if is_new && a.channels.len() >= self.cfg.max_channels {
            self.stats.quota[QuotaKind::Channels as usize] += 1;
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                error_code::INSUFFICIENT_CAPACITY,
                "Insufficient Capacity",
            );
        }
        if !a.permissions_fit(&[peer.ip()], self.cfg.max_permissions, now) {
            self.stats.quota[QuotaKind::Permissions as usize] += 1;
            return self.reply_error(
                now,
                from,
                msg,
                authed,
                error_code::INSUFFICIENT_CAPACITY,
                "Insufficient Capacity",
            );
        }
        a.channels.insert(number, Channel { peer, expires });
        a.channel_of.insert(peer, number);
        install_permission(a, peer.ip(), now);
        self.reply_ok(now, from, msg, authed, None);
    }
}
