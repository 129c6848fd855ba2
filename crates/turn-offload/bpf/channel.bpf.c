// SPDX-License-Identifier: MIT OR Apache-2.0
// callrelay turn-server: TC (clsact ingress) fast path for UDP ChannelData over IPv4 and IPv6.
//
// Userspace (crates/turn-offload) is the authority: it installs one entry per direction for
// every live channel binding and removes it when the binding, its permission or its
// allocation goes. Every entry carries the CLOCK_MONOTONIC instant it stops being valid, so
// a packet that arrives after expiry passes to userspace (which drops it) even before
// userspace removed the entry. Anything this program is unsure of passes unchanged
// (TC_ACT_OK): IP options, fragments, GSO packets, ChannelData whose length does not fill
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

#define ETH_LEN 14
#define IP_LEN 20
#define UDP_LEN 8
#define CD_LEN 4
#define L4_OFF (ETH_LEN + IP_LEN)
#define IP_CSUM_OFF (ETH_LEN + offsetof(struct iphdr, check))
#define UDP_CSUM_OFF (L4_OFF + offsetof(struct udphdr, check))
#define RELAY_TTL 64

static __always_inline __u32 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

// The UDP checksum field of a CHECKSUM_PARTIAL skb holds the folded pseudo-header sum (the
// device finishes it); a real checksum equals that with probability 2^-16, and then the
// packet merely takes the userspace path.
static __always_inline int partial_csum(const struct iphdr *ip, const struct udphdr *udp)
{
	__u32 s = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
		  (ip->daddr >> 16) + bpf_htons(IPPROTO_UDP) + udp->len;
	return udp->check == (__u16)fold(s);
}

static __always_inline void count(__u32 dir, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&COUNTERS, &dir);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

#define NS_PER_S 1000000000ULL
// Why a packet of an installed binding went to userspace (COUNTERS index).
#define PASS_EXPIRED 3
#define PASS_NO_ROUTE 4
#define PASS_CHECKSUM 5
#define PASS_ROOM 6

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

static __always_inline int pass(__u32 reason)
{
	count(reason, 0);
	return TC_ACT_OK;
}

// Where a packet from `src` to `dst` leaves: interface and MAC addresses, or < 0.
static __always_inline int route(struct __sk_buff *skb, __u32 src, __u32 dst, __u16 tot_len,
				 struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = skb->ingress_ifindex;
	int rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	return rc == BPF_FIB_LKUP_RET_SUCCESS ? 0 : -1;
}

