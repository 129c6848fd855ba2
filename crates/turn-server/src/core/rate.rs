//! Per-source limit on unauthenticated answers (the UDP reflection limit).
//!
//! A fixed-size, 4-way set-associative table of token buckets, allocated once: O(1) work
//! and no allocation per packet, bounded memory (`rate_limit_sources` × 40 bytes per
//! worker). A source that is not in the table takes a slot instead of being refused: the
//! least recently used entry of its set is replaced. A flood from many (spoofed) source
//! addresses therefore churns the table, but a new legitimate client always starts with a
//! full bucket and gets its 401. The set index is a keyed hash (SipHash with a per-core
//! random key), so a flood cannot aim at one victim's set.
//!
//! IPv6 sources are aggregated by prefix (`rate_limit_ipv6_prefix`, /64 by default): one
//! host owns a whole /64 and could otherwise fill the table on its own.
//!
//! Two budgets per source, so that a limit never hurts an office behind one NAT address:
//! * UDP answers: `unauth_rate`, or `auth_rate` while the source has authenticated
//!   successfully within the trust window (a valid nonce is bound to the source address,
//!   so trust needs a real round trip: a spoofer cannot earn it for a victim). A full set
//!   replaces untrusted entries first, so a spoofed flood does not wipe that trust out.
//! * Stream (TCP/TLS) requests: their own bucket at `auth_rate` (the handshake proved the
//!   address; there is no reflection to stop, only one source's CPU share to bound). It is
//!   separate so that UDP spoofed in an office's name cannot use it up.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Instant;

use rand::RngCore;

use super::stats::QuotaKind;
use super::{Command, Core, FiveTuple, Proto};

/// Entries per set: the replacement choice is made among this many.
const WAYS: usize = 4;
/// Tokens of a new entry that took the place of one used within the last 2 s (the
/// table is churning: a flood from more addresses than it holds). A full burst there
/// would let a flooding source that was pushed out earn a fresh burst each time it comes
/// back; 4 covers a real client's 401 round and a retransmission, and the bucket
/// refills at the normal rate from there.
const CHURN_START_TOKENS: f32 = 4.0;
/// An entry unused this long would have refilled to its full burst anyway (burst = 2 s
/// of rate): replacing it takes nothing from anyone.
const CHURN_WINDOW_MS: u64 = 2000;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Source key (IPv4 address, or IPv6 prefix), see [`source_key`].
    key: [u64; 2],
    /// Milliseconds since the table's epoch + 1 of the last update; 0 = empty.
    last_ms: u64,
    /// Tokens (requests) left: UDP answers.
    tokens: f32,
    /// Tokens left: requests on TCP/TLS connections.
    stream_tokens: f32,
    /// Seconds since the epoch until which the source counts as authenticated; 0 = never.
    trusted_until_s: u32,
}

/// The budgets, from the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Requests/s of a source without a recent successful authentication (UDP).
    pub(crate) unauth_rate: f32,
    /// Requests/s of a source with one, and of stream connections.
    pub(crate) auth_rate: f32,
}

impl Limits {
    fn rate(&self, trusted: bool, stream: bool) -> f32 {
        if trusted || stream {
            self.auth_rate
        } else {
            self.unauth_rate
        }
    }
}

/// The table of one core.
#[derive(Debug)]
pub(crate) struct RateTable {
    entries: Box<[Entry]>,
    sets: usize,
    seed: (u64, u64),
    v6_prefix: u8,
    epoch: Option<Instant>,
}

/// Outcome of [`RateTable::allow`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) struct Verdict {
    /// The answer may be sent.
    pub(crate) allowed: bool,
    /// Another source's entry was replaced to make room for this one.
    pub(crate) evicted: bool,
}

/// The key of `ip`: the IPv4 address (IPv4-mapped IPv6 counts as IPv4), or the first
/// `v6_prefix` bits of an IPv6 address. The two never collide: the IPv4 form starts with
/// 64 one bits, which only a multicast IPv6 address (ff00::/8, never answered) could.
pub(crate) fn source_key(ip: IpAddr, v6_prefix: u8) -> [u64; 2] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => [u64::MAX, u64::from(u32::from(v4))],
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let masked = match u32::from(v6_prefix.min(128)) {
                0 => 0,
                p => bits & (u128::MAX << (128 - p)),
            };
            [(masked >> 64) as u64, masked as u64]
        }
    }
}

