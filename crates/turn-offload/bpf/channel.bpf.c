// SPDX-License-Identifier: MIT OR Apache-2.0
// callrelay turn-server: fast path for UDP ChannelData over IPv4 and IPv6, at XDP (native)
// or TC (TCX ingress): one relay, two entry points.
//
// Userspace (crates/turn-offload) is the authority: it installs one entry per direction for
// every live channel binding and removes it when the binding, its permission or its
// allocation goes. Every entry carries the CLOCK_MONOTONIC instant it stops being valid, so
// a packet that arrives after expiry passes to userspace (which drops it) even before
// userspace removed the entry. Anything this program is unsure of passes unchanged
// (XDP_PASS / TC_ACT_OK): IP options, fragments, GSO packets, ChannelData whose length does not fill
// the datagram exactly, checksums the sender left to the device (CHECKSUM_PARTIAL), and
// destinations the FIB cannot forward to (local ones, unresolved neighbours).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

// Layout shared with crates/turn-offload/src/maps.rs (addresses and ports in network order).
struct c2p_key {
	__u32 client_ip;
	__u32 server_ip;
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
};
struct c2p_val {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
	__u32 alloc; // key of ALLOCS
	__u64 expires_ns;
};
struct p2c_key {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
};
struct p2c_val {
	__u32 server_ip;
	__u32 client_ip;
	__u16 server_port;
	__u16 client_port;
	__u16 channel;
	__u16 pad;
	__u32 alloc; // key of ALLOCS
	__u32 pad2;
	__u64 expires_ns;
};
// One allocation's share of `bandwidth` (both directions together, payload bytes), as a
// GCRA: `tat` is the theoretical arrival time, at most 1 s (the userspace bucket's burst,
// `rate` bytes) ahead of now. No entry: no limit.
struct alloc_val {
	__u64 tat;
	__u64 rate;
};
struct counter {
	__u64 packets;
	__u64 bytes;
};
// The same for IPv6 (both the client's 5-tuple and the peer's side in IPv6).
struct c2p6_key {
	__u32 client_ip[4];
	__u32 server_ip[4];
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
};
struct c2p6_val {
	__u32 relay_ip[4];
	__u32 peer_ip[4];
	__u16 relay_port;
	__u16 peer_port;
	__u32 alloc;
	__u64 expires_ns;
};
struct p2c6_key {
	__u32 peer_ip[4];
	__u32 relay_ip[4];
	__u16 peer_port;
	__u16 relay_port;
};
struct p2c6_val {
	__u32 server_ip[4];
	__u32 client_ip[4];
	__u16 server_port;
	__u16 client_port;
	__u16 channel;
	__u16 pad;
	__u32 alloc;
	__u32 pad2;
	__u64 expires_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct c2p_key);
	__type(value, struct c2p_val);
} CLIENT_TO_PEER SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct p2c_key);
	__type(value, struct p2c_val);
} PEER_TO_CLIENT SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct c2p6_key);
	__type(value, struct c2p6_val);
} CLIENT_TO_PEER6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct p2c6_key);
	__type(value, struct p2c6_val);
} PEER_TO_CLIENT6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct alloc_val);
} ALLOCS SEC(".maps");

// Index 0: client -> peer, 1: peer -> client (payload bytes, as userspace counts them);
// 2: packets dropped over an allocation's bandwidth; 3-6: packets of an installed binding
// passed to userspace, by reason (PASS_*). Bytes are counted for 0 and 1 only.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 7);
	__type(key, __u32);
	__type(value, struct counter);
} COUNTERS SEC(".maps");

// Per allocation (key of ALLOCS) and CPU: what the program relayed for it, [0] client ->
// peer, [1] peer -> client (payload bytes). Userspace creates the entry with the
// allocation's id and reads it back (its bandwidth bucket and its totals), then deletes it.
struct alloc_stats {
	__u64 packets[2];
	__u64 bytes[2];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct alloc_stats);
} ALLOC_STATS SEC(".maps");

// Scratch space for checking a datagram's checksum in full (one chunk per CPU).
#define CSUM_CHUNK 256
#define CSUM_CHUNKS 8 // datagrams up to 2048 bytes are checked; longer ones pass up
struct csum_scratch {
	__u8 b[CSUM_CHUNK];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_scratch);
} CSUM_SCRATCH SEC(".maps");

