//! The Janus API: the error-code table, requests parsed once into typed values, the
//! envelope checks in Janus's order, and `server_info`. What each request does lives
//! with its subject (`session.rs`, `videocall.rs`, `candidates.rs`, `admin.rs`).

use super::{Core, JANUS_VERSION, Source, VIDEOCALL};
use crate::sdp;
use serde_json::{Map, Value, json};
use std::time::Instant;

pub(super) const UNAUTHORIZED: &str = "Unauthorized request (wrong or missing secret/token)";

/// Janus API error codes, as Janus names and numbers them (`apierror.h`,
/// `JANUS_ERROR_*`). With [`VideocallError`] this is the one table every error answer
/// takes its number from, and the `code` labels of `callrelay_gateway_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JanusError {
    /// 403 `JANUS_ERROR_UNAUTHORIZED`
    Unauthorized,
    /// 405 `JANUS_ERROR_UNAUTHORIZED_PLUGIN`
    UnauthorizedPlugin,
    /// 450 `JANUS_ERROR_TRANSPORT_SPECIFIC`
    TransportSpecific,
    /// 453 `JANUS_ERROR_UNKNOWN_REQUEST`
    UnknownRequest,
    /// 454 `JANUS_ERROR_INVALID_JSON`
    InvalidJson,
    /// 455 `JANUS_ERROR_INVALID_JSON_OBJECT`
    InvalidJsonObject,
    /// 456 `JANUS_ERROR_MISSING_MANDATORY_ELEMENT`
    MissingMandatoryElement,
    /// 457 `JANUS_ERROR_INVALID_REQUEST_PATH`
    InvalidRequestPath,
    /// 458 `JANUS_ERROR_SESSION_NOT_FOUND`
    SessionNotFound,
    /// 459 `JANUS_ERROR_HANDLE_NOT_FOUND`
    HandleNotFound,
    /// 460 `JANUS_ERROR_PLUGIN_NOT_FOUND`
    PluginNotFound,
    /// 461 `JANUS_ERROR_PLUGIN_ATTACH`
    PluginAttach,
    /// 464 `JANUS_ERROR_JSEP_UNKNOWN_TYPE`
    JsepUnknownType,
    /// 465 `JANUS_ERROR_JSEP_INVALID_SDP`
    JsepInvalidSdp,
    /// 467 `JANUS_ERROR_INVALID_ELEMENT_TYPE`
    InvalidElementType,
    /// 468 `JANUS_ERROR_SESSION_CONFLICT`
    SessionConflict,
    /// 469 `JANUS_ERROR_UNEXPECTED_ANSWER`
    UnexpectedAnswer,
    /// 470 `JANUS_ERROR_TOKEN_NOT_FOUND`
    TokenNotFound,
    /// 490 `JANUS_ERROR_UNKNOWN` (Janus also answers it for refused sessions)
    Unknown,
}

impl JanusError {
    /// Every code of the table.
    pub const ALL: [Self; 19] = [
        Self::Unauthorized,
        Self::UnauthorizedPlugin,
        Self::TransportSpecific,
        Self::UnknownRequest,
        Self::InvalidJson,
        Self::InvalidJsonObject,
        Self::MissingMandatoryElement,
        Self::InvalidRequestPath,
        Self::SessionNotFound,
        Self::HandleNotFound,
        Self::PluginNotFound,
        Self::PluginAttach,
        Self::JsepUnknownType,
        Self::JsepInvalidSdp,
        Self::InvalidElementType,
        Self::SessionConflict,
        Self::UnexpectedAnswer,
        Self::TokenNotFound,
        Self::Unknown,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::Unauthorized => 403,
            Self::UnauthorizedPlugin => 405,
            Self::TransportSpecific => 450,
            Self::UnknownRequest => 453,
            Self::InvalidJson => 454,
            Self::InvalidJsonObject => 455,
            Self::MissingMandatoryElement => 456,
            Self::InvalidRequestPath => 457,
            Self::SessionNotFound => 458,
            Self::HandleNotFound => 459,
            Self::PluginNotFound => 460,
            Self::PluginAttach => 461,
            Self::JsepUnknownType => 464,
            Self::JsepInvalidSdp => 465,
            Self::InvalidElementType => 467,
            Self::SessionConflict => 468,
            Self::UnexpectedAnswer => 469,
            Self::TokenNotFound => 470,
            Self::Unknown => 490,
        }
    }
}

