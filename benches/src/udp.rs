//! Batched UDP I/O for the load generator and the echo peer: GSO sends and
//! recvmmsg/GRO receives through `quinn-udp` on tokio sockets (no unsafe here).

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Bytes per receive buffer: room for a GRO-coalesced batch.
pub(crate) const RECV_BUF: usize = 64 * 1024;
/// Largest GSO send (kernel limit for one UDP datagram payload train).
const MAX_GSO_BYTES: usize = 65_000;

/// A loopback UDP socket with quinn-udp's batched I/O state.
pub(crate) struct BatchSocket {
    pub(crate) sock: UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    /// Binds `addr` with UDP GRO on (a GSO burst from a peer arrives as one
    /// buffer); must be called inside a tokio runtime. For the load generator.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, true)
    }

    /// Binds `addr`; with `gro` false the socket sees every datagram separately,
    /// as a relay does when real clients send one datagram per packet. (quinn-udp
    /// turns GRO on for the socket its state is created from, so then the state
    /// comes from a throwaway socket; recvmmsg and GSO sends work the same.)
    pub(crate) fn bind_with(addr: SocketAddr, gro: bool) -> io::Result<Self> {
        let std_sock = std::net::UdpSocket::bind(addr)?;
        let sock2 = socket2::SockRef::from(&std_sock);
        let _ = sock2.set_recv_buffer_size(4 << 20);
        let _ = sock2.set_send_buffer_size(4 << 20);
        let state = if gro {
            UdpSocketState::new((&std_sock).into())?
        } else {
            std_sock.set_nonblocking(true)?;
            let donor = std::net::UdpSocket::bind((addr.ip(), 0))?;
            UdpSocketState::new((&donor).into())?
        };
        let sock = UdpSocket::from_std(std_sock)?;
        Ok(Self { sock, state })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Most segments one GSO send may carry for `seg_len`-byte datagrams.
    pub(crate) fn max_segments(&self, seg_len: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(MAX_GSO_BYTES / seg_len.max(1))
            .max(1)
    }

    /// Sends `contents` (whole datagrams of `seg_len` bytes, last may be shorter) in
    /// one syscall; waits while the socket buffer is full.
    pub(crate) async fn send_batch(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        seg_len: usize,
    ) -> io::Result<()> {
        let segment_size = (contents.len() > seg_len).then_some(seg_len);
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), &transmit)
            })
            .await
    }

    /// Waits until readable, receives up to BATCH_SIZE messages into the shared
    /// `scratch` and hands every datagram (split by GRO stride) to `on_datagram`,
    /// all without awaiting in between, so one scratch serves every socket of a
    /// single-threaded runtime. Returns the number of datagrams.
    pub(crate) async fn recv_each(
        &self,
        scratch: &RefCell<RecvScratch>,
        mut on_datagram: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        self.sock
            .async_io(Interest::READABLE, || {
                let mut guard = scratch.borrow_mut();
                let RecvScratch { bufs, meta } = &mut *guard;
                let n = {
                    let mut slices: Vec<IoSliceMut<'_>> =
                        bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    self.state.recv((&self.sock).into(), &mut slices, meta)?
                };
                let mut count = 0;
                for (buf, m) in bufs.iter().zip(meta.iter()).take(n) {
                    for d in datagrams(buf, m) {
                        count += 1;
                        on_datagram(m.addr, d);
                    }
                }
                Ok(count)
            })
            .await
    }
}

/// Receive buffers and metadata shared by the sockets of one thread.
pub(crate) struct RecvScratch {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl Default for RecvScratch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH_SIZE).map(|_| vec![0u8; RECV_BUF]).collect(),
            meta: vec![RecvMeta::default(); BATCH_SIZE],
        }
    }
}

/// Splits a received buffer into datagrams by GRO stride.
pub(crate) fn datagrams<'a>(buf: &'a [u8], meta: &RecvMeta) -> impl Iterator<Item = &'a [u8]> {
    let stride = if meta.stride == 0 {
        meta.len.max(1)
    } else {
        meta.stride
    };
    buf[..meta.len].chunks(stride)
}
