//! Cluster mode (docs/scale-out.md) with a real `nats-server` (JetStream, file storage)
//! started by the test on a free loopback port, and three real gateway binaries: a
//! token added on one node is usable on another, a removal reaches the others, the
//! tokens survive a full restart of the nodes and of NATS, and a NATS outage leaves the
//! nodes serving the tokens they know and heals by itself. Every wait polls what a
//! client can observe, up to a deadline.

mod common;
use common::*;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long anything in this test may take to propagate or recover.
const DEADLINE: Duration = Duration::from_secs(20);

/// A `nats-server -js` on 127.0.0.1 with its store in a directory of the test.
struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Nats {
    /// Starts it on `port` (0: a free one) and waits until it accepts connections.
    fn start(port: u16, store: &Path) -> Self {
        Self::start_with(port, store, None)
    }

    /// [`Nats::start`] with a configuration file (`-c`; the flags win over it).
    fn start_with(port: u16, store: &Path, conf: Option<&Path>) -> Self {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            port
        };
        // Debian installs it in /usr/sbin, which a user's PATH may not hold
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let mut cmd = Command::new(bin);
        if let Some(c) = conf {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): the cluster tests need it; install the Debian package: apt-get install nats-server"
                )
            });
        let mut n = Self {
            child,
            port,
            store: store.to_path_buf(),
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = n.child.try_wait().unwrap() {
                panic!("nats-server exited at start: {st}");
            }
            assert!(
                t.elapsed() < DEADLINE,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        n.port = port;
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM: a clean shutdown, as systemd does) and waits for the exit.
    fn stop(mut self) -> (u16, PathBuf) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        wait_exit(&mut self.child, 20);
        (self.port, self.store.clone())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(nats: &str, id: &str, state: &Path) -> Bin {
    node_with(nats, id, state, &[], &[])
}

fn node_with(nats: &str, id: &str, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Bin {
    let bin = spawn_node(nats, id, state, args, env);
    // serving already; ready for the cluster once it has read the shared tokens
    bin.wait_log(0, &["shared tokens read from NATS"]);
    bin
}

/// A node, serving (its listeners are up), whether or not it reached NATS.
fn spawn_node(nats: &str, id: &str, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Bin {
    let mut all = vec![
        "--nats-url",
        nats,
        "--node-id",
        id,
        "--state-dir",
        state.to_str().unwrap(),
        "--admin-secret",
        ADMIN_SECRET,
        "--token-auth",
    ];
    all.extend_from_slice(args);
    Bin::start_env(&all, env)
}

async fn admin(bin: &Bin, body: Value) -> Value {
    let mut body = body;
    body["admin_secret"] = ADMIN_SECRET.into();
    body["transaction"] = "cluster-test".into();
    post_json(bin.admin, "/admin", &body).await
}

/// `create` with `token` over the node's HTTP transport: Ok(session) or Err(code).
async fn create(bin: &Bin, token: &str) -> Result<u64, u64> {
    let r = post_json(
        bin.http,
        "/janus",
        &json!({"janus": "create", "transaction": "c", "token": token}),
    )
    .await;
    match r["data"]["id"].as_u64() {
        Some(id) => Ok(id),
        None => Err(r["error"]["code"].as_u64().unwrap_or(0)),
    }
}

/// Polls `create` on `bin` until it succeeds (`valid`) or is refused with 403; returns
/// how long that took.
async fn until_token(bin: &Bin, token: &str, valid: bool) -> Duration {
    let t = Instant::now();
    loop {
        let r = create(bin, token).await;
        match (&r, valid) {
            (Ok(_), true) | (Err(403), false) => return t.elapsed(),
            (Ok(_) | Err(403), _) => {}
            (Err(code), _) => panic!("create answered {code}"),
        }
        assert!(
            t.elapsed() < DEADLINE,
            "token {token} still {r:?} on {} after {DEADLINE:?}",
            bin.admin
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until_metric(admin: SocketAddr, series: &str, want: f64) {
    let t = Instant::now();
    loop {
        let v = metric_at(admin, series).await;
        if v == want {
            return;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "{series} stayed {v}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop_node(mut bin: Bin) {
    bin.signal("TERM");
    let st = bin.wait_exit(20);
    assert!(st.success(), "gateway exited with {st}");
}

const CONNECTED: &str = "callrelay_gateway_nats_connected";

#[tokio::test]
async fn three_nodes_share_tokens_through_nats() {
    let dir = temp_dir();
    let nats = Nats::start(0, &dir.join("nats"));
    let url = nats.url();
    let states: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("n{i}"))).collect();
    let nodes: Vec<Bin> = states
        .iter()
        .enumerate()
        .map(|(i, s)| node(&url, &format!("n{}", i + 1), s))
        .collect();
    for n in &nodes {
        assert_eq!(metric_at(n.admin, CONNECTED).await, 1.0);
    }
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // added through node 1's Admin API, used to create a session on node 3
    assert_eq!(
        create(n3, "tok-a").await,
        Err(403),
        "unknown before add_token"
    );
    let t = Instant::now();
    let r = admin(n1, json!({"janus": "add_token", "token": "tok-a"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(n3, "tok-a", true).await;
    let propagated = t.elapsed();
    until_token(n2, "tok-a", true).await;
    let r = admin(n2, json!({"janus": "list_tokens"})).await;
    assert_eq!(
        r["data"]["tokens"],
        json!([{"token": "tok-a", "allowed_plugins": ["janus.plugin.videocall"]}])
    );

    // removed on node 2: node 3 refuses it
    let t = Instant::now();
    let r = admin(n2, json!({"janus": "remove_token", "token": "tok-a"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(n3, "tok-a", false).await;
    let removed = t.elapsed();
    until_token(n1, "tok-a", false).await;
    eprintln!(
        "token propagation: add on node 1 -> create on node 3 in {propagated:?}; remove on node 2 -> refused on node 3 in {removed:?}"
    );

    // full restart of the nodes and of nats-server: the token is still valid, also on
    // a node that starts with an empty state directory (it can only come from NATS)
    let r = admin(n1, json!({"janus": "add_token", "token": "tok-b"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(n3, "tok-b", true).await;
    for n in nodes {
        stop_node(n);
    }
    let (port, store) = nats.stop();
    let nats = Nats::start(port, &store);
    let fresh = dir.join("n3-fresh");
    let nodes = vec![
        node(&url, "n1", &states[0]),
        node(&url, "n2", &states[1]),
        node(&url, "n3", &fresh),
    ];
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    assert!(
        create(n3, "tok-b").await.is_ok(),
        "tok-b from NATS after a full restart"
    );
    assert!(create(n1, "tok-b").await.is_ok());
    assert_eq!(
        create(n1, "tok-a").await,
        Err(403),
        "a removed token stays removed"
    );

    // NATS stopped: every node keeps serving the tokens it knows, /metrics says so
    let (port, store) = nats.stop();
    for n in &nodes {
        until_metric(n.admin, CONNECTED, 0.0).await;
        assert!(
            create(n, "tok-b").await.is_ok(),
            "known token during the outage"
        );
    }
    // a token added meanwhile works where it was added and waits to be written
    let r = admin(n1, json!({"janus": "add_token", "token": "tok-c"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    assert!(create(n1, "tok-c").await.is_ok());
    assert_eq!(create(n3, "tok-c").await, Err(403));
    until_metric(n1.admin, "callrelay_gateway_nats_kv_writes_pending", 1.0).await;
    assert_eq!(
        metric_at(n1.admin, "callrelay_gateway_nats_kv_writes_dropped_total").await,
        0.0
    );

    // a node started during the outage serves the tokens of its tokens.json (here a
    // copy of node 2's), says it cannot reach NATS, and keeps trying
    let n4_state = dir.join("n4");
    std::fs::create_dir_all(&n4_state).unwrap();
    std::fs::copy(states[1].join("tokens.json"), n4_state.join("tokens.json")).unwrap();
    let n4 = spawn_node(&url, "n4", &n4_state, &[], &[]);
    n4.wait_log(0, &["cannot connect to NATS"]);
    assert_eq!(metric_at(n4.admin, CONNECTED).await, 0.0);
    assert!(
        create(&n4, "tok-b").await.is_ok(),
        "from tokens.json, NATS down"
    );
    assert_eq!(create(&n4, "tok-c").await, Err(403));

    // NATS back: it heals by itself, the queued token reaches the other nodes
    let t = Instant::now();
    let _nats = Nats::start(port, &store);
    until_token(n3, "tok-c", true).await;
    let healed = t.elapsed();
    until_token(n2, "tok-c", true).await;
    until_token(&n4, "tok-c", true).await;
    until_metric(n4.admin, CONNECTED, 1.0).await;
    stop_node(n4);
    for n in &nodes {
        until_metric(n.admin, CONNECTED, 1.0).await;
    }
    until_metric(n1.admin, "callrelay_gateway_nats_kv_writes_pending", 0.0).await;
    eprintln!("NATS restarted -> token queued on node 1 usable on node 3 in {healed:?}");
    for n in nodes {
        stop_node(n);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The documented production shape (docs/scale-out.md): NATS with a user whose
/// password comes from the environment and whose permissions are only the subjects the
/// gateway uses. Tokens still travel both ways (put and delete), the password never
/// reaches the log, and a node with a wrong password serves alone, disconnected.
#[tokio::test]
async fn nodes_authenticate_with_a_user_limited_to_the_documented_subjects() {
    let dir = temp_dir();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        r#"authorization {
  users = [
    { user: gateway, password: "s3cret-pw-not-in-logs",
      permissions: { publish: ["$JS.API.>", "$JS.FC.>", "$KV.callrelay_tokens.>",
                               "$KV.callrelay_users.>", "callrelay.>", "_INBOX.>"],
                     subscribe: ["_INBOX.>", "callrelay.>"] } }
  ]
}
"#,
    )
    .unwrap();
    let nats = Nats::start_with(0, &dir.join("nats"), Some(&conf));
    let url = nats.url();
    let user = ["--nats-user", "gateway"];
    let pw = [("CALLRELAY_GATEWAY_NATS_PASSWORD", "s3cret-pw-not-in-logs")];
    let n1 = node_with(&url, "a1", &dir.join("a1"), &user, &pw);
    let n2 = node_with(&url, "a2", &dir.join("a2"), &user, &pw);
    let r = admin(&n1, json!({"janus": "add_token", "token": "tok-auth"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n2, "tok-auth", true).await;
    let r = admin(&n2, json!({"janus": "remove_token", "token": "tok-auth"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n1, "tok-auth", false).await;
    // an HTTP request for a session of a1 through a2: request and reply pass
    let r = admin(&n1, json!({"janus": "add_token", "token": "tok-auth2"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n2, "tok-auth2", true).await;
    until_metric(n2.admin, "callrelay_gateway_cluster_peers", 1.0).await;
    let sid = http_create(n1.http, "tok-auth2").await;
    let ka = post_json(
        n2.http,
        &format!("/janus/{sid}"),
        &json!({"janus": "keepalive", "transaction": "k", "token": "tok-auth2"}),
    )
    .await;
    assert_eq!(ka["janus"], "ack", "{ka}");
    for n in [&n1, &n2] {
        assert_eq!(
            metric_at(
                n.admin,
                "callrelay_gateway_nats_kv_failures_total{op=\"put\"}"
            )
            .await,
            0.0
        );
    }

    let bad = Bin::start_env(
        &[
            "--nats-url",
            &url,
            "--state-dir",
            dir.join("bad").to_str().unwrap(),
            "--admin-secret",
            ADMIN_SECRET,
            "--token-auth",
            "--nats-user",
            "gateway",
        ],
        &[("CALLRELAY_GATEWAY_NATS_PASSWORD", "wrong-pw-not-in-logs")],
    );
    bad.wait_log(0, &["NATS", "authorization violation"]);
    assert_eq!(metric_at(bad.admin, CONNECTED).await, 0.0);
    let r = admin(&bad, json!({"janus": "add_token", "token": "tok-alone"})).await;
    assert_eq!(
        r["janus"], "success",
        "a node without NATS still serves: {r}"
    );
    assert!(create(&bad, "tok-alone").await.is_ok());
    for n in [&n1, &n2, &bad] {
        let log = n.log();
        assert!(
            !log.contains("pw-not-in-logs"),
            "a NATS password in the log:\n{log}"
        );
    }
    drop(bad);
    stop_node(n1);
    stop_node(n2);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// TLS to NATS (`tls://` URL, the server's certificate checked against `nats_ca_file`)
/// and NKey authentication (`nats_nkey_seed_file`): tokens travel, the seed never
/// reaches the log, and a node that does not trust the server's certificate stays
/// disconnected while serving alone.
#[tokio::test]
async fn nodes_reach_nats_over_tls_with_nkeys() {
    let dir = temp_dir();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().unwrap();
    let seed_file = dir.join("node.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: {:?}, key_file: {:?} }}\nauthorization {{ users = [ {{ nkey: {} }} ] }}\n",
            fixtures.join("cert1.pem"),
            fixtures.join("key1.pem"),
            kp.public_key()
        ),
    )
    .unwrap();
    let nats = Nats::start_with(0, &dir.join("nats"), Some(&conf));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca = fixtures.join("cert1.pem");
    let args = [
        "--nats-nkey-seed-file",
        seed_file.to_str().unwrap(),
        "--nats-ca-file",
        ca.to_str().unwrap(),
    ];
    let n1 = node_with(&url, "t1", &dir.join("t1"), &args, &[]);
    let n2 = node_with(&url, "t2", &dir.join("t2"), &args, &[]);
    let r = admin(&n1, json!({"janus": "add_token", "token": "tok-tls"})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n2, "tok-tls", true).await;

    // the same server, but a CA that did not sign its certificate
    let wrong_ca = fixtures.join("cert2.pem");
    let untrusting = Bin::start(&[
        "--nats-url",
        &url,
        "--state-dir",
        dir.join("t3").to_str().unwrap(),
        "--admin-secret",
        ADMIN_SECRET,
        "--token-auth",
        "--nats-nkey-seed-file",
        seed_file.to_str().unwrap(),
        "--nats-ca-file",
        wrong_ca.to_str().unwrap(),
    ]);
    untrusting.wait_log(0, &["cannot connect to NATS", "certificate"]);
    assert_eq!(metric_at(untrusting.admin, CONNECTED).await, 0.0);
    assert_eq!(
        create(&untrusting, "tok-tls").await,
        Err(403),
        "never reached NATS"
    );
    for n in [&n1, &n2, &untrusting] {
        let log = n.log();
        assert!(!log.contains(&seed), "the NKey seed in the log:\n{log}");
    }
    drop(untrusting);
    stop_node(n1);
    stop_node(n2);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket client of `bin` with a videocall handle that registered `name`: the
/// client, session, handle and the plugin's answer (`registered` or an error).
async fn user(bin: &Bin, token: &str, name: &str) -> (Client, u64, u64, Value) {
    let mut c = Client::connect(bin.ws, "janus-protocol").await;
    let (s, h) = c.session_handle(Some(token)).await;
    let r = c
        .req(
            json!({"janus": "message", "session_id": s, "handle_id": h, "token": token,
            "body": {"request": "register", "username": name}}),
        )
        .await;
    assert_eq!(r["janus"], "ack", "{r}");
    let ev = c
        .wait("register answer", |m| {
            m["plugindata"]["data"]["result"]["event"] == "registered"
                || m["plugindata"]["data"]["error_code"].is_u64()
        })
        .await;
    (c, s, h, ev)
}

/// Reads what `c` was sent until nothing comes for 200 ms, and forgets it.
async fn drain(c: &mut Client) {
    let t = Instant::now();
    while c.next_within(200).await.is_some() {
        assert!(t.elapsed() < DEADLINE, "a client that is never quiet");
    }
    c.backlog.clear();
}

fn vc(m: &Value) -> &Value {
    &m["plugindata"]["data"]
}

fn event_is(m: &Value, event: &str) -> bool {
    vc(m)["result"]["event"] == event
}

/// A videocall request of (`s`, `h`) with an optional jsep; returns the ack.
async fn vc_req(c: &mut Client, s: u64, h: u64, token: &str, body: Value, jsep: Option<Value>) {
    let mut m =
        json!({"janus": "message", "session_id": s, "handle_id": h, "token": token, "body": body});
    if let Some(j) = jsep {
        m["jsep"] = j;
    }
    let r = c.req(m).await;
    assert_eq!(r["janus"], "ack", "{r}");
}

/// Polls `list` from (`c`, `s`, `h`) until it is `want`.
async fn until_list(c: &mut Client, s: u64, h: u64, token: &str, want: &[&str]) -> Duration {
    let t = Instant::now();
    loop {
        vc_req(c, s, h, token, json!({"request": "list"}), None).await;
        let ev = c.wait("list", |m| vc(m)["result"]["list"].is_array()).await;
        let list: Vec<&str> = vc(&ev)["result"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if list == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < DEADLINE,
            "list is {list:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `a` (session, handle) calls `callee` with a complete offer; the callee's client `b`
/// gets `incomingcall`; returns how long that took.
async fn call(
    a: &mut Client,
    (s, h): (u64, u64),
    b: &mut Client,
    token: &str,
    callee: &str,
) -> Duration {
    let t = Instant::now();
    vc_req(
        a,
        s,
        h,
        token,
        json!({"request": "call", "username": callee}),
        Some(json!({"type": "offer", "sdp": OFFER, "trickle": false})),
    )
    .await;
    a.wait("calling", |m| event_is(m, "calling")).await;
    let inc = b
        .wait("incomingcall", |m| event_is(m, "incomingcall"))
        .await;
    let took = t.elapsed();
    assert_eq!(inc["jsep"]["type"], "offer", "{inc}");
    assert!(
        inc["jsep"]["sdp"]
            .as_str()
            .unwrap()
            .contains("a=ice-ufrag:EsAw")
    );
    took
}

/// `b` accepts with a complete answer; `a` gets `accepted` with it.
async fn accept(
    b: &mut Client,
    (s, h): (u64, u64),
    a: &mut Client,
    token: &str,
    caller_sees: &str,
) {
    vc_req(
        b,
        s,
        h,
        token,
        json!({"request": "accept"}),
        Some(json!({"type": "answer", "sdp": answer_sdp(), "trickle": false})),
    )
    .await;
    b.wait("accepted (callee)", |m| event_is(m, "accepted"))
        .await;
    let acc = a
        .wait("accepted (caller)", |m| event_is(m, "accepted"))
        .await;
    assert_eq!(vc(&acc)["result"]["username"], caller_sees, "{acc}");
    assert_eq!(acc["jsep"]["type"], "answer", "{acc}");
}

/// Videocall across nodes (issue 14): users of every node in `list`, a name held by
/// one node only, a call from a user of node 1 to a user of node 3 with its SDPs,
/// trickle and hangup; then node 3 killed (SIGKILL) mid-call: the caller gets `hangup`
/// within the documented bound and the callee leaves the list.
#[tokio::test]
async fn videocall_users_and_calls_span_nodes() {
    let dir = temp_dir();
    let nats = Nats::start(0, &dir.join("nats"));
    let url = nats.url();
    let n1 = node(&url, "v1", &dir.join("v1"));
    let n2 = node(&url, "v2", &dir.join("v2"));
    let n3 = node(&url, "v3", &dir.join("v3"));
    let tok = "tok-vc";
    let r = admin(&n1, json!({"janus": "add_token", "token": tok})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n3, tok, true).await;
    until_token(&n2, tok, true).await;

    let (mut alice, sa, ha, ev) = user(&n1, tok, "alice").await;
    assert!(event_is(&ev, "registered"), "{ev}");
    let (mut bob, sb, hb, ev) = user(&n3, tok, "bob").await;
    assert!(event_is(&ev, "registered"), "{ev}");
    let (mut carol, sc, hc, ev) = user(&n2, tok, "carol").await;
    assert!(event_is(&ev, "registered"), "{ev}");
    let took = until_list(&mut carol, sc, hc, tok, &["alice", "bob", "carol"]).await;
    eprintln!("# users of three nodes listed on node 2 within {took:?}");
    // a name node 3 holds cannot be registered on node 2
    let (_dup, _, _, ev) = user(&n2, tok, "bob").await;
    assert_eq!(vc(&ev)["error_code"], 476, "{ev}");

    // alice (node 1) calls bob (node 3)
    let mut setup = Vec::new();
    for round in 0..3 {
        setup.push(call(&mut alice, (sa, ha), &mut bob, tok, "bob").await);
        accept(&mut bob, (sb, hb), &mut alice, tok, "bob").await;
        if round == 0 {
            // bob's trickle after his answer reaches alice
            let c = cand_u(7, "0", 0, "AnSw");
            let r = bob
                .req(json!({"janus": "trickle", "session_id": sb, "handle_id": hb, "token": tok, "candidate": c}))
                .await;
            assert_eq!(r["janus"], "ack", "{r}");
            let tr = alice.wait("trickle", |m| m["janus"] == "trickle").await;
            assert_eq!(tr["candidate"]["candidate"], c["candidate"], "{tr}");
            // carol (node 2) calling bob: busy, as on one node
            vc_req(
                &mut carol,
                sc,
                hc,
                tok,
                json!({"request": "call", "username": "bob"}),
                Some(json!({"type": "offer", "sdp": OFFER, "trickle": false})),
            )
            .await;
            let busy = carol.wait("busy", |m| event_is(m, "hangup")).await;
            assert_eq!(vc(&busy)["result"]["reason"], "User busy", "{busy}");
        }
        vc_req(&mut alice, sa, ha, tok, json!({"request": "hangup"}), None).await;
        let h = bob.wait("hangup", |m| event_is(m, "hangup")).await;
        assert_eq!(vc(&h)["result"]["username"], "alice", "{h}");
        alice.wait("own hangup", |m| event_is(m, "hangup")).await;
        drain(&mut alice).await;
        drain(&mut bob).await;
    }
    eprintln!("# cross-node call set-up (call sent → incomingcall at the callee): {setup:?}");
    assert!(
        metric_at(
            n1.admin,
            "callrelay_gateway_cluster_messages_total{direction=\"sent\",kind=\"call\"}"
        )
        .await
            >= 3.0
    );
    assert_eq!(
        metric_at(n1.admin, "callrelay_gateway_cluster_peers").await,
        2.0
    );

    // a call in progress, then bob's node dies
    drain(&mut alice).await;
    call(&mut alice, (sa, ha), &mut bob, tok, "bob").await;
    accept(&mut bob, (sb, hb), &mut alice, tok, "bob").await;
    let mut n3 = n3;
    let _ = n3.child.kill();
    let _ = n3.child.wait();
    let t = Instant::now();
    let bound = Duration::from_secs(15);
    let h = loop {
        if let Some(m) = alice.next_within(100).await
            && event_is(&m, "hangup")
        {
            break m;
        }
        assert!(
            t.elapsed() < bound,
            "no hangup within {bound:?} of node 3's death"
        );
    };
    let took = t.elapsed();
    eprintln!("# callee's node killed: caller's hangup after {took:?}");
    assert_eq!(vc(&h)["result"]["username"], "bob", "{h}");
    until_list(&mut carol, sc, hc, tok, &["alice", "carol"]).await;
    until_metric(n1.admin, "callrelay_gateway_cluster_peers", 1.0).await;
    // bob's name is free again: he comes back on node 2
    let (_bob2, _, _, ev) = user(&n2, tok, "bob").await;
    assert!(event_is(&ev, "registered"), "{ev}");

    stop_node(n1);
    stop_node(n2);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// NATS stopped: calls between users of one node still work, a call to another node's
/// user fails with a clear 499; NATS back: the nodes claim their users again and the
/// cross-node call works.
#[tokio::test]
async fn a_nats_outage_keeps_calls_on_one_node_and_heals() {
    let dir = temp_dir();
    let nats = Nats::start(0, &dir.join("nats"));
    let url = nats.url();
    let n1 = node(&url, "o1", &dir.join("o1"));
    let n2 = node(&url, "o2", &dir.join("o2"));
    let tok = "tok-outage";
    let r = admin(&n1, json!({"janus": "add_token", "token": tok})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n2, tok, true).await;
    let (mut alice, sa, ha, _) = user(&n1, tok, "alice").await;
    let (mut carol, sc, hc, _) = user(&n1, tok, "carol").await;
    let (mut bob, sb, hb, _) = user(&n2, tok, "bob").await;
    until_list(&mut alice, sa, ha, tok, &["alice", "bob", "carol"]).await;

    let (port, store) = nats.stop();
    until_metric(n1.admin, CONNECTED, 0.0).await;
    // same node: fine
    call(&mut alice, (sa, ha), &mut carol, tok, "carol").await;
    accept(&mut carol, (sc, hc), &mut alice, tok, "carol").await;
    vc_req(&mut alice, sa, ha, tok, json!({"request": "hangup"}), None).await;
    carol.wait("hangup", |m| event_is(m, "hangup")).await;
    alice.wait("own hangup", |m| event_is(m, "hangup")).await;
    // another node's user: 499, saying why
    vc_req(
        &mut alice,
        sa,
        ha,
        tok,
        json!({"request": "call", "username": "bob"}),
        Some(json!({"type": "offer", "sdp": OFFER, "trickle": false})),
    )
    .await;
    let t = Instant::now();
    let err = loop {
        if let Some(m) = alice.next_within(100).await
            && vc(&m)["error_code"].is_u64()
        {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "no error for the cross-node call"
        );
    };
    assert_eq!(vc(&err)["error_code"], 499, "{err}");
    let text = vc(&err)["error"].as_str().unwrap();
    assert!(text.contains("o2") && text.contains("bob"), "{text}");
    // a user registering during the outage is claimed once NATS is back
    let (_dave, _, _, ev) = user(&n1, tok, "dave").await;
    assert!(event_is(&ev, "registered"), "{ev}");

    let nats = Nats::start(port, &store);
    until_metric(n1.admin, CONNECTED, 1.0).await;
    let took = until_list(&mut bob, sb, hb, tok, &["alice", "bob", "carol", "dave"]).await;
    eprintln!("# NATS back: every user listed on the other node within {took:?}");
    drain(&mut alice).await;
    call(&mut alice, (sa, ha), &mut bob, tok, "bob").await;
    accept(&mut bob, (sb, hb), &mut alice, tok, "bob").await;

    stop_node(n1);
    stop_node(n2);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A long poll (`maxev` events) on `addr` for session `sid`: the events, or the status.
async fn poll(addr: SocketAddr, sid: u64, token: &str) -> Result<Vec<Value>, u16> {
    let (status, _, body) = http_get(addr, &format!("/janus/{sid}?maxev=10&token={token}")).await;
    if status != 200 {
        return Err(status);
    }
    match serde_json::from_str::<Value>(&body).unwrap() {
        Value::Array(v) => Ok(v),
        v => Ok(vec![v]),
    }
}

/// Polls `sid` alternately through `addrs` until an event matching `pred` arrives.
async fn poll_until(
    addrs: &[SocketAddr],
    sid: u64,
    token: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let t = Instant::now();
    for i in 0.. {
        let evs = poll(addrs[i % addrs.len()], sid, token)
            .await
            .expect("long poll");
        if let Some(e) = evs.into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(t.elapsed() < DEADLINE, "no such event on session {sid}");
    }
    unreachable!()
}

/// HTTP requests reaching any node (a round-robin load balancer): a session created on
/// node 1 is attached, registered and long-polled through node 2 and node 1 alike; its
/// user takes a call from a WebSocket user of node 2; unknown sessions get the answer a
/// single node gives; node 1 gone → its sessions' requests through node 2 get 458/404.
#[tokio::test]
async fn http_requests_reach_the_sessions_node_through_any_node() {
    let dir = temp_dir();
    let nats = Nats::start(0, &dir.join("nats"));
    let url = nats.url();
    let n1 = node(&url, "h1", &dir.join("h1"));
    let n2 = node(&url, "h2", &dir.join("h2"));
    let tok = "tok-http";
    let r = admin(&n1, json!({"janus": "add_token", "token": tok})).await;
    assert_eq!(r["janus"], "success", "{r}");
    until_token(&n2, tok, true).await;
    // the other node's heartbeat (and so its subject) is there within a second
    until_metric(n2.admin, "callrelay_gateway_cluster_peers", 1.0).await;

    let sid = http_create(n1.http, tok).await;
    let lb = [n2.http, n1.http];
    let t = Instant::now();
    let att = post_json(
        n2.http,
        &format!("/janus/{sid}"),
        &json!({"janus": "attach", "transaction": "a", "token": tok, "plugin": "janus.plugin.videocall"}),
    )
    .await;
    eprintln!(
        "# attach through the other node answered in {:?}",
        t.elapsed()
    );
    assert_eq!(att["janus"], "success", "{att}");
    let hid = att["data"]["id"].as_u64().unwrap();
    let reg = post_json(
        n2.http,
        &format!("/janus/{sid}/{hid}"),
        &json!({"janus": "message", "transaction": "r", "token": tok,
            "body": {"request": "register", "username": "hanna"}}),
    )
    .await;
    assert_eq!(reg["janus"], "ack", "{reg}");
    let ev = poll_until(&lb, sid, tok, |e| event_is(e, "registered")).await;
    assert_eq!(vc(&ev)["result"]["username"], "hanna");
    // a WebSocket user of node 2 calls her; she answers through node 2 and node 1
    let (mut ws, sw, hw, _) = user(&n2, tok, "walt").await;
    vc_req(
        &mut ws,
        sw,
        hw,
        tok,
        json!({"request": "call", "username": "hanna"}),
        Some(json!({"type": "offer", "sdp": OFFER, "trickle": false})),
    )
    .await;
    let inc = poll_until(&lb, sid, tok, |e| event_is(e, "incomingcall")).await;
    assert_eq!(vc(&inc)["result"]["username"], "walt", "{inc}");
    let acc = post_json(
        n2.http,
        &format!("/janus/{sid}/{hid}"),
        &json!({"janus": "message", "transaction": "acc", "token": tok,
            "body": {"request": "accept"},
            "jsep": {"type": "answer", "sdp": answer_sdp(), "trickle": false}}),
    )
    .await;
    assert_eq!(acc["janus"], "ack", "{acc}");
    ws.wait("accepted", |m| event_is(m, "accepted")).await;
    // keepalive through either node keeps the session
    for a in lb {
        let ka = post_json(
            a,
            &format!("/janus/{sid}"),
            &json!({"janus": "keepalive", "transaction": "k", "token": tok}),
        )
        .await;
        assert_eq!(ka["janus"], "ack", "{ka}");
    }
    assert!(
        metric_at(
            n2.admin,
            "callrelay_gateway_cluster_http_forwarded_total{result=\"ok\"}"
        )
        .await
            >= 4.0
    );
    assert!(
        metric_at(
            n1.admin,
            "callrelay_gateway_cluster_http_served_total{result=\"ok\"}"
        )
        .await
            >= 4.0
    );
    // a session id nobody has (no node tag): the single-node answer, at once
    let t = Instant::now();
    let r = post_json(
        n2.http,
        "/janus/12345",
        &json!({"janus": "keepalive", "transaction": "k", "token": tok}),
    )
    .await;
    assert_eq!(r["error"]["code"], 458, "{r}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // node 1 gone: its session is unknown everywhere (458). A request NATS still
    // delivered to the dead node (before it noticed the closed connection) gets 504
    // after the answer timeout; the next one is answered at once.
    let mut n1 = n1;
    let _ = n1.child.kill();
    let _ = n1.child.wait();
    let t = Instant::now();
    let keepalive = json!({"janus": "keepalive", "transaction": "k", "token": tok}).to_string();
    loop {
        let (status, _, body) = http(
            n2.http,
            "POST",
            &format!("/janus/{sid}"),
            Some(&keepalive),
            &[],
        )
        .await;
        if status == 200 {
            let r: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(r["error"]["code"], 458, "{r}");
            break;
        }
        assert_eq!(status, 504, "{body}");
        assert!(t.elapsed() < DEADLINE);
    }
    eprintln!(
        "# the session's node killed: 458 through the other node after {:?}",
        t.elapsed()
    );
    assert_eq!(poll(n2.http, sid, tok).await.unwrap_err(), 404);
    // and walt's call with her ends within the lease
    let t = Instant::now();
    loop {
        if let Some(m) = ws.next_within(100).await
            && event_is(&m, "hangup")
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no hangup for walt");
    }
    stop_node(n2);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}
