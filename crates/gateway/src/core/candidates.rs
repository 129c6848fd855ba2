//! Trickled candidates: buffered per handle and merged into the held SDP (`crate::sdp`)
//! before it is handed to the peer, or forwarded once the SDP has gone.

use super::counters::CandidateRefusal;
use super::janus::{Jsep, JsepType};
use super::{Core, ForwardKind, Pending, Timer};
use crate::sdp::{self, Candidate, Readiness};
use serde_json::{Value, json};
use std::time::Instant;

impl Core {
    /// Holds an SDP from `hid` until its candidates are complete or the deadline passes
    /// (first SDP of a call), or forwards it right away (renegotiation).
    pub(super) fn queue_forward(&mut self, now: Instant, hid: u64, kind: ForwardKind, jsep: Jsep) {
        let wait = self.cfg.candidate_wait;
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        if !h.forwarded {
            // Candidates (and their `completed`) left over from an earlier
            // PeerConnection of this handle — e.g. trickled after a busy reply — carry
            // another ufrag: drop them, and do not trust a `completed` that no current
            // candidate backs.
            let ufrags = sdp::sdp_ufrags(&jsep.sdp);
            let before = h.cands.len();
            h.cands
                .retain(|c| sdp::candidate_ufrag(&c.candidate).is_none_or(|u| ufrags.contains(&u)));
            if h.completed && h.cands.is_empty() {
                h.completed = false;
            }
            if before != h.cands.len() {
                tracing::debug!(
                    handle = hid,
                    dropped = before - h.cands.len(),
                    "dropped stale candidates"
                );
            }
        }
        // `early_offer`: a call's offer goes at once, without candidates (early.rs)
        let early = h.early && kind == ForwardKind::IncomingCall;
        let immediate = h.forwarded || h.completed || h.jsep_complete || wait.is_zero() || early;
        tracing::debug!(
            handle = hid,
            ?kind,
            buffered = h.cands.len(),
            completed = h.completed,
            immediate,
            "SDP received"
        );
        h.jsep_complete = false;
        h.pending = Some(Box::new(Pending {
            kind,
            jsep_type: jsep.kind,
            sdp: jsep.sdp,
            e2ee: jsep.e2ee,
            since: now,
            deadline: now + wait,
        }));
        if immediate {
            self.flush_pending(now, hid);
        } else {
            self.arm(now + wait, Timer::Pending(hid));
            // candidates trickled before their SDP (HTTP requests can overtake it)
            self.forward_early(now, hid);
        }
    }

    /// Forwards the held SDP of `hid` before its sender finished gathering when the
    /// candidates it has can already connect the call (`sdp::readiness`): at once when
    /// nothing better can follow, else after `candidate_grace`. Old janus.js never sees
    /// the candidates that come later (server `trickle`), so this never forwards an SDP
    /// without a relay candidate for every transport.
    fn forward_early(&mut self, now: Instant, hid: u64) {
        let grace = self.cfg.candidate_grace;
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        let Some(p) = h.pending.as_mut().filter(|_| !h.forwarded) else {
            return;
        };
        let ready = sdp::readiness(&p.sdp, &h.cands);
        let at = match ready {
            Readiness::Wait => return,
            Readiness::Ready => now,
            Readiness::Usable => now + grace,
        };
        if at >= p.deadline {
            return;
        }
        tracing::debug!(
            handle = hid,
            ?ready,
            grace_ms =
                u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
            "candidates can connect"
        );
        p.deadline = at;
        if at <= now {
            self.flush_pending(now, hid);
        } else {
            self.arm(at, Timer::Pending(hid));
        }
    }

    pub(super) fn flush_pending(&mut self, now: Instant, hid: u64) {
        if self.hold_answer(now, hid) {
            return;
        }
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        let Some(p) = h.pending.take() else {
            return;
        };
        // a peer on another node gets the SDP through the cluster (`forward_remote`)
        let remote = h.remote.is_some();
        let peer = h.peer;
        if peer.is_none() && !remote {
            return;
        }
        if !h.forwarded {
            let ufrags = sdp::sdp_ufrags(&p.sdp);
            h.cands
                .retain(|c| sdp::candidate_ufrag(&c.candidate).is_none_or(|u| ufrags.contains(&u)));
        }
        let merged = if h.forwarded && h.cands.is_empty() {
            p.sdp
        } else {
            sdp::merge_candidates(&p.sdp, &h.cands, h.completed)
        };
        let waited_ms =
            u64::try_from(now.saturating_duration_since(p.since).as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            handle = hid,
            peer = ?peer,
            remote,
            kind = ?p.kind,
            candidates = h.cands.len(),
            completed = h.completed,
            waited_ms,
            "forwarding SDP with merged candidates"
        );
        h.cands.clear();
        h.forwarded = true;
        let username = h.username.clone();
        self.counters.candidate_wait_ms = self.counters.candidate_wait_ms.saturating_add(waited_ms);
        let mut jsep = json!({"type": p.jsep_type.as_str(), "sdp": merged});
        if p.e2ee {
            jsep["e2ee"] = true.into();
        }
        let result = match p.kind {
            ForwardKind::IncomingCall => json!({"event": "incomingcall", "username": username}),
            ForwardKind::Accepted => json!({"event": "accepted", "username": username}),
            ForwardKind::Update => json!({"event": "update"}),
        };
        let Some(peer) = peer else {
            self.forward_remote(hid, p.kind, username, jsep);
            return;
        };
        if let Some(ph) = self.handles.get_mut(&peer) {
            // the peer's browser now negotiates a PeerConnection for this call
            ph.has_pc = true;
            if p.jsep_type == JsepType::Offer {
                ph.got_offer = true;
            }
        }
        self.plugin_event(
            peer,
            None,
            json!({"videocall": "event", "result": result}),
            Some(jsep),
        );
    }

