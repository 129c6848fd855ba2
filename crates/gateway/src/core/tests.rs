//! The core without sockets or tokio: time is a parameter.
use super::counters::CallEnd;
use super::*;
use crate::metrics::Metrics;
use crate::store::{MemoryRegistry, MemoryTokenStore};
use rand::SeedableRng;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const OFFER: &str =
    "v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u1\r\na=mid:0\r\n";

fn core(cfg: CoreConfig) -> Core {
    Core::new(
        cfg,
        Box::new(MemoryTokenStore::new()),
        Box::new(MemoryRegistry::new()),
        StdRng::seed_from_u64(7),
    )
}

fn req(c: &mut Core, now: Instant, conn: ConnId, v: Value) -> Value {
    c.handle_value(now, 0, Source::Ws(conn), v)
}

fn events(c: &mut Core) -> Vec<(Source, Value)> {
    c.drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Event { owner, msg, .. } => Some((owner, msg)),
            Output::SessionClosed { .. } => None,
        })
        .collect()
}

/// (session, handle) registered as `name` on connection `conn`.
/// A videocall `message` (transaction "t") on session `s`, handle `h`.
fn message(s: u64, h: u64, body: Value) -> Value {
    json!({"janus": "message", "transaction": "t", "session_id": s, "handle_id": h, "body": body})
}

fn with_jsep(mut msg: Value, jsep: Value) -> Value {
    msg["jsep"] = jsep;
    msg
}

/// The caller's `call` to bob (transaction "call") with `jsep`.
fn call_bob(s: u64, h: u64, jsep: Value) -> Value {
    let mut m = message(s, h, json!({"request": "call", "username": "bob"}));
    m["transaction"] = "call".into();
    with_jsep(m, jsep)
}

fn party(c: &mut Core, now: Instant, conn: ConnId, name: &str) -> (u64, u64) {
    let s = req(c, now, conn, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
        .as_u64()
        .unwrap();
    let h = req(
        c,
        now,
        conn,
        json!({"janus": "attach", "transaction": "a", "session_id": s, "plugin": VIDEOCALL}),
    )["data"]["id"]
        .as_u64()
        .unwrap();
    let r = req(
        c,
        now,
        conn,
        json!({"janus": "message", "transaction": "r", "session_id": s, "handle_id": h, "body": {"request": "register", "username": name}}),
    );
    assert_eq!(r["janus"], "ack");
    events(c);
    (s, h)
}

#[test]
fn test_page_tokens_work_until_they_expire_and_are_not_stored() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        token_auth: true,
        ..CoreConfig::default()
    });
    let unix = 1_000_000;
    c.add_test_token("test-abc", unix + 600, unix);
    let create = |c: &mut Core, unix: u64, tok: &str| {
        c.handle_value(
            t0,
            unix,
            Source::Ws(1),
            json!({"janus": "create", "transaction": "c", "token": tok}),
        )
    };
    assert_eq!(create(&mut c, unix, "test-abc")["janus"], "success");
    assert_eq!(create(&mut c, unix + 599, "test-abc")["janus"], "success");
    assert_eq!(create(&mut c, unix, "test-other")["error"]["code"], 403);
    // not in the persistent store nor the Admin API's list
    assert_eq!(c.token_snapshot().tokens.len(), 0);
    assert_eq!(c.test_tokens(), 1);
    // expired: refused, and swept by the timer
    assert_eq!(create(&mut c, unix + 600, "test-abc")["error"]["code"], 403);
    c.add_test_token("test-def", unix + 10, unix);
    c.handle_timeout(t0, unix + 11);
    assert_eq!(c.test_tokens(), 0);
}

#[test]
fn timers_hold_one_entry_per_session_and_skip_idle_ones() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        session_timeout: Duration::from_secs(600),
        ..CoreConfig::default()
    });
    for i in 0..1000 {
        party(&mut c, t0, i, &format!("u{i}"));
    }
    assert_eq!(c.timers.len(), 1000);
    // a wake before any deadline pops nothing
    c.handle_timeout(t0 + Duration::from_secs(1), 0);
    assert_eq!(c.timers.len(), 1000);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(600)));
    // held SDPs arm their own deadline, earlier than the sessions': the shell is told
    let _ = c.take_timer_moved();
    let (mut c, _, _, _, _) = trickle_offer(t0, Duration::from_millis(500));
    assert!(c.take_timer_moved());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(500)));
}

#[test]
fn session_timeout_is_driven_by_poll_timeout() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let (s, _) = party(&mut c, t0, 1, "alice");
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    c.handle_timeout(t0 + Duration::from_secs(59), 0);
    assert!(events(&mut c).is_empty());
    let r = req(
        &mut c,
        t0 + Duration::from_secs(59),
        1,
        json!({"janus": "keepalive", "transaction": "k", "session_id": s}),
    );
    assert_eq!(r["janus"], "ack");
    // the heap re-arms lazily: the old deadline wakes the timer once, finds the
    // session active, and moves it to last_activity + 60 s
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    c.handle_timeout(t0 + Duration::from_secs(60), 0);
    assert!(events(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(119)));
    c.handle_timeout(t0 + Duration::from_secs(118), 0);
    assert!(events(&mut c).is_empty());
    c.handle_timeout(t0 + Duration::from_secs(119), 0);
    let ev = events(&mut c);
    assert_eq!(
        ev,
        vec![(Source::Ws(1), json!({"janus": "timeout", "session_id": s}))]
    );
    assert_eq!(
        c.stats(),
        (0, 0, 0, 0),
        "session, handle and username are gone"
    );
}

/// Alice (conn 1) calls Bob (conn 2) with a trickle offer at `t0`; returns the core,
/// Alice's session and handle, Bob's handle and the reply to `call`.
fn trickle_offer(t0: Instant, wait: Duration) -> (Core, u64, u64, u64, Value) {
    let mut c = core(CoreConfig {
        candidate_wait: wait,
        ..CoreConfig::default()
    });
    let (sa, ha) = party(&mut c, t0, 1, "alice");
    let (_sb, hb) = party(&mut c, t0, 2, "bob");
    let call = call_bob(sa, ha, json!({"type": "offer", "sdp": OFFER}));
    let reply = req(&mut c, t0, 1, call);
    (c, sa, ha, hb, reply)
}

