//! The turn-server's kernel fast path for UDP ChannelData (docs/offload.md).
//!
//! A BPF program, `bpf/channel.bpf.c`, attached at XDP (native, driver mode) or at TC
//! (TCX ingress) per interface ([`Hook`]), relays ChannelData from a client to its peer and
//! UDP from the peer back to the client as ChannelData, over IPv4 and IPv6, without waking
//! userspace. Userspace stays the authority: [`Offload::sync`] installs
//! exactly the channel bindings the TURN core reports for an allocation (and removes the
//! ones it no longer reports), each with the instant it stops being valid, which the
//! program checks on every packet. Everything else, and anything the program is unsure
//! of, passes to the userspace relay unchanged.
//!
//! Where the program cannot run (not built, no privilege, old kernel, no interface)
//! [`Offload::start`] says why ([`Fallback`]) and the caller keeps relaying in userspace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use aya::maps::{
    DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};

mod abi;
mod xdp_features;

use abi::{
    AllocStats, AllocVal, C2p6Key, C2p6Val, C2pKey, C2pVal, Counter, P2c6Key, P2c6Val, P2cKey,
    P2cVal, monotonic_ns,
};

/// The compiled program (empty when build.rs could not build it).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/channel.bpf.o"));
/// Why build.rs did not build it (empty when it did).
const BUILD_ERROR: &str = env!("TURN_OFFLOAD_BUILD");

/// The `offload` setting.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Mode {
    /// Per interface the best hook that works there: XDP where a NIC's driver takes native
    /// XDP, TC on virtual interfaces (veth, bridge, …) and where XDP fails; else
    /// userspace with the reason logged. The default.
    #[default]
    Auto,
    /// Native XDP only (an interface whose driver has none: falls back with
    /// `xdp_unsupported`).
    Xdp,
    /// TC (clsact ingress) only.
    Tc,
    /// No offload: every packet takes the userspace path.
    Off,
}

impl Mode {
    /// Config spelling.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::Off => "off",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Auto, Self::Xdp, Self::Tc, Self::Off]
            .into_iter()
            .find(|m| m.label() == s)
    }
}

/// Why the offload is not running (`callrelay_turn_offload_fallback_total{reason}`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Fallback {
    /// `offload = "off"`.
    Disabled = 0,
    /// The BPF program was not compiled into this binary (no clang at build time).
    NotBuilt = 1,
    /// `offload = "xdp"` and an interface's driver does not take native XDP.
    XdpUnsupported = 2,
    /// Loading or attaching needs CAP_BPF and CAP_NET_ADMIN (or root).
    NoPermission = 3,
    /// The kernel refused the program or a map (too old, BPF disabled, verifier).
    Kernel = 4,
    /// No interface to attach to (e.g. the listener and relay addresses are all on `lo`),
    /// or attaching to one failed.
    Interface = 5,
    /// IPv4 forwarding is off on an interface: `bpf_fib_lookup`, which finds where a
    /// relayed packet leaves, answers only for interfaces that forward.
    ForwardingDisabled = 6,
}

impl Fallback {
    /// Label values in index order.
    pub const LABELS: [&str; 7] = [
        "disabled",
        "not_built",
        "xdp_unsupported",
        "no_permission",
        "kernel",
        "interface",
        "forwarding_disabled",
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS.get(self as usize).copied().unwrap_or("kernel")
    }
}

/// The offload could not start: why, and what the system said.
#[derive(Debug, thiserror::Error)]
#[error("kernel offload unavailable ({}): {detail}", reason.label())]
pub struct Unavailable {
    /// Reason class.
    pub reason: Fallback,
    /// Details for the log.
    pub detail: String,
}

