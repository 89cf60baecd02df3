#!/usr/bin/env bash
# Load benchmarks (issue 7): the release binary against nginx and ImageMagick on this machine,
# each pair measured side by side in one run. `make load` runs it; the numbers and how to read
# them are in book/src/benchmarks.md. Not part of CI or `make test`.
#
#   1. cache-hit GET /dalle/<series>/<address> (a 2 MB PNG) vs nginx serving the same file
#   2. progress polls of 100 runs in flight (1 000 connections) vs nginx serving the same bodies
#   3. caption + PNG encode of a 1024x1024 image vs ImageMagick's convert (hyperfine)
#   4. 200 generations against a mock OpenAI taking 1 s per image: wall time, memory, start-up
#
# Needs nginx, wrk, hyperfine, ImageMagick (convert), curl and jq (Debian:
# apt-get install -y nginx wrk imagemagick hyperfine curl jq). Everything listens on free
# loopback ports, lives in a temporary directory and is stopped on exit. Every load loop is
# bounded: wrk runs for LOAD_SECONDS, the generation client gives up after 300 s.
#
# Environment: LOAD_SECONDS (per wrk run, default 10), LOAD_ROUNDS (interleaved rounds per
# comparison, default 3; medians are reported), LOAD_KEEP=1 keeps the work directory.
# Results: target/load/summary.md (the table) and target/load/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_RUN=${LOAD_SECONDS:-10}
ROUNDS=${LOAD_ROUNDS:-3}
GENERATIONS=200
MAX_CONCURRENT=50
POLL_RUNS=100
CORES=$(nproc)

for tool in nginx wrk hyperfine curl jq; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "load.sh: $tool is missing (Debian: apt-get install -y nginx wrk imagemagick hyperfine curl jq)" >&2
    exit 1
  }
done
# The real ImageMagick binary (a wrapper script in front of it would be timed too).
CONVERT=""
for candidate in /usr/bin/convert-im6.q16 /usr/bin/convert "$(command -v convert || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then CONVERT=$candidate; break; fi
done
[ -n "$CONVERT" ] || { echo "load.sh: ImageMagick's convert is missing" >&2; exit 1; }

# wrk -c1000 and the servers need more than the usual 1 024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release: binary and examples)"
cargo build --release --examples --bins --quiet
BIN=$ROOT/target/release
OUT=$ROOT/target/load
mkdir -p "$OUT"

