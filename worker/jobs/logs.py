"""logs.analyze: summarize an access log in Common or Combined Log Format.

Each line: host ident user [time] "request" status size ["referer" "agent"]
[latency]. The optional latency is a last field that is a bare number or
key=number (nginx `$request_time` / `rt=`, Apache `%D`); `latency_unit` says
whether it is in s (default, nginx), ms or us (Apache %D). Lines that do not
parse are counted (and the first few returned) rather than failing the job.

Result: status counts and classes, top paths (query strings dropped), top
client hosts, bytes sent, requests and error rate per minute (errors = 5xx,
client_errors = 4xx), and latency percentiles in ms when latencies exist.
Streamed line by line. CPU-bound parsing: process pool.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from datetime import datetime
from typing import Any

from worker.context import JobContext
from worker.jobs.safety import in_root, open_in, rel
from worker.registry import BadArgument, parse_args

LINE_RE = re.compile(
    r'^(?P<host>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
    r'(?:\s+(?:[A-Za-z_]+=)?(?P<latency>\d+(?:\.\d+)?))?\s*$'
)
UNITS_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}
MAX_MINUTES = 10_000


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def logs_analyze(args: dict, ctx: JobContext) -> dict:
    """Status counts, top paths, error rate per minute and latency percentiles of the log at `path`."""
    a = parse_args("logs.analyze", args)
    src = in_root(ctx, a["path"], "path", want="file")
    top, unit = a["top"], a["latency_unit"]
    status: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    minutes: dict[str, list[int]] = {}  # minute -> [requests, 5xx, 4xx]
    latencies: list[float] = []
    total_bytes = lines = parsed = 0
    samples: list[str] = []
    with open_in(ctx, src) as fh:
        size = os.fstat(fh.fileno()).st_size or 1
        for raw in fh:
            lines += 1
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip():
                lines -= 1
                continue
            m = LINE_RE.match(line)
            when = None
            if m:
                try:
                    when = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
                except ValueError:
                    m = None
            if not m or when is None:
                if len(samples) < 5:
                    samples.append(line[:200])
                continue
            parsed += 1
            code = int(m["status"])
            status[code] += 1
            request = m["request"].split()
            if len(request) >= 2:
                methods[request[0]] += 1
                paths[request[1].split("?", 1)[0]] += 1
            hosts[m["host"]] += 1
            if m["size"] != "-":
                total_bytes += int(m["size"])
            minute = when.strftime("%Y-%m-%dT%H:%M%z")
            bucket = minutes.get(minute)
            if bucket is None:
                if len(minutes) >= MAX_MINUTES:
                    raise BadArgument(f"the log spans more than {MAX_MINUTES} minutes; split it")
                bucket = minutes[minute] = [0, 0, 0]
            bucket[0] += 1
            bucket[1] += code >= 500
            bucket[2] += 400 <= code < 500
            if m["latency"] is not None:
                latencies.append(float(m["latency"]) * UNITS_MS[unit])
            if lines % 20000 == 0:
                ctx.check_cancelled()
                ctx.progress(min(0.99, fh.tell() / size), f"{lines} lines")
    if lines and not parsed:
        raise BadArgument(f"'path': no line of {rel(ctx, src)!r} is in Common or Combined Log Format "
                          f"(first line: {samples[0]!r})")
    classes: Counter[str] = Counter()
    for code, n in status.items():
        classes[f"{code // 100}xx"] += n
    per_minute = [
        {"minute": k, "requests": v[0], "errors": v[1], "client_errors": v[2],
         "error_rate": round(v[1] / v[0], 4)}
        for k, v in sorted(minutes.items(), key=lambda kv: datetime.strptime(kv[0], "%Y-%m-%dT%H:%M%z"))
    ]
    latency: dict[str, Any] | None = None
    if latencies:
        latencies.sort()
        latency = {"count": len(latencies), "min": round(latencies[0], 3),
                   **{f"p{q}": round(percentile(latencies, q), 3) for q in (50, 90, 95, 99)},
                   "max": round(latencies[-1], 3), "mean": round(math.fsum(latencies) / len(latencies), 3)}
    errors = sum(n for c, n in status.items() if c >= 500)
    ctx.progress(1.0, f"{lines} lines")
    return {
        "path": rel(ctx, src),
        "lines": lines,
        "parsed": parsed,
        "unparsed": lines - parsed,
        "unparsed_samples": samples,
        "status": {str(k): v for k, v in sorted(status.items())},
        "status_classes": dict(sorted(classes.items())),
        "methods": dict(methods.most_common()),
        "top_paths": [[p, n] for p, n in sorted(paths.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
        "top_hosts": [[h, n] for h, n in sorted(hosts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
        "bytes": total_bytes,
        "error_rate": round(errors / parsed, 4) if parsed else None,
        "per_minute": per_minute,
        "latency_ms": latency,
    }


JOBS: dict[str, tuple[Any, str]] = {
    "logs.analyze": (logs_analyze, "process"),
}