impl Unavailable {
    fn new(reason: Fallback, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// Sorts a loader error: permission errors (EPERM) apart from everything the kernel
    /// refused (the verifier answers EACCES: that is a rejected program, not a missing
    /// capability, which [`permitted`] checked before).
    fn load(what: &str, e: &(dyn std::error::Error + 'static)) -> Self {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.raw_os_error() == Some(libc::EPERM)
            {
                return Self::new(
                    Fallback::NoPermission,
                    format!("{what}: {e}: needs CAP_BPF and CAP_NET_ADMIN"),
                );
            }
            src = s.source();
        }
        Self::new(Fallback::Kernel, format!("{what}: {e}"))
    }
}

/// Whether this binary carries the BPF program; `Err` says why not.
pub fn built() -> Result<(), Unavailable> {
    if OBJECT.is_empty() {
        let why = if BUILD_ERROR.is_empty() {
            "empty object"
        } else {
            BUILD_ERROR
        };
        return Err(Unavailable::new(Fallback::NotBuilt, why));
    }
    Ok(())
}

/// Whether this process may load and attach the program: it needs `CAP_NET_ADMIN` and
/// `CAP_BPF` (or `CAP_SYS_ADMIN`, which implies it) in its effective set. Read from
/// `/proc/self/status` before anything is loaded, so a missing capability is reported as
/// such (`no_permission`, naming it) rather than as whatever fails first.
pub fn permitted() -> Result<(), Unavailable> {
    const NET_ADMIN: u32 = 12;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let Some(eff) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
    else {
        return Ok(()); // unreadable: let the load say what is missing
    };
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Unavailable::new(
        Fallback::NoPermission,
        format!(
            "missing {}: the process needs CAP_BPF and CAP_NET_ADMIN (run as root, or under systemd add the offload.conf drop-in, docs/offload.md)",
            missing.join(" and ")
        ),
    ))
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// One channel binding the kernel may relay on its own.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Binding {
    /// The client's address (UDP).
    pub client: SocketAddr,
    /// Our listener address the client sends to.
    pub server: SocketAddr,
    /// The relay socket's bound address (where the peer's datagrams arrive).
    pub relay: SocketAddr,
    /// The peer.
    pub peer: SocketAddr,
    /// Channel number.
    pub channel: u16,
    /// When the binding stops relaying: the earliest of the channel's, the permission's
    /// and the allocation's expiry.
    pub expires: Instant,
}

/// Packets and payload bytes the program relayed, per direction.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Counters {
    /// Client to peer: packets.
    pub to_peer_packets: u64,
    /// Client to peer: payload bytes.
    pub to_peer_bytes: u64,
    /// Peer to client: packets.
    pub to_client_packets: u64,
    /// Peer to client: payload bytes.
    pub to_client_bytes: u64,
    /// Packets dropped because their allocation was over its `bandwidth`.
    pub bandwidth_drops: u64,
    /// Packets of an installed binding the program passed to userspace, by reason
    /// ([`Counters::PASSED`]).
    pub passed: [u64; 4],
}

impl Counters {
    /// Reasons of [`Counters::passed`], in order: the binding had expired (userspace
    /// drops it), no forwarding route or neighbour (`bpf_fib_lookup`), a checksum left
    /// to offload or missing, no room to resize the packet.
    pub const PASSED: [&str; 4] = ["expired", "no_route", "checksum", "room"];
}

/// Where the program runs on one interface.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Hook {
    /// XDP in driver (native) mode: before the kernel allocates an skb.
    Xdp,
    /// TC (TCX ingress): after the skb exists, for any driver.
    Tc,
}

impl Hook {
    /// Metric label and log spelling.
    pub fn label(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }
}

/// What the program relayed for one allocation: packets and payload bytes per direction,
/// summed over CPUs, since its bindings entered the kernel.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct AllocCounters {
    /// Client to peer: packets.
    pub to_peer_packets: u64,
    /// Client to peer: payload bytes.
    pub to_peer_bytes: u64,
    /// Peer to client: packets.
    pub to_client_packets: u64,
    /// Peer to client: payload bytes.
    pub to_client_bytes: u64,
}

impl AllocCounters {
    /// Payload bytes both ways (what the allocation's `bandwidth` counts).
    pub fn bytes(&self) -> u64 {
        self.to_peer_bytes.saturating_add(self.to_client_bytes)
    }
}

/// The map keys of one installed binding.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Keys {
    V4(C2pKey, P2cKey),
    V6(C2p6Key, P2c6Key),
}

/// The two map entries (one per direction) of one binding.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Entry {
    V4(C2pKey, C2pVal, P2cKey, P2cVal),
    V6(C2p6Key, C2p6Val, P2c6Key, P2c6Val),
}

impl Entry {
    fn keys(&self) -> Keys {
        match *self {
            Self::V4(ck, _, pk, _) => Keys::V4(ck, pk),
            Self::V6(ck, _, pk, _) => Keys::V6(ck, pk),
        }
    }
}

/// An allocation, named by its client's address and our listener address (a UDP
/// allocation's 5-tuple).
pub type AllocKey = (SocketAddr, SocketAddr);

