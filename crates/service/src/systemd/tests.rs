use super::*;

#[test]
fn interval_follows_watchdog_usec_and_pid() {
    let me = 4242;
    assert_eq!(
        interval_from(Some("30000000"), None, me),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        interval_from(Some("30000000"), Some("4242"), me),
        Some(Duration::from_secs(30))
    );
    // another process's watchdog (systemd sets WATCHDOG_PID for the main process only)
    assert_eq!(interval_from(Some("30000000"), Some("1"), me), None);
    assert_eq!(interval_from(Some("30000000"), Some("x"), me), None);
    assert_eq!(interval_from(Some("0"), None, me), None);
    assert_eq!(interval_from(Some("soon"), None, me), None);
    assert_eq!(interval_from(None, Some("4242"), me), None);
}

#[test]
fn a_heartbeat_ages_until_it_beats() {
    let epoch = Instant::now() - Duration::from_secs(10);
    let h = Heartbeat::new(epoch);
    let other = h.clone();
    assert!(h.age() >= Duration::from_secs(10), "{:?}", h.age());
    other.beat();
    assert!(
        h.age() < Duration::from_secs(5),
        "a clone beats for all: {:?}",
        h.age()
    );
}

#[tokio::test(start_paused = true)]
async fn due_every_quarter_and_reports_pings_only_when_alive() {
    let mut w = Watchdog::new(Some(Duration::from_secs(4)));
    let t0 = tokio::time::Instant::now();
    assert_eq!(w.due().await, Duration::from_secs(2));
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the first turn is due at once"
    );
    assert_eq!(w.due().await, Duration::from_secs(2));
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(w.report(true), Report::Pinged);
    assert_eq!(w.report(false), Report::StallBegan);
    assert_eq!(w.report(false), Report::StillStalled);
    assert_eq!(w.report(true), Report::Pinged);
    assert_eq!(
        w.report(false),
        Report::StallBegan,
        "a new stall is logged again"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_watchdog_nothing_is_ever_due() {
    let mut w = Watchdog::new(None);
    let r = tokio::time::timeout(Duration::from_secs(3600), w.due()).await;
    assert!(r.is_err());
}
