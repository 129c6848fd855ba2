//! `/turn-credentials` on the WebSocket and HTTP listeners.

use super::respond::{cors, json_response, query_params};
use super::state::{App, unix_now};
use crate::turn;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub(super) async fn turn_credentials(State(app): State<App>, req: Request) -> Response {
    let headers = req.headers().clone();
    if req.method() == Method::OPTIONS {
        return cors(&app, StatusCode::OK.into_response(), &headers);
    }
    // A refusal: `{"error": why}` with the CORS headers every answer here carries.
    let refuse = |status, why: &str| {
        cors(
            &app,
            json_response(status, &json!({"error": why})),
            &headers,
        )
    };
    if req.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let q = query_params(req.uri().query());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::trim).map(str::to_string));
    let token = q.get("token").cloned().or(bearer);
    let apisecret = q.get("apisecret").cloned();
    let ok = app
        .lock()
        .core
        .check_credentials(token.as_deref(), apisecret.as_deref(), unix_now());
    if !ok {
        return refuse(StatusCode::FORBIDDEN, "unauthorized");
    }
    let cfg = app.cfg();
    let Some(secret) = cfg.turn_secret.as_deref() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "turn credentials not configured (no turn_secret)",
        );
    };
    let user = match &token {
        Some(t) => turn::user_for_token(secret, t),
        None => {
            let r: u64 = rand::random();
            format!("{r:016x}")
        }
    };
    let body = turn::credentials_json(
        secret,
        &user,
        cfg.turn_ttl.as_secs(),
        unix_now(),
        cfg.stun_uri.as_deref(),
        &cfg.turn_uris,
    );
    app.metrics.turn_credentials_issued.inc();
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(&app, resp, &headers)
}
