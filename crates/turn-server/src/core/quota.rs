//! Allocation quotas and the relay-port pool shared by every worker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Instant;

use rand::RngCore;

use super::stats::QuotaKind;

/// Allocation limits shared by every worker (touched only on allocate/free, never per packet).
///
/// It also holds the relay-port pool, so EVEN-PORT reservations work whichever worker the
/// second Allocate reaches.
#[derive(Debug)]
pub struct SharedQuota {
    pub(super) user_limit: u32,
    pub(super) total_limit: u32,
    pub(super) total: AtomicU32,
    pub(super) per_user: Mutex<HashMap<String, u32>>,
    pub(super) ports: Mutex<PortPool>,
    /// RFC 6062 peer connections waiting for ConnectionBind: id → (username, deadline).
    /// Shared because the data connection may reach another worker.
    pub(super) tcp_conns: Mutex<HashMap<u32, (String, Instant)>>,
    /// Owner of each open UDP relay port: worker index + 1, 0 = none. Lock-free (one
    /// relaxed load per relay-to-relay packet); written on allocate/free only. A port is in
    /// the pool at most once, so the port alone names the relayed address.
    pub(super) owners: Box<[AtomicU8]>,
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

    /// The worker that owns UDP relay port `port`, if any.
    pub(super) fn owner(&self, port: u16) -> Option<usize> {
        let v = self.owners.get(usize::from(port))?.load(Ordering::Relaxed);
        (v != 0).then(|| usize::from(v - 1))
    }

    pub(super) fn set_owner(&self, port: u16, worker: Option<usize>) {
        let v = worker.map_or(0, |w| u8::try_from(w + 1).unwrap_or(0));
        if let Some(o) = self.owners.get(usize::from(port)) {
            o.store(v, Ordering::Relaxed);
        }
    }

    pub(super) fn tcp_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (String, Instant)>> {
        self.tcp_conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn ports(&self) -> std::sync::MutexGuard<'_, PortPool> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free relay ports.
    pub fn ports_free(&self) -> usize {
        self.ports().free
    }

    pub(super) fn acquire(&self, user: &str) -> Result<(), QuotaKind> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(QuotaKind::User);
        }
        if self.total_limit != 0 && self.total.load(Ordering::Relaxed) >= self.total_limit {
            return Err(QuotaKind::Total);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    pub(super) fn release(&self, user: &str) {
        if self.unreserve(user) {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts an EVEN-PORT reservation (the held second port) against `user`'s quota, like
    /// an allocation; not against `total_limit`, which counts allocations.
    pub(super) fn reserve(&self, user: &str) -> Result<(), QuotaKind> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.get(user).copied().unwrap_or(0);
        if self.user_limit != 0 && n >= self.user_limit {
            return Err(QuotaKind::User);
        }
        map.insert(user.to_owned(), n + 1);
        Ok(())
    }

    /// Gives back one unit of `user`'s quota (a reservation); whether there was one.
    pub(super) fn unreserve(&self, user: &str) -> bool {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = map.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(user);
        }
        true
    }

    /// Allocations across all workers.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// What `user_quota` counts allocations under: the user part of a TURN REST username
/// (`"<expiry>:<user>"` → `user`), else the whole name (static users). Every credential
/// Mattermost's Calls plugin or the gateway mints carries a new expiry, so counting whole
/// names would give each fetch its own quota instead of each user.
pub(super) fn quota_key(username: &str, rest_expiry: Option<u64>) -> &str {
    match rest_expiry {
        Some(_) => username.split_once(':').map_or(username, |(_, user)| user),
        None => username,
    }
}

/// Relay-port pool of one shard (bitset, random probing).
#[derive(Debug)]
pub(super) struct PortPool {
    pub(super) lo: u16,
    pub(super) used: Vec<bool>,
    pub(super) free: usize,
    /// Reserved by RESERVATION-TOKEN: token → (port, expiry, quota key of the user who
    /// holds it: a reservation counts against `user_quota` until redeemed or expired).
    pub(super) reserved: HashMap<u64, (u16, Instant, String)>,
}

impl PortPool {
    pub(super) fn new(lo: u16, hi: u16) -> Self {
        let n = usize::from(hi - lo) + 1;
        Self {
            lo,
            used: vec![false; n],
            free: n,
            reserved: HashMap::new(),
        }
    }
    pub(super) fn is_free(&self, p: u16) -> bool {
        p.checked_sub(self.lo)
            .and_then(|i| self.used.get(usize::from(i)))
            .is_some_and(|u| !u)
    }
    pub(super) fn take(&mut self, p: u16) {
        if let Some(u) = p
            .checked_sub(self.lo)
            .and_then(|i| self.used.get_mut(usize::from(i)))
            && !*u
        {
            *u = true;
            self.free -= 1;
        }
    }
    pub(super) fn release(&mut self, p: u16) {
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
    pub(super) fn pick(&mut self, rng: &mut impl RngCore, even: bool, pair: bool) -> Option<u16> {
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