/// janus.plugin.videocall error codes (`error_code` of its error events), as the
/// plugin names and numbers them (`JANUS_VIDEOCALL_ERROR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideocallError {
    /// 472 `JANUS_VIDEOCALL_ERROR_INVALID_REQUEST`
    InvalidRequest,
    /// 473 `JANUS_VIDEOCALL_ERROR_REGISTER_FIRST`
    RegisterFirst,
    /// 474 `JANUS_VIDEOCALL_ERROR_INVALID_ELEMENT`
    InvalidElement,
    /// 475 `JANUS_VIDEOCALL_ERROR_MISSING_ELEMENT`
    MissingElement,
    /// 476 `JANUS_VIDEOCALL_ERROR_USERNAME_TAKEN`
    UsernameTaken,
    /// 477 `JANUS_VIDEOCALL_ERROR_ALREADY_REGISTERED`
    AlreadyRegistered,
    /// 478 `JANUS_VIDEOCALL_ERROR_NO_SUCH_USERNAME`
    NoSuchUsername,
    /// 479 `JANUS_VIDEOCALL_ERROR_USE_ECHO_TEST`
    UseEchoTest,
    /// 480 `JANUS_VIDEOCALL_ERROR_ALREADY_IN_CALL`
    AlreadyInCall,
    /// 481 `JANUS_VIDEOCALL_ERROR_NO_CALL`
    NoCall,
    /// 482 `JANUS_VIDEOCALL_ERROR_MISSING_SDP`
    MissingSdp,
    /// 483 `JANUS_VIDEOCALL_ERROR_INVALID_SDP`
    InvalidSdp,
    /// 499 `JANUS_VIDEOCALL_ERROR_UNKNOWN_ERROR`: in a cluster, the callee's node did
    /// not answer (NATS unreachable, node gone).
    Unknown,
}

impl VideocallError {
    /// Every code the plugin answers.
    pub const ALL: [Self; 13] = [
        Self::InvalidRequest,
        Self::RegisterFirst,
        Self::InvalidElement,
        Self::MissingElement,
        Self::UsernameTaken,
        Self::AlreadyRegistered,
        Self::NoSuchUsername,
        Self::UseEchoTest,
        Self::AlreadyInCall,
        Self::NoCall,
        Self::MissingSdp,
        Self::InvalidSdp,
        Self::Unknown,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::InvalidRequest => 472,
            Self::RegisterFirst => 473,
            Self::InvalidElement => 474,
            Self::MissingElement => 475,
            Self::UsernameTaken => 476,
            Self::AlreadyRegistered => 477,
            Self::NoSuchUsername => 478,
            Self::UseEchoTest => 479,
            Self::AlreadyInCall => 480,
            Self::NoCall => 481,
            Self::MissingSdp => 482,
            Self::InvalidSdp => 483,
            Self::Unknown => 499,
        }
    }
}

/// A request refused while it was parsed: the Janus error to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) code: JanusError,
    pub(super) reason: String,
}

impl Refusal {
    pub(super) fn new(code: JanusError, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// 457, the request is not handled at this level of the path.
    fn wrong_path(verb: &str) -> Self {
        Self::new(
            JanusError::InvalidRequestPath,
            format!("Unhandled request '{verb}' at this path"),
        )
    }
}

/// A mandatory string field of a Janus API request (or, with `jsep`, of its `jsep`
/// object), or what Janus answers: 456 when it is missing, 467 when it is not a string.
pub(super) fn janus_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    jsep: bool,
) -> Result<&'a str, Refusal> {
    let (missing, invalid) = if jsep {
        (
            "JSEP error: missing mandatory element",
            "JSEP error: invalid element type",
        )
    } else {
        ("Missing mandatory element", "Invalid element type")
    };
    match obj.get(key) {
        None => Err(Refusal::new(
            JanusError::MissingMandatoryElement,
            format!("{missing} ({key})"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::new(
            JanusError::InvalidElementType,
            format!("{invalid} ({key} should be a string)"),
        )),
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

/// What every Janus API request carries, read once.
pub(super) struct Envelope<'a> {
    pub(super) root: &'a Map<String, Value>,
    /// The `janus` verb, lower-cased.
    pub(super) verb: String,
    pub(super) tx: &'a str,
    /// 0 when absent (or not a non-negative integer).
    pub(super) session_id: u64,
    /// `session_id` was a negative integer.
    bad_session: bool,
    /// `handle_id` was a number (0 when it is not a non-negative integer).
    handle: Option<u64>,
    pub(super) token: Option<&'a str>,
    pub(super) apisecret: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    /// Reads the envelope; a missing or non-string `transaction` or `janus` is refused
    /// (with the session id read so far, for the reply).
    fn parse(root: &'a Map<String, Value>) -> Result<Self, (u64, Refusal)> {
        let (mut session_id, mut bad_session) = (0u64, false);
        if let Some(Value::Number(n)) = root.get("session_id") {
            match n.as_u64() {
                Some(x) => session_id = x,
                None => bad_session = n.is_i64(),
            }
        }
        let handle = match root.get("handle_id") {
            Some(Value::Number(n)) => Some(n.as_u64().unwrap_or(0)),
            _ => None,
        };
        let tx = janus_str(root, "transaction", false).map_err(|r| (session_id, r))?;
        let verb = janus_str(root, "janus", false)
            .map_err(|r| (session_id, r))?
            .to_ascii_lowercase();
        Ok(Self {
            root,
            verb,
            tx,
            session_id,
            bad_session,
            handle,
            token: root.get("token").and_then(Value::as_str),
            apisecret: root.get("apisecret").and_then(Value::as_str),
        })
    }

    /// Addressed to the root (like Janus, a zero `handle_id` does not leave it).
    fn at_root(&self) -> bool {
        self.session_id == 0 && self.handle.unwrap_or(0) == 0 && !self.bad_session
    }
}

/// The `type` of a JSEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsepType {
    Offer,
    Answer,
}

impl JsepType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
        }
    }
}

