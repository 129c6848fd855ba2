//! The state every worker shares, owned by the shell: allocation quotas, the relay-port
//! pool with its EVEN-PORT reservations, RFC 6062 peer connections waiting for their
//! ConnectionBind, and the owner of each relay port. The cores consult it through
//! [`QuotaLedger`], only on Allocate, deallocation, their timer sweep and RFC 6062 set-up;
//! the one per-packet call ([`QuotaLedger::owner`], relay to relay) is a relaxed atomic
//! load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use rand::RngCore;

use crate::core::{Exceeded, QuotaLedger};

/// Allocation limits shared by every worker (touched only on allocate/free, never per packet).
///
/// It also holds the relay-port pool, so EVEN-PORT reservations work whichever worker the
/// second Allocate reaches.
#[derive(Debug)]
pub struct SharedQuota {
    user_limit: u32,
    total_limit: u32,
    total: AtomicU32,
    per_user: Mutex<HashMap<String, u32>>,
    ports: Mutex<PortPool>,
    /// RFC 6062 peer connections waiting for ConnectionBind: id → (username, deadline).
    /// Shared because the data connection may reach another worker.
    tcp_conns: Mutex<HashMap<u32, (String, Instant)>>,
    /// Owner of each open UDP relay port: worker index + 1, 0 = none. Lock-free (one
    /// relaxed load per relay-to-relay packet); written on allocate/free only. A port is in
    /// the pool at most once, so the port alone names the relayed address.
    owners: Box<[AtomicU8]>,
}

