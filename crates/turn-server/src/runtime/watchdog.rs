//! The systemd watchdog: a heartbeat per worker loop, and the pings (`WATCHDOG=1`) sent only
//! while every worker's loop turns.

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

/// The systemd watchdog: `WATCHDOG=1` every quarter of `WatchdogSec`, sent from the main
/// thread (which serves signals and `/metrics`) and only while every worker's loop turned
/// within half of it — a worker stuck in a loop or a deadlock stops the pings, and
/// systemd restarts the service (`Restart=on-failure`).
#[derive(Debug)]
pub struct Watchdog {
    /// WatchdogSec (None: not under a systemd watchdog; `tick` never completes).
    period: Option<Duration>,
    workers: Vec<Heartbeat>,
    next: tokio::time::Instant,
    /// A stale worker was already logged (log once per stall, not every tick).
    stalled: bool,
}

impl Watchdog {
    /// Pings every quarter of `period` ([`watchdog_interval`]; `None`: never) while each
    /// of `workers` beat within half of it.
    pub fn new(period: Option<Duration>, workers: Vec<Heartbeat>) -> Self {
        if let Some(p) = period {
            tracing::info!(watchdog = ?p, "systemd watchdog enabled");
        }
        Self {
            period,
            workers,
            next: tokio::time::Instant::now(),
            stalled: false,
        }
    }

    /// Waits until the next ping is due, then pings if every worker is alive.
    pub async fn tick(&mut self) {
        let Some(period) = self.period else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + period / 4;
        let limit = period / 2;
        let stale: Vec<(usize, Duration)> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.age()))
            .filter(|(_, age)| *age > limit)
            .collect();
        if stale.is_empty() {
            self.stalled = false;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else if !self.stalled {
            self.stalled = true;
            tracing::error!(
                workers = ?stale,
                "worker loop stalled: withholding the systemd watchdog ping (systemd restarts the service after WatchdogSec)"
            );
        }
    }
}
