//! Prometheus metrics of the gateway (names fixed in CONTRACTS.md).

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All gateway metrics. Counters are updated by the core; gauges are refreshed from the
/// core's state when `/metrics` is scraped.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `callrelay_gateway_sessions`
    pub sessions: IntGauge,
    /// `callrelay_gateway_handles`
    pub handles: IntGauge,
    /// `callrelay_gateway_registered_users`
    pub registered_users: IntGauge,
    /// `callrelay_gateway_calls_started_total`
    pub calls_started: IntCounter,
    /// `callrelay_gateway_calls_connected_total`
    pub calls_connected: IntCounter,
    /// `callrelay_gateway_calls_ended_total{reason}`
    pub calls_ended: IntCounterVec,
    /// `callrelay_gateway_requests_total{request}`
    pub requests: IntCounterVec,
    /// `callrelay_gateway_errors_total{code}`
    pub errors: IntCounterVec,
    /// `callrelay_gateway_websocket_connections`
    pub websocket_connections: IntGauge,
    /// `callrelay_gateway_turn_credentials_issued_total`
    pub turn_credentials_issued: IntCounter,
    /// `callrelay_gateway_tokens`
    pub tokens: IntGauge,
    /// `callrelay_gateway_candidate_wait_seconds_total` — time offers/answers were held
    /// back waiting for trickled candidates.
    pub candidate_wait_ms: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const REQUESTS: &[&str] = &[
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

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let g = |n: &str, h: &str| {
            let m = IntGauge::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let c = |n: &str, h: &str| {
            let m = IntCounter::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let cv = |n: &str, h: &str, l: &str| {
            let m = IntCounterVec::new(Opts::new(n, h), &[l]).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let sessions = g("callrelay_gateway_sessions", "Janus sessions alive");
        let handles = g("callrelay_gateway_handles", "Plugin handles attached");
        let registered_users = g(
            "callrelay_gateway_registered_users",
            "Usernames registered with janus.plugin.videocall",
        );
        let calls_started = c(
            "callrelay_gateway_calls_started_total",
            "videocall call requests",
        );
        let calls_connected = c(
            "callrelay_gateway_calls_connected_total",
            "videocall calls accepted by the callee",
        );
        let calls_ended = cv(
            "callrelay_gateway_calls_ended_total",
            "videocall calls ended, by reason",
            "reason",
        );
        let requests = cv(
            "callrelay_gateway_requests_total",
            "Janus API requests, by request type",
            "request",
        );
        let errors = cv(
            "callrelay_gateway_errors_total",
            "Janus API error replies, by error code",
            "code",
        );
        let websocket_connections = g(
            "callrelay_gateway_websocket_connections",
            "Open WebSocket connections (Janus and Admin API)",
        );
        let turn_credentials_issued = c(
            "callrelay_gateway_turn_credentials_issued_total",
            "TURN REST credentials issued at /turn-credentials",
        );
        let tokens = g("callrelay_gateway_tokens", "Stored Janus tokens");
        let candidate_wait_ms = c(
            "callrelay_gateway_candidate_wait_milliseconds_total",
            "Milliseconds offers/answers were held back to merge trickled candidates",
        );
        let build = IntGaugeVec::new(
            Opts::new("callrelay_gateway_build_info", "Build information"),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for r in [
            "hangup",
            "busy",
            "detached",
            "timeout",
            "disconnect",
            "error",
        ] {
            calls_ended.with_label_values(&[r]);
        }
        for r in REQUESTS {
            requests.with_label_values(&[r]);
        }
        Self {
            registry,
            sessions,
            handles,
            registered_users,
            calls_started,
            calls_connected,
            calls_ended,
            requests,
            errors,
            websocket_connections,
            turn_credentials_issued,
            tokens,
            candidate_wait_ms,
        }
    }

    /// Counts one request of kind `verb` (unknown verbs are counted as `other`).
    pub fn request(&self, verb: &str) {
        let v = REQUESTS
            .iter()
            .find(|r| **r == verb)
            .copied()
            .unwrap_or("other");
        self.requests.with_label_values(&[v]).inc();
    }

    /// Counts one error reply.
    pub fn error(&self, code: u16) {
        self.errors.with_label_values(&[&code.to_string()]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
