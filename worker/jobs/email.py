"""email.send: a message through the worker's configured SMTP relay.

The relay (host, port, STARTTLS or implicit TLS, user/password, From address,
CA file) comes from the worker's configuration (`raftq worker --smtp-*`, env
RAFTQ_SMTP_*), never from job arguments: a job cannot turn the worker into a
relay to arbitrary servers or read its credentials. The default relay is
127.0.0.1:8025 without TLS (`python -m aiosmtpd -n -l 127.0.0.1:8025`).

Failures: a refused recipient, sender or login is non-retryable (sending again
cannot help); a connection failure or a 4xx answer is retryable. I/O-bound:
thread pool. `send_mail()` is also used by health.check alerts.
"""
from __future__ import annotations

import mimetypes
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from worker.context import JobContext, JobSettings
from worker.jobs.safety import in_root, open_in, rel
from worker.registry import BadArgument, JobError, parse_args

MAX_RECIPIENTS = 100
MAX_ATTACHMENT_BYTES = 10 << 20
_ADDR_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


def _addresses(value: Any, arg: str, required: bool) -> list[str]:
    if value is None:
        if required:
            raise BadArgument(f"missing required argument {arg!r} (an e-mail address or a list of them)")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
        raise BadArgument(f"{arg!r} must be an e-mail address or a list of them, got {value!r}")
    items = [a.strip() for item in items for a in item.split(",") if a.strip()]
    bad = [a for a in items if not _ADDR_RE.match(a)]
    if bad:
        raise BadArgument(f"{arg!r}: not an e-mail address: {', '.join(map(repr, bad))}")
    if required and not items:
        raise BadArgument(f"{arg!r} must name at least one recipient")
    if len(items) > MAX_RECIPIENTS:
        raise BadArgument(f"{arg!r}: at most {MAX_RECIPIENTS} recipients")
    return items


def _tls_context(settings: JobSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if settings.smtp_ca_file:
        ctx.load_verify_locations(cafile=settings.smtp_ca_file)
    return ctx


def send_mail(settings: JobSettings, message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
    """Send through the configured relay; returns {"refused": {...}}. Raises JobError."""
    host, port = settings.smtp_host, settings.smtp_port
    where = f"SMTP relay {host}:{port}"
    try:
        if settings.smtp_ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=settings.smtp_timeout_s,
                                                    context=_tls_context(settings))
        else:
            client = smtplib.SMTP(host, port, timeout=settings.smtp_timeout_s)
        with client:
            client.ehlo()
            if settings.smtp_starttls:
                client.starttls(context=_tls_context(settings))
                client.ehlo()
            if settings.smtp_user is not None:
                client.login(settings.smtp_user, settings.smtp_password or "")
            refused = client.send_message(message, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise JobError(f"{where} rejected the worker's login ({exc.smtp_code} {_text(exc.smtp_error)})",
                       retryable=False) from None
    except smtplib.SMTPRecipientsRefused as exc:
        detail = "; ".join(f"{addr}: {code} {_text(msg)}" for addr, (code, msg) in exc.recipients.items())
        raise JobError(f"{where} refused every recipient ({detail})", retryable=False) from None
    except smtplib.SMTPSenderRefused as exc:
        raise JobError(f"{where} refused the sender {exc.sender} ({exc.smtp_code} {_text(exc.smtp_error)})",
                       retryable=False) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise JobError(f"{where}: {exc} (check the worker's --smtp-starttls / --smtp-user settings)",
                       retryable=False) from None
    except smtplib.SMTPResponseException as exc:
        raise JobError(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                       retryable=exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise JobError(f"cannot send through {where}: {exc}", retryable=True) from None
    return {"refused": {addr: f"{code} {_text(msg)}" for addr, (code, msg) in refused.items()}}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def email_send(args: dict, ctx: JobContext) -> dict:
    """Send an e-mail: `to`, `subject`, `body` (text), optional `html`, `cc`, `bcc`, `reply_to`, `attachments`."""
    a = parse_args("email.send", args)
    to = _addresses(a["to"], "to", required=True)
    cc = _addresses(a.get("cc"), "cc", required=False)
    bcc = _addresses(a.get("bcc"), "bcc", required=False)
    reply_to = _addresses(a.get("reply_to"), "reply_to", required=False)
    subject, body, html_body, attach_args = a["subject"], a["body"], a.get("html"), a["attachments"]
    files: list[tuple[Path, bytes]] = []
    for i, item in enumerate(attach_args):
        path = in_root(ctx, item, f"attachments[{i}]", want="file")
        with open_in(ctx, path, arg=f"attachments[{i}]") as fh:
            data = fh.read(MAX_ATTACHMENT_BYTES + 1)  # one past the cap: a grown file is still caught
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise BadArgument(f"attachments[{i}]: {item!r} is larger than {MAX_ATTACHMENT_BYTES} bytes")
        files.append((path, data))
    settings = ctx.settings
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = ", ".join(reply_to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    # Deterministic per job id: a retried send carries the same Message-ID,
    # so a receiving system can drop the duplicate (execution is at-least-once).
    domain = settings.smtp_from.split("@", 1)[1]
    msg["Message-ID"] = (f"<raftq.{re.sub(r'[^A-Za-z0-9.-]', '-', ctx.id)[:100]}@{domain}>" if ctx.id
                         else make_msgid(domain=domain))
    msg.set_content(body)
    if html_body is not None:
        msg.add_alternative(html_body, subtype="html")
    for path, data in files:
        ctype, _ = mimetypes.guess_type(path.name)
        maintype, subtype = (ctype or "application/octet-stream").split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    ctx.check_cancelled()
    sent = send_mail(settings, msg, to + cc + bcc)
    return {"message_id": msg["Message-ID"], "to": to, "cc": cc, "bcc": len(bcc),
            "attachments": [rel(ctx, p) for p, _ in files], "refused": sent["refused"],
            "relay": f"{settings.smtp_host}:{settings.smtp_port}"}


JOBS: dict[str, tuple[Any, str]] = {
    "email.send": (email_send, "thread"),
}
