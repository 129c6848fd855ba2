//! The interface to the state every worker shares — allocation quotas, the relay-port
//! pool, RFC 6062 connections waiting for their ConnectionBind, relay-port owners. The
//! state itself lives in the shell (`crate::quota::SharedQuota`, locks and maps); the core
//! only calls [`QuotaLedger`], on Allocate, deallocation, its timer sweep and RFC 6062
//! set-up. The one call on the packet path, [`QuotaLedger::owner`], must not lock.

use std::time::Instant;

use rand::RngCore;

/// Which allocation limit a request is over.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Exceeded {
    /// `user_quota`: the user's allocations (and held EVEN-PORT reservations).
    User,
    /// `total_quota`: allocations across all workers.
    Total,
}

/// What a core asks of the state shared by all workers. Every method is atomic with
/// respect to the other workers.
pub trait QuotaLedger: Send + Sync {
    /// Counts one allocation of `user` (the user part of a REST username), unless over a limit.
    fn acquire(&self, user: &str) -> Result<(), Exceeded>;
    /// Gives back one allocation of `user`.
    fn release(&self, user: &str);
    /// Counts an EVEN-PORT reservation (the held second port) against `user`'s quota,
    /// like an allocation.
    fn reserve(&self, user: &str) -> Result<(), Exceeded>;
    /// Gives back one reservation unit of `user`; whether there was one.
    fn unreserve(&self, user: &str) -> bool;

    /// Takes a random free relay port (`even`: an even one; `pair`: port+1 free too).
    fn take_free_port(&self, rng: &mut dyn RngCore, even: bool, pair: bool) -> Option<u16>;
    /// Takes another free port for a relay whose bind failed and only then gives `busy`
    /// back, so the pick cannot return it.
    fn replace_port(&self, busy: Option<u16>, rng: &mut dyn RngCore, even: bool) -> Option<u16>;
    /// Gives a relay port back to the pool.
    fn release_port(&self, port: u16);
    /// Free relay ports.
    fn ports_free(&self) -> usize;
    /// Holds `port` for a RESERVATION-TOKEN `token` until `expires`, counted against
    /// `holder` (already [`reserve`](Self::reserve)d).
    fn hold_port(&self, token: u64, port: u16, expires: Instant, holder: &str);
    /// Takes the reservation `token` (its holder's unit goes back): `(port, expiry)`.
    /// An expired one's port is the caller's to release.
    fn redeem(&self, token: u64) -> Option<(u16, Instant)>;
    /// Drops expired reservations (ports and units back) and RFC 6062 connections past
    /// their deadline; whether reservations remain.
    fn sweep(&self, now: Instant) -> bool;

    /// The worker that owns UDP relay port `port`, if any. On the packet path (relay to
    /// relay): lock-free.
    fn owner(&self, port: u16) -> Option<usize>;
    /// Records (or clears) the owner of a UDP relay port.
    fn set_owner(&self, port: u16, worker: Option<usize>);

    /// Whether an RFC 6062 connection `id` waits for its ConnectionBind.
    fn conn_pending(&self, id: u32) -> bool;
    /// A peer connection `id` of `user` waits for ConnectionBind until `deadline`.
    fn conn_insert(&self, id: u32, user: String, deadline: Instant);
    /// ConnectionBind of `id` by `user`: takes it when live and `user`'s; a live one of
    /// another user stays, an expired one is dropped.
    fn conn_claim(&self, id: u32, user: &str, now: Instant) -> bool;
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
