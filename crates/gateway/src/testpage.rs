//! The test call page (`GET /test` on the admin listener): an admin opens it in two tabs
//! or on two devices and calls between them through the gateway and the TURN server.
//! The page's JavaScript is our own minimal Janus API client (no janus.js).
//!
//! Security: the page needs a token on a token-auth gateway. `POST /test/session` mints a
//! 10-minute token that only the videocall plugin accepts — for requests from loopback
//! (an admin on the host or behind `ssh -L`), or with the admin secret in
//! `X-Admin-Secret` (the page asks for it and keeps it in memory only).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};

const PAGE: &str = include_str!("testpage/index.html");
const SCRIPT: &str = include_str!("testpage/client.js");

/// Content-Security-Policy of the page: our script only, no inline code, WebSocket to
/// any host (the WebSocket listener is another port or host).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; img-src 'self' data:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /test`
pub async fn page() -> Response {
    with_headers(PAGE, "text/html; charset=utf-8")
}

/// `GET /test/client.js`
pub async fn script() -> Response {
    with_headers(SCRIPT, "text/javascript; charset=utf-8")
}

/// Host part of a `Host` header (`h`, `h:port`, `[v6]:port`).
fn host_only(host: &str) -> &str {
    if let Some(r) = host.strip_prefix('[') {
        return r.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

fn is_loopback_name(host: &str) -> bool {
    let h = host_only(host);
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Headers a reverse proxy adds: with any of them the TCP peer is the proxy, not the
/// client, so a loopback peer proves nothing.
pub const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Who may mint a test token: anyone who presents the admin secret (compared in constant
/// time); without it, only a loopback peer that also addressed the server by a loopback
/// name (a DNS-rebinding page in a local browser uses its own host name and is refused)
/// and whose request did not pass a reverse proxy (`proxied`: one of [`PROXY_HEADERS`]
/// is present; nginx's default `Host $proxy_host` would otherwise make every Internet
/// client look local).
pub fn authorize(
    peer: Option<IpAddr>,
    host: Option<&str>,
    proxied: bool,
    given_secret: Option<&str>,
    admin_secret: Option<&str>,
) -> Result<(), &'static str> {
    use subtle::ConstantTimeEq as _;
    if let Some(g) = given_secret {
        return match admin_secret {
            Some(s) if s.len() == g.len() && bool::from(s.as_bytes().ct_eq(g.as_bytes())) => Ok(()),
            Some(_) => Err("wrong admin secret"),
            None => Err("no admin_secret is configured on the gateway"),
        };
    }
    if proxied {
        return Err("the admin secret is required (request came through a proxy)");
    }
    if peer.is_some_and(|p| p.is_loopback()) && host.is_some_and(is_loopback_name) {
        return Ok(());
    }
    Err("the admin secret is required (request not from loopback)")
}

/// The WebSocket URL the page uses when `test_page_ws_url` is not set: the host the
/// browser used for the page, the WebSocket listener's port, `wss` when it has TLS.
pub fn default_ws_url(host: Option<&str>, tls: bool, ws_port: u16, admin: SocketAddr) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    let h = host.map(host_only).filter(|h| !h.is_empty());
    let h = match h {
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_string(),
        None => match admin.ip() {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        },
    };
    format!("{scheme}://{h}:{ws_port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_or_loopback() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let h = Some("127.0.0.1:7088");
        assert!(authorize(Some(lo), h, false, None, Some("s")).is_ok());
        assert!(authorize(Some(lo), Some("localhost:7088"), false, None, None).is_ok());
        assert!(
            authorize(
                Some("::1".parse().unwrap()),
                Some("[::1]:7088"),
                false,
                None,
                None
            )
            .is_ok()
        );
        // remote without the secret, remote with a wrong one, with the right one
        assert!(authorize(Some(remote), h, false, None, Some("s")).is_err());
        assert!(authorize(Some(remote), h, false, Some("x"), Some("s")).is_err());
        assert!(authorize(Some(remote), h, false, Some("s"), Some("s")).is_ok());
        // a wrong secret is refused even from loopback
        assert!(authorize(Some(lo), h, false, Some("x"), Some("s")).is_err());
        // no admin_secret configured: only loopback works
        assert!(authorize(Some(remote), h, false, Some("s"), None).is_err());
        // DNS rebinding: loopback peer, foreign host name
        assert!(authorize(Some(lo), Some("evil.example:7088"), false, None, Some("s")).is_err());
        assert!(authorize(Some(lo), None, false, None, Some("s")).is_err());
        // behind a reverse proxy the loopback peer is the proxy: the secret is needed
        assert!(authorize(Some(lo), h, true, None, Some("s")).is_err());
        assert!(authorize(Some(lo), h, true, Some("s"), Some("s")).is_ok());
    }

    #[test]
    fn ws_url_defaults_to_the_page_host_and_ws_port() {
        let admin: SocketAddr = "127.0.0.1:7088".parse().unwrap();
        assert_eq!(
            default_ws_url(Some("rtc.example.com:7089"), true, 8189, admin),
            "wss://rtc.example.com:8189"
        );
        assert_eq!(
            default_ws_url(Some("[::1]:7088"), false, 8188, admin),
            "ws://[::1]:8188"
        );
        assert_eq!(
            default_ws_url(None, false, 8188, admin),
            "ws://127.0.0.1:8188"
        );
    }
}
