//! The map layouts shared with `bpf/channel.bpf.c`, the kernel's monotonic clock, and the
//! interfaces' addresses.
//!
//! This is the crate's only `unsafe`: aya reads and writes map keys and values as raw
//! bytes, so each type must promise (`aya::Pod`) that every bit pattern is valid and
//! that it has no padding the kernel could see uninitialised; the expiry instants
//! the program compares with `bpf_ktime_get_ns()` come from `clock_gettime`; and which
//! interface carries an address comes from `getifaddrs` (std has no safe call for either);
//! and turning `UDP_GRO` off on a listener is a `setsockopt` no safe crate here offers.
#![allow(
    unsafe_code,
    reason = "aya::Pod impls, clock_gettime, getifaddrs and setsockopt(UDP_GRO), see the module docs"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Key of `CLIENT_TO_PEER`: a client's 5-tuple toward our listener and the channel number.
/// Addresses, ports and the channel are in network byte order, as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub(crate) struct C2pKey {
    pub(crate) client_ip: u32,
    pub(crate) server_ip: u32,
    pub(crate) client_port: u16,
    pub(crate) server_port: u16,
    pub(crate) channel: u16,
    pub(crate) pad: u16,
}

/// Value of `CLIENT_TO_PEER`: where the payload goes, and until when (CLOCK_MONOTONIC ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct C2pVal {
    pub(crate) relay_ip: u32,
    pub(crate) peer_ip: u32,
    pub(crate) relay_port: u16,
    pub(crate) peer_port: u16,
    /// Key of the allocation's entry in `ALLOCS`.
    pub(crate) alloc: u32,
    pub(crate) expires_ns: u64,
}

/// Key of `PEER_TO_CLIENT`: a peer's datagram to a relayed address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub(crate) struct P2cKey {
    pub(crate) peer_ip: u32,
    pub(crate) relay_ip: u32,
    pub(crate) peer_port: u16,
    pub(crate) relay_port: u16,
}

/// Value of `PEER_TO_CLIENT`: the client's 5-tuple, the channel, and until when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct P2cVal {
    pub(crate) server_ip: u32,
    pub(crate) client_ip: u32,
    pub(crate) server_port: u16,
    pub(crate) client_port: u16,
    pub(crate) channel: u16,
    pub(crate) pad: u16,
    /// Key of the allocation's entry in `ALLOCS`.
    pub(crate) alloc: u32,
    pub(crate) pad2: u32,
    pub(crate) expires_ns: u64,
}

/// Value of `ALLOCS`: the allocation's bandwidth as a GCRA (theoretical arrival time in
/// CLOCK_MONOTONIC ns, and the rate in payload bytes per second).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct AllocVal {
    pub(crate) tat: u64,
    pub(crate) rate: u64,
}

/// One CPU's slot of `COUNTERS`: packets and payload bytes relayed by the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct Counter {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

/// One CPU's slot of `ALLOC_STATS`: what the program relayed for one allocation, `[0]`
/// client to peer, `[1]` peer to client (payload bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct AllocStats {
    pub(crate) packets: [u64; 2],
    pub(crate) bytes: [u64; 2],
}

/// `CLIENT_TO_PEER6` key: as [`C2pKey`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub(crate) struct C2p6Key {
    pub(crate) client_ip: [u32; 4],
    pub(crate) server_ip: [u32; 4],
    pub(crate) client_port: u16,
    pub(crate) server_port: u16,
    pub(crate) channel: u16,
    pub(crate) pad: u16,
}

/// `CLIENT_TO_PEER6` value: as [`C2pVal`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct C2p6Val {
    pub(crate) relay_ip: [u32; 4],
    pub(crate) peer_ip: [u32; 4],
    pub(crate) relay_port: u16,
    pub(crate) peer_port: u16,
    pub(crate) alloc: u32,
    pub(crate) expires_ns: u64,
}

/// `PEER_TO_CLIENT6` key: as [`P2cKey`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub(crate) struct P2c6Key {
    pub(crate) peer_ip: [u32; 4],
    pub(crate) relay_ip: [u32; 4],
    pub(crate) peer_port: u16,
    pub(crate) relay_port: u16,
}