/// A trickle of one candidate line for mid 0.
fn trickle_candidate(s: u64, h: u64, line: &str) -> Value {
    json!({"janus": "trickle", "transaction": "t", "session_id": s, "handle_id": h,
        "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}})
}

#[test]
fn offer_waits_for_candidates_until_completed_or_deadline() {
    let t0 = Instant::now();
    let (mut c, sa, ha, hb, reply) = trickle_offer(t0, Duration::from_millis(500));
    assert_eq!(reply["janus"], "ack");
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "only `calling` to alice: {ev:?}");
    assert_eq!(ev[0].1["plugindata"]["data"]["result"]["event"], "calling");
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    // a candidate arrives; still held
    let tr = trickle_candidate(sa, ha, "candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag u1");
    req(&mut c, t0 + Duration::from_millis(100), 1, tr);
    c.handle_timeout(t0 + Duration::from_millis(499), 0);
    assert!(events(&mut c).is_empty());
    // deadline: forwarded with the candidate, without end-of-candidates
    c.handle_timeout(t0 + Duration::from_millis(500), 0);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0, Source::Ws(2));
    assert_eq!(ev[0].1["sender"], hb);
    let sdp = ev[0].1["jsep"]["sdp"].as_str().unwrap();
    assert!(sdp.contains("a=candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag u1\r\n"));
    assert!(!sdp.contains("end-of-candidates"));
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
}

#[test]
fn completed_overtaking_the_last_candidate_does_not_empty_the_sdp() {
    // janus.js over HTTP sends every trickle as its own POST; `completed` can be
    // processed before the candidate it closes. The offer must still carry it.
    let t0 = Instant::now();
    let (mut c, sa, ha, hb, _) = trickle_offer(t0, Duration::from_millis(1000));
    events(&mut c);
    let done = json!({"janus": "trickle", "transaction": "d", "session_id": sa, "handle_id": ha,
        "candidate": {"completed": true}});
    req(&mut c, t0 + Duration::from_millis(150), 1, done);
    assert!(events(&mut c).is_empty(), "held: no candidate yet");
    let tr = trickle_candidate(sa, ha, "candidate:1 1 udp 1 127.0.0.1 9 typ relay ufrag u1");
    req(&mut c, t0 + Duration::from_millis(151), 1, tr);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1["sender"], hb);
    let sdp = ev[0].1["jsep"]["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=candidate:1 1 udp 1 127.0.0.1 9 typ relay ufrag u1\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("a=end-of-candidates"), "{sdp}");
}

/// The incomingcall SDP bob got, if any.
fn incoming_sdp(ev: &[(Source, Value)]) -> Option<String> {
    ev.iter()
        .find(|(o, m)| {
            *o == Source::Ws(2) && m["plugindata"]["data"]["result"]["event"] == "incomingcall"
        })
        .map(|(_, m)| m["jsep"]["sdp"].as_str().unwrap_or_default().to_string())
}

#[test]
fn relay_only_offer_goes_at_its_first_relay_candidate_and_the_rest_trickles() {
    let t0 = Instant::now();
    let (mut c, sa, ha, hb, _) = trickle_offer(t0, Duration::from_millis(1000));
    events(&mut c);
    let relay =
        "candidate:1 1 udp 41885439 203.0.113.1 50000 typ relay raddr 0.0.0.0 rport 0 ufrag u1";
    req(
        &mut c,
        t0 + Duration::from_millis(70),
        1,
        trickle_candidate(sa, ha, relay),
    );
    let ev = events(&mut c);
    let sdp = incoming_sdp(&ev).expect("forwarded at the relay candidate");
    assert!(sdp.contains(&format!("a={relay}\r\n")), "{sdp}");
    assert!(
        !sdp.contains("end-of-candidates"),
        "gathering goes on: {sdp}"
    );
    // a later candidate reaches bob as a server trickle, `completed` too
    let tcp =
        "candidate:2 1 udp 41885183 203.0.113.1 50002 typ relay raddr 0.0.0.0 rport 0 ufrag u1";
    req(
        &mut c,
        t0 + Duration::from_millis(90),
        1,
        trickle_candidate(sa, ha, tcp),
    );
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].0, &ev[0].1["janus"]),
        (Source::Ws(2), &json!("trickle"))
    );
    assert_eq!(ev[0].1["sender"], hb);
    assert_eq!(ev[0].1["candidate"]["candidate"], tcp);
}

#[test]
fn offer_with_host_candidates_waits_a_grace_for_srflx_after_the_relay() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let host = "candidate:1 1 udp 2122260223 10.10.1.2 50000 typ host ufrag u1";
    let srflx = "candidate:2 1 udp 1686052607 203.0.113.10 50000 typ srflx raddr 10.10.1.2 rport 50000 ufrag u1";
    let relay = "candidate:3 1 udp 41885439 203.0.113.1 50001 typ relay raddr 203.0.113.10 rport 50000 ufrag u1";
    // host, relay: held for the grace (100 ms by default), then forwarded
    let (mut c, sa, ha, _, _) = trickle_offer(t0, Duration::from_millis(1000));
    events(&mut c);
    req(&mut c, ms(5), 1, trickle_candidate(sa, ha, host));
    req(&mut c, ms(60), 1, trickle_candidate(sa, ha, relay));
    assert!(
        incoming_sdp(&events(&mut c)).is_none(),
        "a srflx may still come"
    );
    assert_eq!(c.poll_timeout(), Some(ms(160)));
    c.handle_timeout(ms(159), 0);
    assert!(events(&mut c).is_empty());
    c.handle_timeout(ms(160), 0);
    let sdp = incoming_sdp(&events(&mut c)).expect("forwarded after the grace");
    assert!(sdp.contains(host) && sdp.contains(relay), "{sdp}");
    // host, relay, then srflx within the grace: forwarded at the srflx
    let (mut c, sa, ha, _, _) = trickle_offer(t0, Duration::from_millis(1000));
    events(&mut c);
    req(&mut c, ms(5), 1, trickle_candidate(sa, ha, host));
    req(&mut c, ms(60), 1, trickle_candidate(sa, ha, relay));
    req(&mut c, ms(80), 1, trickle_candidate(sa, ha, srflx));
    let sdp = incoming_sdp(&events(&mut c)).expect("forwarded at the srflx");
    assert!(
        sdp.contains(host) && sdp.contains(srflx) && sdp.contains(relay),
        "{sdp}"
    );
    // the grace never outlasts candidate_wait
    let (mut c, sa, ha, _, _) = trickle_offer(t0, Duration::from_millis(100));
    events(&mut c);
    req(&mut c, ms(5), 1, trickle_candidate(sa, ha, host));
    req(&mut c, ms(60), 1, trickle_candidate(sa, ha, relay));
    c.handle_timeout(ms(100), 0);
    assert!(incoming_sdp(&events(&mut c)).is_some(), "deadline first");
}

