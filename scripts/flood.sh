#!/usr/bin/env bash
# The flood figure of book/src/reliability.md: 10 000 anonymous `?generate=1` for random
# addresses in 60 s against a live-mode release server and the local mock OpenAI
# (examples/mock_openai.rs), while a second client asks for a cached image and times it.
# `make flood` runs it. Two rounds, each on a fresh server (fresh budget, fresh buckets):
#
#   one-client   every request from one client address (X-Forwarded-For 198.51.100.1 through
#                the loopback proxy the server trusts): the rate limit is what stops it
#   random       every request from a new random client address: the budget stops it
#
# The server runs with its defaults (--anon-rate-limit 10/min, --budget-daily-usd 10, image
# model gpt-image-2, reserved at $0.25 a run) plus --trusted-proxy 127.0.0.1. Everything
# listens on free loopback ports in a temporary directory and is stopped on exit; each round
# lasts FLOOD_SECONDS (default 60) plus at most 60 s for the runs it started to finish.
#
# Environment: FLOOD_REQUESTS (default 10000), FLOOD_SECONDS (default 60), FLOOD_ROUNDS
# ("one-client random" by default), DALLESERVER_BIN (a built binary instead of building one).
# Prints a JSON line per round; the summary goes to target/flood/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${FLOOD_REQUESTS:-10000}
SECONDS_PER_ROUND=${FLOOD_SECONDS:-60}
ROUNDS=${FLOOD_ROUNDS:-one-client random}
for tool in curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "flood.sh: $tool is missing (apt-get install -y curl jq)" >&2; exit 1; }
done

echo "== building (release: server, mock OpenAI, flood client)" >&2
if [ -z "${DALLESERVER_BIN:-}" ]; then
  cargo build --release --quiet --bin dalleserver --example mock_openai --example flood
  BIN=$ROOT/target/release/dalleserver
else
  cargo build --release --quiet --example mock_openai --example flood
  BIN=$(realpath "$DALLESERVER_BIN")
fi
EX=$ROOT/target/release/examples
OUT=$ROOT/target/flood
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dalleserver-flood.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# Waits (bounded) for "listening on ADDR" in a log; prints ADDR.
listening() {
  local log=$1 pid=$2 addr=""
  for _ in $(seq 1 150); do
    addr=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}\([0-9.:]*\).*/\2/p' "$log" | head -n 1 || true)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "flood.sh: no listening line in $log:" >&2; cat "$log" >&2; exit 1
}

metric() { curl -s --max-time 10 "$1/metrics" | awk -v s="$2" '$1 == s {print $2}'; }

summary="[]"
for round in $ROUNDS; do
  dir=$WORK/$round
  mkdir -p "$dir/home" "$dir/data"
  # The mock OpenAI: 200 ms per image, a real-size 1024x1024 PNG.
  "$EX/mock_openai" --port 0 --delay-ms 200 >"$dir/mock.log" 2>&1 &
  mock_pid=$!; PIDS+=("$mock_pid")
  mock=$(listening "$dir/mock.log" "$mock_pid")
  (cd "$dir" && exec env -i PATH="$PATH" HOME="$dir/home" RUST_LOG=warn,dalleserver=info \
      OPENAI_API_KEY=sk-flood OPENAI_BASE_URL="http://$mock" TB_DALLE_NO_ENHANCE=1 \
      TB_DALLE_ACCESS_LOG=off \
      "$BIN" --bind 127.0.0.1 --port 0 --data-dir "$dir/data" --trusted-proxy 127.0.0.1) \
      >"$dir/server.log" 2>&1 &
  server_pid=$!; PIDS+=("$server_pid")
  addr=$(listening "$dir/server.log" "$server_pid")
  base="http://$addr"
  # The cached image the second client reads, made first by a client of its own.
  hit_address=0xf503017d7baf7fbc0fff7492b751025c6a78179b
  curl -s --max-time 10 -H 'X-Forwarded-For: 192.0.2.1' \
    "$base/dalle/simple/$hit_address?generate=1" >/dev/null
  for _ in $(seq 1 300); do
    type=$(curl -s --max-time 10 -o /dev/null -w '%{content_type}' "$base/dalle/simple/$hit_address")
    [ "$type" = "image/png" ] && break
    sleep 0.2
  done
  [ "$type" = "image/png" ] || { echo "flood.sh: the cached image was never made" >&2; exit 1; }
  rss_before=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
  clients=random
  [ "$round" = one-client ] && clients=198.51.100.1
  echo "== round $round: $REQUESTS requests in ${SECONDS_PER_ROUND}s against $base" >&2
  report=$("$EX/flood" --base "$base" --requests "$REQUESTS" --seconds "$SECONDS_PER_ROUND" \
    --clients "$clients" --hit "/dalle/simple/$hit_address")
  rss_flood=$(awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status")
  # Let every run the flood started finish (bounded), then read the totals.
  for _ in $(seq 1 300); do
    reserved=$(curl -s --max-time 10 "$base/v1/usage" | jq '.data.reserved.images')
    [ "$reserved" = 0 ] && break
    sleep 0.2
  done
  usage=$(curl -s --max-time 10 "$base/v1/usage" | jq -c '.data | {today, reserved, remaining: .remaining.dailyUsd}')
  images=$(curl -s --max-time 10 "http://$mock/stats" | jq '.images')
  line=$(jq -cn --arg round "$round" --argjson report "$report" --argjson usage "$usage" \
    --argjson images "$images" --argjson rss_before "$rss_before" --argjson rss_peak "$rss_flood" \
    --arg anon "$(metric "$base" 'dalleserver_rate_limited_total{scope="anonymous"}')" \
    --arg budget "$(metric "$base" dalleserver_budget_refusals_total)" \
    '{round: $round, image_requests: $images, usage: $usage, flood: $report,
      metrics: {rate_limited_anonymous: ($anon | tonumber), budget_refusals: ($budget | tonumber)},
      rss_kib: {before: $rss_before, peak: $rss_peak}}')
  echo "$line"
  summary=$(jq -c --argjson line "$line" '. + [$line]' <<<"$summary")
  kill -TERM "$server_pid" "$mock_pid" 2>/dev/null || true
  wait "$server_pid" "$mock_pid" 2>/dev/null || true
done
jq . <<<"$summary" >"$OUT/summary.json"
echo "== summary in $OUT/summary.json" >&2