/// The `jsep` of a `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Jsep {
    pub(super) kind: JsepType,
    pub(super) sdp: String,
    pub(super) e2ee: bool,
    /// The SDP carries all its candidates: the client does not trickle (janus.js sends
    /// `"trickle": false`) or the SDP ends its candidates itself.
    pub(super) complete: bool,
}

impl Jsep {
    /// Checks in Janus's order: an object (455), `type` then `sdp` strings (456/467),
    /// an offer or answer (464), something like SDP (465).
    fn parse(v: &Value) -> Result<Self, Refusal> {
        let Some(j) = v.as_object() else {
            return Err(Refusal::new(
                JanusError::InvalidJsonObject,
                "Invalid jsep object",
            ));
        };
        let jtype = janus_str(j, "type", true)?;
        let sdp_text = janus_str(j, "sdp", true)?;
        let kind = match jtype.to_ascii_lowercase().as_str() {
            "offer" => JsepType::Offer,
            "answer" => JsepType::Answer,
            _ => {
                return Err(Refusal::new(
                    JanusError::JsepUnknownType,
                    format!("JSEP error: unknown message type '{jtype}'"),
                ));
            }
        };
        if !sdp::looks_like_sdp(sdp_text) {
            return Err(Refusal::new(
                JanusError::JsepInvalidSdp,
                "Invalid SDP (doesn't start with v=)",
            ));
        }
        Ok(Self {
            kind,
            sdp: sdp_text.to_string(),
            e2ee: j.get("e2ee").and_then(Value::as_bool).unwrap_or(false),
            complete: j.get("trickle").and_then(Value::as_bool) == Some(false)
                || sdp_text.contains("a=end-of-candidates"),
        })
    }
}

/// The candidates of a `trickle`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Trickle {
    /// `candidate`, or the items of a `candidates` array.
    Candidates(Vec<Value>),
    /// A `candidates` that is not an array: Janus 1.1.2 acks and ignores it.
    Ignored,
}

/// A Janus API request to the root (no session), parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RootRequest {
    Info,
    Ping,
    /// `create`, with the session id the client asks for (0: any).
    Create {
        id: u64,
    },
}

impl RootRequest {
    /// Anything but `info`, `ping` and `create` is 457 at the root.
    fn parse(env: &Envelope<'_>) -> Result<Self, Refusal> {
        match env.verb.as_str() {
            "info" => Ok(Self::Info),
            "ping" => Ok(Self::Ping),
            "create" => Ok(Self::Create {
                id: env.root.get("id").and_then(Value::as_u64).unwrap_or(0),
            }),
            v => Err(Refusal::wrong_path(v)),
        }
    }
}

/// A Janus API request below the root, parsed: what its verb needs is present and typed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SessionRequest<'a> {
    KeepAlive,
    Claim,
    Attach {
        plugin: &'a str,
    },
    Destroy,
    Detach(u64),
    Hangup(u64),
    Message {
        handle: u64,
        body: Map<String, Value>,
        jsep: Option<Jsep>,
    },
    Trickle(u64, Trickle),
}

