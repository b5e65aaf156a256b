"""Network job types against real local servers: a threaded `http.server` on
127.0.0.1 (random port) serving a generated site and recording webhook POSTs,
and a real aiosmtpd SMTP server (random port; plain, and STARTTLS + AUTH with a
self-signed certificate made in the test)."""
from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from worker.context import JobContext, JobSettings
from worker.jobs import email as email_jobs
from worker.jobs import health, http, scrape
from worker.jobs.netguard import HostRuleError, check_host, parse_allow_hosts
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument, JobError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a real web server ------------------------------------------------------------------------

PAGES = {
    "index.html": '<html><head><title>Home</title></head><body><h1>Welcome home</h1>'
                  '<a href="/a.html">A</a> <a href="b.html#top">B</a> <a href="/private/secret.html">S</a>'
                  '<a href="https://example.org/x">ext</a> <a href="mailto:x@y.z">mail</a>'
                  '<script>var notWords = 1;</script></body></html>',
    "a.html": "<html><head><title>Page A</title></head><body><p>one two three</p>"
              '<a href="/">home</a><a href="/c.html">C</a></body></html>',
    "b.html": "<html><head><title>Page B</title></head><body><p>four five</p></body></html>",
    "c.html": "<html><head><title>Page C</title></head><body>six</body></html>",
    "private/secret.html": "<html><title>Secret</title></html>",
    "robots.txt": "User-agent: *\nDisallow: /private/\n",
    "big.txt": "x" * 300_000,
    "data.json": '{"ok": true}',
}


class SiteHandler(SimpleHTTPRequestHandler):
    posts: list[tuple[str, bytes]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-out":
            self.send_response(302)
            self.send_header("Location", "http://192.0.2.1/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-in":
            self.send_response(302)
            self.send_header("Location", "/a.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            super().do_GET()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((self.path, body))  # type: ignore[attr-defined]
        code = 500 if self.path == "/hook-broken" else 204
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    root = tmp_path_factory.mktemp("site")
    for name, body in PAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SiteHandler, directory=str(root)))
    server.posts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    (tmp_path / "root").mkdir()
    return JobContext("job-1", 1, {}, tmp_path / "work", type="test",
                      settings=JobSettings(data_root=tmp_path / "root"))


# --- allowlist -----------------------------------------------------------------------------------


def test_allowlist_rules() -> None:
    s = JobSettings(allow_hosts=("loopback",))
    check_host(s, "127.0.0.1")
    check_host(s, "127.9.9.9")
    check_host(s, "::1")
    check_host(s, "localhost")
    for bad in ("10.0.0.1", "192.0.2.1", "169.254.169.254"):
        with pytest.raises(BadArgument, match="is not in the worker's allowlist"):
            check_host(s, bad)
    custom = JobSettings(allow_hosts=("10.0.0.0/8", "*.example.com", "api.test"))
    check_host(custom, "10.1.2.3")
    check_host(custom, "www.example.com")
    check_host(custom, "api.test")
    with pytest.raises(BadArgument):
        check_host(custom, "example.com")  # *.example.com means subdomains only
    with pytest.raises(BadArgument):
        check_host(custom, "127.0.0.1")  # loopback is not implied once rules are given
    check_host(JobSettings(allow_hosts=("*",)), "192.0.2.1")
    with pytest.raises(HostRuleError):
        parse_allow_hosts(["exa mple.com"])


# --- http.fetch --------------------------------------------------------------------------------------


def test_fetch_page(ctx: JobContext, site) -> None:
    base, _ = site
    out = http.http_fetch({"url": base + "/a.html"}, ctx)
    assert out["status"] == 200 and out["content_type"] == "text/html"
    assert "<title>Page A</title>" in out["text"] and out["bytes"] == len(PAGES["a.html"])
    saved = http.http_fetch({"url": base + "/data.json", "output": "dl/data.json"}, ctx)
    assert saved["output"] == "dl/data.json" and "text" not in saved
    assert json.loads((ctx.settings.data_root / "dl/data.json").read_text()) == {"ok": True}
    moved = http.http_fetch({"url": base + "/redirect-in"}, ctx)
    assert moved["final_url"] == base + "/a.html" and moved["status"] == 200


def test_fetch_limits_and_errors(ctx: JobContext, site) -> None:
    base, _ = site
    with pytest.raises(UnsafeInput, match="larger than max_bytes=100000"):
        http.http_fetch({"url": base + "/big.txt", "max_bytes": 100_000}, ctx)
    with pytest.raises(JobError, match="answered HTTP 404") as info:
        http.http_fetch({"url": base + "/missing.html"}, ctx)
    assert info.value.retryable is False
    with pytest.raises(JobError, match="answered HTTP 503") as info:
        http.http_fetch({"url": base + "/status/503"}, ctx)
    assert info.value.retryable is True
    assert http.http_fetch({"url": base + "/status/503", "fail_on_status": False}, ctx)["status"] == 503
    with pytest.raises(UnsafeInput, match="refused redirect to http://192.0.2.1/"):
        http.http_fetch({"url": base + "/redirect-out"}, ctx)
    with pytest.raises(BadArgument, match="host '192.0.2.1' is not in the worker's allowlist"):
        http.http_fetch({"url": "http://192.0.2.1/"}, ctx)
    with pytest.raises(BadArgument, match="must be an http:// or https:// URL"):
        http.http_fetch({"url": "file:///etc/passwd"}, ctx)
    port = free_port()  # nothing listens there
    with pytest.raises(JobError, match="cannot fetch") as info:
        http.http_fetch({"url": f"http://127.0.0.1:{port}/", "timeout": 2}, ctx)
    assert info.value.retryable is True


# --- web.scrape ----------------------------------------------------------------------------------------


def test_scrape_crawls_the_site_and_obeys_robots(ctx: JobContext, site) -> None:
    base, _ = site
    out = scrape.web_scrape({"url": base + "/index.html", "max_pages": 10}, ctx)
    titles = {p["url"].removeprefix(base): p["title"] for p in out["pages"]}
    assert titles == {"/index.html": "Home", "/a.html": "Page A", "/b.html": "Page B", "/c.html": "Page C",
                      "/": "Home"}
    assert out["robots_blocked"] == [base + "/private/secret.html"]
    assert out["external_links"] == ["https://example.org/x"]
    index = next(p for p in out["pages"] if p["url"] == base + "/index.html")
    assert index["words"] == 7 and index["links"] == 5  # "Welcome home" + 5 link texts; not the script
    assert {base + "/a.html", base + "/b.html"} <= set(out["internal_links"])
    small = scrape.web_scrape({"url": base + "/index.html", "max_pages": 2}, ctx)
    assert small["crawled"] == 2 and small["not_crawled"] >= 1
    assert ctx.last_progress is not None and ctx.last_progress[0] == 1.0


def test_scrape_refuses_what_robots_forbids_and_other_hosts(ctx: JobContext, site) -> None:
    base, _ = site
    with pytest.raises(BadArgument, match="robots.txt of .* disallows"):
        scrape.web_scrape({"url": base + "/private/secret.html"}, ctx)
    with pytest.raises(BadArgument, match="not in the worker's allowlist"):
        scrape.web_scrape({"url": "http://192.0.2.1/"}, ctx)


# --- a real SMTP server ------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[int, Inbox, Path]]:
    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = auth_data.login == b"mailer" and auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
                            authenticator=authenticator, auth_require_tls=True)
    controller.start()
    yield port, inbox, cert
    controller.stop()


