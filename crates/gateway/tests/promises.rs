//! Promises of docs/gateway.md that had no test: the Admin API refuses every request
//! without the admin secret (HTTP and WebSocket), the exit status of the binary
//! (2 = configuration error, 1 = port in use / state dir / certificate), the 10 s limit
//! for an HTTP request head on every listener, and the HTTP event queue dropping its
//! oldest events beyond 1000.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "cHJvbWlzZXMtdG9rZW4tMjYtY2hhcnMteHh4eA==";
const UNAUTHORIZED: &str = "Unauthorized request (wrong or missing secret/token)";

// ------------------------------------------------------------------ Admin API secret

/// Every Admin API verb (those we implement, Janus ones we do not, and nonsense), with
/// the arguments that would make it succeed given the right secret.
fn admin_requests(session: u64) -> Vec<Value> {
    vec![
        json!({"janus": "add_token", "token": "intruder", "plugins": ["janus.plugin.videocall"]}),
        json!({"janus": "list_tokens"}),
        json!({"janus": "allow_token", "token": TOKEN, "plugins": ["janus.plugin.videocall"]}),
        json!({"janus": "disallow_token", "token": TOKEN, "plugins": ["janus.plugin.videocall"]}),
        json!({"janus": "remove_token", "token": TOKEN}),
        json!({"janus": "list_sessions"}),
        json!({"janus": "get_status"}),
        json!({"janus": "list_handles", "session_id": session}),
        json!({"janus": "destroy_session", "session_id": session}),
        json!({"janus": "set_log_level", "level": 7}),
        json!({"janus": "query_handle", "session_id": session, "handle_id": 1}),
        json!({"janus": "frobnicate"}),
    ]
}

/// Ways to not have the secret: absent, empty, wrong, one character short or long, other
/// case, padded, wrong JSON type, or the secret in another field.
fn bad_secrets() -> Vec<Option<Value>> {
    let s = ADMIN_SECRET;
    vec![
        None,
        Some(json!("")),
        Some(json!("wrong")),
        Some(json!(&s[..s.len() - 1])),
        Some(json!(format!("{s}x"))),
        Some(json!(s.to_uppercase())),
        Some(json!(format!(" {s}"))),
        Some(json!(null)),
        Some(json!(0)),
        Some(json!([s])),
        Some(json!({"secret": s})),
    ]
}

fn with_secret(req: &Value, secret: &Option<Value>) -> Value {
    let mut r = req.clone();
    match secret {
        Some(s) => r["admin_secret"] = s.clone(),
        // the right secret in the wrong fields does not count either
        None => {
            r["apisecret"] = ADMIN_SECRET.into();
            r["token"] = r.get("token").cloned().unwrap_or(ADMIN_SECRET.into());
        }
    }
    r
}

fn assert_refused(r: &Value, tx: &str, what: &str) {
    assert_eq!(r["janus"], "error", "{what}: {r}");
    assert_eq!(r["transaction"], tx, "{what}: {r}");
    assert_eq!(r["error"]["code"], 403, "{what}: {r}");
    assert_eq!(r["error"]["reason"], UNAUTHORIZED, "{what}: {r}");
    assert!(
        r.get("data").is_none() && r.get("sessions").is_none(),
        "{what}: {r}"
    );
}

