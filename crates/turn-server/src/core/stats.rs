//! Counters ([`Stats`]) and gauges ([`Gauges`]) the runtime exports as Prometheus metrics,
//! and their label tables.

use std::time::Instant;

use rand::RngCore;

use super::{Core, Exceeded, Proto};
use crate::policy::DenyClass;
use shared_ice::stun::Method;

/// Counters the runtime exports as Prometheus metrics (monotonic).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Allocate results: ok, unauthorized, quota, capacity, mismatch, bad_request, forbidden.
    pub allocations: [u64; 7],
    /// Auth failures: missing, bad_integrity, unknown_user, expired, stale_nonce, bad_username.
    pub auth_failures: [u64; 6],
    /// Packets relayed, indexed `[direction: to_peer=0, to_client=1][transport]`.
    pub packets: [[u64; 3]; 2],
    /// Bytes relayed, indexed `[direction][transport]`.
    pub bytes: [[u64; 3]; 2],
    /// Denied peers by [`DenyClass::index`].
    pub denied: [u64; 9],
    /// Quota rejections: user_allocations, total_allocations, bandwidth, rate_limit,
    /// relay_ports, permissions, channels.
    pub quota: [u64; 7],
    /// Requests: binding, allocate, refresh, create_permission, channel_bind, connect, connection_bind.
    pub requests: [u64; 7],
    /// Packets delivered in process from one allocation to another, accepted by the
    /// receiving allocation: `[same_worker, cross_worker]`.
    pub in_process: [u64; 2],
    /// Rate-limit table entries replaced to make room for a new source.
    pub rate_evictions: u64,
    /// TCP/TLS connections closed for going over their source's request budget.
    pub rate_limit_closed: u64,
    /// Answers not kept for retransmissions because the transaction cache was full.
    pub tx_cache_full: u64,
}

/// Declares a counter-index enum and the label of each variant as one table: a variant's
/// discriminant is its index into the [`Stats`] array and into `LABELS`, so an index and
/// its label cannot drift apart.
macro_rules! labelled_index {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub(super) enum $name {
            $($variant,)+
        }

        impl $name {
            /// The labels, in discriminant order.
            pub(super) const LABELS: [&'static str; [$($label),+].len()] = [$($label),+];
        }
    };
}

labelled_index! {
    /// `callrelay_turn_allocations_total{result}`.
    AllocResult {
        Ok = "ok", Unauthorized = "unauthorized", Quota = "quota", Capacity = "capacity",
        Mismatch = "mismatch", BadRequest = "bad_request", Forbidden = "forbidden",
    }
}

labelled_index! {
    /// `callrelay_turn_auth_failures_total{reason}`.
    AuthFail {
        Missing = "missing", BadIntegrity = "bad_integrity", UnknownUser = "unknown_user",
        Expired = "expired", StaleNonce = "stale_nonce", BadUsername = "bad_username",
    }
}

labelled_index! {
    /// `callrelay_turn_quota_rejections_total{kind}`.
    QuotaKind {
        User = "user_allocations", Total = "total_allocations", Bandwidth = "bandwidth",
        RateLimit = "rate_limit", RelayPorts = "relay_ports", Permissions = "permissions",
        Channels = "channels",
    }
}

/// Label tables matching [`Stats`] indexes.
pub mod labels {
    use super::{AllocResult, AuthFail, QuotaKind};

    /// `callrelay_turn_allocations_total{result}`.
    pub const ALLOC_RESULT: [&str; 7] = AllocResult::LABELS;
    /// `callrelay_turn_auth_failures_total{reason}`.
    pub const AUTH_REASON: [&str; 6] = AuthFail::LABELS;
    /// `direction`.
    pub const DIRECTION: [&str; 2] = ["to_peer", "to_client"];
    /// `callrelay_turn_quota_rejections_total{kind}`.
    pub const QUOTA_KIND: [&str; 7] = QuotaKind::LABELS;
    /// `callrelay_turn_requests_total{method}`.
    pub const METHOD: [&str; 7] = [
        "binding",
        "allocate",
        "refresh",
        "create_permission",
        "channel_bind",
        "connect",
        "connection_bind",
    ];
}

impl From<Exceeded> for QuotaKind {
    fn from(e: Exceeded) -> Self {
        match e {
            Exceeded::User => Self::User,
            Exceeded::Total => Self::Total,
        }
    }
}

/// Gauges computed on demand.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Gauges {
    /// Active allocations per transport.
    pub allocations: [u64; 3],
    /// Active permissions.
    pub permissions: u64,
    /// Active channel bindings.
    pub channels: u64,
    /// Free relay ports of this shard.
    pub relay_ports_free: u64,
}

impl<R: RngCore> Core<R> {
    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Adds the bytes of a finished RFC 6062 data connection to the relayed-bytes counters
    /// (byte streams have no packets to count).
    pub fn count_stream_relay(&mut self, proto: Proto, to_peer: u64, to_client: u64) {
        let t = proto.index();
        self.stats.bytes[0][t] += to_peer;
        self.stats.bytes[1][t] += to_client;
    }

    /// Current gauge values.
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut g = Gauges {
            relay_ports_free: self.quota.ports_free() as u64,
            ..Gauges::default()
        };
        for a in self.slots.iter().flatten() {
            if a.pending.is_some() {
                continue;
            }
            g.allocations[a.client.proto.index()] += 1;
            g.permissions += a.permissions.values().filter(|e| **e > now).count() as u64;
            g.channels += a.channels.values().filter(|c| c.expires > now).count() as u64;
        }
        g
    }

    pub(super) fn count_method(&mut self, m: Method) {
        let i = match m {
            Method::BINDING => 0,
            Method::ALLOCATE => 1,
            Method::REFRESH => 2,
            Method::CREATE_PERMISSION => 3,
            Method::CHANNEL_BIND => 4,
            Method::CONNECT => 5,
            Method::CONNECTION_BIND => 6,
            _ => return,
        };
        self.stats.requests[i] += 1;
    }
}

/// Exposes deny classes for the metrics registry.
pub fn deny_labels() -> impl Iterator<Item = &'static str> {
    DenyClass::ALL.iter().map(|c| c.label())
}

#[cfg(test)]
mod tests {
    use super::{AllocResult, AuthFail, QuotaKind, labels};

    /// A variant indexes its own label (the exported label sets did not change).
    #[test]
    fn an_index_names_its_own_label() {
        assert_eq!(
            labels::ALLOC_RESULT[AllocResult::Forbidden as usize],
            "forbidden"
        );
        assert_eq!(
            labels::ALLOC_RESULT[AllocResult::BadRequest as usize],
            "bad_request"
        );
        assert_eq!(
            labels::AUTH_REASON[AuthFail::BadUsername as usize],
            "bad_username"
        );
        assert_eq!(labels::AUTH_REASON[AuthFail::Missing as usize], "missing");
        assert_eq!(
            labels::QUOTA_KIND[QuotaKind::User as usize],
            "user_allocations"
        );
        assert_eq!(labels::QUOTA_KIND[QuotaKind::Channels as usize], "channels");
        assert_eq!(
            labels::QUOTA_KIND,
            [
                "user_allocations",
                "total_allocations",
                "bandwidth",
                "rate_limit",
                "relay_ports",
                "permissions",
                "channels"
            ]
        );
    }
}
