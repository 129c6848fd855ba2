//! Sans-IO TURN core: allocations, permissions, channels, auth, quotas.
//!
//! Driven by the runtime (or a test) with `(now, unix_now, from, bytes)`; never reads a clock,
//! never touches a socket. After every `handle_*` call drain `poll_transmit` and
//! `poll_command` until they return `None`.
//!
//! The two relay directions are the fast path: [`Core::handle_input`] on a ChannelData or Send
//! indication and [`Core::handle_peer_data`] return a [`Relay`] that tells the runtime to send
//! bytes that are already in its own receive buffer; nothing is allocated or copied.
//!
//! Where each part lives (one file per TURN method or concern):
//! * `mod.rs` — [`Core`]: construction, SIGHUP setters, `poll_*`, timers, deletion, the
//!   input entry point [`Core::handle_input`];
//! * `api.rs` — the types crossing the boundary ([`FiveTuple`], [`Relay`], [`Transmit`],
//!   [`Command`], [`CoreConfig`]);
//! * `request.rs` — request dispatch: reflection filter, retransmission cache, 420,
//!   **Binding**;
//! * `auth.rs` — long-term-credential authentication, nonces, 401/438 challenges;
//! * `allocate.rs` — **Allocate** and the relay sockets it opens;
//! * `refresh.rs` — **Refresh**;
//! * `permission.rs` — **CreatePermission** and **ChannelBind**;
//! * `relay.rs` — **Send**/**Data** indications and **ChannelData** (the fast path);
//! * `rfc6062.rs` — **Connect**, **ConnectionAttempt**, **ConnectionBind** (TCP relays);
//! * `reply.rs` — `Req` (what a method handler is given) and `Reject` (what it refuses
//!   with, answered once by the dispatcher), error and authenticated answers, the
//!   transaction cache;
//! * `allocation.rs` — one allocation's state; `quota.rs` — the [`QuotaLedger`]
//!   interface to what the workers share (implemented by the shell); `rate.rs` — the per-source request limit; `stats.rs` — counters and gauges;
//!   `fxhash.rs` — the hasher of the hot-path tables.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;

use shared_ice::auth::{LongTermKey, RestSecrets};
use shared_ice::stun::{Class, Message, Method, TransactionId, error_code};

use self::allocation::Allocation;
use self::auth::Credentials;
use self::quota::quota_key;
use self::rate::RateTable;
use self::reply::{Reject, Req};
use self::rfc6062::PendingConnect;
use crate::policy::PeerPolicy;

pub use self::api::{
    Command, CoreConfig, FiveTuple, InstallResult, OffloadBinding, OffloadSync, Proto, Relay,
    RelayToken, Transmit,
};
pub use self::auth::StaticUser;
pub(crate) use self::fxhash::FxMap;
pub use self::quota::{Exceeded, QuotaLedger};
pub use self::rfc6062::CONNECTION_BIND_TIMEOUT;
pub use self::stats::{Gauges, Stats, deny_labels, labels};

mod allocate;
mod allocation;
mod api;
mod auth;
mod fxhash;
mod permission;
mod quota;
mod rate;
mod refresh;
mod relay;
mod reply;
mod request;
mod rfc6062;
mod stats;
#[cfg(test)]
mod tests;

/// Permission lifetime (RFC 8656 §9): the default and the most `permission_lifetime` allows.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12): the default and the most `channel_lifetime`
/// allows.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires its number and peer stay reserved this long (RFC 8656 §12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// How long answers to retransmitted requests are kept (RFC 8489 §6.3.1: 40 s).
pub const TRANSACTION_CACHE: Duration = Duration::from_secs(40);
/// RESERVATION-TOKEN lifetime (RFC 8656 §14.9, 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Value of the SOFTWARE attribute in authenticated answers.
pub const SOFTWARE: &str = concat!("callrelay turn-server ", env!("CARGO_PKG_VERSION"));

/// The sans-IO TURN server state of one shard.
pub struct Core<R> {
    cfg: CoreConfig,
    rng: R,
    creds: Credentials,
    /// Long-term keys that verified recently, per username, for the nonce lifetime: a TURN
    /// REST key costs HMAC-SHA1 + base64 + MD5 per secret to derive, and Mattermost gives
    /// every user of a day the same username. Used only when MESSAGE-INTEGRITY verifies
    /// with it; emptied on SIGHUP (secrets may have changed) and when it reaches
    /// `KEY_CACHE_MAX` entries.
    key_cache: HashMap<String, (LongTermKey, Instant)>,
    policy: PeerPolicy,
    quota: Arc<dyn QuotaLedger>,
    nonce_key: [u8; 20],
    slots: Vec<Option<Allocation>>,
    free_slots: Vec<u32>,
    next_generation: u32,
    by_client: FxMap<FiveTuple, u32>,
    /// Advertised relayed addresses of this shard's UDP relays, for in-process delivery
    /// between two allocations of the same worker (the common one-to-one call).
    by_relay_addr: FxMap<SocketAddr, RelayToken>,
    tx_cache: HashMap<(FiveTuple, TransactionId), (Instant, Vec<u8>)>,
    rate: RateTable,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<Command>,
    offload: VecDeque<OffloadSync>,
    next_sweep: Option<Instant>,
    draining: bool,
    stats: Stats,
    scratch: Vec<u16>,
    pending_connects: HashMap<u32, PendingConnect>,
}

