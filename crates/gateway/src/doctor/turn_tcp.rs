//! TURN over TCP and TLS for `gateway doctor`: the webrtc-rs `turn` client talks to a
//! `webrtc_util::Conn`, which only exists for UDP; this adapter frames STUN messages and
//! ChannelData on one byte stream, a TCP connection or a TLS session over one (RFC 8656
//! §12.5: ChannelData padded to 4 bytes over TCP).

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use webrtc_util::Conn;

/// A byte stream to a TURN server (TCP, or TLS over TCP).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One TCP or TLS connection to a TURN server, seen as a datagram `Conn`.
pub(crate) struct TcpConn {
    rd: Mutex<ReadHalf<Box<dyn Stream>>>,
    wr: Mutex<WriteHalf<Box<dyn Stream>>>,
    local: SocketAddr,
    server: SocketAddr,
}

impl TcpConn {
    /// Wraps a connected stream from `local` to `server`.
    pub(crate) fn new(s: Box<dyn Stream>, local: SocketAddr, server: SocketAddr) -> Self {
        let (r, w) = tokio::io::split(s);
        Self {
            rd: Mutex::new(r),
            wr: Mutex::new(w),
            local,
            server,
        }
    }

    async fn read_frame(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let mut rd = self.rd.lock().await;
        let mut head = [0u8; 4];
        rd.read_exact(&mut head).await?;
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let (body, padded) = if head[0] & 0xC0 == 0 {
            (16 + len, 16 + len) // STUN: 20-byte header, length excludes it
        } else {
            (len, len.div_ceil(4) * 4) // ChannelData
        };
        let mut frame = vec![0u8; padded];
        rd.read_exact(&mut frame).await?;
        let n = 4 + body;
        if n > buf.len() {
            return Err(webrtc_util::Error::Other("frame larger than buffer".into()));
        }
        buf[..4].copy_from_slice(&head);
        buf[4..n].copy_from_slice(&frame[..body]);
        Ok(n)
    }

    async fn write_frame(&self, p: &[u8]) -> webrtc_util::Result<usize> {
        let mut wr = self.wr.lock().await;
        wr.write_all(p).await?;
        if p.first().is_some_and(|b| b & 0xC0 == 0x40) && !p.len().is_multiple_of(4) {
            wr.write_all(&[0u8; 3][..4 - p.len() % 4]).await?;
        }
        Ok(p.len())
    }
}

#[async_trait::async_trait]
impl Conn for TcpConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.read_frame(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.read_frame(buf).await?, self.server))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.write_frame(buf).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.write_frame(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.wr.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
