//! Sessions and handles: caps, lifetimes, closed connections, long polls and timers.

use super::counters::{CallEnd, SessionLimit};
use super::janus::{Envelope, JanusError, Refusal, SessionRequest, Trickle, UNAUTHORIZED};
use super::videocall::hangup_result;
use super::{ConnId, Core, Handle, LongPollError, Output, Session, Source, Timer, VIDEOCALL};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
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
        self.err(0, Some(tx), JanusError::Unknown, reason)
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
            let name = h.username.as_ref().or(h.claim.as_ref().map(|c| &c.0));
            if let Some(name) = name {
                self.registry.unregister(name, hid);
                self.cluster_push(super::ClusterOut::Release {
                    username: name.clone(),
                    handle: hid,
                });
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
        if !self.early.is_empty() {
            self.sweep_early();
        }
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
                Timer::Ring(hid) => self.ring_timeout(now, hid),
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
                    self.sweep_tokens(unix);
                    self.next_token_sweep = Some(now + Duration::from_secs(3600));
                }
                Some(_) => {}
            }
        }
    }

    /// `create`: credentials (403), the caps (490), a wanted id that is taken (468).
    pub(super) fn create_session(
        &mut self,
        now: Instant,
        unix: u64,
        source: Source,
        env: &Envelope<'_>,
        wanted: u64,
    ) -> Value {
        let tx = env.tx;
        if !self.check_secret(env, unix) {
            return self.err(0, Some(tx), JanusError::Unauthorized, UNAUTHORIZED);
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            return self.refuse_session(SessionLimit::Global, tx);
        }
        let token = self.session_token(env);
        if let Some(limit) = self.over_session_cap(source, token.as_deref()) {
            return self.refuse_session(limit, tx);
        }
        let id = if wanted > 0 {
            if self.sessions.contains_key(&wanted) || self.handles.contains_key(&wanted) {
                return self.err(
                    wanted,
                    Some(tx),
                    JanusError::SessionConflict,
                    "Session ID already in use",
                );
            }
            wanted
        } else {
            self.new_session_id()
        };
        self.sessions.insert(
            id,
            Session {
                owner: source,
                last_activity: now,
                handles: BTreeSet::new(),
                orphaned_until: None,
                token: token.clone(),
            },
        );
        self.count_session(source, token.as_deref(), true);
        if !self.cfg.session_timeout.is_zero() {
            self.arm(now + self.cfg.session_timeout, Timer::Session(id));
        }
        json!({"janus": "success", "transaction": tx, "data": {"id": id}})
    }

    /// Runs a request to an existing session (and handle).
    pub(super) fn session_request(
        &mut self,
        now: Instant,
        unix: u64,
        source: Source,
        env: &Envelope<'_>,
        request: SessionRequest<'_>,
    ) -> Value {
        let sid = env.session_id;
        let tx = env.tx;
        let ack = json!({"janus": "ack", "session_id": sid, "transaction": tx});
        let success = json!({"janus": "success", "session_id": sid, "transaction": tx});
        match request {
            SessionRequest::KeepAlive => ack,
            SessionRequest::Attach { plugin } => match self.attach(unix, env, plugin) {
                Ok(hid) => {
                    json!({"janus": "success", "session_id": sid, "transaction": tx, "data": {"id": hid}})
                }
                Err(r) => self.err(sid, Some(tx), r.code, &r.reason),
            },
            SessionRequest::Destroy => {
                self.destroy_session(now, sid, CallEnd::Hangup);
                success
            }
            SessionRequest::Detach(hid) => {
                self.detach_handle(now, hid, CallEnd::Detached);
                self.emit(
                    sid,
                    json!({"janus": "detached", "session_id": sid, "sender": hid}),
                );
                success
            }
            SessionRequest::Hangup(hid) => {
                self.janus_hangup(now, hid);
                success
            }
            SessionRequest::Claim => match self.claim(sid, source) {
                Ok(()) => success,
                Err(limit) => self.refuse_session(limit, tx),
            },
            SessionRequest::Message { handle, body, jsep } => {
                self.message(now, env, handle, &body, jsep)
            }
            SessionRequest::Trickle(hid, items) => match items {
                Trickle::Candidates(list) => match self.trickle(now, hid, &list) {
                    Ok(()) => ack,
                    Err(reason) => self.err(sid, Some(tx), JanusError::InvalidElementType, &reason),
                },
                Trickle::Ignored => ack,
            },
        }
    }

    /// A videocall handle in session `env.session_id`: the plugin must be ours (460), a
    /// stored token must allow it (405), the session must have room (461).
    fn attach(&mut self, unix: u64, env: &Envelope<'_>, plugin: &str) -> Result<u64, Refusal> {
        let sid = env.session_id;
        if plugin != VIDEOCALL {
            return Err(Refusal::new(
                JanusError::PluginNotFound,
                format!("No such plugin '{plugin}'"),
            ));
        }
        if self.cfg.token_auth
            && let Some(t) = env.token
            && let Some(list) = self.tokens.check(t, unix)
            && !list.iter().any(|p| p == VIDEOCALL)
        {
            return Err(Refusal::new(
                JanusError::UnauthorizedPlugin,
                format!("Provided token can't access plugin '{plugin}'"),
            ));
        }
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.handles.len() >= self.cfg.max_handles_per_session)
        {
            return Err(Refusal::new(
                JanusError::PluginAttach,
                "Couldn't attach to plugin: error 'too many handles in this session'",
            ));
        }
        let hid = self.new_id();
        self.handles.insert(hid, Handle::new(sid));
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.handles.insert(hid);
        }
        Ok(hid)
    }

    /// `claim`: the session's events go to `source` from now on (a WebSocket that takes
    /// a session over must have room for it).
    fn claim(&mut self, sid: u64, source: Source) -> Result<(), SessionLimit> {
        let old = self.sessions.get(&sid).map(|s| s.owner);
        if let Some(old) = old
            && old != source
        {
            if let Some(limit) = self.over_session_cap(source, None) {
                return Err(limit);
            }
            self.count_session(old, None, false);
            self.count_session(source, None, true);
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.owner = source;
            s.orphaned_until = None;
        }
        Ok(())
    }

    /// The Janus API `hangup` of a handle's PeerConnection: ends its call; if the browser
    /// held a PeerConnection, the core `hangup` and, with a peer, the "Remote WebRTC
    /// hangup" Janus reports when it closes the peer's PeerConnection too.
    fn janus_hangup(&mut self, now: Instant, hid: u64) {
        let had_pc = self.handles.get(&hid).is_some_and(|h| h.has_pc);
        let peer = self.teardown_call(now, hid, "Remote WebRTC hangup", CallEnd::Hangup, false);
        if had_pc {
            self.core_hangup(hid, "Janus API");
            if let Some(peer_name) = peer {
                self.plugin_result(
                    hid,
                    None,
                    hangup_result(peer_name.as_deref(), "Remote WebRTC hangup"),
                );
            }
        }
    }
}
