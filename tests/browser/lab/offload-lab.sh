#!/bin/sh
# Builds (or removes) the network namespaces of test/offload.test.js: two browsers, each
# behind its own turn-server, the two turn-servers joined by a veth pair, so each call leg
# relays to a peer across a veth and the turn-servers' kernel fast path (docs/offload.md)
# can carry it. Needs root, iproute2 and ethtool (Debian packages).
#
#   offload-lab.sh up ID     create the lab; prints nothing on success
#   offload-lab.sh down ID   delete every namespace of lab ID (idempotent)
#   offload-lab.sh reap      delete labs whose creator process (the number in ID) is gone
#
# ID is "<pid>x<random>"; namespaces are crb<ID>-{a,t1,t2,b}:
#
#   a   browser A          eth0 10.0.1.2/24, 10.0.0.0/16 via 10.0.1.1
#   t1  turn-server 1 (+ gateway, pages)
#                          a1 10.0.1.1/24 (listen)   x1 10.0.2.1/24 (relay)
#   t2  turn-server 2      x2 10.0.2.2/24 (relay)    b2 10.0.3.1/24 (listen)
#   b   browser B          eth0 10.0.3.2/24, 10.0.0.0/16 via 10.0.3.1
#
# t1 and t2 forward (bpf_fib_lookup needs it, and browser B reaches the gateway in t1
# through t2). Every veth end that sends toward a turn-server has transmit checksum
# offload off: veth would leave UDP checksums to the "device", and the offload program
# passes such packets to userspace. IPv6 is disabled everywhere; nothing routes outside
# 10.0.0.0/16, so a packet to any other address fails at its source.
set -eu
cmd=${1:?usage: offload-lab.sh up|down ID | reap}

nssys() { ip netns exec "$1" sh -c "echo $3 > /proc/sys/$2"; }
names() { for n in a t1 t2 b; do echo "crb$1-$n"; done; }
down() {
  for ns in $(names "$1"); do
    ip netns del "$ns" 2>/dev/null || true
  done
}

case $cmd in
reap)
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^crb[0-9]+x[0-9a-f]+-' || true); do
    pid=${ns#crb}; pid=${pid%%x*}
    if ! kill -0 "$pid" 2>/dev/null; then ip netns del "$ns" 2>/dev/null || true; fi
  done
  exit 0
  ;;
down)
  down "${2:?ID}"
  exit 0
  ;;
up) ;;
*) echo "usage: offload-lab.sh up|down ID | reap" >&2; exit 2 ;;
esac

id=${2:?ID}
case $id in *[!0-9a-fx]*) echo "bad ID $id" >&2; exit 2 ;; esac
p=crb$id
trap 'down "$id"' EXIT
for n in a t1 t2 b; do
  ip netns add "$p-$n"
  nssys "$p-$n" net/ipv6/conf/all/disable_ipv6 1
  nssys "$p-$n" net/ipv6/conf/default/disable_ipv6 1
  ip -n "$p-$n" link set lo up
done

# link NS1 DEV1 ADDR1 NS2 DEV2 ADDR2: a veth pair with an address on each end, both up
link() {
  ip -n "$p-$1" link add "$2" type veth peer name "$5" netns "$p-$4"
  ip -n "$p-$1" addr add "$3/24" dev "$2"
  ip -n "$p-$4" addr add "$6/24" dev "$5"
  ip -n "$p-$1" link set "$2" up
  ip -n "$p-$4" link set "$5" up
}
link a eth0 10.0.1.2 t1 a1 10.0.1.1
link t1 x1 10.0.2.1 t2 x2 10.0.2.2
link t2 b2 10.0.3.1 b eth0 10.0.3.2

ip -n "$p-a" route add 10.0.0.0/16 via 10.0.1.1
ip -n "$p-b" route add 10.0.0.0/16 via 10.0.3.1
ip -n "$p-t1" route add 10.0.3.0/24 via 10.0.2.2
ip -n "$p-t2" route add 10.0.1.0/24 via 10.0.2.1
for n in t1 t2; do
  nssys "$p-$n" net/ipv4/conf/all/forwarding 1
done
ip netns exec "$p-a" ethtool -K eth0 tx off >/dev/null
ip netns exec "$p-b" ethtool -K eth0 tx off >/dev/null
ip netns exec "$p-t1" ethtool -K x1 tx off >/dev/null
ip netns exec "$p-t2" ethtool -K x2 tx off >/dev/null
trap - EXIT
