#!/usr/bin/env bash
# A first, rough measurement of the kernel fast path against the userspace relay, in the
# same three network namespaces as crates/turn-server/tests/offload.rs (docs/offload.md,
# "First measurement"). Root only; removes its namespaces on exit.
#
#   crates/turn-offload/bench/run.sh [SECONDS] [PAYLOAD] [ROUNDS]
#
# One Python sender (blast.py: one allocation, one channel, sendto in a loop) in the client
# namespace; a peer socket that never reads in the peer namespace (the kernel counts what
# arrives); a release turn-server (1 worker, bandwidth 0) in the server namespace, with
# offload "off" and "tc" alternately. Prints per run: datagrams sent and delivered, the
# relayed counters from /metrics, and the CPU seconds of the sender and of the server
# process. With the offload the relay work runs in the sender's softirq context, so
# "sender + server CPU per packet" is the comparable figure.
set -euo pipefail
cd "$(dirname "$0")/../../.."
SECS=${1:-5}; SIZE=${2:-100}; ROUNDS=${3:-3}
BIN=${TURN_SERVER:-target/release/turn-server}
[ -x "$BIN" ] || cargo build --release -p turn-server
P=crb$$
cleanup() { for n in c s p; do ip netns del "$P$n" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in c s p; do ip netns add "$P$n"; ip -n "$P$n" link set lo up; done
ip -n "${P}c" link add c0 type veth peer name s0 netns "${P}s"
ip -n "${P}p" link add p0 type veth peer name s1 netns "${P}s"
ip -n "${P}c" addr add 10.0.1.2/24 dev c0; ip -n "${P}c" link set c0 up
ip -n "${P}c" route add default via 10.0.1.1
ip -n "${P}s" addr add 10.0.1.1/24 dev s0; ip -n "${P}s" link set s0 up
ip -n "${P}s" addr add 10.0.2.1/24 dev s1; ip -n "${P}s" link set s1 up
ip -n "${P}p" addr add 10.0.2.2/24 dev p0; ip -n "${P}p" link set p0 up
ip -n "${P}p" route add default via 10.0.2.1
ip netns exec "${P}c" ethtool -K c0 tx off >/dev/null
ip netns exec "${P}p" ethtool -K p0 tx off >/dev/null
ip netns exec "${P}s" sh -c 'echo 1 > /proc/sys/net/ipv4/conf/s0/forwarding; echo 1 > /proc/sys/net/ipv4/conf/s1/forwarding'
mac=$(ip -n "${P}p" -br link show p0 | awk '{print $3}')
ip -n "${P}s" neigh replace 10.0.2.2 lladdr "$mac" dev s1 nud permanent

# awk program, not shell expansion
# shellcheck disable=SC2016
delivered() { ip netns exec "${P}p" awk '/^Udp:/{if(h){print $2+$4}else h=1}' /proc/net/snmp; }
one() {
  local mode=$1
  ip netns exec "${P}s" "$BIN" --listen 10.0.1.1:3478 --relay-ip 10.0.2.1 \
    --relay-ports 50000-50099 --allow-peer 10.0.2.0/24 --auth-secret S --realm test \
    --bandwidth 0 --offload "$mode" --offload-interface s0 --offload-interface s1 \
    --metrics-listen 10.0.1.1:9641 --workers 1 >/dev/null 2>&1 &
  local srv=$!
  ip netns exec "${P}p" python3 -c "
import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('10.0.2.2',3480)); time.sleep($SECS+6)" &
  local peer=$!
  sleep 1.5
  local r0 p0 r1 p1 out m
  r0=$(delivered); p0=$(awk '{print $14+$15}' "/proc/$srv/stat")
  out=$(ip netns exec "${P}c" python3 crates/turn-offload/bench/blast.py "$SECS" "$SIZE")
  sleep 0.7
  r1=$(delivered); p1=$(awk '{print $14+$15}' "/proc/$srv/stat")
  m=$(ip netns exec "${P}c" python3 -c "import urllib.request;print(urllib.request.urlopen('http://10.0.1.1:9641/metrics').read().decode())" \
    | grep -E '^callrelay_turn_(offload_packets_total\{direction="to_peer"|relayed_packets_total\{direction="to_peer",transport="udp")' | awk '{print $2}' | tr '\n' ' ')
  kill "$srv" "$peer" 2>/dev/null || true; wait "$srv" 2>/dev/null || true
  local hz; hz=$(getconf CLK_TCK)
  echo "$mode: $out delivered $((r1 - r0)) metrics(offload,relayed to_peer) $m server_cpu_s $(python3 -c "print(round(($p1-$p0)/$hz,2))")"
}
for _ in $(seq "$ROUNDS"); do one off; one tc; done
