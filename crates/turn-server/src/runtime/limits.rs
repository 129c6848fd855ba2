//! Caps on TCP/TLS client connections: the global cap (sized from `RLIMIT_NOFILE`) and the
//! cap per source address, shared by every worker.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::StreamReject;

/// File descriptors kept out of the stream budget for listeners, epoll, timers, the
/// metrics endpoint and logging.
const FD_BASE: u64 = 64;

/// The global cap on TCP/TLS client connections: `configured`, lowered to a quarter of the
/// file descriptors above `FD_BASE` when the process limit (`RLIMIT_NOFILE`) is smaller.
/// A stream connection costs one fd and, once it allocates, a relay socket: two quarters at
/// most, so at least half of the descriptors stay for UDP allocations' relay sockets (and
/// RFC 6062 peer connections) whatever TCP/TLS clients do.
pub fn stream_cap(configured: u32, nofile: Option<u64>) -> usize {
    let configured = configured as usize;
    match nofile {
        Some(n) => {
            configured.min(usize::try_from(n.saturating_sub(FD_BASE) / 4).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux; `None` when
/// unreadable or unlimited).
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counts of TCP/TLS client connections shared by every worker: a global cap and a cap per
/// source address (IPv6 per /64: one host may hold a whole /64).
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_source: u32,
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, u32>>,
    /// Woken when a connection closes (an accept paused at the fd limit resumes).
    pub(super) freed: tokio::sync::Notify,
}

impl StreamLimits {
    /// Limits of `max_total` connections, `max_per_source` per source address.
    pub fn new(max_total: usize, max_per_source: u32) -> Self {
        Self {
            max_total,
            max_per_source,
            total: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn source_key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        }
    }

    /// Admits a new connection from `ip`, or says which cap it is over.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, StreamReject> {
        let key = Self::source_key(ip);
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(StreamReject::Total);
        }
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_source {
            return Err(StreamReject::PerSource);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(StreamSlot {
            limits: self.clone(),
            key,
        })
    }
}

/// One admitted stream connection; gives its place back when dropped.
#[derive(Debug)]
pub(super) struct StreamSlot {
    limits: Arc<StreamLimits>,
    key: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        drop(map);
        self.limits.freed.notify_waiters();
    }
}

/// `accept` failed because the process or the system is out of file descriptors (or
/// socket memory): retrying at once would spin. Linux errno values.
pub(super) fn out_of_fds(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}
