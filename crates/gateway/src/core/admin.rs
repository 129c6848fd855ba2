//! The Admin API: requests parsed once into [`AdminRequest`], then one function each
//! (tokens, sessions, status).

use super::counters::CallEnd;
use super::janus::{JanusError, Refusal, UNAUTHORIZED, janus_str};
use super::tokens::ct_eq;
use super::{AdminReply, Core, VIDEOCALL};
use serde_json::{Map, Value, json};
use std::time::Instant;

/// An Admin API request, parsed: what its verb needs is present and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AdminRequest {
    /// `list_handles` of the addressed session.
    ListHandles,
    /// `destroy_session` of the addressed session.
    DestroySession,
    /// `add_token`; `plugins` absent or empty means janus.plugin.videocall.
    AddToken {
        token: String,
        plugins: Option<Vec<String>>,
    },
    ListTokens,
    /// `allow_token` (`allow`) or `disallow_token`.
    TokenPlugins {
        allow: bool,
        token: String,
        plugins: Vec<String>,
    },
    RemoveToken {
        token: String,
    },
    ListSessions,
    GetStatus,
}

const PLUGINS_NON_EMPTY: &str = "Invalid element type (plugins should be a non-empty array)";

fn invalid(reason: &str) -> Refusal {
    Refusal::new(JanusError::InvalidElementType, reason)
}