/// The loaded and attached program with its maps. Dropping it detaches the program.
pub struct Offload {
    // Keeps the program and its TCX links alive.
    _ebpf: aya::Ebpf,
    c2p: BpfHashMap<MapData, C2pKey, C2pVal>,
    p2c: BpfHashMap<MapData, P2cKey, P2cVal>,
    c2p6: BpfHashMap<MapData, C2p6Key, C2p6Val>,
    p2c6: BpfHashMap<MapData, P2c6Key, P2c6Val>,
    counters: PerCpuArray<MapData, Counter>,
    allocs: BpfHashMap<MapData, u32, AllocVal>,
    /// Per allocation id and CPU: what the program relayed for it.
    alloc_stats: PerCpuHashMap<MapData, u32, AllocStats>,
    /// Kept open: XDP's transmit interfaces (filled once at start).
    _xdp_egress: DevMapHash<MapData>,
    /// Per allocation: its id in `ALLOCS` and the entries it has in the kernel.
    installed: HashMap<AllocKey, (u32, Vec<Keys>)>,
    /// Ids of `ALLOCS` not in use (below `next_id`).
    free_ids: Vec<u32>,
    next_id: u32,
    /// CPUs the per-CPU maps hold a value for.
    nr_cpus: usize,
    /// Bytes per second per allocation, both directions (0: unlimited).
    bandwidth: u64,
    interfaces: Vec<String>,
    /// The hook of each of `interfaces`, in order.
    hooks: Vec<Hook>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("interfaces", &self.interfaces)
            .field("hooks", &self.hooks)
            .field("allocations", &self.installed.len())
            .finish()
    }
}

/// The entry points in the object: one relay, one per hook.
const TC_PROGRAM: &str = "channel_data_ingress";
const XDP_PROGRAM: &str = "channel_data_xdp";

