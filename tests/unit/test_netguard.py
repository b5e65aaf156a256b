"""worker/jobs/netguard.py against real local servers: a threaded HTTP server
on 127.0.0.1 (plain, and TLS with a throwaway CA and certificate made here),
and a stub resolver passed through the `resolver` parameter (the names are
made up; every answer points at 127.0.0.1 or at a guarded address, so nothing
leaves loopback)."""
from __future__ import annotations

import datetime
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from worker.config import WorkerConfig
from worker.context import JobContext, JobSettings
from worker.jobs import health
from worker.jobs.netguard import HostRuleError, check_url, connect_host, http_request, parse_allow_hosts
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument, JobError

METADATA = "169.254.169.254"


class StubDNS:
    """Answers from a script: each name's answers are used in order, the last
    one repeating (so a second lookup of a rebinding name gets the bad one)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = {name: list(seq) for name, seq in answers.items()}
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        seq = self.answers[host]
        return seq.pop(0) if len(seq) > 1 else seq[0]


class Handler(BaseHTTPRequestHandler):
    """GET /page answers "hello"; paths in server.redirects answer 302 to their
    target. Every request's (path, Host header) is recorded."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        location = self.server.redirects.get(self.path)  # type: ignore[attr-defined]
        body = b"" if location else b"hello"
        self.send_response(302 if location else 200)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(tls: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.redirects = [], {}  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def web() -> Iterator[ThreadingHTTPServer]:
    server, thread = _serve()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def fetch(settings: JobSettings, url: str, dns: StubDNS | None = None, **kw: Any):
    extra = {"resolver": dns} if dns is not None else {}
    return http_request(settings, url, timeout_s=5, max_bytes=1 << 20, **extra, **kw)


# --- resolve once, connect to what was checked ---------------------------------------


def test_rebinding_name_is_fetched_from_the_checked_address(web: ThreadingHTTPServer) -> None:
    port = web.server_address[1]
    dns = StubDNS({"rebind.test": [["127.0.0.1"], [METADATA]]})
    resp = fetch(JobSettings(allow_hosts=("rebind.test",)), f"http://rebind.test:{port}/page", dns)
    # One lookup, and the request reached the server on the address it gave;
    # a second lookup would have answered the metadata address.
    assert resp.status == 200 and resp.body == b"hello"
    assert dns.calls == ["rebind.test"]
    assert web.seen == [("/page", f"rebind.test:{port}")]  # Host header: the name, not the address


def test_every_address_of_an_answer_is_checked(web: ThreadingHTTPServer) -> None:
    port = web.server_address[1]
    mixed = StubDNS({"mixed.test": [["127.0.0.1", METADATA]]})
    with pytest.raises(BadArgument, match="link-local or cloud metadata"):
        fetch(JobSettings(allow_hosts=("*",)), f"http://mixed.test:{port}/page", mixed)
    with pytest.raises(BadArgument, match="not in the worker's allowlist"):
        fetch(JobSettings(allow_hosts=("loopback",)), f"http://mixed.test:{port}/page", mixed)
    assert web.seen == []


def test_tcp_probe_connects_to_the_checked_address(web: ThreadingHTTPServer) -> None:
    port = web.server_address[1]
    dns = StubDNS({"db.test": [["127.0.0.1"], ["192.0.2.1"]]})
    with connect_host(JobSettings(allow_hosts=("db.test",)), "db.test", port, 5, "tcp", resolver=dns) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)
    assert dns.calls == ["db.test"]


