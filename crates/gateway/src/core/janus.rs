//! The Janus API: requests parsed and dispatched, error replies, `server_info`.

use super::counters::{CallEnd, SessionLimit};
use super::videocall::hangup_result;
use super::{Core, Handle, JANUS_VERSION, Session, Source, Timer, VIDEOCALL};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Instant;

pub(super) const UNAUTHORIZED: &str = "Unauthorized request (wrong or missing secret/token)";

/// Parsed addressing of a request.
pub(super) struct Req<'a> {
    pub(super) root: &'a Map<String, Value>,
    pub(super) verb: String,
    pub(super) tx: &'a str,
    pub(super) session_id: u64,
}

/// A mandatory string field of a Janus API request (or, with `jsep`, of its `jsep`
/// object), or the error code and reason Janus answers: 456 when it is missing,
/// 467 when it is not a string.
pub(super) fn janus_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    jsep: bool,
) -> Result<&'a str, (u16, String)> {
    let (missing, invalid) = if jsep {
        (
            "JSEP error: missing mandatory element",
            "JSEP error: invalid element type",
        )
    } else {
        ("Missing mandatory element", "Invalid element type")
    };
    match obj.get(key) {
        None => Err((456, format!("{missing} ({key})"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err((467, format!("{invalid} ({key} should be a string)"))),
    }
}

/// Janus-style error reply.
pub fn error_reply(session_id: u64, tx: Option<&str>, code: u16, reason: &str) -> Value {
    let mut m = Map::new();
    m.insert("janus".into(), "error".into());
    if session_id != 0 {
        m.insert("session_id".into(), session_id.into());
    }
    if let Some(t) = tx {
        m.insert("transaction".into(), t.into());
    }
    m.insert("error".into(), json!({"code": code, "reason": reason}));
    Value::Object(m)
}

impl Core {
    /// Handles one Janus API request given as text (WebSocket frame).
    pub fn handle_text(&mut self, now: Instant, unix: u64, source: Source, text: &str) -> Value {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.handle_value(now, unix, source, v),
            Err(e) => {
                self.counters.request("other");
                self.err(
                    0,
                    None,
                    454,
                    &format!(
                        "Invalid Janus API request - <string>({},{}): {}",
                        e.line(),
                        e.column(),
                        e
                    ),
                )
            }
        }
    }

    /// Handles one parsed Janus API request.
    pub fn handle_value(&mut self, now: Instant, unix: u64, source: Source, v: Value) -> Value {
        let empty = Map::new();
        let root = v.as_object().unwrap_or(&empty);
        let (mut session_id, mut bad_session) = (0u64, false);
        match root.get("session_id") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => session_id = x,
                None => bad_session = n.is_i64(),
            },
            Some(_) => {}
        }
        let (mut handle_id, mut handle_given) = (0u64, false);
        match root.get("handle_id") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                handle_given = true;
                handle_id = n.as_u64().unwrap_or(0);
            }
            Some(_) => {}
        }
        let tx_and_verb = janus_str(root, "transaction", false)
            .and_then(|tx| Ok((tx, janus_str(root, "janus", false)?.to_ascii_lowercase())));
        let (tx, verb) = match tx_and_verb {
            Ok(tv) => tv,
            Err((code, reason)) => {
                self.counters.request("other");
                return self.err(session_id, None, code, &reason);
            }
        };
        self.counters.request(&verb);
        let req = Req {
            root,
            verb,
            tx,
            session_id,
        };
        // like Janus: a zero handle_id does not leave the root level
        if session_id == 0 && handle_id == 0 && !bad_session {
            return self.root_request(now, unix, source, &req);
        }
        if session_id == 0 || bad_session {
            return self.err(session_id, Some(tx), 458, "Session not found");
        }
        if handle_given && handle_id < 1 {
            return self.err(session_id, Some(tx), 459, "Handle not found");
        }
        if !self.check_secret(&req, unix) {
            return self.err(session_id, Some(tx), 403, UNAUTHORIZED);
        }
        let Some(sess) = self.sessions.get_mut(&session_id) else {
            return self.err(
                session_id,
                Some(tx),
                458,
                &format!("No such session {session_id}"),
            );
        };
        sess.last_activity = now;
        let handle = if handle_id > 0 {
            if !sess.handles.contains(&handle_id) {
                return self.err(
                    session_id,
                    Some(tx),
                    459,
                    &format!("No such handle {handle_id} in session {session_id}"),
                );
            }
            Some(handle_id)
        } else {
            None
        };
        self.session_request(now, unix, source, &req, handle)
    }

    pub(super) fn server_info(&self, tx: &str) -> Value {
        json!({
            "janus": "server_info",
            "transaction": tx,
            "name": "callrelay gateway (Janus API compatible)",
            "version": JANUS_VERSION,
            "version_string": "1.1.2",
            "author": "callrelay",
            "commit-hash": "not-janus",
            "compile-time": "",
            "callrelay-version": env!("CARGO_PKG_VERSION"),
            "log-to-stdout": true,
            "log-to-file": false,
            "data_channels": true,
            "accepting-new-sessions": true,
            "session-timeout": self.cfg.session_timeout.as_secs(),
            "reclaim-session-timeout": self.cfg.reclaim_timeout.as_secs(),
            "candidates-timeout": 45,
            "server-name": "callrelay",
            "local-ip": "0.0.0.0",
            "ipv6": false,
            "ice-lite": false,
            "ice-tcp": false,
            "full-trickle": false,
            "mdns-enabled": false,
            "api_secret": self.cfg.api_secret.is_some(),
            "auth_token": self.cfg.token_auth,
            "event_handlers": false,
            "opaqueid_in_api": false,
            "dependencies": {},
            "transports": {
                "janus.transport.http": {"name": "JANUS REST (HTTP/HTTPS) transport plugin", "author": "callrelay", "description": "HTTP REST and long poll", "version_string": "0.0.2", "version": 2},
                "janus.transport.websockets": {"name": "JANUS WebSockets transport plugin", "author": "callrelay", "description": "WebSocket janus-protocol", "version_string": "0.0.1", "version": 1}
            },
            "events": {},
            "loggers": {},
            "plugins": {
                VIDEOCALL: {
                    "name": "JANUS VideoCall plugin",
                    "author": "callrelay",
                    "description": "One-to-one calls; SDP forwarded between the browsers with their ICE candidates merged in.",
                    "version_string": "0.0.6",
                    "version": 6
                }
            }
        })
    }

    pub(super) fn root_request(
        &mut self,
        now: Instant,
        unix: u64,
        source: Source,
        req: &Req<'_>,
    ) -> Value {
        match req.verb.as_str() {
            "info" => self.server_info(req.tx),
            "ping" => json!({"janus": "pong", "transaction": req.tx}),
            "create" => {
                if !self.check_secret(req, unix) {
                    return self.err(0, Some(req.tx), 403, UNAUTHORIZED);
                }
                let wanted = req.root.get("id").and_then(Value::as_u64).unwrap_or(0);
                if self.sessions.len() >= self.cfg.max_sessions {
                    return self.refuse_session(SessionLimit::Global, req.tx);
                }
                let token = self.session_token(req);
                if let Some(limit) = self.over_session_cap(source, token.as_deref()) {
                    return self.refuse_session(limit, req.tx);
                }
                let id = if wanted > 0 {
                    if self.sessions.contains_key(&wanted) || self.handles.contains_key(&wanted) {
                        return self.err(wanted, Some(req.tx), 468, "Session ID already in use");
                    }
                    wanted
                } else {
                    self.new_id()
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
                json!({"janus": "success", "transaction": req.tx, "data": {"id": id}})
            }
            v => self.err(
                0,
                Some(req.tx),
                457,
                &format!("Unhandled request '{v}' at this path"),
            ),
        }
    }

    pub(super) fn wrong_path(&mut self, req: &Req<'_>) -> Value {
        self.err(
            req.session_id,
            Some(req.tx),
            457,
            &format!("Unhandled request '{}' at this path", req.verb),
        )
    }

    pub(super) fn session_request(
        &mut self,
        now: Instant,
        unix: u64,
        source: Source,
        req: &Req<'_>,
        handle: Option<u64>,
    ) -> Value {
        let sid = req.session_id;
        let tx = req.tx;
        let ack = json!({"janus": "ack", "session_id": sid, "transaction": tx});
        let success = json!({"janus": "success", "session_id": sid, "transaction": tx});
        match req.verb.as_str() {
            "keepalive" => ack,
            "attach" => {
                if handle.is_some() {
                    return self.wrong_path(req);
                }
                let plugin = match janus_str(req.root, "plugin", false) {
                    Ok(p) => p.to_string(),
                    Err((code, reason)) => return self.err(sid, Some(tx), code, &reason),
                };
                if plugin != VIDEOCALL {
                    return self.err(sid, Some(tx), 460, &format!("No such plugin '{plugin}'"));
                }
                if self.cfg.token_auth
                    && let Some(t) = req.root.get("token").and_then(Value::as_str)
                {
                    let allowed = self.tokens.check(t, unix);
                    if let Some(list) = allowed
                        && !list.iter().any(|p| p == VIDEOCALL)
                    {
                        return self.err(
                            sid,
                            Some(tx),
                            405,
                            &format!("Provided token can't access plugin '{plugin}'"),
                        );
                    }
                }
                if self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.handles.len() >= self.cfg.max_handles_per_session)
                {
                    return self.err(
                        sid,
                        Some(tx),
                        461,
                        "Couldn't attach to plugin: error 'too many handles in this session'",
                    );
                }
                let hid = self.new_id();
                self.handles.insert(hid, Handle::new(sid));
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.handles.insert(hid);
                }
                json!({"janus": "success", "session_id": sid, "transaction": tx, "data": {"id": hid}})
            }
            "destroy" => {
                if handle.is_some() {
                    return self.wrong_path(req);
                }
                self.destroy_session(now, sid, CallEnd::Hangup);
                success
            }
            "detach" => {
                let Some(hid) = handle else {
                    return self.wrong_path(req);
                };
                self.detach_handle(now, hid, CallEnd::Detached);
                self.emit(
                    sid,
                    json!({"janus": "detached", "session_id": sid, "sender": hid}),
                );
                success
            }
            "hangup" => {
                let Some(hid) = handle else {
                    return self.wrong_path(req);
                };
                let had_pc = self.handles.get(&hid).is_some_and(|h| h.has_pc);
                let peer =
                    self.teardown_call(now, hid, "Remote WebRTC hangup", CallEnd::Hangup, false);
                if had_pc {
                    self.core_hangup(hid, "Janus API");
                    if let Some(peer_name) = peer {
                        // Janus closes the peer's PeerConnection too, which reports back
                        self.plugin_result(
                            hid,
                            None,
                            hangup_result(peer_name.as_deref(), "Remote WebRTC hangup"),
                        );
                    }
                }
                success
            }
            "claim" => {
                let old = self.sessions.get(&sid).map(|s| s.owner);
                if let Some(old) = old
                    && old != source
                {
                    if let Some(limit) = self.over_session_cap(source, None) {
                        return self.refuse_session(limit, tx);
                    }
                    self.count_session(old, None, false);
                    self.count_session(source, None, true);
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.owner = source;
                    s.orphaned_until = None;
                }
                success
            }
            "message" => {
                let Some(hid) = handle else {
                    return self.wrong_path(req);
                };
                self.message(now, req, hid)
            }
            "trickle" => {
                let Some(hid) = handle else {
                    return self.wrong_path(req);
                };
                let candidate = req.root.get("candidate");
                let candidates = req.root.get("candidates");
                match (candidate, candidates) {
                    (None, None) => self.err(
                        sid,
                        Some(tx),
                        456,
                        "Missing mandatory element (candidate|candidates)",
                    ),
                    (Some(_), Some(_)) => self.err(
                        sid,
                        Some(tx),
                        454,
                        "Can't have both candidate and candidates",
                    ),
                    (Some(c), None) => {
                        let c = c.clone();
                        match self.trickle(now, hid, std::slice::from_ref(&c)) {
                            Ok(()) => ack,
                            Err(reason) => self.err(sid, Some(tx), 467, &reason),
                        }
                    }
                    (None, Some(Value::Array(list))) => {
                        let list = list.clone();
                        match self.trickle(now, hid, &list) {
                            Ok(()) => ack,
                            Err(reason) => self.err(sid, Some(tx), 467, &reason),
                        }
                    }
                    // Janus 1.1.2 acks (and ignores) a non-array `candidates`
                    (None, Some(_)) => ack,
                }
            }
            v => self.err(sid, Some(tx), 453, &format!("Unknown request '{v}'")),
        }
    }
}
