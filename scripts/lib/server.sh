# Sourced by the reliability scripts: starts the release server on a free loopback port, in
# mock mode, with a temporary data dir, and stops it on exit.
#
#   start_server [extra flags…]   # sets SERVER_PID, ADDR (127.0.0.1:PORT), BASE (http://ADDR)
#
# The port is chosen by the kernel (`--port 0`) and read from the "listening on" log line, so
# two scripts never race for one. Logs go to $WORK/server.log.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dalleserver-reliability.XXXXXX")
SERVER_PID=""

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    rm -rf "$WORK"
}
trap stop_server EXIT
# A signal (Ctrl-C, a closed output pipe) still stops the server: exit runs the EXIT trap.
trap 'exit 130' INT TERM HUP PIPE

start_server() {
    local bin=${DALLESERVER_BIN:-target/release/dalleserver}
    if [ -z "${DALLESERVER_BIN:-}" ]; then
        cargo build --release --quiet --bin dalleserver
    fi
    bin=$(realpath "$bin")
    mkdir -p "$WORK/home" "$WORK/data"
    : >"$WORK/server.log"
    # A scrubbed environment: no OPENAI_API_KEY (mock mode), no .env from the caller's cwd.
    (cd "$WORK" && exec env -i PATH="$PATH" HOME="$WORK/home" RUST_LOG="${SERVER_RUST_LOG:-info}" \
        "$bin" --bind 127.0.0.1 --port 0 --data-dir "$WORK/data" "$@") \
        >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    ADDR=""
    for _ in $(seq 1 100); do
        ADDR=$(sed -n 's/.*listening on \([0-9.:]*\);.*/\1/p' "$WORK/server.log" | head -n 1 || true)
        [ -n "$ADDR" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ADDR" ]; then
        echo "the server did not start:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    BASE="http://$ADDR"
    echo "server $SERVER_PID on $BASE (data dir $WORK/data)" >&2
}