// XDP only: the interfaces a relayed frame may leave by (ifindex -> that interface), the
// ones the XDP entry point is attached to natively (their drivers transmit XDP frames).
// A frame whose route leaves by another interface passes to userspace unchanged.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} XDP_EGRESS SEC(".maps");

#define ETH_LEN 14
#define IP_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define CD_LEN 4
#define L4_OFF (ETH_LEN + IP_LEN)
#define L4_OFF6 (ETH_LEN + IP6_LEN)
#define RELAY_TTL 64
#define NS_PER_S 1000000000ULL
// Why a packet of an installed binding went to userspace (COUNTERS index).
#define PASS_EXPIRED 3
#define PASS_NO_ROUTE 4
#define PASS_CHECKSUM 5
#define PASS_ROOM 6

// The hook a copy of the relay runs at. Every function below takes it as a constant
// argument and is inlined into the two entry points at the end, so each holds only its own
// hook's calls: one relay, two thin entry points.
#define TC 0
#define XDP 1

// "Not mine, or not sure": the packet goes on to the stack (and userspace) unchanged.
static __always_inline int verdict_pass(int hook)
{
	return hook == XDP ? XDP_PASS : TC_ACT_OK;
}

static __always_inline int verdict_drop(int hook)
{
	return hook == XDP ? XDP_DROP : TC_ACT_SHOT;
}

