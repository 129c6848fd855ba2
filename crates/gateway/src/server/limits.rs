//! Connection caps: `max_connections`, per-address caps, `trusted_proxies`, the fd limit.

use crate::config::Config;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// File descriptors kept free beyond the public listeners' cap: the admin listener's
/// connections, tokens.json writes, the runtime's own descriptors.
const RESERVED_FDS: usize = 64;

/// The soft `RLIMIT_NOFILE` of this process (from /proc; None where unavailable).
fn nofile_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `max_connections`, lowered when the fd limit could not hold it plus the admin
/// listener's connections and [`RESERVED_FDS`].
fn public_connection_cap(max_connections: usize, max_admin: usize) -> usize {
    let Some(nofile) = nofile_limit() else {
        return max_connections;
    };
    let fit = nofile.saturating_sub(max_admin + RESERVED_FDS).max(16);
    if fit < max_connections {
        tracing::warn!(
            max_connections,
            nofile,
            cap = fit,
            "max_connections lowered to fit the file descriptor limit (raise LimitNOFILE)"
        );
        fit
    } else {
        max_connections
    }
}

/// Connection caps shared by the listeners that use it: open connections in all, and
/// per source address.
pub(super) struct ConnLimiter {
    pub(super) max_total: usize,
    pub(super) max_per_ip: usize,
    /// The `reason` label when `max_total` refuses.
    pub(super) total_reason: &'static str,
    /// Sources exempt from `max_per_ip` (reverse proxies: every client of theirs
    /// arrives from their address).
    pub(super) exempt: Vec<crate::config::Cidr>,
    pub(super) state: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
}

impl ConnLimiter {
    pub(super) fn new(max_total: usize, max_per_ip: usize, total_reason: &'static str) -> Self {
        Self {
            max_total,
            max_per_ip,
            total_reason,
            exempt: Vec::new(),
            state: Mutex::new((0, HashMap::new())),
        }
    }

    /// Exempts these sources from the per-address cap (never from `max_total`).
    fn exempt(mut self, nets: Vec<crate::config::Cidr>) -> Self {
        self.exempt = nets;
        self
    }

    /// Counts one more connection from `ip`, or the reason label of the cap it hits.
    pub(super) fn acquire(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
    ) -> Result<ConnSlot, &'static str> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 >= self.max_total {
            return Err(self.total_reason);
        }
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip && !self.exempt.iter().any(|c| c.contains(ip)) {
            return Err("per_ip");
        }
        *n += 1;
        st.0 += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it releases the slot.
pub(super) struct ConnSlot {
    pub(super) limiter: Arc<ConnLimiter>,
    pub(super) ip: std::net::IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.ip);
            }
        }
    }
}

/// The limiters of the public listeners (WebSocket and HTTP share one) and of the
/// admin listener.
pub(super) fn connection_limiters(cfg: &Config) -> (Arc<ConnLimiter>, Arc<ConnLimiter>) {
    let public = Arc::new(
        ConnLimiter::new(
            public_connection_cap(cfg.max_connections, cfg.max_admin_connections),
            cfg.max_connections_per_ip,
            "max_connections",
        )
        .exempt(cfg.trusted_proxies.clone()),
    );
    // the admin listener has its own cap, and the public cap leaves fds for it: a
    // flood on the public listeners never stops Mattermost's add_token
    let admin = Arc::new(ConnLimiter::new(
        cfg.max_admin_connections,
        usize::MAX,
        "admin",
    ));
    (public, admin)
}
