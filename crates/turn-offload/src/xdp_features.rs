//! Whether an interface can transmit frames another interface's XDP program redirects to
//! it: the kernel's `NETDEV_XDP_ACT_NDO_XMIT` feature, read over generic netlink (the
//! `netdev` family, Linux ≥ 6.3) with one request per interface at start.
//!
//! A redirect to a device without it fails after the program returned, and the frame is
//! dropped: a veth whose peer has neither GRO nor an XDP program (the peer is usually in
//! another namespace, out of our sight), or a driver without `ndo_xdp_xmit`. `auto`
//! therefore uses XDP only where this says yes (or cannot tell: an older kernel).

use std::io::{self, Read as _};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// `Some(true)` when interface `ifindex` takes redirected XDP frames, `Some(false)` when
/// the kernel says it does not, `None` when the kernel cannot say (no `netdev` family).
pub(crate) fn ndo_xmit(ifindex: u32) -> Option<bool> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW.cloexec(),
        Some(Protocol::from(NETLINK_GENERIC)),
    )
    .ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let family = request(
        &sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        1,
        &attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
    )
    .ok()?;
    let id = find(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))?;
    let dev = request(
        &sock,
        id,
        NETDEV_CMD_DEV_GET,
        2,
        &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )
    .ok()?;
    let features = find(&dev, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))?;
    Some(features & NETDEV_XDP_ACT_NDO_XMIT != 0)
}

/// One netlink attribute, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// Sends one generic netlink request to the kernel and returns the attributes of its
/// answer (the bytes after the generic netlink header).
fn request(sock: &Socket, family: u16, cmd: u8, seq: u32, attrs: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(16 + 4 + attrs.len()).map_err(io::Error::other)?;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: command, version, reserved
    msg.extend_from_slice(attrs);
    // Unconnected netlink sockets send to the kernel.
    sock.send(&msg)?;
    let mut buf = vec![0u8; 8192];
    let n = (&*sock).read(&mut buf)?;
    let answer = buf.get(..n).unwrap_or_default();
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?))
    };
    let kind = answer
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .unwrap_or(NLMSG_ERROR);
    if kind == NLMSG_ERROR {
        let errno = field(16).map_or(0, |e| e as i32);
        return Err(io::Error::from_raw_os_error(
            errno.checked_neg().unwrap_or(0),
        ));
    }
    let total = field(0).unwrap_or(0) as usize;
    Ok(answer.get(20..total.min(n)).unwrap_or_default().to_vec())
}

/// The value of the first top-level attribute of type `kind`.
fn find(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let t = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff; // without NESTED/BYTEORDER
        if len < 4 || len > rest.len() {
            return None;
        }
        if t == kind {
            return rest.get(4..len);
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut a = attr(7, b"netdev\0");
        assert_eq!(a.len(), 12, "4 + 7, padded to 12");
        a.extend(attr(3, &5u64.to_ne_bytes()));
        assert_eq!(find(&a, 7), Some(&b"netdev\0"[..]));
        assert_eq!(find(&a, 3), Some(&5u64.to_ne_bytes()[..]));
        assert_eq!(find(&a, 9), None);
        assert_eq!(find(&[200, 0, 1, 0], 1), None, "a length past the end");
    }

    #[test]
    fn loopback_cannot_take_redirected_frames() {
        // lo has no XDP transmit; on a kernel without the netdev family: cannot tell
        assert_ne!(ndo_xmit(1), Some(true));
    }
}
