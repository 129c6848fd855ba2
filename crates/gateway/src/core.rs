//! Sans-IO Janus core: sessions, handles, token auth, Admin API and the
//! `janus.plugin.videocall` plugin. Fed with `(now, source, request)`; returns the reply
//! and queues events addressed to the transport that owns each session. No sockets, no
//! timers, no tokio: the shell calls [`Core::poll_timeout`] / [`Core::handle_timeout`].

use crate::metrics::Metrics;
use crate::sdp::{self, Candidate};
use crate::store::{TokenFile, TokenStore, UserRegistry};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Map, Value, json};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The only plugin this gateway implements.
pub const VIDEOCALL: &str = "janus.plugin.videocall";
/// Janus API version reported in `server_info` (the API level we are compatible with).
pub const JANUS_VERSION: u64 = 1102;
const MAX_ID: u64 = 1 << 53;
const UNAUTHORIZED: &str = "Unauthorized request (wrong or missing secret/token)";

/// Identifies one transport connection (a WebSocket) in the shell.
pub type ConnId = u64;

/// Where a request came from / which transport owns a session's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A WebSocket connection.
    Ws(ConnId),
    /// The HTTP transport (events are queued per session for long polls).
    Http,
}

/// Something the shell must deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An event for the transport that owns `session_id`.
    Event {
        /// Owner of the session.
        owner: Source,
        /// Session the event belongs to.
        session_id: u64,
        /// The JSON message.
        msg: Value,
    },
    /// A session is gone; the shell may drop its queues.
    SessionClosed {
        /// Last owner of the session.
        owner: Source,
        /// The session.
        session_id: u64,
    },
}

/// Settings of the core (subset of the gateway configuration).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Idle time after which a session is destroyed (0 = never).
    pub session_timeout: Duration,
    /// How long a session whose WebSocket closed waits for a `claim` (0 = destroy now).
    pub reclaim_timeout: Duration,
    /// How long an offer/answer waits for trickled candidates before it is forwarded.
    pub candidate_wait: Duration,
    /// Require a stored token on every request (Janus `token_auth`).
    pub token_auth: bool,
    /// Optional Janus `api_secret`.
    pub api_secret: Option<String>,
    /// Admin API secret; without one every admin request is refused.
    pub admin_secret: Option<String>,
    /// Tokens not used or re-added for this long are dropped (0 = never).
    pub token_max_idle: Duration,
    /// Candidates buffered per handle before the SDP is forwarded.
    pub max_candidates: usize,
    /// Largest trickled candidate (its JSON object), bytes; a larger one gets 467.
    pub max_candidate_bytes: usize,
    /// Candidate bytes buffered per handle; a trickle beyond it gets 467.
    pub max_candidate_bytes_per_handle: usize,
    /// Sessions alive at once; `create` beyond this gets 490.
    pub max_sessions: usize,
    /// Sessions alive at once created with one token (0 = no limit); `create` beyond
    /// it gets 490, other tokens are unaffected.
    pub max_sessions_per_token: usize,
    /// Sessions alive at once owned by one WebSocket (0 = no limit).
    pub max_sessions_per_connection: usize,
    /// Handles per session; `attach` beyond this gets 461.
    pub max_handles_per_session: usize,
    /// Longest videocall username in bytes; `register` beyond it gets 474 (every `list`
    /// reply carries every name, so long names multiply into every reply).
    pub max_username_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(60),
            reclaim_timeout: Duration::ZERO,
            candidate_wait: Duration::from_millis(1000),
            token_auth: false,
            api_secret: None,
            admin_secret: None,
            token_max_idle: Duration::from_secs(7 * 86400),
            max_candidates: 100,
            max_candidate_bytes: 1024,
            max_candidate_bytes_per_handle: 32 * 1024,
            max_sessions: 100_000,
            max_sessions_per_token: 64,
            max_sessions_per_connection: 16,
            max_handles_per_session: 64,
            max_username_bytes: 128,
        }
    }
}

#[derive(Debug)]
struct Session {
    owner: Source,
    last_activity: Instant,
    handles: BTreeSet<u64>,
    /// Set when the owning WebSocket closed and a reclaim timeout is configured.
    orphaned_until: Option<Instant>,
    /// The token that created the session (None: api secret or no auth), for the
    /// per-token cap.
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Idle,
    Outgoing,
    Incoming,
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardKind {
    IncomingCall,
    Accepted,
    Update,
}

#[derive(Debug)]
struct Pending {
    kind: ForwardKind,
    jsep_type: String,
    sdp: String,
    e2ee: bool,
    since: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct Handle {
    session_id: u64,
    username: Option<String>,
    peer: Option<u64>,
    call: CallState,
    /// Candidates trickled by this handle and not yet forwarded.
    cands: Vec<Candidate>,
    completed: bool,
    /// This handle's first SDP of the current call has gone to the peer.
    forwarded: bool,
    pending: Option<Pending>,
    /// An offer was forwarded to this handle (so an answer from it is expected).
    got_offer: bool,
    /// A PeerConnection exists on the browser side as far as we can tell.
    has_pc: bool,
    /// The SDP of the current message carries all its candidates (no trickle).
    jsep_complete: bool,
}

impl Handle {
    fn new(session_id: u64) -> Self {
        Self {
            session_id,
            username: None,
            peer: None,
            call: CallState::Idle,
            cands: Vec::new(),
            completed: false,
            forwarded: false,
            pending: None,
            got_offer: false,
            has_pc: false,
            jsep_complete: false,
        }
    }

    fn reset_call(&mut self) {
        self.peer = None;
        self.call = CallState::Idle;
        self.cands.clear();
        self.completed = false;
        self.forwarded = false;
        self.pending = None;
        self.got_offer = false;
        self.has_pc = false;
    }
}

/// What a deadline in the timer heap is for. Entries are checked when they fall due
/// and skipped when stale (the session or handle is gone or its deadline moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Session idle timeout (re-armed at `last_activity + session_timeout` when the
    /// session was active since the entry was pushed).
    Session(u64),
    /// Reclaim deadline of a session whose WebSocket closed.
    Orphan(u64),
    /// Candidate deadline of a handle's held SDP.
    Pending(u64),
}

/// Parsed addressing of a request.
struct Req<'a> {
    root: &'a Map<String, Value>,
    verb: String,
    tx: &'a str,
    session_id: u64,
}

/// Outcome of an Admin API request.
#[derive(Debug)]
pub struct AdminReply {
    /// The JSON reply.
    pub reply: Value,
    /// The token store changed and should be persisted.
    pub tokens_changed: bool,
}

/// Why a long poll was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongPollError {
    /// Wrong or missing token/apisecret (HTTP 403).
    Unauthorized,
    /// No such session (HTTP 404).
    NoSession,
}