#[test]
fn non_trickle_offers_are_forwarded_at_once() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let (sa, ha) = party(&mut c, t0, 1, "alice");
    party(&mut c, t0, 2, "bob");
    let call = call_bob(
        sa,
        ha,
        json!({"type": "offer", "sdp": OFFER, "trickle": false}),
    );
    req(&mut c, t0, 1, call);
    let ev = events(&mut c);
    assert!(
        ev.iter().any(|(o, m)| *o == Source::Ws(2)
            && m["plugindata"]["data"]["result"]["event"] == "incomingcall"),
        "{ev:?}"
    );
}

#[test]
fn orphaned_sessions_wait_for_claim_then_die() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        reclaim_timeout: Duration::from_secs(5),
        ..CoreConfig::default()
    });
    let (s1, _) = party(&mut c, t0, 1, "alice");
    let (s2, _) = party(&mut c, t0, 1, "bob");
    c.connection_closed(t0, 1);
    assert_eq!(c.stats().0, 2, "kept for a claim");
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    // one is claimed by a new connection in time
    let r = req(
        &mut c,
        t0 + Duration::from_secs(2),
        7,
        json!({"janus": "claim", "transaction": "c", "session_id": s1}),
    );
    assert_eq!(r["janus"], "success");
    c.handle_timeout(t0 + Duration::from_secs(5), 0);
    assert_eq!(c.session_owner(s1), Some(Source::Ws(7)));
    assert_eq!(c.session_owner(s2), None, "unclaimed session destroyed");
}

#[test]
fn one_token_or_connection_cannot_take_every_session() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        token_auth: true,
        max_sessions_per_token: 3,
        max_sessions_per_connection: 2,
        ..CoreConfig::default()
    });
    c.add_test_token("tA", 100, 0);
    c.add_test_token("tB", 100, 0);
    let create = |c: &mut Core, conn: ConnId, token: &str| {
        req(
            c,
            t0,
            conn,
            json!({"janus": "create", "transaction": "c", "token": token}),
        )
    };
    // token A: 3 sessions over 3 connections, the 4th is refused
    for conn in 1..=3 {
        assert_eq!(create(&mut c, conn, "tA")["janus"], "success");
    }
    let r = create(&mut c, 4, "tA");
    assert_eq!(
        r["error"],
        json!({"code": 490, "reason": "Maximum number of sessions for this token reached"})
    );
    // token B is unaffected, but one connection holds at most 2
    assert_eq!(create(&mut c, 5, "tB")["janus"], "success");
    assert_eq!(create(&mut c, 5, "tB")["janus"], "success");
    let r = create(&mut c, 5, "tB");
    assert_eq!(
        r["error"]["reason"],
        "Maximum number of sessions for this connection reached"
    );
    assert_eq!(create(&mut c, 6, "tB")["janus"], "success");
    // closing a connection frees its sessions for the token again
    c.connection_closed(t0, 1);
    assert_eq!(create(&mut c, 7, "tA")["janus"], "success");
    // what /metrics shows: the shell exports the core's counters at each scrape
    let metrics = Metrics::new();
    metrics.export_core(c.counters());
    let m = metrics.render();
    for line in [
        "callrelay_gateway_sessions_refused_total{limit=\"token\"} 1",
        "callrelay_gateway_sessions_refused_total{limit=\"connection\"} 1",
        "callrelay_gateway_sessions_refused_total{limit=\"global\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line}");
    }
    assert!(c.per_token.values().all(|n| *n <= 3));
    // every session destroyed: the tallies are empty again
    for sid in c.sessions.keys().copied().collect::<Vec<_>>() {
        c.destroy_session(t0, sid, CallEnd::Hangup);
    }
    assert!(c.per_token.is_empty() && c.per_conn.is_empty());
}

#[test]
fn session_and_handle_caps_answer_errors() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_sessions: 2,
        max_handles_per_session: 1,
        ..CoreConfig::default()
    });
    let (s, _) = party(&mut c, t0, 1, "alice");
    party(&mut c, t0, 1, "bob");
    let r = req(
        &mut c,
        t0,
        1,
        json!({"janus": "create", "transaction": "c3"}),
    );
    assert_eq!(
        r["error"],
        json!({"code": 490, "reason": "Maximum number of sessions reached"})
    );
    let r = req(
        &mut c,
        t0,
        1,
        json!({"janus": "attach", "transaction": "a2", "session_id": s, "plugin": VIDEOCALL}),
    );
    assert_eq!(r["error"]["code"], 461);
    req(
        &mut c,
        t0,
        1,
        json!({"janus": "destroy", "transaction": "d", "session_id": s}),
    );
    let r = req(
        &mut c,
        t0,
        1,
        json!({"janus": "create", "transaction": "c4"}),
    );
    assert_eq!(r["janus"], "success");
}

