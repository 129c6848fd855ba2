//! Janus-shaped requests built from the fuzzer's bytes, so that whole call flows happen:
//! three WebSocket clients and the HTTP transport create sessions, attach videocall
//! handles, register, call, accept, trickle, hang up, detach, destroy, claim, keep
//! alive, disconnect and time out, with the Admin API adding and removing the token in
//! between. Besides "no panic": every reply is an object with a `janus` string and the
//! request's transaction, the core's tables stay consistent after every step
//! (`gateway::fuzzing::check_invariants`: both sides of every call, registry, cap
//! tallies, candidate bounds), and after every client went away nothing is left.
#![no_main]

use gateway::core::{Core, CoreConfig, Output, Source};
use gateway::store::{MemoryRegistry, MemoryTokenStore};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN_SECRET: &str = "adminpw";
const TOKEN: &str = "dG9rZW4tb2YtbWF0dGVybW9zdA==";
const NAMES: [&str; 4] = ["alice", "bob", "carol", ""];
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=mid:0\r\na=sendrecv\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:EsAw\r\na=mid:1\r\na=sendrecv\r\n";

/// Reads choices from the fuzzer's bytes (0 when they run out).
struct R<'a>(&'a [u8]);

impl R<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn pick<'b, T>(&mut self, xs: &'b [T]) -> Option<&'b T> {
        if xs.is_empty() {
            None
        } else {
            Some(&xs[self.below(xs.len())])
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

struct World {
    core: Core,
    now: Instant,
    unix: u64,
    conns: [u64; 3],
    next_conn: u64,
    sessions: Vec<u64>,
    handles: Vec<(u64, u64)>,
    n: u64,
}

impl World {
    fn id_from(&mut self, r: &mut R<'_>) -> (u64, u64) {
        match r.below(8) {
            0 => (r.byte().into(), 0),
            1 => (0, 0),
            2 | 3 => (
                self.sessions
                    .get(r.below(self.sessions.len().max(1)))
                    .copied()
                    .unwrap_or(1),
                0,
            ),
            _ => self
                .handles
                .get(r.below(self.handles.len().max(1)))
                .copied()
                .unwrap_or((1, 1)),
        }
    }

    fn source(&mut self, r: &mut R<'_>) -> Source {
        match r.below(4) {
            3 => Source::Http,
            i => Source::Ws(self.conns[i]),
        }
    }

    fn auth(&mut self, r: &mut R<'_>, m: &mut Value) {
        match r.below(5) {
            0 => {}
            1 => m["token"] = "nope".into(),
            2 => m["apisecret"] = "apipw".into(),
            _ => m["token"] = TOKEN.into(),
        }
    }

    fn request(&mut self, r: &mut R<'_>, source: Source, mut m: Value) -> Value {
        self.n += 1;
        let tx = format!("t{}", self.n);
        m["transaction"] = tx.clone().into();
        self.auth(r, &mut m);
        // The request is moved into the core (no deep copy per step just for a failure
        // message: the crashing input reproduces it); its verb names it.
        let verb = m["janus"].as_str().unwrap_or_default().to_owned();
        let reply = self.core.handle_value(self.now, self.unix, source, m);
        assert!(
            reply.get("janus").is_some_and(Value::is_string),
            "{verb} {tx} -> {reply}"
        );
        assert_eq!(reply["transaction"], tx.as_str(), "{verb} {tx} -> {reply}");
        reply
    }

    fn jsep(r: &mut R<'_>) -> Option<Value> {
        let sdp = match r.below(6) {
            0 => return None,
            1 => "x=garbage".to_string(),
            2 => OFFER.replace("EsAw", "AnSw"),
            3 => format!("{OFFER}a=end-of-candidates\r\n"),
            _ => OFFER.to_string(),
        };
        let ty = *r
            .pick(&["offer", "answer", "pranswer", "rollback"])
            .unwrap();
        let mut j = json!({"type": ty, "sdp": sdp});
        if r.below(8) == 0 {
            j["e2ee"] = true.into();
        }
        Some(j)
    }

    fn candidate(r: &mut R<'_>) -> Value {
        let i = r.byte();
        match r.below(8) {
            0 => json!({"completed": true}),
            1 => json!({"candidate": ""}),
            2 => json!({"candidate": "x".repeat(usize::from(i) * 8), "sdpMid": "0"}),
            3 => {
                json!({"candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 {i} typ host ufrag AnSw"), "sdpMLineIndex": i % 3})
            }
            _ => json!({
                "candidate": format!("candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ufrag EsAw", 50000 + u32::from(i)),
                "sdpMid": if i % 2 == 0 { "0" } else { "1" },
                "sdpMLineIndex": i % 2,
            }),
        }
    }

    fn step(&mut self, r: &mut R<'_>) {
        let source = self.source(r);
        match r.below(16) {
            0 => {
                let reply = self.request(r, source, json!({"janus": "create"}));
                if let Some(id) = reply["data"]["id"].as_u64() {
                    self.sessions.push(id);
                }
            }
            1 | 2 => {
                let (s, _) = self.id_from(r);
                let plugin = if r.below(8) == 0 {
                    "janus.plugin.echotest"
                } else {
                    "janus.plugin.videocall"
                };
                let reply = self.request(
                    r,
                    source,
                    json!({"janus": "attach", "session_id": s, "plugin": plugin}),
                );
                if let Some(id) = reply["data"]["id"].as_u64() {
                    self.handles.push((s, id));
                }
            }
            3..=7 => {
                let (s, h) = self.id_from(r);
                let name = *r.pick(&NAMES).unwrap();
                let body = match r.below(10) {
                    0 | 1 => json!({"request": "register", "username": name}),
                    2 | 3 => json!({"request": "call", "username": name}),
                    4 | 5 => json!({"request": "accept"}),
                    6 => json!({"request": "hangup", "reason": "fuzz"}),
                    7 => json!({"request": "set", "audio": r.below(2) == 0, "bitrate": r.byte()}),
                    8 => json!({"request": "list"}),
                    _ => json!({"request": name}),
                };
                let mut m =
                    json!({"janus": "message", "session_id": s, "handle_id": h, "body": body});
                if let Some(j) = Self::jsep(r) {
                    m["jsep"] = j;
                }
                self.request(r, source, m);
            }
            8 | 9 => {
                let (s, h) = self.id_from(r);
                let mut m = json!({"janus": "trickle", "session_id": s, "handle_id": h});
                if r.below(2) == 0 {
                    m["candidate"] = Self::candidate(r);
                } else {
                    let n = r.below(12);
                    m["candidates"] = (0..n).map(|_| Self::candidate(r)).collect();
                }
                self.request(r, source, m);
            }
            10 => {
                let (s, h) = self.id_from(r);
                let verb = *r
                    .pick(&["detach", "hangup", "destroy", "keepalive", "claim"])
                    .unwrap();
                let mut m = json!({"janus": verb, "session_id": s});
                if verb == "detach" || verb == "hangup" {
                    m["handle_id"] = h.into();
                }
                self.request(r, source, m);
            }
            11 => {
                let i = r.below(3);
                self.core.connection_closed(self.now, self.conns[i]);
                self.conns[i] = self.next_conn;
                self.next_conn += 1;
            }
            12 | 13 => {
                let ms = u64::from(r.byte()) * 40;
                self.now += Duration::from_millis(ms);
                self.unix += ms / 1000;
                self.core.handle_timeout(self.now, self.unix);
            }
            14 => {
                let verb = *r
                    .pick(&[
                        "add_token",
                        "remove_token",
                        "destroy_session",
                        "list_handles",
                        "disallow_token",
                    ])
                    .unwrap();
                let (s, _) = self.id_from(r);
                let m = json!({"janus": verb, "token": TOKEN, "session_id": s, "plugins": ["janus.plugin.videocall"], "transaction": "a", "admin_secret": ADMIN_SECRET});
                let reply = self.core.admin_value(self.now, self.unix, m, None).reply;
                assert_eq!(reply["transaction"], "a", "{reply}");
            }
            _ => {
                let (s, _) = self.id_from(r);
                let _ = self
                    .core
                    .longpoll(self.now, self.unix, s, Some(TOKEN), None);
            }
        }
        for out in self.core.drain() {
            if let Output::Event { msg, .. } = out {
                assert!(
                    msg.get("janus").is_some_and(Value::is_string),
                    "event {msg}"
                );
            }
        }
        gateway::fuzzing::check_invariants(&self.core);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = R(data);
    let flags = r.byte();
    let cfg = CoreConfig {
        token_auth: flags & 1 == 1,
        admin_secret: Some(ADMIN_SECRET.into()),
        api_secret: Some("apipw".into()),
        reclaim_timeout: Duration::from_secs(if flags & 2 == 2 { 5 } else { 0 }),
        candidate_wait: Duration::from_millis(if flags & 4 == 4 { 0 } else { 500 }),
        max_sessions_per_connection: if flags & 8 == 8 { 2 } else { 16 },
        max_candidates: if flags & 16 == 16 { 3 } else { 100 },
        ..CoreConfig::default()
    };
    let mut core = Core::new(
        cfg,
        Box::new(MemoryTokenStore::new()),
        Box::new(MemoryRegistry::new()),
        gateway::fuzzing::rng(u64::from(data.first().copied().unwrap_or(0))),
    );
    let t0 = Instant::now();
    let unix = 1_800_000_000;
    let add = json!({"janus": "add_token", "token": TOKEN, "transaction": "a", "admin_secret": ADMIN_SECRET});
    assert_eq!(
        core.admin_value(t0, unix, add, None).reply["janus"],
        "success"
    );
    let mut w = World {
        core,
        now: t0,
        unix,
        conns: [1, 2, 3],
        next_conn: 4,
        sessions: Vec::new(),
        handles: Vec::new(),
        n: 0,
    };
    let mut steps = 0;
    while !r.done() && steps < 200 {
        w.step(&mut r);
        steps += 1;
    }
    for c in 1..w.next_conn {
        w.core.connection_closed(w.now, c);
    }
    w.now += Duration::from_secs(86_400);
    w.core.handle_timeout(w.now, w.unix + 86_400);
    let _ = w.core.drain();
    gateway::fuzzing::check_invariants(&w.core);
    assert!(
        gateway::fuzzing::is_empty(&w.core),
        "leak: {:?}",
        w.core.stats()
    );
});