/// The Janus core state machine.
pub struct Core {
    cfg: CoreConfig,
    sessions: HashMap<u64, Session>,
    handles: HashMap<u64, Handle>,
    tokens: Box<dyn TokenStore>,
    registry: Box<dyn UserRegistry>,
    rng: StdRng,
    outbox: Vec<Output>,
    metrics: Metrics,
    next_token_sweep: Option<Instant>,
    /// Deadlines, earliest first: the cost of the timers is proportional to what falls
    /// due, not to the number of sessions and handles.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// A deadline earlier than every other was armed since the last
    /// [`Core::take_timer_moved`]: the shell's timer must wake sooner.
    timer_moved: bool,
    tokens_dirty: bool,
    /// Live sessions per creating token and per owning WebSocket (for the caps; entries
    /// at 0 are removed).
    per_token: HashMap<String, usize>,
    per_conn: HashMap<ConnId, usize>,
    /// Short-lived tokens minted for the test call page: token → expiry (unix secs).
    /// Not persisted and not in the Admin API's token list; they allow
    /// janus.plugin.videocall only.
    test_tokens: HashMap<String, u64>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sessions", &self.sessions.len())
            .field("handles", &self.handles.len())
            .finish_non_exhaustive()
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A videocall `hangup` result; `username` is omitted when unknown (as Janus does).
fn hangup_result(username: Option<&str>, reason: &str) -> Value {
    match username {
        Some(u) => json!({"event": "hangup", "username": u, "reason": reason}),
        None => json!({"event": "hangup", "reason": reason}),
    }
}

/// A videocall request refused: the `error_code` and `error` text of the plugin event.
#[derive(Debug)]
struct PluginError {
    code: u16,
    reason: String,
}

impl PluginError {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// 475, as Janus names a missing field.
    fn missing(key: &str) -> Self {
        Self::new(475, format!("Missing mandatory element ({key})"))
    }

