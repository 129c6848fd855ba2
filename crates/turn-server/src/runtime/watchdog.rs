//! The systemd watchdog: a heartbeat per worker loop, and the pings (`WATCHDOG=1`) sent only
//! while every worker's loop turns.

use std::time::Duration;

use callrelay_service::systemd;
pub use callrelay_service::systemd::{Heartbeat, watchdog_interval};

/// The systemd watchdog: `WATCHDOG=1` every quarter of `WatchdogSec`, sent from the main
/// thread (which serves signals and `/metrics`) and only while every worker's loop turned
/// within half of it — a worker stuck in a loop or a deadlock stops the pings, and
/// systemd restarts the service (`Restart=on-failure`).
#[derive(Debug)]
pub struct Watchdog {
    dog: systemd::Watchdog,
    workers: Vec<Heartbeat>,
}

impl Watchdog {
    /// Pings every quarter of `period` ([`watchdog_interval`]; `None`: never) while each
    /// of `workers` beat within half of it.
    pub fn new(period: Option<Duration>, workers: Vec<Heartbeat>) -> Self {
        if let Some(p) = period {
            tracing::info!(watchdog = ?p, "systemd watchdog enabled");
        }
        Self {
            dog: systemd::Watchdog::new(period),
            workers,
        }
    }

    /// Waits until the next ping is due, then pings if every worker is alive.
    pub async fn tick(&mut self) {
        let limit = self.dog.due().await;
        let stale: Vec<(usize, Duration)> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.age()))
            .filter(|(_, age)| *age > limit)
            .collect();
        if self.dog.report(stale.is_empty()) == systemd::Report::StallBegan {
            tracing::error!(
                workers = ?stale,
                "worker loop stalled: withholding the systemd watchdog ping (systemd restarts the service after WatchdogSec)"
            );
        }
    }
}
