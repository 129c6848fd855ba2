//! The TURN check: allocate and echo through the relay with the webrtc-rs `turn` client.

use super::check_stun::{stun_binding, udp_socket_for};
use super::cli::Settings;
use super::net::{IceUri, mattermost_id, parse_ice_uri, resolve};
use super::report::{Check, ms};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use webrtc_util::Conn as _;

/// TURN REST credentials exactly as Mattermost mints them (model/webrtc.go):
/// `<expiry>:<TurnUsername>`, base64(HMAC-SHA1(TurnSharedKey bytes, username)).
pub(crate) fn mattermost_turn_credentials(
    turn_username: &str,
    shared_key: &str,
    now_unix: u64,
    utc_offset: i32,
) -> (String, String) {
    let expiry = shared_ice::auth::mattermost_expiry(now_unix, utc_offset);
    rest_credentials(expiry, turn_username, shared_key)
}

/// TURN REST credentials as Mattermost and its Calls plugin mint them: username
/// `"<expiry>:<user>"`, password `base64(HMAC-SHA1(secret, username))`. Written here
/// rather than taken from shared-ice, so doctor checks the turn-server against the
/// formula and not against the server's own code.
pub(super) fn rest_credentials(expiry: u64, user: &str, secret: &str) -> (String, String) {
    let username = format!("{expiry}:{user}");
    #[expect(
        clippy::expect_used,
        reason = "infallible: HMAC accepts keys of any length"
    )]
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

pub(super) fn local_utc_offset() -> i32 {
    // `date +%z` → "+0100"; no time-zone database in the binary for this one value
    let out = std::process::Command::new("date").arg("+%z").output();
    let Ok(out) = out else { return 0 };
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.len() != 5 {
        return 0;
    }
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let h: i32 = s[1..3].parse().unwrap_or(0);
    let m: i32 = s[3..5].parse().unwrap_or(0);
    sign * (h * 3600 + m * 60)
}

/// Who minted the credentials of a TURN check (the fix texts differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CredSource {
    /// Mattermost 4.0-5.5: TurnUsername + TurnSharedKey.
    Webrtc,
    /// The Calls plugin: TURN Static Auth Secret + the Mattermost username.
    Calls,
    /// Fixed username/credential of a Calls ICE servers entry.
    Static,
}

fn turn_error_fix(e: &str, u: &IceUri, username: &str, src: CredSource) -> String {
    if e.contains("401") || e.contains("441") {
        match src {
            CredSource::Webrtc => format!(
                "the turn-server rejected the credentials Mattermost would hand out (user {username}): TURN Shared Key must equal one of the turn-server's auth_secret values (and the gateway's turn_secret); if they match, the clocks differ by more than a day (timedatectl)"
            ),
            CredSource::Calls => format!(
                "the turn-server rejected the credentials the Calls plugin would mint (user {username}): TURN Static Auth Secret must equal one of the turn-server's auth_secret values; if they match, the clocks of the Mattermost server and the turn-server differ by more than TURN Credentials Expiration (timedatectl)"
            ),
            CredSource::Static => format!(
                "the turn-server rejected this entry's fixed username {username} and credential: remove both from the entry so the plugin mints them from TURN Static Auth Secret, or give the turn-server that user"
            ),
        }
    } else if e.contains("437") || e.contains("486") || e.contains("508") {
        match src {
            CredSource::Webrtc => "the turn-server refused the allocation (quota or capacity): see callrelay_turn_quota_rejections_total; set user_quota = 0 for Mattermost (all users share one TURN username)".to_string(),
            _ => "the turn-server refused the allocation (quota or capacity): see callrelay_turn_quota_rejections_total; user_quota counts per Mattermost user (not below 30), total_quota and relay_ports bound the server".to_string(),
        }
    } else {
        let proto = if u.tcp { "TCP" } else { "UDP" };
        format!(
            "no TURN answer from {}:{} over {}: check that the turn-server runs and listens there ({}), and that {proto} {} is open in the firewall and the cloud security group",
            u.host,
            u.port,
            u.transport(),
            if u.tls { "tls_listen" } else { "listen" },
            u.port
        )
    }
}

pub(super) async fn check_turn(uri: &str, s: &Settings, utc_offset: i32, t: Duration) -> Check {
    let c = Check::new("TURN URI", uri);
    if uri.starts_with("turns:") {
        return c.fail(
            "turns: URI",
            "Mattermost rejects turns: URIs; use turn:host:3478 (and turn:host:3478?transport=tcp)",
        );
    }
    let u = match parse_ice_uri(uri, "turn") {
        Ok(u) => u,
        Err(e) => {
            return c.unparsable(
                e,
                "turn:rtc.example.com:3478 or turn:rtc.example.com:3478?transport=tcp",
            );
        }
    };
    let (Some(user), Some(key)) = (&s.turn_username, &s.turn_shared_key) else {
        return c.fail(
            "TURN Username or TURN Shared Key not set",
            "Mattermost requires both with a TURN URI: TURN Username (any label) and TURN Shared Key = the turn-server's auth_secret",
        );
    };
    let now = unix_now();
    let (username, password) = mattermost_turn_credentials(user, key, now, utc_offset);
    check_turn_with(c, &u, username, password, CredSource::Webrtc, None, t).await
}

