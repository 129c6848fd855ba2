//! The bare UDP forwarder: the ceiling for relayed packets/s on this machine.
//!
//! It does what a TURN relay must do on the data path and nothing else: a client
//! sends ChannelData to the listening socket; the forwarder strips the 4-byte header
//! and sends the payload to the fixed peer from a per-client relay socket; what the
//! peer sends to that relay socket goes back to the client with a header. No STUN,
//! no auth, no permission checks. recvmmsg + GSO batching through quinn-udp,
//! one thread. Its sockets have GRO off, so like a relay serving browsers it
//! receives every datagram on its own even when the load generator sends bursts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::udp::{BatchSocket, RecvScratch};

const CHANNEL: u16 = 0x4000;

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