/// Sends every request with every bad secret over `POST /admin`, `POST /admin/<session>`
/// (the session verbs) and the `janus-admin-protocol` WebSocket; all must get 403.
/// Returns how many were sent.
async fn attack(gw: &Gw, session: u64, secrets: &[Option<Value>]) -> u64 {
    let mut ws = Client::connect(gw.admin, "janus-admin-protocol").await;
    assert_eq!(ws.protocol.as_deref(), Some("janus-admin-protocol"));
    let mut n = 0;
    for (i, req) in admin_requests(session).iter().enumerate() {
        for (j, secret) in secrets.iter().enumerate() {
            let mut r = with_secret(req, secret);
            let tx = format!("http-{i}-{j}");
            r["transaction"] = tx.clone().into();
            let what = format!("POST /admin {r}");
            let (st, _, body) = http(gw.admin, "POST", "/admin", Some(&r.to_string()), &[]).await;
            assert_eq!(st, 200, "{what}: {body}");
            assert_refused(&serde_json::from_str(&body).unwrap(), &tx, &what);
            n += 1;

            if r.get("session_id").is_some() {
                let tx = format!("path-{i}-{j}");
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("session_id");
                r["transaction"] = tx.clone().into();
                let path = format!("/admin/{session}");
                let what = format!("POST {path} {r}");
                let (st, _, body) = http(gw.admin, "POST", &path, Some(&r.to_string()), &[]).await;
                assert_eq!(st, 200, "{what}: {body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_refused(&v, &tx, &what);
                n += 1;
            }

            let mut r = with_secret(req, secret);
            let what = format!("WS janus-admin-protocol {r}");
            r.as_object_mut().unwrap().remove("transaction");
            let v = ws.req(r).await;
            let tx = v["transaction"].as_str().unwrap_or("").to_string();
            assert!(!tx.is_empty(), "{what}: {v}");
            assert_refused(&v, &tx, &what);
            n += 1;
        }
    }
    // info and ping are the documented exceptions
    let v = ws.req(json!({"janus": "ping"})).await;
    assert_eq!(v["janus"], "pong", "{v}");
    let v = ws.req(json!({"janus": "info"})).await;
    assert_eq!(v["janus"], "server_info", "{v}");
    ws.close().await;
    n
}

#[tokio::test]
async fn admin_api_refuses_every_request_without_the_admin_secret() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    gw.add_token(TOKEN).await;
    let mut c = gw.client().await;
    let (s, h) = c.session_handle(Some(TOKEN)).await;
    let before = metric_at(gw.admin, "callrelay_gateway_errors_total{code=\"403\"}").await;

    let n = attack(&gw, s, &bad_secrets()).await;

    // every refusal was counted, and nothing changed: the token is still there with its
    // plugin, no new token, the session and its handle alive
    let after = metric_at(gw.admin, "callrelay_gateway_errors_total{code=\"403\"}").await;
    assert_eq!(
        after - before,
        n as f64,
        "403s counted for {n} refused requests"
    );
    let r = gw
        .admin(json!({"janus": "list_tokens", "transaction": "t", "admin_secret": ADMIN_SECRET}))
        .await;
    assert_eq!(
        r["data"]["tokens"],
        json!([{"token": TOKEN, "allowed_plugins": ["janus.plugin.videocall"]}]),
        "{r}"
    );
    let r = gw
        .admin(json!({"janus": "list_handles", "session_id": s, "transaction": "t", "admin_secret": ADMIN_SECRET}))
        .await;
    assert_eq!(r["handles"], json!([h]), "{r}");
    let r = c
        .req(json!({"janus": "keepalive", "session_id": s, "token": TOKEN}))
        .await;
    assert_eq!(r["janus"], "ack", "{r}");
    let r = c.req(json!({"janus": "create", "token": "intruder"})).await;
    assert_eq!(r["error"]["code"], 403, "intruder token was added: {r}");
    gw.stop().await;
    let file = std::fs::read_to_string(dir.join("tokens.json")).unwrap();
    assert!(file.contains(TOKEN) && !file.contains("intruder"), "{file}");
}

