#!/usr/bin/env bash
# One command for the comparison of issue 12: sluice against nginx and
# HAProxy on this machine, written into BENCHMARKS.md (between the
# compare_all markers, replacing the previous run's section) with plots
# under benches/results/.
#
#   1. pass-through: wrk against the backend directly, nginx proxy_pass
#      (upstream keepalive), HAProxy and sluice, at 1 and 2 workers, each
#      proxy with its logging on and off; instructions per request under
#      callgrind for nginx and sluice;
#   2. burst absorption: 2,000 POSTs from 256 clients against a backend of
#      100 req/s, with no protection, nginx limit_req, HAProxy maxconn and
#      sluice;
#   3. the same with the proxy SIGKILLed 2 s in and restarted;
#   4. durable ingest: sluice's 202/s and p99 for each spool.fsync mode.
#
# Installs what it lacks with apt-get (Debian's nginx, haproxy, wrk,
# valgrind, apache2-utils, gnuplot-nox), builds sluice --release, runs on
# loopback only, every load bounded in requests and time. Timed runs are
# alternated (the order rotates every round) and every figure compared is a
# ratio between systems measured in the same run. About 15 minutes on a
# 2-core machine; CI does not run it.
#
# Usage: benches/load/compare_all.sh [--quick] [--no-install]
#   --quick (or QUICK=1): short runs for development; the report goes to
#   stdout and the plots to $QUICK_OUT (default /tmp/sluice-compare-quick),
#   BENCHMARKS.md is left alone.
#   SCENARIOS="1 2 3 4" picks scenarios (a subset never writes BENCHMARKS.md);
#   KEEP=1 keeps the work dir (configs, logs, raw results) for a look.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STARTED=$(date +%s)
QUICK=${QUICK:-0}
INSTALL=1
for arg in "$@"; do
  case $arg in
    --quick|quick) QUICK=1 ;;
    --no-install) INSTALL=0 ;;
    *) echo "usage: $0 [--quick] [--no-install]" >&2; exit 2 ;;
  esac
done
SCENARIOS=${SCENARIOS:-1 2 3 4}
HERE=$ROOT/benches/load/compare

if [[ $QUICK == 1 ]]; then
  ROUNDS=1; DUR=2s; CG_RUNS=1; CG_LO=2000; CG_HI=4000; CG_RUNS_LOG=1
  BURST_N=500; S4_ROUNDS=1; S4_DUR=2s; DRAIN_MAX=40
  OUT=${QUICK_OUT:-/tmp/sluice-compare-quick}
else
  ROUNDS=7; DUR=4s; CG_RUNS=3; CG_LO=20000; CG_HI=40000; CG_RUNS_LOG=1
  BURST_N=2000; S4_ROUNDS=3; S4_DUR=4s; DRAIN_MAX=120
  OUT=$ROOT/benches/results
fi
CONNS=32
BURST_C=256
BURST_TIMEOUT=30
BACKEND_WORKERS=10
BACKEND_SERVICE_MS=100
KILL_AFTER=2
mkdir -p "$OUT"

# --- tools -----------------------------------------------------------------
need=()
for pair in nginx:nginx haproxy:haproxy wrk:wrk valgrind:valgrind ab:apache2-utils \
  gnuplot:gnuplot-nox curl:curl callgrind_annotate:valgrind; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  if [[ $INSTALL == 0 ]]; then echo "missing: ${need[*]}" >&2; exit 1; fi
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }

echo "building sluice (release)" >&2
BUILD_T0=$(date +%s)
cargo build --release --quiet --bin sluice
BUILD_SECS=$(( $(date +%s) - BUILD_T0 ))
SLUICE=${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice
[[ $SLUICE == /* ]] || SLUICE=$ROOT/$SLUICE

# --- process handling --------------------------------------------------------
# The work dir lives on the disk (the spool's fsync is part of scenario 4).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")
RES=$WORK/results
mkdir -p "$RES"/{s1,cg,s2,s3,s4,configs}
cleanup() {
  local p
  for p in $(jobs -p); do kill_tree TERM "$p"; done
  wait 2>/dev/null || true
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# Signals a process and its direct children (nginx's workers), by pid.
kill_tree() { # SIG PID
  local kids
  kids=$(ps -o pid= --ppid "$2" 2>/dev/null || true)
  kill -"$1" "$2" 2>/dev/null || true
  # shellcheck disable=SC2086
  [[ -z $kids ]] || kill -"$1" $kids 2>/dev/null || true
}
# Stops a process (TERM, then KILL after 10 s) and reaps it.
stop() { # PID
  kill_tree TERM "$1"
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill_tree KILL "$1"
  wait "$1" 2>/dev/null || true
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# Waits (at most 60 s) until a TCP port accepts; sends no request.
wait_port() {
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2; return 1
}
wait_url() {
  for _ in $(seq 600); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$1 never answered" >&2; return 1
}
now() { date +%s.%N; }
# Sum of a sluice metric family (all label sets) on an admin port.
sluice_metric() { # ADMIN NAME
  curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

# --- configs ----------------------------------------------------------------
# nginx: DIR PORT WORKERS ACCESS_LOG(on|off) UPSTREAM_PORT LOCATION_EXTRA HTTP_EXTRA MAIN_EXTRA
nginx_proxy_conf() {
  local dir=$1 log=off
  mkdir -p "$dir"
  [[ $4 == on ]] && log="$dir/access.log"
  cat >"$dir/nginx.conf" <<CONF
worker_processes $3;
daemon off;
$8
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log $log;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  upstream backend { server 127.0.0.1:$5; keepalive 128; keepalive_requests 1000000; }
  $7
  server {
    listen 127.0.0.1:$2;
    keepalive_requests 1000000;
    location / {
      $6
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}
# HAProxy: FILE PORT NBTHREAD LOG(on|off) UPSTREAM_PORT SERVER_EXTRA DEFAULTS_EXTRA
haproxy_conf() {
  local glog="" dlog=""
  if [[ $4 == on ]]; then
    glog="log stdout format raw local0"
    dlog=$'log global\n  option httplog'
  fi
  local threads=""
  [[ -z $3 ]] || threads="nbthread $3"
  cat >"$1" <<CONF
global
  $threads
  maxconn 4096
  $glog
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  $dlog
  $7
frontend fe
  bind 127.0.0.1:$2
  default_backend be
backend be
  server s1 127.0.0.1:$5 $6
CONF
}
# sluice: FILE PORT ADMIN WORKERS ACCESS(true|false) UPSTREAM_PORT SPOOL_DIR
# Pass-through: one route whose limit never triggers.
sluice_pass_conf() {
  cat >"$1" <<CONF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
workers = $4
[log]
access = $5
[upstream]
url = "http://127.0.0.1:$6"
max_concurrency = 4096
[spool]
dir = "$7"
[[route]]
name = "bench"
match = { path_prefix = "/" }
rate = "100000000/s"
on_limit = "reject"
CONF
}
save_conf() { cp "$1" "$RES/configs/$2"; }

# The pass-through backend: nginx `return 200`, both cores, no log.
BACKEND=$(free_port)
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/backend; proxy_temp_path $WORK/backend; fastcgi_temp_path $WORK/backend;
  uwsgi_temp_path $WORK/backend; scgi_temp_path $WORK/backend;
  server { listen 127.0.0.1:$BACKEND; keepalive_requests 1000000; location / { return 200 'ok'; } }
}
CONF
save_conf "$WORK/backend/nginx.conf" s1-backend-nginx.conf
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
wait_port "$BACKEND"

scenario_time() { echo "$1 $(( $(date +%s) - $2 ))" >>"$RES/durations"; }

# --- scenario 1: pass-through --------------------------------------------------
scenario1() {
  local t0 w log port admin sys r i n order p
  t0=$(date +%s)
  declare -gA PORT=()
  S1_PIDS=()
  PORT[direct.1]=$BACKEND; PORT[direct.2]=$BACKEND
  for w in 1 2; do
    for log in on off; do
      port=$(free_port)
      nginx_proxy_conf "$WORK/nginx-$log-$w" "$port" "$w" "$log" "$BACKEND" "" "" ""
      save_conf "$WORK/nginx-$log-$w/nginx.conf" "s1-nginx-log-$log-w$w.conf"
      nginx -p "$WORK/nginx-$log-$w" -c "$WORK/nginx-$log-$w/nginx.conf" &
      S1_PIDS+=($!)
      PORT[nginx_$log.$w]=$port

      port=$(free_port)
      haproxy_conf "$WORK/haproxy-$log-$w.cfg" "$port" "$w" "$log" "$BACKEND" "" ""
      save_conf "$WORK/haproxy-$log-$w.cfg" "s1-haproxy-log-$log-w$w.cfg"
      haproxy -db -f "$WORK/haproxy-$log-$w.cfg" >"$WORK/haproxy-$log-$w.log" 2>&1 &
      S1_PIDS+=($!)
      PORT[haproxy_$log.$w]=$port

      port=$(free_port); admin=$(free_port)
      sluice_pass_conf "$WORK/sluice-$log-$w.toml" "$port" "$admin" "$w" \
        "$([[ $log == on ]] && echo true || echo false)" "$BACKEND" "$WORK/spool-$log-$w"
      save_conf "$WORK/sluice-$log-$w.toml" "s1-sluice-log-$log-w$w.toml"
      "$SLUICE" run -c "$WORK/sluice-$log-$w.toml" 2>"$WORK/sluice-$log-$w.log" &
      S1_PIDS+=($!)
      PORT[sluice_$log.$w]=$port
      echo "$admin" >"$WORK/sluice-$log-$w.admin"
    done
  done
  for p in "${PORT[@]}"; do wait_port "$p"; done
  for w in 1 2; do for log in on off; do wait_url "http://127.0.0.1:$(cat "$WORK/sluice-$log-$w.admin")/readyz"; done; done

  # The runs compared (sluice and nginx with the same logging, sluice with
  # and without its log) sit next to each other; every other round runs
  # the list backwards (ABBA), so a steady drift cancels out of the ratios.
  local systems=(haproxy_on nginx_on sluice_on sluice_off nginx_off haproxy_off direct)
  n=${#systems[@]}
  for r in $(seq "$ROUNDS"); do
    order=(1 2); ((r % 2)) || order=(2 1)
    for w in "${order[@]}"; do
      for i in $(seq 0 $((n - 1))); do
        if ((r % 2)); then sys=${systems[$i]}; else sys=${systems[$((n - 1 - i))]}; fi
        echo "scenario 1: round $r/$ROUNDS, $w worker(s), $sys" >&2
        timeout 120 wrk "-t$w" "-c$CONNS" "-d$DUR" --latency "http://127.0.0.1:${PORT[$sys.$w]}/" \
          >"$RES/s1/w$w.$sys.r$r.txt"
      done
    done
  done
  sleep 0.3 # sluice's log writer flushes within 100 ms
  # What each proxy's log holds, against the requests wrk saw answered.
  for w in 1 2; do
    echo "nginx_on $w $(wc -l <"$WORK/nginx-on-$w/access.log")"
    echo "haproxy_on $w $(grep -c ' fe be/' "$WORK/haproxy-on-$w.log" || true)"
    echo "sluice_on $w $(grep -c 'sluice::access' "$WORK/sluice-on-$w.log" || true)"
    echo "sluice_dropped $w $(sluice_metric "$(cat "$WORK/sluice-on-$w.admin")" sluice_log_dropped_total)"
  done >"$RES/s1/loglines"
  head -n 2 "$WORK/nginx-on-1/access.log" >"$RES/s1/sample.nginx"
  grep -m2 ' fe be/' "$WORK/haproxy-on-1.log" >"$RES/s1/sample.haproxy" || true
  grep -m2 'sluice::access' "$WORK/sluice-on-1.log" >"$RES/s1/sample.sluice" || true
  for p in "${S1_PIDS[@]}"; do stop "$p"; done
  scenario_time s1 "$t0"
}

# --- scenario 1b: instructions per request under callgrind -------------------------
# One callgrind run of nginx or sluice (1 worker) serving N requests with
# `ab -k -c 8`; appends "sys log run N instructions calibration" to the
# results (calibration: quanta's one-time clock calibration, left out).
cg_measure() { # SYS LOG RUN N
  local sys=$1 log=$2 run=$3 n=$4 port admin dir out pid
  port=$(free_port); dir="$WORK/cg-$sys-$log-$run-$n"; out="$RES/cg/$sys.$log.$run.$n.out"
  mkdir -p "$dir"
  if [[ $sys == nginx ]]; then
    nginx_proxy_conf "$dir" "$port" 1 "$log" "$BACKEND" "" "" "master_process off;"
    if [[ $run == 1 ]]; then save_conf "$dir/nginx.conf" "cg-nginx-log-$log.conf"; fi
    valgrind --tool=callgrind --log-file="$dir/valgrind.log" --callgrind-out-file="$out" \
      nginx -p "$dir" -c "$dir/nginx.conf" &
    pid=$!
    wait_url "http://127.0.0.1:$port/"
  else
    admin=$(free_port)
    sluice_pass_conf "$dir/sluice.toml" "$port" "$admin" 1 \
      "$([[ $log == on ]] && echo true || echo false)" "$BACKEND" "$dir/spool"
    if [[ $run == 1 ]]; then save_conf "$dir/sluice.toml" "cg-sluice-log-$log.toml"; fi
    valgrind --tool=callgrind --log-file="$dir/valgrind.log" --callgrind-out-file="$out" \
      "$SLUICE" run -c "$dir/sluice.toml" 2>"$dir/stderr.log" &
    pid=$!
    wait_url "http://127.0.0.1:$admin/readyz"
  fi
  timeout 300 ab -q -k -c 8 -n "$n" "http://127.0.0.1:$port/" >"$dir/ab.log" 2>&1 || true
  if ! grep -q "Failed requests:        0" "$dir/ab.log" || grep -q "Non-2xx" "$dir/ab.log"; then
    echo "callgrind $sys: ab failed:" >&2; cat "$dir/ab.log" >&2; stop "$pid"; return 1
  fi
  stop "$pid"
  echo "$sys $log $run $n $(python3 "$HERE/cg_count.py" "$out" quanta::Calibration::calibrate)" >>"$RES/cg/results"
}
scenario_cg() {
  local t0 run log sys
  t0=$(date +%s)
  for run in $(seq "$CG_RUNS"); do
    for log in off on; do
      [[ $log == on && $run -gt $CG_RUNS_LOG ]] && continue
      for sys in nginx sluice; do
        echo "callgrind: run $run, $sys, log $log" >&2
        cg_measure "$sys" "$log" "$run" "$CG_LO"
        cg_measure "$sys" "$log" "$run" "$CG_HI"
      done
    done
  done
  # Where the instructions go: per function, (HI - LO) / (HI - LO requests).
  for sys in sluice nginx; do
    for n in "$CG_LO" "$CG_HI"; do
      callgrind_annotate --auto=no --threshold=100 "$RES/cg/$sys.off.1.$n.out" >"$RES/cg/$sys.annotate.$n.txt" 2>/dev/null || true
    done
  done
  rm -f "$RES"/cg/*.out
  scenario_time cg "$t0"
}

# --- scenarios 2 and 3: burst absorption, and a SIGKILL in the middle of it -------
# Starts the proxy SYS for the burst in front of backend port BB (the
# second time, for the restart, on the same config, port and spool); writes
# its pid to $WORK/burst.pid and its port to $WORK/burst.port.
burst_proxy_start() { # SYS BB TAG
  local sys=$1 bb=$2 tag=$3 port admin
  if [[ $sys == direct ]]; then echo "$bb" >"$WORK/burst.port"; return 0; fi
  if [[ -f $WORK/burst-$tag.port ]]; then
    port=$(cat "$WORK/burst-$tag.port")
  else
    port=$(free_port); admin=$(free_port)
    echo "$port" >"$WORK/burst-$tag.port"
    case $sys in
      nginx)
        # One bucket for all clients ("all" is a constant key), rate = the
        # backend's capacity, a burst queue of 2 s of it; the excess: 503.
        nginx_proxy_conf "$WORK/burst-$tag" "$port" auto on "$bb" \
          "limit_req zone=burst burst=200;" \
          'limit_req_zone "all" zone=burst:1m rate=100r/s;' ""
        save_conf "$WORK/burst-$tag/nginx.conf" "s2-nginx.conf" ;;
      haproxy)
        # At most 10 requests at the backend (its workers), the rest queued.
        haproxy_conf "$WORK/burst-$tag.cfg" "$port" "" on "$bb" "maxconn 10" "timeout queue 30s"
        save_conf "$WORK/burst-$tag.cfg" "s2-haproxy.cfg" ;;
      sluice)
        # A spool route sized to the backend: 100/s live, the same capacity
        # shared with replay, at most 10 in flight (its workers).
        cat >"$WORK/burst-$tag.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[upstream]
url = "http://127.0.0.1:$bb"
capacity = "100/s"
capacity_burst = 10
max_concurrency = 10
[spool]
dir = "$WORK/burst-spool-$tag"
partitions = 16
[[route]]
name = "orders"
match = { path_prefix = "/" }
rate = "100/s"
burst = 10
on_limit = "spool"
CONF
        echo "$admin" >"$WORK/burst-$tag.admin"
        save_conf "$WORK/burst-$tag.toml" "s2-sluice.toml" ;;
    esac
  fi
  case $sys in
    nginx) nginx -p "$WORK/burst-$tag" -c "$WORK/burst-$tag/nginx.conf" & ;;
    haproxy) haproxy -db -f "$WORK/burst-$tag.cfg" >>"$WORK/burst-$tag.log" 2>&1 & ;;
    sluice) "$SLUICE" run -c "$WORK/burst-$tag.toml" 2>>"$WORK/burst-$tag.log" & ;;
  esac
  echo $! >"$WORK/burst.pid"
  echo "$port" >"$WORK/burst.port"
}
# Waits until the backend has been idle for 2 s (and, for sluice, the spool
# has no backlog), at most DRAIN_MAX seconds after the burst began.
wait_drained() { # BACKEND_LOG T_START [SLUICE_ADMIN]
  local last=-1 cur stable=0
  while (( $(date +%s) - ${2%.*} < DRAIN_MAX )); do
    cur=$(wc -l <"$1")
    if [[ $cur == "$last" ]]; then stable=$((stable + 1)); else stable=0; fi
    last=$cur
    if ((stable >= 4)); then
      [[ -z ${3:-} ]] && return 0
      [[ $(sluice_metric "$3" sluice_spool_backlog_records) == 0 &&
         $(sluice_metric "$3" sluice_upstream_in_flight) == 0 ]] && return 0
    fi
    sleep 0.5
  done
  echo "  (still draining after ${DRAIN_MAX}s: stopped there)" >&2
}
burst_run() { # SCENARIO(2|3) SYS
  local sc=$1 sys=$2 bb bpid port ppid cpid t0 tag="s$1-$2" admin=""
  bb=$(free_port)
  python3 "$HERE/burst_backend.py" --port "$bb" --workers "$BACKEND_WORKERS" \
    --service-ms "$BACKEND_SERVICE_MS" --log "$RES/s$sc/$sys.backend" &
  bpid=$!
  wait_port "$bb"
  burst_proxy_start "$sys" "$bb" "$tag"
  port=$(cat "$WORK/burst.port")
  wait_port "$port"
  if [[ $sys == sluice ]]; then
    admin=$(cat "$WORK/burst-$tag.admin")
    wait_url "http://127.0.0.1:$admin/readyz"
  fi
  ppid=""; [[ $sys == direct ]] || ppid=$(cat "$WORK/burst.pid")
  echo "scenario $sc: $sys ($BURST_N POSTs, $BURST_C clients)" >&2
  rm -f "$WORK/burst.started"
  t0=$(now)
  timeout $((BURST_TIMEOUT * 4 + 60)) python3 "$HERE/burst_client.py" --target "127.0.0.1:$port" \
    -n "$BURST_N" -c "$BURST_C" --timeout "$BURST_TIMEOUT" --out "$RES/s$sc/$sys.client" \
    --started "$WORK/burst.started" &
  cpid=$!
  if [[ $sc == 3 ]]; then
    for _ in $(seq 500); do [[ -s $WORK/burst.started ]] && break; sleep 0.01; done
    sleep "$KILL_AFTER"
    local tk tr
    tk=$(now)
    kill_tree KILL "$ppid"; wait "$ppid" 2>/dev/null || true
    burst_proxy_start "$sys" "$bb" "$tag"
    ppid=$(cat "$WORK/burst.pid")
    wait_port "$port"
    if [[ -n $admin ]]; then wait_url "http://127.0.0.1:$admin/readyz"; fi
    tr=$(now)
    echo "$tk $tr" >"$RES/s3/$sys.kill"
  fi
  wait "$cpid" || echo "  client exited with $?" >&2
  wait_drained "$RES/s$sc/$sys.backend" "$t0" "$admin"
  if [[ -n $admin ]]; then
    for m in sluice_requests_total sluice_replay_total sluice_spool_recovered_total; do
      curl -fs "http://127.0.0.1:$admin/metrics" | grep "^$m" >>"$RES/s$sc/$sys.metrics" || true
    done
  fi
  if [[ -n $ppid ]]; then stop "$ppid"; fi
  stop "$bpid"
  # Warnings and errors the proxy logged (not its access lines).
  case $sys in
    sluice) grep -v 'sluice::access' "$WORK/burst-$tag.log" | grep -E ' (WARN|ERROR) ' | head -20 >"$RES/s$sc/$sys.errors" || true ;;
    nginx) grep -E '\[(error|crit|alert|emerg)\]' "$WORK/burst-$tag/error.log" | grep -v 'limiting requests' | head -20 >"$RES/s$sc/$sys.errors" || true ;;
    *) : ;;
  esac
}
scenario2() {
  local t0 sys
  t0=$(date +%s)
  for sys in direct nginx haproxy sluice; do burst_run 2 "$sys"; done
  scenario_time s2 "$t0"
}
scenario3() {
  local t0 sys
  t0=$(date +%s)
  for sys in nginx haproxy sluice; do burst_run 3 "$sys"; done
  scenario_time s3 "$t0"
}

# --- scenario 4: durable ingest per fsync mode ---------------------------------------
# Requests spooled (202) and fdatasync rounds so far, on an admin port.
s4_counts() { # ADMIN LABEL
  curl -fs "http://127.0.0.1:$1/metrics" | awk -v l="$2" '
    /^sluice_requests_total\{/ && /decision="spooled"/ {s += $2}
    /^sluice_spool_fsync_duration_seconds_count/ {f += $2}
    END {print l, s + 0, f + 0}'
}
scenario4() {
  local t0 mode port admin r i modes=(always interval never) m
  t0=$(date +%s)
  cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
  cp "$WORK/post.lua" "$RES/configs/s4-post.lua"
  declare -gA S4PORT=() S4ADMIN=()
  for mode in "${modes[@]}"; do
    port=$(free_port); admin=$(free_port)
    cat >"$WORK/s4-$mode.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[upstream]
url = "http://127.0.0.1:$BACKEND"
capacity = "1/s"
[spool]
dir = "$WORK/s4-spool-$mode"
fsync = "$mode"
max_bytes = "8GiB"
[[route]]
name = "ingest"
match = { path_prefix = "/" }
rate = "1/min"
burst = 1
on_limit = "spool"
CONF
    save_conf "$WORK/s4-$mode.toml" "s4-sluice-fsync-$mode.toml"
    "$SLUICE" run -c "$WORK/s4-$mode.toml" 2>"$WORK/s4-$mode.log" &
    S4PORT[$mode]=$port; S4ADMIN[$mode]=$admin
  done
  for mode in "${modes[@]}"; do wait_url "http://127.0.0.1:${S4ADMIN[$mode]}/readyz"; done
  for r in $(seq "$S4_ROUNDS"); do
    for i in 0 1 2; do
      mode=${modes[$(( (i + r - 1) % 3 ))]}
      echo "scenario 4: round $r/$S4_ROUNDS, fsync $mode" >&2
      s4_counts "${S4ADMIN[$mode]}" before >"$RES/s4/$mode.r$r.metrics"
      timeout 120 wrk -t2 -c64 "-d$S4_DUR" --latency -s "$WORK/post.lua" \
        "http://127.0.0.1:${S4PORT[$mode]}/ingest" >"$RES/s4/$mode.r$r.txt"
      s4_counts "${S4ADMIN[$mode]}" after >>"$RES/s4/$mode.r$r.metrics"
    done
  done
  for mode in "${modes[@]}"; do
    grep -E ' (WARN|ERROR) ' "$WORK/s4-$mode.log" | head -5 >"$RES/s4/$mode.errors" || true
  done
  scenario_time s4 "$t0"
}

# --- run --------------------------------------------------------------------------
for s in $SCENARIOS; do
  case $s in
    1) scenario1; scenario_cg ;;
    2) scenario2 ;;
    3) scenario3 ;;
    4) scenario4 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

# --- what was measured on what -------------------------------------------------------
{
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel=$(uname -sr)"
  echo "os=$(awk -F= '/^PRETTY_NAME=/ {gsub(/"/, "", $2); print $2}' /etc/os-release)"
  echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "haproxy=$(haproxy -v | head -1)"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "valgrind=$(valgrind --version)"
  echo "ab=$(ab -V | head -1)"
  echo "gnuplot=$(gnuplot --version)"
  echo "python=$(python3 --version)"
  echo "rustc=$(rustc --version)"
  dirty=""; [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] || dirty=" (with uncommitted changes in src/)"
  src=$(git log -1 --format=%h -- src Cargo.toml Cargo.lock)
  echo "sluice=$(git rev-parse --short HEAD)$dirty; src/ as of $src: $(git log -1 --format=%s "$src" | cut -c1-100)"
  echo "quick=$QUICK"
  echo "scenarios=$SCENARIOS"
  echo "rounds=$ROUNDS"; echo "dur=$DUR"; echo "conns=$CONNS"
  echo "cg_runs=$CG_RUNS"; echo "cg_runs_log=$CG_RUNS_LOG"; echo "cg_lo=$CG_LO"; echo "cg_hi=$CG_HI"
  echo "burst_n=$BURST_N"; echo "burst_c=$BURST_C"; echo "burst_timeout=$BURST_TIMEOUT"
  echo "backend_workers=$BACKEND_WORKERS"; echo "backend_service_ms=$BACKEND_SERVICE_MS"
  echo "kill_after=$KILL_AFTER"; echo "drain_max=$DRAIN_MAX"
  echo "s4_rounds=$S4_ROUNDS"; echo "s4_dur=$S4_DUR"
  echo "build_secs=$BUILD_SECS"
  echo "elapsed_secs=$(( $(date +%s) - STARTED ))"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
} >"$RES/meta"

WRITE=1
[[ $QUICK == 1 || $SCENARIOS != "1 2 3 4" ]] && WRITE=0
mkdir -p "$OUT/configs"
cp "$RES"/configs/* "$OUT/configs/"
python3 "$HERE/report.py" "$RES" "$OUT" "$([[ $WRITE == 1 ]] && echo "$ROOT/BENCHMARKS.md" || echo -)"
echo "total time: $(( $(date +%s) - STARTED )) s" >&2