#[test]
fn closing_a_connection_hangs_up_the_peer_and_frees_the_name() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        candidate_wait: Duration::ZERO,
        ..CoreConfig::default()
    });
    let (sa, ha) = party(&mut c, t0, 1, "alice");
    let (_sb, hb) = party(&mut c, t0, 2, "bob");
    req(
        &mut c,
        t0,
        1,
        call_bob(sa, ha, json!({"type": "offer", "sdp": OFFER})),
    );
    events(&mut c);
    c.connection_closed(t0, 1);
    let ev = events(&mut c);
    let to_bob: Vec<&Value> = ev
        .iter()
        .filter(|(o, _)| *o == Source::Ws(2))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(to_bob.len(), 2, "{ev:?}");
    assert_eq!(
        to_bob[0]["plugindata"]["data"]["result"],
        json!({"event": "hangup", "username": "alice", "reason": "Remote WebRTC hangup"})
    );
    assert_eq!(
        to_bob[1],
        &json!({"janus": "hangup", "session_id": to_bob[1]["session_id"], "sender": hb, "reason": "Close PC"})
    );
    let (_, _, users, _) = c.stats();
    assert_eq!(users, 1, "alice's name is free");
}

#[test]
fn videocall_field_errors_keep_the_janus_codes_and_texts() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let (s, h) = party(&mut c, t0, 1, "alice");
    let cases = [
        (json!({}), 475, "Missing mandatory element (request)"),
        (
            json!({"request": 1}),
            474,
            "Invalid element type (request should be a string)",
        ),
        (
            json!({"request": "call"}),
            475,
            "Missing mandatory element (username)",
        ),
        (
            json!({"request": "call", "username": []}),
            474,
            "Invalid element type (username should be a string)",
        ),
        (
            json!({"request": "set", "audio": "yes"}),
            474,
            "Invalid element type (audio should be a boolean)",
        ),
        (
            json!({"request": "set", "record": 1}),
            474,
            "Invalid element type (record should be a boolean)",
        ),
        (
            json!({"request": "set", "filename": 1}),
            474,
            "Invalid element type (filename should be a string)",
        ),
        (
            json!({"request": "set", "bitrate": -1}),
            474,
            "Invalid element type (bitrate should be a positive integer)",
        ),
        (
            json!({"request": "set", "bitrate": 1.5}),
            474,
            "Invalid element type (bitrate should be a positive integer)",
        ),
        (
            json!({"request": "set", "substream": 3}),
            474,
            "Invalid value (substream should be 0, 1 or 2)",
        ),
        (
            json!({"request": "set", "fallback": "x"}),
            474,
            "Invalid value (fallback should be a positive integer)",
        ),
        (
            json!({"request": "register", "username": "x"}),
            477,
            "Already registered (alice)",
        ),
    ];
    for (body, code, reason) in cases {
        let msg = message(s, h, body.clone());
        assert_eq!(req(&mut c, t0, 1, msg)["janus"], "ack");
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1, "{body}: {ev:?}");
        let data = &ev[0].1["plugindata"]["data"];
        assert_eq!(
            data,
            &json!({"videocall": "event", "error_code": code, "error": reason}),
            "{body}"
        );
    }
    let ok = message(
        s,
        h,
        json!({"request": "set", "audio": true, "filename": "f", "bitrate": 0}),
    );
    assert_eq!(req(&mut c, t0, 1, ok)["janus"], "ack");
    let ev = events(&mut c);
    assert_eq!(
        ev[0].1["plugindata"]["data"]["result"]["event"], "set",
        "{ev:?}"
    );
}

#[test]
fn janus_field_errors_keep_the_janus_codes_and_texts() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        admin_secret: Some("adm".into()),
        ..CoreConfig::default()
    });
    let (s, h) = party(&mut c, t0, 1, "alice");
    let cases = [
        (
            json!({"janus": "ping"}),
            456,
            "Missing mandatory element (transaction)",
        ),
        (
            json!({"janus": "ping", "transaction": 5}),
            467,
            "Invalid element type (transaction should be a string)",
        ),
        (
            json!({"transaction": "t"}),
            456,
            "Missing mandatory element (janus)",
        ),
        (
            json!({"janus": true, "transaction": "t"}),
            467,
            "Invalid element type (janus should be a string)",
        ),
        (
            json!({"janus": "attach", "transaction": "t", "session_id": s}),
            456,
            "Missing mandatory element (plugin)",
        ),
        (
            json!({"janus": "attach", "transaction": "t", "session_id": s, "plugin": 1}),
            467,
            "Invalid element type (plugin should be a string)",
        ),
        (
            with_jsep(message(s, h, json!({})), json!({"sdp": "v=0"})),
            456,
            "JSEP error: missing mandatory element (type)",
        ),
        (
            with_jsep(message(s, h, json!({})), json!({"type": 1, "sdp": "v=0"})),
            467,
            "JSEP error: invalid element type (type should be a string)",
        ),
        (
            with_jsep(message(s, h, json!({})), json!({"type": "offer"})),
            456,
            "JSEP error: missing mandatory element (sdp)",
        ),
        (
            with_jsep(message(s, h, json!({})), json!({"type": "offer", "sdp": 2})),
            467,
            "JSEP error: invalid element type (sdp should be a string)",
        ),
    ];
    for (msg, code, reason) in cases {
        let r = req(&mut c, t0, 1, msg.clone());
        assert_eq!(r["error"], json!({"code": code, "reason": reason}), "{msg}");
    }
    let admin = [
        (
            json!({"janus": "ping"}),
            456,
            "Missing mandatory element (transaction)",
        ),
        (
            json!({"janus": "ping", "transaction": []}),
            467,
            "Invalid element type (transaction should be a string)",
        ),
        (
            json!({"transaction": "t"}),
            456,
            "Missing mandatory element (janus)",
        ),
        (
            json!({"janus": 0, "transaction": "t"}),
            467,
            "Invalid element type (janus should be a string)",
        ),
        (
            json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm"}),
            456,
            "Missing mandatory element (token)",
        ),
        (
            json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm", "token": 7}),
            467,
            "Invalid element type (token should be a string)",
        ),
    ];
    for (msg, code, reason) in admin {
        let r = c.admin_value(t0, 0, msg.clone(), None).reply;
        assert_eq!(r["error"], json!({"code": code, "reason": reason}), "{msg}");
    }
}

