#!/usr/bin/env python3
"""Checks of deploy/ that a Kubernetes schema validator cannot make.

Usage: check_manifests.py REPO_ROOT [--kube-root DIR]

- Kustomizations: the fields they use are known ones, every resource they
  list exists (a file, or a directory holding a kustomization.yaml), every
  manifest under deploy/kubernetes is used by one, and each build has no two
  objects of the same kind and name.
- PodMonitor: apiVersion, kind, name, a selector that selects the
  workloads' pods, endpoints naming a port the sluice container declares.
- Consistency between the pieces: Service and PodMonitor select the
  workloads, the ConfigMap they mount exists, sluice is a native sidecar with
  /healthz and /readyz probes on its admin port, terminationGracePeriodSeconds
  exceeds server.shutdown_grace, and the spool volume exceeds spool.max_bytes.
- Dockerfile: its COPY sources exist and are not in .dockerignore; the
  runtime contract (user, ports, volume, command) is there.
- Grafana dashboard and alert rules: valid, and every sluice_* metric they
  use is one README.md's metric table lists; runbook links point at
  headings in docs/operations.md.

Exits 1 with one line per problem.
"""
import json
import os
import re
import sys
import tomllib

import yaml

KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "namePrefix", "nameSuffix",
    "labels", "commonLabels", "commonAnnotations", "patches", "images",
    "configMapGenerator", "secretGenerator", "generatorOptions", "components",
    "replicas",
}
PODMONITOR_ENDPOINT_FIELDS = {
    "port", "portNumber", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
    "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "params",
    "bearerTokenSecret", "basicAuth", "authorization", "tlsConfig", "followRedirects",
    "enableHttp2", "filterRunning", "proxyUrl", "oauth2", "trackTimestampsStaleness",
}

problems = []


def problem(msg):
    problems.append(msg)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def parse_duration_s(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s)
    if not m:
        raise ValueError(f"duration {s!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def parse_size(s):
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti|K|M|G|T|KB|MB|GB|TB)?", str(s))
    if not m:
        raise ValueError(f"size {s!r}")
    units = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    return int(m.group(1)) * units[m.group(2)]


