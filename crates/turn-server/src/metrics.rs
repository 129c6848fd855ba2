//! Prometheus metrics (documented in docs/turn-server.md, "Metrics"; deploy/check-metric-names
//! checks the dashboard and alerts against the names exported here).
//!
//! The relay path never touches these: each worker's core counts in plain `u64` fields
//! ([`Stats`]) and the worker adds the deltas here once a second.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::core::{Gauges, Proto, Stats, labels};
use crate::policy::DenyClass;

/// Why a TCP/TLS client connection was refused or closed by a bound
/// (`callrelay_turn_stream_rejections_total{reason}`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum StreamReject {
    /// `max_stream_connections` (or its share of `RLIMIT_NOFILE`) reached: closed at accept.
    Total = 0,
    /// `max_stream_connections_per_ip` reached: closed at accept.
    PerSource = 1,
    /// No allocation `stream_auth_timeout` after accept (or since it went): closed.
    AuthTimeout = 2,
    /// `accept` failed for lack of file descriptors: accepting paused.
    FdLimit = 3,
    /// Bytes that are not STUN/ChannelData, a bad STUN header or a frame over `max_frame`
    /// (the shared-ice `Framer`'s errors): closed.
    BadFrame = 4,
}

impl StreamReject {
    /// Label values in index order.
    pub const LABELS: [&str; 5] = [
        "total",
        "per_source",
        "auth_timeout",
        "fd_limit",
        "bad_frame",
    ];
}

/// Why a connection to the `/metrics` endpoint was refused or closed by a bound
/// (`callrelay_turn_metrics_rejections_total{reason}`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum MetricsReject {
    /// `metrics_max_connections` open already: closed at accept.
    MaxConnections = 0,
    /// No complete request head within `metrics_header_timeout` of accept: closed.
    HeaderTimeout = 1,
}

impl MetricsReject {
    /// Label values in index order.
    pub const LABELS: [&str; 2] = ["max_connections", "header_timeout"];
}

/// All turn-server metrics, with label handles resolved once.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    allocations_active: [IntGauge; 3],
    allocations_total: Vec<IntCounter>,
    auth_failures: Vec<IntCounter>,
    packets: [[IntCounter; 3]; 2],
    bytes: [[IntCounter; 3]; 2],
    permissions: IntGauge,
    channels: IntGauge,
    denied: Vec<IntCounter>,
    quota: Vec<IntCounter>,
    relay_ports_free: IntGauge,
    requests: Vec<IntCounter>,
    in_process: Vec<IntCounter>,
    rate_evictions: IntCounter,
    rate_limit_closed: IntCounter,
    tx_cache_full: IntCounter,
    stream_rejections: Vec<IntCounter>,
    streams_active: IntGauge,
    worker_tasks: IntGauge,
    metrics_rejections: Vec<IntCounter>,
    metrics_connections: IntGauge,
    /// Registered on the first `set_tls_cert_not_after`: absent without TLS.
    tls_not_after: IntGauge,
}

#[expect(
    clippy::expect_used,
    reason = "metric names, help texts and labels are literals: a bad or duplicate one panics at start-up, in every test"
)]
fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

