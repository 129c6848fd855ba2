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

/// The answer of one request to the control endpoint
/// (`callrelay_turn_control_requests_total{result}`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ControlResult {
    /// Permission installed (or refreshed).
    Installed = 0,
    /// No allocation has that relayed address (404).
    NoAllocation = 1,
    /// The peer policy denies the IP (403).
    Denied = 2,
    /// The allocation's permission table is full (507).
    Full = 3,
    /// Missing or wrong bearer secret (401).
    Unauthorized = 4,
    /// Over `control_rate` (429).
    RateLimited = 5,
    /// Not the expected JSON, or the peer's family is not the relay's (400).
    BadRequest = 6,
    /// Body over the endpoint's limit (413).
    TooLarge = 7,
    /// The owning worker's queue was full or it did not answer in time (503).
    Unavailable = 8,
}

impl ControlResult {
    /// Label values in index order.
    pub const LABELS: [&str; 9] = [
        "installed",
        "no_allocation",
        "denied",
        "full",
        "unauthorized",
        "rate_limited",
        "bad_request",
        "too_large",
        "unavailable",
    ];

    /// This result's label.
    pub fn label(self) -> &'static str {
        Self::LABELS.get(self as usize).copied().unwrap_or("?")
    }
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
    control_requests: Vec<IntCounter>,
    /// Registered on the first `set_tls_cert_not_after`: absent without TLS.
    tls_not_after: IntGauge,
    offload_packets: [IntCounter; 2],
    offload_passed: Vec<IntCounter>,
    offload_fallback: Vec<IntCounter>,
    offload_active: IntGauge,
    offload_hook: IntGaugeVec,
}

use callrelay_service::metrics::register;

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help))
}

