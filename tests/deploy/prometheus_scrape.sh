#!/usr/bin/env bash
# A real Prometheus scrapes a real sluice.
#
#   bash tests/deploy/prometheus_scrape.sh
#
# Starts, all on 127.0.0.1: a tiny backend (200 to any method), sluice (the
# debug build, or $SLUICE_BIN) with a spooling route, a rejecting route and a
# slow upstream budget so the backlog stays visible, and Debian's
# `prometheus` scraping sluice's admin port every second. Drives forwarded,
# rejected and spooled traffic, then polls Prometheus's HTTP API until it has
# sluice_requests_total for each of those decisions and a non-zero
# sluice_spool_backlog_records. Also runs `promtool check metrics` on
# /metrics and requires no findings. Bounded: every wait has a deadline, and
# the whole script is killed after 90 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in prometheus promtool curl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install prometheus curl)"
done
bin=${SLUICE_BIN:-$root/target/debug/sluice}
[ -x "$bin" ] || bin=$root/target/release/sluice
[ -x "$bin" ] || fail "no sluice binary: run cargo build first"

tmp=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    for f in backend.log sluice.log prometheus.log; do
      [ -f "$tmp/$f" ] && { echo "--- $f (tail)"; tail -n 20 "$tmp/$f"; }
    done
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
# Hard bound on the whole run, whatever hangs.
# (The subshell kills its sleep when cleanup kills it, so nothing lingers.)
main_pid=$$
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep 90 & s=$!
  wait "$s"
  echo "FAIL: prometheus_scrape.sh timed out" >&2
  kill -TERM "$main_pid"
) >/dev/null &
pids+=($!)

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND every 0.2 s.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

# ---- backend ---------------------------------------------------------------
cat >"$tmp/backend.py" <<'EOF'
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
EOF
python3 "$tmp/backend.py" >"$tmp/backend.port" 2>"$tmp/backend.log" &
pids+=($!)
wait_for "the backend's port" 10 test -s "$tmp/backend.port"
backend_port=$(head -n1 "$tmp/backend.port")

# ---- sluice ----------------------------------------------------------------
cat >"$tmp/sluice.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"

[upstream]
url = "http://127.0.0.1:$backend_port"
# A slow backend: replay drains one record a second, so the backlog stays.
capacity = "1/s"
capacity_burst = 1

[spool]
dir = "$tmp/spool"

[[route]]
name = "orders"
match = { path_prefix = "/orders" }
rate = "1/min"
burst = 1
on_limit = "spool"

[[route]]
name = "reads"
match = { path_prefix = "/reads" }
rate = "1/min"
burst = 1
on_limit = "reject"
EOF
"$bin" check -c "$tmp/sluice.toml" >/dev/null
"$bin" run -c "$tmp/sluice.toml" --log-format json 2>"$tmp/sluice.log" >/dev/null &
pids+=($!)
listening() { grep -qs '"message":"listening"' "$tmp/sluice.log"; }
wait_for "sluice to listen" 15 listening
read -r data admin < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("message") == "listening":
        print(v["data"], v["admin"])
        break
' "$tmp/sluice.log")
[ -n "${admin:-}" ] || fail "could not read sluice's addresses from its log"
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")" = 200 ]; }
wait_for "sluice /readyz" 15 ready
echo "backend 127.0.0.1:$backend_port, sluice data $data, admin $admin"

# ---- prometheus --------------------------------------------------------------
prom_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sluice
    static_configs:
      - targets: ["$admin"]
EOF
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"
prom_ready() { curl -sf "$prom/-/ready" >/dev/null; }
wait_for "prometheus /-/ready" 30 prom_ready
echo "prometheus $prom ($(prometheus --version 2>&1 | head -n1))"

# ---- traffic -----------------------------------------------------------------
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
c=$(code "http://$data/reads/1");  [ "$c" = 200 ] || fail "first GET /reads: $c, want 200 (forwarded)"
c=$(code "http://$data/reads/2");  [ "$c" = 429 ] || fail "second GET /reads: $c, want 429 (rejected)"
spooled=0
for i in $(seq 1 20); do
  c=$(code -X POST -H 'content-type: application/json' --data "{\"n\":$i}" "http://$data/orders")
  case "$c" in
    202) spooled=$((spooled + 1)) ;;
    200) ;;
    *) fail "POST /orders #$i: $c, want 202 (spooled) or 200 (forwarded)" ;;
  esac
done
[ $spooled -ge 10 ] || fail "only $spooled of 20 POSTs were spooled"
echo "traffic: 1 forwarded GET, 1 rejected GET, $spooled of 20 POSTs spooled"

# ---- promtool check metrics --------------------------------------------------
curl -sf "http://$admin/metrics" >"$tmp/metrics.txt"
findings=$(promtool check metrics <"$tmp/metrics.txt" 2>&1) || { echo "$findings"; fail "promtool check metrics failed"; }
[ -z "$findings" ] || { echo "$findings"; fail "promtool check metrics has findings"; }
echo "ok: promtool check metrics: no findings ($(grep -c '^sluice_' "$tmp/metrics.txt") samples)"

# ---- query Prometheus --------------------------------------------------------
# query PROMQL: prints "label value" lines of an instant vector.
query() {
  curl -sf --get "$prom/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)
assert r["status"] == "success", r
for s in r["data"]["result"]:
    print(" ".join(s["metric"].values()) or "-", s["value"][1])
'
}
decisions_seen() {
  local out
  out=$(query 'sum by (decision) (sluice_requests_total{job="sluice"}) > 0') || return 1
  grep -q '^forwarded ' <<<"$out" && grep -q '^rejected ' <<<"$out" && grep -q '^spooled ' <<<"$out"
}
backlog_seen() {
  local out
  out=$(query 'sum(sluice_spool_backlog_records{job="sluice"}) > 0') || return 1
  [ -n "$out" ]
}
wait_for "sluice_requests_total{decision=forwarded|rejected|spooled} in Prometheus" 30 decisions_seen
wait_for "sluice_spool_backlog_records > 0 in Prometheus" 30 backlog_seen
echo "prometheus sees sluice_requests_total by decision:"
query 'sum by (decision) (sluice_requests_total{job="sluice"}) > 0' | sed 's/^/  /'
echo "prometheus sees backlog: $(query 'sum(sluice_spool_backlog_records{job="sluice"})' | awk '{print $2}') records"
up=$(query 'up{job="sluice"}' | awk '{print $NF}')
[ "$up" = 1 ] || fail "up{job=\"sluice\"} is $up"

echo "prometheus scrape: all green"
