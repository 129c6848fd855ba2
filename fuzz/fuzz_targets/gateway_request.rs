//! Arbitrary text through the gateway core's request entry points (`Core::handle_text`
//! for the Janus WebSocket and HTTP transports, `Core::admin_text` for the Admin API),
//! interleaved with closed connections and passing time. Besides "no panic":
//! every reply is a JSON object with a `janus` string, a string `transaction` of an
//! object request comes back unchanged, the core's tables stay consistent after every
//! step, and once every client is gone and the timeouts passed nothing is left.
//!
//! Input: a flags byte, then messages separated by NUL bytes; the first byte of each
//! picks where it goes (`sel % 8`: 0-2 WebSocket 1-3, 3 HTTP, 4 Admin API, 5 close
//! WebSocket `sel / 8 % 3`, 6 long poll, 7 `sel / 8 * 250` ms pass).
#![no_main]

use gateway::core::{Core, CoreConfig, Output, Source};
use gateway::store::{MemoryRegistry, MemoryTokenStore};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::time::{Duration, Instant};

const ADMIN_SECRET: &str = "adminpw";

fn check_reply(request: &str, reply: &Value) {
    let obj = reply
        .as_object()
        .unwrap_or_else(|| panic!("reply not an object: {reply}"));
    assert!(
        obj.get("janus").is_some_and(Value::is_string),
        "no janus in {reply}"
    );
    // Parsing the request again only matters when it can hold a `transaction` key: the
    // key appears literally unless it is spelt with escapes (`\u0074...`).
    if (request.contains("transaction") || request.contains('\\'))
        && let Ok(Value::Object(req)) = serde_json::from_str::<Value>(request)
        && let Some(Value::String(tx)) = req.get("transaction")
        && req.get("janus").is_some_and(Value::is_string)
    {
        assert_eq!(
            obj.get("transaction").and_then(Value::as_str),
            Some(tx.as_str()),
            "request {request} answered {reply}"
        );
    }
}

fn check_outputs(core: &mut Core) {
    for out in core.drain() {
        if let Output::Event { msg, .. } = out {
            assert!(
                msg.get("janus").is_some_and(Value::is_string),
                "event {msg}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (token_auth, reclaim) = match data.first() {
        Some(b) => (b & 1 == 1, b & 2 == 2),
        None => (false, false),
    };
    let cfg = CoreConfig {
        token_auth,
        admin_secret: Some(ADMIN_SECRET.into()),
        api_secret: Some("apipw".into()),
        reclaim_timeout: Duration::from_secs(if reclaim { 5 } else { 0 }),
        candidate_wait: Duration::from_millis(300),
        ..CoreConfig::default()
    };
    let mut core = Core::new(
        cfg,
        Box::new(MemoryTokenStore::new()),
        Box::new(MemoryRegistry::new()),
        gateway::fuzzing::rng(u64::from(data.first().copied().unwrap_or(0))),
    );
    let t0 = Instant::now();
    let mut now = t0;
    let mut unix: u64 = 1_800_000_000;
    // connection ids are never reused by the shell: a closed one gets a successor
    let mut conns: [u64; 3] = [1, 2, 3];
    let mut next_conn = 4;
    for msg in data
        .get(1..)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .take(64)
    {
        let Some((&sel, body)) = msg.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(body);
        match sel % 8 {
            0..=2 => {
                let reply =
                    core.handle_text(now, unix, Source::Ws(conns[usize::from(sel % 8)]), &text);
                check_reply(&text, &reply);
            }
            3 => {
                let reply = core.handle_text(now, unix, Source::Http, &text);
                check_reply(&text, &reply);
            }
            4 => {
                let r = core.admin_text(now, unix, &text);
                check_reply(&text, &r.reply);
            }
            5 => {
                let i = usize::from(sel / 8 % 3);
                core.connection_closed(now, conns[i]);
                conns[i] = next_conn;
                next_conn += 1;
            }
            6 => {
                let sid = body
                    .iter()
                    .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
                let _ = core.longpoll(now, unix, sid, Some(&text), None);
            }
            _ => {
                let ms = u64::from(sel / 8) * 250;
                now += Duration::from_millis(ms);
                unix += ms / 1000;
                core.handle_timeout(now, unix);
            }
        }
        check_outputs(&mut core);
        gateway::fuzzing::check_invariants(&core);
    }
    // every client goes away; after the longest timeout nothing may be left
    for c in conns.iter().copied().chain(1..next_conn) {
        core.connection_closed(now, c);
    }
    now += Duration::from_secs(86_400);
    core.handle_timeout(now, unix + 86_400);
    check_outputs(&mut core);
    gateway::fuzzing::check_invariants(&core);
    assert!(
        gateway::fuzzing::is_empty(&core),
        "leak: {:?}",
        core.stats()
    );
});