pub(super) use callrelay_service::time::unix_now;

/// Allocates on the TURN server of `u` with `username`/`password` and relays data both
/// ways. `tls` is needed for `turns:` URIs.
pub(super) async fn check_turn_with(
    c: Check,
    u: &IceUri,
    username: String,
    password: String,
    src: CredSource,
    tls: Option<&TlsConnector>,
    t: Duration,
) -> Check {
    let server = match resolve(&u.host, u.port, t).await {
        Ok(a) => a,
        Err(e) => return c.fail(e, "check the host name in the TURN URI"),
    };
    let mut c = c;
    c.m("username", username.clone());
    let conn: Arc<dyn webrtc_util::Conn + Send + Sync> = if u.tcp {
        let t0 = Instant::now();
        let s = match tokio::time::timeout(t, TcpStream::connect(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return c.fail(
                    format!("TCP connect to {server}: {e}"),
                    turn_error_fix(&e.to_string(), u, &username, src),
                );
            }
            Err(_) => {
                return c.fail(
                    format!("TCP connect to {server} timed out"),
                    turn_error_fix("timeout", u, &username, src),
                );
            }
        };
        c.m("tcp_connect_ms", ms(t0.elapsed()));
        let local = s.local_addr().unwrap_or(server);
        let stream: Box<dyn super::turn_tcp::Stream> = if u.tls {
            let Some(tls) = tls else {
                return c.fail("turns: URI", "internal error: no TLS configuration");
            };
            let name = match rustls_pki_types::ServerName::try_from(u.host.clone()) {
                Ok(n) => n,
                Err(e) => {
                    return c.fail(
                        format!("bad host name {}: {e}", u.host),
                        "fix the host name in the TURN URI",
                    );
                }
            };
            let t1 = Instant::now();
            match tokio::time::timeout(t, tls.connect(name, s)).await {
                Ok(Ok(s)) => {
                    c.m("tls_handshake_ms", ms(t1.elapsed()));
                    Box::new(s)
                }
                Ok(Err(e)) => {
                    let e = e.to_string();
                    let fix = if e.contains("corrupt message") || e.contains("InvalidContentType") {
                        format!(
                            "the port {} does not speak TLS: it must be one of the turn-server's tls_listen addresses (with cert and key), or use turn: instead of turns:",
                            u.port
                        )
                    } else {
                        format!(
                            "the turn-server's certificate is not valid for {} ({e}); browsers give up on that TURN URL without a word: set the turn-server's cert/key to a certificate from a public CA for this name (docs/mattermost.md §3)",
                            u.host
                        )
                    };
                    return c.fail(format!("TLS handshake with {server}: {e}"), fix);
                }
                Err(_) => {
                    return c.fail(
                        format!("TLS handshake with {server} timed out after {} s", t.as_secs()),
                        format!("the port {} does not speak TLS: it must be one of the turn-server's tls_listen addresses (with cert and key)", u.port),
                    );
                }
            }
        } else {
            Box::new(s)
        };
        Arc::new(super::turn_tcp::TcpConn::new(stream, local, server))
    } else {
        match udp_socket_for(server).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                return c.fail(
                    format!("UDP socket: {e}"),
                    "doctor could not open a UDP socket",
                );
            }
        }
    };
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.clone(),
        password,
        realm: String::new(),
        software: "callrelay-gateway-doctor".into(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    };
    let client = match turn::client::Client::new(cfg).await {
        Ok(c) => c,
        Err(e) => return c.fail(format!("TURN client: {e}"), "internal error"),
    };
    let result = turn_allocate_and_echo(&client, u, server, src, t, &mut c).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    match result {
        Ok(detail) => c.pass(detail),
        Err((detail, fix)) => c.fail(detail, fix),
    }
}