impl Offload {
    /// Loads the program and attaches it to `interfaces` (empty: every interface but `lo`)
    /// with the hook `mode` asks for ([`Mode::Auto`]: XDP where a NIC's driver takes native
    /// XDP, TC on virtual interfaces such as veth and where XDP fails, logged per interface); each allocation may relay `bandwidth` payload
    /// bytes per second through it (0: unlimited). `Err` says why the relay stays in
    /// userspace.
    pub fn start(mode: Mode, interfaces: &[String], bandwidth: u64) -> Result<Self, Unavailable> {
        let (want_xdp, want_tc) = match mode {
            Mode::Off => return Err(Unavailable::new(Fallback::Disabled, "offload = \"off\"")),
            Mode::Auto => (true, true),
            Mode::Xdp => (true, false),
            Mode::Tc => (false, true),
        };
        built()?;
        permitted()?;
        let interfaces = if interfaces.is_empty() {
            all_interfaces()
        } else {
            interfaces.to_vec()
        };
        if interfaces.is_empty() {
            return Err(Unavailable::new(
                Fallback::Interface,
                "no network interface but lo",
            ));
        }
        let off: Vec<&String> = interfaces.iter().filter(|i| !forwarding(i)).collect();
        if !off.is_empty() {
            return Err(Unavailable::new(
                Fallback::ForwardingDisabled,
                format!(
                    "net.ipv4.conf.<interface>.forwarding is 0 on {off:?}: the program routes relayed packets with bpf_fib_lookup, which needs it (docs/offload.md)"
                ),
            ));
        }
        let mut ebpf = aya::Ebpf::load(OBJECT).map_err(|e| Unavailable::load("loading", &e))?;
        if want_xdp {
            xdp_program(&mut ebpf)?
                .load()
                .map_err(|e| Unavailable::load("verifier (XDP)", &e))?;
        }
        if want_tc {
            tc_program(&mut ebpf)?
                .load()
                .map_err(|e| Unavailable::load("verifier (TC)", &e))?;
        }
        let map = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Unavailable::new(Fallback::Kernel, format!("map {name} missing")))
        };
        let mut xdp_egress = DevMapHash::try_from(map(&mut ebpf, "XDP_EGRESS")?)
            .map_err(|e| Unavailable::load("XDP_EGRESS", &e))?;
        let mut hooks = Vec::with_capacity(interfaces.len());
        for i in &interfaces {
            let index = ifindex(i).ok_or_else(|| {
                Unavailable::new(Fallback::Interface, format!("no interface {i}"))
            })?;
            // Under `auto`, XDP only on a device with a driver of its own (a NIC,
            // virtio_net): a frame XDP redirects out of a virtual one (veth: every
            // container) is dropped unless the far end, which we do not control, runs
            // XDP or GRO — TC there never loses a packet.
            let try_xdp = want_xdp && (!want_tc || has_device(i));
            // And only where the interface can also send what the other interfaces' XDP
            // redirects to it (the kernel's NDO_XMIT feature): otherwise those frames
            // would be dropped silently — under `xdp` too.
            let can_transmit = try_xdp && xdp_features::ndo_xmit(index) != Some(false);
            if try_xdp && !can_transmit {
                let detail = format!(
                    "{i} cannot transmit redirected XDP frames (NETDEV_XDP_ACT_NDO_XMIT off: a veth whose peer has neither GRO nor an XDP program, or a driver without ndo_xdp_xmit)"
                );
                if !want_tc {
                    return Err(Unavailable::new(Fallback::XdpUnsupported, detail));
                }
                tracing::info!(interface = %i, %detail, "the offload uses TC there");
            }
            let hook = if can_transmit {
                match xdp_program(&mut ebpf)?.attach_to_if_index(index, XdpMode::Driver) {
                    Ok(_) => Some(Hook::Xdp),
                    Err(e) => {
                        let u = Unavailable::load(&format!("attaching XDP (native) to {i}"), &e);
                        if u.reason == Fallback::NoPermission {
                            return Err(u);
                        }
                        if !want_tc {
                            return Err(Unavailable::new(Fallback::XdpUnsupported, u.detail));
                        }
                        tracing::info!(interface = %i, detail = %u.detail, "no native XDP on this interface: the offload uses TC there");
                        None
                    }
                }
            } else {
                None
            };
            let hook = match hook {
                Some(h) => h,
                None => {
                    tc_program(&mut ebpf)?
                        .attach(i, TcAttachType::Ingress)
                        .map_err(|e| {
                            let u = Unavailable::load(&format!("attaching to {i}"), &e);
                            match u.reason {
                                Fallback::NoPermission => u,
                                _ => Unavailable::new(Fallback::Interface, u.detail),
                            }
                        })?;
                    Hook::Tc
                }
            };
            if hook == Hook::Xdp {
                xdp_egress
                    .insert(index, index, None, 0)
                    .map_err(|e| Unavailable::load("XDP_EGRESS", &e))?;
            }
            tracing::info!(interface = %i, hook = hook.label(), "kernel offload attached");
            hooks.push(hook);
        }
        let c2p = BpfHashMap::try_from(map(&mut ebpf, "CLIENT_TO_PEER")?)
            .map_err(|e| Unavailable::load("CLIENT_TO_PEER", &e))?;
        let p2c = BpfHashMap::try_from(map(&mut ebpf, "PEER_TO_CLIENT")?)
            .map_err(|e| Unavailable::load("PEER_TO_CLIENT", &e))?;
        let c2p6 = BpfHashMap::try_from(map(&mut ebpf, "CLIENT_TO_PEER6")?)
            .map_err(|e| Unavailable::load("CLIENT_TO_PEER6", &e))?;
        let p2c6 = BpfHashMap::try_from(map(&mut ebpf, "PEER_TO_CLIENT6")?)
            .map_err(|e| Unavailable::load("PEER_TO_CLIENT6", &e))?;
        let counters = PerCpuArray::try_from(map(&mut ebpf, "COUNTERS")?)
            .map_err(|e| Unavailable::load("COUNTERS", &e))?;
        let allocs = BpfHashMap::try_from(map(&mut ebpf, "ALLOCS")?)
            .map_err(|e| Unavailable::load("ALLOCS", &e))?;
        let alloc_stats = PerCpuHashMap::try_from(map(&mut ebpf, "ALLOC_STATS")?)
            .map_err(|e| Unavailable::load("ALLOC_STATS", &e))?;
        let nr_cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| Unavailable::new(Fallback::Kernel, format!("{what}: {e}")))?;
        Ok(Self {
            _ebpf: ebpf,
            c2p,
            p2c,
            c2p6,
            p2c6,
            counters,
            allocs,
            alloc_stats,
            nr_cpus,
            _xdp_egress: xdp_egress,
            installed: HashMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
            bandwidth,
            interfaces,
            hooks,
        })
    }

    /// Each interface the program is attached to, with its hook.
    pub fn hooks(&self) -> impl Iterator<Item = (&str, Hook)> {
        self.interfaces
            .iter()
            .map(String::as_str)
            .zip(self.hooks.iter().copied())
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Number of allocations with bindings in the kernel.
    pub fn allocations(&self) -> usize {
        self.installed.len()
    }

    /// Makes the kernel hold exactly `bindings` for allocation `alloc` (empty: none, the
    /// allocation is gone). Bindings the program cannot relay (client and peer sides of
    /// different families, a wildcard listener) are left to userspace. A binding whose
    /// insert fails (map full) stays in userspace too.
    ///
    /// When the allocation leaves the kernel (no binding left), returns what the program
    /// relayed for it in all ([`Offload::allocation_counters`] until then).
    pub fn sync(&mut self, alloc: AllocKey, bindings: &[Binding]) -> Option<AllocCounters> {
        if bindings.is_empty() && !self.installed.contains_key(&alloc) {
            return None; // nothing in the kernel, nothing to add
        }
        let (now_ns, now) = (monotonic_ns(), Instant::now());
        let (id, old) = match self.installed.remove(&alloc) {
            Some((id, old)) => (id, old),
            None => match self.new_id() {
                Some(id) => (id, Vec::new()),
                None => return None,
            },
        };
        let mut keep = Vec::with_capacity(bindings.len());
        for b in bindings {
            let Some(e) = entries(b, id, now_ns, now) else {
                continue;
            };
            if self.insert(&e) {
                keep.push(e.keys());
            } else {
                tracing::debug!(
                    channel = b.channel,
                    "offload map full: binding stays in userspace"
                );
                self.remove(&e.keys());
            }
        }
        for k in &old {
            if !keep.contains(k) {
                self.remove(k);
            }
        }
        if keep.is_empty() {
            // Its bindings are gone from the maps: the id, its bucket and its counters can
            // go (read last: no entry can count any more).
            let total = self.stats(id);
            let _ = self.allocs.remove(&id);
            let _ = self.alloc_stats.remove(&id);
            self.free_ids.push(id);
            Some(total)
        } else {
            self.installed.insert(alloc, (id, keep));
            None
        }
    }

    /// What the program relayed for allocation `alloc` so far, while it has bindings in
    /// the kernel (`None` otherwise).
    pub fn allocation_counters(&self, alloc: &AllocKey) -> Option<AllocCounters> {
        self.installed.get(alloc).map(|(id, _)| self.stats(*id))
    }

    /// Counts `bytes` payload bytes relayed in userspace for allocation `alloc` against its
    /// kernel bucket (while it has bindings in the kernel and `bandwidth` is set), so the
    /// kernel's share shrinks by what the other path took — down to nothing for up to a
    /// second, as a bucket emptied in the kernel. A read, then a write: a packet the
    /// program relays in between is not charged to the bucket (one packet's cost, at most
    /// per call).
    pub fn charge(&mut self, alloc: &AllocKey, bytes: u64) {
        let Some(&(id, _)) = self.installed.get(alloc) else {
            return;
        };
        if self.bandwidth == 0 || bytes == 0 {
            return;
        }
        let Ok(mut v) = self.allocs.get(&id, 0) else {
            return;
        };
        const NS: u64 = 1_000_000_000;
        let now = monotonic_ns();
        let cost = bytes.saturating_mul(NS) / v.rate.max(1);
        v.tat = v.tat.max(now).saturating_add(cost).min(now + NS);
        let _ = self.allocs.insert(id, v, 0);
    }

    fn stats(&self, id: u32) -> AllocCounters {
        let Ok(per_cpu) = self.alloc_stats.get(&id, 0) else {
            return AllocCounters::default();
        };
        per_cpu
            .iter()
            .fold(AllocCounters::default(), |t, s| AllocCounters {
                to_peer_packets: t.to_peer_packets.wrapping_add(s.packets[0]),
                to_peer_bytes: t.to_peer_bytes.wrapping_add(s.bytes[0]),
                to_client_packets: t.to_client_packets.wrapping_add(s.packets[1]),
                to_client_bytes: t.to_client_bytes.wrapping_add(s.bytes[1]),
            })
    }

    fn insert(&mut self, e: &Entry) -> bool {
        match *e {
            Entry::V4(ck, cv, pk, pv) => {
                self.c2p.insert(ck, cv, 0).is_ok() && self.p2c.insert(pk, pv, 0).is_ok()
            }
            Entry::V6(ck, cv, pk, pv) => {
                self.c2p6.insert(ck, cv, 0).is_ok() && self.p2c6.insert(pk, pv, 0).is_ok()
            }
        }
    }

    fn remove(&mut self, k: &Keys) {
        match k {
            Keys::V4(ck, pk) => {
                let _ = self.c2p.remove(ck);
                let _ = self.p2c.remove(pk);
            }
            Keys::V6(ck, pk) => {
                let _ = self.c2p6.remove(ck);
                let _ = self.p2c6.remove(pk);
            }
        }
    }

    /// A free `ALLOCS` id with a fresh bucket (full: `bandwidth` bytes may go at once, as
    /// in userspace), or `None` when the map is full (the bindings stay in userspace).
    fn new_id(&mut self) -> Option<u32> {
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id = self.next_id.checked_add(1)?;
                id
            }
        };
        // A fresh counter entry (zero on every CPU): without one the allocation's packets
        // would be relayed but not counted as its own, so no entry, no offload.
        let zero = PerCpuValues::try_from(vec![AllocStats::default(); self.nr_cpus]);
        let counted = zero.is_ok_and(|z| self.alloc_stats.insert(id, z, 0).is_ok());
        let limited = self.bandwidth == 0
            || self
                .allocs
                .insert(
                    id,
                    AllocVal {
                        tat: 0,
                        rate: self.bandwidth,
                    },
                    0,
                )
                .is_ok();
        if counted && limited {
            Some(id)
        } else {
            let _ = self.alloc_stats.remove(&id);
            self.free_ids.push(id);
            None
        }
    }

    /// Removes every binding (drain, shutdown).
    pub fn clear(&mut self) {
        let all: Vec<AllocKey> = self.installed.keys().copied().collect();
        for a in all {
            self.sync(a, &[]);
        }
    }

    /// What the program relayed since it was loaded, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let sum = |i: u32| {
            self.counters
                .get(&i, 0)
                .map(|v| {
                    v.iter().fold((0u64, 0u64), |(p, b), c| {
                        (p.wrapping_add(c.packets), b.wrapping_add(c.bytes))
                    })
                })
                .unwrap_or_default()
        };
        let (tp, tb) = sum(0);
        let (cp, cb) = sum(1);
        let (drops, _) = sum(2);
        let passed = [3, 4, 5, 6].map(|i| sum(i).0);
        Counters {
            to_peer_packets: tp,
            to_peer_bytes: tb,
            to_client_packets: cp,
            to_client_bytes: cb,
            bandwidth_drops: drops,
            passed,
        }
    }
}

fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, Unavailable> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or_else(|| Unavailable::new(Fallback::Kernel, "XDP program missing from object"))?
        .try_into()
        .map_err(|e| Unavailable::load("program type", &e))
}

fn tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, Unavailable> {
    ebpf.program_mut(TC_PROGRAM)
        .ok_or_else(|| Unavailable::new(Fallback::Kernel, "TC program missing from object"))?
        .try_into()
        .map_err(|e| Unavailable::load("program type", &e))
}

/// The interface's index, from /sys/class/net.
fn ifindex(interface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The addresses whose interfaces the offload attaches to when none are configured: the
/// UDP `listen` addresses and the relay addresses. A wildcard listener (for
/// [`interfaces_with`]: every address of its family) counts only beside a relay address
/// that is not loopback, so a stack on loopback (every test, a laptop) attaches to
/// nothing, never to the machine's other interfaces.
pub fn attach_addresses(listen: &[SocketAddr], relay: &[IpAddr]) -> Vec<IpAddr> {
    let public_relay = relay.iter().any(|r| !r.is_loopback());
    let mut v: Vec<IpAddr> = listen
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_unspecified() || public_relay)
        .collect();
    v.extend(relay);
    v
}

/// The interfaces but `lo` that carry one of `addrs`, sorted: where packets to our
/// listener and relayed addresses arrive. A wildcard in `addrs` (a wildcard listener)
/// stands for every address of its family but loopback and, for IPv6, link-local ones.
/// Empty when all of them are on `lo`.
pub fn interfaces_with(addrs: &[IpAddr]) -> Vec<String> {
    let wanted = |ip: &IpAddr| {
        addrs.contains(ip)
            || match ip {
                IpAddr::V4(a) => {
                    !a.is_loopback() && addrs.contains(&IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                }
                IpAddr::V6(a) => {
                    !a.is_loopback()
                        && !a.is_unicast_link_local()
                        && addrs.contains(&IpAddr::V6(Ipv6Addr::UNSPECIFIED))
                }
            }
    };
    let mut v: Vec<String> = abi::interface_addresses()
        .into_iter()
        .filter(|(name, ip)| name != "lo" && wanted(ip))
        .map(|(name, _)| name)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Turns `UDP_GRO` off on a UDP listener. With GRO on the interface (the default on
/// NICs) the kernel merges a client's back-to-back datagrams into one buffer for a
/// socket that asked for UDP_GRO *before* TC sees them, and the program passes merged
/// packets to userspace: a TC hook would then see the bursts of every client as one
/// packet it cannot relay. Without the option the datagrams reach TC one by one.
pub fn udp_gro_off(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    abi::udp_gro_off(sock)
}

/// The local address the kernel sends from toward `to`: the source of a wildcard
/// listener's datagrams to that client (they carry no chosen source), so the address its
/// packets to us arrive at on a host with one address per family. `None` when there is no
/// route.
pub fn source_toward(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Every interface in /sys/class/net but `lo`, sorted.
fn all_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether `interface` is backed by a device with a driver (a NIC, virtio_net) rather than
/// being a virtual one (veth, bridge, tun, bond, …): only the former has
/// `/sys/class/net/<interface>/device`.
fn has_device(interface: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{interface}/device")).exists()
}

/// Whether IPv4 forwarding is on for `interface` (a missing interface reads as on: the
/// attach reports it).
fn forwarding(interface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"))
        .map_or(true, |v| v.trim() != "0")
}

fn v4(a: SocketAddr) -> Option<(u32, u16)> {
    match a.ip() {
        IpAddr::V4(ip) => Some((ne(ip), a.port().to_be())),
        IpAddr::V6(ip) => ip.to_ipv4_mapped().map(|ip| (ne(ip), a.port().to_be())),
    }
}

/// The address as the program reads it from the packet (network order in memory).
fn ne(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// IPv6 (not v4-mapped) address and port as the program reads them from the packet.
fn v6(a: SocketAddr) -> Option<([u32; 4], u16)> {
    match a.ip() {
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none() => Some((ne6(ip), a.port().to_be())),
        _ => None,
    }
}

fn ne6(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The two map entries of one binding, or `None` when the program cannot relay it: its
/// four addresses must be of one family, and the listener address a specific one.
fn entries(b: &Binding, alloc: u32, now_ns: u64, now: Instant) -> Option<Entry> {
    // Read the kernel clock before `now`, so the deadline errs early, never late.
    let left = u64::try_from(b.expires.saturating_duration_since(now).as_nanos()).ok()?;
    if left == 0 {
        return None;
    }
    let expires_ns = now_ns.saturating_add(left);
    let channel = b.channel.to_be();
    if let (Some(c), Some(s), Some(r), Some(p)) =
        (v4(b.client), v4(b.server), v4(b.relay), v4(b.peer))
    {
        // A wildcard listener: the packet's destination never matches it.
        if s.0 == 0 {
            return None;
        }
        return Some(Entry::V4(
            C2pKey {
                client_ip: c.0,
                server_ip: s.0,
                client_port: c.1,
                server_port: s.1,
                channel,
                pad: 0,
            },
            C2pVal {
                relay_ip: r.0,
                peer_ip: p.0,
                relay_port: r.1,
                peer_port: p.1,
                alloc,
                expires_ns,
            },
            P2cKey {
                peer_ip: p.0,
                relay_ip: r.0,
                peer_port: p.1,
                relay_port: r.1,
            },
            P2cVal {
                server_ip: s.0,
                client_ip: c.0,
                server_port: s.1,
                client_port: c.1,
                channel,
                pad: 0,
                alloc,
                pad2: 0,
                expires_ns,
            },
        ));
    }
    let (c, s, r, p) = (v6(b.client)?, v6(b.server)?, v6(b.relay)?, v6(b.peer)?);
    if s.0 == [0; 4] {
        return None;
    }
    Some(Entry::V6(
        C2p6Key {
            client_ip: c.0,
            server_ip: s.0,
            client_port: c.1,
            server_port: s.1,
            channel,
            pad: 0,
        },
        C2p6Val {
            relay_ip: r.0,
            peer_ip: p.0,
            relay_port: r.1,
            peer_port: p.1,
            alloc,
            expires_ns,
        },
        P2c6Key {
            peer_ip: p.0,
            relay_ip: r.0,
            peer_port: p.1,
            relay_port: r.1,
        },
        P2c6Val {
            server_ip: s.0,
            client_ip: c.0,
            server_port: s.1,
            client_port: c.1,
            channel,
            pad: 0,
            alloc,
            pad2: 0,
            expires_ns,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn binding(expires: Instant) -> Binding {
        Binding {
            client: "10.0.1.2:5000".parse().unwrap(),
            server: "10.0.1.1:3478".parse().unwrap(),
            relay: "10.0.2.1:50000".parse().unwrap(),
            peer: "10.0.2.2:6000".parse().unwrap(),
            channel: 0x4001,
            expires,
        }
    }

    #[test]
    fn entries_are_in_network_order_and_expire_early_not_late() {
        let now = Instant::now();
        let b = binding(now + Duration::from_secs(10));
        let Some(Entry::V4(ck, cv, pk, pv)) = entries(&b, 7, 1_000, now) else {
            panic!("not an IPv4 entry")
        };
        assert_eq!(ck.client_ip.to_ne_bytes(), [10, 0, 1, 2]);
        assert_eq!(ck.server_port.to_ne_bytes(), 3478u16.to_be_bytes());
        assert_eq!(ck.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(cv.peer_port.to_ne_bytes(), 6000u16.to_be_bytes());
        assert_eq!(pk.relay_ip.to_ne_bytes(), [10, 0, 2, 1]);
        assert_eq!(pv.client_port.to_ne_bytes(), 5000u16.to_be_bytes());
        assert_eq!(cv.expires_ns, 1_000 + 10_000_000_000);
        assert_eq!(pv.expires_ns, cv.expires_ns);
        assert_eq!((cv.alloc, pv.alloc), (7, 7));
    }

    #[test]
    fn expired_mixed_family_and_wildcard_bindings_are_not_offloaded() {
        let now = Instant::now();
        assert!(entries(&binding(now), 0, 1, now).is_none());
        let mut b = binding(now + Duration::from_secs(1));
        b.peer = "[2001:db8::2]:6000".parse().unwrap();
        assert!(entries(&b, 0, 1, now).is_none(), "IPv4 client, IPv6 peer");
        let mut b = binding(now + Duration::from_secs(1));
        b.server = "0.0.0.0:3478".parse().unwrap();
        assert!(entries(&b, 0, 1, now).is_none(), "wildcard listener");
    }

    #[test]
    fn ipv6_entries_are_in_network_order() {
        let now = Instant::now();
        let b = Binding {
            client: "[2001:db8:1::2]:5000".parse().unwrap(),
            server: "[2001:db8:1::1]:3478".parse().unwrap(),
            relay: "[2001:db8:2::1]:50000".parse().unwrap(),
            peer: "[2001:db8:2::2]:6000".parse().unwrap(),
            channel: 0x4001,
            expires: now + Duration::from_secs(1),
        };
        let Some(Entry::V6(ck, cv, pk, pv)) = entries(&b, 3, 5, now) else {
            panic!("not an IPv6 entry")
        };
        assert_eq!(ck.client_ip[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(ck.client_ip[3].to_ne_bytes(), [0, 0, 0, 2]);
        assert_eq!(ck.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(cv.peer_ip[3].to_ne_bytes(), [0, 0, 0, 2]);
        assert_eq!(pk.relay_port.to_ne_bytes(), 50000u16.to_be_bytes());
        assert_eq!((pv.alloc, pv.expires_ns), (3, 5 + 1_000_000_000));
        // v4-mapped addresses are IPv4 on the wire
        let mut m = binding(now + Duration::from_secs(1));
        m.client = "[::ffff:10.0.1.2]:5000".parse().unwrap();
        assert!(matches!(entries(&m, 0, 1, now), Some(Entry::V4(..))));
    }

    #[test]
    fn effective_capabilities_come_from_the_status_text() {
        let status = "Name:\tturn-server\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\nCapEff:\t0000008000001000\n";
        let eff = effective_caps(status).unwrap();
        assert_eq!(eff, (1 << 39) | (1 << 12), "CAP_BPF and CAP_NET_ADMIN");
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn loopback_addresses_give_no_interface() {
        let lo: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(interfaces_with(&lo), Vec::<String>::new());
        // a wildcard stands for the addresses of its family that are not loopback (IPv6:
        // nor link-local), whichever this machine has
        let mut v4: Vec<String> = abi::interface_addresses()
            .into_iter()
            .filter(|(n, ip)| n != "lo" && ip.is_ipv4() && !ip.is_loopback())
            .map(|(n, _)| n)
            .collect();
        v4.sort();
        v4.dedup();
        assert_eq!(interfaces_with(&["0.0.0.0".parse().unwrap()]), v4);
    }

    #[test]
    fn a_wildcard_listener_counts_only_beside_a_relay_address_off_loopback() {
        let wild: [SocketAddr; 2] = [
            "0.0.0.0:3478".parse().unwrap(),
            "[::]:3478".parse().unwrap(),
        ];
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(attach_addresses(&wild, &[lo]), vec![lo]);
        assert_eq!(
            attach_addresses(&wild, &[public]),
            vec![wild[0].ip(), wild[1].ip(), public]
        );
        let specific: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(attach_addresses(&[specific], &[lo]), vec![lo, lo]);
    }

    #[test]
    fn udp_gro_goes_off_on_udp_sockets_only() {
        use std::os::fd::AsFd;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp_gro_off(udp.as_fd()).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(udp_gro_off(tcp.as_fd()).is_err(), "UDP_GRO on a TCP socket");
    }

    #[test]
    fn modes_parse_from_their_labels() {
        for m in [Mode::Auto, Mode::Xdp, Mode::Tc, Mode::Off] {
            assert_eq!(Mode::parse(m.label()), Some(m));
        }
        assert_eq!(Mode::parse("on"), None);
    }

    #[test]
    fn off_falls_back_with_its_reason() {
        assert_eq!(
            Offload::start(Mode::Off, &[], 0).unwrap_err().reason,
            Fallback::Disabled
        );
        assert_eq!(Fallback::ForwardingDisabled.label(), "forwarding_disabled");
        assert_eq!(Fallback::XdpUnsupported.label(), "xdp_unsupported");
        assert_eq!((Hook::Xdp.label(), Hook::Tc.label()), ("xdp", "tc"));
    }
}
