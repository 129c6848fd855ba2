//! Prometheus metrics of the gateway (names fixed in CONTRACTS.md). The shell updates
//! its own counters directly; the sans-IO core counts in plain numbers
//! ([`crate::core::Counters`]) that [`Metrics::export_core`] copies in at each scrape.

use crate::core::counters::{
    CallEnd, CandidateRefusal, Counters, EarlyFallback, REQUEST_KINDS, SessionLimit,
};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::{Arc, Mutex};

/// All gateway metrics. The core's counters and the gauges of its state are refreshed
/// from the core when `/metrics` is scraped; the shell's own are updated as they happen.
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
    /// `callrelay_gateway_test_tokens_issued_total`
    pub test_tokens_issued: IntCounter,
    /// `callrelay_gateway_candidate_wait_milliseconds_total` — time offers/answers were held
    /// back waiting for trickled candidates.
    pub candidate_wait_ms: IntCounter,
    /// `callrelay_gateway_slow_clients_total{transport}` — WebSockets disconnected and
    /// HTTP sessions ended because their client stopped reading and the queue for it
    /// reached its byte bound.
    pub slow_clients: IntCounterVec,
    /// `callrelay_gateway_sessions_refused_total{limit}` — `create` (or `claim`) refused
    /// by `max_sessions` (`global`), `max_sessions_per_token` (`token`) or
    /// `max_sessions_per_connection` (`connection`).
    pub sessions_refused: IntCounterVec,
    /// `callrelay_gateway_candidates_refused_total{reason}` — trickled candidates
    /// refused (`size`, `handle_bytes`: answered 467) or ignored beyond
    /// `max_candidates` (`count`).
    pub candidates_refused: IntCounterVec,
    /// `callrelay_gateway_early_offers_total` — calls whose offer went at once
    /// (`early_offer`).
    pub early_offers: IntCounter,
    /// `callrelay_gateway_early_offer_fallbacks_total{reason}` — answers of those calls
    /// forwarded without every permission confirmed.
    pub early_offer_fallbacks: IntCounterVec,
    /// `callrelay_gateway_connections_rejected_total{reason}` — TCP connections refused
    /// at accept (`max_connections`, `per_ip`, `admin`) or closed by a timeout
    /// (`ws_idle`, `body_timeout`).
    pub connections_rejected: IntCounterVec,
    /// `callrelay_gateway_tcp_connections{listener}` — open TCP connections.
    pub tcp_connections: IntGaugeVec,
    /// `callrelay_gateway_tasks` — tokio tasks alive (set at each scrape): one per
    /// connection plus a few fixed ones, so a leaked task shows as a level that does not
    /// come back down.
    pub tasks: IntGauge,
    /// `callrelay_gateway_token_store_unsaved` — 1 while the last tokens.json write failed.
    pub token_store_unsaved: IntGauge,
    /// `callrelay_gateway_token_store_write_failures_total`
    pub token_store_write_failures: IntCounter,
    /// `callrelay_gateway_config_reloads_total{result}` — SIGHUP reloads of the
    /// configuration that were applied (`ok`) or refused, keeping the running settings
    /// (`error`).
    pub config_reloads: IntCounterVec,
    /// `callrelay_gateway_tls_cert_not_after_seconds`: registered on the first
    /// [`Metrics::set_tls_cert_not_after`], so a gateway without TLS has none.
    tls_not_after: IntGauge,
    /// The core's counters as last exported (the next export adds the difference).
    exported: Arc<Mutex<Counters>>,
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

/// Every `code` label of `callrelay_gateway_errors_total` the gateway can emit: the codes
/// of [`crate::core::JanusError`] (403-490) and [`crate::core::VideocallError`] (472-483, 499),
/// in numeric order. All are registered at 0 at start so that `increase()`/`rate()` in
/// alert rules see the first error after a restart. A unit test checks this list against
/// the table and the codes the shell writes.
pub const ERROR_CODES: &[u16] = &[
    403, 405, 450, 453, 454, 455, 456, 457, 458, 459, 460, 461, 464, 465, 467, 468, 469, 470, 472,
    473, 474, 475, 476, 477, 478, 479, 480, 481, 482, 483, 490, 499,
];

