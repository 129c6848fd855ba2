#!/bin/sh
# Builds (or removes) a small "internet with two NATed homes" out of network namespaces,
# for test/nat.test.js. Needs root, iproute2 and nftables (Debian packages).
#
#   nat-lab.sh up ID     create the lab; prints nothing on success
#   nat-lab.sh down ID   delete every namespace of lab ID (idempotent)
#   nat-lab.sh reap      delete labs whose creator process (the number in ID) is gone
#   nat-lab.sh masq ID NAT [FLAGS]   replace NAT's masquerade rule (FLAGS "" = port-
#                        preserving, "fully-random" = symmetric)
#   nat-lab.sh calls ID  add the "calls" namespace to lab ID (test/calls-plugin.test.js)
#
# ID is "<pid>x<random>" so names are unique per run and leftovers of a killed run can
# be recognised (its pid is dead) and reaped. Namespaces (NAME = crl<ID>-…):
#
#   pub   "the internet": bridge br0 203.0.113.1/24 — gateway + turn-server live here.
#         No forwarding, no default route: nothing leaves 203.0.113.0/24.
#   nata  NAT A, port-preserving MASQUERADE (endpoint-independent mapping, but conntrack
#         only lets replies in: a port-restricted cone). wan 203.0.113.10, lan 10.10.1.1/24.
#   natb  NAT B, MASQUERADE fully-random (= iptables --random-fully): a new random public
#         port per destination, a symmetric NAT. wan 203.0.113.20, lan 192.168.20.1/24.
#   a     caller A, 10.10.1.2/24, route to 203.0.113.0/24 via NAT A.
#   b     caller B, 192.168.20.2/24, route to 203.0.113.0/24 via NAT B.
#   calls (only after `calls ID`) a Mattermost Calls server on a private LAN of the
#         turn-server's host: veth lancalls 10.20.0.1/24 in pub <-> eth0 10.20.0.2/24 here,
#         route to 203.0.113.0/24 via 10.20.0.1. pub does not forward, so this namespace
#         reaches only pub's own addresses (203.0.113.1): a browser behind a NAT and the
#         Calls server can meet only through the turn-server's relay.
#
# Both NATs drop every unsolicited inbound packet (forward: only established/related from
# wan; input: only established/related and lo). IPv6 is disabled everywhere. Callers and
# NATs have no default route, so a packet to any address outside the lab is refused at
# its source (ENETUNREACH) instead of being sent. Deleting a namespace deletes its veths
# and nftables rules, so `down` is just `ip netns del`.
set -eu
cmd=${1:?usage: nat-lab.sh up|down ID | reap | masq ID NAT [FLAGS] | calls ID}

# nssys NS KEY VALUE: a sysctl inside NS (/proc/sys/net shows the writer's namespace; no
# dependency on procps' sysctl).
nssys() { ip netns exec "$1" sh -c "echo $3 > /proc/sys/$2"; }

# names ID [LIST]: the namespaces of lab ID (LIST default: all, for down/reap).
names() { for n in ${2:-pub nata natb a b calls}; do echo "crl$1-$n"; done; }

down() {
  for ns in $(names "$1"); do
    ip netns del "$ns" 2>/dev/null || true
  done
}

case $cmd in
reap)
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^crl[0-9]+x[0-9a-f]+-' || true); do
    pid=${ns#crl}; pid=${pid%%x*}
    if ! kill -0 "$pid" 2>/dev/null; then ip netns del "$ns" 2>/dev/null || true; fi
  done
  exit 0
  ;;
down)
  down "${2:?ID}"
  exit 0
  ;;
masq)
  ns=crl${2:?ID}-${3:?NAT}
  printf 'flush chain ip lab postrouting\nadd rule ip lab postrouting oifname "wan" masquerade %s\n' "${4:-}" |
    ip netns exec "$ns" nft -f -
  exit 0
  ;;
calls)
  case ${2:?ID} in *[!0-9a-fx]*) echo "bad ID $2" >&2; exit 2 ;; esac
  p=crl$2
  ns=$p-calls
  ip netns add "$ns"
  nssys "$ns" net/ipv6/conf/all/disable_ipv6 1
  nssys "$ns" net/ipv6/conf/default/disable_ipv6 1
  ip -n "$ns" link set lo up
  ip -n "$p-pub" link add lancalls type veth peer name eth0 netns "$ns"
  ip -n "$p-pub" addr add 10.20.0.1/24 dev lancalls
  ip -n "$p-pub" link set lancalls up
  ip -n "$ns" addr add 10.20.0.2/24 dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 203.0.113.0/24 via 10.20.0.1
  exit 0
  ;;
up) ;;
*) echo "usage: nat-lab.sh up|down ID | reap | masq ID NAT [FLAGS] | calls ID" >&2; exit 2 ;;
esac

id=${2:?ID}
case $id in *[!0-9a-fx]*) echo "bad ID $id" >&2; exit 2 ;; esac
p=crl$id
trap 'down "$id"' EXIT
for ns in $(names "$id" "pub nata natb a b"); do
  ip netns add "$ns"
  nssys "$ns" net/ipv6/conf/all/disable_ipv6 1
  nssys "$ns" net/ipv6/conf/default/disable_ipv6 1
  ip -n "$ns" link set lo up
done

# The "internet": a bridge in pub with one port per NAT.
ip -n "$p-pub" link add br0 type bridge
ip -n "$p-pub" addr add 203.0.113.1/24 dev br0
ip -n "$p-pub" link set br0 up
nssys "$p-pub" net/ipv4/ip_forward 0

nat() { # nat NAME WAN_IP LAN_NET_PREFIX MASQ_FLAGS CALLER
  nat=$p-$1
  ip -n "$nat" link add wan type veth peer name "up$1" netns "$p-pub"
  ip -n "$p-pub" link set "up$1" master br0 up
  ip -n "$nat" addr add "$2/24" dev wan
  ip -n "$nat" link set wan up
  ip -n "$nat" link add lan type veth peer name eth0 netns "$p-$5"
  ip -n "$nat" addr add "$3.1/24" dev lan
  ip -n "$nat" link set lan up
  ip -n "$p-$5" addr add "$3.2/24" dev eth0
  ip -n "$p-$5" link set eth0 up
  ip -n "$p-$5" route add 203.0.113.0/24 via "$3.1"
  nssys "$nat" net/ipv4/ip_forward 1
  ip netns exec "$nat" nft -f - <<EOF
table ip lab {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade $4
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    iifname "lan" accept
  }
}
EOF
}
nat nata 203.0.113.10 10.10.1 "" a
nat natb 203.0.113.20 192.168.20 "fully-random" b
trap - EXIT
