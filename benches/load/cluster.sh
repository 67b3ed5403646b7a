#!/usr/bin/env bash
# What a global limit costs, on this machine, in one run: one sluice
# (release build, 1 worker) in front of an nginx `return 200` backend, with
# a local Redis (Debian's redis-server), and three routes that never limit:
#   local   scope = "local"                     (no Redis)
#   leased  scope = "global", unkeyed           (a Redis call per batch)
#   keyed   scope = "global", key = header      (a Redis call per request;
#           wrk sends a random key of 100,000 on each request)
# Runs alternate local, leased, keyed for ROUNDS rounds; reported: best
# requests/s of each and the ratios to local; Redis calls per second from
# INFO commandstats; the store round trip (p50/p99) from sluice's
# sluice_cluster_store_duration_seconds histogram; and the request latency
# added by a keyed decision at one connection (p50/p99 of keyed - local).
# Loopback only; every run is bounded by DURATION.
#
# Usage: benches/load/cluster.sh [ROUNDS] [DURATION] [CONNECTIONS]
#   defaults: 3 rounds, 5s, 32 connections.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-5s}
CONNS=${3:-32}
cd "$(dirname "$0")/../.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
. benches/load/common.sh
BACKEND=$(free_port); SLUICE=$(free_port); ADMIN=$(free_port); REDIS=$(free_port)

backend_nginx "$WORK/backend" "$BACKEND" 1
cat >"$WORK/sluice.toml" <<CONF
[server]
listen = "127.0.0.1:$SLUICE"
admin_listen = "127.0.0.1:$ADMIN"
workers = 1
[upstream]
url = "http://127.0.0.1:$BACKEND"
max_concurrency = 4096
[spool]
dir = "$WORK/spool"
[log]
access = false
[cluster]
redis_url = "redis://127.0.0.1:$REDIS"
namespace = "bench"
[[route]]
name = "local"
match = { path_prefix = "/local" }
rate = "100000000/s"
[[route]]
name = "leased"
match = { path_prefix = "/leased" }
rate = "1000000/s"
scope = "global"
[[route]]
name = "keyed"
match = { path_prefix = "/keyed" }
rate = "1000000/s"
key = "header:x-user"
scope = "global"
CONF
cat >"$WORK/keyed.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/keyed", { ["x-user"] = tostring(math.random(1, 100000)) })
end
LUA

redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done
RUST_LOG=warn ./target/release/sluice run -c "$WORK/sluice.toml" &
SLUICE_PID=$!
wait_ready "http://127.0.0.1:$BACKEND/" "http://127.0.0.1:$SLUICE/local"

calls() { redis-cli -p "$REDIS" info commandstats | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {s += $3} END {print s+0}'; }
# CPU time (clock ticks, user + system) a process has used.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_wrk() { # $1 label, $2 round, $3... wrk args
  local label=$1 round=$2; shift 2
  local before after s0 s1 r0 r1
  before=$(calls); s0=$(cpu "$SLUICE_PID"); r0=$(cpu "$REDIS_PID")
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" >"$WORK/$label.$round.txt"
  after=$(calls); s1=$(cpu "$SLUICE_PID"); r1=$(cpu "$REDIS_PID")
  echo $((after - before)) >"$WORK/$label.$round.calls"
  echo "$((s1 - s0)) $((r1 - r0))" >"$WORK/$label.$round.cpu"
}
for r in $(seq "$ROUNDS"); do
  run_wrk local "$r" "http://127.0.0.1:$SLUICE/local"
  run_wrk leased "$r" "http://127.0.0.1:$SLUICE/leased"
  run_wrk keyed "$r" -s "$WORK/keyed.lua" "http://127.0.0.1:$SLUICE/keyed"
done
curl -fs "http://127.0.0.1:$ADMIN/metrics" >"$WORK/metrics.txt"
# One connection: the latency a decision adds.
wrk -t1 -c1 -d"$DURATION" --latency "http://127.0.0.1:$SLUICE/local" >"$WORK/c1.local.txt"
wrk -t1 -c1 -d"$DURATION" --latency -s "$WORK/keyed.lua" "http://127.0.0.1:$SLUICE/keyed" >"$WORK/c1.keyed.txt"

python3 - "$WORK" "$ROUNDS" "$CONNS" "$DURATION" <<'PY'
import re, sys, glob
work, rounds, conns, dur = sys.argv[1:]
dur_s = float(dur.rstrip("s"))
sys.path.insert(0, "benches/load")
from wrk_report import latency_ms as lat, summary
def parse(path):
    rps, _, p99, bad = summary(path)
    calls = int(open(path.replace(".txt", ".calls")).read())
    ticks = [int(x) for x in open(path.replace(".txt", ".cpu")).read().split()]
    reqs = rps * dur_s
    # µs of CPU per request: sluice's own, and Redis's on its behalf.
    per = [t * 1e6 / hz / reqs for t in ticks]
    return rps, p99, bad, calls, per[0], per[1]
import os
hz = os.sysconf("SC_CLK_TCK")
best = {}
print(f"wrk -t1 -c{conns} -d{dur}, 1 sluice worker, {rounds} rounds alternated:")
for label in ("local", "leased", "keyed"):
    runs = [parse(p) for p in sorted(glob.glob(f"{work}/{label}.*.txt"))]
    best[label] = max(runs, key=lambda r: r[0])
    for r in runs:
        print(f"  {label:6s} {r[0]:9.0f} req/s  p99 {r[1]:6.2f} ms  Redis calls {r[3]/dur_s:8.0f}/s  CPU/request: sluice {r[4]:5.1f} µs, Redis {r[5]:5.1f} µs" + (f"  ({r[2]} non-2xx)" if r[2] else ""))
print("\n| route | best req/s | ÷ local | Redis calls/s | sluice CPU µs/request | Redis CPU µs/request |")
print("|---|---|---|---|---|---|")
for label, r in best.items():
    print(f"| {label} | {r[0]:.0f} | {r[0]/best['local'][0]:.2f}× | {r[3]/dur_s:.0f} | {r[4]:.1f} | {r[5]:.1f} |")
# Store round trips from the histogram (upper bounds of the buckets that
# hold the 50th and 99th percentile).
text = open(f"{work}/metrics.txt").read()
for op in ("gcra", "lease"):
    buckets = [(float(le), float(v)) for le, v in re.findall(
        rf'sluice_cluster_store_duration_seconds_bucket{{le="([^"+]+)",op="{op}"}} (\d+)', text)]
    buckets += [(float(le), float(v)) for le, v in re.findall(
        rf'sluice_cluster_store_duration_seconds_bucket{{op="{op}",le="([^"+]+)"}} (\d+)', text)]
    buckets.sort()
    total = re.search(rf'sluice_cluster_store_duration_seconds_count{{op="{op}"}} (\d+)', text)
    if not total or not buckets:
        continue
    n = float(total.group(1))
    def q(p):
        for le, v in buckets:
            if v >= p * n:
                return f"≤ {le*1e3:g} ms"
        return "> 1 s"
    print(f"\nstore round trip ({op}, {n:.0f} calls under load): p50 {q(0.5)}, p99 {q(0.99)}")
l, k = open(f"{work}/c1.local.txt").read(), open(f"{work}/c1.keyed.txt").read()
print(f"\none connection: local p50 {lat(l,50):.3f} ms p99 {lat(l,99):.3f} ms; keyed p50 {lat(k,50):.3f} ms p99 {lat(k,99):.3f} ms")
print(f"a keyed decision adds p50 {lat(k,50)-lat(l,50):.3f} ms, p99 {lat(k,99)-lat(l,99):.3f} ms")
PY
