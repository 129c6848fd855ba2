//! The gateway WebSocket check: a Janus session and a videocall handshake.

use super::cli::Settings;
use super::net::{ConnErr, Io, connect, mattermost_id, parse_url, tls_fix};
use super::report::{Check, ms};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

pub(super) async fn check_ws(
    s: &Settings,
    tls: &TlsConnector,
    token: Option<&str>,
    admin_ok: bool,
    t: Duration,
) -> Check {
    let target = s.ws_url.clone().unwrap_or_default();
    let c = Check::new("Gateway WebSocket URL", &target);
    let Some(raw) = &s.ws_url else {
        return c.fail(
            "not set",
            "set Gateway WebSocket URL (GatewayWebsocketUrl), e.g. wss://rtc.example.com:8189",
        );
    };
    let url = match parse_url(raw) {
        Ok(u) if raw.starts_with("ws://") || raw.starts_with("wss://") => u,
        _ => {
            return c.fail(
                "not a ws:// or wss:// URL",
                "Mattermost requires ws:// or wss://, e.g. wss://rtc.example.com:8189 (browsers on an https:// Mattermost only allow wss://)",
            );
        }
    };
    let mut c = c;
    if !url.tls {
        c.warnings.push(
            "ws:// is plain text: browsers refuse it from a Mattermost served over https://; use wss://".into(),
        );
    }
    let conn = match connect(&url, tls, t).await {
        Ok(x) => x,
        Err(ConnErr::Tcp(m)) => {
            let fix = format!(
                "nothing reachable at {}:{}: check the port (the gateway's listen), that the gateway runs, and the firewall (TCP {} must be open to every user)",
                url.host, url.port, url.port
            );
            return c.fail(m, fix);
        }
        Err(ConnErr::Tls(m)) => {
            let fix = tls_fix(&m, &url.host, true);
            return c.fail(m, fix);
        }
    };
    let t0 = Instant::now();
    c.m("address", conn.addr.to_string());
    let mut req = match raw.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return c.fail(format!("bad URL: {e}"), "fix the URL"),
    };
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", http_value("janus-protocol"));
    let hs = tokio::time::timeout(t, tokio_tungstenite::client_async(req, conn.io)).await;
    let (ws, resp) = match hs {
        Err(_) => {
            return c.fail(
                format!("WebSocket handshake timed out after {} s", t.as_secs()),
                "the port accepts TCP but does not answer the WebSocket upgrade: is it the gateway's WebSocket listener? (if it speaks TLS, the URL must be wss://)",
            );
        }
        Ok(Err(e)) => {
            return c.fail(
                format!("WebSocket handshake failed: {e}"),
                "the URL does not serve a Janus WebSocket: check the port; a reverse proxy must pass the Upgrade and Sec-WebSocket-Protocol headers",
            );
        }
        Ok(Ok(x)) => x,
    };
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if proto != "janus-protocol" {
        return c.fail(
            format!("handshake answered without subprotocol janus-protocol (got {proto:?})"),
            "janus.js closes such a socket: a proxy in front strips Sec-WebSocket-Protocol, or this is not a Janus gateway",
        );
    }
    let hs_ms = ms(t0.elapsed());
    c.m("handshake_ms", hs_ms);
    let mut j = JanusWs {
        ws,
        token: token.map(|t| Value::String(t.to_string())),
        t,
    };
    let tx = |n: &str| format!("doctor-{n}-{}", mattermost_id());
    // create
    let r = j
        .call(
            json!({"janus": "create", "transaction": tx("create")}),
            |_| true,
        )
        .await;
    let sid = match r {
        Ok(v) if v["janus"] == "success" => v["data"]["id"].as_u64().unwrap_or(0),
        Ok(v) => {
            let code = v["error"]["code"].as_u64().unwrap_or(0);
            let reason = v["error"]["reason"].as_str().unwrap_or("").to_string();
            let fix = if code == 403 && token.is_none() {
                "the gateway requires a token (token_auth) and doctor could not add one because the Admin URL check failed: fix that first".to_string()
            } else if code == 403 && admin_ok {
                "the token added through the Admin URL is not accepted here: the Admin URL and the WebSocket URL reach different gateways (or a different state_dir); point both at the same gateway".to_string()
            } else {
                "see the gateway's log".to_string()
            };
            return c.fail(format!("create → error {code} {reason}"), fix);
        }
        Err(e) => {
            return c.fail(
                format!("create: {e}"),
                "the WebSocket opened but the Janus API did not answer: is this a Janus/callrelay gateway?",
            );
        }
    };
    c.m("session_id", sid);
    // attach
    let r = j
        .call(
            json!({"janus": "attach", "plugin": "janus.plugin.videocall", "session_id": sid, "transaction": tx("attach")}),
            |_| true,
        )
        .await;
    let hid = match r {
        Ok(v) if v["janus"] == "success" => v["data"]["id"].as_u64().unwrap_or(0),
        Ok(v) => {
            return c.fail(
                format!(
                    "attach janus.plugin.videocall → error {} {}",
                    v["error"]["code"], v["error"]["reason"]
                ),
                "the gateway has no janus.plugin.videocall (Mattermost needs it), or the token may not use it",
            );
        }
        Err(e) => return c.fail(format!("attach: {e}"), "see the gateway's log"),
    };
    // register
    let user = format!("doctor-{}", mattermost_id());
    let r = j
        .call(
            json!({"janus": "message", "session_id": sid, "handle_id": hid, "transaction": tx("register"),
               "body": {"request": "register", "username": user}}),
            |v| v["janus"] == "event" || v["janus"] == "error",
        )
        .await;
    match r {
        Ok(v) if v["plugindata"]["data"]["result"]["event"] == "registered" => {}
        Ok(v) => {
            return c.fail(
                format!("register → {}", v),
                "janus.plugin.videocall refused the registration; see the gateway's log",
            );
        }
        Err(e) => return c.fail(format!("register: {e}"), "see the gateway's log"),
    }
    // destroy
    let r = j
        .call(
            json!({"janus": "destroy", "session_id": sid, "transaction": tx("destroy")}),
            |_| true,
        )
        .await;
    if !matches!(&r, Ok(v) if v["janus"] == "success") {
        return c.fail(
            format!("destroy → {r:?}"),
            "the session could not be destroyed; see the gateway's log",
        );
    }
    let _ = j.ws.close(None).await;
    let total = ms(t0.elapsed());
    c.m("total_ms", total);
    c.pass(format!(
        "{}handshake janus-protocol {hs_ms} ms, create/attach videocall/register/destroy ok ({total} ms total)",
        if url.tls { "TLS certificate valid, " } else { "" }
    ))
}

