# shellcheck shell=bash
# Shared by the load scripts in this folder: source it after `cd` to the
# repository root. Checks the tools, builds the release binary, makes a
# work dir that is removed (and every background job killed) on exit.
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl)" >&2; exit 1; }
done
cargo build --release --quiet
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

# A free loopback port.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits (polling, at most 10 s) until each URL answers 2xx.
wait_ready() {
  local url
  for url in "$@"; do
    for _ in $(seq 100); do curl -fs "$url" >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

# Writes a sluice config for pass-through benchmarks: one route whose limit
# never triggers, so every request is forwarded.
# Usage: bench_config FILE LISTEN_PORT ADMIN_PORT BACKEND_PORT WORKERS SPOOL_DIR
bench_config() {
  cat >"$1" <<CONF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
workers = $5
[upstream]
url = "http://127.0.0.1:$4"
max_concurrency = 4096
[spool]
dir = "$6"
[[route]]
name = "bench"
match = { path_prefix = "/" }
rate = "100000000/s"
on_limit = "reject"
CONF
}

# Starts (in the background) an nginx `return 200` backend on 127.0.0.1:PORT
# with WORKERS worker processes and no access log, its files under DIR.
# Usage: backend_nginx DIR PORT WORKERS
backend_nginx() {
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<CONF
worker_processes $3;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1;
  uwsgi_temp_path $1; scgi_temp_path $1;
  server { listen 127.0.0.1:$2; keepalive_requests 1000000; location / { return 200 'ok'; } }
}
CONF
  nginx -p "$1" -c "$1/nginx.conf" &
}
