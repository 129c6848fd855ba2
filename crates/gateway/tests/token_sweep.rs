//! The periodic `token_max_idle` sweep while the gateway runs (docs/gateway.md "Token
//! store": checked at start and hourly). The core is sans-IO, so hours pass on a simulated
//! clock: the core is driven as the shell's timer loop drives it (`handle_timeout` with
//! the monotonic and the wall-clock time), one call per simulated minute.

use gateway::core::{Core, CoreConfig, Source};
use gateway::store::{MemoryRegistry, MemoryTokenStore};
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "sweep-admin-secret";
const HOUR: u64 = 3600;

fn stored(core: &Core) -> Vec<String> {
    core.token_snapshot()
        .tokens
        .into_iter()
        .map(|t| t.token)
        .collect()
}

#[test]
fn idle_tokens_are_dropped_by_the_hourly_sweep_while_running() {
    let max_idle = 2 * HOUR;
    let cfg = CoreConfig {
        token_auth: true,
        admin_secret: Some(SECRET.into()),
        token_max_idle: Duration::from_secs(max_idle),
        session_timeout: Duration::ZERO,
        ..CoreConfig::default()
    };
    let mut core = Core::new(
        cfg,
        Box::new(MemoryTokenStore::new()),
        Box::new(MemoryRegistry::new()),
        rand::SeedableRng::seed_from_u64(1),
    );
    let t0 = Instant::now();
    let u0: u64 = 1_800_000_000;
    let at = |secs: u64| (t0 + Duration::from_secs(secs), u0 + secs);
    let add = |core: &mut Core, token: &str, secs: u64| {
        let (now, unix) = at(secs);
        let r = core.admin_value(
            now,
            unix,
            json!({"janus": "add_token", "token": token, "transaction": "t", "admin_secret": SECRET}),
            None,
        );
        assert_eq!(r.reply["janus"], "success", "{}", r.reply);
    };
    // the shell runs handle_timeout from its first tick on
    core.handle_timeout(at(0).0, at(0).1);
    add(&mut core, "idle", 0);
    add(&mut core, "busy", 0);
    let (now, unix) = at(0);
    let r = core.handle_text(
        now,
        unix,
        Source::Ws(1),
        &json!({"janus": "create", "token": "busy", "transaction": "c"}).to_string(),
    );
    let session = r["data"]["id"].as_u64().unwrap_or_else(|| panic!("{r}"));
    let _ = core.take_token_snapshot();

    let mut gone_at = std::collections::HashMap::new();
    let end = 5 * HOUR + 60;
    for secs in (60..=end).step_by(60) {
        let (now, unix) = at(secs);
        if secs == 90 * 60 {
            add(&mut core, "late", secs);
            let _ = core.take_token_snapshot();
        }
        if secs % 600 == 0 {
            // a call in progress: its keepalives keep the token fresh
            let r = core.handle_text(
                now,
                unix,
                Source::Ws(1),
                &json!({"janus": "keepalive", "session_id": session, "token": "busy", "transaction": "k"})
                    .to_string(),
            );
            assert_eq!(r["janus"], "ack", "{r}");
        }
        let before = stored(&core);
        core.handle_timeout(now, unix);
        let after = stored(&core);
        for t in before.iter().filter(|t| !after.contains(t)) {
            gone_at.insert(t.clone(), secs);
            // the shell persists tokens.json when the core says the store changed
            let snap = core
                .take_token_snapshot()
                .expect("sweep must mark the store dirty");
            assert!(snap.tokens.iter().all(|e| &e.token != t));
        }
    }
    eprintln!("dropped at (s): {gone_at:?}");
    let idle = gone_at
        .get("idle")
        .copied()
        .expect("idle token never swept");
    assert!(
        (max_idle..=max_idle + HOUR + 60).contains(&idle),
        "idle token dropped at {idle} s, must be within an hour after {max_idle} s"
    );
    let late = gone_at
        .get("late")
        .copied()
        .expect("late token never swept");
    let late_due = 90 * 60 + max_idle;
    assert!(
        (late_due..=late_due + HOUR + 60).contains(&late),
        "late token dropped at {late} s, due {late_due} s"
    );
    assert!(!gone_at.contains_key("busy"), "a token in use was dropped");
    assert_eq!(stored(&core), vec!["busy".to_string()]);
    // and the dropped tokens no longer authorise anything
    let (now, unix) = at(end);
    let r = core.handle_text(
        now,
        unix,
        Source::Ws(1),
        &json!({"janus": "create", "token": "idle", "transaction": "x"}).to_string(),
    );
    assert_eq!(r["error"]["code"], 403, "{r}");
}
