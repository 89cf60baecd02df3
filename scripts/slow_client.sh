#!/usr/bin/env bash
# Slow-client protection on the real binary (`make slow-client`): starts the release server on
# a free loopback port and runs scripts/slow_client.py against it — slow connections sending
# their request headers one byte every 0.5 s, and a fast client meanwhile. The server must
# close each slow connection at its 10 s header limit while the fast requests stay quick.
# Bounded: the check stops itself after 20 s.
#
#   scripts/slow_client.sh               # one slow connection
#   scripts/slow_client.sh --slow 200    # many (a slowloris attack)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/server.sh
. scripts/lib/server.sh
# Debug for the server module: it logs why it closes a connection.
SERVER_RUST_LOG=info,dalleserver::server=debug start_server
status=0
timeout --kill-after=5 30 python3 scripts/slow_client.py "$ADDR" "$@" || status=$?
echo "server log: $(grep -c 'request headers not received in time' "$WORK/server.log" || true) connection(s) closed for slow headers" >&2
exit $status
