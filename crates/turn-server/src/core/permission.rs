//! CreatePermission (RFC 8656 §9) and ChannelBind (RFC 8656 §12), and the peer-address
//! checks both share.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngCore;

use super::allocation::{Channel, install_permission};
use super::reply::{Reject, Req};
use super::stats::QuotaKind;
use super::{Core, InstallResult};
use shared_ice::stun::{Message, error_code};

/// The request's first XOR-PEER-ADDRESS; a missing or malformed one is refused (400).
pub(super) fn first_peer(msg: &Message<'_>) -> Result<SocketAddr, Reject> {
    match msg.xor_peer_addresses().next() {
        Some(Ok(peer)) => Ok(peer),
        Some(Err(e)) => Err(Reject::decode(e, "Bad XOR-PEER-ADDRESS")),
        None => Err(Reject::bad_request("Missing XOR-PEER-ADDRESS")),
    }
}

impl<R: RngCore> Core<R> {
    /// Family and policy checks for a peer address.
    pub(super) fn check_peer(&mut self, slot: u32, peer: SocketAddr) -> Result<(), Reject> {
        let a = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .ok_or(Reject::code(error_code::ALLOCATION_MISMATCH))?;
        if a.relay_for(peer).is_none() {
            return Err(Reject::code(error_code::PEER_ADDRESS_FAMILY_MISMATCH));
        }
        if let Err(class) = self.policy.check(peer.ip()) {
            self.stats.denied[class.index()] += 1;
            tracing::debug!(class = class.label(), "peer denied by policy");
            return Err(Reject::code(error_code::FORBIDDEN));
        }
        Ok(())
    }

    /// Counts a quota rejection of `kind` and gives the 508 that answers it.
    pub(super) fn over_quota(&mut self, kind: QuotaKind) -> Reject {
        self.stats.quota[kind as usize] += 1;
        Reject::CAPACITY
    }

    pub(super) fn create_permission(&mut self, rq: &Req<'_>) -> Result<(), Reject> {
        let slot = self.own_allocation(rq)?;
        let mut peers: Vec<SocketAddr> = Vec::new();
        for p in rq.msg.xor_peer_addresses() {
            peers.push(p.map_err(|e| Reject::decode(e, "Bad XOR-PEER-ADDRESS"))?);
        }
        if peers.is_empty() {
            return Err(Reject::bad_request("Missing XOR-PEER-ADDRESS"));
        }
        for p in &peers {
            self.check_peer(slot, *p)?;
        }
        let ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        let (max, now) = (self.cfg.max_permissions, rq.now);
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        // All or nothing (RFC 8656 §10.2): a request that would pass the cap installs none.
        if !a.permissions_fit(&ips, max, now) {
            return Err(self.over_quota(QuotaKind::Permissions));
        }
        for ip in ips {
            install_permission(a, ip, now, self.cfg.permission_lifetime);
        }
        self.offload_sync(slot, now);
        self.reply_ok(rq, None);
        Ok(())
    }

    pub(super) fn channel_bind(&mut self, rq: &Req<'_>) -> Result<(), Reject> {
        let slot = self.own_allocation(rq)?;
        // Valid channel numbers are shared-ice's `ChannelNumber`: the RFC 5766 range
        // 0x4000-0x7FFF. RFC 8656 §12 narrowed it to 0x4000-0x4FFF, but RFC 5766 clients
        // (coturn's `turnutils_uclient` among them) still pick numbers above 0x4FFF, so we
        // accept the wider range, as coturn does.
        let number = match rq.msg.channel_number() {
            Ok(Some(n)) => n.get(),
            Ok(None) => return Err(Reject::bad_request("Bad CHANNEL-NUMBER")),
            Err(e) => return Err(Reject::decode(e, "Bad CHANNEL-NUMBER")),
        };
        let peer = first_peer(rq.msg)?;
        self.check_peer(slot, peer)?;
        let now = rq.now;
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        // Entries linger CHANNEL_COOLDOWN after expiry: the same pairing may be rebound,
        // a different pairing of either the number or the peer may not (RFC 8656 §12).
        let conflict = a.channels.get(&number).is_some_and(|c| c.peer != peer)
            || a.channel_of.get(&peer).is_some_and(|n| *n != number);
        if conflict {
            return Err(Reject::bad_request("Channel or peer already bound"));
        }
        let expires = now + self.cfg.channel_lifetime;
        let is_new = !a.channels.contains_key(&number);
        if is_new && a.channels.len() >= self.cfg.max_channels {
            return Err(self.over_quota(QuotaKind::Channels));
        }
        if !a.permissions_fit(&[peer.ip()], self.cfg.max_permissions, now) {
            return Err(self.over_quota(QuotaKind::Permissions));
        }
        a.channels.insert(number, Channel { peer, expires });
        a.channel_of.insert(peer, number);
        install_permission(a, peer.ip(), now, self.cfg.permission_lifetime);
        self.offload_sync(slot, now);
        self.reply_ok(rq, None);
        Ok(())
    }

    /// The control endpoint's input (docs/turn-server.md, "Control endpoint"): installs,
    /// on the allocation whose advertised relayed address is `relay`, a permission for
    /// `peer`, as if its client had sent CreatePermission for it — the same lifetime
    /// (`permission_lifetime`), per-allocation cap, peer
    /// policy, expiry, metrics and kernel fast-path update. The gateway uses it so that
    /// the first ICE checks of a call's other browser are not dropped while this one's
    /// client has not yet learnt that browser's address.
    pub fn install_permission(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> InstallResult {
        let Some(&tok) = self.by_relay_addr.get(&relay) else {
            return InstallResult::NoSuchAllocation;
        };
        let live = self
            .slots
            .get(tok.slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|a| {
                a.generation == tok.generation && a.expires > now && a.pending.is_none()
            });
        if !live {
            return InstallResult::NoSuchAllocation;
        }
        if peer.is_ipv4() != relay.is_ipv4() {
            return InstallResult::WrongFamily;
        }
        if let Err(class) = self.policy.check(peer) {
            self.stats.denied[class.index()] += 1;
            tracing::debug!(
                class = class.label(),
                "installed permission denied by policy"
            );
            return InstallResult::Denied(class);
        }
        let max = self.cfg.max_permissions;
        let Some(a) = self
            .slots
            .get_mut(tok.slot as usize)
            .and_then(Option::as_mut)
        else {
            return InstallResult::NoSuchAllocation;
        };
        if !a.permissions_fit(&[peer], max, now) {
            self.over_quota(QuotaKind::Permissions);
            return InstallResult::Full;
        }
        install_permission(a, peer, now, self.cfg.permission_lifetime);
        self.offload_sync(tok.slot, now);
        InstallResult::Installed
    }
}
