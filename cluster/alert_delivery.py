"""Sending one alert notification: a webhook POST or an email, retried.

Both senders are blocking stdlib calls (urllib, smtplib) run in a worker
thread with a timeout, so the node's event loop never waits on a receiver;
`deliver` retries a failed send with exponential backoff (jittered, capped)
until it succeeds or the notification is no longer owed.

A notification's `id` is `NAME/SEQ`: the transition's sequence number is
cluster-wide and survives failover, so a receiver that saw it already (a
leader crashed between sending and recording the delivery) can drop it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import smtplib
import urllib.parse
import urllib.request
from email.message import EmailMessage
from typing import Any, Awaitable, Callable

from cluster.config import AlertingConfig
from cluster.errors import BadRequest

log = logging.getLogger("raftq.alerts")

USER_AGENT = "raftq-alerts/1"


def check_target(webhook: str | None, email: str | None) -> None:
    """BadRequest unless exactly one target is given and it is usable: an
    http(s) URL with a host, or one plain address (no spaces or line breaks,
    which would let a rule write mail headers)."""
    if (webhook is None) == (email is None):
        raise BadRequest("an alert needs exactly one of --webhook URL and --email ADDRESS")
    if webhook is not None:
        url = urllib.parse.urlsplit(webhook)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BadRequest(f"webhook must be an http:// or https:// URL with a host, got {webhook!r}")
        if any(c.isspace() for c in webhook):
            raise BadRequest("webhook URL must not contain spaces or line breaks")
    if email is not None:
        local, at, domain = email.rpartition("@")
        if not at or not local or not domain or any(c.isspace() or c in "<>,;\"" for c in email):
            raise BadRequest(f"email must be one address like ops@example.com, got {email!r}")


def notification(transition: dict[str, Any], node_id: int) -> dict[str, Any]:
    """The JSON document a webhook receives (and an email's content)."""
    return {
        "id": f"{transition['name']}/{transition['seq']}",
        "alert": transition["name"],
        "state": transition["state"],
        "seq": transition["seq"],
        "at": transition["at_ms"] / 1000.0,
        "condition": transition["when"],
        "detail": transition.get("detail"),
        "node": node_id,
    }


def _post(url: str, doc: dict[str, Any], timeout_s: float) -> None:
    body = json.dumps(doc).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": doc["id"]})
    # No proxy from the environment: a node's alerts go where the rule says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout_s) as resp:  # a non-2xx status raises HTTPError
        resp.read(65536)


def _mail(cfg: AlertingConfig, to: str, doc: dict[str, Any]) -> None:
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = to
    msg["Subject"] = f"[raftq] {doc['alert']} {doc['state']}: {doc['condition']}"
    msg["X-Raftq-Alert-Id"] = doc["id"]
    msg.set_content("\n".join([
        f"alert:     {doc['alert']}",
        f"state:     {doc['state']}",
        f"condition: {doc['condition']}",
        f"detail:    {doc['detail'] or '-'}",
        f"at:        {doc['at']:.3f} (log time, epoch seconds)",
        f"id:        {doc['id']} (the same id may arrive twice after a leader failover)",
        "",
        json.dumps(doc, sort_keys=True),
    ]))
    with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_s) as smtp:
        smtp.send_message(msg)


def sender(cfg: AlertingConfig, transition: dict[str, Any], node_id: int) -> Callable[[], Awaitable[None]]:
    """A coroutine function sending `transition` once, off the loop; raises on failure."""
    doc = notification(transition, node_id)
    if transition.get("webhook") is not None:
        return lambda: asyncio.to_thread(_post, transition["webhook"], doc, cfg.timeout_s)
    return lambda: asyncio.to_thread(_mail, cfg, transition["email"], doc)


async def deliver(send: Callable[[], Awaitable[None]], cfg: AlertingConfig, what: str,
                  wanted: Callable[[], bool]) -> int | None:
    """Send until it works; how many attempts it took, or None once `wanted()`
    says it is no longer owed (the rule was removed, leadership moved). Each
    failure waits retry_base_s, doubling up to retry_max_s (plus up to 10%
    jitter, so receivers recovering from an outage are not hit in lockstep)."""
    delay = cfg.retry_base_s
    attempt = 1
    while True:
        try:
            await send()
            return attempt
        except Exception as exc:  # any failure of the receiver or the network: retry
            log.warning("alert %s: delivery attempt %d failed (%s: %s); retrying in %.1fs",
                        what, attempt, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay * (1 + random.random() / 10))
        if not wanted():
            return None
        delay = min(delay * 2, cfg.retry_max_s)
        attempt += 1