    /// 474, as Janus names a field of the wrong type; `expected` reads "a string" etc.
    fn wrong_type(key: &str, expected: &str) -> Self {
        Self::new(
            474,
            format!("Invalid element type ({key} should be {expected})"),
        )
    }
}

/// A mandatory string field of a videocall request body.
fn str_field(body: &Map<String, Value>, key: &str) -> Result<String, PluginError> {
    match body.get(key) {
        None => Err(PluginError::missing(key)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(PluginError::wrong_type(key, "a string")),
    }
}

/// An optional field of a videocall request body: absent is fine, present must pass `valid`.
fn optional_field(
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

/// A mandatory string field of a Janus API request (or, with `jsep`, of its `jsep`
/// object), or the error code and reason Janus answers: 456 when it is missing,
/// 467 when it is not a string.
fn janus_str<'a>(
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
    /// A new core with the given stores.
    pub fn new(
        cfg: CoreConfig,
        tokens: Box<dyn TokenStore>,
        registry: Box<dyn UserRegistry>,
        metrics: Metrics,
    ) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            handles: HashMap::new(),
            tokens,
            registry,
            rng: StdRng::from_os_rng(),
            outbox: Vec::new(),
            metrics,
            next_token_sweep: None,
            timers: BinaryHeap::new(),
            timer_moved: false,
            per_token: HashMap::new(),
            per_conn: HashMap::new(),
            test_tokens: HashMap::new(),
            tokens_dirty: false,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Replaces the settings (configuration reload). Each is read where it is used, so
    /// the new values apply from the next request or timer started; existing sessions,
    /// handles and buffered candidates stay (a lowered cap refuses new ones only).
    /// `session_timeout` must not change: each open session's timer was armed with it.
    pub fn set_config(&mut self, cfg: CoreConfig) {
        self.cfg = cfg;
    }

    /// Takes the queued outputs (events and closed sessions), in order.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outbox)
    }

    /// (sessions, handles, registered users, tokens) for gauges.
    pub fn stats(&self) -> (usize, usize, usize, usize) {
        (
            self.sessions.len(),
            self.handles.len(),
            self.registry.len(),
            self.tokens.len(),
        )
    }

    /// Snapshot of the token store if it changed since the last call.
    pub fn take_token_snapshot(&mut self) -> Option<TokenFile> {
        if self.tokens_dirty {
            self.tokens_dirty = false;
            Some(self.tokens.snapshot())
        } else {
            None
        }
    }

    /// Snapshot of the token store.
    pub fn token_snapshot(&self) -> TokenFile {
        self.tokens.snapshot()
    }

    /// Sessions owned by the WebSocket `conn` (for its idle timeout).
    pub fn conn_sessions(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    /// Owner of a session, if it exists.
    pub fn session_owner(&self, session_id: u64) -> Option<Source> {
        self.sessions.get(&session_id).map(|s| s.owner)
    }

    /// True when a token or api secret is needed for requests.
    pub fn auth_required(&self) -> bool {
        self.cfg.token_auth || self.cfg.api_secret.is_some()
    }

    /// Checks credentials the way the core does for requests (used by `/turn-credentials`
    /// and long polls): a valid apisecret or a valid stored token.
    pub fn check_credentials(
        &mut self,
        token: Option<&str>,
        apisecret: Option<&str>,
        unix: u64,
    ) -> bool {
        if !self.auth_required() {
            return true;
        }
        if let (Some(secret), Some(given)) = (self.cfg.api_secret.as_deref(), apisecret)
            && ct_eq(secret, given)
        {
            return true;
        }
        if self.cfg.token_auth
            && let Some(t) = token
            && self.tokens.check(t, unix).is_some()
        {
            return true;
        }
        token.is_some_and(|t| self.test_token_valid(t, unix))
    }

    /// Adds a test-page token valid until `expires_unix` (janus.plugin.videocall only).
    pub fn add_test_token(&mut self, token: &str, expires_unix: u64, unix: u64) {
        self.test_tokens.retain(|_, e| *e > unix);
        self.test_tokens.insert(token.to_string(), expires_unix);
    }

    /// Number of live test-page tokens.
    pub fn test_tokens(&self) -> usize {
        self.test_tokens.len()
    }

    fn test_token_valid(&mut self, token: &str, unix: u64) -> bool {
        match self.test_tokens.get(token) {
            Some(&e) if e > unix => true,
            Some(_) => {
                self.test_tokens.remove(token);
                false
            }
            None => false,
        }
    }

    /// Arms a deadline.
    fn arm(&mut self, at: Instant, timer: Timer) {
        if self.poll_timeout().is_none_or(|t| at < t) {
            self.timer_moved = true;
        }
        self.timers.push(Reverse((at, timer)));
    }

    /// True (once) when a deadline earlier than the previous [`Core::poll_timeout`] was
    /// armed by a request: the shell re-reads `poll_timeout` then.
    pub fn take_timer_moved(&mut self) -> bool {
        std::mem::take(&mut self.timer_moved)
    }

    fn new_id(&mut self) -> u64 {
        loop {
            let id = self.rng.random_range(1..MAX_ID);
            if !self.sessions.contains_key(&id) && !self.handles.contains_key(&id) {
                return id;
            }
        }
    }

    fn err(&self, session_id: u64, tx: Option<&str>, code: u16, reason: &str) -> Value {
        self.metrics.error(code);
        error_reply(session_id, tx, code, reason)
    }

    fn emit(&mut self, session_id: u64, msg: Value) {
        if let Some(s) = self.sessions.get(&session_id) {
            self.outbox.push(Output::Event {
                owner: s.owner,
                session_id,
                msg,
            });
        }
    }

    fn emit_to_handle(&mut self, handle_id: u64, mut msg: Value) {
        let Some(h) = self.handles.get(&handle_id) else {
            return;
        };
        let sid = h.session_id;
        if let Value::Object(m) = &mut msg {
            m.insert("session_id".into(), sid.into());
            m.insert("sender".into(), handle_id.into());
        }
        self.emit(sid, msg);
    }

    fn plugin_event(&mut self, handle_id: u64, tx: Option<&str>, data: Value, jsep: Option<Value>) {
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

    fn plugin_result(&mut self, handle_id: u64, tx: Option<&str>, result: Value) {
        self.plugin_event(
            handle_id,
            tx,
            json!({"videocall": "event", "result": result}),
            None,
        );
    }

    fn plugin_error(&mut self, handle_id: u64, tx: &str, code: u16, reason: &str) {
        self.metrics.error(code);
        self.plugin_event(
            handle_id,
            Some(tx),
            json!({"videocall": "event", "error_code": code, "error": reason}),
            None,
        );
    }

    fn core_hangup(&mut self, handle_id: u64, reason: &str) {
        self.emit_to_handle(handle_id, json!({"janus": "hangup", "reason": reason}));
    }

    // ------------------------------------------------------------------ requests

    /// Handles one Janus API request given as text (WebSocket frame).
    pub fn handle_text(&mut self, now: Instant, unix: u64, source: Source, text: &str) -> Value {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.handle_value(now, unix, source, v),
            Err(e) => {
                self.metrics.request("other");
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
                self.metrics.request("other");
                return self.err(session_id, None, code, &reason);
            }
        };
        self.metrics.request(&verb);
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

    /// The token a `create` was authorised by, for the per-token cap: None when no
    /// authentication is configured or the api secret authorised it.
    fn session_token(&self, req: &Req<'_>) -> Option<String> {
        if !self.auth_required() {
            return None;
        }
        let via_secret = match (
            self.cfg.api_secret.as_deref(),
            req.root.get("apisecret").and_then(Value::as_str),
        ) {
            (Some(secret), Some(given)) => ct_eq(secret, given),
            _ => false,
        };
        if via_secret {
            return None;
        }
        req.root
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The refusal when one more session for `owner`/`token` would pass a cap.
    fn over_session_cap(
        &self,
        owner: Source,
        token: Option<&str>,
    ) -> Option<fn(&Self, &str) -> Value> {
        let cap = self.cfg.max_sessions_per_token;
        if cap > 0
            && let Some(t) = token
            && self.per_token.get(t).copied().unwrap_or(0) >= cap
        {
            return Some(|core: &Self, tx: &str| {
                core.metrics
                    .sessions_refused
                    .with_label_values(&["token"])
                    .inc();
                core.err(
                    0,
                    Some(tx),
                    490,
                    "Maximum number of sessions for this token reached",
                )
            });
        }
        let cap = self.cfg.max_sessions_per_connection;
        if cap > 0
            && let Source::Ws(c) = owner
            && self.per_conn.get(&c).copied().unwrap_or(0) >= cap
        {
            return Some(|core: &Self, tx: &str| {
                core.metrics
                    .sessions_refused
                    .with_label_values(&["connection"])
                    .inc();
                core.err(
                    0,
                    Some(tx),
                    490,
                    "Maximum number of sessions for this connection reached",
                )
            });
        }
        None
    }

    /// Counts a session in (`add`) or out of the per-token and per-connection tallies.
    fn count_session(&mut self, owner: Source, token: Option<&str>, add: bool) {
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

    fn check_secret(&mut self, req: &Req<'_>, unix: u64) -> bool {
        let token = req.root.get("token").and_then(Value::as_str);
        let secret = req.root.get("apisecret").and_then(Value::as_str);
        self.check_credentials(token, secret, unix)
    }

    fn server_info(&self, tx: &str) -> Value {
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

    fn root_request(&mut self, now: Instant, unix: u64, source: Source, req: &Req<'_>) -> Value {
        match req.verb.as_str() {
            "info" => self.server_info(req.tx),
            "ping" => json!({"janus": "pong", "transaction": req.tx}),
            "create" => {
                if !self.check_secret(req, unix) {
                    return self.err(0, Some(req.tx), 403, UNAUTHORIZED);
                }
                let wanted = req.root.get("id").and_then(Value::as_u64).unwrap_or(0);
                if self.sessions.len() >= self.cfg.max_sessions {
                    self.metrics
                        .sessions_refused
                        .with_label_values(&["global"])
                        .inc();
                    return self.err(0, Some(req.tx), 490, "Maximum number of sessions reached");
                }
                let token = self.session_token(req);
                if let Some(refused) = self.over_session_cap(source, token.as_deref()) {
                    return refused(self, req.tx);
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

    fn wrong_path(&self, req: &Req<'_>) -> Value {
        self.err(
            req.session_id,
            Some(req.tx),
            457,
            &format!("Unhandled request '{}' at this path", req.verb),
        )
    }

    fn session_request(
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
                self.destroy_session(now, sid, "hangup");
                success
            }
            "detach" => {
                let Some(hid) = handle else {
                    return self.wrong_path(req);
                };
                self.detach_handle(now, hid, "detached");
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
                let peer = self.teardown_call(now, hid, "Remote WebRTC hangup", "hangup", false);
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
                    if let Some(refused) = self.over_session_cap(source, None) {
                        return refused(self, tx);
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

    // ------------------------------------------------------------------ lifetimes

    fn destroy_session(&mut self, now: Instant, sid: u64, reason: &str) {
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

    fn detach_handle(&mut self, now: Instant, hid: u64, reason: &str) {
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

    /// Ends the call `hid` is in (if any): the peer gets a plugin `hangup` with
    /// `peer_reason` and, if its browser holds a PeerConnection for the call, a core
    /// `hangup` — plus, with `peer_extra`, the "Remote WebRTC hangup" event Janus sends when
    /// it closes that PeerConnection. Resets both handles' call state. Returns the peer's
    /// username when there was a peer.
    fn teardown_call(
        &mut self,
        _now: Instant,
        hid: u64,
        peer_reason: &str,
        metric: &str,
        peer_extra: bool,
    ) -> Option<Option<String>> {
        let h = self.handles.get_mut(&hid)?;
        let peer = h.peer;
        let own_name = h.username.clone();
        h.reset_call();
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
        self.metrics.calls_ended.with_label_values(&[metric]).inc();
        Some(peer_name)
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
                self.destroy_session(now, sid, "disconnect");
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
        self.destroy_session(now, session_id, "disconnect");
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
        self.metrics.request("longpoll");
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
                        self.destroy_session(now, sid, "timeout");
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
                        self.destroy_session(now, sid, "disconnect");
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

    /// Drops tokens idle for longer than `token_max_idle` (run once at start too).
    pub fn expire_tokens(&mut self, unix: u64) -> usize {
        if self.cfg.token_max_idle.is_zero() {
            return 0;
        }
        let n = self.tokens.expire(unix, self.cfg.token_max_idle.as_secs());
        if n > 0 {
            self.tokens_dirty = true;
        }
        n
    }

    // ------------------------------------------------------------------ videocall

    fn message(&mut self, now: Instant, req: &Req<'_>, hid: u64) -> Value {
        let sid = req.session_id;
        let tx = req.tx;
        let body = match req.root.get("body") {
            None => return self.err(sid, Some(tx), 456, "Missing mandatory element (body)"),
            Some(Value::Object(b)) => b.clone(),
            Some(_) => {
                return self.err(
                    sid,
                    Some(tx),
                    467,
                    "Invalid element type (body should be an object)",
                );
            }
        };
        let mut jsep: Option<(String, String, bool)> = None;
        if let Some(j) = req.root.get("jsep") {
            let Some(j) = j.as_object() else {
                return self.err(sid, Some(tx), 455, "Invalid jsep object");
            };
            let type_and_sdp = janus_str(j, "type", true)
                .and_then(|t| Ok((t.to_string(), janus_str(j, "sdp", true)?.to_string())));
            let (jtype, sdp_text) = match type_and_sdp {
                Ok(ts) => ts,
                Err((code, reason)) => return self.err(sid, Some(tx), code, &reason),
            };
            let lower = jtype.to_ascii_lowercase();
            if lower != "offer" && lower != "answer" {
                return self.err(
                    sid,
                    Some(tx),
                    464,
                    &format!("JSEP error: unknown message type '{jtype}'"),
                );
            }
            if !sdp::looks_like_sdp(&sdp_text) {
                return self.err(sid, Some(tx), 465, "Invalid SDP (doesn't start with v=)");
            }
            if lower == "answer" && !self.handles.get(&hid).is_some_and(|h| h.got_offer) {
                return self.err(sid, Some(tx), 469, "Unexpected ANSWER (did we offer?)");
            }
            let e2ee = j.get("e2ee").and_then(Value::as_bool).unwrap_or(false);
            // A client that does not trickle (janus.js sends `"trickle": false`) or whose
            // SDP already ends its candidates must not wait for the candidate deadline.
            let complete = j.get("trickle").and_then(Value::as_bool) == Some(false)
                || sdp_text.contains("a=end-of-candidates");
            if let Some(h) = self.handles.get_mut(&hid) {
                h.jsep_complete = complete;
            }
            jsep = Some((lower, sdp_text, e2ee));
        }
        self.videocall(now, hid, tx, &body, jsep);
        if let Some(h) = self.handles.get_mut(&hid) {
            h.jsep_complete = false;
        }
        json!({"janus": "ack", "session_id": sid, "transaction": tx})
    }

    fn videocall(
        &mut self,
        now: Instant,
        hid: u64,
        tx: &str,
        body: &Map<String, Value>,
        jsep: Option<(String, String, bool)>,
    ) {
        if let Err(e) = self.videocall_request(now, hid, tx, body, jsep) {
            self.plugin_error(hid, tx, e.code, &e.reason);
        }
    }

    /// One videocall request; a refusal comes back as the plugin error to send.
    fn videocall_request(
        &mut self,
        now: Instant,
        hid: u64,
        tx: &str,
        body: &Map<String, Value>,
        jsep: Option<(String, String, bool)>,
    ) -> Result<(), PluginError> {
        let request = str_field(body, "request")?.to_ascii_lowercase();
        let (username, peer, call) = match self.handles.get(&hid) {
            Some(h) => (h.username.clone(), h.peer, h.call),
            None => return Ok(()),
        };
        match request.as_str() {
            "list" => {
                let list = self.registry.usernames();
                self.plugin_result(hid, Some(tx), json!({"list": list}));
            }
            "register" => {
                if let Some(u) = username {
                    return Err(PluginError::new(477, format!("Already registered ({u})")));
                }
                let name = str_field(body, "username")?;
                let max = self.cfg.max_username_bytes;
                if name.len() > max {
                    return Err(PluginError::new(
                        474,
                        format!("Invalid element (username longer than {max} bytes)"),
                    ));
                }
                if !self.registry.register(&name, hid) {
                    return Err(PluginError::new(
                        476,
                        format!("Username '{name}' already taken"),
                    ));
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
                    return Err(PluginError::new(473, "Register a username first"));
                };
                if peer.is_some() || call != CallState::Idle {
                    return Err(PluginError::new(480, "Already in a call"));
                }
                let target = str_field(body, "username")?;
                if target == own {
                    return Err(PluginError::new(
                        479,
                        "You can't call yourself... use the EchoTest for that",
                    ));
                }
                let Some(callee) = self
                    .registry
                    .lookup(&target)
                    .filter(|c| self.handles.contains_key(c))
                else {
                    return Err(PluginError::new(
                        478,
                        format!("Username '{target}' doesn't exist"),
                    ));
                };
                self.metrics.calls_started.inc();
                let callee_busy = self
                    .handles
                    .get(&callee)
                    .is_some_and(|c| c.peer.is_some() || c.call != CallState::Idle);
                if callee_busy {
                    self.metrics.calls_ended.with_label_values(&["busy"]).inc();
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
                let Some((jtype, sdp_text, e2ee)) = jsep else {
                    self.metrics.calls_ended.with_label_values(&["error"]).inc();
                    return Err(PluginError::new(482, "Missing SDP"));
                };
                if jtype != "offer" {
                    self.metrics.calls_ended.with_label_values(&["error"]).inc();
                    return Err(PluginError::new(483, "Error parsing offer: not an offer"));
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
                self.plugin_result(hid, Some(tx), json!({"event": "calling"}));
                self.queue_forward(now, hid, ForwardKind::IncomingCall, jtype, sdp_text, e2ee);
            }
            "accept" => {
                let Some(p) = peer.filter(|_| call == CallState::Incoming) else {
                    return Err(PluginError::new(481, "No incoming call to accept"));
                };
                let Some((jtype, sdp_text, e2ee)) = jsep else {
                    return Err(PluginError::new(482, "Missing SDP"));
                };
                if jtype != "answer" {
                    return Err(PluginError::new(483, "Error parsing answer: not an answer"));
                }
                if let Some(h) = self.handles.get_mut(&hid) {
                    h.call = CallState::Connected;
                    h.has_pc = true;
                    h.got_offer = false;
                }
                if let Some(ph) = self.handles.get_mut(&p) {
                    ph.call = CallState::Connected;
                }
                self.metrics.calls_connected.inc();
                self.plugin_result(hid, Some(tx), json!({"event": "accepted"}));
                self.queue_forward(now, hid, ForwardKind::Accepted, jtype, sdp_text, e2ee);
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
                            474,
                            format!("Invalid value ({key} should be 0, 1 or 2)"),
                        ));
                    }
                }
                if let Some(v) = body.get("fallback")
                    && v.as_u64().is_none()
                {
                    return Err(PluginError::new(
                        474,
                        "Invalid value (fallback should be a positive integer)",
                    ));
                }
                self.plugin_result(hid, Some(tx), json!({"event": "set"}));
                if let (Some((jtype, sdp_text, e2ee)), Some(_)) = (jsep, peer) {
                    if jtype == "answer"
                        && let Some(h) = self.handles.get_mut(&hid)
                    {
                        h.got_offer = false;
                    }
                    if let Some(h) = self.handles.get_mut(&hid) {
                        h.has_pc = true;
                    }
                    self.queue_forward(now, hid, ForwardKind::Update, jtype, sdp_text, e2ee);
                }
            }
            "hangup" => {
                let reason = body
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("We did the hangup")
                    .to_string();
                let had_pc = self.handles.get(&hid).is_some_and(|h| h.has_pc);
                let peer = self.teardown_call(now, hid, &reason, "hangup", true);
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
                return Err(PluginError::new(472, format!("Unknown request ({other})")));
            }
        }
        Ok(())
    }

    /// Holds an SDP from `hid` until its candidates are complete or the deadline passes
    /// (first SDP of a call), or forwards it right away (renegotiation).
    fn queue_forward(
        &mut self,
        now: Instant,
        hid: u64,
        kind: ForwardKind,
        jsep_type: String,
        sdp_text: String,
        e2ee: bool,
    ) {
        let wait = self.cfg.candidate_wait;
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        if !h.forwarded {
            // Candidates (and their `completed`) left over from an earlier
            // PeerConnection of this handle — e.g. trickled after a busy reply — carry
            // another ufrag: drop them, and do not trust a `completed` that no current
            // candidate backs.
            let ufrags = sdp::sdp_ufrags(&sdp_text);
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
        let immediate = h.forwarded || h.completed || h.jsep_complete || wait.is_zero();
        h.jsep_complete = false;
        h.pending = Some(Pending {
            kind,
            jsep_type,
            sdp: sdp_text,
            e2ee,
            since: now,
            deadline: now + wait,
        });
        if immediate {
            self.flush_pending(now, hid);
        } else {
            self.arm(now + wait, Timer::Pending(hid));
        }
    }

    fn flush_pending(&mut self, now: Instant, hid: u64) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        let Some(p) = h.pending.take() else {
            return;
        };
        let Some(peer) = h.peer else {
            return;
        };
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
        tracing::info!(
            handle = hid,
            peer,
            kind = ?p.kind,
            candidates = h.cands.len(),
            completed = h.completed,
            waited_ms = u64::try_from(now.saturating_duration_since(p.since).as_millis()).unwrap_or(u64::MAX),
            "forwarding SDP with merged candidates"
        );
        h.cands.clear();
        h.forwarded = true;
        let username = h.username.clone();
        let waited = now.saturating_duration_since(p.since);
        self.metrics
            .candidate_wait_ms
            .inc_by(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
        let mut jsep = json!({"type": p.jsep_type, "sdp": merged});
        if p.e2ee {
            jsep["e2ee"] = true.into();
        }
        let result = match p.kind {
            ForwardKind::IncomingCall => json!({"event": "incomingcall", "username": username}),
            ForwardKind::Accepted => json!({"event": "accepted", "username": username}),
            ForwardKind::Update => json!({"event": "update"}),
        };
        if let Some(ph) = self.handles.get_mut(&peer) {
            // the peer's browser now negotiates a PeerConnection for this call
            ph.has_pc = true;
            if p.jsep_type == "offer" {
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
    fn trickle(&mut self, now: Instant, hid: u64, items: &[Value]) -> Result<(), String> {
        let max = self.cfg.max_candidates;
        let max_bytes = self.cfg.max_candidate_bytes;
        if items
            .iter()
            .any(|i| serde_json::to_string(i).map_or(usize::MAX, |t| t.len()) > max_bytes)
        {
            self.metrics
                .candidates_refused
                .with_label_values(&["size"])
                .inc();
            return Err(format!(
                "Invalid element type (candidate larger than {max_bytes} bytes)"
            ));
        }
        let max_total = self.cfg.max_candidate_bytes_per_handle;
        let mut over_total = false;
        let mut over_count = 0u64;
        let mut to_peer: Vec<Value> = Vec::new();
        let mut flush = false;
        let peer;
        {
            let Some(h) = self.handles.get_mut(&hid) else {
                return Ok(());
            };
            let mut buffered: usize = h.cands.iter().map(Candidate::bytes).sum();
            peer = h.peer;
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
            self.metrics
                .candidates_refused
                .with_label_values(&["count"])
                .inc_by(over_count);
        }
        if flush {
            self.flush_pending(now, hid);
        }
        if let Some(p) = peer {
            for c in to_peer {
                self.emit_to_handle(p, json!({"janus": "trickle", "candidate": c}));
            }
        }
        if over_total {
            self.metrics
                .candidates_refused
                .with_label_values(&["handle_bytes"])
                .inc();
            return Err(format!(
                "Invalid element type (candidates of this handle exceed {max_total} bytes)"
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ admin API

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

    fn admin_inner(
        &mut self,
        now: Instant,
        unix: u64,
        v: Value,
        path_session: Option<u64>,
    ) -> (Value, bool) {
        self.metrics.request("admin");
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
                    self.destroy_session(now, session_id, "hangup");
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
        let token_arg = |core: &Self| -> Result<String, Value> {
            janus_str(root, "token", false)
                .map(str::to_string)
                .map_err(|(code, reason)| core.err(0, Some(tx), code, &reason))
        };
        let plugins_arg = |core: &Self, required: bool| -> Result<Option<Vec<String>>, Value> {
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

    /// Session ids with their handle ids (for debugging/tests).
    pub fn sessions(&self) -> BTreeMap<u64, Vec<u64>> {
        self.sessions
            .iter()
            .map(|(id, s)| (*id, s.handles.iter().copied().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The core without sockets or tokio: time is a parameter.
    use super::*;
    use crate::store::{MemoryRegistry, MemoryTokenStore};

    const OFFER: &str =
        "v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u1\r\na=mid:0\r\n";

    fn core(cfg: CoreConfig) -> Core {
        Core::new(
            cfg,
            Box::new(MemoryTokenStore::new()),
            Box::new(MemoryRegistry::new()),
            Metrics::new(),
        )
    }

    fn req(c: &mut Core, now: Instant, conn: ConnId, v: Value) -> Value {
        c.handle_value(now, 0, Source::Ws(conn), v)
    }

    fn events(c: &mut Core) -> Vec<(Source, Value)> {
        c.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Event { owner, msg, .. } => Some((owner, msg)),
                Output::SessionClosed { .. } => None,
            })
            .collect()
    }

    /// (session, handle) registered as `name` on connection `conn`.
    /// A videocall `message` (transaction "t") on session `s`, handle `h`.
    fn message(s: u64, h: u64, body: Value) -> Value {
        json!({"janus": "message", "transaction": "t", "session_id": s, "handle_id": h, "body": body})
    }

    fn with_jsep(mut msg: Value, jsep: Value) -> Value {
        msg["jsep"] = jsep;
        msg
    }

    /// The caller's `call` to bob (transaction "call") with `jsep`.
    fn call_bob(s: u64, h: u64, jsep: Value) -> Value {
        let mut m = message(s, h, json!({"request": "call", "username": "bob"}));
        m["transaction"] = "call".into();
        with_jsep(m, jsep)
    }

    fn party(c: &mut Core, now: Instant, conn: ConnId, name: &str) -> (u64, u64) {
        let s = req(c, now, conn, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
            .as_u64()
            .unwrap();
        let h = req(
            c,
            now,
            conn,
            json!({"janus": "attach", "transaction": "a", "session_id": s, "plugin": VIDEOCALL}),
        )["data"]["id"]
            .as_u64()
            .unwrap();
        let r = req(
            c,
            now,
            conn,
            json!({"janus": "message", "transaction": "r", "session_id": s, "handle_id": h, "body": {"request": "register", "username": name}}),
        );
        assert_eq!(r["janus"], "ack");
        events(c);
        (s, h)
    }

    #[test]
    fn test_page_tokens_work_until_they_expire_and_are_not_stored() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            token_auth: true,
            ..CoreConfig::default()
        });
        let unix = 1_000_000;
        c.add_test_token("test-abc", unix + 600, unix);
        let create = |c: &mut Core, unix: u64, tok: &str| {
            c.handle_value(
                t0,
                unix,
                Source::Ws(1),
                json!({"janus": "create", "transaction": "c", "token": tok}),
            )
        };
        assert_eq!(create(&mut c, unix, "test-abc")["janus"], "success");
        assert_eq!(create(&mut c, unix + 599, "test-abc")["janus"], "success");
        assert_eq!(create(&mut c, unix, "test-other")["error"]["code"], 403);
        // not in the persistent store nor the Admin API's list
        assert_eq!(c.token_snapshot().tokens.len(), 0);
        assert_eq!(c.test_tokens(), 1);
        // expired: refused, and swept by the timer
        assert_eq!(create(&mut c, unix + 600, "test-abc")["error"]["code"], 403);
        c.add_test_token("test-def", unix + 10, unix);
        c.handle_timeout(t0, unix + 11);
        assert_eq!(c.test_tokens(), 0);
    }

    #[test]
    fn timers_hold_one_entry_per_session_and_skip_idle_ones() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            session_timeout: Duration::from_secs(600),
            ..CoreConfig::default()
        });
        for i in 0..1000 {
            party(&mut c, t0, i, &format!("u{i}"));
        }
        assert_eq!(c.timers.len(), 1000);
        // a wake before any deadline pops nothing
        c.handle_timeout(t0 + Duration::from_secs(1), 0);
        assert_eq!(c.timers.len(), 1000);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(600)));
        // held SDPs arm their own deadline, earlier than the sessions': the shell is told
        let _ = c.take_timer_moved();
        let (mut c, _, _, _, _) = trickle_offer(t0, Duration::from_millis(500));
        assert!(c.take_timer_moved());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn session_timeout_is_driven_by_poll_timeout() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig::default());
        let (s, _) = party(&mut c, t0, 1, "alice");
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        c.handle_timeout(t0 + Duration::from_secs(59), 0);
        assert!(events(&mut c).is_empty());
        let r = req(
            &mut c,
            t0 + Duration::from_secs(59),
            1,
            json!({"janus": "keepalive", "transaction": "k", "session_id": s}),
        );
        assert_eq!(r["janus"], "ack");
        // the heap re-arms lazily: the old deadline wakes the timer once, finds the
        // session active, and moves it to last_activity + 60 s
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        c.handle_timeout(t0 + Duration::from_secs(60), 0);
        assert!(events(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(119)));
        c.handle_timeout(t0 + Duration::from_secs(118), 0);
        assert!(events(&mut c).is_empty());
        c.handle_timeout(t0 + Duration::from_secs(119), 0);
        let ev = events(&mut c);
        assert_eq!(
            ev,
            vec![(Source::Ws(1), json!({"janus": "timeout", "session_id": s}))]
        );
        assert_eq!(
            c.stats(),
            (0, 0, 0, 0),
            "session, handle and username are gone"
        );
    }

    /// Alice (conn 1) calls Bob (conn 2) with a trickle offer at `t0`; returns the core,
    /// Alice's session and handle, Bob's handle and the reply to `call`.
    fn trickle_offer(t0: Instant, wait: Duration) -> (Core, u64, u64, u64, Value) {
        let mut c = core(CoreConfig {
            candidate_wait: wait,
            ..CoreConfig::default()
        });
        let (sa, ha) = party(&mut c, t0, 1, "alice");
        let (_sb, hb) = party(&mut c, t0, 2, "bob");
        let call = call_bob(sa, ha, json!({"type": "offer", "sdp": OFFER}));
        let reply = req(&mut c, t0, 1, call);
        (c, sa, ha, hb, reply)
    }

    /// A trickle of one candidate line for mid 0.
    fn trickle_candidate(s: u64, h: u64, line: &str) -> Value {
        json!({"janus": "trickle", "transaction": "t", "session_id": s, "handle_id": h,
            "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}})
    }

    #[test]
    fn offer_waits_for_candidates_until_completed_or_deadline() {
        let t0 = Instant::now();
        let (mut c, sa, ha, hb, reply) = trickle_offer(t0, Duration::from_millis(500));
        assert_eq!(reply["janus"], "ack");
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1, "only `calling` to alice: {ev:?}");
        assert_eq!(ev[0].1["plugindata"]["data"]["result"]["event"], "calling");
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        // a candidate arrives; still held
        let tr = trickle_candidate(sa, ha, "candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag u1");
        req(&mut c, t0 + Duration::from_millis(100), 1, tr);
        c.handle_timeout(t0 + Duration::from_millis(499), 0);
        assert!(events(&mut c).is_empty());
        // deadline: forwarded with the candidate, without end-of-candidates
        c.handle_timeout(t0 + Duration::from_millis(500), 0);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, Source::Ws(2));
        assert_eq!(ev[0].1["sender"], hb);
        let sdp = ev[0].1["jsep"]["sdp"].as_str().unwrap();
        assert!(sdp.contains("a=candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag u1\r\n"));
        assert!(!sdp.contains("end-of-candidates"));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn completed_overtaking_the_last_candidate_does_not_empty_the_sdp() {
        // janus.js over HTTP sends every trickle as its own POST; `completed` can be
        // processed before the candidate it closes. The offer must still carry it.
        let t0 = Instant::now();
        let (mut c, sa, ha, hb, _) = trickle_offer(t0, Duration::from_millis(1000));
        events(&mut c);
        let done = json!({"janus": "trickle", "transaction": "d", "session_id": sa, "handle_id": ha,
            "candidate": {"completed": true}});
        req(&mut c, t0 + Duration::from_millis(150), 1, done);
        assert!(events(&mut c).is_empty(), "held: no candidate yet");
        let tr = trickle_candidate(sa, ha, "candidate:1 1 udp 1 127.0.0.1 9 typ relay ufrag u1");
        req(&mut c, t0 + Duration::from_millis(151), 1, tr);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].1["sender"], hb);
        let sdp = ev[0].1["jsep"]["sdp"].as_str().unwrap();
        assert!(
            sdp.contains("a=candidate:1 1 udp 1 127.0.0.1 9 typ relay ufrag u1\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=end-of-candidates"), "{sdp}");
    }

    #[test]
    fn non_trickle_offers_are_forwarded_at_once() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig::default());
        let (sa, ha) = party(&mut c, t0, 1, "alice");
        party(&mut c, t0, 2, "bob");
        let call = call_bob(
            sa,
            ha,
            json!({"type": "offer", "sdp": OFFER, "trickle": false}),
        );
        req(&mut c, t0, 1, call);
        let ev = events(&mut c);
        assert!(
            ev.iter().any(|(o, m)| *o == Source::Ws(2)
                && m["plugindata"]["data"]["result"]["event"] == "incomingcall"),
            "{ev:?}"
        );
    }

    #[test]
    fn orphaned_sessions_wait_for_claim_then_die() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            reclaim_timeout: Duration::from_secs(5),
            ..CoreConfig::default()
        });
        let (s1, _) = party(&mut c, t0, 1, "alice");
        let (s2, _) = party(&mut c, t0, 1, "bob");
        c.connection_closed(t0, 1);
        assert_eq!(c.stats().0, 2, "kept for a claim");
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        // one is claimed by a new connection in time
        let r = req(
            &mut c,
            t0 + Duration::from_secs(2),
            7,
            json!({"janus": "claim", "transaction": "c", "session_id": s1}),
        );
        assert_eq!(r["janus"], "success");
        c.handle_timeout(t0 + Duration::from_secs(5), 0);
        assert_eq!(c.session_owner(s1), Some(Source::Ws(7)));
        assert_eq!(c.session_owner(s2), None, "unclaimed session destroyed");
    }

    #[test]
    fn one_token_or_connection_cannot_take_every_session() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            token_auth: true,
            max_sessions_per_token: 3,
            max_sessions_per_connection: 2,
            ..CoreConfig::default()
        });
        c.add_test_token("tA", 100, 0);
        c.add_test_token("tB", 100, 0);
        let create = |c: &mut Core, conn: ConnId, token: &str| {
            req(
                c,
                t0,
                conn,
                json!({"janus": "create", "transaction": "c", "token": token}),
            )
        };
        // token A: 3 sessions over 3 connections, the 4th is refused
        for conn in 1..=3 {
            assert_eq!(create(&mut c, conn, "tA")["janus"], "success");
        }
        let r = create(&mut c, 4, "tA");
        assert_eq!(
            r["error"],
            json!({"code": 490, "reason": "Maximum number of sessions for this token reached"})
        );
        // token B is unaffected, but one connection holds at most 2
        assert_eq!(create(&mut c, 5, "tB")["janus"], "success");
        assert_eq!(create(&mut c, 5, "tB")["janus"], "success");
        let r = create(&mut c, 5, "tB");
        assert_eq!(
            r["error"]["reason"],
            "Maximum number of sessions for this connection reached"
        );
        assert_eq!(create(&mut c, 6, "tB")["janus"], "success");
        // closing a connection frees its sessions for the token again
        c.connection_closed(t0, 1);
        assert_eq!(create(&mut c, 7, "tA")["janus"], "success");
        let m = c.metrics.render();
        for line in [
            "callrelay_gateway_sessions_refused_total{limit=\"token\"} 1",
            "callrelay_gateway_sessions_refused_total{limit=\"connection\"} 1",
            "callrelay_gateway_sessions_refused_total{limit=\"global\"} 0",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line}");
        }
        assert!(c.per_token.values().all(|n| *n <= 3));
        // every session destroyed: the tallies are empty again
        for sid in c.sessions.keys().copied().collect::<Vec<_>>() {
            c.destroy_session(t0, sid, "hangup");
        }
        assert!(c.per_token.is_empty() && c.per_conn.is_empty());
    }

    #[test]
    fn session_and_handle_caps_answer_errors() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            max_sessions: 2,
            max_handles_per_session: 1,
            ..CoreConfig::default()
        });
        let (s, _) = party(&mut c, t0, 1, "alice");
        party(&mut c, t0, 1, "bob");
        let r = req(
            &mut c,
            t0,
            1,
            json!({"janus": "create", "transaction": "c3"}),
        );
        assert_eq!(
            r["error"],
            json!({"code": 490, "reason": "Maximum number of sessions reached"})
        );
        let r = req(
            &mut c,
            t0,
            1,
            json!({"janus": "attach", "transaction": "a2", "session_id": s, "plugin": VIDEOCALL}),
        );
        assert_eq!(r["error"]["code"], 461);
        req(
            &mut c,
            t0,
            1,
            json!({"janus": "destroy", "transaction": "d", "session_id": s}),
        );
        let r = req(
            &mut c,
            t0,
            1,
            json!({"janus": "create", "transaction": "c4"}),
        );
        assert_eq!(r["janus"], "success");
    }

    #[test]
    fn closing_a_connection_hangs_up_the_peer_and_frees_the_name() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            candidate_wait: Duration::ZERO,
            ..CoreConfig::default()
        });
        let (sa, ha) = party(&mut c, t0, 1, "alice");
        let (_sb, hb) = party(&mut c, t0, 2, "bob");
        req(
            &mut c,
            t0,
            1,
            call_bob(sa, ha, json!({"type": "offer", "sdp": OFFER})),
        );
        events(&mut c);
        c.connection_closed(t0, 1);
        let ev = events(&mut c);
        let to_bob: Vec<&Value> = ev
            .iter()
            .filter(|(o, _)| *o == Source::Ws(2))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(to_bob.len(), 2, "{ev:?}");
        assert_eq!(
            to_bob[0]["plugindata"]["data"]["result"],
            json!({"event": "hangup", "username": "alice", "reason": "Remote WebRTC hangup"})
        );
        assert_eq!(
            to_bob[1],
            &json!({"janus": "hangup", "session_id": to_bob[1]["session_id"], "sender": hb, "reason": "Close PC"})
        );
        let (_, _, users, _) = c.stats();
        assert_eq!(users, 1, "alice's name is free");
    }

