//! Peer-address policy: which addresses a client may reach through a relay.
//!
//! Default deny for everything that is not public unicast (loopback, unspecified, private,
//! CGNAT, link-local incl. cloud metadata, multicast, broadcast, reserved), including every
//! IPv6 spelling that embeds such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64,
//! 6to4, Teredo): the bypass class of CVE-2020-26262.
//!
//! Order of evaluation (documented in docs/turn-server.md):
//! 1. `deny_peer` CIDRs — an explicit deny always wins;
//! 2. `allow_peer` CIDRs — open a range the defaults deny (e.g. 127.0.0.1/32 in tests);
//! 3. the built-in default denials;
//! 4. everything else is allowed.
//!
//! Lists are matched against the address as given and against any IPv4 address embedded in it,
//! so `--deny-peer 203.0.113.0/24` also denies `::ffff:203.0.113.5`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a peer was denied; the label of `callrelay_turn_denied_peers_total`.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum DenyClass {
    /// 127/8, ::1.
    Loopback,
    /// 0.0.0.0, ::.
    Unspecified,
    /// RFC 1918, fc00::/7, fec0::/10, local-use NAT64.
    Private,
    /// 100.64/10.
    Cgnat,
    /// 169.254/16 (incl. 169.254.169.254 metadata), fe80::/10.
    LinkLocal,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Matched an operator `deny_peer` CIDR.
    DenyList,
    /// Other special-purpose ranges (0/8, 240/4, 192.0.0/24, 198.18/15, 100::/64).
    OtherReserved,
}

impl DenyClass {
    /// All classes, for pre-registering metric labels.
    pub const ALL: [Self; 9] = [
        Self::Loopback,
        Self::Unspecified,
        Self::Private,
        Self::Cgnat,
        Self::LinkLocal,
        Self::Multicast,
        Self::Broadcast,
        Self::DenyList,
        Self::OtherReserved,
    ];

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::Private => "private",
            Self::Cgnat => "cgnat",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::DenyList => "deny_list",
            Self::OtherReserved => "other_reserved",
        }
    }

    /// Index into [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// An IP network in CIDR notation (`allow_peer`/`deny_peer`), parsed as both services
/// parse their CIDR keys.
pub use callrelay_service::config::Cidr;

/// The peer-address policy of one server.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl PeerPolicy {
    /// Builds a policy from operator lists.
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        Self { allow, deny }
    }

    /// `Ok(())` when a relay may send to `ip`, else the class that denies it.
    pub fn check(&self, ip: IpAddr) -> Result<(), DenyClass> {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let matches = |list: &[Cidr]| {
            list.iter()
                .any(|c| c.contains(ip) || embedded.is_some_and(|e| c.contains(e)))
        };
        if matches(&self.deny) {
            return Err(DenyClass::DenyList);
        }
        if matches(&self.allow) {
            return Ok(());
        }
        match default_class(ip) {
            Some(class) => Err(class),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in each translation/tunnel spelling.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let s = ip.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::ffff:0:0/96 IPv4-mapped.
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some(last);
    }
    // ::/96 IPv4-compatible (deprecated, still routed by some stacks); :: and ::1 excluded.
    if s[..6] == [0; 6] && u128::from(ip) > 1 {
        return Some(last);
    }
    // ::ffff:0:0:0/96 SIIT (RFC 2765 "IPv4-translated").
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(last);
    }
    // 64:ff9b::/96 well-known NAT64 prefix.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last);
    }
    // 2002::/16 6to4: the IPv4 address follows the prefix.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // 2001::/32 Teredo: client address is the bit-inverted last 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(last)));
    }
    None
}

fn class_v4(ip: Ipv4Addr) -> Option<DenyClass> {
    let o = ip.octets();
    if ip.is_unspecified() {
        Some(DenyClass::Unspecified)
    } else if ip.is_loopback() {
        Some(DenyClass::Loopback)
    } else if ip.is_private() {
        Some(DenyClass::Private)
    } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
        Some(DenyClass::Cgnat)
    } else if ip.is_link_local() {
        Some(DenyClass::LinkLocal)
    } else if ip.is_broadcast() {
        Some(DenyClass::Broadcast)
    } else if ip.is_multicast() {
        Some(DenyClass::Multicast)
    } else if o[0] == 0
        || o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xFE) == 18)
    {
        Some(DenyClass::OtherReserved)
    } else {
        None
    }
}

