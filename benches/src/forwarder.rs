//! The bare forwarder: the ceiling for relayed packets/s (and the floor for CPU per
//! packet) on this machine.
//!
//! It does what a TURN relay must do on the data path and nothing else: a client
//! sends ChannelData to the listening socket; the forwarder strips the 4-byte header
//! and sends the payload to the fixed peer from a per-client relay socket; what the
//! peer sends to that relay socket goes back to the client with a header. No STUN,
//! no auth, no permission checks. recvmmsg + GSO batching through quinn-udp,
//! one thread. Its sockets have GRO off, so like a relay serving browsers it
//! receives every datagram on its own even when the load generator sends bursts.
//!
//! The same address also listens on TCP (TURN-over-TCP without the TURN): each
//! connection gets its own relay socket; one read takes whatever the stream holds,
//! the padded ChannelData frames in it leave as one GSO send per run of same-length
//! payloads, and what the peer sends back goes to the stream as padded frames in one
//! write per receive batch. The minimum syscalls a TCP relay can make.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use shared_ice::channel;
use shared_ice::framing::{FrameKind, Framer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::udp::{BatchSocket, RecvScratch};

const CHANNEL: u16 = 0x4000;
/// Read buffer per TCP connection (also the largest frame accepted on it).
const TCP_READ_BUF: usize = 64 << 10;
/// Most datagrams in one GSO send.
const MAX_SEGMENTS: usize = 64;

/// Runs until `max_secs` have passed (a bound, so a forgotten forwarder stops).
pub(crate) fn run(listen: SocketAddr, peer: SocketAddr, max_secs: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = Rc::new(BatchSocket::bind_with(listen, false)?);
        let deadline = Instant::now() + Duration::from_secs(max_secs);
        let scratch = Rc::new(RefCell::new(RecvScratch::default()));
        let tcp = TcpListener::bind(listen).await?;
        tokio::task::spawn_local(serve_tcp(tcp, peer, deadline, scratch.clone()));
        let mut relays: HashMap<SocketAddr, Rc<BatchSocket>> = HashMap::new();
        let mut groups: Vec<(SocketAddr, usize, usize, usize)> = Vec::new();
        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
        while Instant::now() < deadline {
            groups.clear();
            out.clear();
            let r = tokio::time::timeout(
                Duration::from_millis(200),
                l.recv_each(&scratch, |from, d| {
                    if d.len() < 4 {
                        return;
                    }
                    let p = &d[4..];
                    match groups.last_mut() {
                        Some((a, _, len, n)) if *a == from && *len == p.len() && *n < 64 => {
                            *n += 1;
                        }
                        _ => groups.push((from, out.len(), p.len(), 1)),
                    }
                    out.extend_from_slice(p);
                }),
            )
            .await;
            if !matches!(r, Ok(Ok(_))) {
                continue;
            }
            for &(client, start, len, segs) in &groups {
                let relay = match relays.get(&client) {
                    Some(r) => r.clone(),
                    None => {
                        let r = Rc::new(BatchSocket::bind_with(([127, 0, 0, 1], 0).into(), false)?);
                        relays.insert(client, r.clone());
                        tokio::task::spawn_local(back_to_client(
                            r.clone(),
                            l.clone(),
                            client,
                            scratch.clone(),
                            deadline,
                        ));
                        r
                    }
                };
                let bytes = &out[start..start + len * segs];
                let _ = relay.send_batch(peer, bytes, len).await;
            }
        }
        anyhow::Ok(())
    })
}