static __always_inline long load(void *ctx, int hook, __u32 off, void *to, __u32 len)
{
	if (hook == XDP)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

// Writes `len` bytes at the packet's start (the rewritten Ethernet, IP and UDP headers).
static __always_inline long store(void *ctx, int hook, void *from, __u32 len)
{
	if (hook == XDP)
		return bpf_xdp_store_bytes(ctx, 0, from, len);
	return bpf_skb_store_bytes(ctx, 0, from, len, BPF_F_RECOMPUTE_CSUM);
}

// Grows (delta > 0) or shrinks the packet by |delta| bytes: TC inserts or removes them
// right after the IP header, XDP at the frame's start. Either way the caller then writes
// every header from offset 0, and the payload ends up right behind them.
static __always_inline long resize(void *ctx, int hook, int delta)
{
	if (hook == XDP)
		return bpf_xdp_adjust_head(ctx, -delta);
	return bpf_skb_adjust_room(ctx, delta, BPF_ADJ_ROOM_NET, 0);
}

// The frame's length from the Ethernet header on (all fragments at XDP).
static __always_inline __u32 frame_len(void *ctx, int hook)
{
	if (hook == XDP)
		return bpf_xdp_get_buff_len(ctx);
	return ((struct __sk_buff *)ctx)->len;
}

static __always_inline __u32 ingress_ifindex(void *ctx, int hook)
{
	if (hook == XDP)
		return ((struct xdp_md *)ctx)->ingress_ifindex;
	return ((struct __sk_buff *)ctx)->ingress_ifindex;
}

// Whether a relayed packet may leave by `ifindex`: at XDP only by an interface in
// XDP_EGRESS (a redirect to a device without XDP transmit would drop the frame).
static __always_inline int egress_ok(int hook, __u32 ifindex)
{
	if (hook == XDP)
		return bpf_map_lookup_elem(&XDP_EGRESS, &ifindex) != 0;
	return 1;
}

static __always_inline int transmit(int hook, __u32 ifindex)
{
	if (hook == XDP)
		return bpf_redirect_map(&XDP_EGRESS, ifindex, 0);
	return bpf_redirect(ifindex, 0);
}

// The headers a relayed packet leaves with, written in one store from `eth` on. `pad` puts
// the IP header on a 4-byte boundary of the stack (the verifier wants aligned accesses).
struct out4 {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__u16 channel; // ChannelData header (peer -> client only)
	__u16 len;
};
struct out6 {
	__u16 pad;
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct udphdr udp;
	__u16 channel;
	__u16 len;
};
#define OUT4_LEN (ETH_LEN + IP_LEN + UDP_LEN)
#define OUT6_LEN (ETH_LEN + IP6_LEN + UDP_LEN)

static __always_inline __u32 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

// Whether the UDP datagram at `l4_off` (`ulen` bytes, header included) carries a valid
// checksum, `pseudo` being its pseudo-header sum: sums all of it, 256-byte chunks first,
// then the tail in 32-bit words and its last 1-3 bytes (zero-padded, as the checksum pads
// them). Every load has a constant size, which the verifier can check.
static __always_inline int csum_valid(void *ctx, int hook, __u32 l4_off, __u32 ulen,
				      __u32 pseudo)
{
	__u32 zero = 0;
	struct csum_scratch *sc = bpf_map_lookup_elem(&CSUM_SCRATCH, &zero);
	if (!sc || ulen > CSUM_CHUNK * CSUM_CHUNKS)
		return 0;
	__u64 sum = pseudo;
	__u32 full = ulen / CSUM_CHUNK;
	for (int i = 0; i < CSUM_CHUNKS; i++) {
		if (i >= full)
			break;
		if (load(ctx, hook, l4_off + i * CSUM_CHUNK, sc->b, CSUM_CHUNK) < 0)
			return 0;
		__s64 c = bpf_csum_diff(0, 0, (__be32 *)sc->b, CSUM_CHUNK, 0);
		if (c < 0)
			return 0;
		sum += (__u32)c;
	}
	__u32 off = l4_off + full * CSUM_CHUNK;
	__u32 tail = ulen % CSUM_CHUNK;
	__u32 words = tail / 4;
	for (int j = 0; j < CSUM_CHUNK / 4; j++) {
		if (j >= words)
			break;
		__u32 w;
		if (load(ctx, hook, off + j * 4, &w, 4) < 0)
			return 0;
		sum += w;
	}
	off += words * 4;
	__u32 rest = 0;
	switch (tail & 3) {
	case 1:
		if (load(ctx, hook, off, &rest, 1) < 0)
			return 0;
		break;
	case 2:
		if (load(ctx, hook, off, &rest, 2) < 0)
			return 0;
		break;
	case 3:
		if (load(ctx, hook, off, &rest, 3) < 0)
			return 0;
		break;
	}
	sum += rest;
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return fold((__u32)sum) == 0xffff;
}

// The UDP checksum field of a CHECKSUM_PARTIAL packet holds the folded pseudo-header sum
// (the device finishes it). A real checksum equals that with probability 2^-16: only then
// is the datagram summed in full, and relayed if its checksum is valid after all.
static __always_inline int partial_csum(void *ctx, int hook, const struct iphdr *ip,
					const struct udphdr *udp)
{
	__u32 s = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
		  (ip->daddr >> 16) + bpf_htons(IPPROTO_UDP) + udp->len;
	if (udp->check != (__u16)fold(s))
		return 0;
	return !csum_valid(ctx, hook, L4_OFF, bpf_ntohs(udp->len), s);
}

static __always_inline void count(__u32 dir, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&COUNTERS, &dir);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

// A relayed packet: the totals per direction and the allocation's own (dir 0 or 1).
static __always_inline void relayed(__u32 alloc, __u32 dir, __u64 bytes)
{
	count(dir, bytes);
	struct alloc_stats *a = bpf_map_lookup_elem(&ALLOC_STATS, &alloc);
	if (a && dir < 2) {
		a->packets[dir] += 1;
		a->bytes[dir] += bytes;
	}
}

// Whether allocation `alloc` may relay `len` more payload bytes now. Lock-free: the
// update is a compare-and-swap; after losing it twice to other CPUs the packet passes.
static __always_inline int within_bandwidth(__u32 alloc, __u64 len)
{
	struct alloc_val *a = bpf_map_lookup_elem(&ALLOCS, &alloc);
	if (!a || !a->rate)
		return 1;
	__u64 cost = len * NS_PER_S / a->rate;
	__u64 now = bpf_ktime_get_ns();
#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u64 old = a->tat;
		__u64 t = old > now ? old : now;
		if (t + cost > now + NS_PER_S)
			return 0;
		if (__sync_val_compare_and_swap(&a->tat, old, t + cost) == old)
			return 1;
	}
	return 1;
}

static __always_inline int pass(int hook, __u32 reason)
{
	count(reason, 0);
	return verdict_pass(hook);
}