fn default_class(ip: IpAddr) -> Option<DenyClass> {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some(DenyClass::Unspecified)
            } else if v6.is_loopback() {
                Some(DenyClass::Loopback)
            } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
                Some(DenyClass::Private)
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some(DenyClass::LinkLocal)
            } else if (s[0] & 0xff00) == 0xff00 {
                Some(DenyClass::Multicast)
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): the embedding depends on the
                // operator's prefix length, so the whole range is treated as internal.
                Some(DenyClass::Private)
            } else if s[..4] == [0x100, 0, 0, 0] {
                Some(DenyClass::OtherReserved)
            } else if let Some(v4) = embedded_v4(v6) {
                class_v4(v4)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(p: &PeerPolicy, s: &str) -> Result<(), DenyClass> {
        p.check(s.parse().unwrap())
    }

    #[test]
    fn default_denies_every_class_and_spelling() {
        use DenyClass::*;
        let p = PeerPolicy::default();
        let cases: &[(&str, DenyClass)] = &[
            ("127.0.0.1", Loopback),
            ("127.255.1.2", Loopback),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:7f00:1::1", Loopback),
            ("::ffff:0:127.0.0.1", Loopback),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("::ffff:0.0.0.0", Unspecified),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:192.168.0.1", Private),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b:1::a00:1", Private),
            ("2002:c0a8:101::1", Private),
            ("100.64.0.1", Cgnat),
            ("100.127.255.255", Cgnat),
            ("::ffff:100.64.0.1", Cgnat),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("::ffff:169.254.169.254", LinkLocal),
            ("64:ff9b::169.254.169.254", LinkLocal),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("::ffff:224.0.0.1", Multicast),
            ("255.255.255.255", Broadcast),
            ("::ffff:255.255.255.255", Broadcast),
            ("0.1.2.3", OtherReserved),
            ("240.0.0.1", OtherReserved),
            ("192.0.0.8", OtherReserved),
            ("198.18.0.1", OtherReserved),
            ("100::1", OtherReserved),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Loopback), // Teredo client 127.0.0.1
        ];
        for (ip, class) in cases {
            assert_eq!(deny(&p, ip), Err(*class), "{ip}");
        }
    }

    #[test]
    fn default_allows_public_unicast() {
        let p = PeerPolicy::default();
        for ip in [
            "8.8.8.8",
            "203.0.113.5",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(deny(&p, ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn allow_opens_and_deny_wins() {
        let p = PeerPolicy::new(vec!["127.0.0.1/32".parse().unwrap()], vec![]);
        assert_eq!(deny(&p, "127.0.0.1"), Ok(()));
        assert_eq!(deny(&p, "::ffff:127.0.0.1"), Ok(()));
        assert_eq!(deny(&p, "127.0.0.2"), Err(DenyClass::Loopback));
        assert_eq!(deny(&p, "::1"), Err(DenyClass::Loopback));
        let p = PeerPolicy::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "8.8.0.0/16".parse().unwrap(),
            ],
            vec!["127.0.0.1/32".parse().unwrap(), "8.8.8.8".parse().unwrap()],
        );
        assert_eq!(deny(&p, "127.0.0.1"), Err(DenyClass::DenyList));
        assert_eq!(deny(&p, "127.0.0.2"), Ok(()));
        assert_eq!(deny(&p, "8.8.8.8"), Err(DenyClass::DenyList));
        assert_eq!(deny(&p, "::ffff:8.8.8.8"), Err(DenyClass::DenyList));
        assert_eq!(deny(&p, "2002:808:808::1"), Err(DenyClass::DenyList));
        assert_eq!(deny(&p, "8.8.4.4"), Ok(()));
    }
}