#[tokio::test]
async fn admin_api_without_a_configured_secret_refuses_everything() {
    let dir = temp_dir();
    let mut cfg = base_config(&dir);
    cfg.admin_secret = None;
    cfg.token_auth = Some(false);
    let gw = Gw::start(cfg).await;
    let mut c = gw.client().await;
    let (s, _) = c.session_handle(None).await;
    // with no secret configured, not even the test suite's secret (or an empty one) opens it
    let mut secrets = bad_secrets();
    secrets.push(Some(json!(ADMIN_SECRET)));
    let n = attack(&gw, s, &secrets).await;
    assert!(n > 300, "{n}");
    assert_eq!(
        metric_at(gw.admin, "callrelay_gateway_errors_total{code=\"403\"}").await,
        n as f64
    );
    // the session survived every destroy_session
    let r = c.req(json!({"janus": "keepalive", "session_id": s})).await;
    assert_eq!(r["janus"], "ack", "{r}");
    gw.stop().await;
}

// ------------------------------------------------------------------ exit status

fn run_bin(args: &[&str]) -> (i32, String) {
    let (mut child, lines) = spawn_bin(args);
    let status = wait_exit(&mut child, 30);
    // the reader thread pushes this marker at EOF: the whole stderr is in
    wait_line(&lines, 0, &["<stderr closed>"], 10);
    let log = lines.0.lock().unwrap().join("\n");
    (status.code().expect("exited by a signal"), log)
}

#[test]
fn exit_status_2_for_every_kind_of_configuration_error() {
    let dir = temp_dir();
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unknown = file("unknown.toml", "sesion_timeout = 5\n");
    let range = file("range.toml", "session_timeout = 99999999999\n");
    let syntax = file("syntax.toml", "session_timeout = \n");
    let missing = dir.join("does-not-exist.toml");
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--config", &unknown], "sesion_timeout"),
        (&["--config", &range], "session_timeout"),
        (&["--config", &syntax], "session_timeout"),
        (&["--config", missing], "does-not-exist.toml"),
        (&["--turn-uri", "turn:x:3478"], "turn_secret"),
        (&["--cert", "c.pem"], "key"),
        (&["--ws-tls", "true"], "ws_tls"),
        (&["--admin-listen", "0.0.0.0:0"], "admin-secret"),
        (&["--longpoll-timeout", "0"], "longpoll_timeout"),
    ];
    for (args, key) in cases {
        let mut a = args.to_vec();
        a.extend(["--state-dir", state]);
        let (code, log) = run_bin(&a);
        assert_eq!(code, 2, "{args:?}: {log}");
        assert!(log.contains("configuration error"), "{args:?}: {log}");
        assert!(log.contains(key), "{args:?} must name {key}: {log}");
        assert!(!log.contains("listening"), "{args:?}: {log}");
    }
}

#[test]
fn exit_status_1_for_a_port_in_use_an_unusable_state_dir_or_certificate() {
    let dir = temp_dir();
    // a port held by someone else (kept bound for the whole test)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let state = dir.join("state");
    let state_ok = state.to_str().unwrap();
    for flag in ["--listen", "--http-listen", "--admin-listen"] {
        let (code, log) = run_bin(&[flag, &taken, "--state-dir", state_ok]);
        assert_eq!(code, 1, "{flag} {taken}: {log}");
        assert!(log.contains("in use"), "{flag}: {log}");
    }
    // state_dir below a regular file: cannot be created
    let plain = dir.join("plain-file");
    std::fs::write(&plain, "x").unwrap();
    let below = plain.join("state");
    // state_dir whose tokens.json cannot be written (a directory is in the way)
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("tokens.json")).unwrap();
    // state_dir with a corrupt token file
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("tokens.json"), "{not json").unwrap();
    for (state, what) in [
        (below.as_path(), "plain-file"),
        (plain.as_path(), "plain-file"),
        (blocked.as_path(), "tokens.json"),
        (corrupt.as_path(), "not a valid token file"),
    ] {
        let (code, log) = run_bin(&["--state-dir", state.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {log}", state.display());
        assert!(log.contains("state_dir") && log.contains(what), "{log}");
        assert!(!log.contains("listening"), "{log}");
    }
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "x");
    assert_eq!(
        std::fs::read_to_string(corrupt.join("tokens.json")).unwrap(),
        "{not json",
        "a corrupt token file is left for the operator"
    );
    // a certificate that is not PEM
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let (code, log) = run_bin(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--state-dir",
        state_ok,
    ]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("cert/key"), "{log}");
}

