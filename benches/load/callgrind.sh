#!/usr/bin/env bash
# Instructions and allocator calls per proxied request, counted exactly by
# valgrind's callgrind (repeatable on a noisy machine, unlike timings).
#
# sluice (1 worker, access log off) runs under callgrind in front of an
# nginx `return 200` backend; `ab -k -c 8 -n N` loads it. The count at
# N = HI minus the count at N = LO, divided by HI - LO, cancels start-up
# and shutdown; the median of RUNS such differences is printed.
#
# Usage: benches/load/callgrind.sh [RUNS] [LO] [HI]   (defaults 3 20000 40000)
set -euo pipefail
RUNS=${1:-3}
LO=${2:-20000}
HI=${3:-40000}
cd "$(dirname "$0")/../.."
for tool in valgrind ab; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind apache2-utils)" >&2; exit 1; }
done
. benches/load/common.sh
BACKEND=$(free_port)
backend_nginx "$WORK/backend" "$BACKEND" 1
wait_ready "http://127.0.0.1:$BACKEND/"

# One callgrind run of sluice serving N requests; prints "instructions allocs".
measure() { # $1 N
  local port admin out
  port=$(free_port); admin=$(free_port); out="$WORK/cg.$1.$RANDOM"
  bench_config "$WORK/sluice.toml" "$port" "$admin" "$BACKEND" 1 "$WORK/spool.$RANDOM"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    ./target/release/sluice run -c "$WORK/sluice.toml" 2>"$WORK/valgrind.log" &
  local pid=$!
  for _ in $(seq 600); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  ab -q -k -c 8 -n "$1" "http://127.0.0.1:$port/" >"$WORK/ab.log" 2>&1
  grep -q "Failed requests:        0" "$WORK/ab.log" || { cat "$WORK/ab.log" >&2; exit 1; }
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$out" <<'PY'
import re, sys
total = 0; allocs = 0; cfn = ""
names = {}
alloc_fns = re.compile(r"^(mi_(malloc|zalloc|calloc|realloc|rezalloc|recalloc)(_aligned|_aligned_at)?|malloc|calloc|realloc)$")
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    elif line.startswith(("fn=", "cfn=")):
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
        if m.group(2): names[m.group(1)] = m.group(2)
        if line.startswith("cfn="): cfn = names.get(m.group(1), "")
    elif line.startswith("calls=") and alloc_fns.match(cfn):
        allocs += int(line.split()[0][6:])
print(total, allocs, sys.argv[1])
PY
}

# As measure, less quanta's clock calibration: it runs once at start-up
# for as long as its wall-clock criteria take, which under valgrind varies
# by millions of instructions between runs and would not cancel in a pair
# (compare/cg_count.py says how much it was).
measure_steady() { # $1 N
  local out total allocs excluded
  read -r total allocs out < <(measure "$1")
  read -r _ excluded < <(python3 benches/load/compare/cg_count.py "$out" quanta::Calibration::calibrate)
  echo "$(( total - excluded )) $allocs"
}

results=()
for r in $(seq "$RUNS"); do
  read -r ilo alo < <(measure_steady "$LO")
  read -r ihi ahi < <(measure_steady "$HI")
  results+=("$(( (ihi - ilo) / (HI - LO) )) $(python3 -c "print(f'{($ahi - $alo) / ($HI - $LO):.2f}')")")
  echo "run $r: ${results[-1]} (instructions, allocator calls per request)"
done
printf '%s\n' "${results[@]}" | sort -n | awk -v n="$RUNS" 'NR == int((n + 1) / 2) {print "median: " $1 " instructions/request, " $2 " allocator calls/request"}'
