//! TURN TCP relaying (RFC 6062): Connect, ConnectionAttempt, ConnectionBind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use super::allocation::install_permission;
use super::permission::first_peer;
use super::reply::{Reject, Req, encode};
use super::stats::QuotaKind;
use super::*;
use shared_ice::stun::{Class, Method, TransactionId, error_code};

/// A Connect waiting for the runtime's TCP connect.
#[derive(Debug)]
pub(super) struct PendingConnect {
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) peer: SocketAddr,
    pub(super) tid: TransactionId,
    pub(super) fingerprint: bool,
}

/// How long a peer TCP connection waits for its ConnectionBind (RFC 6062 §5.3).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

impl<R: RngCore> Core<R> {
    pub(super) fn new_conn_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.pending_connects.contains_key(&id) && !self.quota.conn_pending(id) {
                return id;
            }
        }
    }

    /// RFC 6062 §5.2 Connect. Answered once the runtime reports the TCP connect
    /// ([`Core::tcp_peer_connected`]).
    pub(super) fn connect(&mut self, rq: &Req<'_>) -> Result<(), Reject> {
        let slot = self.own_allocation(rq)?;
        let peer = first_peer(rq.msg)?;
        let (tcp, busy, generation) = match self.slots.get(slot as usize).and_then(Option::as_ref) {
            Some(a) => (a.tcp, a.tcp_peers.contains(&peer), a.generation),
            None => return Ok(()),
        };
        if !tcp {
            return Err(Reject::bad_request("Not a TCP allocation"));
        }
        if busy {
            return Err(Reject::code(error_code::CONNECTION_ALREADY_EXISTS));
        }
        // Each peer connection needs a permission: bounded like CreatePermission.
        let (max, now) = (self.cfg.max_permissions, rq.now);
        let fits = self
            .slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .is_some_and(|a| a.tcp_peers.len() < max && a.permissions_fit(&[peer.ip()], max, now));
        if !fits {
            return Err(self.over_quota(QuotaKind::Permissions));
        }
        self.check_peer(slot, peer)?;
        let (i, bind) = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .and_then(|a| {
                a.relay_for(peer)
                    .and_then(|i| a.relays.get(i).copied().flatten().map(|r| (i, r.bind)))
            })
            .ok_or(Reject::code(error_code::PEER_ADDRESS_FAMILY_MISMATCH))?;
        let conn_id = self.new_conn_id();
        if let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            a.tcp_peers.push(peer);
        }
        self.pending_connects.insert(
            conn_id,
            PendingConnect {
                slot,
                generation,
                peer,
                tid: rq.msg.transaction_id(),
                fingerprint: rq.msg.has_fingerprint(),
            },
        );
        self.commands.push_back(Command::ConnectPeer {
            relay: RelayToken {
                slot,
                generation,
                v6: i == 1,
            },
            conn_id,
            bind,
            peer,
        });
        Ok(())
    }

    /// The runtime's answer to [`Command::ConnectPeer`]: success (the stream is kept under
    /// `conn_id`) or failure (447).
    pub fn tcp_peer_connected(&mut self, now: Instant, conn_id: u32, ok: bool) {
        let Some(p) = self.pending_connects.remove(&conn_id) else {
            return;
        };
        let Some(a) = self
            .slots
            .get_mut(p.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == p.generation)
        else {
            return;
        };
        if ok {
            install_permission(a, p.peer.ip(), now, self.cfg.permission_lifetime);
            self.quota
                .conn_insert(conn_id, a.username.clone(), now + CONNECTION_BIND_TIMEOUT);
        } else {
            a.tcp_peers.retain(|x| *x != p.peer);
        }
        let client = a.client;
        let class = if ok { Class::Success } else { Class::Error };
        let out = encode(
            96,
            (Method::CONNECT, class, p.tid),
            Some(&a.key),
            p.fingerprint,
            |b| {
                let b = if ok {
                    b.connection_id(conn_id)
                } else {
                    let code = error_code::CONNECTION_TIMEOUT_OR_FAILURE;
                    b.error_code(code, error_code::reason(code))
                };
                b.software(SOFTWARE)
            },
        );
        if let Some(out) = out {
            self.send(client, out);
        }
    }

    /// RFC 6062 §5.3: a peer connected to a TCP relay. `Some(conn_id)` when its IP has a
    /// permission (the runtime keeps the stream for ConnectionBind); `None` → close it.
    pub fn tcp_peer_incoming(
        &mut self,
        now: Instant,
        relay: RelayToken,
        peer: SocketAddr,
    ) -> Option<u32> {
        let a = self.alloc_mut(relay)?;
        if !a.tcp || a.expires <= now || !a.permitted(peer.ip(), now) {
            return None;
        }
        let (client, username) = (a.client, a.username.clone());
        let conn_id = self.new_conn_id();
        self.quota
            .conn_insert(conn_id, username, now + CONNECTION_BIND_TIMEOUT);
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let head = (
            Method::CONNECTION_ATTEMPT,
            Class::Indication,
            TransactionId(tid),
        );
        if let Some(out) = encode(64, head, None, false, |b| {
            b.xor_peer_address(peer).connection_id(conn_id)
        }) {
            self.send(client, out);
        }
        Some(conn_id)
    }

    /// RFC 6062 §5.4 ConnectionBind, on a new TCP/TLS connection without allocation.
    pub(super) fn connection_bind(&mut self, rq: &Req<'_>) -> Result<(), Reject> {
        let from = rq.from;
        if from.proto == Proto::Udp || self.by_client.contains_key(&from) {
            return Err(Reject::bad_request(
                "ConnectionBind needs a new TCP connection",
            ));
        }
        let conn_id = match rq.msg.connection_id() {
            Ok(Some(id)) => id,
            Ok(None) => return Err(Reject::bad_request("Missing CONNECTION-ID")),
            Err(e) => return Err(Reject::decode(e, "Bad CONNECTION-ID")),
        };
        if !self.quota.conn_claim(conn_id, &rq.authed.username, rq.now) {
            return Err(Reject::bad_request("Unknown CONNECTION-ID"));
        }
        self.reply_ok(rq, None);
        self.commands.push_back(Command::SpliceData {
            client: from,
            conn_id,
        });
        Ok(())
    }
}
