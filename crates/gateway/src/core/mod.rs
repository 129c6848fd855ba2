//! Sans-IO Janus core: sessions, handles, token auth, Admin API and the
//! `janus.plugin.videocall` plugin. Fed with `(now, source, request)`; returns the reply
//! and queues events addressed to the transport that owns each session. No sockets, no
//! timers, no tokio: the shell calls [`Core::poll_timeout`] / [`Core::handle_timeout`].

use crate::sdp::Candidate;
use crate::store::{TokenStore, UserRegistry};
use rand::{Rng, rngs::StdRng};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

mod admin;
mod candidates;
mod cluster;
pub mod counters;
mod early;
mod janus;
mod session;
mod tokens;
mod videocall;

pub use cluster::{ClusterOut, NodeBody, NodeMessage, RING_TIMEOUT, UserLocation};
pub use counters::Counters;
pub use early::{PermitId, PermitRequest, PermitResult};
use janus::JsepType;
pub use janus::{JanusError, VideocallError, error_reply};
pub use tokens::TokenUpdate;

/// The only plugin this gateway implements.
pub const VIDEOCALL: &str = "janus.plugin.videocall";
/// Janus API version reported in `server_info` (the API level we are compatible with).
pub const JANUS_VERSION: u64 = 1102;
const MAX_ID: u64 = 1 << 53;
/// Session ids of a cluster node: its tag above this bit, 40 random bits below.
const TAG_SHIFT: u32 = 40;
const TAG_MASK: u16 = (1 << (53 - TAG_SHIFT)) - 1;
/// The largest session tag ([`Core::set_session_tag`]): tags are 1..=this.
pub const MAX_SESSION_TAG: u16 = TAG_MASK;

/// The node tag a session id carries ([`Core::set_session_tag`]); 0 for ids drawn
/// without one (a single node, or an id the client chose).
pub fn session_tag_of(id: u64) -> u16 {
    u16::try_from(id >> TAG_SHIFT).map_or(0, |t| t & TAG_MASK)
}

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
    /// Once every transport of a held offer/answer has a relay candidate but a direct
    /// path may still come (the sender gathers host candidates, some transport has no
    /// server-reflexive one), how much longer it waits for them (capped by
    /// `candidate_wait`; 0 = forward at once). A relay-only sender's SDP goes at its
    /// first relay candidates, whatever this says.
    pub candidate_grace: Duration,
    /// `early_offer` (docs/gateway.md, "Early offer"): the offer of a call between two
    /// users of this node goes at once, and the answer waits until the turn-server
    /// confirmed a permission for each browser's relay address on the other's
    /// allocation ([`Core::take_permit_requests`], [`Core::permit_result`]).
    pub early_offer: bool,
    /// How long an early-offer answer waits for those confirmations before it goes
    /// anyway (counted as a fallback).
    pub early_offer_timeout: Duration,
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
            candidate_grace: Duration::from_millis(100),
            early_offer: false,
            early_offer_timeout: Duration::from_millis(50),
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
    jsep_type: JsepType,
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
    /// Boxed: held only between a message and its forward (a few ms to 1 s), and
    /// every idle handle pays for what is inline (idle WebSockets, issue 15).
    pending: Option<Box<Pending>>,
    /// An offer was forwarded to this handle (so an answer from it is expected).
    got_offer: bool,
    /// A PeerConnection exists on the browser side as far as we can tell.
    has_pc: bool,
    /// The SDP of the current message carries all its candidates (no trickle).
    jsep_complete: bool,
    /// The call's other side when it is on another node (then `peer` is None).
    remote: Option<Box<cluster::RemotePeer>>,
    /// A `register` waiting for the cluster's answer: the name and the request's
    /// transaction.
    claim: Option<Box<(String, String)>>,
    /// This handle is in an `early_offer` call (its state, while the answer is
    /// unsettled, is in [`Core`]'s `early` table: a flag here costs no room).
    early: bool,
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
            remote: None,
            claim: None,
            early: false,
        }
    }

    /// In a call, ringing or being called (a new call to it is busy).
    fn in_call(&self) -> bool {
        self.peer.is_some() || self.remote.is_some() || self.call != CallState::Idle
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
        self.remote = None;
        self.early = false;
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
    /// A `call` to another node's user waiting for that node's answer.
    Ring(u64),
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
    /// Session and handle ids; given by the shell (seeded from the OS) or a test.
    rng: StdRng,
    outbox: Vec<Output>,
    counters: Counters,
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
    /// Cluster mode ([`Core::share_tokens`]): token changes for the shell to publish.
    shared: Option<SharedTokens>,
    /// Cluster mode for videocall users and calls ([`Core::join_cluster`]).
    cluster: Option<cluster::ClusterState>,
    /// Cluster mode: the tag of this node's session ids ([`Core::set_session_tag`]).
    session_tag: Option<u16>,
    /// `early_offer`: the state of each handle of a call whose answer is not settled
    /// yet (entries of handles no longer in such a call go at the next timer).
    early: HashMap<u64, early::Early>,
    /// `early_offer`: permission requests for the shell to send to the turn-server.
    permit_requests: Vec<PermitRequest>,
    /// `early_offer`: the sequence number of the last batch of permission requests.
    permit_seq: u64,
}