use callrelay_service::metrics::register;

/// A counter with one label, every value of `values` pre-created at 0 so that
/// `increase()`/`rate()` see the first event after a restart.
fn counter_family(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = impl AsRef<str>>,
) -> IntCounterVec {
    let m = register(r, IntCounterVec::new(Opts::new(name, help), &[label]));
    for v in values {
        m.with_label_values(&[v.as_ref()]);
    }
    m
}

impl Metrics {
    /// Creates and registers every metric.
    #[expect(
        clippy::expect_used,
        reason = "metric names and help texts are literals: a bad one panics at start-up, in every test"
    )]
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let g = |n, h| register(r, IntGauge::new(n, h));
        let c = |n, h| register(r, IntCounter::new(n, h));
        let sessions = g("callrelay_gateway_sessions", "Janus sessions alive");
        let tasks = g(
            "callrelay_gateway_tasks",
            "Tokio tasks alive (one per connection plus a few fixed ones), read at each scrape",
        );
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
        let calls_ended = counter_family(
            r,
            "callrelay_gateway_calls_ended_total",
            "videocall calls ended, by reason",
            "reason",
            CallEnd::ALL.map(CallEnd::label),
        );
        let requests = counter_family(
            r,
            "callrelay_gateway_requests_total",
            "Janus API requests, by request type",
            "request",
            REQUEST_KINDS,
        );
        let errors = counter_family(
            r,
            "callrelay_gateway_errors_total",
            "Janus API error replies, by error code",
            "code",
            ERROR_CODES.iter().map(u16::to_string),
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
        let test_tokens_issued = c(
            "callrelay_gateway_test_tokens_issued_total",
            "Short-lived tokens minted for the test call page (POST /test/session)",
        );
        let candidate_wait_ms = c(
            "callrelay_gateway_candidate_wait_milliseconds_total",
            "Milliseconds offers/answers were held back to merge trickled candidates",
        );
        let slow_clients = counter_family(
            r,
            "callrelay_gateway_slow_clients_total",
            "Clients that stopped reading: WebSockets disconnected and HTTP sessions ended at the queue's byte bound, by transport",
            "transport",
            ["websocket", "http"],
        );
        let sessions_refused = counter_family(
            r,
            "callrelay_gateway_sessions_refused_total",
            "Session creations refused with 490, by the limit reached (global, token, connection)",
            "limit",
            SessionLimit::ALL.map(SessionLimit::label),
        );
        let candidates_refused = counter_family(
            r,
            "callrelay_gateway_candidates_refused_total",
            "Trickled candidates refused: larger than max_candidate_bytes (size), past max_candidate_bytes_per_handle (handle_bytes), or ignored beyond max_candidates (count)",
            "reason",
            CandidateRefusal::ALL.map(CandidateRefusal::label),
        );
        let early_offers = c(
            "callrelay_gateway_early_offers_total",
            "Calls whose offer was forwarded at once (early_offer)",
        );
        let early_offer_fallbacks = counter_family(
            r,
            "callrelay_gateway_early_offer_fallbacks_total",
            "Answers of early_offer calls forwarded without every turn-server permission confirmed, by reason",
            "reason",
            EarlyFallback::ALL.map(EarlyFallback::label),
        );
        let connections_rejected = counter_family(
            r,
            "callrelay_gateway_connections_rejected_total",
            "TCP connections refused at accept (max_connections, per_ip, admin) or closed by a timeout (ws_idle, body_timeout)",
            "reason",
            [
                "max_connections",
                "per_ip",
                "admin",
                "ws_idle",
                "body_timeout",
            ],
        );
        let tcp_connections = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "callrelay_gateway_tcp_connections",
                    "Open TCP connections, by listener",
                ),
                &["listener"],
            ),
        );
        for l in ["websocket", "http", "admin"] {
            tcp_connections.with_label_values(&[l]);
        }
        let token_store_unsaved = g(
            "callrelay_gateway_token_store_unsaved",
            "1 while token changes are kept in memory only because the last tokens.json write failed (retried every 5 s)",
        );
        let token_store_write_failures = c(
            "callrelay_gateway_token_store_write_failures_total",
            "Failed writes of tokens.json",
        );
        let config_reloads = counter_family(
            r,
            "callrelay_gateway_config_reloads_total",
            "Configuration reloads on SIGHUP: applied (ok) or refused because the file is invalid, keeping the running settings (error)",
            "result",
            ["ok", "error"],
        );
        let build = register(
            r,
            IntGaugeVec::new(
                Opts::new("callrelay_gateway_build_info", "Build information"),
                &["version"],
            ),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            tasks,
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
            test_tokens_issued,
            candidate_wait_ms,
            slow_clients,
            sessions_refused,
            candidates_refused,
            early_offers,
            early_offer_fallbacks,
            connections_rejected,
            tcp_connections,
            token_store_unsaved,
            token_store_write_failures,
            config_reloads,
            tls_not_after: IntGauge::new(
                "callrelay_gateway_tls_cert_not_after_seconds",
                "Expiry (notAfter, Unix seconds) of the TLS certificate in use",
            )
            .expect("valid metric"),
            exported: Arc::default(),
        }
    }

    /// Brings the core's counters up to `core` (called at each scrape, before
    /// [`Metrics::render`]): each Prometheus counter grows by what the core counted since
    /// the last export, so the shell's own increments of the same series (error replies
    /// it writes itself) add up with the core's.
    pub fn export_core(&self, core: &Counters) {
        let mut last = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        let add = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
        for (i, kind) in REQUEST_KINDS.iter().enumerate() {
            add(
                &self.requests.with_label_values(&[kind]),
                core.requests[i],
                last.requests[i],
            );
        }
        for (code, n) in &core.errors {
            let before = last.errors.get(code).copied().unwrap_or(0);
            add(
                &self.errors.with_label_values(&[&code.to_string()]),
                *n,
                before,
            );
        }
        add(&self.calls_started, core.calls_started, last.calls_started);
        add(
            &self.calls_connected,
            core.calls_connected,
            last.calls_connected,
        );
        for (i, why) in CallEnd::ALL.iter().enumerate() {
            add(
                &self.calls_ended.with_label_values(&[why.label()]),
                core.calls_ended[i],
                last.calls_ended[i],
            );
        }
        for (i, limit) in SessionLimit::ALL.iter().enumerate() {
            add(
                &self.sessions_refused.with_label_values(&[limit.label()]),
                core.sessions_refused[i],
                last.sessions_refused[i],
            );
        }
        for (i, why) in CandidateRefusal::ALL.iter().enumerate() {
            add(
                &self.candidates_refused.with_label_values(&[why.label()]),
                core.candidates_refused[i],
                last.candidates_refused[i],
            );
        }
        add(
            &self.candidate_wait_ms,
            core.candidate_wait_ms,
            last.candidate_wait_ms,
        );
        add(&self.early_offers, core.early_offers, last.early_offers);
        for (i, why) in EarlyFallback::ALL.iter().enumerate() {
            add(
                &self.early_offer_fallbacks.with_label_values(&[why.label()]),
                core.early_offer_fallbacks[i],
                last.early_offer_fallbacks[i],
            );
        }
        *last = core.clone();
    }

    /// The TLS certificate in use expires at `unix` (set at start and on every reload).
    pub fn set_tls_cert_not_after(&self, unix: u64) {
        // AlreadyReg after the first call: the gauge is registered once
        let _ = self.registry.register(Box::new(self.tls_not_after.clone()));
        self.tls_not_after
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    /// Registers the cluster metrics (only a gateway with `nats_url` has them, so a node
    /// alone shows no NATS state at all). Called once, at start.
    pub fn register_cluster(&self) -> ClusterMetrics {
        ClusterMetrics::new(&self.registry)
    }

    /// Counts one error reply.
    pub fn error(&self, code: u16) {
        self.errors.with_label_values(&[&code.to_string()]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The metrics of a cluster node (`nats_url` set; docs/scale-out.md).
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// `callrelay_gateway_nats_connected` — 1 while the node is connected to NATS.
    pub nats_connected: IntGauge,
    /// `callrelay_gateway_nats_kv_failures_total{op}` — key-value operations that
    /// failed: `put`, `delete` (token writes, retried), `watch` (reading the bucket),
    /// `bucket` (opening or creating it).
    pub kv_failures: IntCounterVec,
    /// `callrelay_gateway_nats_kv_writes_total` — token changes written to the bucket.
    pub kv_writes: IntCounter,
    /// `callrelay_gateway_nats_kv_writes_pending` — token changes made here and not yet
    /// written (NATS unreachable), at most `CLUSTER_WRITE_QUEUE`.
    pub kv_writes_pending: IntGauge,
    /// `callrelay_gateway_nats_kv_writes_dropped_total` — token changes not queued
    /// because the queue was full: the other nodes never see them.
    pub kv_writes_dropped: IntCounter,
    /// `callrelay_gateway_nats_kv_updates_received_total` — other nodes' token changes
    /// applied here (full reads of the bucket count each token).
    pub kv_updates_received: IntCounter,
    /// `callrelay_gateway_cluster_peers` — other nodes whose liveness lease is current.
    pub peers: IntGauge,
    /// `callrelay_gateway_cluster_remote_users` — videocall users of other nodes.
    pub remote_users: IntGauge,
    /// `callrelay_gateway_cluster_messages_total{direction,kind}` — call messages
    /// between nodes (`sent`/`received`; `call`, `ringing`, `busy`, `no_such_user`,
    /// `forward`, `trickle`, `hangup`).
    pub messages: IntCounterVec,
    /// `callrelay_gateway_cluster_message_failures_total{reason}` — call messages not
    /// delivered: `disconnected` (no NATS connection), `publish` (refused), `queue_full`
    /// (the outgoing queue's byte bound), `decode` (a received one that is not ours).
    pub message_failures: IntCounterVec,
    /// `callrelay_gateway_cluster_call_setup_seconds` — a `call` to another node's user
    /// until that node's answer (ringing, busy, no such user) is back here.
    pub call_setup: Histogram,
    /// `callrelay_gateway_cluster_claims_total{result}` — username claims in the
    /// presence bucket: `won`, `taken` (another node holds it: 476), `error`.
    pub claims: IntCounterVec,
    /// `callrelay_gateway_cluster_nodes_gone_total` — nodes whose lease ran out (or that
    /// restarted): their users left the list and their calls ended here.
    pub nodes_gone: IntCounter,
    /// `callrelay_gateway_cluster_http_forwarded_total{result}` — HTTP requests for
    /// another node's session sent there: `ok`, `no_node` (none serves it: answered
    /// here), `timeout` (504), `error`.
    pub http_forwarded: IntCounterVec,
    /// `callrelay_gateway_cluster_http_served_total{result}` — HTTP requests other nodes
    /// forwarded here: `ok`, `busy` (over the in-flight bound: 503), `error`.
    pub http_served: IntCounterVec,
}

impl ClusterMetrics {
    fn new(r: &Registry) -> Self {
        Self {
            nats_connected: register(
                r,
                IntGauge::new(
                    "callrelay_gateway_nats_connected",
                    "1 while this node is connected to NATS",
                ),
            ),
            kv_failures: counter_family(
                r,
                "callrelay_gateway_nats_kv_failures_total",
                "NATS key-value operations that failed (put, delete, watch, bucket)",
                "op",
                ["put", "delete", "watch", "bucket"],
            ),
            kv_writes: register(
                r,
                IntCounter::new(
                    "callrelay_gateway_nats_kv_writes_total",
                    "Token changes written to the NATS key-value bucket",
                ),
            ),
            kv_writes_pending: register(
                r,
                IntGauge::new(
                    "callrelay_gateway_nats_kv_writes_pending",
                    "Token changes made here and not yet written to NATS",
                ),
            ),
            kv_writes_dropped: register(
                r,
                IntCounter::new(
                    "callrelay_gateway_nats_kv_writes_dropped_total",
                    "Token changes dropped because the queue of unwritten changes was full",
                ),
            ),
            kv_updates_received: register(
                r,
                IntCounter::new(
                    "callrelay_gateway_nats_kv_updates_received_total",
                    "Token changes of other nodes applied here",
                ),
            ),
            peers: register(
                r,
                IntGauge::new(
                    "callrelay_gateway_cluster_peers",
                    "Other gateway nodes whose liveness lease is current",
                ),
            ),
            remote_users: register(
                r,
                IntGauge::new(
                    "callrelay_gateway_cluster_remote_users",
                    "Videocall users registered on other nodes",
                ),
            ),
            messages: {
                let m = register(
                    r,
                    IntCounterVec::new(
                        Opts::new(
                            "callrelay_gateway_cluster_messages_total",
                            "Call messages between gateway nodes",
                        ),
                        &["direction", "kind"],
                    ),
                );
                for d in ["sent", "received"] {
                    for k in crate::core::NodeBody::KINDS {
                        m.with_label_values(&[d, k]);
                    }
                }
                m
            },
            message_failures: counter_family(
                r,
                "callrelay_gateway_cluster_message_failures_total",
                "Call messages between nodes not delivered (disconnected, publish, queue_full, decode)",
                "reason",
                ["disconnected", "publish", "queue_full", "decode"],
            ),
            call_setup: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "callrelay_gateway_cluster_call_setup_seconds",
                        "A call to another node's user until that node answered",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                ),
            ),
            claims: counter_family(
                r,
                "callrelay_gateway_cluster_claims_total",
                "Username claims in the presence bucket (won, taken, error)",
                "result",
                ["won", "taken", "error"],
            ),
            nodes_gone: register(
                r,
                IntCounter::new(
                    "callrelay_gateway_cluster_nodes_gone_total",
                    "Gateway nodes whose liveness lease ran out or that restarted",
                ),
            ),
            http_forwarded: counter_family(
                r,
                "callrelay_gateway_cluster_http_forwarded_total",
                "HTTP requests for another node's session forwarded there (ok, no_node, timeout, error)",
                "result",
                ["ok", "no_node", "timeout", "error"],
            ),
            http_served: counter_family(
                r,
                "callrelay_gateway_cluster_http_served_total",
                "HTTP requests forwarded here by other nodes (ok, busy, error)",
                "result",
                ["ok", "busy", "error"],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{JanusError, VideocallError};

    /// Every error code passed to `err(`, `plugin_error(`, `PluginError::new(` (or
    /// `Self::new(` inside its impl), `error_reply(`, `metrics.error(`, `janus_error(`
    /// or `counted_error(`, or returned as an `Err((code, reason))` pair, in the
    /// sources (the first 4xx/5xx integer argument of the call).
    fn codes_in_source(src: &str) -> std::collections::BTreeSet<u16> {
        let mut out = std::collections::BTreeSet::new();
        for call in [
            "err(",
            "plugin_error(",
            "PluginError::new(",
            "Self::new(",
            "Err((",
            "janus_error(",
            "counted_error(",
            "error_reply(",
            "metrics.error(",
        ] {
            for (i, _) in src.match_indices(call) {
                let rest = &src[i + call.len()..];
                let end = rest.find(';').unwrap_or(rest.len());
                for tok in rest[..end].split(|c: char| !c.is_ascii_digit()) {
                    if tok.len() == 3
                        && let Ok(n) = tok.parse::<u16>()
                        && (400..600).contains(&n)
                    {
                        out.insert(n);
                        break;
                    }
                }
            }
        }
        out
    }

    /// The core's counters reach /metrics by difference: exporting twice does not count
    /// twice, and the shell's own increments of a series add up with the core's.
    #[test]
    fn exported_core_counters_add_to_the_shells_own() {
        let m = Metrics::new();
        let mut c = Counters::default();
        c.request("create");
        c.request("nonsense");
        c.error(490);
        c.calls_started = 2;
        c.call_ended(CallEnd::Busy);
        c.session_refused(SessionLimit::Token);
        c.candidate_refused(CandidateRefusal::Count, 5);
        c.candidate_wait_ms = 250;
        m.error(490);
        m.export_core(&c);
        m.export_core(&c);
        c.error(490);
        c.error(458);
        m.export_core(&c);
        let text = m.render();
        for line in [
            "callrelay_gateway_requests_total{request=\"create\"} 1",
            "callrelay_gateway_requests_total{request=\"other\"} 1",
            "callrelay_gateway_errors_total{code=\"490\"} 3",
            "callrelay_gateway_errors_total{code=\"458\"} 1",
            "callrelay_gateway_calls_started_total 2",
            "callrelay_gateway_calls_ended_total{reason=\"busy\"} 1",
            "callrelay_gateway_calls_ended_total{reason=\"hangup\"} 0",
            "callrelay_gateway_sessions_refused_total{limit=\"token\"} 1",
            "callrelay_gateway_candidates_refused_total{reason=\"count\"} 5",
            "callrelay_gateway_candidate_wait_milliseconds_total 250",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn every_error_code_in_the_source_is_preregistered() {
        // the core answers only codes of its table (`core::JanusError`,
        // `core::VideocallError`); the shell writes numbers, found by the scanner
        let mut used: std::collections::BTreeSet<u16> = JanusError::ALL
            .iter()
            .map(|c| c.code())
            .chain(VideocallError::ALL.iter().map(|c| c.code()))
            .collect();
        for src in [
            include_str!("server/admin.rs"),
            include_str!("server/credentials.rs"),
            include_str!("server/http.rs"),
            include_str!("server/limits.rs"),
            include_str!("server/listener.rs"),
            include_str!("server/mod.rs"),
            include_str!("server/reload.rs"),
            include_str!("server/respond.rs"),
            include_str!("server/state.rs"),
            include_str!("server/testpage.rs"),
            include_str!("server/timers.rs"),
            include_str!("server/tls.rs"),
            include_str!("server/tokens.rs"),
            include_str!("server/ws.rs"),
        ] {
            used.extend(codes_in_source(src));
        }
        for must in [403, 454, 456, 458, 459, 467, 472, 474, 475, 476, 477] {
            assert!(used.contains(&must), "scanner missed {must}: {used:?}");
        }
        let listed: std::collections::BTreeSet<u16> = ERROR_CODES.iter().copied().collect();
        let missing: Vec<_> = used.difference(&listed).collect();
        assert!(missing.is_empty(), "add to ERROR_CODES: {missing:?}");
        // and nothing else: ERROR_CODES is the code table, pre-registered
        let table: std::collections::BTreeSet<u16> = JanusError::ALL
            .iter()
            .map(|c| c.code())
            .chain(VideocallError::ALL.iter().map(|c| c.code()))
            .collect();
        assert_eq!(
            listed, table,
            "ERROR_CODES and core::JanusError/VideocallError"
        );
        let text = Metrics::new().render();
        for code in ERROR_CODES {
            let line = format!("callrelay_gateway_errors_total{{code=\"{code}\"}} 0");
            assert!(text.contains(&line), "missing {line}");
        }
    }
}