def _mail_ctx(tmp_path: Path, **settings: Any) -> JobContext:
    (tmp_path / "root").mkdir(exist_ok=True)
    return JobContext("job-7", 1, {}, tmp_path / "work", type="test",
                      settings=JobSettings(data_root=tmp_path / "root", **settings))


def test_email_send_with_attachment(tmp_path: Path, smtp) -> None:
    port, inbox = smtp
    ctx = _mail_ctx(tmp_path, smtp_port=port, smtp_from="reports@raftq.test")
    (tmp_path / "root/summary.csv").write_text("a,b\n1,2\n")
    out = email_jobs.email_send({"to": ["ann@example.com", "bob@example.com"], "cc": "cy@example.com",
                                 "subject": "Weekly report", "body": "See attached.",
                                 "html": "<p>See <b>attached</b>.</p>", "attachments": ["summary.csv"]}, ctx)
    assert out["refused"] == {} and out["message_id"] == "<raftq.job-7@raftq.test>"
    sender, rcpts, msg = inbox.messages[0]
    assert sender == "reports@raftq.test" and rcpts == ["ann@example.com", "bob@example.com", "cy@example.com"]
    assert msg["Subject"] == "Weekly report" and msg["Message-ID"] == out["message_id"]
    assert msg.get_body(("plain",)).get_content().strip() == "See attached."
    assert "<b>attached</b>" in msg.get_body(("html",)).get_content()
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "summary.csv" and att.get_content() == "a,b\n1,2\n"


def test_email_refusals_and_outages(tmp_path: Path, smtp) -> None:
    port, inbox = smtp
    ctx = _mail_ctx(tmp_path, smtp_port=port)
    with pytest.raises(JobError, match="refused every recipient") as info:
        email_jobs.email_send({"to": "nobody@example.com", "subject": "x", "body": "y"}, ctx)
    assert info.value.retryable is False
    partial_out = email_jobs.email_send({"to": ["nobody@example.com", "ann@example.com"], "subject": "x",
                                         "body": "y"}, ctx)
    assert list(partial_out["refused"]) == ["nobody@example.com"] and len(inbox.messages) == 1
    down = _mail_ctx(tmp_path, smtp_port=free_port(), smtp_timeout_s=2.0)
    with pytest.raises(JobError, match="cannot send through SMTP relay") as info:
        email_jobs.email_send({"to": "ann@example.com", "subject": "x", "body": "y"}, down)
    assert info.value.retryable is True
    with pytest.raises(BadArgument, match="not an e-mail address: 'not-an-address'"):
        email_jobs.email_send({"to": "not-an-address", "subject": "x", "body": "y"}, ctx)
    with pytest.raises(BadArgument, match="'subject' must be one line"):
        email_jobs.email_send({"to": "a@b.c", "subject": "x\nBcc: evil@x.y", "body": "y"}, ctx)