// Where a packet from `src` to `dst` leaves: interface and MAC addresses, or < 0.
static __always_inline int route(void *ctx, int hook, __u32 src, __u32 dst, __u16 tot_len,
				 struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ingress_ifindex(ctx, hook);
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	return egress_ok(hook, fib->ifindex) ? 0 : -1;
}

// Fills the outgoing Ethernet and IPv4 headers (the IPv4 one from the received `ip`: new
// addresses, length and TTL, its checksum computed in full: 20 bytes, no options).
static __always_inline void out_l2_l3(struct out4 *o, const struct bpf_fib_lookup *fib,
				      const struct iphdr *ip, __u32 src, __u32 dst, __u16 tot_len)
{
	__builtin_memcpy(o->eth.h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(o->eth.h_source, fib->smac, ETH_ALEN);
	o->eth.h_proto = bpf_htons(ETH_P_IP);
	o->ip = *ip;
	o->ip.saddr = src;
	o->ip.daddr = dst;
	o->ip.tot_len = bpf_htons(tot_len);
	o->ip.ttl = RELAY_TTL;
	o->ip.check = 0;
	__u32 s = 0;
	__u16 *w = (__u16 *)&o->ip;
#pragma unroll
	for (int i = 0; i < IP_LEN / 2; i++)
		s += w[i];
	o->ip.check = ~fold(s) & 0xffff;
}

// Checksum of the pseudo header plus UDP header fields (everything but the payload).
static __always_inline __u32 head_sum(__u32 src, __u32 dst, __u16 sport, __u16 dport, __u16 ulen)
{
	return (src & 0xffff) + (src >> 16) + (dst & 0xffff) + (dst >> 16) + bpf_htons(IPPROTO_UDP) +
	       ulen + sport + dport + ulen;
}

// ChannelData from a client: strip the 4-byte header and send the payload to the peer from
// the relayed address.
static __always_inline int client_to_peer(void *ctx, int hook, const struct iphdr *ip,
					  const struct udphdr *udp)
{
	struct {
		__u16 channel;
		__u16 len;
	} cd; // both in network order
	if (load(ctx, hook, L4_OFF + UDP_LEN, &cd, CD_LEN) < 0)
		return verdict_pass(hook);
	if ((bpf_ntohs(cd.channel) & 0xc000) != 0x4000)
		return verdict_pass(hook);
	__u16 data_len = bpf_ntohs(cd.len);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen != UDP_LEN + CD_LEN + data_len)
		return verdict_pass(hook);
	struct c2p_key k = {
		.client_ip = ip->saddr,
		.server_ip = ip->daddr,
		.client_port = udp->source,
		.server_port = udp->dest,
		.channel = cd.channel,
	};
	struct c2p_val *v = bpf_map_lookup_elem(&CLIENT_TO_PEER, &k);
	if (!v)
		return verdict_pass(hook);
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return pass(hook, PASS_EXPIRED);
	__u32 src = v->relay_ip, dst = v->peer_ip;
	__u16 sport = v->relay_port, dport = v->peer_port;
	__u16 new_ulen = UDP_LEN + data_len;
	__u16 tot_len = IP_LEN + new_ulen;
	struct bpf_fib_lookup fib;
	if (route(ctx, hook, src, dst, tot_len, &fib) < 0)
		return pass(hook, PASS_NO_ROUTE);
	if (partial_csum(ctx, hook, ip, udp))
		return pass(hook, PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return verdict_drop(hook);
	}
	struct out4 o = {};
	out_l2_l3(&o, &fib, ip, src, dst, tot_len);
	o.udp.source = sport;
	o.udp.dest = dport;
	o.udp.len = bpf_htons(new_ulen);
	// New UDP checksum: old one minus the old head and the ChannelData header, plus the
	// new head (the payload's share is unchanged; it moves by 4 bytes, an even offset).
	if (udp->check) {
		__u32 s = (__u16)~udp->check;
		__u32 old = head_sum(ip->saddr, ip->daddr, udp->source, udp->dest, udp->len) +
			    cd.channel + cd.len;
		old = fold(old);
		s += (__u16)~old;
		s += head_sum(src, dst, sport, dport, o.udp.len);
		__u16 c = ~fold(s) & 0xffff;
		o.udp.check = c ? c : 0xffff;
	}
	if (resize(ctx, hook, -CD_LEN) < 0)
		return pass(hook, PASS_ROOM);
	if (store(ctx, hook, &o.eth, OUT4_LEN) < 0)
		return verdict_drop(hook);
	relayed(v->alloc, 0, data_len);
	return transmit(hook, fib.ifindex);
}

