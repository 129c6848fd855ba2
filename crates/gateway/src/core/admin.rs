//! The Admin API: tokens, sessions, status.

use super::counters::CallEnd;
use super::janus::{UNAUTHORIZED, janus_str};
use super::tokens::ct_eq;
use super::{AdminReply, Core, VIDEOCALL};
use serde_json::{Map, Value, json};
use std::time::Instant;

impl Core {
    /// Handles one Admin API request given as text.
    pub fn admin_text(&mut self, now: Instant, unix: u64, text: &str) -> AdminReply {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.admin_value(now, unix, v, None),
            Err(e) => AdminReply {
                reply: self.err(
                    0,
                    None,
                    454,
                    &format!("JSON error: on line {}: {}", e.line(), e),
                ),
                tokens_changed: false,
            },
        }
    }

    /// Handles one parsed Admin API request; `path_session` is the session id from an
    /// HTTP path `/admin/<session>`.
    pub fn admin_value(
        &mut self,
        now: Instant,
        unix: u64,
        v: Value,
        path_session: Option<u64>,
    ) -> AdminReply {
        let r = self.admin_inner(now, unix, v, path_session);
        let changed = r.1;
        if changed {
            self.tokens_dirty = true;
        }
        AdminReply {
            reply: r.0,
            tokens_changed: changed,
        }
    }

    pub(super) fn admin_inner(
        &mut self,
        now: Instant,
        unix: u64,
        v: Value,
        path_session: Option<u64>,
    ) -> (Value, bool) {
        self.counters.request("admin");
        let empty = Map::new();
        let root = v.as_object().unwrap_or(&empty);
        let session_id = path_session
            .or_else(|| root.get("session_id").and_then(Value::as_u64))
            .unwrap_or(0);
        let tx_and_verb = janus_str(root, "transaction", false)
            .and_then(|tx| Ok((tx, janus_str(root, "janus", false)?.to_ascii_lowercase())));
        let (tx, verb) = match tx_and_verb {
            Ok(tv) => tv,
            Err((code, reason)) => return (self.err(session_id, None, code, &reason), false),
        };
        if session_id == 0 {
            match verb.as_str() {
                "info" => return (self.server_info(tx), false),
                "ping" => return (json!({"janus": "pong", "transaction": tx}), false),
                _ => {}
            }
        }
        let secret_ok = match (
            &self.cfg.admin_secret,
            root.get("admin_secret").and_then(Value::as_str),
        ) {
            (Some(s), Some(given)) => ct_eq(s, given),
            _ => false,
        };
        if !secret_ok {
            return (self.err(session_id, Some(tx), 403, UNAUTHORIZED), false);
        }
        let ok = |extra: Value| {
            let mut m = Map::new();
            m.insert("janus".into(), "success".into());
            m.insert("transaction".into(), tx.into());
            if let Value::Object(e) = extra {
                m.extend(e);
            }
            Value::Object(m)
        };
        if session_id != 0 {
            if !self.sessions.contains_key(&session_id) {
                return (
                    self.err(
                        session_id,
                        Some(tx),
                        458,
                        &format!("No such session {session_id}"),
                    ),
                    false,
                );
            }
            return match verb.as_str() {
                "list_handles" => {
                    let handles: Vec<u64> = self
                        .sessions
                        .get(&session_id)
                        .map(|s| s.handles.iter().copied().collect())
                        .unwrap_or_default();
                    (
                        ok(json!({"session_id": session_id, "handles": handles})),
                        false,
                    )
                }
                "destroy_session" => {
                    self.destroy_session(now, session_id, CallEnd::Hangup);
                    (ok(json!({"session_id": session_id})), false)
                }
                v => (
                    self.err(
                        session_id,
                        Some(tx),
                        457,
                        &format!("Unhandled request '{v}' at this path"),
                    ),
                    false,
                ),
            };
        }
        let token_arg = |core: &mut Self| -> Result<String, Value> {
            janus_str(root, "token", false)
                .map(str::to_string)
                .map_err(|(code, reason)| core.err(0, Some(tx), code, &reason))
        };
        let plugins_arg = |core: &mut Self, required: bool| -> Result<Option<Vec<String>>, Value> {
            match root.get("plugins") {
                None if required => Err(core.err(
                    0,
                    Some(tx),
                    467,
                    "Invalid element type (plugins should be a non-empty array)",
                )),
                None => Ok(None),
                Some(Value::Array(a)) => {
                    if required && a.is_empty() {
                        return Err(core.err(
                            0,
                            Some(tx),
                            467,
                            "Invalid element type (plugins should be a non-empty array)",
                        ));
                    }
                    let mut out = Vec::new();
                    for p in a {
                        match p.as_str() {
                            Some(s) => out.push(s.to_string()),
                            None => {
                                return Err(core.err(
                                    0,
                                    Some(tx),
                                    467,
                                    "Invalid element type (plugins should be an array of strings)",
                                ));
                            }
                        }
                    }
                    Ok(Some(out))
                }
                Some(_) => Err(core.err(
                    0,
                    Some(tx),
                    467,
                    "Invalid element type (plugins should be an array)",
                )),
            }
        };
        match verb.as_str() {
            "add_token" => {
                let token = match token_arg(self) {
                    Ok(t) => t,
                    Err(e) => return (e, false),
                };
                let plugins = match plugins_arg(self, false) {
                    Ok(p) => p,
                    Err(e) => return (e, false),
                };
                let allowed: Vec<String> = match plugins {
                    None => vec![VIDEOCALL.to_string()],
                    Some(list) if list.is_empty() => vec![VIDEOCALL.to_string()],
                    // unknown plugins are skipped silently, like Janus
                    Some(list) => list.into_iter().filter(|p| p == VIDEOCALL).collect(),
                };
                let now_allowed = self.tokens.add(&token, &allowed, unix);
                (ok(json!({"data": {"plugins": now_allowed}})), true)
            }
            "list_tokens" => {
                let tokens: Vec<Value> = self
                    .tokens
                    .list()
                    .into_iter()
                    .filter(|(_, p)| !p.is_empty())
                    .map(|(t, p)| json!({"token": t, "allowed_plugins": p}))
                    .collect();
                (ok(json!({"data": {"tokens": tokens}})), false)
            }
            "allow_token" | "disallow_token" => {
                let token = match token_arg(self) {
                    Ok(t) => t,
                    Err(e) => return (e, false),
                };
                let plugins = match plugins_arg(self, true) {
                    Ok(p) => p.unwrap_or_default(),
                    Err(e) => return (e, false),
                };
                if plugins.iter().any(|p| p != VIDEOCALL) {
                    return (
                        self.err(
                            0,
                            Some(tx),
                            467,
                            "Invalid element type (some of the provided plugins are invalid)",
                        ),
                        false,
                    );
                }
                let r = if verb == "allow_token" {
                    self.tokens.allow(&token, &plugins)
                } else {
                    self.tokens.disallow(&token, &plugins)
                };
                match r {
                    Some(list) => (ok(json!({"data": {"plugins": list}})), true),
                    None => (
                        self.err(0, Some(tx), 470, &format!("Token {token} not found")),
                        false,
                    ),
                }
            }
            "remove_token" => {
                let token = match token_arg(self) {
                    Ok(t) => t,
                    Err(e) => return (e, false),
                };
                if self.tokens.remove(&token) {
                    (ok(json!({})), true)
                } else {
                    (self.err(0, Some(tx), 490, "Error removing token"), false)
                }
            }
            "list_sessions" => {
                let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
                ids.sort_unstable();
                (ok(json!({"sessions": ids})), false)
            }
            "get_status" => (
                ok(json!({"status": {
                    "token_auth": self.cfg.token_auth,
                    "session_timeout": self.cfg.session_timeout.as_secs(),
                    "reclaim_session_timeout": self.cfg.reclaim_timeout.as_secs(),
                    "candidate_wait_ms": u64::try_from(self.cfg.candidate_wait.as_millis()).unwrap_or(u64::MAX),
                    "sessions": self.sessions.len(),
                    "handles": self.handles.len(),
                    "tokens": self.tokens.len(),
                }})),
                false,
            ),
            v => (
                self.err(
                    0,
                    Some(tx),
                    457,
                    &format!("Unhandled request '{v}' at this path"),
                ),
                false,
            ),
        }
    }
}
