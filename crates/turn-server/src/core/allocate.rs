//! Allocate (RFC 8656 §7.2, RFC 6062 §5.1): checks, quota, relay-port choice, opening the
//! relay sockets and the answer once they are open.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;

use super::allocation::{Allocation, Bucket, RelaySlot};
use super::auth::Authed;
use super::fxhash::FxMap;
use super::quota::quota_key;
use shared_ice::DecodeError;
use shared_ice::stun::{
    AddressFamily, Class, Message, Method, PROTOCOL_TCP, PROTOCOL_UDP, TransactionId, attr,
    error_code,
};

use super::reply::{Reject, Req, code_of, encode};
use super::stats::{AllocResult, QuotaKind};
use super::*;

#[derive(Debug)]
pub(super) struct PendingAllocate {
    pub(super) tid: TransactionId,
    pub(super) lifetime: u32,
    pub(super) fingerprint: bool,
    pub(super) reservation_token: Option<u64>,
    pub(super) v6_error: bool,
    /// Relay ports tried again because the bind failed (port busy on this host).
    pub(super) bind_retries: u8,
}

/// The command that opens an allocation's relay: a UDP socket, or a TCP listener
/// (RFC 6062).
fn open_relay(tcp: bool, relay: RelayToken, bind: SocketAddr) -> Command {
    if tcp {
        Command::OpenTcpRelay { relay, bind }
    } else {
        Command::OpenRelaySocket { relay, bind }
    }
}

/// What an Allocate that passed its checks gets: the relay ports taken and what its
/// answer will say.
struct Grant {
    tcp: bool,
    lifetime: u32,
    relays: [Option<RelaySlot>; 2],
    reservation_token: Option<u64>,
    v6_error: bool,
}

/// Busy relay ports an Allocate tries before it gets 508.
pub(super) const MAX_BIND_RETRIES: u8 = 8;

impl<R: RngCore> Core<R> {
    /// The runtime's answer to [`Command::OpenRelaySocket`].
    pub fn relay_opened(&mut self, now: Instant, relay: RelayToken, ok: bool) {
        let Some(a) = self.alloc_mut(relay) else {
            return;
        };
        let idx = usize::from(relay.v6);
        if ok {
            let udp = !a.tcp;
            let mut advertised = None;
            if let Some(Some(r)) = a.relays.get_mut(idx) {
                r.open = true;
                advertised = Some(r.advertised);
            }
            let complete = a.relays.iter().flatten().all(|r| r.open);
            if let (true, Some(addr)) = (udp, advertised) {
                self.by_relay_addr.insert(addr, relay);
                self.quota.set_owner(addr.port(), Some(self.cfg.worker));
            }
            if complete {
                self.answer_allocate(now, relay.slot);
            }
            return;
        }
        // The port is busy on this host: try another one.
        let port = a
            .relays
            .get(idx)
            .and_then(|r| r.as_ref())
            .map(|r| r.bind.port());
        let fp_even = a
            .pending
            .as_ref()
            .is_some_and(|p| p.reservation_token.is_some());
        let retries = a.pending.as_mut().map_or(u8::MAX, |p| {
            p.bind_retries = p.bind_retries.saturating_add(1);
            p.bind_retries
        });
        // A port that another socket still holds (often our own relay socket of an
        // allocation just deleted, whose task has not dropped it yet) stays marked used
        // until a replacement is picked, so the pick cannot return it; then it goes back
        // to the pool. (Kept used for good, each such collision leaked a port: under
        // allocation churn the pool ran dry and every Allocate got 508.)
        let picked = if retries > MAX_BIND_RETRIES {
            None
        } else {
            self.quota.replace_port(port, &mut self.rng, fp_even)
        };
        match picked {
            Some(p) => {
                let Some(a) = self
                    .slots
                    .get_mut(relay.slot as usize)
                    .and_then(Option::as_mut)
                else {
                    return;
                };
                let tcp = a.tcp;
                if let Some(Some(r)) = a.relays.get_mut(idx) {
                    r.bind.set_port(p);
                    r.advertised.set_port(p);
                    self.commands.push_back(open_relay(tcp, relay, r.bind));
                }
            }
            None => {
                self.stats.quota[QuotaKind::RelayPorts as usize] += 1;
                self.stats.allocations[AllocResult::Capacity as usize] += 1;
                let a = self.slots.get(relay.slot as usize).and_then(Option::as_ref);
                if let Some((client, p)) = a.and_then(|a| {
                    a.pending
                        .as_ref()
                        .map(|p| (a.client, (p.tid, p.fingerprint)))
                }) {
                    let code = error_code::INSUFFICIENT_CAPACITY;
                    let head = (Method::ALLOCATE, Class::Error, p.0);
                    let Some(out) = encode(0, head, None, p.1, |b| {
                        b.error_code(code, error_code::reason(code))
                    }) else {
                        return;
                    };
                    self.send(client, out);
                }
                self.delete(relay.slot);
            }
        }
    }

