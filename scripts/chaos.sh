#!/usr/bin/env bash
# make chaos: reliability under a misbehaving OpenAI, kill -9 in the middle of runs, and
# SIGTERM in the middle of paid runs.
# Loopback only; every phase is bounded in count and time. Exits non-zero on any violation.
#   CHAOS_RUNS=500 KILL_RUNS=50 DRAIN_RUNS=50 bash scripts/chaos.sh
#   CHAOS_ONLY=drain bash scripts/chaos.sh   # only the shutdown round
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${CHAOS_RUNS:-500}"
KILL_RUNS="${KILL_RUNS:-50}"
DRAIN_RUNS="${DRAIN_RUNS:-50}"
ONLY="${CHAOS_ONLY:-}"

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

if [ -z "$ONLY" ]; then
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
fi

echo
echo "== 3. SIGTERM at random moments during $DRAIN_RUNS paid runs (1.5 s images), restart, verify"
# A calm fake OpenAI: every image succeeds after 1.5 s, and it counts each prompt it sees.
target/release/examples/chaos_openai --port 0 --calm --delay-ms 1500 > "$tmp/calm.log" 2>&1 &
pids+=($!)
calm="$(addr_from "$tmp/calm.log")"
data="$tmp/drain"
stat() { curl -s "http://$calm/stats" | grep -o "\"$1\":[0-9]*" | cut -d: -f2 || true; }
pngs() { { find "$data/output/simple/annotated" -name '*.png' 2>/dev/null || true; } | wc -l | tr -d ' '; }
queued() { { find "$data/queue" -name '*.json' 2>/dev/null || true; } | wc -l | tr -d ' '; }
field() { grep -o "$1=[a-z0-9]*" <<<"$2" | head -1 | cut -d= -f2 || true; }
start_live() {
  OPENAI_API_KEY=chaos-key OPENAI_BASE_URL="http://$calm" TB_DALLE_NO_ENHANCE=1 RUST_LOG=info \
    "$BIN" --bind 127.0.0.1 --port 0 --data-dir "$data" --max-concurrent 8 > /dev/null 2> "$1" &
  pid=$!; pids+=($pid)
  srv="$(addr_from "$1")"
}
fail=0
for round in 1 2 3; do
  start_live "$tmp/drain$round.log"
  if [ "$round" -eq 1 ]; then
    for i in $(seq 0 $((DRAIN_RUNS - 1))); do
      printf -v a '0x%040x' $(( (i + 1) * 104729 ))
      curl -s -o /dev/null "http://$srv/dalle/simple/$a?generate=1" &
    done
    wait_ms=$(( (RANDOM % 1200) + 300 ))
  else
    wait_ms=$(( (RANDOM % 2500) + 300 ))
  fi
  sleep "$(awk -v ms="$wait_ms" 'BEGIN { print ms / 1000 }')"
  kill -TERM "$pid"
  for _ in $(seq 100); do grep -q 'draining' "$tmp/drain$round.log" && break; sleep 0.02; done
  # While it drains, a new run is refused (503); once drained the listener is closed (000).
  refused="$(curl -s -o /dev/null -w '%{http_code}' "http://$srv/dalle/simple/0x$(printf '%040x' 999)?generate=1" || true)"
  health="$(curl -s -o /dev/null -w '%{http_code}' "http://$srv/health" || true)"
  rc=0; wait "$pid" || rc=$?
  line="$(grep 'drained' "$tmp/drain$round.log" | tail -1 || true)"
  finished="$(field finished "$line")"; requeued="$(field requeued "$line")"; lost="$(field lost "$line")"
  echo "round $round: SIGTERM after ${wait_ms} ms; exit $rc; finished=$finished requeued=$requeued lost=$lost;" \
    "new run during drain: $refused, /health: $health; image requests so far $(stat requests), PNGs $(pngs), queue $(queued)"
  [ "$rc" -eq 0 ] || { echo "VIOLATION: exit status $rc"; fail=1; }
  [ "$lost" = 0 ] || { echo "VIOLATION: $lost paid runs lost"; fail=1; }
  case "$refused" in 503|000) ;; *) echo "VIOLATION: a new run during the drain got $refused"; fail=1 ;; esac
  case "$health" in 200|000) ;; *) echo "VIOLATION: /health during the drain got $health"; fail=1 ;; esac
  # Every image request the fake answered became a PNG: no paid image was lost.
  [ "$(stat requests)" = "$(pngs)" ] || { echo "VIOLATION: $(stat requests) image requests, $(pngs) PNGs"; fail=1; }
  [ "$(queued)" = "$requeued" ] || { echo "VIOLATION: $requeued requeued, $(queued) queue entries"; fail=1; }
done
start_live "$tmp/drain-final.log"
ok=0
for _ in $(seq 600); do
  [ "$(pngs)" -ge "$DRAIN_RUNS" ] && { ok=1; break; }
  sleep 0.2
done
resumed="$(grep -o 'resumed=[0-9]*' "$tmp/drain-final.log" | head -1 | cut -d= -f2 || true)"
target/release/examples/chaos --data-dir "$data" --verify-only --server "http://$srv"
requests="$(stat requests)"; repeated="$(stat repeated)"
echo "final start: resumed ${resumed:-0}; PNGs $(pngs) of $DRAIN_RUNS; image requests $requests; prompts requested twice $repeated; queue entries $(queued)"
[ "$ok" -eq 1 ] || { echo "VIOLATION: only $(pngs) of $DRAIN_RUNS images after the restarts"; fail=1; }
[ "$requests" = "$DRAIN_RUNS" ] || { echo "VIOLATION: $requests image requests for $DRAIN_RUNS runs"; fail=1; }
[ "$repeated" = 0 ] || { echo "VIOLATION: $repeated prompts requested twice"; fail=1; }
if [ "$fail" -ne 0 ]; then echo "RESULT: the shutdown round found violations"; exit 1; fi
echo "RESULT: 3 SIGTERM rounds during $DRAIN_RUNS runs: 0 paid images lost, queued runs resumed after each restart, every image requested once"