#[expect(
    clippy::expect_used,
    reason = "metric names, help texts and labels are literals: a bad or duplicate one panics at start-up, in every test"
)]
fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric with all label values pre-created (so they show as 0).
    #[expect(
        clippy::expect_used,
        reason = "metric names, help texts and labels are literals: a bad or duplicate one panics at start-up, in every test"
    )]
    pub fn new() -> Self {
        let r = Registry::new();
        let active = IntGaugeVec::new(
            Opts::new(
                "callrelay_turn_allocations_active",
                "Active allocations by client transport",
            ),
            &["transport"],
        )
        .expect("valid metric");
        r.register(Box::new(active.clone())).expect("unique metric");
        let allocations_active = Proto::ALL.map(|p| active.with_label_values(&[p.label()]));
        let res = counter_vec(
            &r,
            "callrelay_turn_allocations_total",
            "Allocate requests by result",
            "result",
        );
        let allocations_total = labels::ALLOC_RESULT
            .iter()
            .map(|l| res.with_label_values(&[*l]))
            .collect();
        let af = counter_vec(
            &r,
            "callrelay_turn_auth_failures_total",
            "Authentication failures by reason",
            "reason",
        );
        let auth_failures = labels::AUTH_REASON
            .iter()
            .map(|l| af.with_label_values(&[*l]))
            .collect();
        let pk = IntCounterVec::new(
            Opts::new("callrelay_turn_relayed_packets_total", "Packets relayed"),
            &["direction", "transport"],
        )
        .expect("valid metric");
        r.register(Box::new(pk.clone())).expect("unique metric");
        let by = IntCounterVec::new(
            Opts::new(
                "callrelay_turn_relayed_bytes_total",
                "Payload bytes relayed",
            ),
            &["direction", "transport"],
        )
        .expect("valid metric");
        r.register(Box::new(by.clone())).expect("unique metric");
        let packets = [0, 1]
            .map(|d| Proto::ALL.map(|p| pk.with_label_values(&[labels::DIRECTION[d], p.label()])));
        let bytes = [0, 1]
            .map(|d| Proto::ALL.map(|p| by.with_label_values(&[labels::DIRECTION[d], p.label()])));
        let permissions = gauge(
            &r,
            "callrelay_turn_permissions_active",
            "Active permissions",
        );
        let channels = gauge(
            &r,
            "callrelay_turn_channels_active",
            "Active channel bindings",
        );
        let dn = counter_vec(
            &r,
            "callrelay_turn_denied_peers_total",
            "Peers denied by the peer policy",
            "class",
        );
        let denied = DenyClass::ALL
            .iter()
            .map(|c| dn.with_label_values(&[c.label()]))
            .collect();
        let qt = counter_vec(
            &r,
            "callrelay_turn_quota_rejections_total",
            "Quota and rate-limit rejections",
            "kind",
        );
        let quota = labels::QUOTA_KIND
            .iter()
            .map(|l| qt.with_label_values(&[*l]))
            .collect();
        let relay_ports_free = gauge(&r, "callrelay_turn_relay_ports_free", "Free relay ports");
        let rq = counter_vec(
            &r,
            "callrelay_turn_requests_total",
            "STUN/TURN requests by method",
            "method",
        );
        let requests = labels::METHOD
            .iter()
            .map(|l| rq.with_label_values(&[*l]))
            .collect();
        let ip = counter_vec(
            &r,
            "callrelay_turn_relayed_in_process_total",
            "Relay-to-relay packets delivered in process (both allocations on this server)",
            "path",
        );
        let in_process = ["same_worker", "cross_worker"]
            .iter()
            .map(|l| ip.with_label_values(&[*l]))
            .collect();
        let rate_evictions = IntCounter::new(
            "callrelay_turn_rate_limit_evictions_total",
            "Rate-limit table entries replaced by a new source (the table was full)",
        )
        .expect("valid metric");
        r.register(Box::new(rate_evictions.clone()))
            .expect("unique metric");
        let rate_limit_closed = IntCounter::new(
            "callrelay_turn_rate_limit_closed_total",
            "TCP/TLS connections closed for going over their source's request rate",
        )
        .expect("valid metric");
        r.register(Box::new(rate_limit_closed.clone()))
            .expect("unique metric");
        let tx_cache_full = IntCounter::new(
            "callrelay_turn_transaction_cache_full_total",
            "Answers not kept for retransmissions because the transaction cache (transaction_cache) was full",
        )
        .expect("valid metric");
        r.register(Box::new(tx_cache_full.clone()))
            .expect("unique metric");
        let sr = counter_vec(
            &r,
            "callrelay_turn_stream_rejections_total",
            "TCP/TLS client connections refused or closed by a bound",
            "reason",
        );
        let stream_rejections = StreamReject::LABELS
            .iter()
            .map(|l| sr.with_label_values(&[*l]))
            .collect();
        let streams_active = gauge(
            &r,
            "callrelay_turn_stream_connections_active",
            "Open TCP/TLS client connections",
        );
        let worker_tasks = gauge(
            &r,
            "callrelay_turn_worker_tasks",
            "Tasks alive on the worker runtimes (listeners, one per TCP/TLS connection and per relay socket); back to its idle level when nothing is connected",
        );
        let mr = counter_vec(
            &r,
            "callrelay_turn_metrics_rejections_total",
            "Connections to the /metrics endpoint refused or closed by a bound",
            "reason",
        );
        let metrics_rejections = MetricsReject::LABELS
            .iter()
            .map(|l| mr.with_label_values(&[*l]))
            .collect();
        let metrics_connections = gauge(
            &r,
            "callrelay_turn_metrics_connections_active",
            "Open connections to the /metrics endpoint (at most metrics_max_connections)",
        );
        let bi = IntGaugeVec::new(
            Opts::new("callrelay_turn_build_info", "Build information"),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(bi.clone())).expect("unique metric");
        bi.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            registry: r,
            allocations_active,
            allocations_total,
            auth_failures,
            packets,
            bytes,
            permissions,
            channels,
            denied,
            quota,
            relay_ports_free,
            requests,
            in_process,
            rate_evictions,
            rate_limit_closed,
            tx_cache_full,
            stream_rejections,
            streams_active,
            worker_tasks,
            metrics_rejections,
            metrics_connections,
            tls_not_after: IntGauge::new(
                "callrelay_turn_tls_cert_not_after_seconds",
                "Expiry (notAfter, Unix seconds) of the TLS certificate in use",
            )
            .expect("valid metric"),
        }
    }

    /// The TLS certificate in use expires at `unix` (set at start and on every reload;
    /// the metric appears with the first call, so a server without TLS has none).
    pub fn set_tls_cert_not_after(&self, unix: u64) {
        // AlreadyReg after the first call: the gauge is registered once
        let _ = self.registry.register(Box::new(self.tls_not_after.clone()));
        self.tls_not_after
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    /// A stream connection refused or closed by a bound (accept path, not the relay path).
    pub fn stream_rejected(&self, reason: StreamReject) {
        if let Some(c) = self.stream_rejections.get(reason as usize) {
            c.inc();
        }
    }

    /// A connection to the `/metrics` endpoint refused or closed by a bound.
    pub fn metrics_rejected(&self, reason: MetricsReject) {
        if let Some(c) = self.metrics_rejections.get(reason as usize) {
            c.inc();
        }
    }

    /// Connections open on the `/metrics` endpoint now.
    pub fn set_metrics_connections(&self, n: usize) {
        self.metrics_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A stream connection was admitted.
    pub fn stream_opened(&self) {
        self.streams_active.inc();
    }

    /// An admitted stream connection ended.
    pub fn stream_closed(&self) {
        self.streams_active.dec();
    }

    /// One worker's count of alive tasks changed from `*prev` to `now` (0 when it stops).
    pub fn worker_tasks(&self, prev: &mut usize, now: usize) {
        self.worker_tasks.add(now as i64 - *prev as i64);
        *prev = now;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    /// Adds what changed since `prev` (one worker's previous report) and remembers `now`.
    pub fn report(&self, prev: &mut (Stats, Gauges), stats: &Stats, gauges: Gauges) {
        let (ps, pg) = prev;
        fn add(c: &[IntCounter], now: &[u64], before: &[u64]) {
            for ((c, n), b) in c.iter().zip(now).zip(before) {
                c.inc_by(n.saturating_sub(*b));
            }
        }
        add(&self.allocations_total, &stats.allocations, &ps.allocations);
        add(&self.auth_failures, &stats.auth_failures, &ps.auth_failures);
        for d in 0..2 {
            add(&self.packets[d], &stats.packets[d], &ps.packets[d]);
            add(&self.bytes[d], &stats.bytes[d], &ps.bytes[d]);
        }
        add(&self.denied, &stats.denied, &ps.denied);
        add(&self.quota, &stats.quota, &ps.quota);
        add(&self.requests, &stats.requests, &ps.requests);
        add(&self.in_process, &stats.in_process, &ps.in_process);
        self.rate_evictions
            .inc_by(stats.rate_evictions.saturating_sub(ps.rate_evictions));
        self.rate_limit_closed
            .inc_by(stats.rate_limit_closed.saturating_sub(ps.rate_limit_closed));
        self.tx_cache_full
            .inc_by(stats.tx_cache_full.saturating_sub(ps.tx_cache_full));
        let delta = |g: &IntGauge, now: u64, before: u64| g.add(now as i64 - before as i64);
        for i in 0..3 {
            delta(
                &self.allocations_active[i],
                gauges.allocations[i],
                pg.allocations[i],
            );
        }
        delta(&self.permissions, gauges.permissions, pg.permissions);
        delta(&self.channels, gauges.channels, pg.channels);
        // The pool is shared by all workers: absolute value, not a delta.
        self.relay_ports_free.set(gauges.relay_ports_free as i64);
        *ps = stats.clone();
        *pg = gauges;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported() {
        let m = Metrics::new();
        let mut prev = Default::default();
        let mut s = Stats::default();
        s.packets[1][2] = 5;
        s.denied[DenyClass::Cgnat.index()] = 2;
        m.report(
            &mut prev,
            &s,
            Gauges {
                allocations: [1, 0, 0],
                permissions: 3,
                channels: 1,
                relay_ports_free: 9,
            },
        );
        s.packets[1][2] = 7;
        s.in_process[1] = 4;
        s.rate_evictions = 6;
        s.rate_limit_closed = 2;
        m.report(
            &mut prev,
            &s,
            Gauges {
                allocations: [0, 0, 0],
                permissions: 3,
                channels: 1,
                relay_ports_free: 10,
            },
        );
        let t = m.render();
        for needle in [
            "callrelay_turn_allocations_active{transport=\"udp\"} 0",
            "callrelay_turn_allocations_total{result=\"forbidden\"} 0",
            "callrelay_turn_auth_failures_total{reason=\"stale_nonce\"} 0",
            "callrelay_turn_relayed_packets_total{direction=\"to_client\",transport=\"tls\"} 7",
            "callrelay_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"} 0",
            "callrelay_turn_permissions_active 3",
            "callrelay_turn_channels_active 1",
            "callrelay_turn_denied_peers_total{class=\"cgnat\"} 2",
            "callrelay_turn_denied_peers_total{class=\"other_reserved\"} 0",
            "callrelay_turn_quota_rejections_total{kind=\"relay_ports\"} 0",
            "callrelay_turn_stream_rejections_total{reason=\"auth_timeout\"} 0",
            "callrelay_turn_stream_connections_active 0",
            "callrelay_turn_metrics_rejections_total{reason=\"max_connections\"} 0",
            "callrelay_turn_metrics_rejections_total{reason=\"header_timeout\"} 0",
            "callrelay_turn_metrics_connections_active 0",
            "callrelay_turn_relay_ports_free 10",
            "callrelay_turn_requests_total{method=\"connection_bind\"} 0",
            "callrelay_turn_relayed_in_process_total{path=\"same_worker\"} 0",
            "callrelay_turn_relayed_in_process_total{path=\"cross_worker\"} 4",
            "callrelay_turn_rate_limit_evictions_total 6",
            "callrelay_turn_rate_limit_closed_total 2",
        ] {
            // Whole lines: "x 1" must not pass for "x 10", nor "x{a=\"b\"} 0" for a
            // longer label set.
            assert!(t.lines().any(|l| l == needle), "missing {needle} in\n{t}");
        }
        let build = format!(
            "callrelay_turn_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(t.lines().any(|l| l == build), "missing {build} in\n{t}");
    }
}
