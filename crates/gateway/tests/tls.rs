//! TLS on every listener (wss, https) with rustls, and certificate reload.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn connector() -> TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for f in ["cert1.pem", "cert2.pem"] {
        roots
            .add(CertificateDer::from_pem_file(fixture(f)).unwrap())
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls(addr: std::net::SocketAddr) -> TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector().connect(name, tcp).await.unwrap()
}

fn presented_cn(s: &TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

/// The DER bytes of a fixture certificate.
fn fixture_der(name: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_file(fixture(name))
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Sends `v` on the WebSocket and returns the next text message as JSON; a socket that
/// closes before answering fails the test (within 15 s).
async fn ws_request<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, v: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
                Some(_) => {}
                None => panic!("websocket closed before replying to {v}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), read)
        .await
        .expect("no websocket reply within 15 s")
}

async fn https_post(addr: std::net::SocketAddr, path: &str, body: &Value) -> (Vec<u8>, Value) {
    let mut s = tls(addr).await;
    let cert = presented_cn(&s);
    let b = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let json_start = body.find('{').unwrap();
    let json_end = body.rfind('}').unwrap();
    (
        cert,
        serde_json::from_str(&body[json_start..=json_end]).unwrap(),
    )
}

#[tokio::test]
async fn every_listener_speaks_tls_and_sighup_style_reload_swaps_the_certificate() {
    let dir = temp_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("cert1.pem"), &cert).unwrap();
    std::fs::copy(fixture("key1.pem"), &key).unwrap();
    let mut cfg = base_config(&dir);
    cfg.cert = Some(cert.clone());
    cfg.key = Some(key.clone());
    let gw = Gw::start(cfg).await;
    let der1 = fixture_der("cert1.pem");

    // https admin + Mattermost add_token
    let (c, r) = https_post(gw.admin, "/admin", &json!({"janus": "add_token", "token": "tlstoken", "transaction": "t", "admin_secret": ADMIN_SECRET})).await;
    assert_eq!(c, der1);
    assert_eq!(r["janus"], "success", "{r}");
    // https Janus REST
    let (_, r) = https_post(
        gw.http,
        "/janus",
        &json!({"janus": "create", "token": "tlstoken", "transaction": "c"}),
    )
    .await;
    assert_eq!(r["janus"], "success", "{r}");
    // wss with janus-protocol
    let stream = tls(gw.ws).await;
    let mut req = format!("wss://127.0.0.1:{}/", gw.ws.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "janus-protocol".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "janus-protocol"
    );
    let reply = ws_request(
        &mut ws,
        json!({"janus": "create", "token": "tlstoken", "transaction": "w"}),
    )
    .await;
    assert_eq!(reply["janus"], "success");
    // plain HTTP on a public TLS port is refused (no JSON leaks in clear text); the
    // admin listener serves it to loopback peers only (test_page_over_an_ssh_tunnel_…)
    for addr in [gw.ws, gw.http] {
        let (st, _, _) = {
            let f = http(addr, "GET", "/turn-credentials", None, &[]);
            tokio::time::timeout(std::time::Duration::from_secs(15), f)
                .await
                .unwrap()
        };
        assert_ne!(st, 200);
    }

    // swap the files and reload: new connections get the new certificate, the open
    // WebSocket keeps working
    std::fs::copy(fixture("cert2.pem"), &cert).unwrap();
    std::fs::copy(fixture("key2.pem"), &key).unwrap();
    gw.reload.notify_one();
    let der2 = fixture_der("cert2.pem");
    let mut swapped = false;
    for _ in 0..50 {
        let (c, _) = https_post(
            gw.admin,
            "/admin",
            &json!({"janus": "ping", "transaction": "p"}),
        )
        .await;
        if c == der2 {
            swapped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(swapped, "certificate was not reloaded");
    let reply = ws_request(&mut ws, json!({"janus": "ping", "transaction": "p2"})).await;
    assert_eq!(reply["janus"], "pong");
    gw.stop().await;
}

#[tokio::test]
async fn admin_tls_false_keeps_the_admin_listener_plain_while_wss_stays_tls() {
    let dir = temp_dir();
    let mut cfg = base_config(&dir);
    cfg.cert = Some(fixture("cert1.pem"));
    cfg.key = Some(fixture("key1.pem"));
    cfg.admin_tls = Some(false);
    let gw = Gw::start(cfg).await;
    // plain HTTP on the admin listener
    let r = post_json(
        gw.admin,
        "/admin",
        &json!({"janus": "add_token", "token": "plain", "transaction": "t", "admin_secret": ADMIN_SECRET}),
    )
    .await;
    assert_eq!(r["janus"], "success", "{r}");
    // TLS on the WebSocket listener: a plain HTTP request gets no HTTP answer
    let (status, _, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http(gw.ws, "GET", "/turn-credentials?token=plain", None, &[]),
    )
    .await
    .unwrap();
    assert_eq!(status, 0, "the WebSocket listener answered plain HTTP");
    let mut s = tls(gw.ws).await;
    s.write_all(
        b"GET /turn-credentials?token=plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    gw.stop().await;
}

/// The certificate the admin listener of `bin` presents to a new connection, after a
/// successful `ping` over that connection.
async fn admin_cert(admin: std::net::SocketAddr) -> Vec<u8> {
    let (cert, r) = https_post(
        admin,
        "/admin",
        &json!({"janus": "ping", "transaction": "p"}),
    )
    .await;
    assert_eq!(r["janus"], "pong", "{r}");
    cert
}

#[tokio::test]
async fn sighup_with_a_broken_certificate_keeps_the_old_one() {
    let dir = temp_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("cert1.pem"), &cert).unwrap();
    std::fs::copy(fixture("key1.pem"), &key).unwrap();
    let state = dir.join("state");
    let mut bin = Bin::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--admin-secret",
        ADMIN_SECRET,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let (der1, der2) = (fixture_der("cert1.pem"), fixture_der("cert2.pem"));
    assert_eq!(admin_cert(bin.admin).await, der1);

    // each broken state of the files: the reload fails, is logged, and new connections
    // on every listener still get the old certificate
    let broken: [(&str, &[u8], &[u8]); 4] = [
        ("garbage certificate", b"not a certificate", b""),
        ("empty certificate", b"", b""),
        (
            "garbage key",
            b"",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        ("missing files", b"", b""),
    ];
    for (what, c, k) in broken {
        match what {
            "missing files" => {
                std::fs::remove_file(&cert).unwrap();
                std::fs::remove_file(&key).unwrap();
            }
            "garbage key" => {
                std::fs::copy(fixture("cert2.pem"), &cert).unwrap();
                std::fs::write(&key, k).unwrap();
            }
            _ => {
                std::fs::write(&cert, c).unwrap();
                std::fs::copy(fixture("key2.pem"), &key).unwrap();
            }
        }
        let mark = bin.log_len();
        bin.signal("HUP");
        let line = bin.wait_log(mark, &["TLS reload failed"]);
        assert!(line.contains("ERROR"), "{what}: {line}");
        assert!(bin.log_len() > mark);
        for addr in [bin.ws, bin.http] {
            let s = tls(addr).await;
            assert_eq!(presented_cn(&s), der1, "{what}: {addr}");
        }
        assert_eq!(admin_cert(bin.admin).await, der1, "{what}");
    }

    // fixed files: the next SIGHUP swaps the certificate
    std::fs::copy(fixture("cert2.pem"), &cert).unwrap();
    std::fs::copy(fixture("key2.pem"), &key).unwrap();
    let mark = bin.log_len();
    bin.signal("HUP");
    bin.wait_log(mark, &["TLS certificate reloaded"]);
    assert_eq!(admin_cert(bin.admin).await, der2);
    assert_eq!(presented_cn(&tls(bin.ws).await), der2);

    bin.signal("TERM");
    // blocking waits are fine here: the server is another process
    let st = bin.wait_exit(15);
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[tokio::test]
async fn certificate_expiry_is_exported_and_follows_a_reload() {
    const M: &str = "callrelay_gateway_tls_cert_not_after_seconds";
    let dir = temp_dir();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("cert1.pem"), &cert).unwrap();
    std::fs::copy(fixture("key1.pem"), &key).unwrap();
    let mut cfg = base_config(&dir);
    cfg.cert = Some(cert.clone());
    cfg.key = Some(key.clone());
    cfg.admin_tls = Some(false); // plain /metrics for the test
    let gw = Gw::start(cfg).await;
    // cert1.pem: notAfter=Nov  1 15:30:25 2126 GMT (a GeneralizedTime)
    assert_eq!(metric_at(gw.admin, M).await, 4_949_220_625.0);
    // renewed (what the ACME hook does): cert3.pem, notAfter=Dec  1 20:50:11 2036 GMT
    std::fs::copy(fixture("cert3.pem"), &cert).unwrap();
    std::fs::copy(fixture("key3.pem"), &key).unwrap();
    gw.reload.notify_one();
    wait_metric(gw.admin, M, 2_111_777_411.0).await;
    gw.stop().await;

    // without TLS there is no such series (an alert on it cannot fire on 0)
    let dir = temp_dir();
    let gw = Gw::start(base_config(&dir)).await;
    let (_, _, text) = http_get(gw.admin, "/metrics").await;
    assert!(!text.contains(M), "{text}");
    gw.stop().await;
}

/// Issue 13 §4: the admin listener speaks TLS for the Mattermost server, and through an
/// ssh tunnel (`ssh -L 7089:127.0.0.1:7089`) the operator's browser opens
/// `http://127.0.0.1:7089/test` — plain HTTP, served to loopback peers only, since no
/// certificate names 127.0.0.1. The page then calls over the public `wss://` listener
/// named by `test_page_ws_url`. TLS keeps working on the same port.
#[tokio::test]
async fn test_page_over_an_ssh_tunnel_is_plain_http_on_the_tls_admin_listener() {
    let dir = temp_dir();
    let state = dir.join("state");
    let mut bin = Bin::start(&[
        "--cert",
        fixture("cert1.pem").to_str().unwrap(),
        "--key",
        fixture("key1.pem").to_str().unwrap(),
        "--admin-secret",
        ADMIN_SECRET,
        "--state-dir",
        state.to_str().unwrap(),
        "--test-page-ws-url",
        "wss://rtc.example.com:8189",
    ]);
    let port = bin.admin.port();
    let host = format!("127.0.0.1:{port}");
    let (st, _, page) = http(bin.admin, "GET", "/test", None, &[("Host", &host)]).await;
    assert_eq!(st, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    // the tunnel's peer is loopback and the browser named 127.0.0.1: no secret needed
    let (st, _, body) = http(
        bin.admin,
        "POST",
        "/test/session",
        None,
        &[("Host", &host), ("X-Callrelay-Test-Page", "1")],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("test-"));
    assert_eq!(v["ws_url"], "wss://rtc.example.com:8189");
    // the Admin API still wants its secret in plain text too
    let (st, _, body) = http(
        bin.admin,
        "POST",
        "/admin",
        Some(&json!({"janus": "add_token", "token": "x", "transaction": "t"}).to_string()),
        &[("Host", &host)],
    )
    .await;
    assert_eq!(st, 200);
    assert_ne!(
        serde_json::from_str::<Value>(&body).unwrap()["janus"],
        "success"
    );
    // and the same port still speaks TLS (the Mattermost server's Admin URL)
    assert_eq!(admin_cert(bin.admin).await, fixture_der("cert1.pem"));
    // the public listeners stay TLS-only, even from loopback
    let (st, _, _) = http(bin.ws, "GET", "/turn-credentials", None, &[]).await;
    assert_eq!(st, 0, "plain HTTP answered on the wss listener");
    bin.signal("TERM");
    assert!(bin.wait_exit(15).success());
}
