//! Socket set-up: the listeners every worker binds with `SO_REUSEPORT`, and relay sockets.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::RuntimeError;
use crate::config::Config;

/// A non-blocking UDP socket bound to `addr` (IPv6 sockets are IPv6-only). Listener
/// sockets are shared by the workers with SO_REUSEPORT and get 4 MiB buffers; relay
/// sockets are per allocation and get 1 MiB: room for bursts from the peer (a video
/// keyframe is dozens of datagrams back to back) while the worker serves other sockets.
/// Buffer sizes are limits, not allocations (an idle relay costs nothing); the kernel
/// caps them at net.core.{r,w}mem_max.
fn bind_udp(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_udp(addr, true, 4 << 20)
}

pub(super) fn relay_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_udp(addr, false, 1 << 20)
}

pub(super) fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Per-worker sockets, bound UDP/TCP addresses, bound TLS addresses.
pub type Bound = (Vec<WorkerSockets>, Vec<SocketAddr>, Vec<SocketAddr>);

/// Sockets of one worker.
#[derive(Debug, Default)]
pub struct WorkerSockets {
    pub(super) udp: Vec<std::net::UdpSocket>,
    pub(super) tcp: Vec<std::net::TcpListener>,
    pub(super) tls: Vec<std::net::TcpListener>,
}

/// Binds every listener once per worker (SO_REUSEPORT); port 0 resolves to one port shared
/// by UDP, TCP and all workers. Returns the sockets and the bound addresses.
pub fn bind_all(cfg: &Config) -> Result<Bound, RuntimeError> {
    let mut workers: Vec<WorkerSockets> =
        (0..cfg.workers).map(|_| WorkerSockets::default()).collect();
    let mut bound = Vec::new();
    for &addr in &cfg.listen {
        let mut last_err = None;
        let mut done = false;
        for _ in 0..20 {
            match bind_pair(addr, cfg.workers) {
                Ok((udps, tcps, a)) => {
                    for (w, (u, t)) in workers.iter_mut().zip(udps.into_iter().zip(tcps)) {
                        w.udp.push(u);
                        w.tcp.push(t);
                    }
                    bound.push(a);
                    done = true;
                    break;
                }
                Err(e) => {
                    last_err = Some(e);
                    if addr.port() != 0 {
                        break;
                    }
                }
            }
        }
        if !done {
            let e = last_err.unwrap_or_else(|| io::Error::other("bind failed"));
            if addr.is_ipv6() && addr.ip().is_unspecified() && cfg.listen.len() > 1 {
                tracing::warn!(%addr, error = %e, "IPv6 listener unavailable, continuing without it");
                continue;
            }
            return Err(RuntimeError::Bind {
                what: "listen",
                addr,
                source: e,
            });
        }
    }
    let mut tls_bound = Vec::new();
    for &addr in &cfg.tls_listen {
        let first = tcp_listener(addr).map_err(|source| RuntimeError::Bind {
            what: "tls_listen",
            addr,
            source,
        })?;
        let a = first.local_addr()?;
        let mut ls = vec![first];
        for _ in 1..cfg.workers {
            ls.push(tcp_listener(a).map_err(|source| RuntimeError::Bind {
                what: "tls_listen",
                addr,
                source,
            })?);
        }
        for (w, l) in workers.iter_mut().zip(ls) {
            w.tls.push(l);
        }
        tls_bound.push(a);
    }
    Ok((workers, bound, tls_bound))
}

type Pair = (
    Vec<std::net::UdpSocket>,
    Vec<std::net::TcpListener>,
    SocketAddr,
);

/// Binds `addr` for UDP and TCP without SO_REUSEPORT, and lets go. IPv6 probes are
/// IPv6-only like the listeners: a dual-stack probe of `[::]:3478` would collide with our
/// own `0.0.0.0:3478` (the shipped example listens on both).
fn probe(addr: SocketAddr) -> io::Result<()> {
    for ty in [Type::DGRAM, Type::STREAM] {
        let s = Socket::new(Domain::for_address(addr), ty, None)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if ty == Type::STREAM {
            // as the listeners (and std's TcpListener): a port in TIME_WAIT is free
            s.set_reuse_address(true)?;
        }
        s.bind(&addr.into())?;
    }
    Ok(())
}

fn bind_pair(addr: SocketAddr, n: usize) -> io::Result<Pair> {
    if addr.port() != 0 {
        // SO_REUSEPORT would silently share the port with another running instance (same
        // user): probe without it first so a second server fails loudly instead.
        probe(addr)?;
    }
    let first = udp_socket(addr)?;
    let a = first.local_addr()?;
    let mut udps = vec![first];
    for _ in 1..n {
        udps.push(udp_socket(a)?);
    }
    let mut tcps = Vec::new();
    for _ in 0..n {
        tcps.push(tcp_listener(a)?);
    }
    Ok((udps, tcps, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port free for UDP and TCP on both families (best effort: the OS picks it).
    fn free_port() -> u16 {
        let u = std::net::UdpSocket::bind("[::]:0").unwrap();
        u.local_addr().unwrap().port()
    }

    #[test]
    fn wildcard_listeners_of_both_families_share_a_port_and_a_second_server_fails() {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
            let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            let Ok(a) = bind_pair(v4, 2) else { continue };
            match bind_pair(v6, 2) {
                Ok(b) => {
                    assert_eq!((a.2, b.2), (v4, v6));
                    // another instance on the same address fails loudly, both families
                    assert!(bind_pair(v4, 1).is_err());
                    assert!(bind_pair(v6, 1).is_err());
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
        panic!("0.0.0.0:P and [::]:P never bound together: {last:?}");
    }
}
