"""What the load scripts read from a `wrk --latency` report: one parser,
imported by each script's report step (run from the repository root)."""
import re

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def latency_ms(text, pct):
    """The pct-th percentile latency of a `--latency` report, in ms."""
    m = re.search(rf"{pct}%\s+([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def summary(path):
    """(requests/s, p50 ms, p99 ms, non-2xx/3xx answers) of a report file."""
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, latency_ms(text, "50"), latency_ms(text, "99"), int(bad.group(1)) if bad else 0