// Rewrites the IPv4 header (addresses, length, TTL, checksum) and the Ethernet addresses.
static __always_inline int rewrite_l2_l3(struct __sk_buff *skb, const struct bpf_fib_lookup *fib,
					 __u32 src, __u32 dst, __u16 tot_len)
{
	struct iphdr old;
	if (bpf_skb_load_bytes(skb, ETH_LEN, &old, IP_LEN) < 0)
		return -1;
	struct iphdr ip = old;
	ip.saddr = src;
	ip.daddr = dst;
	ip.tot_len = bpf_htons(tot_len);
	ip.ttl = RELAY_TTL;
	ip.check = 0;
	// Recompute the header checksum from scratch (20 bytes, no options).
	__u32 s = 0;
	__u16 *w = (__u16 *)&ip;
#pragma unroll
	for (int i = 0; i < IP_LEN / 2; i++)
		s += w[i];
	ip.check = ~fold(s) & 0xffff;
	if (bpf_skb_store_bytes(skb, ETH_LEN, &ip, IP_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	return 0;
}

// Checksum of the pseudo header plus UDP header fields (everything but the payload).
static __always_inline __u32 head_sum(__u32 src, __u32 dst, __u16 sport, __u16 dport, __u16 ulen)
{
	return (src & 0xffff) + (src >> 16) + (dst & 0xffff) + (dst >> 16) + bpf_htons(IPPROTO_UDP) +
	       ulen + sport + dport + ulen;
}

// ChannelData from a client: strip the 4-byte header and send the payload to the peer from
// the relayed address.
static __always_inline int client_to_peer(struct __sk_buff *skb, const struct iphdr *ip,
					  const struct udphdr *udp)
{
	struct {
		__u16 channel;
		__u16 len;
	} cd; // both in network order
	if (bpf_skb_load_bytes(skb, L4_OFF + UDP_LEN, &cd, CD_LEN) < 0)
		return TC_ACT_OK;
	if ((bpf_ntohs(cd.channel) & 0xc000) != 0x4000)
		return TC_ACT_OK;
	__u16 data_len = bpf_ntohs(cd.len);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen != UDP_LEN + CD_LEN + data_len)
		return TC_ACT_OK;
	struct c2p_key k = {
		.client_ip = ip->saddr,
		.server_ip = ip->daddr,
		.client_port = udp->source,
		.server_port = udp->dest,
		.channel = cd.channel,
	};
	struct c2p_val *v = bpf_map_lookup_elem(&CLIENT_TO_PEER, &k);
	if (!v)
		return TC_ACT_OK;
	if (bpf_ktime_get_ns() >= v->expires_ns) {
		count(PASS_EXPIRED, 0);
		return TC_ACT_OK;
	}
	__u32 src = v->relay_ip, dst = v->peer_ip;
	__u16 sport = v->relay_port, dport = v->peer_port;
	__u16 new_ulen = UDP_LEN + data_len;
	__u16 tot_len = IP_LEN + new_ulen;
	struct bpf_fib_lookup fib;
	if (route(skb, src, dst, tot_len, &fib) < 0)
		return pass(PASS_NO_ROUTE);
	if (partial_csum(ip, udp))
		return pass(PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return TC_ACT_SHOT;
	}
	// New UDP checksum: old one minus the old head and the ChannelData header, plus the
	// new head (the payload's share is unchanged; it moves by 4 bytes, an even offset).
	struct udphdr nu = {
		.source = sport,
		.dest = dport,
		.len = bpf_htons(new_ulen),
		.check = 0,
	};
	if (udp->check) {
		__u32 s = (__u16)~udp->check;
		__u32 old = head_sum(ip->saddr, ip->daddr, udp->source, udp->dest, udp->len) +
			    cd.channel + cd.len;
		old = fold(old);
		s += (__u16)~old;
		s += head_sum(src, dst, sport, dport, nu.len);
		__u16 c = ~fold(s) & 0xffff;
		nu.check = c ? c : 0xffff;
	}
	// Remove 4 bytes right after the IP header: what followed ([UDP 4..8][CD 4]) is then
	// overwritten by the new 8-byte UDP header.
	if (bpf_skb_adjust_room(skb, -CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return pass(PASS_ROOM);
	if (bpf_skb_store_bytes(skb, L4_OFF, &nu, UDP_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return TC_ACT_SHOT;
	if (rewrite_l2_l3(skb, &fib, src, dst, tot_len) < 0)
		return TC_ACT_SHOT;
	count(0, data_len);
	return bpf_redirect(fib.ifindex, 0);
}

// UDP from a peer to a relayed address: prepend the ChannelData header (no padding over
// UDP) and send it to the client from the server address it uses.
static __always_inline int peer_to_client(struct __sk_buff *skb, const struct iphdr *ip,
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
		return TC_ACT_OK;
	if (bpf_ktime_get_ns() >= v->expires_ns) {
		count(PASS_EXPIRED, 0);
		return TC_ACT_OK;
	}
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen < UDP_LEN || ulen > 0xffff - 64)
		return TC_ACT_OK;
	__u16 data_len = ulen - UDP_LEN;
	if (skb->len != ETH_LEN + IP_LEN + ulen)
		return TC_ACT_OK;
	__u32 src = v->server_ip, dst = v->client_ip;
	__u16 sport = v->server_port, dport = v->client_port;
	__u16 new_ulen = UDP_LEN + CD_LEN + data_len;
	__u16 tot_len = IP_LEN + new_ulen;
	struct bpf_fib_lookup fib;
	if (route(skb, src, dst, tot_len, &fib) < 0)
		return pass(PASS_NO_ROUTE);
	if (partial_csum(ip, udp))
		return pass(PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return TC_ACT_SHOT;
	}
	__u16 ch = v->channel; // network order
	__u16 dl = bpf_htons(data_len);
	struct {
		struct udphdr u;
		__u16 channel;
		__u16 len;
	} h = {
		.u = { .source = sport, .dest = dport, .len = bpf_htons(new_ulen), .check = 0 },
		.channel = ch,
		.len = dl,
	};
	if (udp->check) {
		__u32 s = (__u16)~udp->check;
		__u32 old = fold(head_sum(ip->saddr, ip->daddr, udp->source, udp->dest, udp->len));
		s += (__u16)~old;
		s += head_sum(src, dst, sport, dport, h.u.len) + ch + dl;
		__u16 c = ~fold(s) & 0xffff;
		h.u.check = c ? c : 0xffff;
	}
	// Insert 4 bytes right after the IP header, then write UDP header + ChannelData header
	// over the first 12 bytes of the L4 part ([new 4][old UDP 8]).
	if (bpf_skb_adjust_room(skb, CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return pass(PASS_ROOM);
	if (bpf_skb_store_bytes(skb, L4_OFF, &h, sizeof(h), BPF_F_RECOMPUTE_CSUM) < 0)
		return TC_ACT_SHOT;
	if (rewrite_l2_l3(skb, &fib, src, dst, tot_len) < 0)
		return TC_ACT_SHOT;
	count(1, data_len);
	return bpf_redirect(fib.ifindex, 0);
}


#define IP6_LEN 40
#define L4_OFF6 (ETH_LEN + IP6_LEN)

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
static __always_inline int unusable_csum6(const struct ipv6hdr *ip, const struct udphdr *udp)
{
	if (udp->check == 0)
		return 1;
	__u32 s = sum6((const __u32 *)&ip->saddr) + sum6((const __u32 *)&ip->daddr) +
		  bpf_htons(IPPROTO_UDP) + udp->len;
	return udp->check == (__u16)fold(s);
}

static __always_inline int route6(struct __sk_buff *skb, const __u32 *src, const __u32 *dst,
				  __u16 tot_len, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET6;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	copy6(fib->ipv6_src, src);
	copy6(fib->ipv6_dst, dst);
	fib->ifindex = skb->ingress_ifindex;
	int rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	return rc == BPF_FIB_LKUP_RET_SUCCESS ? 0 : -1;
}

static __always_inline int rewrite_l2_l3_6(struct __sk_buff *skb, const struct bpf_fib_lookup *fib,
					   const __u32 *src, const __u32 *dst, __u16 payload_len)
{
	struct ipv6hdr ip;
	if (bpf_skb_load_bytes(skb, ETH_LEN, &ip, IP6_LEN) < 0)
		return -1;
	copy6((__u32 *)&ip.saddr, src);
	copy6((__u32 *)&ip.daddr, dst);
	ip.payload_len = bpf_htons(payload_len);
	ip.hop_limit = RELAY_TTL;
	if (bpf_skb_store_bytes(skb, ETH_LEN, &ip, IP6_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	return 0;
}

static __always_inline int client_to_peer6(struct __sk_buff *skb, const struct ipv6hdr *ip,
					   const struct udphdr *udp)
{
	struct {
		__u16 channel;
		__u16 len;
	} cd;
	if (bpf_skb_load_bytes(skb, L4_OFF6 + UDP_LEN, &cd, CD_LEN) < 0)
		return TC_ACT_OK;
	if ((bpf_ntohs(cd.channel) & 0xc000) != 0x4000)
		return TC_ACT_OK;
	__u16 data_len = bpf_ntohs(cd.len);
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen != UDP_LEN + CD_LEN + data_len)
		return TC_ACT_OK;
	struct c2p6_key k = {
		.client_port = udp->source,
		.server_port = udp->dest,
		.channel = cd.channel,
	};
	copy6(k.client_ip, (const __u32 *)&ip->saddr);
	copy6(k.server_ip, (const __u32 *)&ip->daddr);
	struct c2p6_val *v = bpf_map_lookup_elem(&CLIENT_TO_PEER6, &k);
	if (!v)
		return TC_ACT_OK;
	if (bpf_ktime_get_ns() >= v->expires_ns) {
		count(PASS_EXPIRED, 0);
		return TC_ACT_OK;
	}
	__u32 src[4], dst[4];
	copy6(src, v->relay_ip);
	copy6(dst, v->peer_ip);
	__u16 sport = v->relay_port, dport = v->peer_port;
	__u16 new_ulen = UDP_LEN + data_len;
	struct bpf_fib_lookup fib;
	if (route6(skb, src, dst, IP6_LEN + new_ulen, &fib) < 0)
		return pass(PASS_NO_ROUTE);
	if (unusable_csum6(ip, udp))
		return pass(PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return TC_ACT_SHOT;
	}
	struct udphdr nu = { .source = sport, .dest = dport, .len = bpf_htons(new_ulen) };
	__u32 s = (__u16)~udp->check;
	__u32 old = fold(head_sum6((const __u32 *)&ip->saddr, (const __u32 *)&ip->daddr,
				   udp->source, udp->dest, udp->len) +
			 cd.channel + cd.len);
	s += (__u16)~old;
	s += head_sum6(src, dst, sport, dport, nu.len);
	__u16 c = ~fold(s) & 0xffff;
	nu.check = c ? c : 0xffff;
	if (bpf_skb_adjust_room(skb, -CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return pass(PASS_ROOM);
	if (bpf_skb_store_bytes(skb, L4_OFF6, &nu, UDP_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return TC_ACT_SHOT;
	if (rewrite_l2_l3_6(skb, &fib, src, dst, new_ulen) < 0)
		return TC_ACT_SHOT;
	count(0, data_len);
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int peer_to_client6(struct __sk_buff *skb, const struct ipv6hdr *ip,
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
		return TC_ACT_OK;
	if (bpf_ktime_get_ns() >= v->expires_ns) {
		count(PASS_EXPIRED, 0);
		return TC_ACT_OK;
	}
	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen < UDP_LEN || ulen > 0xffff - 64)
		return TC_ACT_OK;
	__u16 data_len = ulen - UDP_LEN;
	__u32 src[4], dst[4];
	copy6(src, v->server_ip);
	copy6(dst, v->client_ip);
	__u16 sport = v->server_port, dport = v->client_port;
	__u16 new_ulen = UDP_LEN + CD_LEN + data_len;
	struct bpf_fib_lookup fib;
	if (route6(skb, src, dst, IP6_LEN + new_ulen, &fib) < 0)
		return pass(PASS_NO_ROUTE);
	if (unusable_csum6(ip, udp))
		return pass(PASS_CHECKSUM);
	if (!within_bandwidth(v->alloc, data_len)) {
		count(2, 0);
		return TC_ACT_SHOT;
	}
	__u16 ch = v->channel, dl = bpf_htons(data_len);
	struct {
		struct udphdr u;
		__u16 channel;
		__u16 len;
	} h = {
		.u = { .source = sport, .dest = dport, .len = bpf_htons(new_ulen), .check = 0 },
		.channel = ch,
		.len = dl,
	};
	__u32 s = (__u16)~udp->check;
	__u32 old = fold(head_sum6((const __u32 *)&ip->saddr, (const __u32 *)&ip->daddr,
				   udp->source, udp->dest, udp->len));
	s += (__u16)~old;
	s += head_sum6(src, dst, sport, dport, h.u.len) + ch + dl;
	__u16 c = ~fold(s) & 0xffff;
	h.u.check = c ? c : 0xffff;
	if (bpf_skb_adjust_room(skb, CD_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return pass(PASS_ROOM);
	if (bpf_skb_store_bytes(skb, L4_OFF6, &h, sizeof(h), BPF_F_RECOMPUTE_CSUM) < 0)
		return TC_ACT_SHOT;
	if (rewrite_l2_l3_6(skb, &fib, src, dst, new_ulen) < 0)
		return TC_ACT_SHOT;
	count(1, data_len);
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int ingress6(struct __sk_buff *skb)
{
	struct ipv6hdr ip;
	struct udphdr udp;
	if (bpf_skb_load_bytes(skb, ETH_LEN, &ip, IP6_LEN) < 0)
		return TC_ACT_OK;
	// UDP right after the fixed header: no extension headers (fragments among them)
	if (ip.version != 6 || ip.nexthdr != IPPROTO_UDP)
		return TC_ACT_OK;
	if (bpf_ntohs(ip.payload_len) + IP6_LEN + ETH_LEN != skb->len)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, L4_OFF6, &udp, UDP_LEN) < 0)
		return TC_ACT_OK;
	if (udp.len != ip.payload_len)
		return TC_ACT_OK;
	int rc = peer_to_client6(skb, &ip, &udp);
	if (rc != TC_ACT_OK)
		return rc;
	return client_to_peer6(skb, &ip, &udp);
}

SEC("classifier")
int channel_data_ingress(struct __sk_buff *skb)
{
	if (skb->gso_size)
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ingress6(skb);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr ip;
	struct udphdr udp;
	if (bpf_skb_load_bytes(skb, ETH_LEN, &ip, IP_LEN) < 0)
		return TC_ACT_OK;
	if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	if (ip.frag_off & bpf_htons(0x3fff)) // MF or an offset: a fragment
		return TC_ACT_OK;
	if (bpf_ntohs(ip.tot_len) + ETH_LEN != skb->len)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, L4_OFF, &udp, UDP_LEN) < 0)
		return TC_ACT_OK;
	if (bpf_ntohs(udp.len) + IP_LEN != bpf_ntohs(ip.tot_len))
		return TC_ACT_OK;
	int rc = peer_to_client(skb, &ip, &udp);
	if (rc != TC_ACT_OK)
		return rc;
	return client_to_peer(skb, &ip, &udp);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
