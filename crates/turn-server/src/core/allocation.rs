//! The state of one allocation: relay sockets, permissions, channel bindings, bandwidth.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::FiveTuple;
use super::allocate::PendingAllocate;
use super::fxhash::FxMap;
use shared_ice::auth::LongTermKey;

/// A token bucket in bytes or requests.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl Bucket {
    pub(super) fn new(now: Instant, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }
    pub(super) fn take(&mut self, now: Instant, rate: f64, burst: f64, n: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
    /// Counts `n` already spent elsewhere (the kernel fast path): refills, then takes
    /// them, down to a debt of one `burst` at most.
    pub(super) fn charge(&mut self, now: Instant, rate: f64, burst: f64, n: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = ((self.tokens + dt * rate).min(burst) - n).max(-burst);
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct RelaySlot {
    pub(super) bind: SocketAddr,
    pub(super) advertised: SocketAddr,
    pub(super) open: bool,
}

#[derive(Debug)]
pub(super) struct Allocation {
    pub(super) generation: u32,
    pub(super) client: FiveTuple,
    pub(super) username: String,
    pub(super) key: LongTermKey,
    pub(super) rest_expiry: Option<u64>,
    pub(super) expires: Instant,
    pub(super) relays: [Option<RelaySlot>; 2],
    /// Peer IP → expiry. Bounded by [`CoreConfig::max_permissions`]; hashed so the
    /// packet path costs one lookup whatever the size.
    pub(super) permissions: FxMap<IpAddr, Instant>,
    /// Channel number → binding, bounded by [`CoreConfig::max_channels`].
    pub(super) channels: FxMap<u16, Channel>,
    /// Peer → channel number (the reverse index of `channels`, same entries).
    pub(super) channel_of: FxMap<SocketAddr, u16>,
    pub(super) bucket: Bucket,
    /// Payload bytes relayed here (this path, both directions), for the kernel fast
    /// path's share of `bandwidth` ([`Core::relayed_bytes`](super::Core::relayed_bytes)).
    pub(super) relayed_bytes: u64,
    /// The Allocate answer waits for the relay sockets to be open.
    pub(super) pending: Option<PendingAllocate>,
    pub(super) reservation: Option<u64>,
    /// RFC 6062 TCP allocation.
    pub(super) tcp: bool,
    /// Peers with a connection or a pending Connect (446 on a second Connect).
    pub(super) tcp_peers: Vec<SocketAddr>,
}

impl Allocation {
    pub(super) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }
    /// Whether `ips` (deduplicated by the caller or not) fit under `max` permissions,
    /// dropping this allocation's expired ones first if needed.
    pub(super) fn permissions_fit(&mut self, ips: &[IpAddr], max: usize, now: Instant) -> bool {
        let count_new = |a: &Self| {
            ips.iter()
                .enumerate()
                .filter(|(i, ip)| {
                    !a.permissions.contains_key(ip)
                        && !ips.get(..*i).is_some_and(|s| s.contains(ip))
                })
                .count()
        };
        if self.permissions.len() + count_new(self) <= max {
            return true;
        }
        self.permissions.retain(|_, e| *e > now);
        self.permissions.len() + count_new(self) <= max
    }
    /// Takes `len` bytes from the allocation's bucket of `bandwidth` bytes/s (0: unlimited);
    /// `false` when over.
    pub(super) fn within_bandwidth(&mut self, now: Instant, bandwidth: u64, len: usize) -> bool {
        let rate = bandwidth as f64;
        let ok = bandwidth == 0 || self.bucket.take(now, rate, rate, len as f64);
        if ok {
            self.relayed_bytes = self.relayed_bytes.wrapping_add(len as u64);
        }
        ok
    }

    /// Counts `len` bytes the kernel fast path relayed for this allocation against its
    /// bucket (0: unlimited, nothing to count).
    pub(super) fn charge_bandwidth(&mut self, now: Instant, bandwidth: u64, len: u64) {
        if bandwidth != 0 {
            let rate = bandwidth as f64;
            self.bucket.charge(now, rate, rate, len as f64);
        }
    }

    pub(super) fn relay_for(&self, peer: SocketAddr) -> Option<usize> {
        let i = usize::from(peer.is_ipv6());
        self.relays.get(i).and_then(|r| r.as_ref()).map(|_| i)
    }
}

/// Installs or refreshes a permission for `lifetime` (`permission_lifetime`); the caller
/// checked the cap ([`Allocation::permissions_fit`]).
pub(super) fn install_permission(a: &mut Allocation, ip: IpAddr, now: Instant, lifetime: Duration) {
    a.permissions.insert(ip, now + lifetime);
}
