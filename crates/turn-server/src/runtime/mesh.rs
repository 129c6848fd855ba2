//! Relay to relay between workers: a bounded, preallocated queue per worker, so a datagram
//! from one allocation to another allocation owned by another worker never takes a lock
//! or an allocation.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::udp::{deliver_channel_data, flush_sends, relay_to_peer};
use super::{Worker, flush};
use crate::core::{Relay, RelayToken};

/// Largest payload handed to another worker in process; larger datagrams take the kernel
/// path (send from our relay socket to theirs), which delivers them to the same place.
const HANDOFF_MAX: usize = 1500;
/// Hand-offs queued per worker before the sender falls back to the kernel path.
const HANDOFF_QUEUE: usize = 256;

/// One relay-to-relay datagram on its way to the worker that owns the destination relayed
/// address. Inline bytes (4 of headroom for the ChannelData header + payload): the queue is
/// an array allocated once, so a hand-off allocates nothing.
pub struct Handoff {
    to: SocketAddr,
    src: SocketAddr,
    len: u16,
    buf: [u8; 4 + HANDOFF_MAX],
}

/// The receiving end of one worker's relay-to-relay queue.
pub type Inbox = std::sync::mpsc::Receiver<Handoff>;

/// Senders and wake-ups for every worker's relay-to-relay queue.
#[derive(Clone, Debug)]
pub struct Mesh {
    queues: Vec<std::sync::mpsc::SyncSender<Handoff>>,
    pub(super) wake: Vec<Arc<tokio::sync::Notify>>,
}

impl Mesh {
    /// Queues for `n` workers; the i-th inbox belongs to worker i.
    pub fn new(n: usize) -> (Self, Vec<Inbox>) {
        let mut queues = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = std::sync::mpsc::sync_channel(HANDOFF_QUEUE);
            queues.push(tx);
            inboxes.push(rx);
        }
        let wake = (0..n)
            .map(|_| Arc::new(tokio::sync::Notify::new()))
            .collect();
        (Self { queues, wake }, inboxes)
    }
}

/// [`Relay::ToWorker`]: queue the payload for the worker that owns `peer` (woken once per
/// batch by [`wake_workers`]); when its queue is full or the payload too large, send it
/// through our relay socket as an ordinary relayed datagram.
pub(super) fn hand_off(
    w: &Worker,
    worker: usize,
    relay: RelayToken,
    peer: SocketAddr,
    src: SocketAddr,
    bytes: &[u8],
) {
    if let (Some(q), Ok(len)) = (w.mesh.queues.get(worker), u16::try_from(bytes.len()))
        && bytes.len() <= HANDOFF_MAX
    {
        let mut h = Handoff {
            to: peer,
            src,
            len,
            buf: [0; 4 + HANDOFF_MAX],
        };
        if let Some(dst) = h.buf.get_mut(4..4 + bytes.len()) {
            dst.copy_from_slice(bytes);
            if q.try_send(h).is_ok() {
                w.to_wake.set(w.to_wake.get() | 1 << worker);
                return;
            }
        }
    }
    relay_to_peer(w, relay, peer, bytes);
}

/// Wakes the workers that got hand-offs since the last call (one wake-up per batch).
pub(super) fn wake_workers(w: &Worker) {
    let mut bits = w.to_wake.replace(0);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(n) = w.mesh.wake.get(i) {
            n.notify_one();
        }
    }
}

/// Relay-to-relay datagrams from other workers: each is checked by our core as if it had
/// arrived on the destination's relay socket, then sent to its client as ChannelData.
pub(super) async fn inbox_loop(w: Rc<Worker>, inbox: Inbox, wake: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = w.shutdown.cancelled() => return,
            () = wake.notified() => {}
        }
        // Bounded rounds so a busy sender cannot starve this worker's sockets.
        loop {
            let now = Instant::now();
            let mut pending = false;
            let mut n = 0;
            while n < HANDOFF_QUEUE {
                let Ok(mut h) = inbox.try_recv() else { break };
                n += 1;
                let r = {
                    let mut core = w.core.borrow_mut();
                    let r = h
                        .buf
                        .get(4..4 + usize::from(h.len))
                        .and_then(|p| core.handle_relayed(now, h.to, h.src, p));
                    pending |= core.has_pending();
                    r
                };
                if let Some(Relay::ToClient {
                    client,
                    header,
                    padding,
                }) = r
                {
                    deliver_channel_data(&w, client, header, padding, &mut h.buf);
                }
            }
            flush_sends(&w);
            if pending {
                flush(&w, now);
            }
            if n < HANDOFF_QUEUE {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
