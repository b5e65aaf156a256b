"""http.fetch: one GET to an allowlisted host, with a timeout and a size cap.

The host must pass the worker's allowlist (default: loopback only, so a fresh
worker is no open proxy); the connection goes to the address that was checked,
redirects are followed only to allowed hosts (each checked the same way), and
proxies from the environment are ignored (worker/jobs/netguard.py). I/O-bound:
thread pool.

A status >= 400 fails the job unless `fail_on_status` is false: 408, 429 and
5xx retryably (the server may recover), other 4xx not.
"""
from __future__ import annotations

import hashlib
from typing import Any

from worker.context import JobContext
from worker.jobs.netguard import http_request
from worker.jobs.safety import atomic_output, in_root, rel
from worker.registry import JobError, parse_args

MAX_TEXT_CHARS = 256 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "image/svg+xml")
_KEEP_HEADERS = ("content-type", "content-length", "last-modified", "etag", "server", "location")


def http_fetch(args: dict, ctx: JobContext) -> dict:
    """GET `url`; return status, headers, size, sha256 and the text (or save the body to `output`)."""
    a = parse_args("http.fetch", args)
    url, timeout, max_bytes, fail_on_status = a["url"], a["timeout"], a["max_bytes"], a["fail_on_status"]
    out_path = in_root(ctx, a["output"], "output", want="file", must_exist=False) if "output" in a else None
    resp = http_request(ctx.settings, url, timeout_s=timeout, max_bytes=max_bytes, ctx=ctx)
    if fail_on_status and resp.status >= 400:
        retryable = resp.status in (408, 429) or resp.status >= 500
        raise JobError(f"GET {url} answered HTTP {resp.status}", retryable=retryable)
    out: dict[str, Any] = {
        "url": url,
        "final_url": resp.url,
        "status": resp.status,
        "content_type": resp.content_type,
        "bytes": len(resp.body),
        "sha256": hashlib.sha256(resp.body).hexdigest(),
        "elapsed_ms": round(resp.elapsed_ms, 1),
        "headers": {k: v for k, v in resp.headers.items() if k in _KEEP_HEADERS},
    }
    if out_path is not None:
        with atomic_output(out_path, ctx=ctx) as fh:
            fh.write(resp.body)
        out["output"] = rel(ctx, out_path)
    elif resp.content_type.startswith(_TEXT_TYPES) or not resp.content_type:
        text = resp.text()
        out["text"] = text[:MAX_TEXT_CHARS]
        out["truncated"] = len(text) > MAX_TEXT_CHARS
    return out


JOBS: dict[str, tuple[Any, str]] = {
    "http.fetch": (http_fetch, "thread"),
}