// UDP from a peer to a relayed address: prepend the ChannelData header (no padding over
// UDP) and send it to the client from the server address it uses.
static __always_inline int peer_to_client(void *ctx, int hook, const struct iphdr *ip,
					  const struct udphdr *udp)
{
	struct p2c_key k = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct p2c_val *v = bpf_map_lookup_elem(&PEER_TO_CLIENT, &k);
	if (!v)
		return verdict_pass(hook);
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return pass(hook, PASS_EXPIRED);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen < UDP_LEN || ulen > 0xffff - 64)
		return verdict_pass(hook);
	__u16 data_len = ulen - UDP_LEN;
	__u32 src = v->server_ip, dst = v->client_ip;
	__u16 sport = v->server_port, dport = v->client_port;
	__u16 new_ulen = UDP_LEN + CD_LEN + data_len;
	__u16 tot_len = IP_LEN + new_ulen;
	struct bpf_fib_lookup fib;
	if (route(ctx, hook, src, dst, tot_len, &fib) < 0)
		return pass(hook, PASS_NO_ROUTE);
	if (partial_csum(ctx, hook, ip, udp))
		return pass(hook, PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return verdict_drop(hook);
	}
	struct out4 o = {};
	out_l2_l3(&o, &fib, ip, src, dst, tot_len);
	o.udp.source = sport;
	o.udp.dest = dport;
	o.udp.len = bpf_htons(new_ulen);
	o.channel = v->channel; // network order
	o.len = bpf_htons(data_len);
	if (udp->check) {
		__u32 s = (__u16)~udp->check;
		__u32 old = fold(head_sum(ip->saddr, ip->daddr, udp->source, udp->dest, udp->len));
		s += (__u16)~old;
		s += head_sum(src, dst, sport, dport, o.udp.len) + o.channel + o.len;
		__u16 c = ~fold(s) & 0xffff;
		o.udp.check = c ? c : 0xffff;
	}
	if (resize(ctx, hook, CD_LEN) < 0)
		return pass(hook, PASS_ROOM);
	if (store(ctx, hook, &o.eth, OUT4_LEN + CD_LEN) < 0)
		return verdict_drop(hook);
	relayed(v->alloc, 1, data_len);
	return transmit(hook, fib.ifindex);
}

static __always_inline int ingress4(void *ctx, int hook)
{
	struct iphdr ip;
	struct udphdr udp;
	if (load(ctx, hook, ETH_LEN, &ip, IP_LEN) < 0)
		return verdict_pass(hook);
	if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP)
		return verdict_pass(hook);
	if (ip.frag_off & bpf_htons(0x3fff)) // MF or an offset: a fragment
		return verdict_pass(hook);
	if (bpf_ntohs(ip.tot_len) + ETH_LEN != frame_len(ctx, hook))
		return verdict_pass(hook);
	if (load(ctx, hook, L4_OFF, &udp, UDP_LEN) < 0)
		return verdict_pass(hook);
	if (bpf_ntohs(udp.len) + IP_LEN != bpf_ntohs(ip.tot_len))
		return verdict_pass(hook);
	int rc = peer_to_client(ctx, hook, &ip, &udp);
	if (rc != verdict_pass(hook))
		return rc;
	return client_to_peer(ctx, hook, &ip, &udp);
}

static __always_inline __u32 sum6(const __u32 *a)
{
	__u32 s = 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		s += (a[i] & 0xffff) + (a[i] >> 16);
	return s;
}

static __always_inline void copy6(__u32 *d, const __u32 *s)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		d[i] = s[i];
}

static __always_inline __u32 head_sum6(const __u32 *src, const __u32 *dst, __u16 sport,
				       __u16 dport, __u16 ulen)
{
	return sum6(src) + sum6(dst) + bpf_htons(IPPROTO_UDP) + ulen + sport + dport + ulen;
}

