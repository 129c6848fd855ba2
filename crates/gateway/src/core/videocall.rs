//! janus.plugin.videocall: register, list, call, accept, set, hangup, and the plugin's events.

use super::cluster::{ClusterOut, NodeBody, RemotePeer, Ring};
use super::counters::CallEnd;
use super::janus::{Envelope, JanusError, Jsep, JsepType, VideocallError};
use super::{CallState, Core, ForwardKind, Handle, VIDEOCALL};
use serde_json::{Map, Value, json};
use std::time::Instant;

/// A videocall `hangup` result; `username` is omitted when unknown (as Janus does).
pub(super) fn hangup_result(username: Option<&str>, reason: &str) -> Value {
    match username {
        Some(u) => json!({"event": "hangup", "username": u, "reason": reason}),
        None => json!({"event": "hangup", "reason": reason}),
    }
}

/// A videocall request refused: the `error_code` and `error` text of the plugin event.
#[derive(Debug)]
pub(super) struct PluginError {
    code: VideocallError,
    reason: String,
}

impl PluginError {
    fn new(code: VideocallError, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// 475, as Janus names a missing field.
    fn missing(key: &str) -> Self {
        Self::new(
            VideocallError::MissingElement,
            format!("Missing mandatory element ({key})"),
        )
    }

    /// 474, as Janus names a field of the wrong type; `expected` reads "a string" etc.
    fn wrong_type(key: &str, expected: &str) -> Self {
        Self::new(
            VideocallError::InvalidElement,
            format!("Invalid element type ({key} should be {expected})"),
        )
    }
}

/// A mandatory string field of a videocall request body.
pub(super) fn str_field(body: &Map<String, Value>, key: &str) -> Result<String, PluginError> {
    match body.get(key) {
        None => Err(PluginError::missing(key)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(PluginError::wrong_type(key, "a string")),
    }
}

/// An optional field of a videocall request body: absent is fine, present must pass `valid`.
pub(super) fn optional_field(
    body: &Map<String, Value>,
    key: &str,
    valid: fn(&Value) -> bool,
    expected: &str,
) -> Result<(), PluginError> {
    match body.get(key) {
        Some(v) if !valid(v) => Err(PluginError::wrong_type(key, expected)),
        _ => Ok(()),
    }
}

impl Core {
    pub(super) fn plugin_event(
        &mut self,
        handle_id: u64,
        tx: Option<&str>,
        data: Value,
        jsep: Option<Value>,
    ) {
        let mut m = Map::new();
        m.insert("janus".into(), "event".into());
        if let Some(t) = tx {
            m.insert("transaction".into(), t.into());
        }
        m.insert(
            "plugindata".into(),
            json!({"plugin": VIDEOCALL, "data": data}),
        );
        if let Some(j) = jsep {
            m.insert("jsep".into(), j);
        }
        self.emit_to_handle(handle_id, Value::Object(m));
    }

    pub(super) fn plugin_result(&mut self, handle_id: u64, tx: Option<&str>, result: Value) {
        self.plugin_event(
            handle_id,
            tx,
            json!({"videocall": "event", "result": result}),
            None,
        );
    }

    pub(super) fn plugin_error(
        &mut self,
        handle_id: u64,
        tx: &str,
        code: VideocallError,
        reason: &str,
    ) {
        self.counters.error(code.code());
        self.plugin_event(
            handle_id,
            Some(tx),
            json!({"videocall": "event", "error_code": code.code(), "error": reason}),
            None,
        );
    }

    pub(super) fn core_hangup(&mut self, handle_id: u64, reason: &str) {
        self.emit_to_handle(handle_id, json!({"janus": "hangup", "reason": reason}));
    }

    /// Ends the call `hid` is in (if any): the peer gets a plugin `hangup` with
    /// `peer_reason` and, if its browser holds a PeerConnection for the call, a core
    /// `hangup` — plus, with `peer_extra`, the "Remote WebRTC hangup" event Janus sends when
    /// it closes that PeerConnection. Resets both handles' call state. Returns the peer's
    /// username when there was a peer.
    pub(super) fn teardown_call(
        &mut self,
        _now: Instant,
        hid: u64,
        peer_reason: &str,
        metric: CallEnd,
        peer_extra: bool,
    ) -> Option<Option<String>> {
        let h = self.handles.get(&hid)?;
        let peer = h.peer;
        let own_name = h.username.clone();
        if let Some(r) = &h.remote {
            // the other side is on another node: it tears its half down itself
            let peer_name = r.username.clone();
            let ringing = r.ring.is_some();
            self.send_to_remote(
                hid,
                NodeBody::Hangup {
                    username: own_name,
                    reason: peer_reason.to_string(),
                    extra: peer_extra,
                },
            );
            if let Some(h) = self.handles.get_mut(&hid) {
                h.reset_call();
            }
            self.counters
                .call_ended(if ringing { CallEnd::Error } else { metric });
            return Some(Some(peer_name));
        }
        if let Some(h) = self.handles.get_mut(&hid) {
            h.reset_call();
        }
        let p = peer?;
        let ph = self.handles.get_mut(&p)?;
        if ph.peer != Some(hid) {
            return None;
        }
        let peer_had_pc = ph.has_pc;
        let peer_name = ph.username.clone();
        ph.reset_call();
        self.plugin_result(p, None, hangup_result(own_name.as_deref(), peer_reason));
        if peer_had_pc {
            self.core_hangup(p, "Close PC");
            if peer_extra {
                self.plugin_result(
                    p,
                    None,
                    hangup_result(own_name.as_deref(), "Remote WebRTC hangup"),
                );
            }
        }
        self.counters.call_ended(metric);
        Some(peer_name)
    }

    /// A `message` to handle `hid`: an answer must follow an offer this handle was sent
    /// (469); the body goes to the plugin, whose answer comes as an event; the reply is
    /// an `ack`.
    pub(super) fn message(
        &mut self,
        now: Instant,
        env: &Envelope<'_>,
        hid: u64,
        body: &Map<String, Value>,
        jsep: Option<Jsep>,
    ) -> Value {
        let (sid, tx) = (env.session_id, env.tx);
        if let Some(j) = &jsep {
            if j.kind == JsepType::Answer && !self.handles.get(&hid).is_some_and(|h| h.got_offer) {
                return self.err(
                    sid,
                    Some(tx),
                    JanusError::UnexpectedAnswer,
                    "Unexpected ANSWER (did we offer?)",
                );
            }
            // an SDP that carries all its candidates must not wait for the deadline
            if let Some(h) = self.handles.get_mut(&hid) {
                h.jsep_complete = j.complete;
            }
        }
        if let Err(e) = self.videocall_request(now, hid, tx, body, jsep) {
            self.plugin_error(hid, tx, e.code, &e.reason);
        }
        if let Some(h) = self.handles.get_mut(&hid) {
            h.jsep_complete = false;
        }
        json!({"janus": "ack", "session_id": sid, "transaction": tx})
    }

    /// One videocall request; a refusal comes back as the plugin error to send.
    pub(super) fn videocall_request(
        &mut self,
        now: Instant,
        hid: u64,
        tx: &str,
        body: &Map<String, Value>,
        jsep: Option<Jsep>,
    ) -> Result<(), PluginError> {
        let request = str_field(body, "request")?.to_ascii_lowercase();
        let (username, peer, call, remote) = match self.handles.get(&hid) {
            Some(h) => (h.username.clone(), h.peer, h.call, h.remote.is_some()),
            None => return Ok(()),
        };
        match request.as_str() {
            "list" => {
                let list = self.all_usernames();
                self.plugin_result(hid, Some(tx), json!({"list": list}));
            }
            "register" => {
                let claiming = self
                    .handles
                    .get(&hid)
                    .and_then(|h| h.claim.as_ref().map(|c| c.0.clone()));
                if let Some(u) = username.or(claiming) {
                    return Err(PluginError::new(
                        VideocallError::AlreadyRegistered,
                        format!("Already registered ({u})"),
                    ));
                }
                let name = str_field(body, "username")?;
                let max = self.cfg.max_username_bytes;
                if name.len() > max {
                    return Err(PluginError::new(
                        VideocallError::InvalidElement,
                        format!("Invalid element (username longer than {max} bytes)"),
                    ));
                }
                if self.remote_location(&name).is_some() || !self.registry.register(&name, hid) {
                    return Err(PluginError::new(
                        VideocallError::UsernameTaken,
                        format!("Username '{name}' already taken"),
                    ));
                }
                if self.cluster.as_ref().is_some_and(|c| c.online) {
                    // no other node may hold it: the answer comes with the claim's
                    if let Some(h) = self.handles.get_mut(&hid) {
                        h.claim = Some(Box::new((name.clone(), tx.to_string())));
                    }
                    self.cluster_push(ClusterOut::Claim {
                        username: name,
                        handle: hid,
                    });
                    return Ok(());
                }
                if let Some(h) = self.handles.get_mut(&hid) {
                    h.username = Some(name.clone());
                }
                self.plugin_result(
                    hid,
                    Some(tx),
                    json!({"event": "registered", "username": name}),
                );
            }
            "call" => {
                let Some(own) = username else {
                    return Err(PluginError::new(
                        VideocallError::RegisterFirst,
                        "Register a username first",
                    ));
                };
                if peer.is_some() || remote || call != CallState::Idle {
                    return Err(PluginError::new(
                        VideocallError::AlreadyInCall,
                        "Already in a call",
                    ));
                }
                let target = str_field(body, "username")?;
                if target == own {
                    return Err(PluginError::new(
                        VideocallError::UseEchoTest,
                        "You can't call yourself... use the EchoTest for that",
                    ));
                }
                let local = self
                    .registry
                    .lookup(&target)
                    .filter(|c| self.handles.contains_key(c));
                if local.is_none()
                    && let Some(at) = self.remote_location(&target)
                {
                    // the checks of a local call, before anything is sent (the callee's
                    // node answers whether it is busy)
                    self.counters.calls_started += 1;
                    let Some(jsep) = jsep else {
                        self.counters.call_ended(CallEnd::Error);
                        return Err(PluginError::new(VideocallError::MissingSdp, "Missing SDP"));
                    };
                    if jsep.kind != JsepType::Offer {
                        self.counters.call_ended(CallEnd::Error);
                        return Err(PluginError::new(
                            VideocallError::InvalidSdp,
                            "Error parsing offer: not an offer",
                        ));
                    }
                    return self
                        .call_remote(
                            now,
                            hid,
                            own,
                            RemotePeer {
                                node: at.node.as_str().into(),
                                handle: at.handle,
                                username: target,
                                ring: Some(Ring {
                                    tx: tx.to_string(),
                                    jsep,
                                    until: now + super::RING_TIMEOUT,
                                }),
                            },
                        )
                        .map_err(|(code, reason)| PluginError::new(code, reason));
                }
                let Some(callee) = local else {
                    return Err(PluginError::new(
                        VideocallError::NoSuchUsername,
                        format!("Username '{target}' doesn't exist"),
                    ));
                };
                self.counters.calls_started += 1;
                let callee_busy = self.handles.get(&callee).is_some_and(Handle::in_call);
                if callee_busy {
                    self.counters.call_ended(CallEnd::Busy);
                    self.plugin_result(
                        hid,
                        Some(tx),
                        json!({"event": "hangup", "username": own, "reason": "User busy"}),
                    );
                    if jsep.is_some() {
                        self.core_hangup(hid, "Close PC");
                    }
                    if let Some(h) = self.handles.get_mut(&hid) {
                        // the candidates of this attempt are useless now
                        h.reset_call();
                    }
                    return Ok(());
                }
                let Some(jsep) = jsep else {
                    self.counters.call_ended(CallEnd::Error);
                    return Err(PluginError::new(VideocallError::MissingSdp, "Missing SDP"));
                };
                if jsep.kind != JsepType::Offer {
                    self.counters.call_ended(CallEnd::Error);
                    return Err(PluginError::new(
                        VideocallError::InvalidSdp,
                        "Error parsing offer: not an offer",
                    ));
                }
                if let Some(h) = self.handles.get_mut(&hid) {
                    h.peer = Some(callee);
                    h.call = CallState::Outgoing;
                    h.has_pc = true;
                }
                if let Some(c) = self.handles.get_mut(&callee) {
                    c.reset_call();
                    c.peer = Some(hid);
                    c.call = CallState::Incoming;
                }
                if self.cfg.early_offer {
                    self.start_early(hid, callee);
                }
                self.plugin_result(hid, Some(tx), json!({"event": "calling"}));
                self.queue_forward(now, hid, ForwardKind::IncomingCall, jsep);
            }
            "accept" => {
                if call != CallState::Incoming || (peer.is_none() && !remote) {
                    return Err(PluginError::new(
                        VideocallError::NoCall,
                        "No incoming call to accept",
                    ));
                }
                let Some(jsep) = jsep else {
                    return Err(PluginError::new(VideocallError::MissingSdp, "Missing SDP"));
                };
                if jsep.kind != JsepType::Answer {
                    return Err(PluginError::new(
                        VideocallError::InvalidSdp,
                        "Error parsing answer: not an answer",
                    ));
                }
                if let Some(h) = self.handles.get_mut(&hid) {
                    h.call = CallState::Connected;
                    h.has_pc = true;
                    h.got_offer = false;
                }
                if let Some(ph) = peer.and_then(|p| self.handles.get_mut(&p)) {
                    ph.call = CallState::Connected;
                }
                self.counters.calls_connected += 1;
                self.plugin_result(hid, Some(tx), json!({"event": "accepted"}));
                self.queue_forward(now, hid, ForwardKind::Accepted, jsep);
            }
            "set" => {
                for key in ["audio", "video", "record"] {
                    optional_field(body, key, Value::is_boolean, "a boolean")?;
                }
                optional_field(body, "filename", Value::is_string, "a string")?;
                optional_field(body, "bitrate", Value::is_u64, "a positive integer")?;
                for key in ["substream", "temporal"] {
                    if let Some(v) = body.get(key)
                        && v.as_u64().is_none_or(|x| x > 2)
                    {
                        return Err(PluginError::new(
                            VideocallError::InvalidElement,
                            format!("Invalid value ({key} should be 0, 1 or 2)"),
                        ));
                    }
                }
                if let Some(v) = body.get("fallback")
                    && v.as_u64().is_none()
                {
                    return Err(PluginError::new(
                        VideocallError::InvalidElement,
                        "Invalid value (fallback should be a positive integer)",
                    ));
                }
                self.plugin_result(hid, Some(tx), json!({"event": "set"}));
                if let Some(jsep) = jsep.filter(|_| peer.is_some() || remote) {
                    if jsep.kind == JsepType::Answer
                        && let Some(h) = self.handles.get_mut(&hid)
                    {
                        h.got_offer = false;
                    }
                    if let Some(h) = self.handles.get_mut(&hid) {
                        h.has_pc = true;
                    }
                    self.queue_forward(now, hid, ForwardKind::Update, jsep);
                }
            }
            "hangup" => {
                let reason = body
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("We did the hangup")
                    .to_string();
                let had_pc = self.handles.get(&hid).is_some_and(|h| h.has_pc);
                let peer = self.teardown_call(now, hid, &reason, CallEnd::Hangup, true);
                self.plugin_result(
                    hid,
                    Some(tx),
                    hangup_result(username.as_deref(), "Explicit hangup"),
                );
                if had_pc {
                    if let Some(peer_name) = peer {
                        self.plugin_result(
                            hid,
                            None,
                            hangup_result(peer_name.as_deref(), "Remote WebRTC hangup"),
                        );
                    }
                    self.core_hangup(hid, "Close PC");
                }
            }
            other => {
                return Err(PluginError::new(
                    VideocallError::InvalidRequest,
                    format!("Unknown request ({other})"),
                ));
            }
        }
        Ok(())
    }
}
