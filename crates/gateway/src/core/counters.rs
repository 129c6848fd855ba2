//! What the core counts, as plain numbers. The core knows nothing of Prometheus: the
//! shell reads [`Core::counters`](super::Core::counters) when `/metrics` is scraped and
//! exports them (`crate::metrics::Metrics::export_core`) under the names documented in
//! docs/gateway.md "Metrics".

use std::collections::BTreeMap;

/// The `request` labels of `callrelay_gateway_requests_total`, in the order of
/// [`Counters::requests`]; a verb not listed counts as `other`.
pub const REQUEST_KINDS: [&str; 14] = [
    "info",
    "ping",
    "create",
    "attach",
    "detach",
    "destroy",
    "keepalive",
    "message",
    "trickle",
    "hangup",
    "claim",
    "longpoll",
    "admin",
    "other",
];

/// Why a call ended (label `reason` of `callrelay_gateway_calls_ended_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// A `hangup` (Janus API or videocall request) or a destroyed session.
    Hangup,
    /// The callee was in another call.
    Busy,
    /// A side detached its handle.
    Detached,
    /// A side's session timed out.
    Timeout,
    /// A side's connection went away (closed, or its events stopped being read).
    Disconnect,
    /// A `call` without a usable offer.
    Error,
}

impl CallEnd {
    /// Every reason, in the order of [`Counters::calls_ended`].
    pub const ALL: [Self; 6] = [
        Self::Hangup,
        Self::Busy,
        Self::Detached,
        Self::Timeout,
        Self::Disconnect,
        Self::Error,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hangup => "hangup",
            Self::Busy => "busy",
            Self::Detached => "detached",
            Self::Timeout => "timeout",
            Self::Disconnect => "disconnect",
            Self::Error => "error",
        }
    }
}

/// The cap that refused a session (label `limit` of
/// `callrelay_gateway_sessions_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionLimit {
    /// `max_sessions`.
    Global,
    /// `max_sessions_per_token`.
    Token,
    /// `max_sessions_per_connection`.
    Connection,
}

impl SessionLimit {
    /// Every limit, in the order of [`Counters::sessions_refused`].
    pub const ALL: [Self; 3] = [Self::Global, Self::Token, Self::Connection];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Token => "token",
            Self::Connection => "connection",
        }
    }
}

/// Why trickled candidates were refused (label `reason` of
/// `callrelay_gateway_candidates_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateRefusal {
    /// Larger than `max_candidate_bytes`.
    Size,
    /// Past `max_candidate_bytes_per_handle`.
    HandleBytes,
    /// Ignored beyond `max_candidates`.
    Count,
}

impl CandidateRefusal {
    /// Every reason, in the order of [`Counters::candidates_refused`].
    pub const ALL: [Self; 3] = [Self::Size, Self::HandleBytes, Self::Count];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::HandleBytes => "handle_bytes",
            Self::Count => "count",
        }
    }
}

/// Why an answer of an `early_offer` call went without the permissions installed (label
/// `reason` of `callrelay_gateway_early_offer_fallbacks_total`): the call then connects
/// only if the offerer's browser learns the answerer's candidates itself (docs/gateway.md,
/// "Early offer").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyFallback {
    /// By `candidate_wait_ms` the offerer (or the answerer) had trickled no relay
    /// candidate: not relay-only, or its TURN server unreachable.
    NoRelayCandidate,
    /// A relay candidate is not an allocation of our turn-server(s) (404).
    NotOurRelay,
    /// The turn-server's peer policy refused the other browser's relay IP (403).
    Denied,
    /// The allocation's permission table was full (507).
    Full,
    /// The control request failed: unreachable, wrong secret, rate limit, overload.
    Error,
    /// No confirmation within `early_offer_timeout_ms`.
    Timeout,
}

impl EarlyFallback {
    /// Every reason, in the order of [`Counters::early_offer_fallbacks`].
    pub const ALL: [Self; 6] = [
        Self::NoRelayCandidate,
        Self::NotOurRelay,
        Self::Denied,
        Self::Full,
        Self::Error,
        Self::Timeout,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoRelayCandidate => "no_relay_candidate",
            Self::NotOurRelay => "not_our_relay",
            Self::Denied => "denied",
            Self::Full => "full",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// Totals since the core was created; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests by kind, indexed like [`REQUEST_KINDS`].
    pub requests: [u64; REQUEST_KINDS.len()],
    /// Error replies and videocall error events, by code.
    pub errors: BTreeMap<u16, u64>,
    /// videocall `call` requests to a registered user.
    pub calls_started: u64,
    /// Calls accepted by the callee.
    pub calls_connected: u64,
    /// Calls ended, indexed like [`CallEnd::ALL`].
    pub calls_ended: [u64; CallEnd::ALL.len()],
    /// Sessions refused, indexed like [`SessionLimit::ALL`].
    pub sessions_refused: [u64; SessionLimit::ALL.len()],
    /// Candidates refused, indexed like [`CandidateRefusal::ALL`].
    pub candidates_refused: [u64; CandidateRefusal::ALL.len()],
    /// Milliseconds offers/answers were held back to merge trickled candidates.
    pub candidate_wait_ms: u64,
    /// Calls whose offer went at once (`early_offer`).
    pub early_offers: u64,
    /// Answers of those calls forwarded without every permission confirmed, indexed
    /// like [`EarlyFallback::ALL`].
    pub early_offer_fallbacks: [u64; EarlyFallback::ALL.len()],
}

impl Counters {
    /// Counts one request of kind `verb` (unknown verbs count as `other`).
    pub(crate) fn request(&mut self, verb: &str) {
        let i = REQUEST_KINDS
            .iter()
            .position(|r| *r == verb)
            .unwrap_or(REQUEST_KINDS.len() - 1);
        self.requests[i] += 1;
    }

    /// Counts one error answer.
    pub(crate) fn error(&mut self, code: u16) {
        *self.errors.entry(code).or_insert(0) += 1;
    }

    /// Counts one ended call.
    pub(crate) fn call_ended(&mut self, why: CallEnd) {
        self.calls_ended[why as usize] += 1;
    }

    /// Counts one refused session.
    pub(crate) fn session_refused(&mut self, limit: SessionLimit) {
        self.sessions_refused[limit as usize] += 1;
    }

    /// Counts `n` refused candidates.
    pub(crate) fn candidate_refused(&mut self, why: CandidateRefusal, n: u64) {
        self.candidates_refused[why as usize] += n;
    }
}
