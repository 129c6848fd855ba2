//! The STUN check: Binding requests with the webrtc-rs `stun` codec.

use super::net::{parse_ice_uri, resolve};
use super::report::{Check, ms};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// One Binding transaction with retransmissions (RFC 8489 §6.2.1: 500 ms doubling) within `t`.
pub(super) async fn stun_binding(
    sock: &UdpSocket,
    server: SocketAddr,
    t: Duration,
) -> Result<(SocketAddr, Duration), String> {
    use stun::agent::TransactionId;
    use stun::message::{BINDING_REQUEST, Getter as _, Message};
    use stun::xoraddr::XorMappedAddress;
    let mut req = Message::new();
    req.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + t;
    let mut rto = Duration::from_millis(500);
    let t0 = Instant::now();
    let mut buf = [0u8; 1500];
    let mut last_err = String::from("no answer");
    while Instant::now() < deadline {
        sock.send_to(&req.raw, server)
            .await
            .map_err(|e| format!("send to {server}: {e}"))?;
        let wait = rto.min(deadline.saturating_duration_since(Instant::now()));
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    // ICMP port unreachable shows up as ECONNREFUSED on Linux
                    last_err = format!("{e}");
                    break;
                }
                Ok(Ok((n, from))) => {
                    let mut m = Message::new();
                    if from != server || m.unmarshal_binary(&buf[..n]).is_err() {
                        continue;
                    }
                    if m.transaction_id != req.transaction_id {
                        continue;
                    }
                    let mut x = XorMappedAddress::default();
                    x.get_from(&m).map_err(|e| {
                        format!("answer without XOR-MAPPED-ADDRESS ({} {e})", m.typ)
                    })?;
                    return Ok((SocketAddr::new(x.ip, x.port), t0.elapsed()));
                }
            }
        }
        rto *= 2;
    }
    Err(format!("{last_err} within {} s", t.as_secs()))
}

pub(super) async fn udp_socket_for(server: SocketAddr) -> std::io::Result<UdpSocket> {
    if server.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0").await
    } else {
        UdpSocket::bind("[::]:0").await
    }
}

pub(super) async fn check_stun(uri: &str, t: Duration) -> Check {
    let c = Check::new("STUN URI", uri);
    let u = match parse_ice_uri(uri, "stun") {
        Ok(u) => u,
        Err(e) => return c.unparsable(e, "stun:rtc.example.com:3478"),
    };
    let server = match resolve(&u.host, u.port, t).await {
        Ok(a) => a,
        Err(e) => return c.fail(e, "check the host name in STUN URI"),
    };
    let sock = match udp_socket_for(server).await {
        Ok(s) => s,
        Err(e) => {
            return c.fail(
                format!("UDP socket: {e}"),
                "doctor could not open a UDP socket",
            );
        }
    };
    let mut c = c;
    match stun_binding(&sock, server, t).await {
        Ok((mapped, d)) => {
            c.m("server", server.to_string());
            c.m("mapped_address", mapped.to_string());
            c.m("rtt_ms", ms(d));
            c.pass(format!(
                "Binding to {server} over UDP answered in {} ms, XOR-MAPPED-ADDRESS {mapped} (this host as the server sees it)",
                ms(d)
            ))
        }
        Err(e) => c.fail(
            format!("Binding to {server} over UDP: {e}"),
            format!(
                "no STUN answer: check that the turn-server runs and listens on UDP {} (listen), and that UDP {} is open in the firewall and the cloud security group",
                u.port, u.port
            ),
        ),
    }
}