/// Every refusal path of the Janus and Admin APIs answers exactly what it answered
/// before requests were parsed into types: code, reason, and which of `session_id`
/// and `transaction` the reply carries ($S and $H stand for the session and handle).
#[test]
fn every_refusal_path_answers_the_same_bytes() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        admin_secret: Some("adm".into()),
        ..CoreConfig::default()
    });
    let (s, h) = party(&mut c, t0, 1, "alice");
    let sub = |text: &str| {
        text.replace("\"$S\"", &s.to_string())
            .replace("\"$H\"", &h.to_string())
    };
    let janus = [
        r#"{"janus":"nonsense","transaction":"t"}"#,
        r#"{"janus":"keepalive","transaction":"t"}"#,
        r#"{"janus":"create","transaction":"t","session_id":-5}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":"$S","handle_id":0}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":"$S","handle_id":-1}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":12345}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":"$S","handle_id":777}"#,
        r#"{"janus":"create","transaction":"t","session_id":"$S"}"#,
        r#"{"janus":"attach","transaction":"t","session_id":"$S","handle_id":"$H","plugin":"janus.plugin.videocall"}"#,
        r#"{"janus":"destroy","transaction":"t","session_id":"$S","handle_id":"$H"}"#,
        r#"{"janus":"detach","transaction":"t","session_id":"$S"}"#,
        r#"{"janus":"hangup","transaction":"t","session_id":"$S"}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","body":{}}"#,
        r#"{"janus":"trickle","transaction":"t","session_id":"$S","candidate":{}}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H"}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":"x"}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":{},"jsep":"x"}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":{},"jsep":{"type":"pranswer","sdp":"v=0"}}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":{},"jsep":{"type":"offer","sdp":"x=0"}}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":{},"jsep":{"type":"answer","sdp":"v=0"}}"#,
        r#"{"janus":"message","transaction":"t","session_id":"$S","handle_id":"$H","body":"x","jsep":"x"}"#,
        r#"{"janus":"MESSAGE","transaction":"t","session_id":"$S","handle_id":"$H","body":{"request":"nonsense"},"jsep":{"type":"OFFER","sdp":"v=0"}}"#,
        r#"{"janus":"trickle","transaction":"t","session_id":"$S","handle_id":"$H"}"#,
        r#"{"janus":"trickle","transaction":"t","session_id":"$S","handle_id":"$H","candidate":{},"candidates":[]}"#,
        r#"{"janus":"trickle","transaction":"t","session_id":"$S","handle_id":"$H","candidates":5}"#,
        r#"{"janus":"attach","transaction":"t","session_id":"$S","plugin":"janus.plugin.echotest"}"#,
        r#"{"janus":"create","transaction":"t","id":"$S"}"#,
        r#"{"janus":"create","transaction":"t","id":"$H"}"#,
        r#"{"transaction":"t","session_id":5}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":"$S","handle_id":"5"}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":1.5}"#,
        r#"{"janus":"keepalive","transaction":"t","session_id":"$S","handle_id":1.5}"#,
        r#"{"janus":"ping","transaction":"t","handle_id":0}"#,
        r#"[1,2]"#,
        r#"{"#,
    ];
    let mut got = Vec::new();
    for text in janus {
        let r = c.handle_text(t0, 0, Source::Ws(1), &sub(text));
        got.push(r.to_string());
    }
    let admin = [
        r#"{"janus":"list_handles","transaction":"t","admin_secret":"adm"}"#,
        r#"{"janus":"list_tokens","transaction":"t","admin_secret":"adm","session_id":"$S"}"#,
        r#"{"janus":"list_handles","transaction":"t","admin_secret":"adm","session_id":999}"#,
        r#"{"janus":"add_token","transaction":"t","admin_secret":"adm","token":"k","plugins":"x"}"#,
        r#"{"janus":"add_token","transaction":"t","admin_secret":"adm","token":"k","plugins":[1]}"#,
        r#"{"janus":"allow_token","transaction":"t","admin_secret":"adm","token":"k"}"#,
        r#"{"janus":"allow_token","transaction":"t","admin_secret":"adm","token":"k","plugins":[]}"#,
        r#"{"janus":"allow_token","transaction":"t","admin_secret":"adm","token":"k","plugins":["janus.plugin.echotest"]}"#,
        r#"{"janus":"allow_token","transaction":"t","admin_secret":"adm","token":"k","plugins":["janus.plugin.videocall"]}"#,
        r#"{"janus":"disallow_token","transaction":"t","admin_secret":"adm","token":"k","plugins":["janus.plugin.videocall"]}"#,
        r#"{"janus":"remove_token","transaction":"t","admin_secret":"adm","token":"k"}"#,
        r#"{"janus":"list_sessions","transaction":"t","admin_secret":"nope","session_id":"$S"}"#,
        r#"{"janus":"info","transaction":"t","admin_secret":"adm","session_id":"$S"}"#,
        r#"{"janus":"add_token","transaction":"t","admin_secret":"adm","token":"k","plugins":[]}"#,
        r#"{"janus":"add_token","transaction":"t","admin_secret":"adm","token":"k2","plugins":["janus.plugin.echotest"]}"#,
        r#"{"janus":"ALLOW_TOKEN","transaction":"t","admin_secret":"adm","token":"k2","plugins":["janus.plugin.videocall"]}"#,
        r#"{"janus":"list_tokens","transaction":"t","admin_secret":"adm"}"#,
        r#"{"janus":"list_sessions","transaction":"t","admin_secret":"adm"}"#,
        r#"{"janus":"list_handles","transaction":"t","admin_secret":"adm","session_id":"$S"}"#,
        r#"{"janus":"get_status","transaction":"t","admin_secret":"adm"}"#,
        r#"{"janus":"ping","transaction":"t","session_id":"$S"}"#,
        r#"{"janus":"destroy_session","transaction":"t","admin_secret":"adm","session_id":"$S"}"#,
        r#"["#,
    ];
    for text in admin {
        let r = c.admin_text(t0, 0, &sub(text));
        got.push(format!("{} {}", r.reply, r.tokens_changed));
    }
    let got: Vec<String> = got
        .iter()
        .map(|g| {
            g.replace(&s.to_string(), "\"$S\"")
                .replace(&h.to_string(), "\"$H\"")
        })
        .collect();
    let want = [
        r#"{"error":{"code":457,"reason":"Unhandled request 'nonsense' at this path"},"janus":"error","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'keepalive' at this path"},"janus":"error","transaction":"t"}"#,
        r#"{"error":{"code":458,"reason":"Session not found"},"janus":"error","transaction":"t"}"#,
        r#"{"error":{"code":459,"reason":"Handle not found"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":459,"reason":"Handle not found"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":458,"reason":"No such session 12345"},"janus":"error","session_id":12345,"transaction":"t"}"#,
        r#"{"error":{"code":459,"reason":"No such handle 777 in session "$S""},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":453,"reason":"Unknown request 'create'"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'attach' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'destroy' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'detach' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'hangup' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'message' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'trickle' at this path"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":456,"reason":"Missing mandatory element (body)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (body should be an object)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":455,"reason":"Invalid jsep object"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":464,"reason":"JSEP error: unknown message type 'pranswer'"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":465,"reason":"Invalid SDP (doesn't start with v=)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":469,"reason":"Unexpected ANSWER (did we offer?)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (body should be an object)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"janus":"ack","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":456,"reason":"Missing mandatory element (candidate|candidates)"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":454,"reason":"Can't have both candidate and candidates"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"janus":"ack","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":460,"reason":"No such plugin 'janus.plugin.echotest'"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":468,"reason":"Session ID already in use"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":468,"reason":"Session ID already in use"},"janus":"error","session_id":"$H","transaction":"t"}"#,
        r#"{"error":{"code":456,"reason":"Missing mandatory element (janus)"},"janus":"error","session_id":5}"#,
        r#"{"janus":"ack","session_id":"$S","transaction":"t"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'keepalive' at this path"},"janus":"error","transaction":"t"}"#,
        r#"{"error":{"code":459,"reason":"Handle not found"},"janus":"error","session_id":"$S","transaction":"t"}"#,
        r#"{"janus":"pong","transaction":"t"}"#,
        r#"{"error":{"code":456,"reason":"Missing mandatory element (transaction)"},"janus":"error"}"#,
        r#"{"error":{"code":454,"reason":"Invalid Janus API request - <string>(1,1): EOF while parsing an object at line 1 column 1"},"janus":"error"}"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'list_handles' at this path"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'list_tokens' at this path"},"janus":"error","session_id":"$S","transaction":"t"} false"#,
        r#"{"error":{"code":458,"reason":"No such session 999"},"janus":"error","session_id":999,"transaction":"t"} false"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (plugins should be an array)"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (plugins should be an array of strings)"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (plugins should be a non-empty array)"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (plugins should be a non-empty array)"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":467,"reason":"Invalid element type (some of the provided plugins are invalid)"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":470,"reason":"Token k not found"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":470,"reason":"Token k not found"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":490,"reason":"Error removing token"},"janus":"error","transaction":"t"} false"#,
        r#"{"error":{"code":403,"reason":"Unauthorized request (wrong or missing secret/token)"},"janus":"error","session_id":"$S","transaction":"t"} false"#,
        r#"{"error":{"code":457,"reason":"Unhandled request 'info' at this path"},"janus":"error","session_id":"$S","transaction":"t"} false"#,
        r#"{"data":{"plugins":["janus.plugin.videocall"]},"janus":"success","transaction":"t"} true"#,
        r#"{"data":{"plugins":[]},"janus":"success","transaction":"t"} true"#,
        r#"{"data":{"plugins":["janus.plugin.videocall"]},"janus":"success","transaction":"t"} true"#,
        r#"{"data":{"tokens":[{"allowed_plugins":["janus.plugin.videocall"],"token":"k"},{"allowed_plugins":["janus.plugin.videocall"],"token":"k2"}]},"janus":"success","transaction":"t"} false"#,
        r#"{"janus":"success","sessions":["$S"],"transaction":"t"} false"#,
        r#"{"handles":["$H"],"janus":"success","session_id":"$S","transaction":"t"} false"#,
        r#"{"janus":"success","status":{"candidate_wait_ms":1000,"handles":1,"reclaim_session_timeout":0,"session_timeout":60,"sessions":1,"token_auth":false,"tokens":2},"transaction":"t"} false"#,
        r#"{"error":{"code":403,"reason":"Unauthorized request (wrong or missing secret/token)"},"janus":"error","session_id":"$S","transaction":"t"} false"#,
        r#"{"janus":"success","session_id":"$S","transaction":"t"} false"#,
        r#"{"error":{"code":454,"reason":"JSON error: on line 1: EOF while parsing a list at line 1 column 1"},"janus":"error"} false"#,
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w);
    }
}

