//! Per-source limit on unauthenticated answers (the UDP reflection limit).
//!
//! A fixed-size, 4-way set-associative table of token buckets, allocated once: O(1) work
//! and no allocation per packet, bounded memory (`rate_limit_sources` × 32 bytes per
//! worker). A source that is not in the table takes a slot instead of being refused: the
//! least recently used entry of its set is replaced. A flood from many (spoofed) source
//! addresses therefore churns the table, but a new legitimate client always starts with a
//! full bucket and gets its 401. The set index is a keyed hash (SipHash with a per-core
//! random key), so a flood cannot aim at one victim's set.
//!
//! IPv6 sources are aggregated by prefix (`rate_limit_ipv6_prefix`, /64 by default): one
//! host owns a whole /64 and could otherwise fill the table on its own.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Instant;

/// Entries per set: the replacement choice is made among this many.
const WAYS: usize = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Source key (IPv4 address, or IPv6 prefix), see [`source_key`].
    key: [u64; 2],
    /// Milliseconds since the table's epoch + 1 of the last update; 0 = empty.
    last_ms: u64,
    /// Tokens (requests) left.
    tokens: f32,
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

    /// Takes one token from `ip`'s bucket (`rate` per second, `burst` at most).
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr, rate: f32, burst: f32) -> Verdict {
        let key = source_key(ip, self.v6_prefix);
        let now_ms = self.now_ms(now);
        let base = self.set_of(key) * WAYS;
        let Some(set) = self.entries.get_mut(base..base + WAYS) else {
            return Verdict {
                allowed: true,
                evicted: false,
            };
        };
        let mut evicted = false;
        let i = match set.iter().position(|e| e.last_ms != 0 && e.key == key) {
            Some(i) => i,
            None => {
                // An empty way, else the least recently used one.
                let (i, victim) = set
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.last_ms)
                    .map_or((0, 0), |(i, e)| (i, e.last_ms));
                evicted = victim != 0;
                if let Some(e) = set.get_mut(i) {
                    *e = Entry {
                        key,
                        last_ms: now_ms,
                        tokens: burst,
                    };
                }
                i
            }
        };
        let Some(e) = set.get_mut(i) else {
            return Verdict {
                allowed: true,
                evicted,
            };
        };
        let dt = now_ms.saturating_sub(e.last_ms) as f32 / 1000.0;
        e.last_ms = now_ms;
        e.tokens = (e.tokens + dt * rate).min(burst);
        let allowed = e.tokens >= 1.0;
        if allowed {
            e.tokens -= 1.0;
        }
        Verdict { allowed, evicted }
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

    #[test]
    fn bucket_refills_and_caps() {
        let mut t = RateTable::new(16, 64, (1, 2));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let n = (0..20)
            .filter(|_| t.allow(now, a, 5.0, 10.0).allowed)
            .count();
        assert_eq!(n, 10);
        let later = now + Duration::from_millis(400);
        let n = (0..20)
            .filter(|_| t.allow(later, a, 5.0, 10.0).allowed)
            .count();
        assert_eq!(n, 2);
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
            for _ in 0..3 {
                evictions += u32::from(t.allow(now, src, 1.0, 2.0).evicted);
            }
            // ...and a fresh source is still answered at once.
            if i % 100 == 0 {
                let fresh = IpAddr::from((0xc633_6400 + i).to_be_bytes());
                assert!(t.allow(now, fresh, 1.0, 2.0).allowed, "fresh source {i}");
            }
            assert_eq!(t.capacity(), 64);
        }
        assert_eq!(t.len(), 64);
        assert!(evictions > 9_000, "{evictions}");
    }
}
