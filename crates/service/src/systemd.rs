//! systemd integration: the `sd_notify` states both services send (`READY=1` once serving,
//! `STOPPING=1` at shutdown) and the watchdog — the interval systemd asked for, a
//! [`Heartbeat`] per loop that must keep turning, and the [`Watchdog`] that sends
//! `WATCHDOG=1` every quarter of the interval only while the watched loops turn.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op. Nothing here
//! logs: the services log what it returns under their own target, so a `RUST_LOG` that
//! names the service (`gateway=info`) still shows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tells systemd the service is up (`READY=1`; `Type=notify` units wait for it).
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the service is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`; `WATCHDOG_PID`, when set,
/// must be this process), as libsystemd's `sd_watchdog_enabled` reads it.
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the two variables' values and this process's id.
fn interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The last time a loop turned, for the watchdog: the loop writes it (one relaxed store
/// per turn), the watchdog reads it from another thread.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that last beat at `epoch` (shared by all of one process's loops).
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last_ms: Arc::default(),
        }
    }

    /// Records that the loop turned now.
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

/// What [`Watchdog::report`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Everything watched turned in time: `WATCHDOG=1` sent.
    Pinged,
    /// A stall began: no ping (systemd restarts the service after `WatchdogSec`); the
    /// service logs it, once per stall.
    StallBegan,
    /// The stall goes on: no ping, already logged.
    StillStalled,
}

/// The systemd watchdog's pinger: due every quarter of `WatchdogSec`; at each turn the
/// service checks that what it watches turned within half of it ([`Watchdog::due`]
/// returns that limit) and [`Watchdog::report`]s the result: `WATCHDOG=1` when alive,
/// else no ping.
#[derive(Debug)]
pub struct Watchdog {
    /// WatchdogSec (None: not under a systemd watchdog; `due` never completes).
    period: Option<Duration>,
    next: tokio::time::Instant,
    /// A stall is going on (reported once, not every tick).
    stalled: bool,
}

impl Watchdog {
    /// A pinger for `period` ([`watchdog_interval`]; `None`: never due). The first turn
    /// is due at once.
    pub fn new(period: Option<Duration>) -> Self {
        Self {
            period,
            next: tokio::time::Instant::now(),
            stalled: false,
        }
    }

    /// Waits until the next ping is due (a quarter period after the last) and returns
    /// how recently the watched loops must have turned (half the period). Never
    /// completes without a watchdog.
    pub async fn due(&mut self) -> Duration {
        let Some(period) = self.period else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + period / 4;
        period / 2
    }

    /// Pings when `alive` (everything watched turned in time); otherwise withholds the
    /// ping and says whether this stall just began (the one to log).
    pub fn report(&mut self, alive: bool) -> Report {
        if alive {
            self.stalled = false;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            Report::Pinged
        } else if self.stalled {
            Report::StillStalled
        } else {
            self.stalled = true;
            Report::StallBegan
        }
    }
}

#[cfg(test)]
mod tests;