/// Cluster mode: every local change of the token table comes out as a `TokenUpdate`
/// (state, not operation), another node's change goes in without coming out again, a
/// full table replaces the local one except what is not written yet, and the hourly
/// sweep publishes the last use before it expires idle tokens.
#[test]
fn shared_tokens_come_out_as_updates_and_go_in_silently() {
    use crate::store::TokenEntry;
    let t0 = Instant::now();
    let day = 86_400;
    let mut c = core(CoreConfig {
        admin_secret: Some("adm".into()),
        token_auth: true,
        token_max_idle: Duration::from_secs(7 * day),
        ..CoreConfig::default()
    });
    let admin = |c: &mut Core, unix: u64, v: Value| c.admin_value(t0, unix, v, None).reply;
    // alone (no share_tokens): nothing is queued
    admin(
        &mut c,
        10,
        json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm", "token": "solo"}),
    );
    assert!(c.take_token_updates().is_empty());
    c.share_tokens();
    let entry = |t: &str, plugins: &[&str], last_seen: u64| TokenEntry {
        token: t.into(),
        plugins: plugins.iter().map(|p| p.to_string()).collect(),
        last_seen,
    };
    admin(
        &mut c,
        100,
        json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm", "token": "a"}),
    );
    admin(
        &mut c,
        101,
        json!({"janus": "disallow_token", "transaction": "t", "admin_secret": "adm", "token": "a", "plugins": [VIDEOCALL]}),
    );
    admin(
        &mut c,
        102,
        json!({"janus": "remove_token", "transaction": "t", "admin_secret": "adm", "token": "solo"}),
    );
    // refused changes change nothing and queue nothing
    let r = admin(
        &mut c,
        103,
        json!({"janus": "remove_token", "transaction": "t", "admin_secret": "adm", "token": "nope"}),
    );
    assert_eq!(r["janus"], "error");
    assert_eq!(
        c.take_token_updates(),
        [
            TokenUpdate::Put(entry("a", &[VIDEOCALL], 100)),
            TokenUpdate::Put(entry("a", &[], 100)),
            TokenUpdate::Delete("solo".into()),
        ]
    );
    // another node's changes: applied, not queued again
    c.apply_shared_token("b", Some(entry("b", &[VIDEOCALL], 200)));
    c.apply_shared_token("a", None);
    assert!(c.take_token_updates().is_empty());
    assert!(c.check_credentials(Some("b"), None, 300));
    assert!(!c.check_credentials(Some("a"), None, 300));
    // a full table: "b" is not in it (removed elsewhere while we were away), "c" is
    // new, "d" was added here and is not written yet
    admin(
        &mut c,
        301,
        json!({"janus": "add_token", "transaction": "t", "admin_secret": "adm", "token": "d"}),
    );
    c.take_token_updates();
    let keep = ["d".to_string()].into_iter().collect();
    assert_eq!(
        c.replace_shared_tokens(vec![entry("c", &[VIDEOCALL], 250)], &keep),
        1
    );
    assert!(!c.check_credentials(Some("b"), None, 302));
    assert!(c.check_credentials(Some("c"), None, 302));
    assert!(c.check_credentials(Some("d"), None, 302));
    assert!(c.take_token_updates().is_empty());
    // the sweep (first run arms it, the next one an hour later does the work): "c" and
    // "d" were used at 302 and are published with that time; 8 days later both are idle
    c.handle_timeout(t0, 400);
    c.handle_timeout(t0 + Duration::from_secs(3600), 500);
    assert_eq!(
        c.take_token_updates(),
        [
            TokenUpdate::Put(entry("c", &[VIDEOCALL], 302)),
            TokenUpdate::Put(entry("d", &[VIDEOCALL], 302)),
        ]
    );
    c.handle_timeout(t0 + Duration::from_secs(7200), 302 + 8 * day);
    assert_eq!(
        c.take_token_updates(),
        [
            TokenUpdate::Delete("c".into()),
            TokenUpdate::Delete("d".into())
        ]
    );
}