    #[test]
    fn videocall_field_errors_keep_the_janus_codes_and_texts() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig::default());
        let (s, h) = party(&mut c, t0, 1, "alice");
        let cases = [
            (json!({}), 475, "Missing mandatory element (request)"),
            (
                json!({"request": 1}),
                474,
                "Invalid element type (request should be a string)",
            ),
            (
                json!({"request": "call"}),
                475,
                "Missing mandatory element (username)",
            ),
            (
                json!({"request": "call", "username": []}),
                474,
                "Invalid element type (username should be a string)",
            ),
            (
                json!({"request": "set", "audio": "yes"}),
                474,
                "Invalid element type (audio should be a boolean)",
            ),
            (
                json!({"request": "set", "record": 1}),
                474,
                "Invalid element type (record should be a boolean)",
            ),
            (
                json!({"request": "set", "filename": 1}),
                474,
                "Invalid element type (filename should be a string)",
            ),
            (
                json!({"request": "set", "bitrate": -1}),
                474,
                "Invalid element type (bitrate should be a positive integer)",
            ),
            (
                json!({"request": "set", "bitrate": 1.5}),
                474,
                "Invalid element type (bitrate should be a positive integer)",
            ),
            (
                json!({"request": "set", "substream": 3}),
                474,
                "Invalid value (substream should be 0, 1 or 2)",
            ),
            (
                json!({"request": "set", "fallback": "x"}),
                474,
                "Invalid value (fallback should be a positive integer)",
            ),
            (
                json!({"request": "register", "username": "x"}),
                477,
                "Already registered (alice)",
            ),
        ];
        for (body, code, reason) in cases {
            let msg = message(s, h, body.clone());
            assert_eq!(req(&mut c, t0, 1, msg)["janus"], "ack");
            let ev = events(&mut c);
            assert_eq!(ev.len(), 1, "{body}: {ev:?}");
            let data = &ev[0].1["plugindata"]["data"];
            assert_eq!(
                data,
                &json!({"videocall": "event", "error_code": code, "error": reason}),
                "{body}"
            );
        }
        let ok = message(
            s,
            h,
            json!({"request": "set", "audio": true, "filename": "f", "bitrate": 0}),
        );
        assert_eq!(req(&mut c, t0, 1, ok)["janus"], "ack");
        let ev = events(&mut c);
        assert_eq!(
            ev[0].1["plugindata"]["data"]["result"]["event"], "set",
            "{ev:?}"
        );
    }

    #[test]
    fn janus_field_errors_keep_the_janus_codes_and_texts() {
        let t0 = Instant::now();
        let mut c = core(CoreConfig {
            admin_secret: Some("adm".into()),
            ..CoreConfig::default()
        });
        let (s, h) = party(&mut c, t0, 1, "alice");
        let cases = [
            (
                json!({"janus": "ping"}),
                456,
                "Missing mandatory element (transaction)",
            ),
            (
                json!({"janus": "ping", "transaction": 5}),
                467,
                "Invalid element type (transaction should be a string)",
            ),
            (
                json!({"transaction": "t"}),
                456,
                "Missing mandatory element (janus)",
            ),
            (
                json!({"janus": true, "transaction": "t"}),
                467,
                "Invalid element type (janus should be a string)",
            ),
            (
                json!({"janus": "attach", "transaction": "t", "session_id": s}),
                456,
                "Missing mandatory element (plugin)",
            ),
            (
                json!({"janus": "attach", "transaction": "t", "session_id": s, "plugin": 1}),
                467,
                "Invalid element type (plugin should be a string)",
            ),
            (
                with_jsep(message(s, h, json!({})), json!({"sdp": "v=0"})),
                456,
                "JSEP error: missing mandatory element (type)",
            ),
            (
                with_jsep(message(s, h, json!({})), json!({"type": 1, "sdp": "v=0"})),
                467,
                "JSEP error: invalid element type (type should be a string)",
            ),
            (
                with_jsep(message(s, h, json!({})), json!({"type": "offer"})),
                456,
                "JSEP error: missing mandatory element (sdp)",
            ),
            (
                with_jsep(message(s, h, json!({})), json!({"type": "offer", "sdp": 2})),
                467,
                "JSEP error: invalid element type (sdp should be a string)",
            ),
        ];
        for (msg, code, reason) in cases {
            let r = req(&mut c, t0, 1, msg.clone());
            assert_eq!(r["error"], json!({"code": code, "reason": reason}), "{msg}");
        }
        let admin = [
            (
                json!({"janus": "ping"}),
                456,
                "Missing mandatory element (transaction)",
            ),
            (
                json!({"janus": "ping", "transaction": []}),
                467,
                "Invalid element type (transaction should be a string)",
            ),
            (
                json!({"transaction": "t"}),
                456,
                "Missing mandatory element (janus)",
            ),
            (
                json!({"janus": 0, "transaction": "t"}),
                467,
                "Invalid element type (janus should be a string)",
            ),
            (
                json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm"}),
                456,
                "Missing mandatory element (token)",
            ),
            (
                json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm", "token": 7}),
                467,
                "Invalid element type (token should be a string)",
            ),
        ];
        for (msg, code, reason) in admin {
            let r = c.admin_value(t0, 0, msg.clone(), None).reply;
            assert_eq!(r["error"], json!({"code": code, "reason": reason}), "{msg}");
        }
    }
}

// Consistency checks of the core's tables for the fuzz targets (gateway::fuzzing).
#[cfg(fuzzing)]
pub(crate) mod invariants;
