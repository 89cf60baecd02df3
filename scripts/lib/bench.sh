# shellcheck shell=bash
# Sourced by the benchmark scripts (load.sh, hit_pairs.sh): free ports, readiness, and the one
# nginx configuration dalleserver is compared against, so every comparison uses the same nginx.

# A port nothing listens on (the bind can still race another program; then a start fails
# loudly and the script stops).
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  echo "no free port found" >&2
  return 1
}

# Waits (at most $2 seconds) until $1 answers 200.
wait_ok() {
  local deadline=$((SECONDS + $2))
  until curl -sf -o /dev/null "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "$1 not ready after $2 s" >&2; return 1; }
    sleep 0.05
  done
}

# Writes $1/nginx.conf: nginx on 127.0.0.1:$2 serving /simple/… from $3 (a data dir's
# `output`, so the very files dalleserver serves) and everything else from $4.
#
# Debian's defaults (sendfile, tcp_nopush, a worker per core) but no access log, so nginx's
# figures are those of a server that writes nothing per request; load.sh measures dalleserver
# with its access log on (the default) and off beside it. nginx serves the very files
# dalleserver serves, not copies: how a file came into the page cache changes what sendfile
# costs (a copy made by `install` served 5–10 % faster than the same bytes written in one
# write(2)). The server writes them 0600, so as root nginx's workers run as root. Nothing here
# changes the host: both servers use its default congestion control and socket settings.
write_nginx_conf() {
  local dir=$1 port=$2 output=$3 www=$4 user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<CONF
$user
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log;
daemon off;
events { worker_connections 4096; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  access_log off;
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$port;
    root $www;
    location /simple/ { root $output; }
    location /polls/ { default_type application/json; }
  }
}
CONF
}