/// Every idle handle and session pays for its inline size (one WebSocket per browser:
/// issue 15); what only a call in progress needs is boxed.
#[test]
fn idle_handles_and_sessions_stay_small() {
    assert!(
        size_of::<Handle>() <= 104,
        "Handle is {} bytes",
        size_of::<Handle>()
    );
    assert!(
        size_of::<Session>() <= 96,
        "Session is {} bytes",
        size_of::<Session>()
    );
}

const ANSWER: &str =
    "v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u2\r\na=mid:0\r\n";
const RELAY_A: &str =
    "candidate:1 1 udp 41885439 203.0.113.1 50000 typ relay raddr 0.0.0.0 rport 0 ufrag u1";
const RELAY_B: &str =
    "candidate:1 1 udp 41885439 203.0.113.1 50002 typ relay raddr 0.0.0.0 rport 0 ufrag u2";

/// An `early_offer` call: alice (conn 1) calls bob (conn 2), bob accepts at `t0` + 10 ms.
/// Returns the core and (alice's session, handle), (bob's session, handle).
fn early_call(t0: Instant) -> (Core, (u64, u64), (u64, u64)) {
    let mut c = core(CoreConfig {
        early_offer: true,
        ..CoreConfig::default()
    });
    let a = party(&mut c, t0, 1, "alice");
    let b = party(&mut c, t0, 2, "bob");
    req(
        &mut c,
        t0,
        1,
        call_bob(a.0, a.1, json!({"type": "offer", "sdp": OFFER})),
    );
    // the offer went at once, with no candidate
    let sdp = incoming_sdp(&events(&mut c)).expect("the offer is not held");
    assert!(!sdp.contains("a=candidate"), "{sdp}");
    assert_eq!(c.counters().early_offers, 1);
    let accept = with_jsep(
        message(b.0, b.1, json!({"request": "accept"})),
        json!({"type": "answer", "sdp": ANSWER}),
    );
    req(&mut c, t0 + Duration::from_millis(10), 2, accept);
    events(&mut c);
    (c, a, b)
}

/// The `accepted` SDP alice got, if any.
fn accepted_sdp(ev: &[(Source, Value)]) -> Option<String> {
    ev.iter()
        .find(|(o, m)| {
            *o == Source::Ws(1) && m["plugindata"]["data"]["result"]["event"] == "accepted"
        })
        .map(|(_, m)| m["jsep"]["sdp"].as_str().unwrap_or_default().to_string())
}

fn fallbacks(c: &Core) -> [u64; 6] {
    c.counters().early_offer_fallbacks
}

