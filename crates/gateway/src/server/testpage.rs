//! `POST /test/session`: the test call page's short-lived token.

use super::listener::PeerAddr;
use super::respond::json_response;
use super::state::{App, unix_now};
use crate::turn;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::json;

/// Lifetime of a test-page token and of its TURN credentials.
const TEST_TOKEN_TTL: u64 = 600;

/// `POST /test/session` on the admin listener: mints a short-lived videocall-only token
/// and TURN credentials for the test call page (see docs/gateway.md § Test call page).
pub(super) async fn test_session(State(app): State<App>, req: Request) -> Response {
    let nostore = |mut r: Response| {
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    if req.method() != Method::POST {
        return nostore(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "use POST"}),
        ));
    }
    let h = req.headers();
    // a custom header: a cross-site form or fetch cannot send it without a CORS
    // preflight, which this endpoint never grants
    if !h.contains_key("x-callrelay-test-page") {
        return nostore(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "missing header X-Callrelay-Test-Page"}),
        ));
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let given = h.get("x-admin-secret").and_then(|v| v.to_str().ok());
    let proxied = crate::testpage::PROXY_HEADERS
        .iter()
        .any(|name| h.contains_key(*name));
    if let Err(why) = crate::testpage::authorize(
        peer,
        host,
        proxied,
        given,
        app.cfg().admin_secret.as_deref(),
    ) {
        app.metrics
            .error(crate::core::JanusError::Unauthorized.code());
        return nostore(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": why, "need_secret": true}),
        ));
    }
    let now = unix_now();
    let token = {
        use base64::Engine as _;
        let bytes: [u8; 24] = rand::random();
        format!(
            "test-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    };
    app.lock()
        .core
        .add_test_token(&token, now + TEST_TOKEN_TTL, now);
    app.metrics.test_tokens_issued.inc();
    let cfg = app.cfg();
    let ws_url = cfg.test_page_ws_url.clone().unwrap_or_else(|| {
        crate::testpage::default_ws_url(host, cfg.tls_on.ws, app.ws_port, cfg.admin_listen)
    });
    let ice = match cfg.turn_secret.as_deref() {
        Some(secret) => {
            let v = turn::credentials_json(
                secret,
                "test-page",
                TEST_TOKEN_TTL,
                now,
                cfg.stun_uri.as_deref(),
                &cfg.turn_uris,
            );
            app.metrics.turn_credentials_issued.inc();
            v["iceServers"].clone()
        }
        None => match &cfg.stun_uri {
            Some(u) => json!([{"urls": [u]}]),
            None => json!([]),
        },
    };
    nostore(json_response(
        StatusCode::OK,
        &json!({
            "token": token,
            "expires_in": TEST_TOKEN_TTL,
            "expires_at": now + TEST_TOKEN_TTL,
            "plugins": [crate::core::VIDEOCALL],
            "ws_url": ws_url,
            "iceServers": ice,
            "relay_available": !cfg.turn_uris.is_empty() && cfg.turn_secret.is_some(),
        }),
    ))
}