impl SharedQuota {
    /// `0` means unlimited.
    pub fn new(user_limit: u32, total_limit: u32, ports: (u16, u16)) -> Self {
        Self {
            user_limit,
            total_limit,
            total: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
            ports: Mutex::new(PortPool::new(ports.0, ports.1)),
            tcp_conns: Mutex::new(HashMap::new()),
            owners: (0..=u16::MAX).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Allocations across all workers.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    fn tcp_conns(&self) -> MutexGuard<'_, HashMap<u32, (String, Instant)>> {
        self.tcp_conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ports(&self) -> MutexGuard<'_, PortPool> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn per_user(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.per_user.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl QuotaLedger for SharedQuota {
    fn acquire(&self, user: &str) -> Result<(), Exceeded> {
        let mut map = self.per_user();
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(Exceeded::User);
        }
        if self.total_limit != 0 && self.total.load(Ordering::Relaxed) >= self.total_limit {
            return Err(Exceeded::Total);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    fn release(&self, user: &str) {
        if self.unreserve(user) {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Not against `total_limit`, which counts allocations.
    fn reserve(&self, user: &str) -> Result<(), Exceeded> {
        let mut map = self.per_user();
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(Exceeded::User);
        }
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    fn unreserve(&self, user: &str) -> bool {
        let mut map = self.per_user();
        let Some(n) = map.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(user);
        }
        true
    }

    fn take_free_port(&self, rng: &mut dyn RngCore, even: bool, pair: bool) -> Option<u16> {
        let mut pool = self.ports();
        let p = pool.pick(rng, even, pair)?;
        pool.take(p);
        Some(p)
    }

    fn replace_port(&self, busy: Option<u16>, rng: &mut dyn RngCore, even: bool) -> Option<u16> {
        let mut pool = self.ports();
        let p = pool.pick(rng, even, false);
        if let Some(p) = p {
            pool.take(p);
            if let Some(busy) = busy {
                pool.release(busy);
            }
        }
        p
    }

    fn release_port(&self, port: u16) {
        self.ports().release(port);
    }

    fn ports_free(&self) -> usize {
        self.ports().free
    }

    fn hold_port(&self, token: u64, port: u16, expires: Instant, holder: &str) {
        let mut pool = self.ports();
        pool.take(port);
        pool.reserved
            .insert(token, (port, expires, holder.to_owned()));
    }

    fn redeem(&self, token: u64) -> Option<(u16, Instant)> {
        let r = self.ports().reserved.remove(&token);
        // Outside the pool lock: the quota map has its own.
        let (port, expires, holder) = r?;
        self.unreserve(&holder);
        Some((port, expires))
    }

    fn sweep(&self, now: Instant) -> bool {
        self.tcp_conns().retain(|_, (_, deadline)| *deadline > now);
        let (reservations, holders) = {
            let mut pool = self.ports();
            let expired: Vec<u64> = pool
                .reserved
                .iter()
                .filter(|(_, (_, e, _))| *e <= now)
                .map(|(t, _)| *t)
                .collect();
            let mut holders = Vec::new();
            for t in expired {
                if let Some((p, _, user)) = pool.reserved.remove(&t) {
                    pool.release(p);
                    holders.push(user);
                }
            }
            (!pool.reserved.is_empty(), holders)
        };
        // Outside the pool lock: the quota map has its own.
        for user in holders {
            self.unreserve(&user);
        }
        reservations
    }

    fn owner(&self, port: u16) -> Option<usize> {
        let v = self.owners.get(usize::from(port))?.load(Ordering::Relaxed);
        (v != 0).then(|| usize::from(v - 1))
    }

    fn set_owner(&self, port: u16, worker: Option<usize>) {
        let v = worker.map_or(0, |w| u8::try_from(w + 1).unwrap_or(0));
        if let Some(o) = self.owners.get(usize::from(port)) {
            o.store(v, Ordering::Relaxed);
        }
    }

    fn conn_pending(&self, id: u32) -> bool {
        self.tcp_conns().contains_key(&id)
    }

    fn conn_insert(&self, id: u32, user: String, deadline: Instant) {
        self.tcp_conns().insert(id, (user, deadline));
    }

    fn conn_claim(&self, id: u32, user: &str, now: Instant) -> bool {
        let mut conns = self.tcp_conns();
        match conns.get(&id) {
            Some((u, deadline)) if *deadline > now && u == user => conns.remove(&id).is_some(),
            Some((_, deadline)) if *deadline > now => false,
            _ => {
                conns.remove(&id);
                false
            }
        }
    }
}

/// Relay-port pool of one shard (bitset, random probing).
#[derive(Debug)]
struct PortPool {
    lo: u16,
    used: Vec<bool>,
    free: usize,
    /// Reserved by RESERVATION-TOKEN: token → (port, expiry, quota key of the user who
    /// holds it: a reservation counts against `user_quota` until redeemed or expired).
    reserved: HashMap<u64, (u16, Instant, String)>,
}

impl PortPool {
    fn new(lo: u16, hi: u16) -> Self {
        let n = usize::from(hi - lo) + 1;
        Self {
            lo,
            used: vec![false; n],
            free: n,
            reserved: HashMap::new(),
        }
    }
    fn is_free(&self, p: u16) -> bool {
        p.checked_sub(self.lo)
            .and_then(|i| self.used.get(usize::from(i)))
            .is_some_and(|u| !u)
    }
    fn take(&mut self, p: u16) {
        if let Some(u) = p
            .checked_sub(self.lo)
            .and_then(|i| self.used.get_mut(usize::from(i)))
            && !*u
        {
            *u = true;
            self.free -= 1;
        }
    }
    fn release(&mut self, p: u16) {
        if let Some(u) = p
            .checked_sub(self.lo)
            .and_then(|i| self.used.get_mut(usize::from(i)))
            && *u
        {
            *u = false;
            self.free += 1;
        }
    }
    /// A random free port; `even` also requires port+1 free when `pair`.
    fn pick(&mut self, rng: &mut dyn RngCore, even: bool, pair: bool) -> Option<u16> {
        let n = self.used.len();
        if self.free == 0 {
            return None;
        }
        let ok = |s: &Self, p: u16| {
            s.is_free(p)
                && (!even || p.is_multiple_of(2))
                && (!pair || p.checked_add(1).is_some_and(|q| s.is_free(q)))
        };
        for _ in 0..32 {
            let p = self.lo + (rng.next_u32() as usize % n) as u16;
            if ok(self, p) {
                return Some(p);
            }
        }
        let start = rng.next_u32() as usize % n;
        (0..n)
            .map(|i| self.lo + ((start + i) % n) as u16)
            .find(|p| ok(self, *p))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn user_and_total_limits_and_reservations() {
        let q = SharedQuota::new(2, 3, (40000, 40009));
        assert_eq!(q.acquire("alice"), Ok(()));
        assert_eq!(q.reserve("alice"), Ok(()));
        assert_eq!(q.acquire("alice"), Err(Exceeded::User));
        assert_eq!(q.reserve("alice"), Err(Exceeded::User));
        assert_eq!(q.acquire("bob"), Ok(()));
        assert_eq!(q.acquire("carol"), Ok(()));
        assert_eq!(q.acquire("dave"), Err(Exceeded::Total));
        assert_eq!(q.total(), 3, "a reservation is not an allocation");
        assert!(q.unreserve("alice"));
        q.release("alice");
        assert!(!q.unreserve("alice"), "nothing left for alice");
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn ports_replace_hold_redeem_and_sweep() {
        let q = SharedQuota::new(0, 0, (40000, 40003));
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = q.take_free_port(&mut rng, false, false).unwrap();
        assert_eq!(q.ports_free(), 3);
        // A busy port is given back only after its replacement is taken: never re-picked.
        for _ in 0..50 {
            let r = q.replace_port(Some(p), &mut rng, false).unwrap();
            assert_ne!(r, p);
            assert_eq!(q.ports_free(), 3, "one taken, one given back");
            p = r;
        }
        q.release_port(p);
        assert_eq!(q.ports_free(), 4);
        let now = Instant::now();
        assert_eq!(q.reserve("alice"), Ok(()));
        q.hold_port(7, 40001, now + Duration::from_secs(30), "alice");
        assert_eq!(q.ports_free(), 3);
        assert!(q.sweep(now), "the reservation is still live");
        assert_eq!(q.redeem(7), Some((40001, now + Duration::from_secs(30))));
        assert_eq!(q.redeem(7), None);
        assert!(!q.unreserve("alice"), "redeeming gave alice's unit back");
        assert_eq!(q.reserve("bob"), Ok(()));
        q.hold_port(8, 40002, now + Duration::from_secs(30), "bob");
        assert!(
            !q.sweep(now + Duration::from_secs(30)),
            "expired and dropped"
        );
        assert!(!q.unreserve("bob"), "expiry gave bob's unit back");
        assert_eq!(
            q.ports_free(),
            3,
            "40001 is held by the redeemer, 40002 is free again"
        );
    }

    #[test]
    fn rfc6062_connections_are_claimed_once_by_their_user() {
        let q = SharedQuota::new(0, 0, (40000, 40001));
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        q.conn_insert(1, "alice".into(), later);
        assert!(q.conn_pending(1));
        assert!(
            !q.conn_claim(1, "mallory", now),
            "another user's live one stays"
        );
        assert!(q.conn_pending(1));
        assert!(q.conn_claim(1, "alice", now));
        assert!(!q.conn_claim(1, "alice", now), "claimed once");
        q.conn_insert(2, "alice".into(), later);
        assert!(!q.conn_claim(2, "alice", later), "expired");
        assert!(!q.conn_pending(2), "and dropped");
        q.conn_insert(3, "alice".into(), later);
        q.sweep(later);
        assert!(!q.conn_pending(3));
    }

    #[test]
    fn owners_are_per_port() {
        let q = SharedQuota::new(0, 0, (40000, 40001));
        assert_eq!(q.owner(40000), None);
        q.set_owner(40000, Some(3));
        assert_eq!(q.owner(40000), Some(3));
        assert_eq!(q.owner(40001), None);
        q.set_owner(40000, None);
        assert_eq!(q.owner(40000), None);
    }
}
