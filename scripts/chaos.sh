#!/usr/bin/env bash
# make chaos: reliability under a misbehaving OpenAI, and kill -9 in the middle of runs.
# Loopback only; every phase is bounded in count and time. Exits non-zero on any violation.
#   CHAOS_RUNS=500 KILL_RUNS=50 bash scripts/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${CHAOS_RUNS:-500}"
KILL_RUNS="${KILL_RUNS:-50}"

cargo build --release --quiet --bin dalleserver --example chaos_openai --example chaos
BIN=target/release/dalleserver
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# Waits for "listening on ADDR" in a log file and prints ADDR.
addr_from() {
  for _ in $(seq 200); do
    a="$(grep -o 'listening on [0-9.:]*' "$1" 2>/dev/null | head -1 | cut -d' ' -f3)"
    [ -n "$a" ] && { echo "$a"; return; }
    sleep 0.05
  done
  echo "no address in $1" >&2; cat "$1" >&2; exit 1
}

echo "== 1. $RUNS generations against a chaotic OpenAI, with constant polling"
target/release/examples/chaos_openai --port 0 --seed 7 --storm-seconds 8 > "$tmp/mock.log" 2>&1 &
pids+=($!)
mock="$(addr_from "$tmp/mock.log")"
OPENAI_API_KEY=chaos-key OPENAI_BASE_URL="http://$mock" TB_DALLE_NO_ENHANCE=1 TB_DALLE_IMAGE_TIMEOUT=3s \
TB_DALLE_RETRY_BASE=200ms RUST_LOG=info \
  "$BIN" --bind 127.0.0.1 --port 0 --data-dir "$tmp/chaos" --lock-ttl 10m > /dev/null 2> "$tmp/server.log" &
pids+=($!)
server="$(addr_from "$tmp/server.log")"
target/release/examples/chaos --server "http://$server" --mock "http://$mock" --data-dir "$tmp/chaos" --runs "$RUNS" --minutes 6
kill "${pids[-1]}" 2>/dev/null || true

echo
echo "== 2. kill -9 at random moments during $KILL_RUNS runs, restart, verify"
data="$tmp/kill"
for round in 1 2 3; do
  RUST_LOG=info "$BIN" --bind 127.0.0.1 --port 0 --data-dir "$data" --max-concurrent 4 > /dev/null 2> "$tmp/kill$round.log" &
  pid=$!; pids+=($pid)
  srv="$(addr_from "$tmp/kill$round.log")"
  for i in $(seq 0 $((KILL_RUNS - 1))); do
    printf -v a '0x%040x' $(( (i + 1) * 7919 ))
    curl -s -o /dev/null "http://$srv/dalle/simple/$a?generate=1" &
  done
  wait_ms=$(( (RANDOM % 1500) + 100 ))
  sleep "$(awk -v ms="$wait_ms" 'BEGIN { print ms / 1000 }')"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  echo "round $round: killed after ${wait_ms} ms"
  target/release/examples/chaos --data-dir "$data" --verify-only --server "http://$srv"
done
RUST_LOG=info "$BIN" --bind 127.0.0.1 --port 0 --data-dir "$data" > /dev/null 2> "$tmp/final.log" &
pids+=($!)
srv="$(addr_from "$tmp/final.log")"
# The keys the kill rounds used are 7919·(i+1); the driver's keys differ, so re-fire those first.
for i in $(seq 0 $((KILL_RUNS - 1))); do
  printf -v a '0x%040x' $(( (i + 1) * 7919 ))
  curl -s -o /dev/null "http://$srv/dalle/simple/$a?generate=1"
done
ok=0
for _ in $(seq 600); do
  done_count=0
  for i in $(seq 0 $((KILL_RUNS - 1))); do
    printf -v a '0x%040x' $(( (i + 1) * 7919 ))
    t="$(curl -s -o /dev/null -w '%{content_type}' "http://$srv/dalle/simple/$a")"
    [ "$t" = image/png ] && done_count=$((done_count + 1))
  done
  [ "$done_count" -eq "$KILL_RUNS" ] && { ok=1; break; }
  sleep 0.2
done
target/release/examples/chaos --data-dir "$data" --verify-only --server "http://$srv"
if [ "$ok" -ne 1 ]; then echo "RESULT: only $done_count of $KILL_RUNS keys completed after the restarts"; exit 1; fi
echo "RESULT: all $KILL_RUNS keys completed after 3 kill -9 rounds; every PNG on disk decodes"