/// What the core keeps for a token table shared with other nodes.
#[derive(Debug, Default)]
struct SharedTokens {
    /// Changes made here (Admin API, expiry, last use), oldest first, until the shell
    /// takes them after the request or timer that made them.
    updates: Vec<TokenUpdate>,
    /// Tokens used since the last sweep: their last-seen time is published then, so
    /// another node's expiry does not drop a token that is used only here.
    used: HashSet<String>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sessions", &self.sessions.len())
            .field("handles", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A new core with the given stores. `rng` draws the session and handle ids: the
    /// shell seeds it from the OS (`StdRng::from_os_rng()`, ids must not be guessable),
    /// tests and fuzz targets with a fixed seed.
    pub fn new(
        cfg: CoreConfig,
        tokens: Box<dyn TokenStore>,
        registry: Box<dyn UserRegistry>,
        rng: StdRng,
    ) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            handles: HashMap::new(),
            tokens,
            registry,
            rng,
            outbox: Vec::new(),
            counters: Counters::default(),
            next_token_sweep: None,
            timers: BinaryHeap::new(),
            timer_moved: false,
            per_token: HashMap::new(),
            per_conn: HashMap::new(),
            test_tokens: HashMap::new(),
            tokens_dirty: false,
            shared: None,
            cluster: None,
            session_tag: None,
            early: HashMap::new(),
            permit_requests: Vec::new(),
            permit_seq: 0,
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

    /// Sessions owned by the WebSocket `conn` (for its idle timeout).
    pub fn conn_sessions(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    /// Owner of a session, if it exists.
    pub fn session_owner(&self, session_id: u64) -> Option<Source> {
        self.sessions.get(&session_id).map(|s| s.owner)
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

    /// Cluster mode: session ids drawn from now on carry `tag` (1..8191) in their bits
    /// 40–52, so any node can tell which node a session id belongs to
    /// ([`session_tag_of`]) and forward an HTTP request to it.
    pub fn set_session_tag(&mut self, tag: u16) {
        self.session_tag = Some(tag & TAG_MASK).filter(|t| *t > 0);
    }

    /// A new session id: random, with this node's tag in cluster mode.
    fn new_session_id(&mut self) -> u64 {
        let Some(tag) = self.session_tag else {
            return self.new_id();
        };
        loop {
            let id = (u64::from(tag) << TAG_SHIFT) | self.rng.random_range(1..1u64 << TAG_SHIFT);
            if !self.sessions.contains_key(&id) && !self.handles.contains_key(&id) {
                return id;
            }
        }
    }

    fn new_id(&mut self) -> u64 {
        loop {
            let id = self.rng.random_range(1..MAX_ID);
            if !self.sessions.contains_key(&id) && !self.handles.contains_key(&id) {
                return id;
            }
        }
    }

    /// What the core counted since it was created (exported by the shell's `/metrics`).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// An error answer with a code of the table, counted.
    fn err(&mut self, session_id: u64, tx: Option<&str>, code: JanusError, reason: &str) -> Value {
        self.counters.error(code.code());
        error_reply(session_id, tx, code.code(), reason)
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

    /// Session ids with their handle ids (for debugging/tests).
    pub fn sessions(&self) -> BTreeMap<u64, Vec<u64>> {
        self.sessions
            .iter()
            .map(|(id, s)| (*id, s.handles.iter().copied().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests;

// Consistency checks of the core's tables for the fuzz targets (gateway::fuzzing).
#[cfg(fuzzing)]
pub(crate) mod invariants;
