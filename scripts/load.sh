#!/usr/bin/env bash
# Load benchmarks: the release binary against nginx (and ImageMagick) on this machine, each
# comparison measured side by side in one run. `make load` runs it; the numbers and how to read
# them are in book/src/benchmarks.md. Not part of CI or `make test`.
#
#   (a) cache-hit GET /dalle/<series>/<address> of a real-size annotated image (1024x1024 with
#       photographic noise, ~2.2 MB PNG) vs nginx serving that very file            -c64
#   (b) the same for a small image (128x128 of that noise with its caption, ~40 KB)  -c64
#   (c) progress polls of 100 runs in flight vs nginx serving static files of the same bytes
#                                                                                    -c1000
#   each with dalleserver twice, `--access-log info` (the default) and `--access-log off`, and
#   with the CPU time per request of each server, counted from /proc/<pid>/stat;
#   3. caption + PNG encode of a 1024x1024 image vs ImageMagick's convert (hyperfine)
#   4. 200 generations against a mock OpenAI taking 1 s per image: wall time, memory, start-up
#
#   scripts/load.sh [dalleserver-binary]    (default: target/release/dalleserver, or $LOAD_BIN)
#
# Another binary (an older build, say) is measured with this tree's helpers and the same nginx;
# a binary without `--access-log` runs once per comparison, as it is. LOAD_BASELINE=<binary>
# adds that binary to every comparison (with its access log off, or as built if it has no
# such flag), so a before and an after share the same rounds; LOAD_BASELINE_NAME labels it.
#
# Nothing on the host is tuned: every server uses the machine's default congestion control and
# socket settings, and no sysctl, route or limit is changed beyond this shell's descriptor limit.
# The servers' stderr goes to files under the work directory, as in a deployment, never to a
# terminal. Needs nginx, wrk, hyperfine, ImageMagick (convert), curl and jq (Debian:
# apt-get install -y nginx wrk imagemagick hyperfine curl jq). Everything listens on free
# loopback ports, lives in a temporary directory and is stopped on exit. Every loop is bounded:
# wrk runs for LOAD_SECONDS, each curl for at most 10 s, waits for readiness for 30–60 s, and the
# generation client gives up after 300 s.
#
# Environment: LOAD_SECONDS (per wrk run, default 10), LOAD_ROUNDS (interleaved rounds per
# comparison, default 3; medians are reported), LOAD_GOALS34=0 skips goals 3 and 4 (one
# generation still makes the large image), LOAD_KEEP=1 keeps the work directory.
# Results: target/load/summary.md (the tables), target/load/results.json and the raw rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_RUN=${LOAD_SECONDS:-10}
ROUNDS=${LOAD_ROUNDS:-3}
GOALS34=${LOAD_GOALS34:-1}
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

# wrk -c1000 and the servers need more than the usual 1 024 descriptors (this shell and its
# children only).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release: binary and examples)"
cargo build --release --examples --bins --quiet
EX=$ROOT/target/release/examples
SERVER_BIN=$(realpath "${1:-${LOAD_BIN:-$ROOT/target/release/dalleserver}}")
OUT=$ROOT/target/load
mkdir -p "$OUT"
# The access-log settings each comparison runs dalleserver with.
if "$SERVER_BIN" --help 2>&1 | grep -q -- '--access-log'; then
  VARIANTS=(info off)
else
  VARIANTS=(builtin)
fi
# The servers each comparison runs beside nginx, by key: the binary under test once per
# access-log setting, and the baseline binary (LOAD_BASELINE) if one is given, so a before and
# an after are measured in the same rounds.
declare -A BIN_OF VARIANT_OF LABEL_OF
KEYS=()
for v in "${VARIANTS[@]}"; do
  KEYS+=("$v")
  BIN_OF[$v]=$SERVER_BIN
  VARIANT_OF[$v]=$v
  case $v in
    info) LABEL_OF[$v]="dalleserver, access log info" ;;
    off) LABEL_OF[$v]="dalleserver, access log off" ;;
    *) LABEL_OF[$v]="dalleserver (no --access-log flag: as built)" ;;
  esac
