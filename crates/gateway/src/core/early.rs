//! `early_offer` (docs/gateway.md, "Early offer"): for a call between two users of this
//! node, the offer goes to the callee at once, with no candidate; the answer is held
//! until both browsers' relay addresses are known (the answerer's from its answer and
//! trickle, the offerer's from its trickle), then the turn-server is asked — through
//! the shell, which does the HTTP ([`Core::take_permit_requests`]) and hands the answers
//! back ([`Core::permit_result`]) — to install, on each browser's allocation, a
//! permission for the other's relay IP. The answer goes when every permission is
//! confirmed, or, counted in `early_offer_fallbacks_total{reason}`, when one is refused,
//! when `early_offer_timeout` passes, or when a relay address is missing at
//! `candidate_wait` (or once the offerer ended gathering without one).
//!
//! Every wait is bounded (`candidate_wait`, then `early_offer_timeout`), and at most
//! `2 × MAX_RELAYS²` requests are queued per call.

use super::counters::EarlyFallback;
use super::{Core, ForwardKind, Timer};
use crate::sdp;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Relay addresses per browser the permissions are made for (Chromium has one per
/// TURN server and transport it reaches; a Mattermost deployment hands out one server).
const MAX_RELAYS: usize = 2;

/// One handle's part of an early-offer call.
#[derive(Debug, Default)]
pub(super) struct Early {
    /// This handle made the offer.
    offerer: bool,
    /// Offerer: its relay addresses from its trickle.
    relays: Vec<SocketAddr>,
    /// Offerer: it trickled end-of-candidates.
    gathered: bool,
    /// Answerer: where its held answer stands (settled: the entry is gone).
    wait: Wait,
}

/// Where an early-offer call's answer stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing asked yet.
    #[default]
    Idle,
    /// The answer could go, but the offerer's relay address is not known yet.
    Ready,
    /// Requests `seq` sent; `outstanding` not yet confirmed; given up at `until`.
    Requested {
        seq: u64,
        outstanding: usize,
        until: Instant,
    },
}

/// Which held answer a permission request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitId {
    /// The answerer's handle.
    pub handle: u64,
    /// The batch (a stale answer for an earlier call of the handle is ignored).
    pub seq: u64,
}

/// "On the allocation whose relayed address is `relay`, install a permission for
/// `peer`" (the turn-server's control endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitRequest {
    /// The answer waiting for it.
    pub id: PermitId,
    /// A browser's relayed address.
    pub relay: SocketAddr,
    /// The other browser's relay IP.
    pub peer: IpAddr,
}

/// The turn-server's answer to a [`PermitRequest`], as the shell maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitResult {
    /// Installed.
    Installed,
    /// No allocation of our turn-server(s) has that relayed address.
    NotOurRelay,
    /// Refused by the turn-server's peer policy.
    Denied,
    /// The allocation's permission table is full.
    Full,
    /// No usable answer (unreachable, refused, overloaded, timed out).
    Error,
}

impl Core {
    /// The permission requests queued since the last call, for the shell to send.
    pub fn take_permit_requests(&mut self) -> Vec<PermitRequest> {
        std::mem::take(&mut self.permit_requests)
    }

    /// `caller` offers to `callee` (both on this node) with `early_offer`: both handles
    /// take part, and the offer goes at once.
    pub(super) fn start_early(&mut self, caller: u64, callee: u64) {
        for hid in [caller, callee] {
            if let Some(h) = self.handles.get_mut(&hid) {
                h.early = true;
                self.early.insert(
                    hid,
                    Early {
                        offerer: hid == caller,
                        ..Early::default()
                    },
                );
            }
        }
        self.counters.early_offers += 1;
    }

    /// Drops the state of handles no longer in an early-offer call (the call ended
    /// before its answer settled); run with the timers.
    pub(super) fn sweep_early(&mut self) {
        let handles = &self.handles;
        self.early
            .retain(|hid, _| handles.get(hid).is_some_and(|h| h.early));
    }

    /// An offerer's trickled candidate (or, with `candidate` None, its end of
    /// candidates): a relay address is kept; if the answer waits only for it, the answer
    /// is looked at again.
    pub(super) fn early_candidate(&mut self, now: Instant, hid: u64, candidate: Option<&str>) {
        let Some(peer) = self
            .handles
            .get(&hid)
            .filter(|h| h.early)
            .and_then(|h| h.peer)
        else {
            return;
        };
        let Some(e) = self.early.get_mut(&hid) else {
            return;
        };
        match candidate {
            Some(c) => {
                let Some(a) =
                    sdp::candidate_addr(c).filter(|_| sdp::candidate_type(c) == Some("relay"))
                else {
                    return;
                };
                if e.relays.len() >= MAX_RELAYS || e.relays.contains(&a) {
                    return;
                }
                e.relays.push(a);
                if e.offerer {
                    // At once, ahead of the answer's batch: the offerer's allocation
                    // admits its own relay IP — the address every allocation of that
                    // turn-server sends from, so the answerer's too when it relays there
                    // (one relay IP per turn-server and family). A janus.js ≥ 0.5
                    // answerer gets this address by trickle and checks it as soon as its
                    // own relay candidate exists, before the batch could land; that first
                    // check is then not dropped. It admits nothing the offerer's own
                    // CreatePermission for an answerer on that turn-server would not.
                    // Its answer is not waited for (seq 0 is no batch).
                    self.permit_requests.push(PermitRequest {
                        id: PermitId {
                            handle: hid,
                            seq: 0,
                        },
                        relay: a,
                        peer: a.ip(),
                    });
                }
            }
            None => e.gathered = true,
        }
        if self.early.get(&peer).is_some_and(|e| e.wait == Wait::Ready) {
            self.flush_pending(now, peer);
        }
    }

