//! The relay fast path: ChannelData and Send indications from clients (RFC 8656 §11-12),
//! peer datagrams back as ChannelData or Data indications, and in-process delivery between
//! two allocations (same worker or hand-off from another worker).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngCore;

use super::stats::QuotaKind;
use shared_ice::channel::ChannelData;
use shared_ice::stun::{Class, Message, Method, TransactionId};

use super::reply::encode;
use super::{Core, FiveTuple, Proto, Relay, RelayToken};

impl<R: RngCore> Core<R> {
    /// The kernel fast path relayed `bytes` payload bytes for `client`'s allocation (read
    /// back from its per-allocation counters): they count against the allocation's
    /// `bandwidth` like the packets relayed here, so what still takes this path is
    /// limited by what both paths relayed together. (The kernel's own bucket limits its
    /// share; docs/offload.md, "Bandwidth".)
    pub fn charge_offloaded(&mut self, now: Instant, client: FiveTuple, bytes: u64) {
        let bandwidth = self.cfg.bandwidth;
        let Some(&slot) = self.by_client.get(&client) else {
            return;
        };
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.charge_bandwidth(now, bandwidth, bytes);
        }
    }

    /// Payload bytes relayed on this (userspace) path for `client`'s allocation since it was
    /// created, both directions; the shell charges their growth to the kernel fast path's
    /// bucket of the allocation. `None` when there is no such allocation.
    pub fn relayed_bytes(&self, client: FiveTuple) -> Option<u64> {
        let slot = *self.by_client.get(&client)?;
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|a| a.relayed_bytes)
    }

    /// Data from a peer arrived on relay socket `relay`. `payload` is the datagram.
    pub fn handle_peer_data(
        &mut self,
        now: Instant,
        relay: RelayToken,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<Relay> {
        let bandwidth = self.cfg.bandwidth;
        let a = self
            .slots
            .get_mut(relay.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == relay.generation)?;
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        if !a.within_bandwidth(now, bandwidth, payload.len()) {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let client = a.client;
        let t = client.proto.index();
        self.stats.packets[1][t] += 1;
        self.stats.bytes[1][t] += payload.len() as u64;
        if let Some(&number) = a.channel_of.get(&peer)
            && a.channels.get(&number).is_some_and(|c| c.expires > now)
        {
            let len = payload.len() as u16;
            let n = number.to_be_bytes();
            let l = len.to_be_bytes();
            let padding = if client.proto == Proto::Udp {
                0
            } else {
                (4 - payload.len() % 4) % 4
            };
            return Some(Relay::ToClient {
                client,
                header: [n[0], n[1], l[0], l[1]],
                padding,
            });
        }
        // No channel: Data indication (RFC 8656 §11.3), built in our own buffer.
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let head = (Method::DATA, Class::Indication, TransactionId(tid));
        if let Some(out) = encode(payload.len() + 48, head, None, false, |b| {
            b.xor_peer_address(peer).data(payload)
        }) {
            self.send(client, out);
        }
        None
    }

    pub(super) fn channel_data(
        &mut self,
        now: Instant,
        from: FiveTuple,
        buf: &[u8],
    ) -> Option<Relay> {
        let cd = ChannelData::parse(buf).ok()?;
        let (number, payload) = (cd.channel().get(), cd.data());
        let bandwidth = self.cfg.bandwidth;
        let slot = *self.by_client.get(&from)?;
        let a = self.slots.get_mut(slot as usize)?.as_mut()?;
        if a.expires <= now {
            return None;
        }
        let peer = a.channels.get(&number).filter(|c| c.expires > now)?.peer;
        if !a.permitted(peer.ip(), now) {
            return None;
        }
        if !a.within_bandwidth(now, bandwidth, payload.len()) {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let v6 = a.relay_for(peer)? == 1;
        let relay = RelayToken {
            slot,
            generation: a.generation,
            v6,
        };
        let src = a
            .relays
            .get(usize::from(v6))
            .copied()
            .flatten()
            .map(|r| r.advertised);
        let t = from.proto.index();
        self.stats.packets[0][t] += 1;
        self.stats.bytes[0][t] += payload.len() as u64;
        // The peer is another allocation's relayed address on this worker: deliver in
        // process, as if the datagram had left our relay socket and come back in on theirs
        // (their permission and bandwidth checks still apply). The runtime rewrites the
        // 4-byte ChannelData header in place, so this costs no copy and no syscall but the
        // final send. A missing channel on their side yields a Data indication instead.
        if let (Some(&dst), Some(src)) = (self.by_relay_addr.get(&peer), src) {
            let before = self.stats.packets[1];
            let r = self.handle_peer_data(now, dst, src, payload);
            if self.stats.packets[1] != before {
                self.stats.in_process[0] += 1;
            }
            return r;
        }
        // Another worker's allocation (the kernel hashed B's client to another shard):
        // hand the payload to that worker instead of a send + receive through the kernel.
        if let Some(src) = src
            && self.is_relay_ip(peer.ip())
            && let Some(worker) = self.quota.owner(peer.port())
            && worker != self.cfg.worker
        {
            return Some(Relay::ToWorker {
                worker,
                relay,
                peer,
                src,
                payload: 4..4 + payload.len(),
            });
        }
        Some(Relay::ToPeer {
            relay,
            peer,
            payload: 4..4 + payload.len(),
        })
    }

    /// Is `ip` the address our relayed addresses carry (advertised or bound)?
    pub(super) fn is_relay_ip(&self, ip: IpAddr) -> bool {
        let (ext, bind) = if ip.is_ipv4() {
            (self.cfg.external_ip4, self.cfg.relay_ip4)
        } else {
            (self.cfg.external_ip6, self.cfg.relay_ip6)
        };
        ext.or(bind) == Some(ip)
    }

    /// Relay-to-relay hand-off from another worker ([`Relay::ToWorker`]): `payload` left the
    /// allocation whose relayed address is `src` toward our relayed address `to`. Treated
    /// exactly as a datagram from `src` arriving on `to`'s relay socket; a relayed address
    /// that is gone by now drops it, as the kernel would.
    pub fn handle_relayed(
        &mut self,
        now: Instant,
        to: SocketAddr,
        src: SocketAddr,
        payload: &[u8],
    ) -> Option<Relay> {
        let dst = *self.by_relay_addr.get(&to)?;
        let before = self.stats.packets[1];
        let r = self.handle_peer_data(now, dst, src, payload);
        if self.stats.packets[1] != before {
            self.stats.in_process[1] += 1;
        }
        r
    }

    pub(super) fn send_indication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        buf: &[u8],
    ) -> Option<Relay> {
        let bandwidth = self.cfg.bandwidth;
        let slot = *self.by_client.get(&from)?;
        let peer = msg.xor_peer_addresses().next()?.ok()?;
        let data = msg.data()?;
        let a = self.slots.get_mut(slot as usize)?.as_mut()?;
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        if !a.within_bandwidth(now, bandwidth, data.len()) {
            self.stats.quota[QuotaKind::Bandwidth as usize] += 1;
            return None;
        }
        let v6 = a.relay_for(peer)? == 1;
        // Offset of DATA's value inside `buf` (both borrow the same allocation).
        let start = (data.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
        let t = from.proto.index();
        self.stats.packets[0][t] += 1;
        self.stats.bytes[0][t] += data.len() as u64;
        Some(Relay::ToPeer {
            relay: RelayToken {
                slot,
                generation: a.generation,
                v6,
            },
            peer,
            payload: start..start + data.len(),
        })
    }
}
