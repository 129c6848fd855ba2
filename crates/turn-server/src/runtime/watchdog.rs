//! The systemd watchdog's view of the workers: a heartbeat per worker loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The last time a worker's loop turned, for the systemd watchdog: the worker writes it
/// (one relaxed store per loop turn, at least once a second), the main thread reads it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that last beat at `epoch` (shared by all of one process's workers).
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last_ms: Arc::default(),
        }
    }

    /// Records that the worker's loop turned now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`; `WATCHDOG_PID`, when set,
/// must be this process), as libsystemd's `sd_watchdog_enabled` reads it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