// ------------------------------------------------------------------ request-head limit

/// Opens a connection, writes `head` one byte every `gap` (never finishing it), and
/// returns how long the server kept the connection open and what it answered.
async fn trickle_head(
    addr: std::net::SocketAddr,
    head: &[u8],
    gap: Duration,
) -> (Duration, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let mut i = 0;
    loop {
        // read with a timeout of one gap; EOF/reset = the server closed
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "connection still open after 30 s"
        );
        if i < head.len() && s.write_all(&head[i..=i]).await.is_err() {
            // the server closed while we were writing; wait for the EOF above
        }
        i += 1;
    }
}

#[tokio::test]
async fn a_request_head_must_arrive_within_10_s_on_every_listener() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    // a head that never ends (a header line growing by one byte per 100 ms), a head
    // that stops after the request line, and, as a control, a complete request trickled
    // over ~6 s that must be answered
    let endless: Vec<u8> = b"GET /janus/info HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', 10_000))
        .collect();
    let slow_ok = b"GET /janus/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut tasks = Vec::new();
    for (name, addr) in [("ws", gw.ws), ("http", gw.http), ("admin", gw.admin)] {
        let e = endless.clone();
        tasks.push(tokio::spawn(async move {
            let (t, got) = trickle_head(addr, &e, Duration::from_millis(100)).await;
            (name, "endless", t, got)
        }));
        tasks.push(tokio::spawn(async move {
            let (t, got) = trickle_head(
                addr,
                b"GET /janus/info HTTP/1.1\r\n",
                Duration::from_millis(100),
            )
            .await;
            (name, "stalled", t, got)
        }));
        tasks.push(tokio::spawn(async move {
            let (t, got) = trickle_head(addr, b"", Duration::from_millis(100)).await;
            (name, "silent", t, got)
        }));
        tasks.push(tokio::spawn(async move {
            let (t, got) = trickle_head(addr, slow_ok, Duration::from_millis(110)).await;
            (name, "slow but complete", t, got)
        }));
    }
    for t in tasks {
        let (name, kind, took, got) = t.await.unwrap();
        let answer = String::from_utf8_lossy(&got);
        eprintln!(
            "{name} {kind}: closed after {took:?}, answer {:?}",
            answer.lines().next()
        );
        if kind == "slow but complete" {
            assert!(took < Duration::from_secs(10), "{name}: {took:?}");
            assert!(
                answer.starts_with("HTTP/1.1 "),
                "{name} did not answer: {answer}"
            );
        } else {
            // hyper answers 408 or just closes; either way within 10 s + scheduling slack,
            // and not before the 10 s are up
            assert!(
                took >= Duration::from_millis(9_500),
                "{name} {kind}: closed early, {took:?}"
            );
            assert!(took < Duration::from_secs(20), "{name} {kind}: {took:?}");
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{name} {kind}: {answer}"
            );
        }
    }
    // the server is fine afterwards
    let (st, _, _) = http_get(gw.http, "/janus/info").await;
    assert_eq!(st, 200);
    gw.stop().await;
}

// ------------------------------------------------------------------ HTTP event queue

