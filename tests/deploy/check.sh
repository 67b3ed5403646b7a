#!/usr/bin/env bash
# Validates everything under deploy/ (and config/) offline. Run from CI after
# `cargo test` (it uses the binary that built); needs promtool (Debian's
# prometheus package) and `pip install kubernetes-validate pyyaml`.
#
#   bash tests/deploy/check.sh
#
# Steps:
#   1. promtool check rules + promtool test rules on the alerts
#   2. kubernetes-validate --strict on every core-kind manifest, against the
#      newest Kubernetes version the installed validator knows (>= 1.29), and
#      proof that it fails on deliberately broken copies
#   3. PodMonitor, kustomizations, cross-manifest consistency, Grafana and
#      alert metric names, runbook anchors (tests/deploy/check_manifests.py),
#      and proof that this checker fails on a broken copy too
#   4. `sluice check` on every config/*.toml and on the ConfigMap's config
#   5. systemd-analyze verify on the unit, when systemd-analyze exists
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== deploy: $*"; }

command -v promtool >/dev/null || fail "promtool not found (apt-get install prometheus)"
# The module rather than the console script: works wherever pip put it.
kv() { python3 -m kubernetes_validate "$@"; }
kv --version >/dev/null 2>&1 || fail "kubernetes-validate not found (python3 -m pip install kubernetes-validate)"
python3 -c 'import yaml' 2>/dev/null || fail "PyYAML not found (pip install pyyaml)"

# ---- 1. alert rules -------------------------------------------------------
step "promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml

# ---- 2. Kubernetes schemas ------------------------------------------------
kver=$(python3 -c 'from kubernetes_validate.utils import latest_version; print(latest_version())')
python3 - "$kver" <<'EOF' || fail "kubernetes-validate's newest schema version $kver is older than 1.29 (native sidecars)"
import sys
major, minor = map(int, sys.argv[1].split(".")[:2])
sys.exit(0 if (major, minor) >= (1, 29) else 1)
EOF
step "kubernetes-validate $(kv --version) --strict -k $kver"

# Core kinds: apiVersion "v1" or a group without dots or under *.k8s.io
# (Kustomization files excluded by name; PodMonitor is a CRD: checked in 3).
mapfile -t core < <(python3 - deploy/kubernetes <<'EOF'
import os, sys, yaml
for d, _, fs in sorted(os.walk(sys.argv[1])):
    for f in sorted(fs):
        if not f.endswith((".yaml", ".yml")) or f == "kustomization.yaml":
            continue
        p = os.path.join(d, f)
        docs = [x for x in yaml.safe_load_all(open(p)) if x]
        group = lambda av: av.rpartition("/")[0] if "/" in av else ""
        if all("." not in group(x["apiVersion"]) or group(x["apiVersion"]).endswith(".k8s.io") for x in docs):
            print(p)
EOF
)
[ ${#core[@]} -ge 4 ] || fail "expected at least 4 core-kind manifest files, found: ${core[*]}"
out=$(kv --strict -k "$kver" "${core[@]}" 2>&1) || { echo "$out"; fail "kubernetes-validate"; }
echo "$out"
# A validator that only warns checks nothing: every document must have passed.
if grep -qv ' passed for resource ' <<<"$out"; then
  fail "kubernetes-validate printed something other than 'passed' (missing schema?)"
fi

# The validator must reject broken copies (exit non-zero).
broken() { # name, sed expression, file
  local copy="$tmp/broken-$1.yaml"
  sed -e "$2" "$3" >"$copy"
  cmp -s "$copy" "$3" && fail "broken copy $1: the sed expression changed nothing"
  if kv --strict --quiet -k "$kver" "$copy" >"$tmp/out" 2>&1; then
    cat "$tmp/out"; fail "kubernetes-validate accepted a broken copy ($1)"
  fi
  echo "ok: rejected broken copy ($1): $(grep -m1 -o 'did not validate.*' "$tmp/out" | cut -c1-160)"
}
broken misspelled-field 's/timeoutSeconds: 2/timeoutSecond: 2/' deploy/kubernetes/deployment/deployment.yaml
broken wrong-type 's/replicas: 2/replicas: two/' deploy/kubernetes/statefulset/statefulset.yaml
broken misplaced-field 's/^\(  *\)restartPolicy: Always .*/\1restartPolicyy: Always/' deploy/kubernetes/statefulset/statefulset.yaml

# ---- 3. CRDs, kustomizations, consistency, Grafana, alerts -----------------
step "PodMonitor, kustomizations, dashboard and alert metric names"
python3 tests/deploy/check_manifests.py "$root"
# ... and the checker itself must catch a broken copy.
cp -r deploy/kubernetes "$tmp/kube"
sed -i 's/- podmonitor.yaml/- podmonitor.yml/' "$tmp/kube/base/kustomization.yaml"
sed -i 's/port: admin/port: adminn/' "$tmp/kube/base/podmonitor.yaml"
if python3 tests/deploy/check_manifests.py "$root" --kube-root "$tmp/kube" >"$tmp/out" 2>&1; then
  cat "$tmp/out"; fail "check_manifests.py accepted a broken copy"
fi
grep -q 'podmonitor.yml does not exist' "$tmp/out" || { cat "$tmp/out"; fail "missing resource not reported"; }
echo "ok: check_manifests.py rejected a broken copy ($(grep -c '^FAIL' "$tmp/out") problems)"

# ---- 4. configs -----------------------------------------------------------
# The debug binary `cargo test` just built; else a release build; or $SLUICE_BIN.
bin=${SLUICE_BIN:-target/debug/sluice}
[ -x "$bin" ] || bin=target/release/sluice
[ -x "$bin" ] || fail "no sluice binary: run cargo build (or cargo test) first"
step "sluice check ($bin)"
python3 - "$tmp/configmap.toml" <<'EOF'
import sys, yaml
cm = yaml.safe_load(open("deploy/kubernetes/base/configmap.yaml"))
open(sys.argv[1], "w").write(cm["data"]["sluice.toml"])
EOF
for f in config/*.toml "$tmp/configmap.toml"; do
  "$bin" check -c "$f" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "sluice check -c $f"; }
  echo "ok: sluice check -c ${f#"$tmp"/}"
done

# ---- 5. systemd unit ------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify"
  mkdir -p "$tmp/unit"
  # verify wants ExecStart to exist: point it at the built binary.
  sed "s#/usr/local/bin/sluice#$root/$bin#g" deploy/systemd/sluice.service >"$tmp/unit/sluice.service"
  # verify only warns on unknown keys: any output is a failure.
  out=$(systemd-analyze verify "$tmp/unit/sluice.service" 2>&1) || { echo "$out"; fail "systemd-analyze verify"; }
  [ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify reported problems"; }
  echo "ok: deploy/systemd/sluice.service"
else
  echo "== deploy: systemd-analyze not installed; skipping unit verification"
fi

echo "deploy checks: all green"