/// The `plugins` array of a token request (`required`: present and not empty).
fn plugins_field(
    root: &Map<String, Value>,
    required: bool,
) -> Result<Option<Vec<String>>, Refusal> {
    match root.get("plugins") {
        None if required => Err(invalid(PLUGINS_NON_EMPTY)),
        None => Ok(None),
        Some(Value::Array(a)) => {
            if required && a.is_empty() {
                return Err(invalid(PLUGINS_NON_EMPTY));
            }
            a.iter()
                .map(|p| {
                    p.as_str().map(str::to_string).ok_or_else(|| {
                        invalid("Invalid element type (plugins should be an array of strings)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(_) => Err(invalid("Invalid element type (plugins should be an array)")),
    }
}

impl AdminRequest {
    /// A request to the session the path or `session_id` names.
    fn parse_session(verb: &str) -> Result<Self, Refusal> {
        match verb {
            "list_handles" => Ok(Self::ListHandles),
            "destroy_session" => Ok(Self::DestroySession),
            v => Err(Refusal::new(
                JanusError::InvalidRequestPath,
                format!("Unhandled request '{v}' at this path"),
            )),
        }
    }

    /// A request at the root; fields are checked in the order Janus checks them.
    fn parse_root(verb: &str, root: &Map<String, Value>) -> Result<Self, Refusal> {
        let token = || janus_str(root, "token", false).map(str::to_string);
        Ok(match verb {
            "add_token" => {
                let token = token()?;
                Self::AddToken {
                    token,
                    plugins: plugins_field(root, false)?,
                }
            }
            "list_tokens" => Self::ListTokens,
            "allow_token" | "disallow_token" => {
                let token = token()?;
                let plugins = plugins_field(root, true)?.unwrap_or_default();
                if plugins.iter().any(|p| p != VIDEOCALL) {
                    return Err(invalid(
                        "Invalid element type (some of the provided plugins are invalid)",
                    ));
                }
                Self::TokenPlugins {
                    allow: verb == "allow_token",
                    token,
                    plugins,
                }
            }
            "remove_token" => Self::RemoveToken { token: token()? },
            "list_sessions" => Self::ListSessions,
            "get_status" => Self::GetStatus,
            v => {
                return Err(Refusal::new(
                    JanusError::InvalidRequestPath,
                    format!("Unhandled request '{v}' at this path"),
                ));
            }
        })
    }
}

/// A `success` answer with `extra`'s fields.
fn success(tx: &str, extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("janus".into(), "success".into());
    m.insert("transaction".into(), tx.into());
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Value::Object(m)
}

impl Core {
    /// Handles one Admin API request given as text.
    pub fn admin_text(&mut self, now: Instant, unix: u64, text: &str) -> AdminReply {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.admin_value(now, unix, v, None),
            Err(e) => AdminReply {
                reply: self.err(
                    0,
                    None,
                    JanusError::InvalidJson,
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
        let (reply, changed) = self.admin_request(now, unix, v, path_session);
        if changed {
            self.tokens_dirty = true;
        }
        AdminReply {
            reply,
            tokens_changed: changed,
        }
    }

    /// The envelope (`transaction`, `janus`), `info`/`ping` at the root, the admin
    /// secret (403), the session (458), then the request. Returns the reply and whether
    /// the token store changed.
    fn admin_request(
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
            Err(r) => return (self.err(session_id, None, r.code, &r.reason), false),
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
            return (
                self.err(session_id, Some(tx), JanusError::Unauthorized, UNAUTHORIZED),
                false,
            );
        }
        let parsed = if session_id != 0 {
            if !self.sessions.contains_key(&session_id) {
                return (
                    self.err(
                        session_id,
                        Some(tx),
                        JanusError::SessionNotFound,
                        &format!("No such session {session_id}"),
                    ),
                    false,
                );
            }
            AdminRequest::parse_session(&verb)
        } else {
            AdminRequest::parse_root(&verb, root)
        };
        let request = match parsed {
            Ok(r) => r,
            Err(r) => return (self.err(session_id, Some(tx), r.code, &r.reason), false),
        };
        match request {
            AdminRequest::ListHandles => (self.admin_list_handles(tx, session_id), false),
            AdminRequest::DestroySession => {
                self.destroy_session(now, session_id, CallEnd::Hangup);
                (success(tx, json!({"session_id": session_id})), false)
            }
            AdminRequest::AddToken { token, plugins } => {
                (self.admin_add_token(tx, unix, &token, plugins), true)
            }
            AdminRequest::ListTokens => (self.admin_list_tokens(tx), false),
            AdminRequest::TokenPlugins {
                allow,
                token,
                plugins,
            } => self.admin_token_plugins(tx, allow, &token, &plugins),
            AdminRequest::RemoveToken { token } => self.admin_remove_token(tx, &token),
            AdminRequest::ListSessions => {
                let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
                ids.sort_unstable();
                (success(tx, json!({"sessions": ids})), false)
            }
            AdminRequest::GetStatus => (self.admin_status(tx), false),
        }
    }

    fn admin_list_handles(&self, tx: &str, session_id: u64) -> Value {
        let handles: Vec<u64> = self
            .sessions
            .get(&session_id)
            .map(|s| s.handles.iter().copied().collect())
            .unwrap_or_default();
        success(tx, json!({"session_id": session_id, "handles": handles}))
    }

    /// Adds (or refreshes) a token; unknown plugins are skipped silently, like Janus.
    fn admin_add_token(
        &mut self,
        tx: &str,
        unix: u64,
        token: &str,
        plugins: Option<Vec<String>>,
    ) -> Value {
        let allowed: Vec<String> = match plugins {
            None => vec![VIDEOCALL.to_string()],
            Some(list) if list.is_empty() => vec![VIDEOCALL.to_string()],
            Some(list) => list.into_iter().filter(|p| p == VIDEOCALL).collect(),
        };
        let now_allowed = self.tokens.add(token, &allowed, unix);
        self.token_changed(token);
        success(tx, json!({"data": {"plugins": now_allowed}}))
    }

    fn admin_list_tokens(&self, tx: &str) -> Value {
        let tokens: Vec<Value> = self
            .tokens
            .list()
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| json!({"token": t, "allowed_plugins": p}))
            .collect();
        success(tx, json!({"data": {"tokens": tokens}}))
    }

    /// `allow_token` / `disallow_token` of a stored token (470 when there is none).
    fn admin_token_plugins(
        &mut self,
        tx: &str,
        allow: bool,
        token: &str,
        plugins: &[String],
    ) -> (Value, bool) {
        let r = if allow {
            self.tokens.allow(token, plugins)
        } else {
            self.tokens.disallow(token, plugins)
        };
        match r {
            Some(list) => {
                self.token_changed(token);
                (success(tx, json!({"data": {"plugins": list}})), true)
            }
            None => (
                self.err(
                    0,
                    Some(tx),
                    JanusError::TokenNotFound,
                    &format!("Token {token} not found"),
                ),
                false,
            ),
        }
    }

    fn admin_remove_token(&mut self, tx: &str, token: &str) -> (Value, bool) {
        if self.tokens.remove(token) {
            self.token_changed(token);
            (success(tx, json!({})), true)
        } else {
            (
                self.err(0, Some(tx), JanusError::Unknown, "Error removing token"),
                false,
            )
        }
    }

    fn admin_status(&self, tx: &str) -> Value {
        success(
            tx,
            json!({"status": {
                "token_auth": self.cfg.token_auth,
                "session_timeout": self.cfg.session_timeout.as_secs(),
                "reclaim_session_timeout": self.cfg.reclaim_timeout.as_secs(),
                "candidate_wait_ms": u64::try_from(self.cfg.candidate_wait.as_millis()).unwrap_or(u64::MAX),
                "sessions": self.sessions.len(),
                "handles": self.handles.len(),
                "tokens": self.tokens.len(),
            }}),
        )
    }
}