done
if [ -n "${LOAD_BASELINE:-}" ]; then
  KEYS+=(baseline)
  BIN_OF[baseline]=$(realpath "$LOAD_BASELINE")
  if "${BIN_OF[baseline]}" --help 2>&1 | grep -q -- '--access-log'; then
    VARIANT_OF[baseline]=off
    LABEL_OF[baseline]="baseline ${LOAD_BASELINE_NAME:-$(basename "$LOAD_BASELINE")}, access log off"
  else
    VARIANT_OF[baseline]=builtin
    LABEL_OF[baseline]="baseline ${LOAD_BASELINE_NAME:-$(basename "$LOAD_BASELINE")}"
  fi
fi

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
get() { curl -sf -m 10 "$@"; }

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

# compare NAME CONNS LUA TARGET… where each TARGET is "label|url|pids|poll-prefix" and the
# first is the reference (nginx). After a short unmeasured warm-up of each, runs ROUNDS rounds;
# in each every target gets one wrk run, and the order rotates from round to round, so each
# target goes first, second, … equally often and slow drift of a shared machine spreads over
# all of them. Writes $WORK/NAME.data (one line per run: round label rps p99 non2xx errors cpu)
# and $WORK/NAME.medians (per target: label rps p99 cpu failed ratio-median ratio-min
# ratio-max, the ratios being of each round's requests/s to the reference's in that round).
compare() {
  local name=$1 conns=$2 lua=$3
  shift 3
  local targets=("$@") n=$# extra=() t label url pids prefix round k r
  [ -n "$lua" ] && extra=(-s "$lua")
  for t in "${targets[@]}"; do
    IFS='|' read -r label url pids prefix <<<"$t"
    POLL_PREFIX=$prefix wrk -t2 -c"$conns" -d2s "${extra[@]}" "$url" >/dev/null
  done
  : >"$WORK/$name.runs"
  : >"$WORK/$name.data"
  for round in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
      IFS='|' read -r label url pids prefix <<<"${targets[$(((round - 1 + k) % n))]}"
      r=$(POLL_PREFIX=$prefix wrk_run "$conns" "$url" "$pids" "${extra[@]}")
      echo "$round ${label// /_} $r" >>"$WORK/$name.data"
      echo "$name round $round  $label: $r   (req/s p99-ms non-2xx socket-errors cpu-us/req; load $(load_average))" |
        tee -a "$WORK/$name.runs" >&2
    done
  done
  local reference
  IFS='|' read -r reference _ <<<"${targets[0]}"
  reference=${reference// /_}
  : >"$WORK/$name.medians"
  for t in "${targets[@]}"; do
    IFS='|' read -r label _ <<<"$t"
    label=${label// /_}
    {
      echo "$label"
      for col in 3 4 7; do awk -v l="$label" -v c=$col '$2 == l {print $c}' "$WORK/$name.data" | median; done
      awk -v l="$label" '$2 == l {s += $5 + $6} END {print s + 0}' "$WORK/$name.data"
      awk -v l="$label" -v r="$reference" '$2 == r {ref[$1] = $3} $2 == l {ours[$1] = $3}
        END {for (k in ours) if (ref[k] > 0) print ours[k] / ref[k]}' "$WORK/$name.data" |
        sort -g | awk '{v[NR] = $1} END {printf "%.3f %.3f %.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR]}'
    } | tr '\n' ' ' >>"$WORK/$name.medians"
    echo >>"$WORK/$name.medians"
  done
  cat "$WORK/$name.medians" >&2
}
# field NAME LABEL COLUMN: one value of compare's medians (2 rps, 3 p99, 4 cpu, 5 failed,
# 6 ratio median, 7 ratio min, 8 ratio max).
field() { awk -v l="${2// /_}" -v c="$3" '$1 == l {print $c}' "$WORK/$1.medians"; }

ADDRESS() { printf '0x%040x' "$1"; }

# start_server BINARY PORT DATA-DIR LOG VARIANT [VAR=value…]: BINARY on 127.0.0.1:PORT,
# with the caller's OpenAI and access-log settings removed and the given variables added, run
# in the work directory (so no .env of the caller's is read), stdout and stderr appended to
# LOG; sets SERVER_PID and STARTUP_MS (spawn to the first 200 on /readyz).
start_server() {
  local bin=$1 port=$2 data=$3 out=$4 variant=$5 t0 flags=()
  shift 5
  [ "$variant" = builtin ] || flags=(--access-log "$variant")
  t0=$(date +%s%N)
  (cd "$WORK" && exec env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u TB_DALLE_ACCESS_LOG RUST_LOG=info "$@" \
    "$bin" --bind 127.0.0.1 --port "$port" --data-dir "$data" --max-concurrent "$MAX_CONCURRENT" "${flags[@]}") >>"$out" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  local deadline=$((SECONDS + 30))
  until curl -sf -m 2 -o /dev/null "http://127.0.0.1:$port/readyz"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "load.sh: server on $port not ready" >&2; tail -20 "$out" >&2; return 1; }
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

echo "machine: $CORES cores, $(uname -sr); load average before: $(load_average)"
echo "congestion control (host default, unchanged): $(cat /proc/sys/net/ipv4/tcp_congestion_control)"
echo "server binary: $SERVER_BIN (access-log variants: ${VARIANTS[*]})${LOAD_BASELINE:+; baseline: ${BIN_OF[baseline]}}"
echo "tools: $(nginx -v 2>&1 | cut -d' ' -f3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(hyperfine --version), $("$CONVERT" -version | head -1 | cut -d' ' -f2-3)"
LOAD_START=$(load_average)
LOAD_STARTED=$(date -u +%Y-%m-%dT%H:%MZ)

# ---------------------------------------------------------------------------------------------
if [ "$GOALS34" = 1 ]; then
  log "goal 3: caption bar + PNG encode of a 1024x1024 image, vs ImageMagick (hyperfine)"
  "$EX/mock_openai" --write-png "$WORK/in.png"
  # A ~300-byte caption, the length the terse prompt has (the same as benches/annotate.rs).
  printf '%s' "A weary lighthouse keeper, drawn in a faded risograph style, gazes across a storm-dark harbour while gulls wheel above the broken pier; amber lamplight spills over wet cobblestones, and the quiet scene hums with a stubborn, tender hope that the fishing boats will come home before the turning tide." >"$WORK/caption.txt"
  "$EX/annotate_file" "$WORK/in.png" "$WORK/caption.txt" "$WORK/ours.png"
  # ImageMagick gets the same bar height, the same font at about the same size, and the caption
  # already wrapped into lines (it cannot wrap -annotate text; the policy forbids @file text).
  OUT_HEIGHT=$(od -An -tu1 -j20 -N4 "$WORK/ours.png" | awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}')
  BAR=$((OUT_HEIGHT - 1024))
  WRAPPED=$(fold -s -w 105 "$WORK/caption.txt")
  IM_ARGS="-background '#2a3140' -gravity south -splice 0x$BAR -fill white -font DejaVu-Sans-Mono -pointsize 16 -annotate +0+40 '$WRAPPED'"
  hyperfine --warmup 3 --runs 20 --export-json "$WORK/annotate.json" \
    -n dalleserver "$EX/annotate_file $WORK/in.png $WORK/caption.txt $WORK/ours.png" \
    -n convert "$CONVERT $WORK/in.png $IM_ARGS $WORK/im.png" \
    -n convert-zlib1 "$CONVERT $WORK/in.png $IM_ARGS -define png:compression-level=1 $WORK/im1.png" \
    >"$WORK/annotate.txt" 2>&1 || { cat "$WORK/annotate.txt"; exit 1; }
  hf() { jq -r --arg n "$1" ".results[] | select(.command == \$n) | $2" "$WORK/annotate.json"; }
  A_OURS=$(hf dalleserver '.mean * 1000')
  A_IM=$(hf convert '.mean * 1000')
  A_IM1=$(hf convert-zlib1 '.mean * 1000')
  SIZE_OURS=$(stat -c %s "$WORK/ours.png")
  SIZE_IM=$(stat -c %s "$WORK/im.png")
  SIZE_IM1=$(stat -c %s "$WORK/im1.png")
  printf 'dalleserver %.1f ms (%s bytes), convert %.1f ms (%s bytes), convert zlib-1 %.1f ms (%s bytes)\n' \
    "$A_OURS" "$SIZE_OURS" "$A_IM" "$SIZE_IM" "$A_IM1" "$SIZE_IM1"
fi

# ---------------------------------------------------------------------------------------------
# Goal 4, and the large image of (a): the server's own output for a mock OpenAI whose picture
# is noisy like a photograph.
MOCK_PORT=$(free_port)
"$EX/mock_openai" --port "$MOCK_PORT" --delay-ms 1000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$MOCK_PORT/stats" 30
DATA=$WORK/data
GEN_PORT=$(free_port)
GEN_ENV=(OPENAI_API_KEY=x "OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT" TB_DALLE_NO_ENHANCE=1)
if [ "$GOALS34" = 1 ]; then
  log "goal 4: start-up, idle memory, then $GENERATIONS generations (mock OpenAI: 1 s per image, --max-concurrent $MAX_CONCURRENT)"
  # Five cold starts (the last one keeps running for the load): start-up time to the first
  # 200 on /readyz, and resident memory once idle.
  STARTS=()
  IDLE=()
  for i in 1 2 3 4 5; do
    start_server "$SERVER_BIN" "$GEN_PORT" "$DATA" "$WORK/gen-server.log" "${VARIANTS[0]}" "${GEN_ENV[@]}"
    STARTS+=("$STARTUP_MS")
    sleep 1
    IDLE+=("$(status_kb "$SERVER_PID" VmRSS)")
    [ "$i" = 5 ] || stop_server "$SERVER_PID"
  done
  STARTUP_MEDIAN=$(printf '%s\n' "${STARTS[@]}" | median)
  STARTUP_MAX=$(printf '%s\n' "${STARTS[@]}" | sort -n | tail -1)
  IDLE_KB=$(printf '%s\n' "${IDLE[@]}" | sort -n | tail -1)
  echo "start-up to ready: ${STARTS[*]} ms; idle VmRSS: ${IDLE[*]} kB"
  GEN_COUNT=$GENERATIONS
else
  log "one generation (mock OpenAI: 1 s per image) for the large image"
  start_server "$SERVER_BIN" "$GEN_PORT" "$DATA" "$WORK/gen-server.log" "${VARIANTS[0]}" "${GEN_ENV[@]}"
  GEN_COUNT=1
fi
GEN_LOAD_BEFORE=$(load_average)
T0=$(cpu_ticks "$SERVER_PID")
"$EX/load_generate" --url "http://127.0.0.1:$GEN_PORT" --count "$GEN_COUNT" --first 1 \
  --timeout-secs 300 | tee "$WORK/generate.json"
T1=$(cpu_ticks "$SERVER_PID")
GEN_LOAD_AFTER=$(load_average)
HWM_KB=$(status_kb "$SERVER_PID" VmHWM)
GEN_OK=$(jq .ok "$WORK/generate.json")
WALL=$(jq .wall_s "$WORK/generate.json")
ANNOTATED=$(find "$DATA/output/simple/annotated" -name '*.png' | wc -l)
CPU_S=$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
PER_IMAGE_MS=$(awk -v c="$CPU_S" -v n="$GEN_COUNT" 'BEGIN {printf "%.1f", c * 1000 / n}')
WAVES=$(((GEN_COUNT + MAX_CONCURRENT - 1) / MAX_CONCURRENT))
IDEAL=$(awk -v w="$WAVES" -v c="$PER_IMAGE_MS" -v n="$GEN_COUNT" -v k="$CORES" 'BEGIN {printf "%.2f", w * 1.0 + c / 1000 * n / k}')
echo "wall ${WALL} s, server CPU ${CPU_S} s (${PER_IMAGE_MS} ms per image), ideal ${IDEAL} s, VmHWM ${HWM_KB} kB, $ANNOTATED annotated PNGs"
stop_server "$SERVER_PID"

# ---------------------------------------------------------------------------------------------
log "the cache-hit servers (mock mode, one per access-log setting, same data dir) and nginx"
BIG=$(ADDRESS 1)
SMALL=$(ADDRESS 100000)
BIG_FILE=$DATA/output/simple/annotated/$BIG.png
SMALL_FILE=$DATA/output/simple/annotated/$SMALL.png
declare -A HIT_PORT HIT_PID
for v in "${KEYS[@]}"; do
  HIT_PORT[$v]=$(free_port)
  start_server "${BIN_OF[$v]}" "${HIT_PORT[$v]}" "$DATA" "$WORK/hit-$v.log" "${VARIANT_OF[$v]}"
  HIT_PID[$v]=$SERVER_PID
done
# The small image: a 128x128 picture of the same photographic noise with its caption bar, made
# by the server's own annotate_png (examples/annotate_file). The mock-mode picture would be the
# natural choice, but annotated it is ~260 KB: its 1024x1024 pattern does not compress below.
"$EX/mock_openai" --size 128 --write-png "$WORK/small.png"
printf '%s' "A weary lighthouse keeper gazes across a storm-dark harbour." >"$WORK/small-caption.txt"
"$EX/annotate_file" "$WORK/small.png" "$WORK/small-caption.txt" "$SMALL_FILE"
BIG_BYTES=$(stat -c %s "$BIG_FILE")
SMALL_BYTES=$(stat -c %s "$SMALL_FILE")
echo "large image $BIG_BYTES bytes, small image $SMALL_BYTES bytes"
[ "$BIG_BYTES" -gt 1000000 ] || { echo "load.sh: the large image is only $BIG_BYTES bytes" >&2; exit 1; }
[ "$SMALL_BYTES" -lt 65536 ] || { echo "load.sh: the small image is $SMALL_BYTES bytes, not < 64 KB" >&2; exit 1; }

WWW=$WORK/www
mkdir -p "$WWW/polls/simple"
NGINX_PORT=$(free_port)
write_nginx_conf "$WORK/nginx" "$NGINX_PORT" "$DATA/output" "$WWW"
nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ok "http://127.0.0.1:$NGINX_PORT/simple/annotated/$BIG.png" 30
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
# The very files on disk, byte for byte, from every server (this also warms their caches).
for f in "$BIG" "$SMALL"; do
  cmp <(get "http://127.0.0.1:$NGINX_PORT/simple/annotated/$f.png") "$DATA/output/simple/annotated/$f.png"
  for v in "${KEYS[@]}"; do
    cmp <(get "http://127.0.0.1:${HIT_PORT[$v]}/dalle/simple/$f") "$DATA/output/simple/annotated/$f.png"
  done
done

hit_targets() { # address: the target list of compare for a cache hit of that image
  echo "nginx|http://127.0.0.1:$NGINX_PORT/simple/annotated/$1.png|$NGINX_PIDS|"
  for v in "${KEYS[@]}"; do
    echo "${LABEL_OF[$v]}|http://127.0.0.1:${HIT_PORT[$v]}/dalle/simple/$1|${HIT_PID[$v]}|"
  done
}
log "(a) cache hit of the large image ($BIG_BYTES bytes): ${SECONDS_PER_RUN}s wrk runs, 64 connections, $ROUNDS rounds"
mapfile -t targets < <(hit_targets "$BIG")
compare big 64 "" "${targets[@]}"
A_LOAD=$(load_average)
log "(b) cache hit of the small image ($SMALL_BYTES bytes): ${SECONDS_PER_RUN}s wrk runs, 64 connections, $ROUNDS rounds"
mapfile -t targets < <(hit_targets "$SMALL")
compare small 64 "" "${targets[@]}"
B_LOAD=$(load_average)
for v in "${KEYS[@]}"; do stop_server "${HIT_PID[$v]}"; done

# ---------------------------------------------------------------------------------------------
log "(c) progress polls of $POLL_RUNS runs in flight, 1 000 connections, $ROUNDS rounds"
# A second mock that answers image requests only after 10 minutes keeps every run in flight
# (the script stops it long before; the check after the polls confirms it).
STALL_PORT=$(free_port)
"$EX/mock_openai" --port "$STALL_PORT" --delay-ms 600000 >"$WORK/stall.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$STALL_PORT/stats" 30
declare -A POLL_PORT POLL_PID
for v in "${KEYS[@]}"; do
  POLL_PORT[$v]=$(free_port)
  start_server "${BIN_OF[$v]}" "${POLL_PORT[$v]}" "$WORK/polls-$v" "$WORK/polls-$v.log" "${VARIANT_OF[$v]}" \
    OPENAI_API_KEY=x "OPENAI_BASE_URL=http://127.0.0.1:$STALL_PORT" TB_DALLE_NO_ENHANCE=1
  POLL_PID[$v]=$SERVER_PID
  for i in $(seq "$POLL_RUNS"); do
    get -o /dev/null "http://127.0.0.1:${POLL_PORT[$v]}/dalle/simple/$(ADDRESS "$i")?generate=1"
  done
done
sleep 1
# nginx serves each run's snapshot as it reads now, from a file: the same bytes per request.
FIRST_POLL=http://127.0.0.1:${POLL_PORT[${VARIANTS[0]}]}
for i in $(seq "$POLL_RUNS"); do
  get -o "$WWW/polls/simple/$(ADDRESS "$i")" "$FIRST_POLL/dalle/simple/$(ADDRESS "$i")"
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
targets=("nginx|http://127.0.0.1:$NGINX_PORT|$NGINX_PIDS|/polls/simple/")
for v in "${KEYS[@]}"; do
  targets+=("${LABEL_OF[$v]}|http://127.0.0.1:${POLL_PORT[$v]}|${POLL_PID[$v]}|/dalle/simple/")
done
compare polls 1000 "$WORK/polls.lua" "${targets[@]}"
C_LOAD=$(load_average)
IN_FLIGHT=0
for v in "${KEYS[@]}"; do
  for i in $(seq "$POLL_RUNS"); do
    done_flag=$(get "http://127.0.0.1:${POLL_PORT[$v]}/dalle/simple/$(ADDRESS "$i")" | jq .data.done)
    [ "$done_flag" = false ] && IN_FLIGHT=$((IN_FLIGHT + 1))
  done
done
IN_FLIGHT_WANTED=$((POLL_RUNS * ${#KEYS[@]}))
echo "runs still in flight after the polls: $IN_FLIGHT of $IN_FLIGHT_WANTED"
# What the access log cost in bytes: the info servers' log lines per request.
LOG_LINE=""
if [ -f "$WORK/hit-info.log" ]; then
  line_bytes() { grep -m 1000 -E ' request (request_id=[^ ]+ )?method=' "$1" | awk '{n++; b += length($0) + 1} END {printf "%.0f", n ? b / n : 0}'; }
  LOG_LINE="$(line_bytes "$WORK/hit-info.log") bytes per hit line, $(line_bytes "$WORK/polls-info.log") per poll line"
  echo "access log (info): $LOG_LINE; log files $(du -ch "$WORK"/hit-info.log "$WORK"/polls-info.log | tail -1 | cut -f1)"
fi

# ---------------------------------------------------------------------------------------------
pass() { if awk "BEGIN {exit !($1)}"; then echo PASS; else echo FAIL; fi; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }
# One measure's rows: nginx, then each dalleserver variant with its ratios and result.
rows() { # name title target-ratio extra-condition load
  local name=$1 title=$2 want=$3 cond=$4 load=$5 v label ratio target result
  printf '| %s | nginx | %.0f | %s ms | %s µs | | | | %s |\n' "$title" "$(field "$name" nginx 2)" \
    "$(field "$name" nginx 3)" "$(field "$name" nginx 4)" "$load"
  for v in "${KEYS[@]}"; do
    label=${LABEL_OF[$v]}
    ratio=$(awk -v a="$(field "$name" "$label" 2)" -v b="$(field "$name" nginx 2)" 'BEGIN {printf "%.3f", a / b}')
    target="≥ $want"
    result=$(pass "$ratio >= $want && $(field "$name" "$label" 5) == 0 $cond")
    # The baseline is there for comparison; the targets are the build's under test.
    [ "$v" = baseline ] && { target="(before)"; result="—"; }
    printf '| | %s | %.0f | %s ms | %s µs | **%s** | %s (%s–%s) | %s | %s |\n' "$label" \
      "$(field "$name" "$label" 2)" "$(field "$name" "$label" 3)" "$(field "$name" "$label" 4)" \
      "$ratio" "$(field "$name" "$label" 6)" "$(field "$name" "$label" 7)" "$(field "$name" "$label" 8)" \
      "$target" "$result"
  done
}

SUMMARY=$OUT/summary.md
{
  echo "Run $LOAD_STARTED to $(date -u +%H:%MZ), $CORES cores, load average $LOAD_START at the start;"
  echo "congestion control: the host's default ($(cat /proc/sys/net/ipv4/tcp_congestion_control)), unchanged;"
  echo "server: \`$SERVER_BIN\`${LOAD_BASELINE:+; baseline: \`${BIN_OF[baseline]}\`}; wrk -t2, ${SECONDS_PER_RUN} s per run, $ROUNDS rounds (order rotating), medians."
  echo
  echo "| measure | server | req/s | p99 | server CPU / request | ratio to nginx | per-round ratios: median (min–max) | target | result / load avg after |"
  echo "|---|---|---|---|---|---|---|---|---|"
  rows big "(a) cache hit, $BIG_BYTES-byte PNG, -c64" 0.95 "" "$A_LOAD"
  rows small "(b) cache hit, $SMALL_BYTES-byte PNG, -c64" 0.9 "" "$B_LOAD"
  rows polls "(c) polls, $POLL_RUNS runs in flight, $POLL_BYTES-byte body, -c1000" 1.0 "&& $IN_FLIGHT == $IN_FLIGHT_WANTED" "$C_LOAD"
  echo
  failed=$(for name in big small polls; do
    awk -v m="$name" '{s += $5} END {printf "%s%s %d", (m == "big" ? "" : ", "), m, s}' "$WORK/$name.medians"
  done)
  echo "Failed requests (non-2xx + socket errors, all servers and rounds): $failed;"
  echo "runs in flight after the polls: $IN_FLIGHT of $IN_FLIGHT_WANTED.${LOG_LINE:+ Access log (info): $LOG_LINE.}"
  if [ "$GOALS34" = 1 ]; then
    R3=$(awk -v a="$A_OURS" -v b="$A_IM" 'BEGIN {printf "%.3f", a / b}')
    R4=$(awk -v a="$WALL" -v b="$IDEAL" 'BEGIN {printf "%.2f", a / b}')
    echo
    echo "| goal | measure | dalleserver | reference | ratio | target | result |"
    echo "|---|---|---|---|---|---|---|"
    printf '| 3 caption + encode, 1024² | mean per process | %.1f ms | convert %.1f ms (zlib-1: %.1f ms) | %s | ≤ 0.50 | %s |\n' "$A_OURS" "$A_IM" "$A_IM1" "$R3" "$(pass "$R3 <= 0.5")"
    echo "| 4 $GENERATIONS generations, 1 s mock, --max-concurrent $MAX_CONCURRENT | wall time | $WALL s | ideal $IDEAL s = $WAVES × 1 s + $PER_IMAGE_MS ms × $GENERATIONS / $CORES | $R4 | ≤ 1.10 | $(pass "$R4 <= 1.10 && $GEN_OK == $GENERATIONS && $ANNOTATED == $GENERATIONS") (load $GEN_LOAD_BEFORE → $GEN_LOAD_AFTER) |"
    echo "| 4 | peak RSS (VmHWM) | $(mb "$HWM_KB") | | | < 300 MB | $(pass "$HWM_KB < 300 * 1024") |"
    echo "| 4 | idle RSS after start (max of 5) | $(mb "$IDLE_KB") | | | < 30 MB | $(pass "$IDLE_KB < 30 * 1024") |"
    echo "| 4 | spawn → first 200 on /readyz (median / max of 5) | $STARTUP_MEDIAN / $STARTUP_MAX ms | | | < 200 ms | $(pass "$STARTUP_MAX < 200") |"
  fi
} >"$SUMMARY"
{
  for name in big small polls; do
    awk -v m="$name" '{gsub(/_/, " ", $1); printf "{\"measure\":\"%s\",\"server\":\"%s\",\"rps\":%s,\"p99_ms\":%s,\"cpu_us_per_request\":%s,\"failed\":%s,\"round_ratio_median\":%s,\"round_ratio_min\":%s,\"round_ratio_max\":%s}\n", m, $1, $2, $3, $4, $5, $6, $7, $8}' "$WORK/$name.medians"
  done
} | jq -s --arg when "$LOAD_STARTED" --arg binary "$SERVER_BIN" --argjson cores "$CORES" --arg load_start "$LOAD_START" \
  --argjson seconds "$SECONDS_PER_RUN" --argjson rounds "$ROUNDS" --argjson big_bytes "$BIG_BYTES" \
  --argjson small_bytes "$SMALL_BYTES" --argjson poll_bytes "$POLL_BYTES" --argjson in_flight "$IN_FLIGHT" \
  --arg congestion "$(cat /proc/sys/net/ipv4/tcp_congestion_control)" \
  '{when: $when, binary: $binary, cores: $cores, load_start: $load_start, seconds: $seconds, rounds: $rounds,
    congestion_control: $congestion, big_bytes: $big_bytes, small_bytes: $small_bytes, poll_bytes: $poll_bytes,
    runs_in_flight_after: $in_flight, results: .}' >"$OUT/results.json"
cp "$WORK"/*.runs "$WORK"/*.data "$WORK/generate.json" "$OUT/" 2>/dev/null || true
[ "$GOALS34" = 1 ] && cp "$WORK/annotate.txt" "$OUT/"

log "summary (also in target/load/summary.md)"
cat "$SUMMARY"