def test_email_starttls_and_auth(tmp_path: Path, smtp_tls) -> None:
    port, inbox, cert = smtp_tls
    good = _mail_ctx(tmp_path, smtp_port=port, smtp_starttls=True, smtp_user="mailer", smtp_password="s3cret",
                     smtp_ca_file=str(cert))
    out = email_jobs.email_send({"to": "ann@example.com", "subject": "secure", "body": "over TLS"}, good)
    assert out["refused"] == {} and inbox.messages[0][2]["Subject"] == "secure"
    bad = _mail_ctx(tmp_path, smtp_port=port, smtp_starttls=True, smtp_user="mailer", smtp_password="wrong",
                    smtp_ca_file=str(cert))
    with pytest.raises(JobError, match="rejected the worker's login") as info:
        email_jobs.email_send({"to": "ann@example.com", "subject": "x", "body": "y"}, bad)
    assert info.value.retryable is False
    untrusted = _mail_ctx(tmp_path, smtp_port=port, smtp_starttls=True, smtp_user="mailer", smtp_password="s3cret")
    with pytest.raises(JobError, match="CERTIFICATE_VERIFY_FAILED"):
        email_jobs.email_send({"to": "ann@example.com", "subject": "x", "body": "y"}, untrusted)
    plain = _mail_ctx(tmp_path, smtp_port=port)
    with pytest.raises(JobError, match="530"):
        email_jobs.email_send({"to": "ann@example.com", "subject": "x", "body": "y"}, plain)
    assert len(inbox.messages) == 1


# --- health.check -----------------------------------------------------------------------------


def test_health_all_ok_sends_no_alert(ctx: JobContext, site) -> None:
    base, server = site
    before = len(server.posts)
    port = server.server_address[1]
    out = health.health_check({"probes": [{"url": base + "/", "contains": "Welcome"},
                                          {"tcp": f"127.0.0.1:{port}", "name": "web-port"}],
                               "alert": {"webhook": base + "/hook"}}, ctx)
    assert out["ok"] is True and out["alerts"] == [] and len(server.posts) == before
    assert [p["ok"] for p in out["probes"]] == [True, True]
    assert all(p["latency_ms"] >= 0 for p in out["probes"]) and out["probes"][1]["name"] == "web-port"


def test_health_failures_alert_by_webhook_and_email(tmp_path: Path, site, smtp) -> None:
    base, server = site
    smtp_port, inbox = smtp
    ctx = _mail_ctx(tmp_path, smtp_port=smtp_port)
    dead = free_port()
    out = health.health_check({
        "probes": [{"url": base + "/a.html", "name": "a"}, {"url": base + "/status/500", "name": "api"},
                   {"tcp": f"127.0.0.1:{dead}", "name": "db", "timeout": 1}],
        "alert": {"webhook": base + "/hook", "email": "oncall@example.com"},
    }, ctx)
    assert out["ok"] is False and out["failing"] == 2
    assert [a["channel"] for a in out["alerts"]] == ["webhook", "email"]
    path, body = server.posts[-1]
    event = json.loads(body)
    assert path == "/hook" and event["event"] == "health.check.failed"
    assert [p["name"] for p in event["failing"]] == ["api", "db"]
    assert "HTTP 500, expected 200-399" in event["summary"] and "cannot connect" in event["summary"]
    _, rcpts, msg = inbox.messages[-1]
    assert rcpts == ["oncall@example.com"] and "2 probe(s) failing: api, db" in msg["Subject"]
    assert "db (127.0.0.1:" in msg.get_content()
    with pytest.raises(JobError, match="2 probe\\(s\\) failing") as info:
        health.health_check({"probes": [{"url": base + "/status/500"}, {"tcp": f"127.0.0.1:{dead}"}],
                             "fail_on_alert": True}, ctx)
    assert info.value.retryable is False


def test_health_alert_delivery_failure_is_retryable(ctx: JobContext, site) -> None:
    base, _ = site
    with pytest.raises(JobError, match="alert webhook .* answered HTTP 500") as info:
        health.health_check({"probes": [{"url": base + "/status/404"}], "alert": {"webhook": base + "/hook-broken"}},
                            ctx)
    assert info.value.retryable is True
    with pytest.raises(BadArgument, match="not in the worker's allowlist"):
        health.health_check({"probes": [{"tcp": "192.0.2.1:22"}]}, ctx)
    with pytest.raises(BadArgument, match="not in the worker's allowlist"):
        health.health_check({"probes": [{"url": base}], "alert": {"webhook": "http://192.0.2.1/hook"}}, ctx)