    /// Called by `flush_pending` before the held SDP of `hid` goes: true while an
    /// early-offer answer must still wait (the permissions), false when it may go.
    pub(super) fn hold_answer(&mut self, now: Instant, hid: u64) -> bool {
        let timeout = self.cfg.early_offer_timeout;
        let wait = self.cfg.candidate_wait;
        let Some(h) = self.handles.get(&hid).filter(|h| h.early) else {
            return false;
        };
        let (Some(p), Some(peer)) = (h.pending.as_ref(), h.peer) else {
            return false;
        };
        if p.kind != ForwardKind::Accepted {
            return false;
        }
        // no entry: settled already
        let Some(e) = self.early.get(&hid) else {
            return false;
        };
        let candidate_deadline = p.since + wait;
        match e.wait {
            Wait::Requested { until, .. } => {
                if now < until {
                    return true;
                }
                self.early_settle(hid, peer, Some(EarlyFallback::Timeout));
                false
            }
            Wait::Idle | Wait::Ready => {
                let answerer = sdp::relay_addrs(&p.sdp, &h.cands, MAX_RELAYS);
                let (offerer, gathered) = self
                    .early
                    .get(&peer)
                    .map_or((Vec::new(), true), |o| (o.relays.clone(), o.gathered));
                if answerer.is_empty() || offerer.is_empty() {
                    // the answer could go now: wait (bounded) for the offerer's relay
                    // address, unless it will not come
                    let hopeless = answerer.is_empty() || (gathered && offerer.is_empty());
                    if now >= candidate_deadline || hopeless {
                        tracing::debug!(
                            handle = hid,
                            answerer = answerer.len(),
                            offerer = offerer.len(),
                            "early offer: no relay address to permit, answer goes as is"
                        );
                        self.early_settle(hid, peer, Some(EarlyFallback::NoRelayCandidate));
                        return false;
                    }
                    self.early_wait(hid, Wait::Ready, candidate_deadline);
                    return true;
                }
                self.permit_seq += 1;
                let id = PermitId {
                    handle: hid,
                    seq: self.permit_seq,
                };
                let mut reqs: Vec<PermitRequest> = Vec::new();
                for a in &answerer {
                    for o in &offerer {
                        for (relay, peer) in [(*a, o.ip()), (*o, a.ip())] {
                            let r = PermitRequest { id, relay, peer };
                            if !reqs.contains(&r) {
                                reqs.push(r);
                            }
                        }
                    }
                }
                tracing::debug!(
                    handle = hid,
                    requests = reqs.len(),
                    "early offer: asking for permissions"
                );
                let until = now + timeout;
                self.early_wait(
                    hid,
                    Wait::Requested {
                        seq: id.seq,
                        outstanding: reqs.len(),
                        until,
                    },
                    until,
                );
                self.permit_requests.extend(reqs);
                true
            }
        }
    }

    /// The turn-server's answer to one request of batch `id`.
    pub fn permit_result(&mut self, now: Instant, id: PermitId, result: PermitResult) {
        let Some(peer) = self
            .handles
            .get(&id.handle)
            .filter(|h| h.early)
            .and_then(|h| h.peer)
        else {
            return;
        };
        let Some(Wait::Requested {
            seq, outstanding, ..
        }) = self.early.get_mut(&id.handle).map(|e| &mut e.wait)
        else {
            return;
        };
        if *seq != id.seq {
            return;
        }
        let fallback = match result {
            PermitResult::Installed => {
                *outstanding = outstanding.saturating_sub(1);
                if *outstanding > 0 {
                    return;
                }
                None
            }
            PermitResult::NotOurRelay => Some(EarlyFallback::NotOurRelay),
            PermitResult::Denied => Some(EarlyFallback::Denied),
            PermitResult::Full => Some(EarlyFallback::Full),
            PermitResult::Error => Some(EarlyFallback::Error),
        };
        self.early_settle(id.handle, peer, fallback);
        self.flush_pending(now, id.handle);
    }

    /// The answer of `hid` (whose offerer is `peer`) goes: confirmed, or with
    /// `fallback` counted. Neither side needs its state any more.
    fn early_settle(&mut self, hid: u64, peer: u64, fallback: Option<EarlyFallback>) {
        self.early.remove(&hid);
        self.early.remove(&peer);
        match fallback {
            Some(f) => {
                tracing::info!(
                    handle = hid,
                    reason = f.label(),
                    "early offer: answer forwarded without the permissions"
                );
                self.counters.early_offer_fallbacks[f as usize] += 1;
            }
            None => tracing::debug!(handle = hid, "early offer: permissions installed"),
        }
    }

    /// The answer of `hid` waits in `state` until `until` at most.
    fn early_wait(&mut self, hid: u64, state: Wait, until: Instant) {
        if let Some(e) = self.early.get_mut(&hid) {
            e.wait = state;
        }
        if let Some(p) = self.handles.get_mut(&hid).and_then(|h| h.pending.as_mut()) {
            p.deadline = until;
        }
        self.arm(until, Timer::Pending(hid));
    }
}