#[test]
fn early_offer_answer_waits_for_both_permissions() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let (mut c, a, b) = early_call(t0);
    // alice's relay candidate reaches bob by trickle (janus.js 0.2.x ignores it)
    req(&mut c, ms(60), 1, trickle_candidate(a.0, a.1, RELAY_A));
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1["janus"], "trickle");
    // no answer yet; only alice's allocation is opened to its own relay IP, at once
    let ra: std::net::SocketAddr = "203.0.113.1:50000".parse().unwrap();
    let first = c.take_permit_requests();
    assert_eq!(
        first
            .iter()
            .map(|r| (r.relay, r.peer, r.id.seq))
            .collect::<Vec<_>>(),
        [(ra, ra.ip(), 0)]
    );
    // its answer is not waited for, and changes nothing
    c.permit_result(ms(61), first[0].id, PermitResult::Error);
    assert!(events(&mut c).is_empty());
    // bob's relay candidate: the answer could go; first the permissions, both ways
    req(&mut c, ms(70), 2, trickle_candidate(b.0, b.1, RELAY_B));
    assert!(
        accepted_sdp(&events(&mut c)).is_none(),
        "held for the permissions"
    );
    let reqs = c.take_permit_requests();
    let rb: std::net::SocketAddr = "203.0.113.1:50002".parse().unwrap();
    let pairs: Vec<_> = reqs.iter().map(|r| (r.relay, r.peer)).collect();
    assert_eq!(pairs, [(rb, ra.ip()), (ra, rb.ip())]);
    assert!(reqs.iter().all(|r| r.id.handle == b.1));
    assert_eq!(
        c.poll_timeout(),
        Some(ms(70 + 50)),
        "bounded by early_offer_timeout"
    );
    c.permit_result(ms(72), reqs[0].id, PermitResult::Installed);
    assert!(
        accepted_sdp(&events(&mut c)).is_none(),
        "one of two confirmed"
    );
    c.permit_result(ms(73), reqs[1].id, PermitResult::Installed);
    let sdp = accepted_sdp(&events(&mut c)).expect("both confirmed: the answer goes");
    assert!(sdp.contains(RELAY_B), "{sdp}");
    assert_eq!(fallbacks(&c), [0; 6]);
    // a late, duplicate answer changes nothing
    c.permit_result(ms(74), reqs[1].id, PermitResult::Error);
    assert_eq!(fallbacks(&c), [0; 6]);
    assert!(events(&mut c).is_empty());
}

#[test]
fn early_offer_answer_goes_anyway_on_timeout_or_refusal() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    // bob's relay candidate first: the answer waits for alice's, then for the
    // turn-server, which never answers
    let (mut c, a, b) = early_call(t0);
    req(&mut c, ms(40), 2, trickle_candidate(b.0, b.1, RELAY_B));
    assert!(accepted_sdp(&events(&mut c)).is_none());
    assert!(
        c.take_permit_requests().is_empty(),
        "alice's address unknown"
    );
    req(&mut c, ms(60), 1, trickle_candidate(a.0, a.1, RELAY_A));
    events(&mut c);
    let reqs: Vec<_> = c
        .take_permit_requests()
        .into_iter()
        .filter(|r| r.id.seq != 0)
        .collect();
    assert_eq!(reqs.len(), 2);
    c.handle_timeout(ms(109), 0);
    assert!(accepted_sdp(&events(&mut c)).is_none());
    c.handle_timeout(ms(110), 0);
    assert!(
        accepted_sdp(&events(&mut c)).is_some(),
        "timeout: forwarded"
    );
    assert_eq!(fallbacks(&c), [0, 0, 0, 0, 0, 1]);
    c.permit_result(ms(111), reqs[0].id, PermitResult::Installed);
    assert!(events(&mut c).is_empty(), "stale answer ignored");

    // a relay address that is not our turn-server's: forwarded at that answer
    let (mut c, a, b) = early_call(t0);
    req(&mut c, ms(60), 1, trickle_candidate(a.0, a.1, RELAY_A));
    req(&mut c, ms(70), 2, trickle_candidate(b.0, b.1, RELAY_B));
    events(&mut c);
    let reqs: Vec<_> = c
        .take_permit_requests()
        .into_iter()
        .filter(|r| r.id.seq != 0)
        .collect();
    c.permit_result(ms(71), reqs[1].id, PermitResult::NotOurRelay);
    assert!(accepted_sdp(&events(&mut c)).is_some());
    assert_eq!(fallbacks(&c), [0, 1, 0, 0, 0, 0]);
}

#[test]
fn early_offer_without_an_offerer_relay_falls_back() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let host = "candidate:2 1 udp 2122260223 10.1.2.3 50000 typ host ufrag u1";
    // alice ends gathering with no relay candidate: bob's answer goes at its relay
    let (mut c, a, b) = early_call(t0);
    req(&mut c, ms(20), 1, trickle_candidate(a.0, a.1, host));
    let done = json!({"janus": "trickle", "transaction": "d", "session_id": a.0, "handle_id": a.1,
        "candidate": {"completed": true}});
    req(&mut c, ms(30), 1, done);
    events(&mut c);
    req(&mut c, ms(70), 2, trickle_candidate(b.0, b.1, RELAY_B));
    assert!(accepted_sdp(&events(&mut c)).is_some());
    assert!(c.take_permit_requests().is_empty());
    assert_eq!(fallbacks(&c), [1, 0, 0, 0, 0, 0]);
    // alice says nothing at all: the answer goes at candidate_wait (1 s after it came)
    let (mut c, _, b) = early_call(t0);
    req(&mut c, ms(70), 2, trickle_candidate(b.0, b.1, RELAY_B));
    assert!(accepted_sdp(&events(&mut c)).is_none());
    assert_eq!(c.poll_timeout(), Some(ms(1010)));
    c.handle_timeout(ms(1010), 0);
    assert!(accepted_sdp(&events(&mut c)).is_some());
    assert_eq!(fallbacks(&c), [1, 0, 0, 0, 0, 0]);
}

#[test]
fn without_early_offer_the_offer_still_waits_for_its_relay_candidate() {
    let t0 = Instant::now();
    let (mut c, _, _, _, _) = trickle_offer(t0, Duration::from_millis(1000));
    assert!(incoming_sdp(&events(&mut c)).is_none());
    assert_eq!(c.counters().early_offers, 0);
    assert!(c.take_permit_requests().is_empty());
}

#[test]
fn early_offer_state_goes_with_a_call_that_ends_unsettled() {
    let t0 = Instant::now();
    let (mut c, a, _) = early_call(t0);
    assert_eq!(c.early.len(), 2, "both sides wait");
    let hangup = message(a.0, a.1, json!({"request": "hangup"}));
    req(&mut c, t0 + Duration::from_millis(20), 1, hangup);
    events(&mut c);
    c.handle_timeout(t0 + Duration::from_millis(30), 0);
    assert!(c.early.is_empty(), "swept with the timers");
    assert_eq!(fallbacks(&c), [0; 6]);
}