def test_environment_proxies_are_ignored(web: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9/")  # discard port: a proxy there would fail the fetch
    monkeypatch.delenv("no_proxy", raising=False)
    assert fetch(JobSettings(), f"http://127.0.0.1:{web.server_address[1]}/page").body == b"hello"


# --- redirects: every hop resolved, checked, pinned ---------------------------------------


def test_redirect_chain_is_checked_per_hop(web: ThreadingHTTPServer) -> None:
    port = web.server_address[1]
    web.redirects.update({"/r1": f"http://b.test:{port}/r2", "/r2": f"http://c.test:{port}/page"})  # type: ignore[attr-defined]
    dns = StubDNS({name: [["127.0.0.1"], [METADATA]] for name in ("a.test", "b.test", "c.test")})
    resp = fetch(JobSettings(allow_hosts=("*.test",)), f"http://a.test:{port}/r1", dns)
    assert resp.status == 200 and resp.url == f"http://c.test:{port}/page"
    assert dns.calls == ["a.test", "b.test", "c.test"]  # each hop looked up once, then connected by address
    assert [host for _, host in web.seen] == [f"a.test:{port}", f"b.test:{port}", f"c.test:{port}"]


def test_redirect_to_a_refused_hop_stops_the_chain(web: ThreadingHTTPServer) -> None:
    port = web.server_address[1]
    web.redirects.update({"/r1": f"http://b.test:{port}/r2", "/r2": f"http://evil.test:{port}/page",  # type: ignore[attr-defined]
                          "/metrics": f"http://127.0.0.1:7900/metrics", "/out": "http://192.0.2.1/"})
    dns = StubDNS({"a.test": [["127.0.0.1"]], "b.test": [["127.0.0.1"]], "evil.test": [[METADATA]]})
    settings = JobSettings(allow_hosts=("*",))
    with pytest.raises(UnsafeInput, match=f"refused redirect to http://evil.test:{port}/page: .*metadata"):
        fetch(settings, f"http://a.test:{port}/r1", dns)
    assert [path for path, _ in web.seen] == ["/r1", "/r2"]
    with pytest.raises(UnsafeInput, match="refused redirect to http://127.0.0.1:7900/metrics: .*port band"):
        fetch(settings, f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(UnsafeInput, match="refused redirect to http://192.0.2.1/"):
        fetch(JobSettings(), f"http://127.0.0.1:{port}/out")


# --- TLS: SNI and certificate verification on the name ------------------------------------


def _ca_and_leaf(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a certificate for DNS name `name` only (no IP SAN:
    verification must use the name, not the pinned 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: x509.Name, key: Any, sign_key: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False,
                                              encipher_only=False, decipher_only=False), True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raftq test CA")])
    ca = build("raftq test CA", ca_name, ca_key, ca_key, True)
    leaf = build(name, ca_name, leaf_key, ca_key, False)
    paths = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths


def test_https_sends_sni_and_verifies_the_name_on_the_pinned_address(tmp_path: Path) -> None:
    ca, cert, key = _ca_and_leaf(tmp_path, "svc.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment]
    server, thread = _serve(server_tls)
    try:
        port = server.server_address[1]
        dns = StubDNS({"svc.test": [["127.0.0.1"], [METADATA]], "other.test": [["127.0.0.1"]]})
        settings = JobSettings(allow_hosts=("*.test",))
        client_tls = ssl.create_default_context(cafile=str(ca))
        resp = fetch(settings, f"https://svc.test:{port}/page", dns, tls=client_tls)
        assert resp.status == 200 and resp.body == b"hello"
        assert sni == ["svc.test"] and dns.calls == ["svc.test"]
        # Same address, another name: the certificate does not match it.
        with pytest.raises(JobError, match="CERTIFICATE_VERIFY_FAILED.*[Hh]ostname mismatch") as info:
            fetch(settings, f"https://other.test:{port}/page", dns, tls=client_tls)
        assert info.value.retryable is True
        # Without the test CA (the default context: system CAs) the certificate is not trusted.
        with pytest.raises(JobError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(settings, f"https://svc.test:{port}/page", StubDNS({"svc.test": [["127.0.0.1"]]}))
        assert [path for path, _ in server.seen] == ["/page"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- guarded addresses ----------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    f"http://{METADATA}/latest/meta-data/", "http://169.254.1.1/", "http://[fe80::1]/",
    "http://[fd00:ec2::254]/", "http://100.100.100.200/", f"http://[::ffff:{METADATA}]/",
])
def test_link_local_and_metadata_are_refused_even_under_star(url: str) -> None:
    for rules in (("*",), ("0.0.0.0/0", "::/0")):
        with pytest.raises(BadArgument, match="link-local or cloud metadata"):
            check_url(JobSettings(allow_hosts=rules), url)


def test_only_a_rule_as_narrow_as_the_guard_opens_it() -> None:
    check_url(JobSettings(allow_hosts=("*", METADATA)), f"http://{METADATA}/")
    link_local = JobSettings(allow_hosts=("169.254.0.0/16",))
    check_url(link_local, "http://169.254.1.1/")
    with pytest.raises(BadArgument, match="metadata"):
        check_url(link_local, f"http://{METADATA}/")  # the /16 does not name the metadata address
    check_url(JobSettings(allow_hosts=(f"{METADATA}:80",)), f"http://{METADATA}/")
    dns = StubDNS({"metadata.google.internal": [[METADATA]]})
    with pytest.raises(BadArgument, match="'metadata.google.internal' \\(169.254.169.254\\) is refused"):
        check_url(JobSettings(allow_hosts=("metadata.google.internal",)), "http://metadata.google.internal/",
                  resolver=dns)


def test_the_cluster_ports_are_refused_by_default() -> None:
    default = JobSettings()  # allow_hosts=("loopback",)
    for url in ("http://127.0.0.1:7900/metrics", "http://127.0.0.1:7700/", "http://127.0.0.2:7801/"):
        with pytest.raises(BadArgument, match="raftq's port band 7700-7999"):
            check_url(default, url)
    with pytest.raises(BadArgument, match="'localhost' \\(127.0.0.1\\) is refused"):
        check_url(default, "http://localhost:7900/", resolver=StubDNS({"localhost": [["127.0.0.1", "::1"]]}))
    with pytest.raises(BadArgument, match="port band"):
        check_url(JobSettings(allow_hosts=("*",)), "http://0.0.0.0:7900/")  # 0.0.0.0 connects to this host
    check_url(default, "http://127.0.0.1:8000/")  # the docs' static site stays reachable
    one_port = JobSettings(allow_hosts=("loopback", "127.0.0.1:7900"))
    check_url(one_port, "http://127.0.0.1:7900/metrics")
    with pytest.raises(BadArgument, match="port band"):
        check_url(one_port, "http://127.0.0.1:7901/metrics")
    # Nodes elsewhere: their client address and the band on their addresses.
    lan = JobSettings(allow_hosts=("10.0.0.0/8",), node_addrs=("10.0.0.5:17700",))
    for url in ("http://10.0.0.5:17700/", "http://10.0.0.5:7900/"):
        with pytest.raises(BadArgument, match="is refused"):
            check_url(lan, url)
    check_url(lan, "http://10.0.0.6:7900/")  # not a node: only the allowlist applies


def test_a_job_cannot_reach_the_nodes_client_port(web: ThreadingHTTPServer, tmp_path: Path) -> None:
    port = web.server_address[1]  # stands in for a node's client port outside the band
    settings = WorkerConfig(cluster=(f"127.0.0.1:{port}",), data_root=tmp_path).job_settings
    assert settings.node_addrs == (f"127.0.0.1:{port}",)
    for url in (f"http://127.0.0.1:{port}/page", f"http://localhost:{port}/page", f"http://127.0.0.3:{port}/"):
        with pytest.raises(BadArgument, match="is a port of this raftq cluster"):
            fetch(settings, url)
    ctx = JobContext("job-1", 1, {}, tmp_path / "work", type="test", settings=settings)
    with pytest.raises(BadArgument, match="is a port of this raftq cluster"):
        health.health_check({"probes": [{"tcp": f"127.0.0.1:{port}"}]}, ctx)
    assert web.seen == []
    opened = JobSettings(allow_hosts=("loopback", f"127.0.0.1:{port}"), node_addrs=settings.node_addrs)
    assert fetch(opened, f"http://127.0.0.1:{port}/page").status == 200


def test_port_rules_parse() -> None:
    rules = parse_allow_hosts(["127.0.0.1:7900", "[::1]:7901"])
    assert len(rules.ports) == 2 and not rules.nets
    for bad in ("localhost:7900", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:x"):
        with pytest.raises(HostRuleError):
            parse_allow_hosts([bad])