impl RateTable {
    /// A table of `size` entries (rounded up to a multiple of 4, at least 4).
    pub(crate) fn new(size: usize, v6_prefix: u8, seed: (u64, u64)) -> Self {
        let sets = size.div_ceil(WAYS).max(1);
        Self {
            entries: vec![Entry::default(); sets * WAYS].into_boxed_slice(),
            sets,
            seed,
            v6_prefix,
            epoch: None,
        }
    }

    /// Entries (fixed for the table's life).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Live entries (test helper: O(size)).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.last_ms != 0).count()
    }

    fn set_of(&self, key: [u64; 2]) -> usize {
        // SipHash-1-3 keyed by writing the secret seed first.
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.seed.0);
        h.write_u64(self.seed.1);
        h.write_u64(key[0]);
        h.write_u64(key[1]);
        // Range reduction without a division (Lemire).
        ((u128::from(h.finish()) * self.sets as u128) >> 64) as usize
    }

    fn now_ms(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64 + 1
    }

    /// `ip`'s entry, refilled up to `now`: found, or put in place of an empty way, else of
    /// the least recently used untrusted way, else of the least recently used one. The
    /// second value says whether a live entry was replaced.
    fn entry(&mut self, now: Instant, ip: IpAddr, l: Limits) -> (Option<&mut Entry>, bool) {
        let key = source_key(ip, self.v6_prefix);
        let now_ms = self.now_ms(now);
        let now_s = (now_ms / 1000) as u32;
        let base = self.set_of(key) * WAYS;
        let Some(set) = self.entries.get_mut(base..base + WAYS) else {
            return (None, false);
        };
        let found = set.iter().position(|e| e.last_ms != 0 && e.key == key);
        let i = found.unwrap_or_else(|| {
            set.iter()
                .enumerate()
                .min_by_key(|(_, e)| (e.last_ms != 0, e.trusted_until_s > now_s, e.last_ms))
                .map_or(0, |(i, _)| i)
        });
        let Some(e) = set.get_mut(i) else {
            return (None, false);
        };
        if found.is_some() {
            let trusted = e.trusted_until_s > now_s;
            let dt = now_ms.saturating_sub(e.last_ms) as f32 / 1000.0;
            let (rate, stream) = (l.rate(trusted, false), l.rate(trusted, true));
            e.tokens = (e.tokens + dt * rate).min(2.0 * rate);
            e.stream_tokens = (e.stream_tokens + dt * stream).min(2.0 * stream);
            e.last_ms = now_ms;
            return (Some(e), false);
        }
        let evicted = e.last_ms != 0;
        let churning = evicted && now_ms.saturating_sub(e.last_ms) < CHURN_WINDOW_MS;
        let start = |burst: f32| {
            if churning {
                burst.min(CHURN_START_TOKENS)
            } else {
                burst
            }
        };
        *e = Entry {
            key,
            last_ms: now_ms,
            tokens: start(2.0 * l.unauth_rate),
            stream_tokens: start(2.0 * l.auth_rate),
            trusted_until_s: 0,
        };
        (Some(e), evicted)
    }

    /// Takes one token from `ip`'s bucket: the UDP one, or with `stream` the bucket of
    /// requests on TCP/TLS connections. Burst: twice the rate.
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr, stream: bool, l: Limits) -> Verdict {
        let (e, evicted) = self.entry(now, ip, l);
        let Some(e) = e else {
            return Verdict {
                allowed: true,
                evicted,
            };
        };
        let tokens = if stream {
            &mut e.stream_tokens
        } else {
            &mut e.tokens
        };
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        Verdict { allowed, evicted }
    }

    /// `ip` authenticated successfully: its UDP budget is `auth_rate` for `secs` seconds.
    /// A source that was not trusted starts with the full `auth_rate` burst (the rest of an
    /// office starting calls at once), later successes only extend the window. Returns
    /// whether a live entry was replaced to make room.
    pub(crate) fn trust(&mut self, now: Instant, ip: IpAddr, secs: u32, l: Limits) -> bool {
        let (e, evicted) = self.entry(now, ip, l);
        if let Some(e) = e {
            let now_s = (e.last_ms / 1000) as u32;
            if e.trusted_until_s <= now_s {
                e.tokens = 2.0 * l.auth_rate;
            }
            e.trusted_until_s = now_s.saturating_add(secs.max(1));
        }
        evicted
    }
}