#[tokio::test]
async fn http_event_queue_keeps_the_newest_1000_events() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    gw.add_token(TOKEN).await;
    let s = http_create(gw.http, TOKEN).await;
    let r = post_json(
        gw.http,
        &format!("/janus/{s}"),
        &json!({"janus": "attach", "plugin": "janus.plugin.videocall", "transaction": "a", "token": TOKEN}),
    )
    .await;
    let h = r["data"]["id"].as_u64().unwrap_or_else(|| panic!("{r}"));
    // 1100 `list` messages, nobody polling: each ack now, each plugin event queued
    const SENT: usize = 1100;
    for i in 0..SENT {
        let r = post_json(
            gw.http,
            &format!("/janus/{s}/{h}"),
            &json!({"janus": "message", "body": {"request": "list"}, "transaction": format!("m{i}"), "token": TOKEN}),
        )
        .await;
        assert_eq!(r["janus"], "ack", "{r}");
    }
    let poll = |maxev: usize| {
        let path = format!("/janus/{s}?token={TOKEN}&maxev={maxev}");
        async move {
            let (st, _, b) = http_get(gw.http, &path).await;
            assert_eq!(st, 200, "{b}");
            serde_json::from_str::<Value>(&b).unwrap()
        }
    };
    // the oldest 100 were dropped; the rest come in order
    let v = poll(1000).await;
    let evs = v.as_array().unwrap_or_else(|| panic!("{v}"));
    let txs: Vec<&str> = evs
        .iter()
        .map(|e| {
            assert_eq!(e["janus"], "event", "{e}");
            e["transaction"].as_str().unwrap()
        })
        .collect();
    let want: Vec<String> = (SENT - 1000..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(txs.len(), 1000);
    assert_eq!(txs, want);
    // nothing else is left
    assert_eq!(poll(1).await, json!({"janus": "keepalive"}));
    gw.stop().await;
}

// ------------------------------------------------------------------ secrets from the environment

#[tokio::test]
async fn the_three_secrets_come_from_the_environment_and_never_show() {
    use base64::Engine as _;
    use hmac::Mac as _;
    let dir = temp_dir();
    let (admin_s, api_s, turn_s) = ("env-admin-5ecret", "env-api-5ecret", "env-turn-5ecret");
    // --turn-uri without a turn secret is a configuration error: it must come from the env
    let mut bin = Bin::start_env(
        &[
            "--token-auth",
            "--turn-uri",
            "turn:127.0.0.1:3478",
            "--state-dir",
            dir.to_str().unwrap(),
        ],
        &[
            ("CALLRELAY_GATEWAY_ADMIN_SECRET", admin_s),
            ("CALLRELAY_GATEWAY_API_SECRET", api_s),
            ("CALLRELAY_GATEWAY_TURN_SECRET", turn_s),
        ],
    );
    let add = |secret: &str| json!({"janus": "add_token", "token": TOKEN, "transaction": "a", "admin_secret": secret});
    let r = post_json(bin.admin, "/admin", &add(ADMIN_SECRET)).await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    let r = post_json(bin.admin, "/admin", &add(admin_s)).await;
    assert_eq!(r["janus"], "success", "{r}");
    // api secret
    let r = post_json(
        bin.http,
        "/janus",
        &json!({"janus": "create", "transaction": "c", "apisecret": api_s}),
    )
    .await;
    assert_eq!(r["janus"], "success", "{r}");
    let r = post_json(
        bin.http,
        "/janus",
        &json!({"janus": "create", "transaction": "c", "apisecret": "wrong"}),
    )
    .await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    // turn secret: the minted password is HMAC-SHA1(turn secret, username)
    let (st, _, b) = http_get(
        bin.http,
        &format!("/turn-credentials?token={}", TOKEN.replace('=', "%3D")),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let user = v["username"].as_str().unwrap();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(turn_s.as_bytes()).unwrap();
    mac.update(user.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(v["password"], want.as_str());
    // never on the command line, in /metrics or in the log
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", bin.child.id())).unwrap();
    let metrics = http_get(bin.admin, "/metrics").await.2;
    bin.signal("TERM");
    assert_eq!(bin.wait_exit(15).code(), Some(0));
    bin.wait_log(0, &["gateway stopped"]);
    let log = bin.log();
    for s in [admin_s, api_s, turn_s] {
        assert!(!String::from_utf8_lossy(&cmdline).contains(s));
        assert!(!metrics.contains(s), "{s} in /metrics");
        assert!(!log.contains(s), "{s} in the log:\n{log}");
    }
}
