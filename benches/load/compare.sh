#!/usr/bin/env bash
# Throughput and tail latency of sluice against nginx as a reverse proxy,
# on this machine, in one run:
#   (a) wrk straight at the backend (nginx `return 200`),
#   (b) wrk at nginx proxy_pass with upstream keepalive,
#   (c) wrk at sluice with a route limit that never triggers.
# Runs are alternated a,b,c,a,b,c,... and the best of ROUNDS is reported,
# with sluice/nginx ratios. Loopback only; every run is bounded by DURATION.
#
# Usage: benches/load/compare.sh [ROUNDS] [DURATION] [CONNECTIONS] [WORKERS]
#   defaults: 3 rounds, 8s, 32 connections, 1 worker (nginx worker_processes
#   and sluice server.workers alike).
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-8s}
CONNS=${3:-32}
WORKERS=${4:-1}
cd "$(dirname "$0")/../.."
. benches/load/common.sh
BACKEND=$(free_port); NGINX=$(free_port); SLUICE=$(free_port); ADMIN=$(free_port)

nginx_conf() { # $1 name, $2 server block body, $3 workers
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/nginx.conf" <<CONF
worker_processes $3;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1; fastcgi_temp_path $WORK/$1;
  uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  $2
}
CONF
}
# The backend gets both cores' worth of headroom so it is never the limit.
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; keepalive_requests 1000000; location / { return 200 'ok'; } }" 2
nginx_conf proxy "server { listen 127.0.0.1:$NGINX; keepalive_requests 1000000; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" "$WORKERS"
bench_config "$WORK/sluice.toml" "$SLUICE" "$ADMIN" "$BACKEND" "$WORKERS" "$WORK/spool"

nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" &
RUST_LOG=warn ./target/release/sluice run -c "$WORK/sluice.toml" &
wait_ready "http://127.0.0.1:$BACKEND/" "http://127.0.0.1:$NGINX/" "http://127.0.0.1:$SLUICE/"

run_wrk() { # $1 label, $2 port
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2/" >"$WORK/$1.$3.txt"
}
for r in $(seq "$ROUNDS"); do
  run_wrk direct "$BACKEND" "$r"
  run_wrk nginx "$NGINX" "$r"
  run_wrk sluice "$SLUICE" "$r"
done

python3 - "$WORK" "$ROUNDS" "$CONNS" "$DURATION" "$WORKERS" <<'PY'
import sys, glob
work, rounds, conns, dur, workers = sys.argv[1:]
sys.path.insert(0, "benches/load")
from wrk_report import summary
def parse(path):
    rps, _, p99, bad = summary(path)
    return rps, p99, bad
best = {}
for label in ("direct", "nginx", "sluice"):
    runs = [parse(p) for p in sorted(glob.glob(f"{work}/{label}.*.txt"))]
    best[label] = max(runs, key=lambda r: r[0])
    print(f"{label:7s} " + "  ".join(f"{r[0]:9.0f} req/s p99 {r[1]:6.2f} ms" + (f" ({r[2]} non-2xx)" if r[2] else "") for r in runs))
print(f"\nbest of {rounds} (wrk -t1 -c{conns} -d{dur}, {workers} worker(s) for nginx and sluice):")
for label, (rps, p99, _) in best.items():
    print(f"  {label:7s} {rps:9.0f} req/s  p99 {p99:6.2f} ms")
s, n = best["sluice"], best["nginx"]
print(f"  sluice/nginx: throughput {s[0]/n[0]:.2f}x, p99 {s[1]/n[1]:.2f}x")
PY