    /// Allocate: the requested lifetime capped at the maximum, never below the default
    /// (RFC 8656 §7.2). Refresh: capped at the maximum only (RFC 8656 §7.3).
    /// A LIFETIME that does not decode is the caller's to answer ([`code_of`]).
    pub(super) fn lifetime(&self, msg: &Message<'_>, floor: bool) -> Result<u32, DecodeError> {
        Ok(match msg.lifetime()? {
            Some(l) if floor => l.min(self.cfg.max_lifetime).max(self.cfg.default_lifetime),
            Some(l) => l.min(self.cfg.max_lifetime),
            None => self.cfg.default_lifetime,
        })
    }

    /// Allocate: on success the allocation is installed (still `pending`) and its relay
    /// sockets are asked for; it is answered once they are open ([`Self::answer_allocate`]).
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
    ) {
        let rq = Req {
            now,
            from,
            msg,
            authed: &authed,
        };
        let grant = match self.allocate_grant(&rq) {
            Ok(g) => g,
            Err((reject, result)) => {
                self.stats.allocations[result as usize] += 1;
                return self.reply_error(&rq, reject);
            }
        };
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as u32
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let burst = self.cfg.bandwidth as f64;
        let Grant {
            tcp,
            lifetime,
            relays,
            reservation_token,
            v6_error,
        } = grant;
        let alloc = Allocation {
            generation,
            client: from,
            username: authed.username,
            key: authed.key,
            rest_expiry: authed.rest_expiry,
            expires: now + Duration::from_secs(u64::from(lifetime)),
            relays,
            permissions: FxMap::default(),
            channels: FxMap::default(),
            channel_of: FxMap::default(),
            bucket: Bucket::new(now, burst),
            relayed_bytes: 0,
            pending: Some(PendingAllocate {
                tid: msg.transaction_id(),
                lifetime,
                fingerprint: msg.has_fingerprint(),
                reservation_token,
                v6_error,
                bind_retries: 0,
            }),
            reservation: reservation_token,
            tcp,
            tcp_peers: Vec::new(),
        };
        for (i, r) in alloc.relays.iter().enumerate() {
            if let Some(r) = r {
                let relay = RelayToken {
                    slot,
                    generation,
                    v6: i == 1,
                };
                self.commands.push_back(open_relay(tcp, relay, r.bind));
            }
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(alloc);
        }
        self.by_client.insert(from, slot);
        self.arm(now);
    }

    /// Allocate's checks, quota and relay-port choice. `Err` is the answer and the
    /// `allocations{result}` it counts as; whatever was taken before it is given back.
    fn allocate_grant(&mut self, rq: &Req<'_>) -> Result<Grant, (Reject, AllocResult)> {
        const CAPACITY: (Reject, AllocResult) = (Reject::CAPACITY, AllocResult::Capacity);
        const QUOTA: (Reject, AllocResult) = (
            Reject::code(error_code::ALLOCATION_QUOTA_REACHED),
            AllocResult::Quota,
        );
        let bad = |reason| (Reject::bad_request(reason), AllocResult::BadRequest);
        let (now, from, msg, authed) = (rq.now, rq.from, rq.msg, rq.authed);
        if let Some(&slot) = self.by_client.get(&from) {
            let live = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|a| a.expires > now);
            if live {
                let mismatch = Reject::code(error_code::ALLOCATION_MISMATCH);
                return Err((mismatch, AllocResult::Mismatch));
            }
            self.delete(slot);
        }
        // Attribute values that do not decode are answered with the code shared-ice maps
        // them to (400, or 440 for an unknown address family).
        let parsed = (|| {
            Ok::<_, DecodeError>((
                msg.requested_transport()?,
                (
                    msg.even_port()?,
                    msg.reservation_token()?,
                    msg.requested_address_family()?,
                    msg.additional_address_family()?,
                ),
                self.lifetime(msg, true)?,
            ))
        })();
        let (transport, (even, token, raf, aaf), lifetime) =
            parsed.map_err(|e| (Reject::code(code_of(e)), AllocResult::BadRequest))?;
        match transport {
            None => return Err(bad("Missing REQUESTED-TRANSPORT")),
            Some(PROTOCOL_UDP) => {}
            // RFC 6062 §5.1: TCP relaying only for clients on TCP/TLS, without the UDP-only
            // options.
            Some(PROTOCOL_TCP) if from.proto == Proto::Udp => {
                return Err(bad("TCP relay needs a TCP/TLS connection"));
            }
            Some(PROTOCOL_TCP) => {
                if [
                    attr::EVEN_PORT,
                    attr::RESERVATION_TOKEN,
                    attr::DONT_FRAGMENT,
                    attr::ADDITIONAL_ADDRESS_FAMILY,
                ]
                .iter()
                .any(|t| msg.attribute(*t).is_some())
                {
                    return Err(bad("Option not valid for a TCP relay"));
                }
            }
            Some(_) => {
                let unsupported = Reject::code(error_code::UNSUPPORTED_TRANSPORT_PROTOCOL);
                return Err((unsupported, AllocResult::BadRequest));
            }
        }
        let tcp = transport == Some(PROTOCOL_TCP);
        if (even.is_some() && token.is_some())
            || (raf.is_some() && token.is_some())
            || (raf.is_some() && aaf.is_some())
        {
            return Err(bad("Conflicting attributes"));
        }
        if aaf.is_some_and(|f| f != AddressFamily::V6) {
            return Err(bad("ADDITIONAL-ADDRESS-FAMILY must be IPv6"));
        }
        if self.draining {
            let draining = Reject::new(error_code::INSUFFICIENT_CAPACITY, "Server Draining");
            return Err((draining, AllocResult::Capacity));
        }
        // Which relay families: requested (default IPv4), plus IPv6 for dual-stack.
        let (want4, want6) = match raf {
            None | Some(AddressFamily::V4) => (true, aaf.is_some()),
            Some(AddressFamily::V6) => (false, true),
        };
        let have4 = self.cfg.relay_ip4.is_some();
        let have6 = self.cfg.relay_ip6.is_some();
        let mut v6_error = false;
        let (use4, use6) = if aaf.is_some() {
            v6_error = !have6;
            (have4, have6)
        } else {
            (want4 && have4, want6 && have6)
        };
        if (want4 && !have4 && raf.is_some())
            || (raf == Some(AddressFamily::V6) && !have6)
            || (!use4 && !use6)
        {
            let family = Reject::code(error_code::ADDRESS_FAMILY_NOT_SUPPORTED);
            return Err((family, AllocResult::BadRequest));
        }
        // Port selection.
        let mut port4 = None;
        let mut reservation_token = None;
        if let Some(t) = token {
            // The reservation's quota unit goes back to its holder; the allocation that
            // redeems it takes one below like any other.
            match self.quota.redeem(u64::from_be_bytes(t)) {
                Some((p, e)) if e > now => port4 = Some(p),
                Some((p, _)) => {
                    // Expired, not yet swept: its port goes back now.
                    self.quota.release_port(p);
                    return Err(CAPACITY);
                }
                None => return Err(CAPACITY),
            }
        }
        let holder = quota_key(&authed.username, authed.rest_expiry);
        if let Err(kind) = self.quota.acquire(holder) {
            if let Some(p) = port4 {
                self.quota.release_port(p);
            }
            self.stats.quota[QuotaKind::from(kind) as usize] += 1;
            return Err(match kind {
                Exceeded::User => QUOTA,
                _ => CAPACITY,
            });
        }
        // Out of relay ports: the quota unit just taken goes back.
        let no_port = |s: &mut Self| {
            s.quota.release(holder);
            s.stats.quota[QuotaKind::RelayPorts as usize] += 1;
            CAPACITY
        };
        let reserve_next = even == Some(true);
        let pick =
            |s: &mut Self, even: bool, pair: bool| s.quota.take_free_port(&mut s.rng, even, pair);
        let p_main = match port4 {
            Some(p) => Some(p),
            None => pick(self, even.is_some(), reserve_next),
        };
        let Some(p_main) = p_main else {
            return Err(no_port(self));
        };
        if reserve_next {
            // The held port counts against the user's quota like an allocation: without
            // this one user held half the port range with `user_quota = 1` by allocating
            // with EVEN-PORT and deleting the allocation, again and again.
            if let Err(kind) = self.quota.reserve(holder) {
                self.quota.release_port(p_main);
                self.quota.release(holder);
                self.stats.quota[QuotaKind::from(kind) as usize] += 1;
                return Err(QUOTA);
            }
            let next = p_main + 1;
            let t = self.rng.next_u64();
            self.quota
                .hold_port(t, next, now + RESERVATION_LIFETIME, holder);
            reservation_token = Some(t);
        }
        let mut relays = [None, None];
        let mk = |ip: Option<IpAddr>, ext: Option<IpAddr>, port: u16| {
            ip.map(|ip| RelaySlot {
                bind: SocketAddr::new(ip, port),
                advertised: SocketAddr::new(ext.unwrap_or(ip), port),
                open: false,
            })
        };
        if use4 {
            relays[0] = mk(self.cfg.relay_ip4, self.cfg.external_ip4, p_main);
        }
        if use6 {
            let p6 = if use4 {
                pick(self, false, false)
            } else {
                Some(p_main)
            };
            let Some(p6) = p6 else {
                self.quota.release_port(p_main);
                return Err(no_port(self));
            };
            relays[1] = mk(self.cfg.relay_ip6, self.cfg.external_ip6, p6);
        }
        Ok(Grant {
            tcp,
            lifetime,
            relays,
            reservation_token,
            v6_error,
        })
    }

    pub(super) fn answer_allocate(&mut self, now: Instant, slot: u32) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(p) = a.pending.take() else { return };
        let head = (Method::ALLOCATE, Class::Success, p.tid);
        let Some(out) = encode(128, head, Some(&a.key), p.fingerprint, |mut b| {
            for r in a.relays.iter().flatten() {
                b = b.xor_relayed_address(r.advertised);
            }
            if p.v6_error {
                // ADDRESS-ERROR-CODE (RFC 8656 §18.11): IPv6, 440.
                let code = error_code::ADDRESS_FAMILY_NOT_SUPPORTED;
                b = b.address_error_code(AddressFamily::V6, code, "");
            }
            b = b.lifetime(p.lifetime);
            if let Some(t) = p.reservation_token {
                b = b.reservation_token(t.to_be_bytes());
            }
            b.xor_mapped_address(a.client.remote).software(SOFTWARE)
        }) else {
            return;
        };
        let client = a.client;
        self.stats.allocations[AllocResult::Ok as usize] += 1;
        tracing::debug!(relay = ?a.relays.iter().flatten().map(|r| r.bind).collect::<Vec<_>>(), proto = client.proto.label(), "allocation created");
        if self.tx_cache.len() < self.cfg.tx_cache_max {
            // The transaction cache keeps retransmitted Allocates from hitting 437.
            self.tx_cache
                .insert((client, p.tid), (now + TRANSACTION_CACHE, out.clone()));
        } else {
            self.stats.tx_cache_full += 1;
        }
        self.send(client, out);
    }
}