impl<R: RngCore> Core<R> {
    /// A new core; `quota` is shared across workers.
    pub fn new(
        cfg: CoreConfig,
        mut rng: R,
        secrets: RestSecrets,
        users: &[StaticUser],
        policy: PeerPolicy,
        quota: Arc<dyn QuotaLedger>,
    ) -> Self {
        let nonce_key = cfg.nonce_key.unwrap_or_else(|| {
            let mut k = [0u8; 20];
            rng.fill_bytes(&mut k);
            k
        });
        let rate = RateTable::new(
            cfg.rate_sources,
            cfg.rate_v6_prefix,
            (rng.next_u64(), rng.next_u64()),
        );
        // Twice the bound: the cache churns (every entry expires after 40 s), and the
        // tombstones expiry leaves make hashbrown grow a table whose live entries are
        // above half its capacity instead of rehashing it in place. At 2x the bound that
        // never happens, so the table's size is fixed from the start (a 30-minute soak saw
        // it double once, +16 MB, after 8 minutes when sized at 1x).
        let tx_cache = HashMap::with_capacity(cfg.tx_cache_max.saturating_mul(2));
        Self {
            rng,
            key_cache: HashMap::new(),
            creds: Credentials::new(secrets, users, &cfg.realm),
            policy,
            quota,
            nonce_key,
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 1,
            by_client: FxMap::default(),
            by_relay_addr: FxMap::default(),
            tx_cache,
            rate,
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            offload: VecDeque::new(),
            next_sweep: None,
            draining: false,
            stats: Stats::default(),
            scratch: Vec::new(),
            pending_connects: HashMap::new(),
            cfg,
        }
    }

    /// Replaces secrets and static users (SIGHUP). Existing allocations keep their keys.
    pub fn set_credentials(&mut self, secrets: RestSecrets, users: &[StaticUser]) {
        self.creds = Credentials::new(secrets, users, &self.cfg.realm);
        self.key_cache.clear();
    }

    /// Replaces the peer policy (SIGHUP). Permissions of peers the new policy denies end
    /// at once, and with them their channel bindings (which then cool down as after
    /// expiry) and their entries in the kernel fast path: a deny an operator adds stops
    /// relaying in progress, not only new permissions. Returns how many permissions
    /// ended. RFC 6062 TCP peer connections already open are not cut.
    pub fn set_policy(&mut self, now: Instant, policy: PeerPolicy) -> usize {
        self.policy = policy;
        let mut revoked = 0;
        let mut changed = Vec::new();
        for (slot, a) in self.slots.iter_mut().enumerate() {
            let Some(a) = a else { continue };
            let before = a.permissions.len();
            let policy = &self.policy;
            a.permissions.retain(|ip, _| policy.check(*ip).is_ok());
            if a.permissions.len() == before {
                continue;
            }
            revoked += before - a.permissions.len();
            for c in a.channels.values_mut() {
                if policy.check(c.peer.ip()).is_err() && c.expires > now {
                    c.expires = now;
                }
            }
            changed.push(slot as u32);
        }
        for slot in changed {
            self.offload_sync(slot, now);
        }
        revoked
    }

