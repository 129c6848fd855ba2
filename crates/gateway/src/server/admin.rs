//! The Admin API listener: `/admin`, `/metrics`, the plain-HTTP-to-loopback rule.

use super::respond::{counted_error, empty, json_object, json_response, read_body};
use super::state::{App, unix_now};
use super::tokens::{persist_tokens, unsaved_reply};
use super::ws::accept;
use crate::core::JanusError;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Instant;

/// Whether a connection to a TLS listener is served as plain HTTP: only from a loopback
/// peer (an ssh tunnel, `ssh -L 7089:127.0.0.1:7089`, or a local client) whose first
/// byte is not a TLS handshake record (22). Through a tunnel the browser addresses
/// `127.0.0.1`, which no certificate names, and `http://127.0.0.1` is a secure context
/// (camera and microphone work); everything else still needs TLS.
pub(super) fn speaks_plain(peer: std::net::IpAddr, first_byte: u8) -> bool {
    const TLS_HANDSHAKE: u8 = 22;
    peer.to_canonical().is_loopback() && first_byte != TLS_HANDSHAKE
}

pub(super) async fn metrics_handler(State(app): State<App>) -> Response {
    let (counters, (s, h, u, t)) = {
        let state = app.lock();
        (state.core.counters().clone(), state.core.stats())
    };
    app.metrics.export_core(&counters);
    let to_i = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
    app.metrics.sessions.set(to_i(s));
    app.metrics.handles.set(to_i(h));
    app.metrics.registered_users.set(to_i(u));
    app.metrics.tokens.set(to_i(t));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

pub(super) async fn admin_entry(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let (mut parts, _b) = req.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => accept(app, u, &headers, true),
            Err(e) => e.into_response(),
        };
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // No CORS headers: the Admin API is for servers (Mattermost), never for pages in a
    // browser, and the test call page is same-origin. A preflight gets no grant (no
    // Access-Control-Allow-Origin, no Access-Control-Allow-Private-Network).
    admin_http(&app, method, &path, req.into_body()).await
}

async fn admin_http(app: &App, method: Method, path: &str, body: Body) -> Response {
    let Some(rest) = path.strip_prefix("/admin") else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found; the Admin API is at /admin, metrics at /metrics"}),
        );
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    }
    if method == Method::OPTIONS {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if method != Method::POST {
        return counted_error(
            app,
            JanusError::TransportSpecific,
            "Transport specific error (use POST)",
        );
    }
    if segs.len() > 1 {
        return counted_error(
            app,
            JanusError::InvalidRequestPath,
            "Invalid path for this request",
        );
    }
    let path_session = match segs.first() {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(x) if x > 0 => Some(x),
            _ => {
                return counted_error(
                    app,
                    JanusError::SessionNotFound,
                    &format!("Invalid session {s}"),
                );
            }
        },
    };
    let bytes = match read_body(app, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let v = match json_object(&bytes) {
        Ok(obj) => Value::Object(obj),
        Err((code, reason)) => return counted_error(app, code, &reason),
    };
    let r = {
        let mut inner = app.lock();
        let r = inner
            .core
            .admin_value(Instant::now(), unix_now(), v, path_session);
        inner.deliver();
        r
    };
    if r.tokens_changed
        && let Err(e) = persist_tokens(app).await
    {
        return json_response(StatusCode::OK, &unsaved_reply(app, &r.reply, &e));
    }
    json_response(StatusCode::OK, &r.reply)
}

#[cfg(test)]
mod tests {
    use super::speaks_plain;

    #[test]
    fn plain_http_on_a_tls_listener_only_from_loopback() {
        let ip = |s: &str| s.parse().unwrap();
        // "G" of GET from an ssh tunnel (127.0.0.1), IPv6 loopback, IPv4-mapped loopback
        for a in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(speaks_plain(ip(a), b'G'), "{a}");
            assert!(!speaks_plain(ip(a), 22), "{a}: a TLS ClientHello is TLS");
        }
        // the Mattermost server, anyone else: TLS only
        for a in ["192.0.2.10", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.10"] {
            assert!(!speaks_plain(ip(a), b'G'), "{a}");
        }
    }
}
