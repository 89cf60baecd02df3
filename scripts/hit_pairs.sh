#!/usr/bin/env bash
# Goal 1 of issue 7 (cache-hit GET against nginx) measured finely: many short wrk runs, in pairs
# (nginx then dalleserver, then the other way round), each pair giving one ratio, so slow drift
# of a shared machine cancels within a pair. Prints each pair and the median and quartiles of
# the ratios of requests/s, server CPU and client (wrk) CPU per response. `make load` remains
# the benchmark of record; this is the tool for telling two builds or two settings apart.
#
#   scripts/hit_pairs.sh [dalleserver-binary]      (default: target/release/dalleserver)
#
# Environment: PAIRS (default 24), PAIR_SECONDS (per wrk run, default 2), PAIRS_GENERATE=N
# (the server first makes N images against a 1 s mock OpenAI, as in `make load`),
# PAIRS_ALLOCS=1 (count malloc/realloc calls per hit with perf uprobes on libc; needs root and
# perf), PAIRS_ACCESS_LOG=info|debug|off (passed as --access-log; unset: the binary's default,
# which also suits a binary older than the flag). The server's output goes to a file in the
# work directory, as in a deployment. Needs nginx, wrk and curl. Everything listens on free loopback ports, lives in a
# temporary directory and stops on exit; every wrk run is bounded by PAIR_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PAIRS=${PAIRS:-24}
SECS=${PAIR_SECONDS:-2}
GENERATE=${PAIRS_GENERATE:-0}

for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "hit_pairs.sh: $tool is missing" >&2; exit 1; }
done
cargo build --release --examples --bins --quiet
BIN=${1:-$ROOT/target/release/dalleserver}
EX=$ROOT/target/release/examples

WORK=$(mktemp -d /tmp/dalleserver-pairs.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_ok and the nginx configuration shared with load.sh.
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh
cpu_ticks() { local sum=0 pid; for pid in $1; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$sum"; }

# The served image: the mock's picture with a caption bar, as the server writes it (2.2 MB).
ADDRESS=0x0000000000000000000000000000000000000001
DATA=$WORK/data
HIT_FILE=$DATA/output/simple/annotated/$ADDRESS.png
mkdir -p "$(dirname "$HIT_FILE")"
"$EX/mock_openai" --write-png "$WORK/in.png"
printf '%s' "A weary lighthouse keeper gazes across a storm-dark harbour while gulls wheel above the broken pier; amber lamplight spills over wet cobblestones." >"$WORK/caption.txt"
"$EX/annotate_file" "$WORK/in.png" "$WORK/caption.txt" "$HIT_FILE"

FLAGS=()
[ -n "${PAIRS_ACCESS_LOG:-}" ] && FLAGS=(--access-log "$PAIRS_ACCESS_LOG")
PORT=$(free_port)
if [ "$GENERATE" -gt 0 ]; then
  MOCK_PORT=$(free_port)
  "$EX/mock_openai" --port "$MOCK_PORT" --delay-ms 1000 >"$WORK/mock.log" 2>&1 &
  PIDS+=($!)
  wait_ok "http://127.0.0.1:$MOCK_PORT/stats" 30
  OPENAI_API_KEY=x OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT TB_DALLE_NO_ENHANCE=1 RUST_LOG=info \
    "$BIN" --bind 127.0.0.1 --port "$PORT" --data-dir "$DATA" --max-concurrent 50 "${FLAGS[@]}" >"$WORK/server.log" 2>&1 &
else
  env -u OPENAI_API_KEY RUST_LOG=info "$BIN" --bind 127.0.0.1 --port "$PORT" --data-dir "$DATA" "${FLAGS[@]}" >"$WORK/server.log" 2>&1 &
fi
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_ok "http://127.0.0.1:$PORT/readyz" 30
if [ "$GENERATE" -gt 0 ]; then
  "$EX/load_generate" --url "http://127.0.0.1:$PORT" --count "$GENERATE" --first 2 --timeout-secs 300 >"$WORK/generate.json"
  echo "generated: $(cat "$WORK/generate.json")"
fi

NGINX_PORT=$(free_port)
write_nginx_conf "$WORK/nginx" "$NGINX_PORT" "$DATA/output" "$WORK/www"
nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGINX_URL=http://127.0.0.1:$NGINX_PORT/simple/annotated/$ADDRESS.png
OURS_URL=http://127.0.0.1:$PORT/dalle/simple/$ADDRESS
wait_ok "$NGINX_URL" 30
cmp <(curl -sf "$OURS_URL") "$HIT_FILE"
cmp <(curl -sf "$NGINX_URL") "$HIT_FILE"
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"

if [ "${PAIRS_ALLOCS:-0}" = 1 ]; then
  LIBC=$(ldd "$BIN" | awk '/libc.so/ {print $3}')
  perf probe -q -x "$LIBC" malloc 2>/dev/null || true
  perf probe -q -x "$LIBC" realloc 2>/dev/null || true
  perf stat -e probe_libc:malloc,probe_libc:realloc -x, -p "$SERVER_PID" -o "$WORK/allocs.txt" -- sleep 3 &
  STAT=$!
  sleep 0.5
  N=$(wrk -t1 -c4 -d2s "$OURS_URL" | awk '/ requests in /{print $1}')
  wait "$STAT"
  awk -F, -v n="$N" '$3 != "" {printf "%s per hit: %.1f\n", $3, $1 / n}' "$WORK/allocs.txt"
fi

# One wrk run: "req/s server-cpu-us client-cpu-us" per response.
run() {
  local before after
  before=$(cpu_ticks "$2")
  /usr/bin/time -f '%U %S' -o "$WORK/time.txt" wrk -t2 -c64 -d"${SECS}s" "$1" >"$WORK/wrk.txt"
  after=$(cpu_ticks "$2")
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" -v t="$(cat "$WORK/time.txt")" '
    / requests in / {n = $1}
    /Requests\/sec/ {rps = $2}
    END {split(t, c, " "); printf "%.0f %.1f %.1f", rps, ticks / hz * 1e6 / n, (c[1] + c[2]) * 1e6 / n}' "$WORK/wrk.txt"
}
wrk -t2 -c64 -d1s "$NGINX_URL" >/dev/null
wrk -t2 -c64 -d1s "$OURS_URL" >/dev/null
echo "pair: nginx req/s, server µs, wrk µs | dalleserver req/s, server µs, wrk µs | ratio"
for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then
    n=$(run "$NGINX_URL" "$NGINX_PIDS"); o=$(run "$OURS_URL" "$SERVER_PID")
  else
    o=$(run "$OURS_URL" "$SERVER_PID"); n=$(run "$NGINX_URL" "$NGINX_PIDS")
  fi
  echo "$n $o" >>"$WORK/pairs.txt"
  echo "$i: $n | $o | $(echo "$n $o" | awk '{printf "%.3f", $4 / $1}')"
done
# Quartiles of the per-pair ratios dalleserver / nginx.
for col in 1 2 3; do
  awk -v c=$col '{print $(c + 3) / $c}' "$WORK/pairs.txt" | sort -g |
    awk -v name="$(echo "req/s server-CPU wrk-CPU" | cut -d' ' -f$col)" '{v[NR] = $1}
      END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
           printf "%s ratio: median %.3f, quartiles %.3f–%.3f\n", name, m, v[int(NR / 4) + 1], v[int(3 * NR / 4)]}'
done
