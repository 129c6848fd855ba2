//! The three routers without sockets: each request goes through
//! `tower::ServiceExt::oneshot`, so a route that moves, a fallback that swaps or CORS
//! that leaks onto the admin listener fails here.

use super::state::{App, Shared};
use super::tokens::open_token_file;
use super::{admin_app, http_app, ws_app};
use crate::config::Config;
use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt as _;

const ADMIN_SECRET: &str = "unit-admin-secret";

/// A gateway's shared state on a fresh state directory, with `edit` applied to the
/// default configuration (admin secret set).
fn app_with(edit: impl FnOnce(&mut Config)) -> (App, std::path::PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "callrelay-gateway-router-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cfg = Config {
        state_dir: dir.clone(),
        admin_secret: Some(ADMIN_SECRET.to_string()),
        ..Config::default()
    };
    edit(&mut cfg);
    let (path, file) = open_token_file(&cfg.state_dir).expect("state dir");
    let (app, _) = Shared::start(&cfg, Metrics::new(), path, file, 8188);
    (app, dir)
}

fn app() -> (App, std::path::PathBuf) {
    app_with(|_| {})
}

async fn send(router: &Router, req: Request<Body>) -> Response {
    router.clone().oneshot(req).await.expect("infallible")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

async fn body_text(resp: Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8(b.to_vec()).expect("utf-8 body")
}

async fn body_json(resp: Response) -> Value {
    serde_json::from_str(&body_text(resp).await).expect("JSON body")
}

#[tokio::test]
async fn info_answers_on_the_http_router_with_cors() {
    let (app, dir) = app();
    let r = send(&http_app(app), get("/janus/info?transaction=abc")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let v = body_json(r).await;
    assert_eq!(v["janus"], "server_info");
    assert_eq!(v["transaction"], "abc");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn http_router_answers_janus_paths_only() {
    let (app, dir) = app();
    let router = http_app(app);
    // a Janus request through the REST fallback reaches the core
    let create = Request::post("/janus")
        .body(Body::from(
            json!({"janus": "create", "transaction": "t1"}).to_string(),
        ))
        .expect("request");
    let v = body_json(send(&router, create).await).await;
    assert_eq!(v["janus"], "success", "{v}");
    assert!(v["data"]["id"].as_u64().is_some_and(|id| id > 0), "{v}");
    for path in ["/", "/admin", "/metrics", "/janusx", "/janus/1/2/3"] {
        let r = send(&router, get(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn turn_credentials_route_on_both_public_routers() {
    let (app, dir) = app_with(|c| {
        c.token_auth = true;
        c.turn_secret = Some("turn-secret".to_string());
    });
    for router in [ws_app(app.clone()), http_app(app)] {
        let r = send(&router, get("/turn-credentials")).await;
        // routed to the credentials handler: refused without a token, with CORS
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(body_json(r).await["error"], "unauthorized");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn ws_router_wants_an_upgrade() {
    let (app, dir) = app();
    let r = send(&ws_app(app), get("/")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = body_json(r).await;
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("speaks WebSocket")),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_router_grants_no_cors() {
    let (app, dir) = app();
    let router = admin_app(app);
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/admin")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header("access-control-request-private-network", "true")
        .body(Body::empty())
        .expect("request");
    let r = send(&router, preflight).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "POST");
    assert!(
        !r.headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "{:?}",
        r.headers()
    );
    assert!(
        !r.headers()
            .contains_key("access-control-allow-private-network")
    );
    // an Admin API request is answered by the core, without CORS either
    let ping = Request::post("/admin")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(
            json!({"janus": "ping", "transaction": "p1", "admin_secret": ADMIN_SECRET}).to_string(),
        ))
        .expect("request");
    let r = send(&router, ping).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        !r.headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    let v = body_json(r).await;
    assert_eq!(v["janus"], "pong", "{v}");
    assert_eq!(v["transaction"], "p1");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_router_serves_metrics_and_the_test_page() {
    let (app, dir) = app();
    let router = admin_app(app);
    let r = send(&router, get("/metrics")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain")),
    );
    assert!(body_text(r).await.contains("callrelay_gateway_sessions "));
    for path in ["/test", "/test/client.js"] {
        let r = send(&router, get(path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = send(&router, get("/favicon.ico")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // /test/session only mints on POST
    let r = send(&router, get("/test/session")).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // no Janus transport on the admin listener
    let r = send(&router, get("/janus/info")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let _ = std::fs::remove_dir_all(dir);
}
