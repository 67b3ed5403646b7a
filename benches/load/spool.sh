#!/usr/bin/env bash
# Spooled vs forwarded requests/s, measured with wrk in one run:
#   forwarded: POST 1 KiB through sluice to nginx (`return 200`), a route
#              limit that never triggers;
#   spooled:   the same POSTs against a route whose limit (1/min) sends
#              every request to the spool (fsync = "always"), answered 202.
# Replay is held back with a tiny upstream capacity so the figure is the
# intake rate. Prints req/s, p50/p99 and the spooled/forwarded ratio.
#
# Usage: benches/load/spool.sh [DURATION] [CONNECTIONS] [FSYNC]
set -euo pipefail
DURATION=${1:-8s}
CONNS=${2:-64}
FSYNC=${3:-always}
cd "$(dirname "$0")/../.."
. benches/load/common.sh
BACKEND=$(free_port); FWD=$(free_port); FWDA=$(free_port); SPL=$(free_port); SPLA=$(free_port)

cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$BACKEND; keepalive_requests 1000000; location / { return 200 'ok'; } }
}
CONF
conf() { # $1 port $2 admin $3 rate $4 capacity $5 dir
cat <<CONF
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$BACKEND"
max_concurrency = 4096
$4
[spool]
dir = "$5"
fsync = "$FSYNC"
max_bytes = "4GiB"
[[route]]
name = "bench"
match = { path_prefix = "/" }
rate = "$3"
burst = 1
on_limit = "spool"
CONF
}
conf "$FWD" "$FWDA" "100000000/s" "" "$WORK/fwd-spool" >"$WORK/fwd.toml"
conf "$SPL" "$SPLA" "1/min" 'capacity = "1/s"' "$WORK/spl-spool" >"$WORK/spl.toml"
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
nginx -p "$WORK" -c "$WORK/nginx.conf" &
RUST_LOG=warn ./target/release/sluice run -c "$WORK/fwd.toml" &
RUST_LOG=warn ./target/release/sluice run -c "$WORK/spl.toml" &
wait_ready "http://127.0.0.1:$BACKEND/" "http://127.0.0.1:$FWDA/readyz" "http://127.0.0.1:$SPLA/readyz"
wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "http://127.0.0.1:$FWD/orders" >"$WORK/fwd.txt"
wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "http://127.0.0.1:$SPL/orders" >"$WORK/spl.txt"
curl -fs "http://127.0.0.1:$SPLA/metrics" | grep -E '^sluice_requests_total\{decision="spooled"|^sluice_spool_fsync_duration_seconds_(count|sum)' || true
python3 - "$WORK" "$CONNS" "$DURATION" "$FSYNC" <<'PY'
import sys
work, conns, dur, fsync = sys.argv[1:]
sys.path.insert(0, "benches/load")
from wrk_report import summary as parse
f, s = parse(f"{work}/fwd.txt"), parse(f"{work}/spl.txt")
print(f"wrk -t2 -c{conns} -d{dur}, POST 1 KiB, fsync={fsync}")
print(f"  forwarded {f[0]:9.0f} req/s  p50 {f[1]:6.2f} ms  p99 {f[2]:6.2f} ms  non-2xx {f[3]}")
print(f"  spooled   {s[0]:9.0f} req/s  p50 {s[1]:6.2f} ms  p99 {s[2]:6.2f} ms  non-2xx {s[3]}")
print(f"  spooled/forwarded: {s[0]/f[0]:.2f}x")
PY
