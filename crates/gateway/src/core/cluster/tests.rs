//! Cores of three nodes wired together by a test network: presence claims against one
//! shared table (create-if-absent, as the bucket does), node messages delivered in order
//! or dropped on demand. Time is a parameter.
use super::super::*;
use crate::store::{MemoryRegistry, MemoryTokenStore};
use rand::SeedableRng;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const OFFER: &str =
    "v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u1\r\na=mid:0\r\n";
const ANSWER: &str =
    "v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u2\r\na=mid:0\r\n";

struct Net {
    nodes: Vec<(String, Core)>,
    presence: HashMap<String, UserLocation>,
    /// Messages to this node are lost (it is unreachable but not yet known to be gone).
    deaf: Option<String>,
    now: Instant,
}

impl Net {
    fn new(names: &[&str]) -> Self {
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut c = Core::new(
                    CoreConfig::default(),
                    Box::new(MemoryTokenStore::new()),
                    Box::new(MemoryRegistry::new()),
                    StdRng::seed_from_u64(i as u64 + 1),
                );
                c.join_cluster(n);
                c.set_cluster_online(true);
                (n.to_string(), c)
            })
            .collect();
        Self {
            nodes,
            presence: HashMap::new(),
            deaf: None,
            now: Instant::now(),
        }
    }

    fn core(&mut self, node: &str) -> &mut Core {
        &mut self.nodes.iter_mut().find(|(n, _)| n == node).unwrap().1
    }

    /// Runs the cluster outputs of every core until none is left.
    fn settle(&mut self) {
        loop {
            let mut work = Vec::new();
            for (n, c) in &mut self.nodes {
                for o in c.take_cluster_out() {
                    work.push((n.clone(), o));
                }
            }
            if work.is_empty() {
                return;
            }
            for (from, o) in work {
                match o {
                    ClusterOut::Claim { username, handle } => {
                        let ok = !self.presence.contains_key(&username);
                        if ok {
                            let loc = UserLocation {
                                node: from.clone(),
                                handle,
                            };
                            self.presence.insert(username.clone(), loc.clone());
                            for (_, c) in &mut self.nodes {
                                c.remote_user(&username, Some(loc.clone()));
                            }
                        }
                        self.core(&from).claim_result(&username, handle, ok);
                    }
                    ClusterOut::Release { username, handle } => {
                        let ours = self
                            .presence
                            .get(&username)
                            .is_some_and(|l| l.node == from && l.handle == handle);
                        if ours {
                            self.presence.remove(&username);
                            for (_, c) in &mut self.nodes {
                                c.remote_user(&username, None);
                            }
                        }
                    }
                    ClusterOut::Send { node, msg } => {
                        if self.deaf.as_deref() == Some(node.as_str()) {
                            continue;
                        }
                        let now = self.now;
                        self.core(&node).node_message(now, msg);
                    }
                }
            }
        }
    }

    fn req(&mut self, node: &str, conn: ConnId, v: Value) -> Value {
        let now = self.now;
        let r = self.core(node).handle_value(now, 0, Source::Ws(conn), v);
        self.settle();
        r
    }

    /// The events of `node` for connection `conn` (others dropped).
    fn events(&mut self, node: &str, conn: ConnId) -> Vec<Value> {
        self.core(node)
            .drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Event {
                    owner: Source::Ws(c),
                    msg,
                    ..
                } if c == conn => Some(msg),
                _ => None,
            })
            .collect()
    }

    /// A session + videocall handle on `node`, connection `conn`; `register`s `name`.
    fn party(&mut self, node: &str, conn: ConnId, name: &str) -> (u64, u64, Vec<Value>) {
        let s = self.req(node, conn, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
            .as_u64()
            .unwrap();
        let h = self.req(
            node,
            conn,
            json!({"janus": "attach", "transaction": "a", "session_id": s, "plugin": VIDEOCALL}),
        )["data"]["id"]
            .as_u64()
            .unwrap();
        let r = self.req(
            node,
            conn,
            msg(s, h, "r", json!({"request": "register", "username": name})),
        );
        assert_eq!(r["janus"], "ack");
        (s, h, self.events(node, conn))
    }
}

fn msg(s: u64, h: u64, tx: &str, body: Value) -> Value {
    json!({"janus": "message", "transaction": tx, "session_id": s, "handle_id": h, "body": body})
}

fn result(ev: &Value) -> &Value {
    &ev["plugindata"]["data"]["result"]
}