    /// Stop accepting new allocations (SIGTERM drain); existing ones keep working.
    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    /// Whether `client` (a TCP/TLS connection) holds an allocation.
    pub fn has_allocation(&self, client: FiveTuple) -> bool {
        self.by_client.contains_key(&client)
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// Next time [`Self::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Whether `poll_transmit`/`poll_command` have something (cheap check for the fast path).
    pub fn has_pending(&self) -> bool {
        !self.transmits.is_empty() || !self.commands.is_empty() || !self.offload.is_empty()
    }

    /// Next datagram/frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next socket command.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Next change of an allocation's offloadable channel bindings (only with
    /// [`CoreConfig::offload`]).
    pub fn poll_offload(&mut self) -> Option<OffloadSync> {
        self.offload.pop_front()
    }

    /// Queues the current channel bindings of the UDP allocation in `slot` for the kernel
    /// fast path. Channels whose peer is one of our own relayed addresses are left out:
    /// the in-process path delivers those (with the other allocation's checks).
    pub(super) fn offload_sync(&mut self, slot: u32, now: Instant) {
        if !self.cfg.offload {
            return;
        }
        let Some(a) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        if a.client.proto != Proto::Udp || a.tcp || a.pending.is_some() {
            return;
        }
        let mut bindings = Vec::new();
        for (&channel, c) in &a.channels {
            let Some(&perm) = a.permissions.get(&c.peer.ip()) else {
                continue;
            };
            let expires = c.expires.min(perm).min(a.expires);
            let relay = a
                .relay_for(c.peer)
                .and_then(|i| a.relays.get(i).copied().flatten());
            let Some(relay) = relay.filter(|r| r.open) else {
                continue;
            };
            if expires <= now || self.is_relay_ip(c.peer.ip()) {
                continue;
            }
            bindings.push(OffloadBinding {
                client: a.client.remote,
                server: a.client.local,
                relay: relay.bind,
                peer: c.peer,
                channel,
                expires,
            });
        }
        self.offload.push_back(OffloadSync {
            client: a.client,
            bindings,
        });
    }

    /// Expires allocations, permissions, channels, cached answers and rate-limit state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().filter(|a| a.expires <= now).map(|_| i as u32))
            .collect();
        for slot in expired {
            self.delete(slot);
        }
        let mut changed = Vec::new();
        for (slot, a) in self.slots.iter_mut().enumerate() {
            let Some(a) = a else { continue };
            let before = (a.permissions.len(), a.channels.len());
            a.permissions.retain(|_, e| *e > now);
            let channel_of = &mut a.channel_of;
            a.channels.retain(|_, c| {
                let keep = c.expires + CHANNEL_COOLDOWN > now;
                if !keep {
                    channel_of.remove(&c.peer);
                }
                keep
            });
            if self.cfg.offload && before != (a.permissions.len(), a.channels.len()) {
                changed.push(slot as u32);
            }
        }
        // The kernel checks each binding's expiry itself; this only frees its entries.
        for slot in changed {
            self.offload_sync(slot, now);
        }
        self.tx_cache.retain(|_, (t, _)| *t > now);
        let reservations = self.quota.sweep(now);
        self.next_sweep = if self.slots.iter().any(Option::is_some)
            || !self.tx_cache.is_empty()
            || reservations
        {
            Some(now + SWEEP_INTERVAL)
        } else {
            None
        };
    }

    fn arm(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    /// A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn connection_closed(&mut self, client: FiveTuple) {
        if let Some(&slot) = self.by_client.get(&client) {
            self.delete(slot);
        }
    }

    fn alloc_mut(&mut self, t: RelayToken) -> Option<&mut Allocation> {
        self.slots
            .get_mut(t.slot as usize)
            .and_then(Option::as_mut)
            .filter(|a| a.generation == t.generation)
    }

    fn delete(&mut self, slot: u32) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for (i, r) in a.relays.iter().enumerate() {
            if let Some(r) = r {
                if self.by_relay_addr.remove(&r.advertised).is_some() {
                    self.quota.set_owner(r.advertised.port(), None);
                }
                self.quota.release_port(r.bind.port());
                self.commands.push_back(Command::CloseRelaySocket {
                    relay: RelayToken {
                        slot,
                        generation: a.generation,
                        v6: i == 1,
                    },
                });
            }
        }
        if let Some(tok) = a.reservation {
            // The reserved odd port stays reserved until its token expires.
            let _ = tok;
        }
        self.by_client.remove(&a.client);
        if self.cfg.offload && a.client.proto == Proto::Udp {
            self.offload.push_back(OffloadSync {
                client: a.client,
                bindings: Vec::new(),
            });
        }
        self.quota.release(quota_key(&a.username, a.rest_expiry));
        self.free_slots.push(slot);
    }

    /// Bytes from a client (one UDP datagram or one TCP/TLS frame).
    pub fn handle_input(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        buf: &[u8],
    ) -> Option<Relay> {
        let first = *buf.first()?;
        if first & 0xC0 == 0x40 {
            return self.channel_data(now, from, buf);
        }
        let Ok(msg) = Message::parse(buf) else {
            tracing::trace!(target: "wire", client = ?from.remote, "not STUN/ChannelData, dropped");
            return None;
        };
        // A FINGERPRINT that does not match: not for us (RFC 8489 §14.7), dropped.
        if msg.has_fingerprint() && !msg.check_fingerprint() {
            return None;
        }
        match msg.class() {
            Class::Request => {
                self.request(now, unix_now, from, &msg);
                None
            }
            Class::Indication if msg.method() == Method::SEND => {
                self.send_indication(now, from, &msg, buf)
            }
            _ => None,
        }
    }

    /// The slot of the allocation `rq` comes from: 437 when the 5-tuple has none (or it
    /// expired, or is still opening), 441 when it belongs to another user.
    fn own_allocation(&self, rq: &Req<'_>) -> Result<u32, Reject> {
        const MISMATCH: Reject = Reject::code(error_code::ALLOCATION_MISMATCH);
        let slot = *self.by_client.get(&rq.from).ok_or(MISMATCH)?;
        match self.slots.get(slot as usize).and_then(Option::as_ref) {
            Some(a) if a.expires > rq.now && a.pending.is_none() => {
                if a.username != rq.authed.username {
                    return Err(Reject::code(error_code::WRONG_CREDENTIALS));
                }
                Ok(slot)
            }
            _ => Err(MISMATCH),
        }
    }
}
