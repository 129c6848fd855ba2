//! The test call page on the admin listener: page + script served with a strict CSP,
//! `POST /test/session` minting short-lived videocall tokens (loopback or admin secret).

mod common;
use common::*;
use serde_json::{Value, json};

async fn session(gw: &Gw, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, h, body) = http(gw.admin, "POST", "/test/session", None, headers).await;
    if status == 200 {
        assert_eq!(header(&h, "cache-control"), Some("no-store"));
        assert!(
            header(&h, "access-control-allow-origin").is_none(),
            "minting must not be readable cross-origin"
        );
    }
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn page_and_script_are_served_on_the_admin_listener_only() {
    let gw = Gw::start(base_config(&temp_dir())).await;
    let (status, h, body) = http_get(gw.admin, "/test").await;
    assert_eq!(status, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    let csp = header(&h, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for id in [
        "status",
        "name",
        "register",
        "users",
        "accept",
        "hangup",
        "relay-only",
        "stat-pair",
        "stat-rtt",
    ] {
        assert!(body.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
    }
    assert!(body.contains("src=\"test/client.js\""));
    let (status, h, js) = http_get(gw.admin, "/test/client.js").await;
    assert_eq!(status, 200);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("janus-protocol") && js.contains("test/session"));
    // not on the public listeners
    let (status, _, _) = http_get(gw.http, "/test").await;
    assert_ne!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn loopback_mints_a_videocall_token_that_works_and_is_not_stored() {
    let gw = Gw::start(base_config(&temp_dir())).await;
    // without the page's header (a cross-site form post could not add it)
    let (status, _) = session(&gw, &[]).await;
    assert_eq!(status, 400);
    let (status, v) = session(&gw, &[("X-Callrelay-Test-Page", "1")]).await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("test-") && token.len() > 30, "{token}");
    assert_eq!(v["expires_in"], 600);
    assert_eq!(v["plugins"], json!(["janus.plugin.videocall"]));
    assert_eq!(v["ws_url"], format!("ws://127.0.0.1:{}", gw.ws.port()));
    assert_eq!(v["relay_available"], true);
    let ice = v["iceServers"].as_array().unwrap();
    assert_eq!(ice[0]["urls"], json!(["stun:127.0.0.1:3478"]));
    let turn = &ice[1];
    let user = turn["username"].as_str().unwrap();
    let (expiry, name) = user.split_once(':').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        expiry > now && expiry <= now + 601,
        "TURN credentials must be short-lived: {user}"
    );
    assert_eq!(name, "test-page");
    assert_eq!(turn["credential"].as_str().unwrap().len(), 28);
    // the token works on the WebSocket: create, attach videocall, register, list
    let mut c = gw.client().await;
    let r = c.req(json!({"janus": "create", "token": token})).await;
    assert_eq!(r["janus"], "success", "{r}");
    let sid = r["data"]["id"].as_u64().unwrap();
    let r = c
        .req(json!({"janus": "attach", "session_id": sid, "plugin": "janus.plugin.videocall", "token": token}))
        .await;
    assert_eq!(r["janus"], "success", "{r}");
    // a made-up token is still refused (token_auth stays on)
    let r = c
        .req(json!({"janus": "create", "token": "test-made-up"}))
        .await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    // not a stored token: the Admin API's list does not show it
    let l = gw
        .admin(json!({"janus": "list_tokens", "transaction": "l", "admin_secret": ADMIN_SECRET}))
        .await;
    assert_eq!(l["data"]["tokens"], json!([]), "{l}");
    assert_eq!(
        metric_at(gw.admin, "callrelay_gateway_test_tokens_issued_total").await,
        1.0
    );
    c.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn admin_secret_path_and_foreign_host_names() {
    let gw = Gw::start(base_config(&temp_dir())).await;
    let hdr = ("X-Callrelay-Test-Page", "1");
    let (status, v) = session(&gw, &[hdr, ("X-Admin-Secret", "wrong")]).await;
    assert_eq!(status, 403);
    assert_eq!(v["need_secret"], true);
    let (status, v) = session(&gw, &[hdr, ("X-Admin-Secret", ADMIN_SECRET)]).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["token"].as_str().unwrap().starts_with("test-"));
    // a page served under a foreign host name (DNS rebinding) needs the secret, and its
    // WebSocket URL follows the host the browser used
    let (status, v) = session(&gw, &[hdr, ("Host", "evil.example:7088")]).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = session(
        &gw,
        &[
            hdr,
            ("Host", "rtc.example.com:7089"),
            ("X-Admin-Secret", ADMIN_SECRET),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["ws_url"],
        format!("ws://rtc.example.com:{}", gw.ws.port())
    );
    // GET is not minting
    let (status, _, _) = http(gw.admin, "GET", "/test/session", None, &[hdr]).await;
    assert_eq!(status, 405);
    gw.stop().await;
}

#[tokio::test]
async fn configured_test_page_ws_url_is_handed_out() {
    let mut cfg = base_config(&temp_dir());
    cfg.test_page_ws_url = Some("wss://rtc.example.com:8189".into());
    let gw = Gw::start(cfg).await;
    let (status, v) = session(&gw, &[("X-Callrelay-Test-Page", "1")]).await;
    assert_eq!(status, 200);
    assert_eq!(v["ws_url"], "wss://rtc.example.com:8189");
    gw.stop().await;
}

/// Item 16: behind a reverse proxy (nginx's default `Host $proxy_host` is a loopback
/// name) the loopback peer is the proxy: with `Forwarded`, `X-Forwarded-For` or
/// `X-Real-IP` present, minting needs the admin secret.
#[tokio::test]
async fn proxied_loopback_requests_need_the_admin_secret() {
    let gw = Gw::start(base_config(&temp_dir())).await;
    let host = format!("127.0.0.1:{}", gw.admin.port());
    let base = [("X-Callrelay-Test-Page", "1"), ("Host", host.as_str())];
    let (st, _) = session(&gw, &base).await;
    assert_eq!(st, 200, "plain loopback still mints");
    for proxy in [
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Real-IP", "203.0.113.9"),
    ] {
        let mut hs = base.to_vec();
        hs.push(proxy);
        let (st, v) = session(&gw, &hs).await;
        assert_eq!(st, 403, "{proxy:?}: {v}");
        assert_eq!(v["need_secret"], true);
        hs.push(("X-Admin-Secret", ADMIN_SECRET));
        let (st, v) = session(&gw, &hs).await;
        assert_eq!(st, 200, "{proxy:?} with the secret: {v}");
    }
    gw.stop().await;
}

/// Item 15: the Admin API grants no CORS: a preflight (also one asking for private
/// network access) and a cross-origin POST get no Access-Control-Allow-* headers.
#[tokio::test]
async fn admin_api_grants_no_cors() {
    let gw = Gw::start(base_config(&temp_dir())).await;
    let (st, h, _) = http(
        gw.admin,
        "OPTIONS",
        "/admin",
        None,
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
            ("Access-Control-Request-Private-Network", "true"),
        ],
    )
    .await;
    assert_ne!(st / 100, 2, "a preflight must not succeed: {st}");
    let (st, h2, body) = http(
        gw.admin,
        "POST",
        "/admin",
        Some(
            &json!({"janus": "list_tokens", "transaction": "t", "admin_secret": ADMIN_SECRET})
                .to_string(),
        ),
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(st, 200);
    assert!(body.contains("success"), "{body}");
    for hs in [&h, &h2] {
        let cors: Vec<_> = hs
            .iter()
            .filter(|(k, _)| k.starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "CORS headers on /admin: {cors:?}");
    }
    // the Janus HTTP transport keeps its CORS (Janus clients on other origins use it)
    let (_, h, _) = http(
        gw.http,
        "OPTIONS",
        "/janus",
        None,
        &[
            ("Origin", "http://x"),
            ("Access-Control-Request-Method", "POST"),
        ],
    )
    .await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    gw.stop().await;
}