    /// Buffers (or forwards) trickled candidates; a candidate larger than
    /// `max_candidate_bytes`, or one that would take the handle's buffer past
    /// `max_candidate_bytes_per_handle`, refuses the request (the reason of a 467).
    pub(super) fn trickle(
        &mut self,
        now: Instant,
        hid: u64,
        items: &[Value],
    ) -> Result<(), String> {
        let max = self.cfg.max_candidates;
        let max_bytes = self.cfg.max_candidate_bytes;
        if items
            .iter()
            .any(|i| serde_json::to_string(i).map_or(usize::MAX, |t| t.len()) > max_bytes)
        {
            self.counters.candidate_refused(CandidateRefusal::Size, 1);
            return Err(format!(
                "Invalid element type (candidate larger than {max_bytes} bytes)"
            ));
        }
        let max_total = self.cfg.max_candidate_bytes_per_handle;
        let mut over_total = false;
        let mut over_count = 0u64;
        let mut to_peer: Vec<Value> = Vec::new();
        let mut flush = false;
        // `early_offer`: what the sender's trickle tells about its relay addresses
        let mut early_seen: Vec<Option<String>> = Vec::new();
        let peer;
        let remote;
        {
            let Some(h) = self.handles.get_mut(&hid) else {
                return Ok(());
            };
            let mut buffered: usize = h.cands.iter().map(Candidate::bytes).sum();
            peer = h.peer;
            remote = h.remote.is_some();
            for item in items {
                let Some(obj) = item.as_object() else {
                    continue;
                };
                let completed = obj.get("completed").is_some()
                    || obj
                        .get("candidate")
                        .and_then(Value::as_str)
                        .is_some_and(str::is_empty);
                if completed {
                    tracing::debug!(handle = hid, forwarded = h.forwarded, "end of candidates");
                    if h.early {
                        early_seen.push(None);
                    }
                    if h.forwarded {
                        to_peer.push(json!({"completed": true}));
                    } else {
                        h.completed = true;
                        // Over HTTP every trickle is its own request, so `completed` can
                        // overtake the candidates it closes. A browser that finished
                        // gathering has at least one candidate: with none buffered, keep
                        // holding the SDP until one arrives (or the deadline passes).
                        flush = h.pending.is_some() && !h.cands.is_empty();
                    }
                    continue;
                }
                let Some(c) = obj.get("candidate").and_then(Value::as_str) else {
                    continue;
                };
                tracing::debug!(
                    handle = hid,
                    typ = sdp::candidate_type(c).unwrap_or("?"),
                    forwarded = h.forwarded,
                    "candidate"
                );
                if h.early && sdp::candidate_type(c) == Some("relay") {
                    early_seen.push(Some(c.to_string()));
                }
                if h.forwarded {
                    to_peer.push(item.clone());
                } else if h.cands.len() >= max {
                    over_count += 1;
                } else {
                    let cand = Candidate {
                        candidate: c.to_string(),
                        sdp_mid: obj
                            .get("sdpMid")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        sdp_mline_index: obj.get("sdpMLineIndex").and_then(Value::as_u64),
                    };
                    if buffered + cand.bytes() > max_total {
                        over_total = true;
                        break;
                    }
                    buffered += cand.bytes();
                    h.cands.push(cand);
                    // `completed` came first (reordered HTTP requests): this is the
                    // candidate the held SDP was waiting for.
                    flush |= h.completed && h.pending.is_some();
                }
            }
        }
        if over_count > 0 {
            // beyond max_candidates a browser is not gathering any more: ignored, counted
            self.counters
                .candidate_refused(CandidateRefusal::Count, over_count);
        }
        if flush {
            self.flush_pending(now, hid);
        } else {
            self.forward_early(now, hid);
        }
        for c in early_seen {
            self.early_candidate(now, hid, c.as_deref());
        }
        if remote && !to_peer.is_empty() {
            self.send_to_remote(
                hid,
                super::cluster::NodeBody::Trickle {
                    candidates: to_peer,
                },
            );
        } else if let Some(p) = peer {
            for c in to_peer {
                self.emit_to_handle(p, json!({"janus": "trickle", "candidate": c}));
            }
        }
        if over_total {
            self.counters
                .candidate_refused(CandidateRefusal::HandleBytes, 1);
            return Err(format!(
                "Invalid element type (candidates of this handle exceed {max_total} bytes)"
            ));
        }
        Ok(())
    }
}
