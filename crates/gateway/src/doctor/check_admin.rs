//! The Admin URL check (and the Admin API calls the WebSocket check needs).

use super::cli::Settings;
use super::net::{ConnErr, Url, connect, http_post, mattermost_id, parse_url, tls_fix};
use super::report::{Check, ms};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

pub(super) struct AdminState {
    pub(super) url: Url,
    pub(super) secret: String,
    pub(super) token: String,
}

pub(super) async fn admin_call(
    st: &AdminState,
    tls: &TlsConnector,
    verb: &str,
    t: Duration,
) -> Result<(u16, String, Duration), String> {
    let body = json!({
        "admin_secret": st.secret,
        "janus": verb,
        "token": st.token,
        "transaction": mattermost_id(),
    })
    .to_string();
    let mut c = connect(&st.url, tls, t).await.map_err(|e| match e {
        ConnErr::Tcp(m) | ConnErr::Tls(m) => m,
    })?;
    let t0 = Instant::now();
    let (status, body) = http_post(&mut c.io, &st.url, &body, t).await?;
    Ok((status, body, t0.elapsed()))
}

pub(super) async fn check_admin(
    s: &Settings,
    tls: &TlsConnector,
    t: Duration,
) -> (Check, Option<AdminState>) {
    let target = s.admin_url.clone().unwrap_or_default();
    let c = Check::new("Admin URL", &target);
    let Some(raw) = &s.admin_url else {
        return (
            c.fail(
                "not set",
                "set Gateway Admin URL (GatewayAdminUrl), e.g. https://rtc.example.com:7089/admin",
            ),
            None,
        );
    };
    let url = match parse_url(raw) {
        Ok(u) if raw.starts_with("http://") || raw.starts_with("https://") => u,
        Ok(_) => {
            return (
                c.fail(
                    "not an http(s) URL",
                    "Mattermost requires http:// or https:// here, e.g. https://rtc.example.com:7089/admin",
                ),
                None,
            );
        }
        Err(e) => {
            return (c.unparsable(e, "https://host:7089/admin"), None);
        }
    };
    let Some(secret) = s.admin_secret.clone() else {
        return (
            c.fail(
                "Gateway Admin Secret not set",
                "set Gateway Admin Secret (GatewayAdminSecret) = the gateway's admin_secret",
            ),
            None,
        );
    };
    let mut c = c;
    if url.path != "/admin" && !url.path.starts_with("/admin/") {
        c.warnings.push(format!(
            "the path is {:?}: Mattermost POSTs to the URL verbatim and the Admin API is at /admin",
            url.path
        ));
    }
    // TCP + TLS on their own, to tell the two apart
    let conn = match connect(&url, tls, t).await {
        Ok(x) => x,
        Err(ConnErr::Tcp(m)) => {
            let fix = if m.contains("refused") {
                format!(
                    "nothing listens on {}:{}: check the port, that the gateway runs, and that admin_listen binds an address the Mattermost server reaches (the default 127.0.0.1:7088 is loopback only)",
                    url.host, url.port
                )
            } else if m.contains("timed out") {
                format!(
                    "no answer from {}:{}: a firewall drops the connection; allow TCP {} from the Mattermost server's address (docs/mattermost.md §6)",
                    url.host, url.port, url.port
                )
            } else {
                "check the host name in Gateway Admin URL".to_string()
            };
            return (c.fail(m, fix), None);
        }
        Err(ConnErr::Tls(m)) => {
            let fix = tls_fix(&m, &url.host, false);
            return (c.fail(m, fix), None);
        }
    };
    c.m("address", conn.addr.to_string());
    c.m("tcp_ms", ms(conn.tcp));
    let mut parts = vec![format!("TCP {} {} ms", conn.addr, ms(conn.tcp))];
    if let Some((d, v)) = &conn.tls {
        c.m("tls_ms", ms(*d));
        parts.push(format!(
            "{v} certificate valid for {} ({} ms)",
            url.host,
            ms(*d)
        ));
    } else if !is_private_host(&url.host) {
        c.warnings.push(
            "plain http:// to a public address: the admin secret crosses the network in clear text; use https:// or keep the admin port on loopback/a private network".into(),
        );
    }
    drop(conn);
    let st = AdminState {
        url,
        secret,
        token: STANDARD.encode(mattermost_id()),
    };
    match admin_call(&st, tls, "add_token", t).await {
        Err(m) => {
            let fix = if m.contains("not an HTTP response") {
                "the port does not speak HTTP: if the gateway's admin listener uses TLS (admin_tls), the URL must be https://".to_string()
            } else {
                "the gateway accepted the connection but did not answer the request: check that this port is the gateway's admin_listen".to_string()
            };
            (
                c.fail(format!("{}; add_token: {m}", parts.join(", ")), fix),
                None,
            )
        }
        Ok((status, body, d)) => {
            let v: Option<Value> = serde_json::from_str(&body).ok();
            let janus = v.as_ref().and_then(|v| v["janus"].as_str()).unwrap_or("");
            if status < 300 && janus == "success" {
                c.m("add_token_ms", ms(d));
                parts.push(format!("add_token → success ({} ms)", ms(d)));
                (c.pass(parts.join(", ")), Some(st))
            } else {
                let code = v
                    .as_ref()
                    .and_then(|v| v["error"]["code"].as_u64())
                    .unwrap_or(0);
                let reason = v
                    .as_ref()
                    .and_then(|v| v["error"]["reason"].as_str())
                    .unwrap_or("")
                    .to_string();
                let detail = format!(
                    "{}; add_token → HTTP {status}{}",
                    parts.join(", "),
                    if code > 0 {
                        format!(", Janus error {code} {reason}")
                    } else if v.is_none() {
                        format!(", not JSON: {:.80}", body.trim())
                    } else {
                        format!(", reply {janus:?}")
                    }
                );
                let fix = if code == 403 {
                    "the Gateway Admin Secret is wrong: it must equal the gateway's admin_secret (then `systemctl restart callrelay-gateway` if you changed the gateway side)".to_string()
                } else if status == 404 {
                    "wrong path: Mattermost POSTs to the URL verbatim; it must end in /admin"
                        .to_string()
                } else if v.is_none() {
                    "the URL answers but not as a Janus Admin API (not JSON): is another web server on this port, or a proxy in between? Mattermost fails on a non-JSON reply".to_string()
                } else {
                    "the gateway refused add_token; see its log (journalctl -u callrelay-gateway)"
                        .to_string()
                };
                (c.fail(detail, fix), None)
            }
        }
    }
}

fn is_private_host(h: &str) -> bool {
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback() || a.is_private() || a.is_link_local(),
        Ok(std::net::IpAddr::V6(a)) => a.is_loopback(),
        Err(_) => h == "localhost",
    }
}