impl<R: RngCore> Core<R> {
    pub(super) fn rate_limits(&self) -> Limits {
        Limits {
            unauth_rate: self.cfg.unauth_rate as f32,
            auth_rate: self.cfg.auth_rate as f32,
        }
    }

    /// May an unauthenticated answer go to `from`? The per-source limit: a fixed table that
    /// replaces old entries and never refuses a source it has not seen; `auth_rate` for a
    /// source that authenticated recently. Over UDP the excess is dropped (the client
    /// retransmits); a TCP/TLS client never retransmits (RFC 8489 §6.2.2), so over its
    /// budget its connection is closed and counted instead of left hanging.
    pub(super) fn rate_ok(&mut self, now: Instant, from: FiveTuple) -> bool {
        let stream = from.proto != Proto::Udp;
        let limits = self.rate_limits();
        let v = self.rate.allow(now, from.remote.ip(), stream, limits);
        self.stats.rate_evictions += u64::from(v.evicted);
        if !v.allowed {
            if stream {
                self.stats.rate_limit_closed += 1;
                tracing::debug!(client = ?from.remote, "stream over the request rate, closing");
                self.commands
                    .push_back(Command::CloseConnection { client: from });
            } else {
                self.stats.quota[QuotaKind::RateLimit as usize] += 1;
            }
        }
        v.allowed
    }