// As `partial_csum`; IPv6 UDP always carries a checksum, so 0 is not valid either.
static __always_inline int unusable_csum6(void *ctx, int hook, const struct ipv6hdr *ip,
					  const struct udphdr *udp)
{
	if (udp->check == 0)
		return 1;
	__u32 s = sum6((const __u32 *)&ip->saddr) + sum6((const __u32 *)&ip->daddr) +
		  bpf_htons(IPPROTO_UDP) + udp->len;
	if (udp->check != (__u16)fold(s))
		return 0;
	return !csum_valid(ctx, hook, L4_OFF6, bpf_ntohs(udp->len), fold(s));
}

static __always_inline int route6(void *ctx, int hook, const __u32 *src, const __u32 *dst,
				  __u16 tot_len, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET6;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	copy6(fib->ipv6_src, src);
	copy6(fib->ipv6_dst, dst);
	fib->ifindex = ingress_ifindex(ctx, hook);
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	return egress_ok(hook, fib->ifindex) ? 0 : -1;
}

static __always_inline void out_l2_l3_6(struct out6 *o, const struct bpf_fib_lookup *fib,
					const struct ipv6hdr *ip, const __u32 *src,
					const __u32 *dst, __u16 payload_len)
{
	__builtin_memcpy(o->eth.h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(o->eth.h_source, fib->smac, ETH_ALEN);
	o->eth.h_proto = bpf_htons(ETH_P_IPV6);
	o->ip = *ip;
	copy6((__u32 *)&o->ip.saddr, src);
	copy6((__u32 *)&o->ip.daddr, dst);
	o->ip.payload_len = bpf_htons(payload_len);
	o->ip.hop_limit = RELAY_TTL;
}

static __always_inline int client_to_peer6(void *ctx, int hook, const struct ipv6hdr *ip,
					   const struct udphdr *udp)
{
	struct {
		__u16 channel;
		__u16 len;
	} cd;
	if (load(ctx, hook, L4_OFF6 + UDP_LEN, &cd, CD_LEN) < 0)
		return verdict_pass(hook);
	if ((bpf_ntohs(cd.channel) & 0xc000) != 0x4000)
		return verdict_pass(hook);
	__u16 data_len = bpf_ntohs(cd.len);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen != UDP_LEN + CD_LEN + data_len)
		return verdict_pass(hook);
	struct c2p6_key k = {
		.client_port = udp->source,
		.server_port = udp->dest,
		.channel = cd.channel,
	};
	copy6(k.client_ip, (const __u32 *)&ip->saddr);
	copy6(k.server_ip, (const __u32 *)&ip->daddr);
	struct c2p6_val *v = bpf_map_lookup_elem(&CLIENT_TO_PEER6, &k);
	if (!v)
		return verdict_pass(hook);
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return pass(hook, PASS_EXPIRED);
	__u32 src[4], dst[4];
	copy6(src, v->relay_ip);
	copy6(dst, v->peer_ip);
	__u16 sport = v->relay_port, dport = v->peer_port;
	__u16 new_ulen = UDP_LEN + data_len;
	struct bpf_fib_lookup fib;
	if (route6(ctx, hook, src, dst, IP6_LEN + new_ulen, &fib) < 0)
		return pass(hook, PASS_NO_ROUTE);
	if (unusable_csum6(ctx, hook, ip, udp))
		return pass(hook, PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return verdict_drop(hook);
	}
	struct out6 o = {};
	out_l2_l3_6(&o, &fib, ip, src, dst, new_ulen);
	o.udp.source = sport;
	o.udp.dest = dport;
	o.udp.len = bpf_htons(new_ulen);
	__u32 s = (__u16)~udp->check;
	__u32 old = fold(head_sum6((const __u32 *)&ip->saddr, (const __u32 *)&ip->daddr,
				   udp->source, udp->dest, udp->len) +
			 cd.channel + cd.len);
	s += (__u16)~old;
	s += head_sum6(src, dst, sport, dport, o.udp.len);
	__u16 c = ~fold(s) & 0xffff;
	o.udp.check = c ? c : 0xffff;
	if (resize(ctx, hook, -CD_LEN) < 0)
		return pass(hook, PASS_ROOM);
	if (store(ctx, hook, &o.eth, OUT6_LEN) < 0)
		return verdict_drop(hook);
	relayed(v->alloc, 0, data_len);
	return transmit(hook, fib.ifindex);
}