/// The doctor's Janus client on one WebSocket: requests carry the token, answers are
/// waited for at most `t`.
struct JanusWs {
    ws: tokio_tungstenite::WebSocketStream<Box<dyn Io>>,
    token: Option<Value>,
    t: Duration,
}

impl JanusWs {
    /// Sends `v` and waits for the first message of its transaction that `done` accepts.
    async fn call(&mut self, v: Value, done: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let tx = v["transaction"].clone();
        self.send_json(v).await?;
        self.wait_for(|r| r["transaction"] == tx && done(r)).await
    }

    async fn send_json(&mut self, mut v: Value) -> Result<(), String> {
        if let Some(tk) = &self.token {
            v["token"] = tk.clone();
        }
        self.ws
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let t = self.t;
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("no reply within {} s", t.as_secs())),
                Ok(None) => return Err("the gateway closed the WebSocket".into()),
                Ok(Some(Err(e))) => return Err(format!("WebSocket error: {e}")),
                Ok(Some(Ok(WsMessage::Text(txt)))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&txt)
                        && pred(&v)
                    {
                        return Ok(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

fn http_value(s: &'static str) -> tokio_tungstenite::tungstenite::http::HeaderValue {
    tokio_tungstenite::tungstenite::http::HeaderValue::from_static(s)
}