WORK=$(mktemp -d /tmp/dalleserver-load.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${LOAD_KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\n== %s\n' "$*"; }
load_average() { cut -d' ' -f1-3 /proc/loadavg; }

# free_port, wait_ok and the nginx configuration shared with hit_pairs.sh.
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kb() { awk -v key="$2:" '$1 == key {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# Runs wrk against $2 with $1 connections while counting the CPU time of the processes $3
# (space-separated pids); prints "requests/s p99_ms non_2xx socket_errors server_cpu_us_per_request".
# Extra wrk flags follow.
wrk_run() {
  local conns=$1 url=$2 pids=$3
  shift 3
  local before after pid out
  before=0
  for pid in $pids; do before=$((before + $(cpu_ticks "$pid"))); done
  out=$(wrk -t2 -c"$conns" -d"${SECONDS_PER_RUN}s" --latency "$@" "$url")
  after=0
  for pid in $pids; do after=$((after + $(cpu_ticks "$pid"))); done
  echo "$out" | awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    / requests in / {n = $1}
    /Requests\/sec/ {rps = $2}
    /^ +99%/ {v = $2; if (v ~ /us$/) ms = v / 1000; else if (v ~ /ms$/) ms = v + 0; else ms = v * 1000}
    /Non-2xx/ {bad = $NF}
    /Socket errors/ {for (i = 3; i <= NF; i++) {e = $i; gsub(/,/, "", e); if (e ~ /^[0-9]+$/) err += e}}
    END {printf "%s %.2f %d %d %.1f\n", rps, ms, bad, err, (n > 0 ? ticks / hz * 1e6 / n : 0)}'
}

# Interleaves ROUNDS runs of nginx and dalleserver (which goes first alternates), after a short
# unmeasured warm-up of each; prints the medians "nginx_rps nginx_p99 nginx_cpu ours_rps
# ours_p99 ours_cpu" and the count of non-2xx answers and socket errors of dalleserver.
compare() {
  local name=$1 conns=$2 nginx_url=$3 ours_url=$4 lua=${5:-}
  local extra=()
  [ -n "$lua" ] && extra=(-s "$lua")
  local nginx_pids ours_pid=$SERVER_PID
  nginx_pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
  POLL_PREFIX=/polls/simple/ wrk -t2 -c"$conns" -d2s "${extra[@]}" "$nginx_url" >/dev/null
  POLL_PREFIX=/dalle/simple/ wrk -t2 -c"$conns" -d2s "${extra[@]}" "$ours_url" >/dev/null
  : >"$WORK/$name.runs"
  : >"$WORK/$name.data"
  for round in $(seq "$ROUNDS"); do
    local n o
    if [ $((round % 2)) = 1 ]; then
      n=$(POLL_PREFIX=/polls/simple/ wrk_run "$conns" "$nginx_url" "$nginx_pids" "${extra[@]}")
      o=$(POLL_PREFIX=/dalle/simple/ wrk_run "$conns" "$ours_url" "$ours_pid" "${extra[@]}")
    else
      o=$(POLL_PREFIX=/dalle/simple/ wrk_run "$conns" "$ours_url" "$ours_pid" "${extra[@]}")
      n=$(POLL_PREFIX=/polls/simple/ wrk_run "$conns" "$nginx_url" "$nginx_pids" "${extra[@]}")
    fi
    echo "round $round  nginx: $n   dalleserver: $o   (req/s p99-ms non-2xx socket-errors cpu-us/req; load $(load_average))" |
      tee -a "$WORK/$name.runs" >&2
    echo "$n $o" >>"$WORK/$name.data"
  done
  local col
  for col in 1 2 5 6 7 10; do awk -v c=$col '{print $c}' "$WORK/$name.data" | median; done | tr '\n' ' '
  awk '{s += $8 + $9} END {print s + 0}' "$WORK/$name.data"
}

ADDRESS() { printf '0x%040x' "$1"; }

echo "machine: $CORES cores, $(uname -sr); load average before: $(load_average)"
echo "tools: $(nginx -v 2>&1 | cut -d' ' -f3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(hyperfine --version), $("$CONVERT" -version | head -1 | cut -d' ' -f2-3)"
LOAD_START=$(load_average)

# ---------------------------------------------------------------------------------------------
log "goal 3: caption bar + PNG encode of a 1024x1024 image, vs ImageMagick (hyperfine)"
"$BIN/examples/mock_openai" --write-png "$WORK/in.png"
# A ~300-byte caption, the length the terse prompt has (the same as benches/annotate.rs).
printf '%s' "A weary lighthouse keeper, drawn in a faded risograph style, gazes across a storm-dark harbour while gulls wheel above the broken pier; amber lamplight spills over wet cobblestones, and the quiet scene hums with a stubborn, tender hope that the fishing boats will come home before the turning tide." >"$WORK/caption.txt"
"$BIN/examples/annotate_file" "$WORK/in.png" "$WORK/caption.txt" "$WORK/ours.png"
# ImageMagick gets the same bar height, the same font at about the same size, and the caption
# already wrapped into lines (it cannot wrap -annotate text; the policy forbids @file text).
OUT_HEIGHT=$(od -An -tu1 -j20 -N4 "$WORK/ours.png" | awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}')
BAR=$((OUT_HEIGHT - 1024))
WRAPPED=$(fold -s -w 105 "$WORK/caption.txt")
IM_ARGS="-background '#2a3140' -gravity south -splice 0x$BAR -fill white -font DejaVu-Sans-Mono -pointsize 16 -annotate +0+40 '$WRAPPED'"
hyperfine --warmup 3 --runs 20 --export-json "$WORK/annotate.json" \
  -n dalleserver "$BIN/examples/annotate_file $WORK/in.png $WORK/caption.txt $WORK/ours.png" \
  -n convert "$CONVERT $WORK/in.png $IM_ARGS $WORK/im.png" \
  -n convert-zlib1 "$CONVERT $WORK/in.png $IM_ARGS -define png:compression-level=1 $WORK/im1.png" \
  >"$WORK/annotate.txt" 2>&1 || { cat "$WORK/annotate.txt"; exit 1; }
hf() { jq -r --arg n "$1" ".results[] | select(.command == \$n) | $2" "$WORK/annotate.json"; }
A_OURS=$(hf dalleserver '.mean * 1000')
A_IM=$(hf convert '.mean * 1000')
A_IM1=$(hf convert-zlib1 '.mean * 1000')
A_OURS_CPU=$(hf dalleserver '(.user + .system) * 1000')
SIZE_OURS=$(stat -c %s "$WORK/ours.png")
SIZE_IM=$(stat -c %s "$WORK/im.png")
SIZE_IM1=$(stat -c %s "$WORK/im1.png")
printf 'dalleserver %.1f ms (%s bytes), convert %.1f ms (%s bytes), convert zlib-1 %.1f ms (%s bytes)\n' \
  "$A_OURS" "$SIZE_OURS" "$A_IM" "$SIZE_IM" "$A_IM1" "$SIZE_IM1"

# ---------------------------------------------------------------------------------------------
log "goal 4: start-up, idle memory, then $GENERATIONS generations (mock OpenAI: 1 s per image, --max-concurrent $MAX_CONCURRENT)"
MOCK_PORT=$(free_port)
"$BIN/examples/mock_openai" --port "$MOCK_PORT" --delay-ms 1000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$MOCK_PORT/stats" 30
export OPENAI_API_KEY=x OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT TB_DALLE_NO_ENHANCE=1 RUST_LOG=info
DATA=$WORK/data
SERVER_PORT=$(free_port)
start_server() { # port data-dir log; sets SERVER_PID and STARTUP_MS
  local t0
  t0=$(date +%s%N)
  "$BIN/dalleserver" --bind 127.0.0.1 --port "$1" --data-dir "$2" --max-concurrent "$MAX_CONCURRENT" >"$3" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  local deadline=$((SECONDS + 30))
  until curl -sf -o /dev/null "http://127.0.0.1:$1/readyz"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "load.sh: server on $1 not ready" >&2; cat "$3" >&2; return 1; }
  done
  STARTUP_MS=$((($(date +%s%N) - t0) / 1000000))
}
stop_server() { # pid: stops it and forgets it (its number may be reused later)
  kill "$1"
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
}
# Five cold starts (the last one keeps running for the load): start-up time to the first 200
# on /readyz, and resident memory once idle.
STARTS=()
IDLE=()
for i in 1 2 3 4 5; do
  start_server "$SERVER_PORT" "$DATA" "$WORK/server.log"
  STARTS+=("$STARTUP_MS")
  sleep 1
  IDLE+=("$(status_kb "$SERVER_PID" VmRSS)")
  [ "$i" = 5 ] || stop_server "$SERVER_PID"
done
STARTUP_MEDIAN=$(printf '%s\n' "${STARTS[@]}" | median)
STARTUP_MAX=$(printf '%s\n' "${STARTS[@]}" | sort -n | tail -1)
IDLE_KB=$(printf '%s\n' "${IDLE[@]}" | sort -n | tail -1)
echo "start-up to ready: ${STARTS[*]} ms; idle VmRSS: ${IDLE[*]} kB"

GEN_LOAD_BEFORE=$(load_average)
T0=$(cpu_ticks "$SERVER_PID")
"$BIN/examples/load_generate" --url "http://127.0.0.1:$SERVER_PORT" --count "$GENERATIONS" --first 1 \
  --timeout-secs 300 | tee "$WORK/generate.json"
T1=$(cpu_ticks "$SERVER_PID")
GEN_LOAD_AFTER=$(load_average)
HWM_KB=$(status_kb "$SERVER_PID" VmHWM)
GEN_OK=$(jq .ok "$WORK/generate.json")
WALL=$(jq .wall_s "$WORK/generate.json")
MOCK_IMAGES=$(curl -s "http://127.0.0.1:$MOCK_PORT/stats" | jq .images)
ANNOTATED=$(find "$DATA/output/simple/annotated" -name '*.png' | wc -l)
CPU_S=$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
PER_IMAGE_MS=$(awk -v c="$CPU_S" -v n="$GENERATIONS" 'BEGIN {printf "%.1f", c * 1000 / n}')
WAVES=$(((GENERATIONS + MAX_CONCURRENT - 1) / MAX_CONCURRENT))
IDEAL=$(awk -v w="$WAVES" -v c="$PER_IMAGE_MS" -v n="$GENERATIONS" -v k="$CORES" 'BEGIN {printf "%.2f", w * 1.0 + c / 1000 * n / k}')
echo "wall ${WALL} s, server CPU ${CPU_S} s (${PER_IMAGE_MS} ms per image), ideal ${IDEAL} s, VmHWM ${HWM_KB} kB, mock answered $MOCK_IMAGES, $ANNOTATED annotated PNGs"

# ---------------------------------------------------------------------------------------------
log "nginx (same machine, same files)"
WWW=$WORK/www
HIT=$(ADDRESS 1)
mkdir -p "$WWW/polls/simple"
NGINX_PORT=$(free_port)
write_nginx_conf "$WORK/nginx" "$NGINX_PORT" "$DATA/output" "$WWW"
nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ok "http://127.0.0.1:$NGINX_PORT/simple/annotated/$HIT.png" 30

# ---------------------------------------------------------------------------------------------
log "goal 1: cache-hit GET of a ${SECONDS_PER_RUN}s wrk run, 64 connections, $ROUNDS rounds"
OURS_HIT=http://127.0.0.1:$SERVER_PORT/dalle/simple/$HIT
HIT_FILE=$DATA/output/simple/annotated/$HIT.png
cmp <(curl -sf "$OURS_HIT") "$HIT_FILE" # same bytes, and the cache is warm
cmp <(curl -sf "http://127.0.0.1:$NGINX_PORT/simple/annotated/$HIT.png") "$HIT_FILE"
read -r G1_NGINX G1_NGINX_P99 G1_NGINX_CPU G1_OURS G1_OURS_P99 G1_OURS_CPU G1_BAD < <(compare hit 64 \
  "http://127.0.0.1:$NGINX_PORT/simple/annotated/$HIT.png" "$OURS_HIT")
G1_LOAD=$(load_average)
PNG_BYTES=$(stat -c %s "$HIT_FILE")
stop_server "$SERVER_PID"

# ---------------------------------------------------------------------------------------------
log "goal 2: progress polls of $POLL_RUNS runs in flight, 1 000 connections, $ROUNDS rounds"
# A second mock that answers image requests only after 10 minutes keeps every run in flight
# (the script stops it long before).
STALL_PORT=$(free_port)
"$BIN/examples/mock_openai" --port "$STALL_PORT" --delay-ms 600000 >"$WORK/stall.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$STALL_PORT/stats" 30
export OPENAI_BASE_URL=http://127.0.0.1:$STALL_PORT
POLL_PORT=$(free_port)
start_server "$POLL_PORT" "$WORK/polls-data" "$WORK/polls-server.log"
for i in $(seq "$POLL_RUNS"); do
  curl -sf -o /dev/null "http://127.0.0.1:$POLL_PORT/dalle/simple/$(ADDRESS "$i")?generate=1"
done
sleep 1
# nginx serves each run's snapshot as it reads now, from a file: the same bytes per request.
for i in $(seq "$POLL_RUNS"); do
  curl -sf -o "$WWW/polls/simple/$(ADDRESS "$i")" "http://127.0.0.1:$POLL_PORT/dalle/simple/$(ADDRESS "$i")"
done
POLL_BYTES=$(stat -c %s "$WWW/polls/simple/$(ADDRESS 1)")
{
  echo 'local addrs = {'
  for i in $(seq "$POLL_RUNS"); do echo "\"$(ADDRESS "$i")\","; done
  echo '}'
  cat <<'EOF'
local prefix = os.getenv("POLL_PREFIX")
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", prefix .. addrs[(i % #addrs) + 1])
end
EOF
} >"$WORK/polls.lua"
read -r G2_NGINX G2_NGINX_P99 G2_NGINX_CPU G2_OURS G2_OURS_P99 G2_OURS_CPU G2_BAD < <(compare polls 1000 \
  "http://127.0.0.1:$NGINX_PORT" "http://127.0.0.1:$POLL_PORT" "$WORK/polls.lua")
G2_LOAD=$(load_average)
IN_FLIGHT=0
for i in $(seq "$POLL_RUNS"); do
  done_flag=$(curl -sf "http://127.0.0.1:$POLL_PORT/dalle/simple/$(ADDRESS "$i")" | jq .data.done)
  [ "$done_flag" = false ] && IN_FLIGHT=$((IN_FLIGHT + 1))
done
echo "runs still in flight after the polls: $IN_FLIGHT of $POLL_RUNS"

# ---------------------------------------------------------------------------------------------
pass() { if awk "BEGIN {exit !($1)}"; then echo PASS; else echo FAIL; fi; }
R1=$(awk -v a="$G1_OURS" -v b="$G1_NGINX" 'BEGIN {printf "%.2f", a / b}')
R2=$(awk -v a="$G2_OURS" -v b="$G2_NGINX" 'BEGIN {printf "%.2f", a / b}')
R3=$(awk -v a="$A_OURS" -v b="$A_IM" 'BEGIN {printf "%.3f", a / b}')
R4=$(awk -v a="$WALL" -v b="$IDEAL" 'BEGIN {printf "%.2f", a / b}')
P1=$(pass "$R1 >= 1.0 && $G1_BAD == 0")
P2=$(pass "$R2 >= 0.5 && $G2_BAD == 0 && $IN_FLIGHT == $POLL_RUNS")
P3=$(pass "$R3 <= 0.5")
P4W=$(pass "$R4 <= 1.10 && $GEN_OK == $GENERATIONS && $ANNOTATED == $GENERATIONS")
P4M=$(pass "$HWM_KB < 300 * 1024")
P4I=$(pass "$IDLE_KB < 30 * 1024")
P4S=$(pass "$STARTUP_MAX < 200")
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }

SUMMARY=$OUT/summary.md
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), $CORES cores, load average $LOAD_START at the start;"
  echo "wrk: -t2, ${SECONDS_PER_RUN} s per run, $ROUNDS interleaved rounds, medians."
  echo
  echo "| goal | measure | dalleserver | reference | ratio | target | result | load avg after (1/5/15 min) |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| 1 cache hit ($PNG_BYTES-byte PNG, -c64) | requests/s (p99) | $G1_OURS ($G1_OURS_P99 ms) | nginx $G1_NGINX ($G1_NGINX_P99 ms) | $R1 | ≥ 1.00 | $P1 | $G1_LOAD |"
  echo "| 1 | server CPU per request | $G1_OURS_CPU µs | nginx $G1_NGINX_CPU µs | | | | |"
  echo "| 2 progress polls ($POLL_RUNS runs in flight, $POLL_BYTES-byte body, -c1000) | requests/s (p99) | $G2_OURS ($G2_OURS_P99 ms) | nginx $G2_NGINX ($G2_NGINX_P99 ms) | $R2 | ≥ 0.50 | $P2 | $G2_LOAD |"
  echo "| 2 | server CPU per request; failed requests | $G2_OURS_CPU µs; $G2_BAD | nginx $G2_NGINX_CPU µs | | | | |"
  printf '| 3 caption + encode, 1024² | mean per process | %.1f ms | convert %.1f ms (zlib-1: %.1f ms) | %s | ≤ 0.50 | %s | %s |\n' "$A_OURS" "$A_IM" "$A_IM1" "$R3" "$P3" "$LOAD_START"
  echo "| 4 $GENERATIONS generations, 1 s mock, --max-concurrent $MAX_CONCURRENT | wall time | $WALL s | ideal $IDEAL s = $WAVES × 1 s + $PER_IMAGE_MS ms × $GENERATIONS / $CORES | $R4 | ≤ 1.10 | $P4W | $GEN_LOAD_BEFORE → $GEN_LOAD_AFTER |"
  echo "| 4 | peak RSS (VmHWM) | $(mb "$HWM_KB") | | | < 300 MB | $P4M | |"
  echo "| 4 | idle RSS after start (max of 5) | $(mb "$IDLE_KB") | | | < 30 MB | $P4I | |"
  echo "| 4 | spawn → first 200 on /readyz (median / max of 5) | $STARTUP_MEDIAN / $STARTUP_MAX ms | | | < 200 ms | $P4S | |"
} >"$SUMMARY"
jq -n \
  --arg when "$(date -u +%FT%TZ)" --argjson cores "$CORES" --arg load_start "$LOAD_START" \
  --argjson seconds "$SECONDS_PER_RUN" --argjson rounds "$ROUNDS" \
  --argjson g1_ours "$G1_OURS" --argjson g1_nginx "$G1_NGINX" --argjson g1_ours_p99 "$G1_OURS_P99" --argjson g1_nginx_p99 "$G1_NGINX_P99" \
  --argjson g1_ours_cpu_us "$G1_OURS_CPU" --argjson g1_nginx_cpu_us "$G1_NGINX_CPU" --argjson g1_failed "$G1_BAD" \
  --argjson g2_ours "$G2_OURS" --argjson g2_nginx "$G2_NGINX" --argjson g2_ours_p99 "$G2_OURS_P99" --argjson g2_nginx_p99 "$G2_NGINX_P99" \
  --argjson g2_ours_cpu_us "$G2_OURS_CPU" --argjson g2_nginx_cpu_us "$G2_NGINX_CPU" --argjson g2_failed "$G2_BAD" --argjson in_flight "$IN_FLIGHT" \
  --argjson a_ours "$A_OURS" --argjson a_im "$A_IM" --argjson a_im1 "$A_IM1" --argjson a_ours_cpu "$A_OURS_CPU" \
  --argjson wall "$WALL" --argjson ideal "$IDEAL" --argjson per_image_ms "$PER_IMAGE_MS" --argjson cpu_s "$CPU_S" \
  --argjson hwm_kb "$HWM_KB" --argjson idle_kb "$IDLE_KB" --arg startups "${STARTS[*]}" \
  '$ARGS.named' >"$OUT/results.json"
cp "$WORK"/*.runs "$WORK/annotate.txt" "$WORK/generate.json" "$OUT/" 2>/dev/null || true

log "summary (also in target/load/summary.md)"
cat "$SUMMARY"