async fn turn_allocate_and_echo(
    client: &turn::client::Client,
    u: &IceUri,
    server: SocketAddr,
    src: CredSource,
    t: Duration,
    c: &mut Check,
) -> Result<String, (String, String)> {
    let username = c.measured["username"].as_str().unwrap_or("").to_string();
    let transport = u.transport();
    client
        .listen()
        .await
        .map_err(|e| (format!("TURN client: {e}"), "internal error".to_string()))?;
    let t0 = Instant::now();
    let relay = match tokio::time::timeout(t, client.allocate()).await {
        Err(_) => {
            let d = format!(
                "Allocate over {transport} to {server}: no answer within {} s",
                t.as_secs()
            );
            return Err((d, turn_error_fix("timeout", u, &username, src)));
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            let d = format!("Allocate over {transport} to {server}: {e}");
            return Err((d, turn_error_fix(&e, u, &username, src)));
        }
        Ok(Ok(r)) => r,
    };
    let alloc_ms = ms(t0.elapsed());
    let relay_addr = relay
        .local_addr()
        .map_err(|e| (e.to_string(), "internal error".into()))?;
    c.m("allocate_ms", alloc_ms);
    c.m("relay_address", relay_addr.to_string());
    let mut note = String::new();
    if let std::net::IpAddr::V4(a) = relay_addr.ip()
        && (a.is_private() || a.is_loopback())
        && !server.ip().is_loopback()
        && !is_private_ip(server.ip())
    {
        c.warnings.push(format!(
            "the relay address {relay_addr} is private while the server is public: browsers elsewhere cannot reach it; set relay_ip (and external_ip on 1:1-NAT clouds)"
        ));
    }
    let alloc_text =
        format!("Allocate over {transport} ({username}) ok in {alloc_ms} ms, relay {relay_addr}");
    // Echo through the relay: a UDP socket of our own plays the peer.
    let peer = udp_socket_for(relay_addr).await.map_err(|e| {
        (
            format!("{alloc_text}; peer socket: {e}"),
            "internal error".to_string(),
        )
    })?;
    // The peer's address as the TURN server sees it (through NAT, if any): a Binding
    // request from the peer socket to the same host and port over UDP.
    let peer_addr = match stun_binding(&peer, server, t).await {
        Ok((a, _)) => a,
        Err(_) => {
            // no STUN over UDP there (TCP-only path): use the local address
            let mut a = peer
                .local_addr()
                .map_err(|e| (e.to_string(), String::new()))?;
            if a.ip().is_unspecified() {
                a.set_ip(if server.ip().is_loopback() {
                    server.ip()
                } else {
                    a.ip()
                });
            }
            a
        }
    };
    c.m("peer_address", peer_addr.to_string());
    let mut rtts = Vec::new();
    let mut buf = [0u8; 1500];
    for i in 0..3u8 {
        let payload = format!("callrelay-doctor {i} {}", mattermost_id());
        let t1 = Instant::now();
        let sent = tokio::time::timeout(t, relay.send_to(payload.as_bytes(), peer_addr)).await;
        match sent {
            Err(_) => {
                return Err((
                    format!("{alloc_text}; CreatePermission/Send for {peer_addr}: no answer within {} s", t.as_secs()),
                    "the allocation works but the turn-server did not answer CreatePermission; see its log".into(),
                ));
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                let fix = if e.contains("403") {
                    format!(
                        "the turn-server refused a permission for doctor's own address {peer_addr} (403 Forbidden): its peer policy denies that address class (loopback/private/link-local). That is the safe default; the relay itself works. To test the data path, run doctor from a host with a public address, or (test setups only) allow the address with --allow-peer {}/32",
                        peer_addr.ip()
                    )
                } else {
                    "see the turn-server's log".to_string()
                };
                return Err((
                    format!("{alloc_text}; CreatePermission for {peer_addr}: {e}"),
                    fix,
                ));
            }
            Ok(Ok(_)) => {}
        }
        // peer → wait for the relayed packet (from the relay address), answer it
        let got = tokio::time::timeout(t, async {
            loop {
                let (n, from) = peer.recv_from(&mut buf).await?;
                if &buf[..n] == payload.as_bytes() {
                    return Ok::<_, std::io::Error>(from);
                }
            }
        })
        .await;
        let Ok(Ok(from)) = got else {
            return Err((
                format!("{alloc_text}; data sent through the relay to {peer_addr} never arrived"),
                format!(
                    "the relay did not deliver to {peer_addr}: the turn-server's outgoing UDP from the relay ports is blocked, or its peer policy drops {} silently; check callrelay_turn_denied_peers_total and the firewall",
                    peer_addr.ip()
                ),
            ));
        };
        let echo = format!("{payload} echo");
        let _ = peer.send_to(echo.as_bytes(), from).await;
        let back = tokio::time::timeout(t, async {
            loop {
                let (n, _) = relay.recv_from(&mut buf).await?;
                if &buf[..n] == echo.as_bytes() {
                    return Ok::<_, webrtc_util::Error>(());
                }
            }
        })
        .await;
        if !matches!(back, Ok(Ok(()))) {
            return Err((
                format!(
                    "{alloc_text}; data reached the peer from {from} but the reply never came back through the relay"
                ),
                format!(
                    "inbound UDP to the relay port {} is blocked: open the relay port range (relay_ports, default 49152-65535) in the firewall and the cloud security group",
                    relay_addr.port()
                ),
            ));
        }
        rtts.push(t1.elapsed());
        if i == 0 {
            note = format!(
                " (first round trip incl. CreatePermission {} ms)",
                ms(t1.elapsed())
            );
        }
    }
    let _ = relay.close().await;
    let best = rtts.iter().skip(1).min().copied().unwrap_or_default();
    c.m("rtt_ms", ms(best));
    Ok(format!(
        "{alloc_text}; data relayed both ways to peer {peer_addr}, RTT {} ms{note}",
        ms(best)
    ))
}

fn is_private_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local(),
        std::net::IpAddr::V6(a) => a.is_loopback(),
    }
}
