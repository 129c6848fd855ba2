//! Janus core API over a real WebSocket and real HTTP against the gateway on 127.0.0.1,
//! compared with the fact sheet (shared/docs/janus-api.md §1–§8).

mod common;
use common::*;
use serde_json::{Value, json};

fn err_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

fn reason(v: &Value) -> &str {
    v["error"]["reason"].as_str().unwrap()
}

#[tokio::test]
async fn root_requests_info_ping_and_envelope_errors() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    let mut c = gw.client().await;
    assert_eq!(
        c.protocol.as_deref(),
        Some("janus-protocol"),
        "subprotocol echoed"
    );

    // info and ping need no token even with token_auth
    let r = c.req(json!({"janus": "info"})).await;
    assert_eq!(r["janus"], "server_info");
    assert_eq!(r["auth_token"], true);
    assert_eq!(r["api_secret"], false);
    assert_eq!(r["session-timeout"], 60);
    assert!(r["plugins"]["janus.plugin.videocall"].is_object(), "{r}");
    assert!(r.get("session_id").is_none());
    let r = c.req(json!({"janus": "PING"})).await;
    assert_eq!(r, json!({"janus": "pong", "transaction": "tx2"}));

    // create without token: 403, no session_id
    let r = c.req(json!({"janus": "create"})).await;
    assert_eq!(err_code(&r), 403);
    assert_eq!(
        reason(&r),
        "Unauthorized request (wrong or missing secret/token)"
    );
    assert!(r.get("session_id").is_none());
    assert_eq!(r["transaction"], "tx3");

    // wrong level at root
    let r = c.req(json!({"janus": "keepalive"})).await;
    assert_eq!(err_code(&r), 457);
    assert_eq!(reason(&r), "Unhandled request 'keepalive' at this path");

    // invalid JSON: 454 without transaction
    c.send_text("{not json").await;
    let r = c.next_within(2000).await.unwrap();
    assert_eq!(err_code(&r), 454);
    assert!(
        reason(&r).starts_with("Invalid Janus API request - <string>(1,2): "),
        "{r}"
    );
    assert!(r.get("transaction").is_none());
    // array over WS: 456 missing transaction
    c.send_text("[1,2]").await;
    let r = c.next_within(2000).await.unwrap();
    assert_eq!(err_code(&r), 456);
    assert_eq!(reason(&r), "Missing mandatory element (transaction)");
    // missing janus
    c.send(&json!({"transaction": "t"})).await;
    let r = c.next_within(2000).await.unwrap();
    assert_eq!(err_code(&r), 456);
    assert_eq!(reason(&r), "Missing mandatory element (janus)");
    assert!(r.get("transaction").is_none());
    // transaction of the wrong type
    c.send(&json!({"janus": "ping", "transaction": 5})).await;
    let r = c.next_within(2000).await.unwrap();
    assert_eq!(err_code(&r), 467);
    assert_eq!(
        reason(&r),
        "Invalid element type (transaction should be a string)"
    );
    c.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn session_and_handle_requests_with_check_order() {
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    let token = "dG9rZW4tZm9yLXNlc3Npb24tdGVzdHMtMTIzNDU=";
    gw.add_token(token).await;
    let mut c = gw.client().await;
    let (s, h) = c.session_handle(Some(token)).await;
    assert!(s < (1 << 53) && h < (1 << 53), "ids fit in a JS number");

    // unknown session without token → 403 (auth before lookup), with session_id echoed
    let r = c
        .req(json!({"janus": "keepalive", "session_id": 12345}))
        .await;
    assert_eq!(err_code(&r), 403);
    assert_eq!(r["session_id"], 12345);
    // with a token → 458
    let r = c
        .req(json!({"janus": "keepalive", "session_id": 12345, "token": token}))
        .await;
    assert_eq!(err_code(&r), 458);
    assert_eq!(reason(&r), "No such session 12345");
    assert_eq!(r["session_id"], 12345);
    // handle without session → 458 before auth
    let r = c
        .req(json!({"janus": "message", "handle_id": h, "body": {}}))
        .await;
    assert_eq!(err_code(&r), 458);
    assert_eq!(reason(&r), "Session not found");
    // unknown handle
    let r = c
        .req(json!({"janus": "detach", "session_id": s, "handle_id": 77, "token": token}))
        .await;
    assert_eq!(err_code(&r), 459);
    assert_eq!(reason(&r), format!("No such handle 77 in session {s}"));

    let t = |mut v: Value| {
        v["token"] = token.into();
        v
    };
    // keepalive → ack (not success)
    let r = c
        .req(t(json!({"janus": "keepalive", "session_id": s})))
        .await;
    assert_eq!(r["janus"], "ack");
    assert_eq!(r["session_id"], s);
    // attach errors
    let r = c.req(t(json!({"janus": "attach", "session_id": s}))).await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (456, "Missing mandatory element (plugin)")
    );
    let r = c
        .req(t(
            json!({"janus": "attach", "session_id": s, "plugin": "janus.plugin.echotest"}),
        ))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (460, "No such plugin 'janus.plugin.echotest'")
    );
    let r = c.req(t(json!({"janus": "attach", "session_id": s, "handle_id": h, "plugin": "janus.plugin.videocall"}))).await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (457, "Unhandled request 'attach' at this path")
    );
    // verbs at the wrong level / unknown
    let r = c
        .req(t(json!({"janus": "message", "session_id": s, "body": {}})))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (457, "Unhandled request 'message' at this path")
    );
    let r = c
        .req(t(
            json!({"janus": "destroy", "session_id": s, "handle_id": h}),
        ))
        .await;
    assert_eq!(err_code(&r), 457);
    let r = c.req(t(json!({"janus": "dance", "session_id": s}))).await;
    assert_eq!((err_code(&r), reason(&r)), (453, "Unknown request 'dance'"));
    // trickle validation
    let r = c
        .req(t(
            json!({"janus": "trickle", "session_id": s, "handle_id": h}),
        ))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (456, "Missing mandatory element (candidate|candidates)")
    );
    let r = c
        .req(t(json!({"janus": "trickle", "session_id": s, "handle_id": h, "candidate": {"completed": true}, "candidates": []})))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (454, "Can't have both candidate and candidates")
    );
    let r = c
        .req(t(
            json!({"janus": "trickle", "session_id": s, "handle_id": h, "candidates": 5}),
        ))
        .await;
    // Janus 1.1.2 acks a non-array `candidates` (observed against the real server)
    assert_eq!(r["janus"], "ack");
    let r = c.req(t(json!({"janus": "trickle", "session_id": s, "handle_id": h, "candidate": cand(1, "0", 0)}))).await;
    assert_eq!(r["janus"], "ack");
    let r = c
        .req(t(json!({"janus": "trickle", "session_id": s, "handle_id": h, "candidates": [cand(2, "0", 0), {"completed": true}]})))
        .await;
    assert_eq!(r["janus"], "ack");
    // message / jsep validation (core errors, synchronous)
    let m = |extra: Value| {
        let mut v = json!({"janus": "message", "session_id": s, "handle_id": h, "token": token, "body": {"request": "list"}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let mut nobody = m(json!({}));
    nobody.as_object_mut().unwrap().remove("body");
    let r = c.req(nobody).await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (456, "Missing mandatory element (body)")
    );
    let r = c.req(m(json!({"jsep": "x"}))).await;
    assert_eq!((err_code(&r), reason(&r)), (455, "Invalid jsep object"));
    let r = c.req(m(json!({"jsep": {"type": "offer"}}))).await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (456, "JSEP error: missing mandatory element (sdp)")
    );
    let r = c
        .req(m(json!({"jsep": {"type": "pranswer", "sdp": OFFER}})))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (464, "JSEP error: unknown message type 'pranswer'")
    );
    let r = c
        .req(m(json!({"jsep": {"type": "offer", "sdp": "hello"}})))
        .await;
    assert_eq!(err_code(&r), 465);
    let r = c
        .req(m(json!({"jsep": {"type": "answer", "sdp": OFFER}})))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (469, "Unexpected ANSWER (did we offer?)")
    );
    // a good message → ack, then event with the same transaction
    let r = c.req(m(json!({}))).await;
    assert_eq!(r["janus"], "ack");
    let tx = r["transaction"].as_str().unwrap().to_string();
    let ev = c
        .wait("list event", |v| {
            v["janus"] == "event" && v["transaction"] == tx.as_str()
        })
        .await;
    assert_eq!(ev["sender"], h);
    assert_eq!(ev["session_id"], s);
    assert_eq!(ev["plugindata"]["plugin"], "janus.plugin.videocall");
    assert_eq!(
        ev["plugindata"]["data"],
        json!({"videocall": "event", "result": {"list": []}})
    );

    // create with a taken id → 468
    let r = c
        .req(json!({"janus": "create", "id": s, "token": token}))
        .await;
    assert_eq!(
        (err_code(&r), reason(&r)),
        (468, "Session ID already in use")
    );
    // a zero handle_id stays at the root level (as in Janus)
    let r = c
        .req(json!({"janus": "create", "handle_id": 0, "token": token}))
        .await;
    assert_eq!(r["janus"], "success", "{r}");
    // handle_id 0 at session level → 459
    let r = c
        .req(t(
            json!({"janus": "keepalive", "session_id": s, "handle_id": 0}),
        ))
        .await;
    assert_eq!((err_code(&r), reason(&r)), (459, "Handle not found"));
    // create with a free id works
    let r = c
        .req(json!({"janus": "create", "id": 4242, "token": token}))
        .await;
    assert_eq!(r["data"]["id"], 4242);
    // claim → success without data
    let r = c.req(t(json!({"janus": "claim", "session_id": s}))).await;
    assert_eq!(
        r,
        json!({"janus": "success", "session_id": s, "transaction": r["transaction"]})
    );
    // hangup (core) on a handle without PC → success
    let r = c
        .req(t(
            json!({"janus": "hangup", "session_id": s, "handle_id": h}),
        ))
        .await;
    assert_eq!(r["janus"], "success");
    // detach → success + detached event
    let r = c
        .req(t(
            json!({"janus": "detach", "session_id": s, "handle_id": h}),
        ))
        .await;
    assert_eq!(r["janus"], "success");
    assert_eq!(r["session_id"], s);
    let d = c.wait("detached", |v| v["janus"] == "detached").await;
    assert_eq!(
        d,
        json!({"janus": "detached", "session_id": s, "sender": h})
    );
    let r = c
        .req(t(
            json!({"janus": "message", "session_id": s, "handle_id": h, "body": {}}),
        ))
        .await;
    assert_eq!(err_code(&r), 459);
    // destroy → success; afterwards 458
    let r = c.req(t(json!({"janus": "destroy", "session_id": s}))).await;
    assert_eq!(r["janus"], "success");
    let r = c
        .req(t(json!({"janus": "keepalive", "session_id": s})))
        .await;
    assert_eq!(err_code(&r), 458);
    c.close().await;
    gw.stop().await;
}
