"""health.check: HTTP and TCP probes with latency; failures raise alerts.

A probe is {"url": "http://..."} (HTTP GET; healthy when the status is in
`expect_status`, default 200-399, and `contains` appears in the body if given)
or {"tcp": "host:port"} (healthy when a connection opens), each with an
optional `name` and `timeout`. Probe targets obey the worker's host allowlist
like http.fetch (a health check must not become a port scanner).

When any probe fails, an alert goes to every channel in `alert`:
  {"webhook": "http://..."}  POST of a JSON document (allowlisted host)
  {"email": "ops@example.com" or [...]}  through the worker's SMTP relay
The job succeeds with the report (ok: false) even when probes fail, unless
`fail_on_alert` is true; an alert that cannot be delivered fails the job
retryably (the alert matters more than the report). I/O-bound: thread pool.
"""
from __future__ import annotations

import json
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from worker.context import JobContext
from worker.jobs.email import _addresses, send_mail
from worker.jobs.netguard import check_host, check_url, connect_host, http_request
from worker.registry import BadArgument, JobError, parse_args, require

PROBE_MAX_BYTES = 1 << 20


def _parse_probe(i: int, probe: dict, ctx: JobContext) -> dict[str, Any]:
    """A probe whose shape parse_args checked (a map, known keys, url or tcp)."""
    where = f"probes[{i}]"
    out: dict[str, Any] = {"timeout": require(probe, "timeout", float, min=0.05, max=60, default=5.0)}
    if "url" in probe:
        check_url(ctx.settings, probe["url"], f"{where}.url")
        out.update(kind="http", target=probe["url"])
        expect = probe.get("expect_status", [200, 399])
        if (not isinstance(expect, list) or len(expect) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in expect)):
            raise BadArgument(f"{where}.expect_status must be [low, high], e.g. [200, 299]")
        out["expect"] = expect
        out["contains"] = require(probe, "contains", str, default=None)
    else:
        target = probe["tcp"]
        host, sep, port = target.rpartition(":") if isinstance(target, str) else ("", "", "")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise BadArgument(f"{where}.tcp must be 'host:port', got {target!r}")
        check_host(ctx.settings, host.strip("[]"), f"{where}.tcp", port=int(port))
        out.update(kind="tcp", target=target, host=host.strip("[]"), port=int(port))
    out["name"] = require(probe, "name", str, default=out["target"])
    return out


def run_probe(p: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    t0 = time.monotonic()
    result: dict[str, Any] = {"name": p["name"], "type": p["kind"], "target": p["target"], "ok": False,
                              "latency_ms": None, "error": None}
    if p["kind"] == "tcp":
        try:
            # Checked again at connect time: the answer may have changed since
            # the arguments were validated, and the connection uses this one.
            with connect_host(ctx.settings, p["host"], p["port"], p["timeout"], p["target"]):
                result["ok"] = True
        except OSError as exc:
            result["error"] = f"cannot connect: {exc.strerror or exc}"
        except JobError as exc:
            result["error"] = str(exc)
    else:
        try:
            resp = http_request(ctx.settings, p["target"], timeout_s=p["timeout"], max_bytes=PROBE_MAX_BYTES, ctx=ctx)
            result["status"] = resp.status
            lo, hi = p["expect"]
            if not lo <= resp.status <= hi:
                result["error"] = f"HTTP {resp.status}, expected {lo}-{hi}"
            elif p["contains"] is not None and p["contains"] not in resp.text():
                result["error"] = f"body does not contain {p['contains']!r}"
            else:
                result["ok"] = True
        except JobError as exc:
            if ctx.cancelled:
                raise
            result["error"] = str(exc)
    result["latency_ms"] = round((time.monotonic() - t0) * 1000, 2)
    return result


def _send_alerts(ctx: JobContext, alert: dict[str, Any], failing: list[dict[str, Any]],
                 report: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    summary = "; ".join(f"{p['name']}: {p['error']}" for p in failing)
    subject = f"[raftq health] {len(failing)} probe(s) failing: {', '.join(p['name'] for p in failing)[:150]}"
    if "webhook" in alert:
        body = json.dumps({"event": "health.check.failed", "job": ctx.id, "failing": failing,
                           "summary": summary, "probes": report["probes"], "at": time.time()}).encode()
        resp = http_request(ctx.settings, alert["webhook"], timeout_s=10, max_bytes=PROBE_MAX_BYTES, ctx=ctx,
                            method="POST", data=body, headers={"Content-Type": "application/json"},
                            arg="alert.webhook")
        if resp.status >= 300:
            raise JobError(f"alert webhook {alert['webhook']} answered HTTP {resp.status}", retryable=True)
        sent.append({"channel": "webhook", "target": alert["webhook"], "status": resp.status})
    if "email" in alert:
        to = _addresses(alert["email"], "alert.email", required=True)
        msg = EmailMessage()
        msg["From"] = ctx.settings.smtp_from
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        lines = [f"{p['name']} ({p['target']}): {'OK' if p['ok'] else 'FAILING: ' + str(p['error'])}"
                 f" [{p['latency_ms']} ms]" for p in report["probes"]]
        msg.set_content("health.check found failing probes.\n\n" + "\n".join(lines) + "\n")
        send_mail(ctx.settings, msg, to)
        sent.append({"channel": "email", "target": to})
    return sent


def health_check(args: dict, ctx: JobContext) -> dict:
    """Run `probes`; when any fails, alert through `alert` (webhook and/or email)."""
    a = parse_args("health.check", args)
    probes = [_parse_probe(i, p, ctx) for i, p in enumerate(a["probes"])]
    alert = a.get("alert", {})
    if "webhook" in alert:
        check_url(ctx.settings, alert["webhook"], "alert.webhook")
    if "email" in alert:
        _addresses(alert["email"], "alert.email", required=True)
    fail_on_alert = a["fail_on_alert"]
    results = []
    for i, p in enumerate(probes):
        ctx.check_cancelled()
        results.append(run_probe(p, ctx))
        ctx.progress((i + 1) / (len(probes) + 1), f"probed {p['name']}")
    failing = [r for r in results if not r["ok"]]
    report: dict[str, Any] = {"ok": not failing, "probes": results, "failing": len(failing), "alerts": []}
    if failing and alert:
        report["alerts"] = _send_alerts(ctx, alert, failing, report)
    ctx.progress(1.0, "done")
    if failing and fail_on_alert:
        raise JobError(f"{len(failing)} probe(s) failing: " + "; ".join(f"{p['name']}: {p['error']}" for p in failing),
                       retryable=False)
    return report


JOBS: dict[str, tuple[Any, str]] = {
    "health.check": (health_check, "thread"),
}
