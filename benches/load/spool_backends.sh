#!/usr/bin/env bash
# The 202 path on each spool backend, in one run: POST 1 KiB against a
# route whose limit (1/min) spools every request, answered 202 —
#   local:        the local spool, fsync = "always";
#   jetstream R=1: one nats-server (JetStream, file storage);
#   jetstream R=3: a three-node NATS cluster, every record on a quorum.
# All on loopback, on the same cores. Replay is held back with a tiny
# upstream capacity so the figure is the intake rate. Prints 202/s, p50,
# p99, non-2xx answers and each backend's ratio to local.
#
# Usage: benches/load/spool_backends.sh [DURATION] [CONNECTIONS]
set -euo pipefail
DURATION=${1:-8s}
CONNS=${2:-32}
cd "$(dirname "$0")/../.."
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
. benches/load/common.sh

# NATS: one node for R=1, three for R=3.
N1=$(free_port)
nats-server -js -a 127.0.0.1 -p "$N1" -sd "$WORK/n1" >"$WORK/n1.log" 2>&1 &
C=(); R=()
for i in 0 1 2; do C+=("$(free_port)"); R+=("$(free_port)"); done
for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do [ "$j" = "$i" ] || routes="$routes${routes:+,}nats://127.0.0.1:${R[$j]}"; done
  nats-server -js -a 127.0.0.1 -p "${C[$i]}" -n "c$i" -sd "$WORK/c$i" \
    --cluster_name bench --cluster "nats://127.0.0.1:${R[$i]}" --routes "$routes" >"$WORK/c$i.log" 2>&1 &
done

conf() { # $1 port $2 admin $3 backend TOML lines
cat <<CONF
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$(free_port)"
capacity = "1/s"
[spool]
dir = "$WORK/spool-$1"
fsync = "always"
max_bytes = "4GiB"
$3
[[route]]
name = "bench"
match = { path_prefix = "/" }
rate = "1/min"
burst = 1
on_limit = "spool"
CONF
}
js() { # $1 servers $2 replicas
  printf 'backend = "jetstream"\n[spool.jetstream]\nservers = [%s]\nreplicas = %s\nmax_bytes = "2GiB"\n' "$1" "$2"
}
L=$(free_port); LA=$(free_port); J1=$(free_port); J1A=$(free_port); J3=$(free_port); J3A=$(free_port)
conf "$L" "$LA" "" >"$WORK/local.toml"
conf "$J1" "$J1A" "$(js "\"nats://127.0.0.1:$N1\"" 1)" >"$WORK/r1.toml"
conf "$J3" "$J3A" "$(js "\"nats://127.0.0.1:${C[0]}\",\"nats://127.0.0.1:${C[1]}\",\"nats://127.0.0.1:${C[2]}\"" 3)" >"$WORK/r3.toml"

# Starts sluice on a config until it is ready: a fresh NATS cluster needs a
# few seconds to elect a JetStream leader, and sluice exits if it can't
# make its streams.
start() { # $1 config $2 admin port
  for _ in $(seq 30); do
    RUST_LOG=warn ./target/release/sluice run -c "$1" 2>>"$WORK/sluice.log" &
    local pid=$!
    for _ in $(seq 50); do
      curl -fs "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    sleep 0.5
  done
  echo "sluice did not start on $1:" >&2; tail -5 "$WORK/sluice.log" >&2; exit 1
}
start "$WORK/local.toml" "$LA"
start "$WORK/r1.toml" "$J1A"
start "$WORK/r3.toml" "$J3A"

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
for b in "local:$L" "r1:$J1" "r3:$J3"; do
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "http://127.0.0.1:${b#*:}/orders" >"$WORK/${b%%:*}.txt"
done
python3 - "$WORK" "$CONNS" "$DURATION" <<'PY'
import sys
work, conns, dur = sys.argv[1:]
sys.path.insert(0, "benches/load")
from wrk_report import summary as parse
rows = [("local, fsync always", parse(f"{work}/local.txt")),
        ("jetstream R=1", parse(f"{work}/r1.txt")),
        ("jetstream R=3", parse(f"{work}/r3.txt"))]
base = rows[0][1][0]
print(f"wrk -t2 -c{conns} -d{dur}, POST 1 KiB, every request spooled (202)")
print(f"  {'backend':<22}{'202/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'x local':>9}")
for name, (rps, p50, p99, bad) in rows:
    print(f"  {name:<22}{rps:9.0f}{p50:9.2f}{p99:9.2f}{bad:9d}{rps/base:9.2f}")
PY