impl<'a> SessionRequest<'a> {
    /// Parses the request to a session (`handle`: the handle it is addressed to, known
    /// to exist). A verb at the wrong level is 457, an unknown one 453; then the fields,
    /// in the order Janus checks them.
    fn parse(env: &Envelope<'a>, handle: Option<u64>) -> Result<Self, Refusal> {
        let root = env.root;
        let wrong_path = || Refusal::wrong_path(&env.verb);
        let needs_handle = || handle.ok_or_else(wrong_path);
        let no_handle = || match handle {
            Some(_) => Err(wrong_path()),
            None => Ok(()),
        };
        Ok(match env.verb.as_str() {
            "keepalive" => Self::KeepAlive,
            "claim" => Self::Claim,
            "attach" => {
                no_handle()?;
                Self::Attach {
                    plugin: janus_str(root, "plugin", false)?,
                }
            }
            "destroy" => {
                no_handle()?;
                Self::Destroy
            }
            "detach" => Self::Detach(needs_handle()?),
            "hangup" => Self::Hangup(needs_handle()?),
            "message" => {
                let handle = needs_handle()?;
                let body = match root.get("body") {
                    None => {
                        return Err(Refusal::new(
                            JanusError::MissingMandatoryElement,
                            "Missing mandatory element (body)",
                        ));
                    }
                    Some(Value::Object(b)) => b.clone(),
                    Some(_) => {
                        return Err(Refusal::new(
                            JanusError::InvalidElementType,
                            "Invalid element type (body should be an object)",
                        ));
                    }
                };
                let jsep = root.get("jsep").map(Jsep::parse).transpose()?;
                Self::Message { handle, body, jsep }
            }
            "trickle" => {
                let handle = needs_handle()?;
                let items = match (root.get("candidate"), root.get("candidates")) {
                    (None, None) => {
                        return Err(Refusal::new(
                            JanusError::MissingMandatoryElement,
                            "Missing mandatory element (candidate|candidates)",
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(Refusal::new(
                            JanusError::InvalidJson,
                            "Can't have both candidate and candidates",
                        ));
                    }
                    (Some(c), None) => Trickle::Candidates(vec![c.clone()]),
                    (None, Some(Value::Array(list))) => Trickle::Candidates(list.clone()),
                    (None, Some(_)) => Trickle::Ignored,
                };
                Self::Trickle(handle, items)
            }
            v => {
                return Err(Refusal::new(
                    JanusError::UnknownRequest,
                    format!("Unknown request '{v}'"),
                ));
            }
        })
    }
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
                    JanusError::InvalidJson,
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

    /// Handles one parsed Janus API request: the envelope, then the address (root,
    /// session, handle) and the credentials in Janus's order, then the request itself.
    pub fn handle_value(&mut self, now: Instant, unix: u64, source: Source, v: Value) -> Value {
        let empty = Map::new();
        let root = v.as_object().unwrap_or(&empty);
        let env = match Envelope::parse(root) {
            Ok(env) => env,
            Err((session_id, r)) => {
                self.counters.request("other");
                return self.err(session_id, None, r.code, &r.reason);
            }
        };
        self.counters.request(&env.verb);
        let (sid, tx) = (env.session_id, env.tx);
        if env.at_root() {
            return match RootRequest::parse(&env) {
                Ok(RootRequest::Info) => self.server_info(tx),
                Ok(RootRequest::Ping) => json!({"janus": "pong", "transaction": tx}),
                Ok(RootRequest::Create { id }) => self.create_session(now, unix, source, &env, id),
                Err(r) => self.err(0, Some(tx), r.code, &r.reason),
            };
        }
        if sid == 0 || env.bad_session {
            return self.err(
                sid,
                Some(tx),
                JanusError::SessionNotFound,
                "Session not found",
            );
        }
        if env.handle == Some(0) {
            return self.err(
                sid,
                Some(tx),
                JanusError::HandleNotFound,
                "Handle not found",
            );
        }
        if !self.check_secret(&env, unix) {
            return self.err(sid, Some(tx), JanusError::Unauthorized, UNAUTHORIZED);
        }
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return self.err(
                sid,
                Some(tx),
                JanusError::SessionNotFound,
                &format!("No such session {sid}"),
            );
        };
        sess.last_activity = now;
        if let Some(hid) = env.handle
            && !sess.handles.contains(&hid)
        {
            return self.err(
                sid,
                Some(tx),
                JanusError::HandleNotFound,
                &format!("No such handle {hid} in session {sid}"),
            );
        }
        match SessionRequest::parse(&env, env.handle) {
            Ok(request) => self.session_request(now, unix, source, &env, request),
            Err(r) => self.err(sid, Some(tx), r.code, &r.reason),
        }
    }

    /// The `info` answer: what Janus reports about itself, for a gateway of this shape.
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
}