/// `PEER_TO_CLIENT6` value: as [`P2cVal`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub(crate) struct P2c6Val {
    pub(crate) server_ip: [u32; 4],
    pub(crate) client_ip: [u32; 4],
    pub(crate) server_port: u16,
    pub(crate) client_port: u16,
    pub(crate) channel: u16,
    pub(crate) pad: u16,
    pub(crate) alloc: u32,
    pub(crate) pad2: u32,
    pub(crate) expires_ns: u64,
}

// SAFETY (all eleven): `repr(C)` structs of plain integers and integer arrays whose field
// sizes add up to the struct's size (checked by `layouts_have_no_padding`), so
// there is no padding and every bit pattern is a valid value; all are `Copy + 'static`.
unsafe impl aya::Pod for C2pKey {}
// SAFETY: see above.
unsafe impl aya::Pod for C2pVal {}
// SAFETY: see above.
unsafe impl aya::Pod for P2cKey {}
// SAFETY: see above.
unsafe impl aya::Pod for P2cVal {}
// SAFETY: see above.
unsafe impl aya::Pod for Counter {}
// SAFETY: see above.
unsafe impl aya::Pod for AllocVal {}
// SAFETY: see above.
unsafe impl aya::Pod for AllocStats {}
// SAFETY: see above.
unsafe impl aya::Pod for C2p6Key {}
// SAFETY: see above.
unsafe impl aya::Pod for C2p6Val {}
// SAFETY: see above.
unsafe impl aya::Pod for P2c6Key {}
// SAFETY: see above.
unsafe impl aya::Pod for P2c6Val {}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()` and of
/// `std::time::Instant` on Linux.
pub(crate) fn udp_gro_off(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let off: libc::c_int = 0;
    // SAFETY: `sock` is an open descriptor for the duration of the call (borrowed); the
    // option value is a live c_int on the stack and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            std::ptr::from_ref(&off).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC is always supported on Linux (the call cannot fail with it).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Every address configured on an interface, with the interface's name (`getifaddrs`);
/// empty if the call fails.
pub(crate) fn interface_addresses() -> Vec<(String, IpAddr)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list it receives is freed below
    // with `freeifaddrs`, exactly once, after the last read.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `ifa_addr` is non-null and points at a sockaddr whose `sa_family` says
        // which struct it is; each is read as that struct only (getifaddrs allocates the
        // full struct for its family), unaligned reads avoid assuming its alignment.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = std::ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in>());
                    Some(IpAddr::V4(Ipv4Addr::from(
                        sin.sin_addr.s_addr.to_ne_bytes(),
                    )))
                }
                libc::AF_INET6 => {
                    let sin6 = std::ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in6>());
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if let Some(ip) = ip {
            out.push((name, ip));
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once; nothing read
    // from the list outlives this point (names and addresses were copied).
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<C2pKey>(), 4 + 4 + 2 + 2 + 2 + 2);
        assert_eq!(size_of::<C2pVal>(), 4 + 4 + 2 + 2 + 4 + 8);
        assert_eq!(size_of::<P2cKey>(), 4 + 4 + 2 + 2);
        assert_eq!(size_of::<P2cVal>(), 4 + 4 + 2 + 2 + 2 + 2 + 4 + 4 + 8);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<AllocVal>(), 16);
        assert_eq!(size_of::<AllocStats>(), 32);
        assert_eq!(size_of::<C2p6Key>(), 16 + 16 + 2 + 2 + 2 + 2);
        assert_eq!(size_of::<C2p6Val>(), 16 + 16 + 2 + 2 + 4 + 8);
        assert_eq!(size_of::<P2c6Key>(), 16 + 16 + 2 + 2);
        assert_eq!(size_of::<P2c6Val>(), 16 + 16 + 2 + 2 + 2 + 2 + 4 + 4 + 8);
    }

    #[test]
    fn loopback_carries_127_0_0_1() {
        let all = interface_addresses();
        assert!(
            all.iter()
                .any(|(n, ip)| n == "lo" && *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{all:?}"
        );
    }

    #[test]
    fn monotonic_clock_advances() {
        // two reads 2 ms apart are at least 2 ms apart
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} {b}");
    }
}
