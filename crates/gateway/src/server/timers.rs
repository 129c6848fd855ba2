//! The timer task (core deadlines, leftover HTTP events, token retries) and the systemd watchdog.

use super::state::{App, unix_now};
use super::tokens::{TOKEN_RETRY, persist_tokens};
use callrelay_service::systemd::{Report, Watchdog};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the last events of an ended HTTP session wait for a long poll.
const HTTP_LEFTOVER: Duration = Duration::from_secs(60);

/// Sleeps until the core's next deadline (O(1) to ask), or until a request armed an
/// earlier one (`timer_wake`), then runs what is due: no periodic tick, so idle
/// sessions and handles cost nothing.
pub(super) async fn timer_loop(app: App, shutdown: CancellationToken) {
    let mut next_retry = Instant::now();
    loop {
        app.timer_turned.notify_waiters();
        let (dirty, next) = {
            let mut inner = app.lock();
            let now = Instant::now();
            inner.core.handle_timeout(now, unix_now());
            inner.deliver();
            // last events of ended HTTP sessions that nobody fetched (oldest first)
            while let Some(&(t, sid)) = inner.closed_http.front() {
                if now.saturating_duration_since(t) < HTTP_LEFTOVER {
                    break;
                }
                inner.closed_http.pop_front();
                if inner.http.get(&sid).is_some_and(|q| q.closed_at == Some(t)) {
                    inner.http.remove(&sid);
                }
            }
            let leftover = inner.closed_http.front().map(|&(t, _)| t + HTTP_LEFTOVER);
            // taken under the lock: a request arming an earlier deadline after this
            // point notifies `timer_wake`, whose permit the select below sees
            let _ = inner.core.take_timer_moved();
            let next = [inner.core.poll_timeout(), leftover]
                .into_iter()
                .flatten()
                .min();
            (inner.core.take_token_snapshot().is_some(), next)
        };
        let retry = app.tokens_unsaved.load(Ordering::Relaxed) && Instant::now() >= next_retry;
        if (dirty || retry) && persist_tokens(&app).await.is_err() {
            next_retry = Instant::now() + TOKEN_RETRY;
        }
        let mut next = next;
        if app.tokens_unsaved.load(Ordering::Relaxed) {
            next = Some(next.map_or(next_retry, |t| t.min(next_retry)));
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = app.timer_wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The systemd watchdog: every quarter of `WatchdogSec`, wake the timer task and wait
/// (up to half of it) for its loop to turn — which takes the core's lock and needs the
/// runtime to schedule tasks — and only then send `WATCHDOG=1`. A deadlocked core or a
/// starved runtime stops the pings, and systemd restarts the gateway.
pub(super) async fn watchdog_loop(app: App, mut dog: Watchdog) {
    loop {
        let limit = dog.due().await;
        let turned = app.timer_turned.notified();
        tokio::pin!(turned);
        turned.as_mut().enable();
        app.timer_wake.notify_one();
        let alive = tokio::time::timeout(limit, turned).await.is_ok();
        if dog.report(alive) == Report::StallBegan {
            tracing::error!(
                "timer task stalled: withholding the systemd watchdog ping (systemd restarts the gateway after WatchdogSec)"
            );
        }
    }
}