fn find<'a>(evs: &'a [Value], event: &str) -> Option<&'a Value> {
    evs.iter().find(|e| result(e)["event"] == event)
}

fn error_code(evs: &[Value]) -> Option<u64> {
    evs.iter()
        .find_map(|e| e["plugindata"]["data"]["error_code"].as_u64())
}

#[test]
fn users_of_every_node_are_listed_and_a_name_is_held_by_one_node_only() {
    let mut net = Net::new(&["n1", "n2", "n3"]);
    let (_, _, ev) = net.party("n1", 1, "alice");
    assert_eq!(result(&ev[0])["event"], "registered");
    let (s2, h2, ev) = net.party("n2", 2, "bob");
    assert_eq!(result(&ev[0])["event"], "registered");
    // n3 lists both
    let (s3, h3, _) = net.party("n3", 3, "carol");
    net.req("n3", 3, msg(s3, h3, "l", json!({"request": "list"})));
    let ev = net.events("n3", 3);
    assert_eq!(
        result(&ev[0])["list"],
        json!(["alice", "bob", "carol"]),
        "{ev:?}"
    );
    // a name another node holds: 476, as on one node
    let (_, _, ev) = net.party("n3", 4, "bob");
    assert_eq!(error_code(&ev), Some(476), "{ev:?}");
    // a race: two nodes register the same new name before either claim is answered;
    // the table takes one, the other gets 476 and its local entry is gone
    let sx = net.req("n1", 5, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
        .as_u64()
        .unwrap();
    let hx = net.req(
        "n1",
        5,
        json!({"janus": "attach", "transaction": "a", "session_id": sx, "plugin": VIDEOCALL}),
    )["data"]["id"]
        .as_u64()
        .unwrap();
    let sy = net.req("n2", 6, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
        .as_u64()
        .unwrap();
    let hy = net.req(
        "n2",
        6,
        json!({"janus": "attach", "transaction": "a", "session_id": sy, "plugin": VIDEOCALL}),
    )["data"]["id"]
        .as_u64()
        .unwrap();
    let now = net.now;
    net.core("n1").handle_value(
        now,
        0,
        Source::Ws(5),
        msg(
            sx,
            hx,
            "r",
            json!({"request": "register", "username": "dave"}),
        ),
    );
    net.core("n2").handle_value(
        now,
        0,
        Source::Ws(6),
        msg(
            sy,
            hy,
            "r",
            json!({"request": "register", "username": "dave"}),
        ),
    );
    net.settle();
    let (ex, ey) = (net.events("n1", 5), net.events("n2", 6));
    let won = [&ex, &ey]
        .iter()
        .filter(|e| find(e, "registered").is_some())
        .count();
    let lost = [&ex, &ey]
        .iter()
        .filter(|e| error_code(e) == Some(476))
        .count();
    assert_eq!((won, lost), (1, 1), "{ex:?} {ey:?}");
    assert_eq!(
        net.presence["dave"].node, "n1",
        "the first claim to arrive wins"
    );
    assert_eq!(net.core("n2").registry.lookup("dave"), None);
    // a detached user leaves every node's list
    net.req(
        "n2",
        2,
        json!({"janus": "detach", "transaction": "d", "session_id": s2, "handle_id": h2}),
    );
    assert!(!net.presence.contains_key("bob"));
    assert_eq!(net.core("n1").all_usernames(), ["alice", "carol", "dave"]);
}

#[test]
fn a_call_between_two_nodes_runs_as_on_one_node() {
    let mut net = Net::new(&["n1", "n2"]);
    let (sa, ha, _) = net.party("n1", 1, "alice");
    let (sb, hb, _) = net.party("n2", 2, "bob");
    // alice trickles: her offer waits for the candidate and `completed` as on one node
    let mut call = msg(
        sa,
        ha,
        "call",
        json!({"request": "call", "username": "bob"}),
    );
    call["jsep"] = json!({"type": "offer", "sdp": OFFER});
    assert_eq!(net.req("n1", 1, call)["janus"], "ack");
    let ev = net.events("n1", 1);
    assert_eq!(result(&ev[0])["event"], "calling", "{ev:?}");
    assert_eq!(ev[0]["transaction"], "call");
    assert!(
        net.events("n2", 2).is_empty(),
        "the offer waits for candidates"
    );
    let line = "candidate:1 1 udp 1 127.0.0.1 9 typ relay ufrag u1";
    net.req("n1", 1, json!({"janus": "trickle", "transaction": "t", "session_id": sa, "handle_id": ha,
        "candidates": [{"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}, {"completed": true}]}));
    let ev = net.events("n2", 2);
    let inc = find(&ev, "incomingcall").expect("incomingcall on n2");
    assert_eq!(result(inc)["username"], "alice");
    let sdp = inc["jsep"]["sdp"].as_str().unwrap();
    assert!(sdp.contains(line), "merged candidate: {sdp}");
    // bob accepts; alice gets `accepted` with his answer, candidates merged
    let mut acc = msg(sb, hb, "acc", json!({"request": "accept"}));
    acc["jsep"] = json!({"type": "answer", "sdp": ANSWER, "trickle": false});
    net.req("n2", 2, acc);
    let ev = net.events("n2", 2);
    assert!(find(&ev, "accepted").is_some(), "{ev:?}");
    let ev = net.events("n1", 1);
    let acc = find(&ev, "accepted").expect("accepted on n1");
    assert_eq!(result(acc)["username"], "bob");
    assert_eq!(acc["jsep"]["type"], "answer");
    // trickle after the SDP went travels as janus `trickle`
    net.req("n2", 2, json!({"janus": "trickle", "transaction": "t", "session_id": sb, "handle_id": hb,
        "candidate": {"candidate": "candidate:2 1 udp 1 127.0.0.1 10 typ relay ufrag u2", "sdpMid": "0", "sdpMLineIndex": 0}}));
    let ev = net.events("n1", 1);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["janus"], "trickle");
    assert_eq!(ev[0]["sender"], ha);
    // bob is busy now, for a third user on either node
    let (sc, hc, _) = net.party("n1", 3, "carol");
    let mut c2 = msg(sc, hc, "c2", json!({"request": "call", "username": "bob"}));
    c2["jsep"] = json!({"type": "offer", "sdp": OFFER});
    net.req("n1", 3, c2);
    let ev = net.events("n1", 3);
    let busy = find(&ev, "hangup").expect("busy");
    assert_eq!(result(busy)["reason"], "User busy");
    assert!(
        find(&ev, "calling").is_none(),
        "no `calling` before busy, as on one node: {ev:?}"
    );
    assert!(
        ev.iter().any(|e| e["janus"] == "hangup"),
        "Close PC: {ev:?}"
    );
    // alice hangs up: bob gets the plugin hangup and the core hangup
    net.req("n1", 1, msg(sa, ha, "h", json!({"request": "hangup"})));
    let ev = net.events("n2", 2);
    let h = find(&ev, "hangup").expect("hangup on n2");
    assert_eq!(result(h)["username"], "alice");
    assert_eq!(result(h)["reason"], "We did the hangup");
    assert!(
        ev.iter()
            .any(|e| e["janus"] == "hangup" && e["reason"] == "Close PC")
    );
    let ev = net.events("n1", 1);
    assert!(find(&ev, "hangup").is_some());
    // both are free again: bob calls alice back
    let mut back = msg(sb, hb, "b", json!({"request": "call", "username": "alice"}));
    back["jsep"] = json!({"type": "offer", "sdp": ANSWER.replace("u2", "u3"), "trickle": false});
    net.req("n2", 2, back);
    assert!(find(&net.events("n1", 1), "incomingcall").is_some());
    let c = net.core("n1").counters();
    assert_eq!((c.calls_started, c.calls_connected), (2, 0));
    let c = net.core("n2").counters();
    assert_eq!((c.calls_started, c.calls_connected), (1, 1));
}

#[test]
fn an_unreachable_or_silent_node_gives_499_and_a_gone_node_ends_its_calls() {
    let mut net = Net::new(&["n1", "n2"]);
    let (sa, ha, _) = net.party("n1", 1, "alice");
    let (sb, hb, _) = net.party("n2", 2, "bob");
    let call = |s, h| {
        let mut c = msg(s, h, "call", json!({"request": "call", "username": "bob"}));
        c["jsep"] = json!({"type": "offer", "sdp": OFFER, "trickle": false});
        c
    };
    // n2 silent: the call waits for RING_TIMEOUT, then 499 with the transaction
    net.deaf = Some("n2".into());
    net.req("n1", 1, call(sa, ha));
    assert!(net.events("n1", 1).is_empty(), "nothing before n2 answers");
    let t = net.now + RING_TIMEOUT;
    net.core("n1").handle_timeout(t, 0);
    let ev = net.events("n1", 1);
    assert_eq!(error_code(&ev), Some(499), "{ev:?}");
    assert_eq!(ev[0]["transaction"], "call");
    let text = ev[0]["plugindata"]["data"]["error"].as_str().unwrap();
    assert!(
        text.contains("n2") && text.contains("did not answer"),
        "{text}"
    );
    net.deaf = None;
    // NATS down here: 499 at once; a user of this node still registers
    net.core("n1").set_cluster_online(false);
    net.req("n1", 1, call(sa, ha));
    let ev = net.events("n1", 1);
    assert_eq!(error_code(&ev), Some(499), "{ev:?}");
    let (_, _, ev) = net.party("n1", 3, "carol");
    assert!(find(&ev, "registered").is_some(), "{ev:?}");
    assert!(
        !net.presence.contains_key("carol"),
        "claimed after the reconnect"
    );
    assert_eq!(net.core("n1").local_users().len(), 2);
    net.core("n1").set_cluster_online(true);
    // a call in progress, then n2 is gone: alice gets hangup, bob leaves the list
    net.req("n1", 1, call(sa, ha));
    let mut acc = msg(sb, hb, "acc", json!({"request": "accept"}));
    acc["jsep"] = json!({"type": "answer", "sdp": ANSWER, "trickle": false});
    net.req("n2", 2, acc);
    assert!(find(&net.events("n1", 1), "accepted").is_some());
    let now = net.now;
    net.core("n1").node_gone(now, "n2");
    let ev = net.events("n1", 1);
    let h = find(&ev, "hangup").expect("hangup");
    assert_eq!(result(h)["username"], "bob");
    assert!(
        ev.iter().any(|e| e["janus"] == "hangup"),
        "Close PC: {ev:?}"
    );
    assert_eq!(net.core("n1").all_usernames(), ["alice", "carol"]);
    // a message of the old call arriving late changes nothing
    let late = NodeMessage {
        from_node: "n2".into(),
        from: hb,
        to: ha,
        body: NodeBody::Hangup {
            username: Some("bob".into()),
            reason: "x".into(),
            extra: true,
        },
    };
    net.core("n1").node_message(now, late);
    assert!(net.events("n1", 1).is_empty());
}

#[test]
fn a_handle_detached_during_its_claim_releases_the_name() {
    let mut net = Net::new(&["n1", "n2"]);
    let now = net.now;
    let s = net.req("n1", 1, json!({"janus": "create", "transaction": "c"}))["data"]["id"]
        .as_u64()
        .unwrap();
    let h = net.req(
        "n1",
        1,
        json!({"janus": "attach", "transaction": "a", "session_id": s, "plugin": VIDEOCALL}),
    )["data"]["id"]
        .as_u64()
        .unwrap();
    net.core("n1").handle_value(
        now,
        0,
        Source::Ws(1),
        msg(
            s,
            h,
            "r",
            json!({"request": "register", "username": "erin"}),
        ),
    );
    // a second register on the same handle while the first is on its way
    net.core("n1").handle_value(
        now,
        0,
        Source::Ws(1),
        msg(
            s,
            h,
            "r2",
            json!({"request": "register", "username": "frank"}),
        ),
    );
    let ev = net.events("n1", 1);
    assert_eq!(error_code(&ev), Some(477), "{ev:?}");
    net.core("n1").handle_value(
        now,
        0,
        Source::Ws(1),
        json!({"janus": "detach", "transaction": "d", "session_id": s, "handle_id": h}),
    );
    net.settle();
    assert!(net.presence.is_empty(), "{:?}", net.presence);
    assert!(net.core("n2").all_usernames().is_empty());
}

#[test]
fn session_ids_carry_the_node_tag_and_stay_janus_sized() {
    let mut net = Net::new(&["n1"]);
    net.core("n1").set_session_tag(4321);
    for conn in 0..200 {
        let r = net.req("n1", conn, json!({"janus": "create", "transaction": "c"}));
        let id = r["data"]["id"].as_u64().unwrap();
        assert_eq!(session_tag_of(id), 4321, "{id:#x}");
        assert!(id < 1 << 53, "a JavaScript number holds it exactly");
    }
    // a client's own id is served as it is (tag 0: no other node claims it)
    let r = net.req(
        "n1",
        999,
        json!({"janus": "create", "transaction": "c", "id": 12345}),
    );
    assert_eq!(r["data"]["id"], 12345);
    assert_eq!(session_tag_of(12345), 0);
    // a single node draws from the whole range
    let mut c = Core::new(
        CoreConfig::default(),
        Box::new(MemoryTokenStore::new()),
        Box::new(MemoryRegistry::new()),
        StdRng::seed_from_u64(9),
    );
    let tags: HashSet<u16> = (0..50)
        .map(|i| {
            let r = c.handle_value(
                Instant::now(),
                0,
                Source::Ws(i),
                json!({"janus": "create", "transaction": "c"}),
            );
            session_tag_of(r["data"]["id"].as_u64().unwrap())
        })
        .collect();
    assert!(tags.len() > 40, "{tags:?}");
}

#[test]
fn after_a_partition_a_call_the_other_node_ended_ends_here_too() {
    let mut net = Net::new(&["n1", "n2"]);
    let (sa, ha, _) = net.party("n1", 1, "alice");
    let (sb, hb, _) = net.party("n2", 2, "bob");
    let (sc, hc, _) = net.party("n1", 3, "carol");
    let (sd, hd, _) = net.party("n2", 4, "dave");
    for (s, h, callee, (s2, h2), (c1, c2)) in [
        (sa, ha, "bob", (sb, hb), (1, 2)),
        (sc, hc, "dave", (sd, hd), (3, 4)),
    ] {
        let mut call = msg(s, h, "call", json!({"request": "call", "username": callee}));
        call["jsep"] = json!({"type": "offer", "sdp": OFFER, "trickle": false});
        net.req("n1", c1, call);
        let mut acc = msg(s2, h2, "acc", json!({"request": "accept"}));
        acc["jsep"] = json!({"type": "answer", "sdp": ANSWER, "trickle": false});
        net.req("n2", c2, acc);
        assert!(find(&net.events("n1", c1), "accepted").is_some());
        net.events("n2", c2);
    }
    // n1 partitioned: n2 ended bob's call with alice (as when n1's lease runs out), and
    // its hangup for n1 is lost; dave's call with carol is still up on both sides
    net.deaf = Some("n1".into());
    net.req("n2", 2, msg(sb, hb, "h", json!({"request": "hangup"})));
    assert!(find(&net.events("n2", 2), "hangup").is_some());
    net.deaf = None;
    // n1 reconnects and probes: alice's call ends, carol's goes on
    net.core("n1").probe_remote_calls();
    net.settle();
    let ev = net.events("n1", 1);
    let h = find(&ev, "hangup").expect("alice's call ends");
    assert_eq!(result(h)["username"], "bob");
    assert!(net.events("n1", 3).is_empty(), "carol's call goes on");
    assert!(net.core("n1").handles[&hc].remote.is_some());
    assert!(net.core("n1").handles[&ha].remote.is_none());
    assert!(net.core("n2").handles[&hd].remote.is_some());
}

#[test]
fn an_earlier_calls_ring_timer_does_not_fail_the_next_call() {
    let mut net = Net::new(&["n1", "n2"]);
    let (sa, ha, _) = net.party("n1", 1, "alice");
    let (sb, hb, _) = net.party("n2", 2, "bob");
    let call = |s, h| {
        let mut c = msg(s, h, "call", json!({"request": "call", "username": "bob"}));
        c["jsep"] = json!({"type": "offer", "sdp": OFFER, "trickle": false});
        c
    };
    // a first call rings at once and ends
    net.req("n1", 1, call(sa, ha));
    assert!(find(&net.events("n1", 1), "calling").is_some());
    net.req("n2", 2, msg(sb, hb, "h", json!({"request": "hangup"})));
    net.events("n1", 1);
    net.events("n2", 2);
    // 3 s later a second call, whose answer is slow to come
    let t0 = net.now;
    net.now = t0 + Duration::from_secs(3);
    net.deaf = Some("n2".into());
    net.req("n1", 1, call(sa, ha));
    // the first call's timer falls due: the second call keeps waiting
    net.core("n1").handle_timeout(t0 + RING_TIMEOUT, 0);
    assert!(
        net.events("n1", 1).is_empty(),
        "the second call failed early"
    );
    // its own timer does fail it
    net.core("n1")
        .handle_timeout(t0 + Duration::from_secs(3) + RING_TIMEOUT, 0);
    assert_eq!(error_code(&net.events("n1", 1)), Some(499));
}
