#!/usr/bin/env python3
"""Turns compare_all.sh's raw results into the BENCHMARKS.md section, the
plots and the targets summary. Every figure comes from the files of the
run in RES; nothing is typed in.

Usage: report.py RES OUT_DIR BENCHMARKS.md|-
"""
import math
import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict

RES, OUT, BENCH = sys.argv[1:4]
os.makedirs(OUT, exist_ok=True)
BEGIN = "<!-- compare_all:begin (written by benches/load/compare_all.sh; edits here are lost on the next run) -->"
END = "<!-- compare_all:end -->"
BEGIN_RE = re.compile(r"<!-- compare_all:begin[^>]*-->")

meta = {}
for line in open(os.path.join(RES, "meta")):
    k, _, v = line.rstrip("\n").partition("=")
    meta[k] = v
durations = {}
if os.path.exists(os.path.join(RES, "durations")):
    for line in open(os.path.join(RES, "durations")):
        k, v = line.split()
        durations[k] = int(v)
SCEN = meta["scenarios"].split()
QUICK = meta["quick"] == "1"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    """Nearest-rank percentile of a list."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    if x != x:
        return "–"
    if x >= 1000:
        return f"{x / 1000:.2f} s"
    if x >= 10:
        return f"{x:.0f} ms"
    return f"{x:.2f} ms"


def fmt_x(x):
    return "–" if x != x else f"{x:.2f}×"


md = []  # the section's lines
summary = []  # the targets, for stdout too


# ---------------------------------------------------------------- scenario 1
def parse_wrk(path):
    t = open(path).read()
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))}
    for p in ("50", "99"):
        m = re.search(r"^\s+" + p + r"%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        out["p" + p] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    m = re.search(r"(\d+) requests in", t)
    out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    out["sockerr"] = sum(int(g) for g in m.groups()) if m else 0
    return out


S1_SYSTEMS = [
    ("direct", "backend direct (nginx `return 200`)"),
    ("nginx_on", "nginx, access log on"),
    ("nginx_off", "nginx, access log off"),
    ("haproxy_on", "HAProxy, httplog on"),
    ("haproxy_off", "HAProxy, no log"),
    ("sluice_on", "sluice, access log on (default)"),
    ("sluice_off", "sluice, `[log] access = false`"),
]


def s1_runs():
    runs = defaultdict(dict)  # (w, sys) -> {round: parsed}
    d = os.path.join(RES, "s1")
    for name in os.listdir(d):
        m = re.match(r"w(\d)\.(\w+)\.r(\d+)\.txt$", name)
        if m:
            runs[(int(m.group(1)), m.group(2))][int(m.group(3))] = parse_wrk(os.path.join(d, name))
    return runs


def ratio_med(runs, w, a, b, key):
    """Median over rounds of a's figure / b's figure in the same round."""
    ra, rb = runs.get((w, a), {}), runs.get((w, b), {})
    xs = [ra[r][key] / rb[r][key] for r in ra if r in rb and rb[r][key]]
    return med(xs), xs


def scenario1():
    runs = s1_runs()
    rounds = int(meta["rounds"])
    conns = meta["conns"]
    dur = meta["dur"]
    md.append("### 1. Pass-through: throughput and latency")
    md.append("")
    md.append(
        f"wrk `-tW -c{conns} -d{dur} --latency` (W = the proxy's workers: nginx `worker_processes`, "
        f"HAProxy `nbthread`, sluice `server.workers`) against a separate nginx `return 200` backend "
        f"(2 workers, `keepalive_requests 1000000`, no log). nginx proxies with `proxy_pass` and an "
        f"upstream `keepalive 128` pool; HAProxy 2.6 in `mode http` with its default server-side "
        f"keep-alive; sluice on one route whose limit never triggers. Logging on: nginx's default "
        f"`access_log` (combined format, to a file), HAProxy `option httplog` to `log stdout` "
        f"(redirected to a file), sluice's default access log (text, stderr redirected to a file). "
        f"Logging off: `access_log off`, no `log` line, `[log] access = false`. "
        f"{rounds} rounds of 14 runs (7 targets × 1 and 2 workers), the runs compared next to each "
        f"other (HAProxy on, nginx on, sluice on, sluice off, nginx off, HAProxy off, direct) and every "
        f"other round in reverse, so drift hits every system alike. req/s, p50 and p99 are medians "
        f"over the rounds; the ratios are medians of the per-round ratios to nginx with the same "
        f"logging (in brackets: the ratio of the best rounds, which a slowdown from outside the run "
        f"affects less)."
    )
    md.append("")
    for w in (1, 2):
        md.append(f"**{w} worker{'s' if w > 1 else ''}** (wrk `-t{w}`)")
        md.append("")
        md.append("| target | req/s | per round | p50 | p99 | req/s ÷ nginx (best ÷ best) | p99 ÷ nginx |")
        md.append("|---|---|---|---|---|---|---|")
        for sys_, label in S1_SYSTEMS:
            rr = runs.get((w, sys_))
            if not rr:
                continue
            vals = [rr[r] for r in sorted(rr)]
            rps = med([v["rps"] for v in vals])
            per = " / ".join(f"{v['rps'] / 1000:.1f}k" for v in vals)
            errs = sum(v["non2xx"] + v["sockerr"] for v in vals)
            if errs:
                per += f" ({errs} errors)"
            ref = "nginx_on" if sys_.endswith("_on") else "nginx_off"
            if sys_ == "direct" or sys_.startswith("nginx"):
                tr, pr = "–", "–"
            else:
                best = max(v["rps"] for v in vals) / max(v["rps"] for v in runs[(w, ref)].values())
                tr = f"{fmt_x(ratio_med(runs, w, sys_, ref, 'rps')[0])} ({fmt_x(best)})"
                pr = fmt_x(ratio_med(runs, w, sys_, ref, "p99")[0])
            name = f"**{label}**" if sys_.startswith("sluice") else label
            md.append(
                f"| {name} | {fmt_int(rps)} | {per} | {fmt_ms(med([v['p50'] for v in vals]))} "
                f"| {fmt_ms(med([v['p99'] for v in vals]))} | {tr} | {pr} |"
            )
        md.append("")

    # The cost of each proxy's log, and what its log holds.
    loglines = {}
    if os.path.exists(os.path.join(RES, "s1", "loglines")):
        for line in open(os.path.join(RES, "s1", "loglines")):
            k, w, n = line.split()
            loglines[(k, int(w))] = int(float(n))
    md.append("**What logging costs** (same run: 1 − median over rounds of on ÷ off):")
    md.append("")
    md.append("| proxy | 1 worker | 2 workers | log lines written ÷ requests answered (1 / 2 workers) |")
    md.append("|---|---|---|---|")
    for p, label in (("nginx", "nginx"), ("haproxy", "HAProxy"), ("sluice", "sluice")):
        cells = []
        fill = []
        for w in (1, 2):
            r, _ = ratio_med(runs, w, p + "_on", p + "_off", "rps")
            cells.append(f"{(1 - r) * 100:.1f}%")
            served = sum(v["requests"] for v in runs.get((w, p + "_on"), {}).values())
            lines = loglines.get((p + "_on", w))
            if lines is not None and served:
                fill.append(f"{lines:,} ÷ {served:,} = {lines / served:.2f}")
        extra = ""
        if p == "sluice":
            drops = [loglines.get(("sluice_dropped", w)) for w in (1, 2)]
            extra = f"; `sluice_log_dropped_total` {drops[0]} / {drops[1]}"
        md.append(f"| {label} | {cells[0]} | {cells[1]} | {' · '.join(fill)}{extra} |")
    md.append("")
    md.append(
        "(wrk counts the requests it saw answered within its run; a proxy may log a few more, "
        "answered after wrk stopped reading, and the readiness checks.)"
    )
    md.append("")
    samples = []
    for p in ("nginx", "haproxy", "sluice"):
        f = os.path.join(RES, "s1", "sample." + p)
        if os.path.exists(f) and os.path.getsize(f):
            samples.append(f"    {p}:  " + open(f).readline().rstrip("\n")[:200])
    if samples:
        md.append("One access line of each (from this run):")
        md.append("")
        md.extend(samples)
        md.append("")

    # Targets from this scenario.
    for w in (1, 2):
        for log, what in (("on", "each proxy's default logging"), ("off", "logging off on both")):
            r, xs = ratio_med(runs, w, "sluice_" + log, "nginx_" + log, "rps")
            summary.append(
                ("throughput", f"sluice/nginx throughput ≥ 1.0× at {w} worker{'s' if w > 1 else ''}, {what}",
                 r >= 1.0, f"{r:.2f}× (rounds: {', '.join(f'{x:.2f}' for x in xs)})")
            )
    for w in (1, 2):
        for log, what in (("on", "default logging"), ("off", "logging off")):
            r, xs = ratio_med(runs, w, "sluice_" + log, "nginx_" + log, "p99")
            sl = med([v["p99"] for v in runs[(w, "sluice_" + log)].values()])
            ng = med([v["p99"] for v in runs[(w, "nginx_" + log)].values()])
            summary.append(
                ("p99", f"sluice p99 ≤ nginx's at {w} worker{'s' if w > 1 else ''}, {what}", r <= 1.0,
                 f"{fmt_ms(sl)} vs {fmt_ms(ng)}, ratio {r:.2f}× (rounds: {', '.join(f'{x:.2f}' for x in xs)})")
            )
    for w in (1, 2):
        r, xs = ratio_med(runs, w, "sluice_on", "sluice_off", "rps")
        summary.append(
            ("log", f"sluice's default access log costs ≤ 5% at {w} worker{'s' if w > 1 else ''}",
             1 - r <= 0.05,
             f"{(1 - r) * 100:.1f}% (on ÷ off per round: {', '.join(f'{x:.2f}' for x in xs)})")
        )


# ---------------------------------------------------------------- callgrind
ANN_RE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def annotate(path):
    """Self cost per function from `callgrind_annotate --auto=no`."""
    out = {}
    if not os.path.exists(path):
        return out
    in_fns = False
    for line in open(path, errors="replace"):
        if "file:function" in line:
            in_fns = True
            continue
        if not in_fns or line.startswith("-"):
            continue
        if not line.strip():
            if out:
                break
            continue
        m = ANN_RE.match(line)
        if m:
            fn = re.sub(r"\s+\[[^\]]*\]$", "", m.group(2))
            out[fn] = out.get(fn, 0) + int(m.group(1).replace(",", ""))
    return out


def short_fn(fn):
    fn = fn.split(":", 1)[1] if ":" in fn and not fn.startswith("<") else fn
    fn = re.sub(r"::h[0-9a-f]{16}$", "", fn)
    # Generic arguments go (HeaderMap<T> -> HeaderMap<…>); "<A as B>::f" stays.
    while True:
        shorter = re.sub(r"(?<=[A-Za-z0-9_])<[^<>]*>", "<…>", fn)
        if shorter == fn:
            break
        fn = shorter
    fn = re.sub(r"(?<=[A-Za-z0-9_])<…>", "", fn) if len(fn) > 110 else fn
    return fn if len(fn) <= 110 else fn[:107] + "…"


def scenario_cg():
    lo, hi = int(meta["cg_lo"]), int(meta["cg_hi"])
    res = defaultdict(dict)  # (sys, log, run) -> {n: instr}
    path = os.path.join(RES, "cg", "results")
    if not os.path.exists(path):
        return
    calib = []
    for line in open(path):
        sys_, log, run, n, instr, cal = line.split()
        res[(sys_, log, int(run))][int(n)] = int(instr) - int(cal)
        if int(cal):
            calib.append(int(cal))
    per = defaultdict(list)
    for (sys_, log, run), d in sorted(res.items()):
        if lo in d and hi in d:
            per[(sys_, log)].append((d[hi] - d[lo]) / (hi - lo))
    md.append("### 1b. Instructions per proxied request (callgrind)")
    md.append("")
    md.append(
        f"Each proxy with 1 worker under `valgrind --tool=callgrind` (nginx with `master_process off; "
        f"daemon off;`, the same `proxy_pass` config as above), in front of the same backend, loaded "
        f"with `ab -k -c 8 -n N`; instructions per request = (total at N = {hi:,} − total at N = "
        f"{lo:,}) ÷ {hi - lo:,}, so start-up and shutdown cancel out. Median of the pairs measured "
        f"(runs alternate nginx, sluice). Callgrind counts instructions exactly, whatever else the "
        f"machine is doing; it counts every thread (sluice's log writer included)."
    )
    if calib:
        md.append("")
        md.append(
            f"Left out of sluice's totals: quanta's clock calibration (`quanta::Calibration::calibrate`, "
            f"governor's clock), which runs once at start-up for as long as its wall-clock criteria take; "
            f"under valgrind it took {min(calib) / 1e6:.1f}–{max(calib) / 1e6:.1f} M instructions in these "
            f"runs, a spread that would not cancel between the two runs of a pair "
            f"(±{(max(calib) - min(calib)) / (hi - lo):,.0f} instructions per request)."
        )
    md.append("")
    md.append("| logging | nginx | sluice | sluice ÷ nginx | pairs (nginx; sluice) |")
    md.append("|---|---|---|---|---|")
    for log, label in (("off", "off"), ("on", "on (each one's default)")):
        n, s = per.get(("nginx", log)), per.get(("sluice", log))
        if not n or not s:
            continue
        md.append(
            f"| {label} | {fmt_int(med(n))} | **{fmt_int(med(s))}** | {med(s) / med(n):.2f}× "
            f"| {' / '.join(fmt_int(x) for x in n)}; {' / '.join(fmt_int(x) for x in s)} |"
        )
    md.append("")
    if per.get(("nginx", "off")) and per.get(("sluice", "off")):
        n, s = med(per[("nginx", "off")]), med(per[("sluice", "off")])
        summary.append(("instructions", "sluice instructions per request ≤ nginx's (callgrind, logging off)",
                        s <= n, f"{s:,.0f} vs {n:,.0f} ({s / n:.2f}×)"))
    if per.get(("nginx", "on")) and per.get(("sluice", "on")):
        n, s = med(per[("nginx", "on")]), med(per[("sluice", "on")])
        summary.append(("instructions", "sluice instructions per request ≤ nginx's (callgrind, default logging)",
                        s <= n, f"{s:,.0f} vs {n:,.0f} ({s / n:.2f}×)"))
    # Where they go: per-function difference between the two runs of pair 1.
    for sys_ in ("sluice", "nginx"):
        a = annotate(os.path.join(RES, "cg", f"{sys_}.annotate.{lo}.txt"))
        b = annotate(os.path.join(RES, "cg", f"{sys_}.annotate.{hi}.txt"))
        if not a or not b:
            continue
        per_fn = defaultdict(float)  # inlined parts from other files merged into their function
        for k in b:
            if "Calibration::calibrate" not in k:
                per_fn[short_fn(k)] += (b.get(k, 0) - a.get(k, 0)) / (hi - lo)
        diff = sorted(((x, k) for k, x in per_fn.items()), reverse=True)
        total = sum(x for x, _ in diff if x > 0)
        if sum(1 for _, k in diff[:15] if k.startswith("0x")) > 5:
            md.append(f"({sys_}'s binary has no symbols for most of its functions: no breakdown.)")
            md.append("")
            continue
        md.append(f"<details><summary>Where {sys_}'s instructions per request go: self cost per function, "
                  f"(at N = {hi:,} − at N = {lo:,}) ÷ {hi - lo:,}, pair 1, logging off; the top 20 of "
                  f"{total:,.0f}</summary>")
        md.append("")
        md.append("| instructions / request | function |")
        md.append("|---|---|")
        for x, k in diff[:20]:
            md.append(f"| {x:,.0f} | `{k}` |")
        md.append("")
        md.append("</details>")
        md.append("")


# ---------------------------------------------------------------- scenarios 2, 3
SYS_LABEL = {
    "direct": "no protection (direct)",
    "nginx": "nginx `limit_req` rate=100r/s burst=200",
    "haproxy": "HAProxy `maxconn 10` + queue",
    "sluice": "sluice spool route",
}
COLORS = {"direct": "#999999", "nginx": "#1f77b4", "haproxy": "#ff7f0e", "sluice": "#2ca02c"}


def load_burst(sc, sys_):
    cpath = os.path.join(RES, f"s{sc}", f"{sys_}.client")
    bpath = os.path.join(RES, f"s{sc}", f"{sys_}.backend")
    if not os.path.exists(cpath):
        return None
    t0 = None
    client = []
    for line in open(cpath):
        if line.startswith("# t0"):
            t0 = float(line.split()[2])
            continue
        i, sent, done, status = line.split()
        client.append((int(i), float(sent), float(done), int(status) if status.isdigit() else status))
    backend = []
    if os.path.exists(bpath):
        for line in open(bpath):
            parts = line.split()
            if len(parts) == 4 and parts[0].isdigit():
                backend.append((int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])))
    kill = None
    kpath = os.path.join(RES, f"s{sc}", f"{sys_}.kill")
    if os.path.exists(kpath):
        tk, tr = map(float, open(kpath).read().split())
        kill = (tk - t0, tr - t0)
    return {"t0": t0, "client": client, "backend": backend, "kill": kill}


def burst_stats(d):
    t0, client, backend = d["t0"], d["client"], d["backend"]
    st = Counter(c[3] for c in client)
    answered = [(c[2] - c[1]) * 1000 for c in client if isinstance(c[3], int)]
    ok = [(c[2] - c[1]) * 1000 for c in client if isinstance(c[3], int) and 200 <= c[3] < 300]
    accepted = {c[0] for c in client if isinstance(c[3], int) and 200 <= c[3] < 300}
    arrivals = sorted(b[1] for b in backend)
    peak, j = 0, 0
    for i in range(len(arrivals)):
        while arrivals[i] - arrivals[j] >= 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    ev = sorted([(b[1], 1) for b in backend] + [(b[3], -1) for b in backend])
    inside, most = 0, 0
    for _, e in ev:
        inside += e
        most = max(most, inside)
    first_arrival = {}
    done_count = Counter()
    for b in backend:
        done_count[b[0]] += 1
        first_arrival[b[0]] = min(first_arrival.get(b[0], b[1]), b[1])
    lost = sorted(accepted - set(first_arrival))
    reached = [first_arrival[i] - t0 for i in accepted if i in first_arrival]
    unanswered = [i for i in done_count if i not in accepted]
    dups = sum(n - 1 for n in done_count.values() if n > 1)
    return {
        "status": st, "answered": answered, "ok": ok, "accepted": accepted, "peak": peak,
        "inside": most, "lost": lost, "all_reached": max(reached) if reached else float("nan"),
        "processed": len(done_count), "unanswered": unanswered, "dups": dups,
        "client_end": max(c[2] for c in client) - t0 if client else float("nan"),
        "failed": [c for c in client if not (isinstance(c[3], int) and 200 <= c[3] < 300)],
    }


def status_str(st):
    parts = []
    for k in sorted(st, key=lambda k: (not isinstance(k, int), str(k))):
        parts.append(f"{k}: {st[k]:,}")
    return ", ".join(parts)


def errors_note(sc, sys_):
    p = os.path.join(RES, f"s{sc}", f"{sys_}.errors")
    if os.path.exists(p) and os.path.getsize(p):
        return [line.rstrip("\n") for line in open(p)][:5]
    return []


def scenario2():
    n, c = int(meta["burst_n"]), int(meta["burst_c"])
    cap = int(meta["backend_workers"]) * 1000 / float(meta["backend_service_ms"])
    data = {s: load_burst(2, s) for s in ("direct", "nginx", "haproxy", "sluice")}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return
    md.append("### 2. Burst absorption")
    md.append("")
    md.append(
        f"A backend of fixed capacity, {cap:.0f} requests/s: {meta['backend_workers']} workers × "
        f"{float(meta['backend_service_ms']):.0f} ms (`benches/load/compare/burst_backend.py`; a request "
        f"that finds every worker busy waits in arrival order, as in an accept queue; it logs each "
        f"request's arrival, start and end). {n:,} POSTs (small JSON bodies, each with its own "
        f"`X-Bench-Id`) from {c} concurrent keep-alive clients (`benches/load/compare/burst_client.py`), "
        f"each sending its next request when the last is answered, no retries, {meta['burst_timeout']} s "
        f"timeout. Proxies as shipped (nginx `worker_processes auto`, HAProxy's default threads, "
        f"sluice's default workers) with the configs in `benches/results/configs/s2-*`: nginx "
        f"`limit_req` at the backend's rate with a 2 s burst queue (`burst=200`, delayed, not "
        f"`nodelay`); HAProxy `maxconn 10` on the server with `timeout queue 30s`; sluice with "
        f"`upstream.capacity = \"100/s\"`, `max_concurrency = 10`, a route of `rate = \"100/s\"`, "
        f"`on_limit = \"spool\"`, 16 partitions, `fsync = \"always\"`."
    )
    md.append("")
    md.append("| | backend peak (any 1 s) | most requests inside the backend (queued + in service) "
              "| client answers | time to an answer p50 / p99 | 2xx answer p50 / p99 "
              "| last client answer | every accepted request reached the backend |")
    md.append("|---|---|---|---|---|---|---|---|")
    stats = {}
    for s, d in data.items():
        b = stats[s] = burst_stats(d)
        reach = f"{b['all_reached']:.1f} s"
        if b["lost"]:
            reach += f" ({len(b['lost'])} never did)"
        md.append(
            f"| {SYS_LABEL[s]} | {b['peak']:,} req/s | {b['inside']:,} | {status_str(b['status'])} "
            f"| {fmt_ms(pct(b['answered'], 50))} / {fmt_ms(pct(b['answered'], 99))} "
            f"| {fmt_ms(pct(b['ok'], 50))} / {fmt_ms(pct(b['ok'], 99))} "
            f"| {b['client_end']:.1f} s | {reach} |"
        )
    md.append("")
    notes = []
    for s in data:
        b = stats[s]
        if b["dups"]:
            notes.append(f"{s}: the backend processed {b['dups']} requests twice.")
        if b["lost"]:
            notes.append(f"{s}: {len(b['lost'])} accepted requests never reached the backend "
                         f"(ids {', '.join(map(str, b['lost'][:10]))}{' …' if len(b['lost']) > 10 else ''}).")
        for e in errors_note(2, s):
            notes.append(f"{s} logged: `{e[:160]}`")
    if notes:
        md.extend(f"- {x}" for x in notes)
        md.append("")
    md.append("![requests reaching the backend per second, per system](benches/results/burst_backend.png)")
    md.append("")
    md.append("![time to an answer, per system](benches/results/burst_latency.png)")
    md.append("")
    plot_burst(data, stats, cap)


def scenario3():
    data = {s: load_burst(3, s) for s in ("nginx", "haproxy", "sluice")}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return
    md.append("### 3. The same burst, the proxy SIGKILLed and restarted")
    md.append("")
    md.append(
        f"As scenario 2, but {meta['kill_after']} s after the clients start the proxy (nginx's master and "
        f"workers, HAProxy, sluice) gets SIGKILL and is started again at once on the same config "
        f"(sluice on the same spool directory). A client that gets no answer waits 0.5 s and goes on "
        f"with its next request. *Accepted*: the client got a 2xx (sluice: 200 forwarded or 202 "
        f"spooled). *Failed*: any other answer or none. *Processed but unanswered*: the backend "
        f"completed it, the client never got a 2xx. *Accepted then lost*: the client got a 2xx and the "
        f"backend never saw it (counted after the backend had been idle for 2 s, or "
        f"{meta['drain_max']} s)."
    )
    md.append("")
    md.append("| | killed at / serving again at | accepted | failed (how) | processed but unanswered "
              "| accepted then lost | processed twice | backend peak (any 1 s) |")
    md.append("|---|---|---|---|---|---|---|---|")
    stats = {}
    for s, d in data.items():
        b = stats[s] = burst_stats(d)
        how = Counter(c[3] for c in b["failed"])
        k = d["kill"]
        md.append(
            f"| {SYS_LABEL[s]} | {k[0]:.2f} s / {k[1]:.2f} s | {len(b['accepted']):,} "
            f"| {len(b['failed']):,} ({status_str(how) or '–'}) | {len(b['unanswered']):,} "
            f"| **{len(b['lost']):,}** | {b['dups']:,} | {b['peak']:,} req/s |"
        )
    md.append("")
    notes = []
    for s in data:
        mp = os.path.join(RES, "s3", f"{s}.metrics")
        if s == "sluice" and stats[s]["dups"]:
            notes.append(
                f"sluice's replay is at least once: {stats[s]['dups']} records that the backend had "
                f"already processed, but whose delivery was not yet committed when sluice was killed "
                f"(the committed offset moves over contiguous finished records), were sent again after "
                f"the restart. A backend that must not see a write twice dedupes on `Sluice-Id` / "
                f"`Idempotency-Key`.")
        if s == "sluice" and os.path.exists(mp):
            rec = [line.strip() for line in open(mp) if line.startswith("sluice_spool_recovered_total")]
            if rec:
                notes.append("sluice after the restart: " + ", ".join(f"`{r}`" for r in rec))
        for e in errors_note(3, s):
            notes.append(f"{s} logged: `{e[:160]}`")
    if notes:
        md.extend(f"- {x}" for x in notes)
        md.append("")
    md.append("![requests reaching the backend per second, with the kill](benches/results/kill_backend.png)")
    md.append("")
    plot_kill(data, stats, int(meta["backend_workers"]) * 1000 / float(meta["backend_service_ms"]))
    for s, b in stats.items():
        if s == "sluice":
            summary.append(("durability", "sluice: nothing accepted is lost across a SIGKILL (scenario 3)",
                            not b["lost"], f"{len(b['accepted']):,} accepted, {len(b['lost'])} lost"))


# ---------------------------------------------------------------- scenario 4
def scenario4():
    rounds = int(meta["s4_rounds"])
    rows = []
    for mode in ("always", "interval", "never"):
        vals = []
        for r in range(1, rounds + 1):
            p = os.path.join(RES, "s4", f"{mode}.r{r}.txt")
            if not os.path.exists(p):
                continue
            w = parse_wrk(p)
            counts = {}
            for line in open(os.path.join(RES, "s4", f"{mode}.r{r}.metrics")):
                label, spooled, fsyncs = line.split()
                counts[label] = (float(spooled), float(fsyncs))
            w["spooled"] = counts["after"][0] - counts["before"][0]
            w["fsyncs"] = counts["after"][1] - counts["before"][1]
            vals.append(w)
        if vals:
            rows.append((mode, vals))
    if not rows:
        return
    md.append("### 4. Durable ingest: 202s per fsync mode")
    md.append("")
    md.append(
        f"wrk `-t2 -c64 -d{meta['s4_dur']} --latency -s post.lua` (POST, 1 KiB body) against sluice with "
        f"a route whose limit (`rate = \"1/min\"`, `burst = 1`) spools every request, replay held back "
        f"by `upstream.capacity = \"1/s\"`, default access log on; one sluice per `spool.fsync` mode, "
        f"{rounds} rounds in rotated order. 202/s is wrk's rate; 202s counted by sluice (`sluice_requests_total"
        f"{{decision=\"spooled\"}}`), fdatasync rounds by `sluice_spool_fsync_duration_seconds_count`. "
        f"The spool lives on this machine's disk (see Machine)."
    )
    md.append("")
    md.append("| `spool.fsync` | 202/s | per round | p50 | p99 | answers that were not 202 | 202s per fdatasync |")
    md.append("|---|---|---|---|---|---|---|")
    for mode, vals in rows:
        # wrk's rate; every answer it counted was a 202 but those sluice did not spool.
        rate = [v["rps"] for v in vals]
        other = sum(max(0, v["requests"] - v["spooled"]) + v["non2xx"] + v["sockerr"] for v in vals)
        fs = sum(v["fsyncs"] for v in vals)
        per_fs = f"{sum(v['spooled'] for v in vals) / fs:.1f}" if fs else "– (none)"
        md.append(
            f"| `{mode}` | {fmt_int(med(rate))} | {' / '.join(f'{x / 1000:.1f}k' for x in rate)} "
            f"| {fmt_ms(med([v['p50'] for v in vals]))} | {fmt_ms(med([v['p99'] for v in vals]))} "
            f"| {other:,} of {sum(v['requests'] for v in vals):,} | {per_fs} |"
        )
    md.append("")
    notes = []
    for mode, _ in rows:
        for e in errors_note(4, mode):
            notes.append(f"fsync={mode} logged: `{e[:160]}`")
    if notes:
        md.extend(f"- {x}" for x in notes)
        md.append("")


# ---------------------------------------------------------------- plots
PLOTDIR = os.path.join(RES, "plot")
os.makedirs(PLOTDIR, exist_ok=True)


def write_bins(path, d, width=0.5, until=None):
    t0 = d["t0"]
    arr = [b[1] - t0 for b in d["backend"]]
    end = max(arr + [until or 0]) + width
    nb = int(end / width) + 1
    bins = [0] * nb
    for a in arr:
        if a >= 0:
            bins[int(a / width)] += 1
    with open(path, "w") as f:
        for i, n in enumerate(bins):
            f.write(f"{i * width + width / 2:.3f} {n / width:.1f}\n")
    return end


def gnuplot(script, name):
    p = os.path.join(PLOTDIR, name + ".gp")
    open(p, "w").write(script)
    r = subprocess.run(["gnuplot", p], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"gnuplot {name}: {r.stderr}", file=sys.stderr)


def plot_burst(data, stats, cap):
    ends = []
    for s, d in data.items():
        ends.append(write_bins(os.path.join(PLOTDIR, f"s2.{s}.bins"), d))
        lat = sorted(stats[s]["answered"])
        ok = sorted(stats[s]["ok"])
        n = len(d["client"])
        for kind, xs in (("any", lat), ("ok", ok)):
            with open(os.path.join(PLOTDIR, f"s2.{s}.cdf.{kind}"), "w") as f:
                for i, x in enumerate(xs):
                    f.write(f"{max(x, 0.01):.3f} {(i + 1) * 100.0 / n:.3f}\n")
    xmax = max(ends) + 0.5
    ymax = max(max(st["peak"] for st in stats.values()), cap) * 1.0
    ymax = max(ymax, max(float(line.split()[1]) for s in data
                         for line in open(os.path.join(PLOTDIR, f"s2.{s}.bins")))) * 1.1
    n = len(data)
    g = [
        "set terminal pngcairo noenhanced size 1000,%d font 'DejaVu Sans,10'" % (170 * n + 60),
        f"set output '{os.path.join(OUT, 'burst_backend.png')}'",
        f"set multiplot layout {n},1 title 'Burst of {meta['burst_n']} POSTs from {meta['burst_c']} clients: "
        f"requests reaching a {cap:.0f} req/s backend (per 0.5 s, as req/s)'",
        f"set xrange [0:{xmax:.1f}]", f"set yrange [0:{ymax:.0f}]",
        "set style fill solid 0.6 noborder", "set boxwidth 0.45", "set grid ytics",
        "set ylabel 'req/s'", "set key top right",
    ]
    for i, s in enumerate(data):
        st = stats[s]
        g.append("set xlabel 'seconds since the burst began'" if i == n - 1 else "unset xlabel")
        g.append(
            f"plot '{PLOTDIR}/s2.{s}.bins' using 1:2 with boxes lc rgb '{COLORS[s]}' "
            f"title '{SYS_LABEL[s].replace('`', '')}: peak {st['peak']} req/s (1 s), up to {st['inside']} inside', "
            f"{cap} with lines dt 2 lc rgb 'black' title 'capacity'"
        )
    g.append("unset multiplot")
    gnuplot("\n".join(g) + "\n", "burst_backend")
    g = [
        "set terminal pngcairo noenhanced size 1000,420 font 'DejaVu Sans,10'",
        f"set output '{os.path.join(OUT, 'burst_latency.png')}'",
        "set multiplot layout 1,2 title 'Burst: share of the requests answered within a time (cumulative)'",
        "set logscale x", "set xrange [0.1:*]", "set yrange [0:100]", "set grid",
        "set xlabel 'time to the answer (ms, log scale)'", "set ylabel '% of requests sent'",
        "set key bottom right",
    ]
    for kind, title in (("any", "any answer (2xx, 503, ...)"), ("ok", "a 2xx answer")):
        drawn = [s for s in ("nginx", "haproxy", "direct", "sluice") if s in data]  # direct over HAProxy
        parts = [f"'{PLOTDIR}/s2.{s}.cdf.{kind}' using 1:2 with steps lw 2 {'dt 2 ' if s == 'direct' else ''}"
                 f"lc rgb '{COLORS[s]}' title '{s}'"
                 for s in drawn if os.path.getsize(os.path.join(PLOTDIR, f"s2.{s}.cdf.{kind}"))]
        g.append(f"set title '{title}'")
        g.append("plot " + ", ".join(parts) if parts else "plot 1/0 notitle")
    g.append("unset multiplot")
    gnuplot("\n".join(g) + "\n", "burst_latency")


def plot_kill(data, stats, cap):
    ends = [write_bins(os.path.join(PLOTDIR, f"s3.{s}.bins"), d) for s, d in data.items()]
    xmax = max(ends) + 0.5
    ymax = max(max(float(line.split()[1]) for line in open(os.path.join(PLOTDIR, f"s3.{s}.bins")))
               for s in data)
    ymax = max(ymax, cap) * 1.6
    n = len(data)
    g = [
        "set terminal pngcairo noenhanced size 1000,%d font 'DejaVu Sans,10'" % (170 * n + 60),
        f"set output '{os.path.join(OUT, 'kill_backend.png')}'",
        f"set multiplot layout {n},1 title 'The burst with the proxy SIGKILLed at {meta['kill_after']} s: "
        f"requests reaching the backend (per 0.5 s, as req/s)'",
        f"set xrange [0:{xmax:.1f}]", f"set yrange [0:{ymax:.0f}]",
        "set style fill solid 0.6 noborder", "set boxwidth 0.45", "set grid ytics",
        "set ylabel 'req/s'", "set key top right",
    ]
    for i, (s, d) in enumerate(data.items()):
        st = stats[s]
        g.append("set xlabel 'seconds since the burst began'" if i == n - 1 else "unset xlabel")
        g.append(f"set arrow 1 from {d['kill'][0]:.2f},0 to {d['kill'][0]:.2f},{ymax:.0f} nohead lc rgb 'red' lw 2")
        g.append(
            f"plot '{PLOTDIR}/s3.{s}.bins' using 1:2 with boxes lc rgb '{COLORS[s]}' "
            f"title '{SYS_LABEL[s].replace('`', '')}: {len(st['accepted'])} accepted, {len(st['lost'])} lost, "
            f"{len(st['unanswered'])} processed unanswered', "
            f"{cap} with lines dt 2 lc rgb 'black' title 'capacity', "
            f"NaN with lines lc rgb 'red' lw 2 title 'SIGKILL'"
        )
    g.append("unset multiplot")
    gnuplot("\n".join(g) + "\n", "kill_backend")


# ---------------------------------------------------------------- assemble
def header():
    h = []
    h.append("## sluice against nginx and HAProxy: one command (issue 12)")
    h.append("")
    h.append(
        "Command: **`benches/load/compare_all.sh`** (about 15 minutes; `--quick` for a short "
        "development run that leaves this file alone). It installs what it lacks with apt-get "
        "(Debian's nginx, haproxy, wrk, valgrind, apache2-utils, gnuplot-nox), builds sluice "
        "`--release`, runs every scenario on loopback with bounded load, and rewrites this section "
        "and the plots in `benches/results/` from the run's own output; the generated configs are "
        "in `benches/results/configs/`. Everything compared is compared within the run: the machine "
        "is shared and noisy, so absolute figures vary from run to run, ratios much less."
    )
    h.append("")
    el = int(meta["elapsed_secs"])
    parts = ", ".join(f"{k} {v} s" for k, v in durations.items())
    h.append(f"Run of {meta['date']}{' (QUICK MODE: short runs, not for comparison)' if QUICK else ''}: "
             f"{el // 60} min {el % 60} s in all (build {meta['build_secs']} s; {parts}).")
    h.append("")
    h.append("| | |")
    h.append("|---|---|")
    h.append(f"| machine | {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}, {meta['kernel']}, {meta['os']}; "
             f"load generators, backends and proxies share the CPUs |")
    h.append(f"| sluice | commit `{meta['sluice']}` (release build), {meta['rustc']} |")
    h.append(f"| nginx | {meta['nginx']} |")
    h.append(f"| HAProxy | {meta['haproxy']} |")
    h.append(f"| tools | {meta['wrk']}; {meta['ab']}; {meta['valgrind']}; {meta['gnuplot']}; {meta['python']} |")
    h.append("")
    return h


def commands():
    c = ["<details><summary>The commands, as run</summary>", ""]
    c.append("```")
    if "1" in SCEN:
        c.append("# 1. for round in 1..%s, for W in 1 2 (alternating), for each target (reversed every other round):" % meta["rounds"])
        c.append(f"wrk -tW -c{meta['conns']} -d{meta['dur']} --latency http://127.0.0.1:PORT/")
        c.append("#    proxies: nginx -p DIR -c nginx.conf; haproxy -db -f haproxy.cfg >log; sluice run -c sluice.toml 2>log")
        c.append(f"# 1b. for run in 1..{meta['cg_runs']} (logging on: 1..{meta['cg_runs_log']}), N in {meta['cg_lo']} {meta['cg_hi']}:")
        c.append("valgrind --tool=callgrind --callgrind-out-file=OUT nginx -p DIR -c nginx.conf   # master_process off")
        c.append("valgrind --tool=callgrind --callgrind-out-file=OUT sluice run -c sluice.toml     # workers = 1")
        c.append("ab -q -k -c 8 -n N http://127.0.0.1:PORT/     # then SIGTERM; read 'summary:' from OUT")
        c.append("callgrind_annotate --auto=no --threshold=100 OUT       # the per-function breakdown, N = LO and HI")
    if "2" in SCEN or "3" in SCEN:
        c.append("# 2, 3. per system (fresh backend each):")
        c.append(f"python3 benches/load/compare/burst_backend.py --port B --workers {meta['backend_workers']} "
                 f"--service-ms {meta['backend_service_ms']} --log backend.log")
        c.append(f"python3 benches/load/compare/burst_client.py --target 127.0.0.1:PORT -n {meta['burst_n']} "
                 f"-c {meta['burst_c']} --timeout {meta['burst_timeout']} --out client.log")
        c.append(f"# 3. the same, and after {meta['kill_after']} s: kill -KILL PROXY (and nginx's workers); start it again")
    if "4" in SCEN:
        c.append(f"# 4. for round in 1..{meta['s4_rounds']}, per fsync mode in rotated order:")
        c.append(f"wrk -t2 -c64 -d{meta['s4_dur']} --latency -s post.lua http://127.0.0.1:PORT/ingest")
    c.append("```")
    c.append("")
    c.append("</details>")
    c.append("")
    return c


def targets():
    t = ["### Targets (issue 12)", ""]
    t.append("| target | | figure (this run) |")
    t.append("|---|---|---|")
    for _, what, ok, fig in summary:
        t.append(f"| {what} | {'**met**' if ok else '**not met**'} | {fig} |")
    t.append("")
    missed = [s for s in summary if not s[2]]
    if missed:
        t.append(
            "Where a target is not met, the figure above is the evidence; the per-function callgrind "
            "profile under 1b shows where sluice's instructions per request go."
        )
        t.append("")
    return t


if "1" in SCEN:
    scenario1()
    scenario_cg()
if "2" in SCEN:
    scenario2()
if "3" in SCEN:
    scenario3()
if "4" in SCEN:
    scenario4()

section = header() + targets() + md + commands()
text = "\n".join(section).rstrip("\n") + "\n"

print("\n".join(f"{'MET    ' if ok else 'NOT MET'}  {what}: {fig}" for _, what, ok, fig in summary))
if BENCH == "-":
    out = os.path.join(OUT, "report.md")
    open(out, "w").write(text)
    print(f"\nreport: {out} (BENCHMARKS.md left alone)")
else:
    cur = open(BENCH).read()
    block = BEGIN + "\n\n" + text + "\n" + END
    m = BEGIN_RE.search(cur)
    if m and END in cur:
        new = cur[:m.start()] + block + cur[cur.index(END) + len(END):]
    else:
        # First run: the section goes first, after the file's introduction.
        i = cur.index("\n## ")
        new = cur[:i + 1] + block + "\n\n" + cur[i + 1:]
    open(BENCH, "w").write(new)
    print(f"\nwritten: {BENCH} (between the compare_all markers), plots in {OUT}")