/// Peer → relay socket → client, with the ChannelData header added.
async fn back_to_client(
    relay: Rc<BatchSocket>,
    l: Rc<BatchSocket>,
    client: SocketAddr,
    scratch: Rc<RefCell<RecvScratch>>,
    deadline: Instant,
) {
    let mut out: Vec<u8> = Vec::with_capacity(1 << 17);
    while Instant::now() < deadline {
        out.clear();
        let mut flushes: Vec<(usize, usize)> = Vec::new();
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            relay.recv_each(&scratch, |_, d| {
                let len = d.len() + 4;
                let new_batch = match flushes.last() {
                    Some(&(a, l)) => l != len || (out.len() - a) / len >= 64,
                    None => true,
                };
                if new_batch {
                    flushes.push((out.len(), len));
                }
                out.extend_from_slice(&CHANNEL.to_be_bytes());
                out.extend_from_slice(&(d.len() as u16).to_be_bytes());
                out.extend_from_slice(d);
            }),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            continue;
        }
        flushes.push((out.len(), 0));
        for w in flushes.windows(2) {
            let ((a, len), (b, _)) = (w[0], w[1]);
            if b > a {
                let _ = l.send_batch(client, &out[a..b], len).await;
            }
        }
    }
}

/// Accepts TCP clients until `deadline`; each connection is its own task on the
/// current thread's `LocalSet`.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    peer: SocketAddr,
    deadline: Instant,
    scratch: Rc<RefCell<RecvScratch>>,
) {
    let end = tokio::time::Instant::from_std(deadline);
    // Bounded by the deadline.
    loop {
        match tokio::time::timeout_at(end, listener.accept()).await {
            Ok(Ok((stream, _))) => {
                tokio::task::spawn_local(tcp_conn(stream, peer, end, scratch.clone()));
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => return,
        }
    }
}

/// One TCP client: its own relay socket toward `peer`, both directions until EOF,
/// an error or `end`.
async fn tcp_conn(
    stream: TcpStream,
    peer: SocketAddr,
    end: tokio::time::Instant,
    scratch: Rc<RefCell<RecvScratch>>,
) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let Ok(relay) = BatchSocket::bind_with(([127, 0, 0, 1], 0).into(), false) else {
        return;
    };
    let (rd, wr) = stream.into_split();
    tokio::select! {
        () = stream_to_peer(rd, &relay, peer, end) => {}
        () = peer_to_stream(&relay, wr, &scratch, end) => {}
    }
}

/// Client → peer: one read per readiness; the payloads of each run of same-length
/// ChannelData frames leave in one GSO send. STUN frames are dropped (there are none
/// in the bare case); a stream that cannot be framed ends the connection.
async fn stream_to_peer(
    mut rd: OwnedReadHalf,
    relay: &BatchSocket,
    peer: SocketAddr,
    end: tokio::time::Instant,
) {
    let framer = Framer::new(TCP_READ_BUF);
    let mut buf = vec![0u8; TCP_READ_BUF];
    let mut out: Vec<u8> = Vec::with_capacity(TCP_READ_BUF);
    // Unframed bytes are buf[..hi].
    let mut hi = 0usize;
    // Bounded by `end` and by EOF.
    loop {
        match tokio::time::timeout_at(end, rd.read(&mut buf[hi..])).await {
            Ok(Ok(n)) if n > 0 => hi += n,
            _ => return,
        }
        // Payloads of the current run: `segs` datagrams of `seg` bytes in `out`.
        let (mut lo, mut seg, mut segs) = (0usize, 0usize, 0usize);
        out.clear();
        loop {
            let fr = match framer.next_frame(&buf[lo..hi]) {
                Ok(Some(fr)) => fr,
                Ok(None) => break,
                Err(_) => return,
            };
            if fr.kind == FrameKind::ChannelData {
                let f = &buf[lo..lo + fr.len];
                let len = usize::from(u16::from_be_bytes([f[2], f[3]]));
                let full = segs >= MAX_SEGMENTS.min(relay.max_segments(seg)) || len == 0;
                if segs > 0 && (len != seg || full) {
                    if relay.send_batch(peer, &out, seg).await.is_err() {
                        return;
                    }
                    out.clear();
                    segs = 0;
                }
                out.extend_from_slice(&f[channel::HEADER_LEN..channel::HEADER_LEN + len]);
                (seg, segs) = (len, segs + 1);
            }
            lo += fr.len;
        }
        if segs > 0 && relay.send_batch(peer, &out, seg).await.is_err() {
            return;
        }
        // Keep the partial frame (if any) at the front; it is shorter than a frame.
        buf.copy_within(lo..hi, 0);
        hi -= lo;
    }
}