/// A counter with one label, one handle per value of `values` (pre-created, so each
/// shows as 0), in their order.
fn counters<'a>(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<IntCounter> {
    let v = register(r, IntCounterVec::new(Opts::new(name, help), &[label]));
    values
        .into_iter()
        .map(|l| v.with_label_values(&[l]))
        .collect()
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
        reason = "metric names and help texts are literals: a bad one panics at start-up, in every test"
    )]
    pub fn new() -> Self {
        let r = Registry::new();
        let active = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "callrelay_turn_allocations_active",
                    "Active allocations by client transport",
                ),
                &["transport"],
            ),
        );
        let allocations_active = Proto::ALL.map(|p| active.with_label_values(&[p.label()]));
        let allocations_total = counters(
            &r,
            "callrelay_turn_allocations_total",
            "Allocate requests by result",
            "result",
            labels::ALLOC_RESULT,
        );
        let auth_failures = counters(
            &r,
            "callrelay_turn_auth_failures_total",
            "Authentication failures by reason",
            "reason",
            labels::AUTH_REASON,
        );
        let by_direction = |name, help| {
            let v = register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &["direction", "transport"]),
            );
            [0, 1].map(|d| {
                Proto::ALL.map(|p| v.with_label_values(&[labels::DIRECTION[d], p.label()]))
            })
        };
        let packets = by_direction("callrelay_turn_relayed_packets_total", "Packets relayed");
        let bytes = by_direction(
            "callrelay_turn_relayed_bytes_total",
            "Payload bytes relayed",
        );
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
        let denied = counters(
            &r,
            "callrelay_turn_denied_peers_total",
            "Peers denied by the peer policy",
            "class",
            DenyClass::ALL.iter().map(|c| c.label()),
        );
        let quota = counters(
            &r,
            "callrelay_turn_quota_rejections_total",
            "Quota and rate-limit rejections",
            "kind",
            labels::QUOTA_KIND,
        );
        let relay_ports_free = gauge(&r, "callrelay_turn_relay_ports_free", "Free relay ports");
        let requests = counters(
            &r,
            "callrelay_turn_requests_total",
            "STUN/TURN requests by method",
            "method",
            labels::METHOD,
        );
        let in_process = counters(
            &r,
            "callrelay_turn_relayed_in_process_total",
            "Relay-to-relay packets delivered in process (both allocations on this server)",
            "path",
            ["same_worker", "cross_worker"],
        );
        let rate_evictions = counter(
            &r,
            "callrelay_turn_rate_limit_evictions_total",
            "Rate-limit table entries replaced by a new source (the table was full)",
        );
        let rate_limit_closed = counter(
            &r,
            "callrelay_turn_rate_limit_closed_total",
            "TCP/TLS connections closed for going over their source's request rate",
        );
        let tx_cache_full = counter(
            &r,
            "callrelay_turn_transaction_cache_full_total",
            "Answers not kept for retransmissions because the transaction cache (transaction_cache) was full",
        );
        let stream_rejections = counters(
            &r,
            "callrelay_turn_stream_rejections_total",
            "TCP/TLS client connections refused or closed by a bound",
            "reason",
            StreamReject::LABELS,
        );
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
        let metrics_rejections = counters(
            &r,
            "callrelay_turn_metrics_rejections_total",
            "Connections to the /metrics endpoint refused or closed by a bound",
            "reason",
            MetricsReject::LABELS,
        );
        let metrics_connections = gauge(
            &r,
            "callrelay_turn_metrics_connections_active",
            "Open connections to the /metrics endpoint (at most metrics_max_connections)",
        );
        let control_requests = counters(
            &r,
            "callrelay_turn_control_requests_total",
            "Requests to the control endpoint (POST /control/permission) by answer",
            "result",
            ControlResult::LABELS,
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("callrelay_turn_build_info", "Build information"),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let offload_packets = {
            let v = register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "callrelay_turn_offload_packets_total",
                        "Packets the kernel fast path relayed (also counted in callrelay_turn_relayed_packets_total)",
                    ),
                    &["direction"],
                ),
            );
            [0, 1].map(|d| v.with_label_values(&[labels::DIRECTION[d]]))
        };
        let offload_passed = counters(
            &r,
            "callrelay_turn_offload_passed_total",
            "Packets of a binding in the kernel fast path that it passed to the userspace relay, by reason",
            "reason",
            turn_offload::Counters::PASSED,
        );
        let offload_fallback = counters(
            &r,
            "callrelay_turn_offload_fallback_total",
            "Times the kernel fast path could not start (offload set to auto, xdp or tc) and the relay stayed in userspace, by reason",
            "reason",
            turn_offload::Fallback::LABELS,
        );
        let offload_active = gauge(
            &r,
            "callrelay_turn_offload_active",
            "1 while the kernel fast path for UDP ChannelData is attached",
        );
        let offload_hook = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "callrelay_turn_offload_interface",
                    "1 for each interface the kernel fast path is attached to, with its hook (xdp or tc)",
                ),
                &["interface", "hook"],
            ),
        );
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
            control_requests,
            tls_not_after: IntGauge::new(
                "callrelay_turn_tls_cert_not_after_seconds",
                "Expiry (notAfter, Unix seconds) of the TLS certificate in use",
            )
            .expect("valid metric"),
            offload_packets,
            offload_passed,
            offload_fallback,
            offload_active,
            offload_hook,
        }
    }

    /// The kernel fast path could not start: counted by reason.
    pub fn offload_fallback(&self, reason: turn_offload::Fallback) {
        if let Some(c) = self.offload_fallback.get(reason as usize) {
            c.inc();
        }
    }

    /// Whether the kernel fast path is attached.
    pub fn set_offload_active(&self, on: bool) {
        self.offload_active.set(i64::from(on));
    }

    /// The kernel fast path is attached to `interface` at `hook` (one series per interface).
    pub fn set_offload_hook(&self, interface: &str, hook: turn_offload::Hook) {
        self.offload_hook
            .with_label_values(&[interface, hook.label()])
            .set(1);
    }

    /// Adds what the kernel fast path relayed since `prev` (its per-CPU counters, summed)
    /// to the offload counters and to the UDP relayed totals, and remembers `now`.
    pub fn report_offload(&self, prev: &mut turn_offload::Counters, now: turn_offload::Counters) {
        let udp = Proto::ALL
            .iter()
            .position(|p| *p == Proto::Udp)
            .unwrap_or(0);
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let deltas = [
            (
                d(now.to_peer_packets, prev.to_peer_packets),
                d(now.to_peer_bytes, prev.to_peer_bytes),
            ),
            (
                d(now.to_client_packets, prev.to_client_packets),
                d(now.to_client_bytes, prev.to_client_bytes),
            ),
        ];
        // Dropped over an allocation's bandwidth: counted like the userspace path's drops.
        let bw = labels::QUOTA_KIND.iter().position(|l| *l == "bandwidth");
        if let Some(c) = bw.and_then(|i| self.quota.get(i)) {
            c.inc_by(d(now.bandwidth_drops, prev.bandwidth_drops));
        }
        for ((c, n), b) in self.offload_passed.iter().zip(now.passed).zip(prev.passed) {
            c.inc_by(n.saturating_sub(b));
        }
        for (dir, (p, b)) in deltas.into_iter().enumerate() {
            if let Some(c) = self.offload_packets.get(dir) {
                c.inc_by(p);
            }
            if let Some(c) = self.packets.get(dir).and_then(|v| v.get(udp)) {
                c.inc_by(p);
            }
            if let Some(c) = self.bytes.get(dir).and_then(|v| v.get(udp)) {
                c.inc_by(b);
            }
        }
        *prev = now;
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

    /// One answer of the control endpoint.
    pub fn control_request(&self, result: ControlResult) {
        if let Some(c) = self.control_requests.get(result as usize) {
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
            "callrelay_turn_offload_packets_total{direction=\"to_peer\"} 0",
            "callrelay_turn_offload_fallback_total{reason=\"not_built\"} 0",
            "callrelay_turn_offload_active 0",
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

#[cfg(test)]
mod offload_tests {
    use super::*;

    #[test]
    fn offloaded_packets_count_in_the_relayed_totals_too() {
        let m = Metrics::new();
        let mut prev = turn_offload::Counters::default();
        let mut now = turn_offload::Counters {
            to_peer_packets: 3,
            to_peer_bytes: 300,
            to_client_packets: 2,
            to_client_bytes: 40,
            bandwidth_drops: 4,
            passed: [1, 0, 2, 0],
        };
        m.report_offload(&mut prev, now);
        now.to_peer_packets = 5;
        now.to_peer_bytes = 500;
        m.report_offload(&mut prev, now);
        m.offload_fallback(turn_offload::Fallback::NoPermission);
        m.set_offload_active(true);
        m.set_offload_hook("eth0", turn_offload::Hook::Xdp);
        m.set_offload_hook("eth1", turn_offload::Hook::Tc);
        let t = m.render();
        for needle in [
            "callrelay_turn_offload_packets_total{direction=\"to_peer\"} 5",
            "callrelay_turn_offload_packets_total{direction=\"to_client\"} 2",
            "callrelay_turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} 5",
            "callrelay_turn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"} 500",
            "callrelay_turn_relayed_bytes_total{direction=\"to_client\",transport=\"udp\"} 40",
            "callrelay_turn_offload_fallback_total{reason=\"no_permission\"} 1",
            "callrelay_turn_offload_active 1",
            "callrelay_turn_offload_interface{hook=\"xdp\",interface=\"eth0\"} 1",
            "callrelay_turn_offload_interface{hook=\"tc\",interface=\"eth1\"} 1",
            "callrelay_turn_quota_rejections_total{kind=\"bandwidth\"} 4",
            "callrelay_turn_offload_passed_total{reason=\"expired\"} 1",
            "callrelay_turn_offload_passed_total{reason=\"checksum\"} 2",
            "callrelay_turn_offload_passed_total{reason=\"no_route\"} 0",
        ] {
            assert!(t.lines().any(|l| l == needle), "missing {needle} in\n{t}");
        }
    }
}
