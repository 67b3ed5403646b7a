#!/usr/bin/env bash
# Runs every fuzz target for a given time and writes the results (target,
# engine, time, executions, findings) into RELIABILITY.md's fuzz section,
# taken from the run's own output.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Engine, the first that works here:
#   1. cargo-fuzz (libFuzzer) on a nightly toolchain, with AddressSanitizer;
#   2. cargo-fuzz on the stable toolchain without a sanitizer (`-s none`);
#   3. no cargo-fuzz, or it can't build: the stable fallback,
#      tests/fuzz_fallback.rs, which drives the same check functions
#      (fuzz/checks/) with damaged valid frames for the same time.
# The engine used is named in the table. Install cargo-fuzz with
# `cargo install cargo-fuzz --locked` (crates.io); this script does not.
# SLUICE_FUZZ_ENGINE=libfuzzer-asan|libfuzzer|fallback forces one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[[ $secs =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2; }

targets=()
for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done

engine=${SLUICE_FUZZ_ENGINE:-}
toolchain=
case $engine in
  libfuzzer-asan) toolchain=nightly ;;
  libfuzzer) toolchain=stable ;;
  ''|fallback) ;;
  *) echo "SLUICE_FUZZ_ENGINE: libfuzzer-asan, libfuzzer or fallback" >&2; exit 2 ;;
esac
if [ -z "$engine" ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz --locked): using the stable fallback" >&2
    engine=fallback
  elif rustup run nightly rustc --version >/dev/null 2>&1; then
    engine=libfuzzer-asan; toolchain=nightly
  else
    echo "fuzz/run.sh: no nightly toolchain: cargo-fuzz without a sanitizer on stable" >&2
    engine=libfuzzer; toolchain=stable
  fi
fi

rows=()
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

run_fallback() { # target
  local t=$1 log=$logdir/$1.fallback
  if ! grep -q "(\"$t\"," tests/fuzz_fallback.rs; then
    rows+=("| \`$t\` | fallback | – | – | no stable fallback for this target |")
    return
  fi
  set +e
  SLUICE_FUZZ_FALLBACK_SECS=$secs SLUICE_FUZZ_TARGET=$t \
    cargo test --release --test fuzz_fallback fuzz_targets_for_a_given_time -- --nocapture >"$log" 2>&1
  local rc=$?
  set -e
  local line; line=$(grep -m1 '^fuzz-fallback:' "$log" || true)
  if [ -z "$line" ]; then
    tail -20 "$log" >&2
    echo "fuzz/run.sh: the fallback for $t printed no result (exit $rc)" >&2
    exit 1
  fi
  local time execs findings
  time=$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$line")
  execs=$(sed -E 's/.*executions=([0-9]+).*/\1/' <<<"$line")
  findings=$(sed -E 's/.*findings=([0-9]+).*/\1/' <<<"$line")
  rows+=("| \`$t\` | stable fallback (tests/fuzz_fallback.rs), release | ${time} s | $execs | $findings |")
}

run_libfuzzer() { # target
  local t=$1 log=$logdir/$1.libfuzzer art=fuzz/artifacts/$1
  mkdir -p "$art"
  local before; before=$(ls "$art" | sort)
  local args=(fuzz run)
  [ "$engine" = libfuzzer ] && args+=(-s none)
  echo "== cargo +$toolchain ${args[*]} $t (${secs}s)" >&2
  local start=$SECONDS
  set +e
  cargo "+$toolchain" "${args[@]}" "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
  local rc=$?
  set -e
  local wall=$((SECONDS - start))
  local after; after=$(ls "$art" | sort)
  local new; new=$(comm -13 <(echo "$before") <(echo "$after") | grep -c . || true)
  local execs time
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  time=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -Eo 'in [0-9]+' | grep -Eo '[0-9]+' | tail -1)
  if [ -z "$execs" ]; then
    tail -30 "$log" >&2
    if grep -q 'error\[E\|error: could not compile\|requires a nightly' "$log"; then
      echo "fuzz/run.sh: cargo-fuzz could not build $t here: falling back" >&2
      return 1
    fi
    echo "fuzz/run.sh: libFuzzer printed no statistics for $t (exit $rc)" >&2
    exit 1
  fi
  local findings=$new
  if [ "$new" -gt 0 ]; then
    findings="$new (fuzz/artifacts/$t/)"
  elif [ "$rc" -ne 0 ]; then
    findings="none saved, but exit $rc"
  fi
  local name="libFuzzer (cargo-fuzz), $toolchain"
  [ "$engine" = libfuzzer-asan ] && name="$name, AddressSanitizer"
  # libFuzzer's own "Done N runs in S second(s)"; absent when it stopped
  # on a finding, then the wall time of the whole command (build included).
  local shown="$wall s wall"
  [ -n "$time" ] && shown="$time s"
  rows+=("| \`$t\` | $name | $shown | $execs | $findings |")
}

for t in "${targets[@]}"; do
  if [ "$engine" = fallback ]; then
    run_fallback "$t"
  elif ! run_libfuzzer "$t"; then
    run_fallback "$t"
  fi
done

{
  echo "Written by \`fuzz/run.sh $secs\` on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores; toolchain: $(rustc +"${toolchain:-stable}" --version 2>/dev/null || rustc --version)."
  echo
  echo "| target | engine | time | executions | findings |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$logdir/section"
cat "$logdir/section"

# Replace the section in place, holding the same flock the tests take.
flock RELIABILITY.md python3 - "$logdir/section" <<'EOF'
import sys
section = open(sys.argv[1]).read()
path = "RELIABILITY.md"
with open(path, "r+") as f:
    text = f.read()
    begin, end = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"
    a = text.index(begin) + len(begin)
    b = text.index(end, a)
    text = text[:a] + "\n" + section + text[b:]
    f.seek(0)
    f.write(text)
    f.truncate()
EOF
echo "fuzz/run.sh: wrote the fuzz table into RELIABILITY.md" >&2