/// Peer → client: each receive batch becomes padded ChannelData frames written to
/// the stream in one write.
async fn peer_to_stream(
    relay: &BatchSocket,
    mut wr: OwnedWriteHalf,
    scratch: &RefCell<RecvScratch>,
    end: tokio::time::Instant,
) {
    let Some(ch) = channel::ChannelNumber::new(CHANNEL) else {
        return;
    };
    let mut out: Vec<u8> = Vec::with_capacity(1 << 17);
    // Bounded by `end` and by the first write error.
    loop {
        out.clear();
        let r = tokio::time::timeout_at(
            end,
            relay.recv_each(scratch, |_, d| {
                // A datagram too long for ChannelData is dropped.
                let _ = channel::encode(&mut out, ch, d, channel::Padding::Stream);
            }),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => continue,
            Err(_) => return,
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::EchoPeer;
    use shared_ice::channel::{ChannelData, ChannelNumber, Padding};

    /// Payload `i` of the test burst: `len` bytes that differ per frame and per byte.
    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|b| (i * 7 + b * 13 + 1) as u8).collect()
    }

    /// Reads frames from `s` until `n` ChannelData payloads are in, or 5 s pass.
    async fn read_payloads(s: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        let framer = Framer::default();
        let mut inbuf = Vec::new();
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < n {
            let mut chunk = [0u8; 4096];
            let k = match tokio::time::timeout_at(end, s.read(&mut chunk)).await {
                Ok(Ok(k)) if k > 0 => k,
                other => panic!("after {} of {n} frames: {other:?}", got.len()),
            };
            inbuf.extend_from_slice(&chunk[..k]);
            while let Some(fr) = framer.next_frame(&inbuf).unwrap() {
                assert_eq!(fr.kind, FrameKind::ChannelData);
                let cd = ChannelData::parse(&inbuf[..fr.len]).unwrap();
                assert_eq!(cd.channel().get(), CHANNEL);
                assert!(
                    inbuf[channel::HEADER_LEN + cd.data().len()..fr.len]
                        .iter()
                        .all(|&b| b == 0),
                    "padding is zero"
                );
                got.push(cd.data().to_vec());
                inbuf.drain(..fr.len);
            }
        }
        got
    }

    /// The TCP side relays a burst of padded ChannelData frames of odd sizes (runs of
    /// same-length frames longer than one GSO send, a lone 1-byte frame, a frame split
    /// across two writes) to the echo peer and back, in order and intact. The echo
    /// peer returns exactly the datagrams it got, so equal payloads on the way back
    /// plus its datagram count show the peer saw each payload without padding.
    #[tokio::test]
    async fn tcp_side_relays_padded_frames_both_ways() {
        let peer = EchoPeer::start().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let scratch = Rc::new(RefCell::new(RecvScratch::default()));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                tokio::task::spawn_local(serve_tcp(listener, peer.addr, deadline, scratch));
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();

                let mut lens = vec![173usize; 70];
                lens.extend([101, 101, 1, 3, 1201, 1201, 1201, 25, 26, 27]);
                lens.extend([99usize; 20]);
                let sent: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| payload(i, l))
                    .collect();
                let ch = ChannelNumber::new(0x4001).unwrap();
                let mut wire = Vec::new();
                for p in &sent {
                    channel::encode(&mut wire, ch, p, Padding::Stream).unwrap();
                }
                // All but the last 20 frames in one write, then the rest in two writes
                // that split a frame in the middle.
                let split = wire.len() - 20 * (4 + 100);
                s.write_all(&wire[..split]).await.unwrap();
                let got = read_payloads(&mut s, sent.len() - 20).await;
                let half = split + 4 + 50;
                s.write_all(&wire[split..half]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(&wire[half..]).await.unwrap();
                let mut got2 = got;
                got2.extend(read_payloads(&mut s, 20).await);

                assert_eq!(got2.len(), sent.len());
                for (i, (g, w)) in got2.iter().zip(&sent).enumerate() {
                    assert_eq!(g, w, "frame {i} ({} bytes)", w.len());
                }
                assert_eq!(peer.received(), sent.len() as u64);
            })
            .await;
    }
}
