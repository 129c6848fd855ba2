//! Sessions and handles: caps, lifetimes, closed connections, long polls and timers.

use super::counters::{CallEnd, SessionLimit};
use super::{ConnId, Core, LongPollError, Output, Source, Timer};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Core {
    /// The cap one more session for `owner`/`token` would pass, if any.
    pub(super) fn over_session_cap(
        &self,
        owner: Source,
        token: Option<&str>,
    ) -> Option<SessionLimit> {
        let cap = self.cfg.max_sessions_per_token;
        if cap > 0
            && let Some(t) = token
            && self.per_token.get(t).copied().unwrap_or(0) >= cap
        {
            return Some(SessionLimit::Token);
        }
        let cap = self.cfg.max_sessions_per_connection;
        if cap > 0
            && let Source::Ws(c) = owner
            && self.per_conn.get(&c).copied().unwrap_or(0) >= cap
        {
            return Some(SessionLimit::Connection);
        }
        None
    }

    /// The 490 answer to a session refused by `limit`, counted.
    pub(super) fn refuse_session(&mut self, limit: SessionLimit, tx: &str) -> Value {
        self.counters.session_refused(limit);
        let reason = match limit {
            SessionLimit::Global => "Maximum number of sessions reached",
            SessionLimit::Token => "Maximum number of sessions for this token reached",
            SessionLimit::Connection => "Maximum number of sessions for this connection reached",
        };
        self.err(0, Some(tx), 490, reason)
    }

    /// Counts a session in (`add`) or out of the per-token and per-connection tallies.
    pub(super) fn count_session(&mut self, owner: Source, token: Option<&str>, add: bool) {
        fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K, add: bool) {
            if add {
                *m.entry(k).or_insert(0) += 1;
            } else if let Some(n) = m.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        if let Some(t) = token
            && (add || self.per_token.contains_key(t))
        {
            bump(&mut self.per_token, t.to_string(), add);
        }
        if let Source::Ws(c) = owner {
            bump(&mut self.per_conn, c, add);
        }
    }

    pub(super) fn destroy_session(&mut self, now: Instant, sid: u64, reason: CallEnd) {
        let Some(sess) = self.sessions.get(&sid) else {
            return;
        };
        let handles: Vec<u64> = sess.handles.iter().copied().collect();
        for hid in handles {
            self.detach_handle(now, hid, reason);
        }
        if let Some(s) = self.sessions.remove(&sid) {
            self.count_session(s.owner, s.token.as_deref(), false);
            self.outbox.push(Output::SessionClosed {
                owner: s.owner,
                session_id: sid,
            });
        }
    }

    pub(super) fn detach_handle(&mut self, now: Instant, hid: u64, reason: CallEnd) {
        self.teardown_call(now, hid, "Remote WebRTC hangup", reason, false);
        if let Some(h) = self.handles.remove(&hid) {
            if let Some(name) = &h.username {
                self.registry.unregister(name, hid);
            }
            if let Some(s) = self.sessions.get_mut(&h.session_id) {
                s.handles.remove(&hid);
            }
        }
    }

    /// Called by the shell when a WebSocket closed.
    pub fn connection_closed(&mut self, now: Instant, conn: ConnId) {
        let owned: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.owner == Source::Ws(conn))
            .map(|(id, _)| *id)
            .collect();
        for sid in owned {
            if self.cfg.reclaim_timeout.is_zero() {
                self.destroy_session(now, sid, CallEnd::Disconnect);
            } else if let Some(s) = self.sessions.get_mut(&sid) {
                let until = now + self.cfg.reclaim_timeout;
                s.orphaned_until = Some(until);
                self.arm(until, Timer::Orphan(sid));
            }
        }
    }

    /// Ends a session whose client stopped fetching its events (the shell's event queue
    /// for it is full): its call peer gets `hangup` as after a closed WebSocket.
    pub fn drop_unread_session(&mut self, now: Instant, session_id: u64) {
        self.destroy_session(now, session_id, CallEnd::Disconnect);
    }

    /// Keepalive from an HTTP long poll; checks credentials and the session.
    pub fn longpoll(
        &mut self,
        now: Instant,
        unix: u64,
        session_id: u64,
        token: Option<&str>,
        apisecret: Option<&str>,
    ) -> Result<(), LongPollError> {
        self.counters.request("longpoll");
        if !self.check_credentials(token, apisecret, unix) {
            return Err(LongPollError::Unauthorized);
        }
        let s = self
            .sessions
            .get_mut(&session_id)
            .ok_or(LongPollError::NoSession)?;
        s.last_activity = now;
        Ok(())
    }

    /// The earliest instant at which [`Core::handle_timeout`] has work to do. O(1).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let top = self.timers.peek().map(|Reverse((t, _))| *t);
        match (top, self.next_token_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs everything that is due at `now`: candidate deadlines, session timeouts,
    /// reclaim timeouts, token expiry. Costs O(log n) per deadline that falls due (plus
    /// the stale entries it skips), nothing per idle session or handle.
    pub fn handle_timeout(&mut self, now: Instant, unix: u64) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Pending(hid) => {
                    let due = self
                        .handles
                        .get(&hid)
                        .and_then(|h| h.pending.as_ref())
                        .is_some_and(|p| p.deadline <= now);
                    if due {
                        self.flush_pending(now, hid);
                    }
                }
                Timer::Session(sid) => {
                    let timeout = self.cfg.session_timeout;
                    let Some(s) = self.sessions.get(&sid) else {
                        continue;
                    };
                    if timeout.is_zero() {
                        continue;
                    }
                    let deadline = s.last_activity + timeout;
                    if deadline <= now {
                        self.emit(sid, json!({"janus": "timeout", "session_id": sid}));
                        self.destroy_session(now, sid, CallEnd::Timeout);
                    } else {
                        // active since: one entry per session, re-armed lazily
                        self.timers.push(Reverse((deadline, Timer::Session(sid))));
                    }
                }
                Timer::Orphan(sid) => {
                    let due = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.orphaned_until)
                        .is_some_and(|o| o <= now);
                    if due {
                        self.destroy_session(now, sid, CallEnd::Disconnect);
                    }
                }
            }
        }
        self.test_tokens.retain(|_, e| *e > unix);
        if !self.cfg.token_max_idle.is_zero() {
            match self.next_token_sweep {
                None => self.next_token_sweep = Some(now + Duration::from_secs(3600)),
                Some(t) if t <= now => {
                    self.tokens.expire(unix, self.cfg.token_max_idle.as_secs());
                    // also persists the last-seen times refreshed by token use
                    self.tokens_dirty = true;
                    self.next_token_sweep = Some(now + Duration::from_secs(3600));
                }
                Some(_) => {}
            }
        }
    }
}