    /// A request from `from` authenticated: its source gets `auth_rate` for the nonce
    /// lifetime (a nonce is bound to the source address, so this needs a real round trip).
    pub(super) fn trust_source(&mut self, now: Instant, from: FiveTuple) {
        let limits = self.rate_limits();
        let secs = self.cfg.nonce_lifetime;
        if self.rate.trust(now, from.remote.ip(), secs, limits) {
            self.stats.rate_evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_entry_is_40_bytes() {
        // The documented memory bound: rate_limit_sources x 40 bytes per worker.
        assert_eq!(size_of::<Entry>(), 40);
    }

    #[test]
    fn keys_aggregate_ipv6_by_prefix_and_keep_families_apart() {
        let k = |s: &str, p: u8| source_key(ip(s), p);
        assert_eq!(k("2001:db8:1:2::1", 64), k("2001:db8:1:2:ffff::9", 64));
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:3::1", 48));
        assert_ne!(k("2001:db8:1:2::1", 128), k("2001:db8:1:2::2", 128));
        assert_eq!(k("::ffff:192.0.2.1", 64), k("192.0.2.1", 64));
        assert_ne!(k("192.0.2.1", 64), k("192.0.2.2", 64));
        // Neither `::` nor an IPv6 address spelled like an IPv4 key collides with IPv4.
        assert_ne!(k("0.0.0.1", 128), k("::1", 128));
        assert_ne!(k("0.0.0.1", 128), k("::1:0:1", 128));
        assert_ne!(k("0.0.0.0", 0), k("::", 0));
    }

    const L: Limits = Limits {
        unauth_rate: 5.0,
        auth_rate: 100.0,
    };

    #[test]
    fn bucket_refills_and_caps() {
        let mut t = RateTable::new(16, 64, (1, 2));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let n = (0..20)
            .filter(|_| t.allow(now, a, false, L).allowed)
            .count();
        assert_eq!(n, 10);
        let later = now + Duration::from_millis(400);
        let n = (0..20)
            .filter(|_| t.allow(later, a, false, L).allowed)
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn trusted_sources_and_streams_get_the_auth_budget_separately() {
        let mut t = RateTable::new(16, 64, (1, 2));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let count = |t: &mut RateTable, at: Instant, stream: bool, n: usize| {
            (0..n).filter(|_| t.allow(at, a, stream, L).allowed).count()
        };
        // UDP used up; the stream budget is separate (a spoofer cannot spend it).
        assert_eq!(count(&mut t, now, false, 20), 10);
        assert_eq!(count(&mut t, now, true, 300), 200);
        // A successful authentication gives UDP the auth_rate burst at once, and refills
        // at auth_rate; a second success does not refill.
        t.trust(now, a, 600, L);
        assert_eq!(count(&mut t, now, false, 300), 200);
        t.trust(now, a, 600, L);
        assert_eq!(count(&mut t, now, false, 300), 0);
        assert_eq!(count(&mut t, now + Duration::from_secs(3), false, 300), 200);
        // Trust expires.
        assert_eq!(
            count(&mut t, now + Duration::from_secs(700), false, 300),
            10
        );
    }

    #[test]
    fn churning_the_table_earns_a_flooding_source_no_fresh_burst() {
        // the defaults: 50/s, a burst of 100
        let l = Limits {
            unauth_rate: 50.0,
            auth_rate: 2000.0,
        };
        let mut t = RateTable::new(64, 64, (7, 8));
        let mut now = Instant::now();
        let flooder = ip("203.0.113.9");
        let mut got = 0;
        for round in 0..20u32 {
            // the flooder takes what its bucket gives...
            got += (0..200)
                .filter(|_| t.allow(now, flooder, false, l).allowed)
                .count();
            // ...then spoofs a table's worth of sources to push its entry out
            for i in 0..1_000u32 {
                t.allow(
                    now,
                    IpAddr::from((0x0a00_0000 + round * 1_000 + i).to_be_bytes()),
                    false,
                    L,
                );
            }
            now += Duration::from_millis(50);
        }
        // one full burst (100) at first, then 4 per push-out plus the refill of 50 ms at
        // 50/s: far from the 20 bursts a fresh full bucket each time would give
        assert!(got <= 100 + 19 * (4 + 3), "{got}");
        // a source first seen while nothing churns gets the whole burst
        now += Duration::from_secs(3);
        let calm = ip("198.51.100.7");
        let n = (0..300)
            .filter(|_| t.allow(now, calm, false, l).allowed)
            .count();
        assert_eq!(n, 100);
        // and a new source during a churn is still answered at once
        let fresh = ip("198.51.100.8");
        for i in 0..1_000u32 {
            t.allow(now, IpAddr::from((0x0b00_0000 + i).to_be_bytes()), false, l);
        }
        assert!(t.allow(now, fresh, false, l).allowed);
    }

    #[test]
    fn a_flood_does_not_replace_trusted_entries() {
        let mut t = RateTable::new(64, 64, (5, 6));
        let mut now = Instant::now();
        let office = ip("198.51.100.1");
        t.trust(now, office, 600, L);
        for i in 0..10_000u32 {
            now += Duration::from_millis(1);
            t.allow(now, IpAddr::from((0x0a00_0000 + i).to_be_bytes()), false, L);
        }
        // Still trusted: the UDP budget is the auth one.
        let n = (0..300)
            .filter(|_| t.allow(now, office, false, L).allowed)
            .count();
        assert_eq!(n, 200);
    }

    #[test]
    fn a_full_table_replaces_the_least_recently_used_and_never_refuses_a_new_source() {
        let mut t = RateTable::new(64, 64, (3, 4));
        let mut now = Instant::now();
        let mut evictions = 0;
        for i in 0..10_000u32 {
            now += Duration::from_millis(1);
            let src = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            // The flooding source uses up its own bucket...
            for _ in 0..30 {
                evictions += u32::from(t.allow(now, src, false, L).evicted);
            }
            // ...and a fresh source is still answered at once.
            if i % 100 == 0 {
                let fresh = IpAddr::from((0xc633_6400 + i).to_be_bytes());
                assert!(t.allow(now, fresh, false, L).allowed, "fresh source {i}");
            }
            assert_eq!(t.capacity(), 64);
        }
        assert_eq!(t.len(), 64);
        assert!(evictions > 9_000, "{evictions}");
    }
}