def build(kdir, seen_files, stack=()):
    """Resources of the kustomization in kdir, recursively: [(file, doc)]."""
    kfile = os.path.join(kdir, "kustomization.yaml")
    if kdir in stack:
        problem(f"{kfile}: resource cycle")
        return []
    docs = load_docs(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        problem(f"{kfile}: expected one mapping")
        return []
    k = docs[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        problem(f"{kfile}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        problem(f"{kfile}: unknown fields {sorted(unknown)}")
    resources = k.get("resources")
    if not isinstance(resources, list) or not resources:
        problem(f"{kfile}: resources must be a non-empty list")
        return []
    out = []
    for r in resources:
        path = os.path.normpath(os.path.join(kdir, r))
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "kustomization.yaml")):
                problem(f"{kfile}: resource {r} is a directory without kustomization.yaml")
                continue
            out += build(path, seen_files, stack + (kdir,))
        elif os.path.isfile(path):
            # kustomize refuses files outside the kustomization's root.
            if not path.startswith(kdir + os.sep):
                problem(f"{kfile}: resource file {r} lies outside {kdir} (kustomize refuses it)")
            seen_files.add(path)
            out += [(path, d) for d in load_docs(path)]
        else:
            problem(f"{kfile}: resource {r} does not exist")
    return out


def check_build(name, objects, readme_metrics):
    keys = {}
    for path, d in objects:
        key = (d.get("kind"), d.get("metadata", {}).get("name"))
        if key in keys:
            problem(f"{name}: {key[0]}/{key[1]} defined twice ({keys[key]}, {path})")
        keys[key] = path
    by_kind = {}
    for path, d in objects:
        by_kind.setdefault(d.get("kind"), []).append((path, d))

    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    if len(workloads) != 1:
        problem(f"{name}: expected exactly one StatefulSet or Deployment, found {len(workloads)}")
        return
    wpath, w = workloads[0]
    tpl = w["spec"]["template"]
    pod_labels = tpl["metadata"].get("labels", {})
    pod = tpl["spec"]

    def selects(sel):
        return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())

    if not selects(w["spec"]["selector"].get("matchLabels")):
        problem(f"{wpath}: selector does not match the pod template labels")

    # sluice: a native sidecar.
    sidecars = [c for c in pod.get("initContainers", []) if c.get("name") == "sluice"]
    if len(sidecars) != 1:
        problem(f"{wpath}: no initContainer named sluice")
        return
    s = sidecars[0]
    if s.get("restartPolicy") != "Always":
        problem(f"{wpath}: the sluice initContainer needs restartPolicy: Always (native sidecar)")
    ports = {p.get("name"): p["containerPort"] for p in s.get("ports", [])}
    if ports.get("http") != 8080 or ports.get("admin") != 9090:
        problem(f"{wpath}: sluice must declare ports http=8080 and admin=9090, has {ports}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = s.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or ports.get(g.get("port"), g.get("port")) != 9090:
            problem(f"{wpath}: sluice {probe} must be httpGet {path} on the admin port 9090")
    sc = s.get("securityContext", {})
    for k, v in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False), ("runAsNonRoot", True)):
        if sc.get(k) is not v:
            problem(f"{wpath}: sluice securityContext.{k} must be {v}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem(f"{wpath}: sluice must drop ALL capabilities")
    res = s.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        problem(f"{wpath}: sluice needs resource requests and limits")
    ann = tpl["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != "9090":
        problem(f"{wpath}: pod template needs prometheus.io/scrape and prometheus.io/port: 9090 annotations")

    # Config: the ConfigMap exists and fits the pod spec.
    mounts = {m["name"]: m["mountPath"] for m in s.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cm_name = volumes.get("config", {}).get("configMap", {}).get("name")
    cms = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    if mounts.get("config") != "/etc/sluice" or cm_name not in cms:
        problem(f"{wpath}: config volume must mount ConfigMap {cm_name!r} (in this build) at /etc/sluice")
        return
    cfg = tomllib.loads(cms[cm_name]["data"]["sluice.toml"])
    grace = parse_duration_s(cfg.get("server", {}).get("shutdown_grace", "20s"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if not tgps > grace:
        problem(f"{wpath}: terminationGracePeriodSeconds {tgps} must exceed shutdown_grace {grace}s")
    if cfg.get("upstream", {}).get("url") != "http://127.0.0.1:3000":
        problem(f"{name}: config upstream must be the app container, http://127.0.0.1:3000")
    spool_dir = cfg.get("spool", {}).get("dir")
    if mounts.get("spool") != spool_dir:
        problem(f"{wpath}: spool volume must be mounted at spool.dir {spool_dir}")
    quota = parse_size(cfg.get("spool", {}).get("max_bytes", "10GiB"))
    if w["kind"] == "StatefulSet":
        claims = {c["metadata"]["name"]: c for c in w["spec"].get("volumeClaimTemplates", [])}
        if "spool" not in claims:
            problem(f"{wpath}: StatefulSet needs a volumeClaimTemplate named spool")
        else:
            size = parse_size(claims["spool"]["spec"]["resources"]["requests"]["storage"])
            if not size > quota:
                problem(f"{wpath}: spool claim {size} must exceed spool.max_bytes {quota}")
    else:
        ed = volumes.get("spool", {}).get("emptyDir")
        if ed is None:
            problem(f"{wpath}: Deployment spool must be an emptyDir")
        elif not parse_size(ed.get("sizeLimit", "0")) > quota:
            problem(f"{wpath}: emptyDir sizeLimit must exceed spool.max_bytes {quota}")

    # Service targets sluice's data port.
    for spath, svc in by_kind.get("Service", []):
        if not selects(svc["spec"].get("selector")):
            problem(f"{spath}: Service {svc['metadata']['name']} does not select the pods")
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") not in (8080, "http"):
                problem(f"{spath}: Service port {p.get('name')} must target sluice's 8080")

    # PodMonitor.
    pms = by_kind.get("PodMonitor", [])
    if len(pms) != 1:
        problem(f"{name}: expected one PodMonitor, found {len(pms)}")
    for ppath, pm in pms:
        if pm.get("apiVersion") != "monitoring.coreos.com/v1":
            problem(f"{ppath}: PodMonitor apiVersion must be monitoring.coreos.com/v1")
        if not pm.get("metadata", {}).get("name"):
            problem(f"{ppath}: PodMonitor needs metadata.name")
        spec = pm.get("spec", {})
        unknown = set(spec) - {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                               "podTargetLabels", "sampleLimit", "targetLimit", "attachMetadata"}
        if unknown:
            problem(f"{ppath}: unknown PodMonitor spec fields {sorted(unknown)}")
        if not selects(spec.get("selector", {}).get("matchLabels")):
            problem(f"{ppath}: PodMonitor selector does not select the pods")
        eps = spec.get("podMetricsEndpoints") or []
        if not eps:
            problem(f"{ppath}: PodMonitor needs podMetricsEndpoints")
        for ep in eps:
            unknown = set(ep) - PODMONITOR_ENDPOINT_FIELDS
            if unknown:
                problem(f"{ppath}: unknown podMetricsEndpoints fields {sorted(unknown)}")
            port = ep.get("port", ep.get("portNumber", ep.get("targetPort")))
            if ports.get(port, port) != 9090:
                problem(f"{ppath}: PodMonitor endpoint must scrape sluice's admin port 9090, not {port!r}")
            if ep.get("path", "/metrics") != "/metrics":
                problem(f"{ppath}: PodMonitor path must be /metrics")


def metric_names(text):
    return set(re.findall(r"\bsluice_[a-z0-9_]*[a-z0-9]\b", text))


def known(name, readme_metrics):
    if name in readme_metrics:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in readme_metrics:
            return True
    return False


def main():
    root = os.path.abspath(sys.argv[1])
    kube = os.path.join(root, "deploy", "kubernetes")
    if "--kube-root" in sys.argv:
        kube = os.path.abspath(sys.argv[sys.argv.index("--kube-root") + 1])

    readme = open(os.path.join(root, "README.md")).read()
    m = re.search(r"^## Metrics\n(.*?)(?=^## )", readme, re.S | re.M)
    if not m:
        problem("README.md: no '## Metrics' section")
        readme_metrics = set()
    else:
        readme_metrics = set(re.findall(r"`(sluice_[a-z0-9_]+)`", m.group(1)))
        if len(readme_metrics) < 10:
            problem(f"README.md: metric table looks too short: {sorted(readme_metrics)}")

    # Kustomizations: top level, and every directory that has one.
    seen_files = set()
    kdirs = sorted(d for d, _, fs in os.walk(kube) if "kustomization.yaml" in fs)
    if kube not in kdirs:
        problem(f"{kube}: no kustomization.yaml")
    for kdir in kdirs:
        objects = build(kdir, seen_files)
        # Builds that contain a workload are deployable shapes: check them whole.
        if any(d.get("kind") in ("StatefulSet", "Deployment") for _, d in objects):
            check_build(os.path.relpath(kdir, root) or ".", objects, readme_metrics)
    for d, _, fs in os.walk(kube):
        for f in fs:
            p = os.path.join(d, f)
            if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and p not in seen_files:
                problem(f"{p}: not listed in any kustomization.yaml")

    # Grafana.
    gpath = os.path.join(root, "deploy", "grafana", "sluice.json")
    try:
        dash = json.load(open(gpath))
    except ValueError as e:
        problem(f"{gpath}: invalid JSON: {e}")
        dash = None
    if dash is not None:
        variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
        if variables.get("datasource", {}).get("type") != "datasource":
            problem(f"{gpath}: needs a datasource variable named 'datasource'")
        exprs = []
        for p in dash.get("panels", []):
            if p.get("type") == "row":
                continue
            if p.get("datasource", {}).get("uid") != "${datasource}":
                problem(f"{gpath}: panel {p.get('title')!r} does not use the datasource variable")
            for t in p.get("targets", []):
                exprs.append(t.get("expr", ""))
        if not exprs:
            problem(f"{gpath}: no queries")
        for name in sorted(metric_names("\n".join(exprs))):
            if not known(name, readme_metrics):
                problem(f"{gpath}: metric {name} is not in README.md's metric table")

    # Alert rules: metric names and runbook anchors.
    apath = os.path.join(root, "deploy", "prometheus", "alerts.yaml")
    ops = open(os.path.join(root, "docs", "operations.md")).read()
    anchors = set()
    for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", ops, re.M):
        a = re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
        anchors.add(a)
    rules = [r for g in yaml.safe_load(open(apath))["groups"] for r in g["rules"]]
    for r in rules:
        for name in metric_names(r["expr"]):
            if not known(name, readme_metrics):
                problem(f"{apath}: {r.get('alert')}: metric {name} is not in README.md's metric table")
        if "alert" in r:
            url = r.get("annotations", {}).get("runbook_url", "")
            anchor = url.partition("#")[2]
            if not url.split("#")[0].endswith("docs/operations.md") or anchor not in anchors:
                problem(f"{apath}: {r['alert']}: runbook_url {url!r} has no matching heading in docs/operations.md")
            for k in ("summary", "description"):
                if not r.get("annotations", {}).get(k):
                    problem(f"{apath}: {r['alert']}: missing annotation {k}")

    # Dockerfile: what the build copies from the context exists and is not
    # excluded by .dockerignore; the runtime contract is there.
    dpath = os.path.join(root, "deploy", "Dockerfile")
    dockerfile = open(dpath).read()
    ignored = [l.strip().rstrip("/") for l in open(os.path.join(root, ".dockerignore"))
               if l.strip() and not l.startswith("#")]
    for srcs in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+\s*$", dockerfile, re.M):
        for src in srcs.split():
            if not os.path.exists(os.path.join(root, src)):
                problem(f"{dpath}: COPY source {src} does not exist")
            if src.rstrip("/").split("/")[0] in ignored:
                problem(f"{dpath}: COPY source {src} is excluded by .dockerignore")
    for needle in ("FROM rust:1-bookworm AS build", "cargo build --release --locked",
                   "USER 65532:65532", "EXPOSE 8080 9090", 'VOLUME ["/var/lib/sluice"]',
                   '"/usr/local/bin/sluice"', 'CMD ["run", "-c", "/etc/sluice/sluice.toml"]',
                   "ca-certificates"):
        if needle not in dockerfile:
            problem(f"{dpath}: expected {needle!r}")

    for p in problems:
        print(f"FAIL {p}")
    if problems:
        sys.exit(1)
    print(f"ok: kustomizations {len(kdirs)}, manifests {len(seen_files)}, "
          f"README metrics {len(readme_metrics)}, alerts {sum('alert' in r for r in rules)}")


if __name__ == "__main__":
    main()