static __always_inline int peer_to_client6(void *ctx, int hook, const struct ipv6hdr *ip,
					   const struct udphdr *udp)
{
	struct p2c6_key k = {
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	copy6(k.peer_ip, (const __u32 *)&ip->saddr);
	copy6(k.relay_ip, (const __u32 *)&ip->daddr);
	struct p2c6_val *v = bpf_map_lookup_elem(&PEER_TO_CLIENT6, &k);
	if (!v)
		return verdict_pass(hook);
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return pass(hook, PASS_EXPIRED);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen < UDP_LEN || ulen > 0xffff - 64)
		return verdict_pass(hook);
	__u16 data_len = ulen - UDP_LEN;
	__u32 src[4], dst[4];
	copy6(src, v->server_ip);
	copy6(dst, v->client_ip);
	__u16 sport = v->server_port, dport = v->client_port;
	__u16 new_ulen = UDP_LEN + CD_LEN + data_len;
	struct bpf_fib_lookup fib;
	if (route6(ctx, hook, src, dst, IP6_LEN + new_ulen, &fib) < 0)
		return pass(hook, PASS_NO_ROUTE);
	if (unusable_csum6(ctx, hook, ip, udp))
		return pass(hook, PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return verdict_drop(hook);
	}
	struct out6 o = {};
	out_l2_l3_6(&o, &fib, ip, src, dst, new_ulen);
	o.udp.source = sport;
	o.udp.dest = dport;
	o.udp.len = bpf_htons(new_ulen);
	o.channel = v->channel;
	o.len = bpf_htons(data_len);
	__u32 s = (__u16)~udp->check;
	__u32 old = fold(head_sum6((const __u32 *)&ip->saddr, (const __u32 *)&ip->daddr,
				   udp->source, udp->dest, udp->len));
	s += (__u16)~old;
	s += head_sum6(src, dst, sport, dport, o.udp.len) + o.channel + o.len;
	__u16 c = ~fold(s) & 0xffff;
	o.udp.check = c ? c : 0xffff;
	if (resize(ctx, hook, CD_LEN) < 0)
		return pass(hook, PASS_ROOM);
	if (store(ctx, hook, &o.eth, OUT6_LEN + CD_LEN) < 0)
		return verdict_drop(hook);
	relayed(v->alloc, 1, data_len);
	return transmit(hook, fib.ifindex);
}

static __always_inline int ingress6(void *ctx, int hook)
{
	struct ipv6hdr ip;
	struct udphdr udp;
	if (load(ctx, hook, ETH_LEN, &ip, IP6_LEN) < 0)
		return verdict_pass(hook);
	// UDP right after the fixed header: no extension headers (fragments among them)
	if (ip.version != 6 || ip.nexthdr != IPPROTO_UDP)
		return verdict_pass(hook);
	if (bpf_ntohs(ip.payload_len) + IP6_LEN + ETH_LEN != frame_len(ctx, hook))
		return verdict_pass(hook);
	if (load(ctx, hook, L4_OFF6, &udp, UDP_LEN) < 0)
		return verdict_pass(hook);
	if (udp.len != ip.payload_len)
		return verdict_pass(hook);
	int rc = peer_to_client6(ctx, hook, &ip, &udp);
	if (rc != verdict_pass(hook))
		return rc;
	return client_to_peer6(ctx, hook, &ip, &udp);
}

// The relay both hooks run: IPv4 or IPv6 UDP, anything else passes.
static __always_inline int relay(void *ctx, int hook, __u16 proto)
{
	if (proto == bpf_htons(ETH_P_IPV6))
		return ingress6(ctx, hook);
	if (proto == bpf_htons(ETH_P_IP))
		return ingress4(ctx, hook);
	return verdict_pass(hook);
}

// TC (TCX ingress): GSO packets (several datagrams in one skb) pass.
SEC("classifier")
int channel_data_ingress(struct __sk_buff *skb)
{
	if (skb->gso_size)
		return TC_ACT_OK;
	return relay(skb, TC, skb->protocol);
}

// XDP (native, driver mode): the frame as the driver received it, before any skb exists.
SEC("xdp")
int channel_data_xdp(struct xdp_md *ctx)
{
	__u16 proto;
	if (bpf_xdp_load_bytes(ctx, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return XDP_PASS;
	return relay(ctx, XDP, proto);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
