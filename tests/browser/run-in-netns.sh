#!/bin/sh
# Runs a command in a fresh network namespace whose only interface is loopback.
#
# Why: even with iceTransportPolicy "relay", Chromium binds its UDP sockets to every
# interface address it finds (eth0's IPv4, global IPv6) and sends its TURN requests from
# them, so the TURN server would answer to the machine's own interface address. In a
# namespace with only `lo`, 127.0.0.1/::1 are the only addresses that exist: everything
# the tests send stays on loopback by construction. Chromium then needs
# --allow-loopback-in-peer-connection (lib/web.js) to gather at all.
#
# As root: unshare --net. Otherwise a user namespace maps us to root inside it (needs
# unprivileged user namespaces).
set -eu
if [ "${CALLRELAY_IN_NETNS:-}" = 1 ]; then
  ip link set lo up
  exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
  exec env CALLRELAY_IN_NETNS=1 unshare --net -- "$0" "$@"
else
  exec env CALLRELAY_IN_NETNS=1 unshare --map-root-user --net -- "$0" "$@"
fi
