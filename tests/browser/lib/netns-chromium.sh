#!/bin/sh
# playwright's executablePath for a Chromium that runs inside network namespace
# $CALLRELAY_CHROMIUM_NETNS (test/nat.test.js). playwright talks to it over the
# --remote-debugging-pipe file descriptors, which `ip netns exec` passes through, so the
# browser needs no network path back to the test process.
set -eu
exec ip netns exec "${CALLRELAY_CHROMIUM_NETNS:?}" "${CHROMIUM_PATH:-/usr/bin/chromium}" "$@"
