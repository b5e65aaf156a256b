"""The dashboard's HTTP side on a real node, without a browser: its static
files, the JSON API's credential and role checks, and the bounds on what a
request may send (cluster/dashboard/routes.py)."""
from __future__ import annotations

import json
import secrets
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from cluster.tls import ClientTls, make_dev_certs
from tests.integration.conftest import clusters
from tests.integration.harness import LocalCluster
from tests.integration.test_tls import TlsCluster

ADMIN = secrets.token_urlsafe(24)
PRODUCER = secrets.token_urlsafe(24)
SCOPED = secrets.token_urlsafe(24)
HTTP_TOKEN = secrets.token_urlsafe(24)
CONFIG = f"""http_token = "{HTTP_TOKEN}"
[[credentials]]
name = "admin"
token = "{ADMIN}"
roles = ["admin"]
[[credentials]]
name = "producer"
token = "{PRODUCER}"
roles = ["producer"]
[[credentials]]
name = "scoped"
token = "{SCOPED}"
roles = ["producer"]
queues = ["mine"]
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("dashapi")):
        yield make(nodes=1, extra_config=CONFIG)


def http(cluster: LocalCluster, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One raw request (so that any head can be sent): status, headers, body."""
    host, port = cluster.http_addrs[0].rsplit(":", 1)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {cluster.http_addrs[0]}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, payload


def api(cluster: LocalCluster, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {} if token is None else {"X-Raftq-Token": token}
    raw = b""
    if body is not None:
        raw = json.dumps(body).encode()
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(raw))})
    status, _, payload = http(cluster, "POST" if body is not None else "GET", f"/dashboard/api/{path}",
                              headers, raw)
    return status, json.loads(payload)


def test_the_page_is_served_to_anyone_without_the_http_token(node: LocalCluster) -> None:
    status, headers, body = http(node, "GET", "/dashboard/")
    assert status == 200 and b"<script src=\"app.js\"" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert http(node, "GET", "/dashboard/app.js")[1]["content-type"].startswith("text/javascript")
    assert http(node, "GET", "/dashboard")[:2][0] == 301
    for path in ("/dashboard/../cluster.toml", "/dashboard/static/app.js", "/dashboard/nope.js"):
        assert http(node, "GET", path)[0] == 404, path
    assert http(node, "GET", "/dashboards")[0] == 401  # not the dashboard's: the port's rules
    assert http(node, "OPTIONS", "/dashboard/api/requeue")[0] == 405
    # The port's other paths still need the http_token.
    assert http(node, "GET", "/metrics")[0] == 401
    assert http(node, "GET", "/metrics", {"Authorization": f"Bearer {HTTP_TOKEN}"})[0] == 200


def test_every_api_call_needs_a_cluster_credential(node: LocalCluster) -> None:
    assert api(node, "overview", None) == (401, {"error": "UNAUTHORIZED", "message":
                                                 "this API needs a cluster credential in the X-Raftq-Token header"})
    assert api(node, "overview", "wrong-" + ADMIN)[0] == 401
    # The scrapers' token opens nothing here.
    assert api(node, "overview", HTTP_TOKEN)[0] == 401
    status, overview = api(node, "overview", PRODUCER)
    assert status == 200 and overview["cluster"]["leader"] == node.client_addrs[0]


def test_reads_and_actions_get_the_client_ports_role_checks(node: LocalCluster) -> None:
    with node.client() as c:
        job_id = c.submit("t.fails", {"n": 1}, queue="mine", max_attempts=1)
        leased = c.lease("w", ["mine"], wait_s=5)[0]
        c.fail(job_id, leased["attempt"], "boom", retryable=False, lease_token=leased["lease_token"])
        c.submit("t.other", {}, queue="not-mine")
    status, refusal = api(node, "requeue", PRODUCER, {"ids": [job_id]})
    assert status == 403 and "needs the admin role" in refusal["message"]
    assert api(node, f"job?id={job_id}", PRODUCER)[1]["state"] == "failed"
    # A scoped credential stays inside its queues, as on the client port.
    assert api(node, "jobs?queue=mine", SCOPED)[0] == 200
    status, refusal = api(node, "jobs", SCOPED)
    assert status == 403 and "limited to queues mine" in refusal["message"]
    assert api(node, "schedules", SCOPED)[0] == 403
    status, overview = api(node, "overview", SCOPED)  # counts of every queue, ages of its own only
    assert status == 200 and {q["queue"] for q in overview["queues"]} >= {"mine", "not-mine"}
    assert api(node, "requeue", ADMIN, {"ids": [job_id]}) == (200, {"requeued": [job_id], "skipped": []})
    assert api(node, f"job?id={job_id}", PRODUCER)[1]["state"] == "queued"
    assert api(node, "job?id=no-such-job", PRODUCER)[0] == 404
    assert api(node, "schedule", ADMIN, {"name": "nope", "action": "explode"})[0] == 400
    assert api(node, "schedule", ADMIN, {"name": "nope", "action": "pause"})[0] == 404


def test_job_values_reach_json_intact_and_lists_carry_previews(node: LocalCluster) -> None:
    with node.client() as c:
        raw_id = c.submit("t.bytes", {"blob": b"\x00\xff", "big": "x" * 5000}, queue="previews")
    job = api(node, f"job?id={raw_id}", PRODUCER)[1]
    assert job["args"] == {"blob": {"bytes_hex": "00ff"}, "big": "x" * 5000}
    page = api(node, "jobs?queue=previews", PRODUCER)[1]
    preview = page["jobs"][0]["args"]
    assert preview.startswith('{"blob": {"bytes_hex": "00ff"}') and preview.endswith("…") and len(preview) == 201


def test_request_bounds(node: LocalCluster) -> None:
    auth = {"X-Raftq-Token": ADMIN}
    status, _, body = http(node, "POST", "/dashboard/api/requeue", {**auth, "Content-Length": str(10**7)})
    assert status == 413 and b"at most 65536" in body
    assert http(node, "POST", "/dashboard/api/requeue", auth)[0] == 400  # no Content-Length
    status, _, body = http(node, "POST", "/dashboard/api/requeue", {**auth, "Content-Length": "3"}, b"[1]")
    assert status == 400 and b"JSON object" in body
    assert http(node, "GET", "/dashboard/api/requeue", auth)[0] == 405
    assert http(node, "GET", "/dashboard/api/nope", auth)[0] == 404
    assert api(node, "jobs?limit=abc", ADMIN)[0] == 400
    # The port's head cap holds here too, and a body that stops short is not waited for.
    assert http(node, "GET", "/dashboard/api/overview", {**auth, "X-Pad": "a" * 20_000})[0] == 400
    assert http(node, "POST", "/dashboard/api/requeue", {**auth, "Content-Length": "100"}, b'{"ids"')[0] == 400


def test_over_mutual_tls_the_page_needs_a_client_certificate(tmp_path: Path) -> None:
    certs = make_dev_certs(tmp_path / "pki", ["127.0.0.1"])
    extra = f'tls_client_ca = "{certs.ca}"\nhttp_mtls = true\n{CONFIG}'
    cluster = TlsCluster(tmp_path / "cluster", certs, ClientTls(ca=certs.ca, cert=certs.client_cert,
                                                                key=certs.client_key), extra=extra, nodes=1)
    cluster.start()
    try:
        cluster.leader_id(timeout=30)
        url = f"https://{cluster.http_addrs[0]}/dashboard/"
        bare = ssl.create_default_context(cafile=certs.ca)
        with_cert = ssl.create_default_context(cafile=certs.ca)
        with_cert.load_cert_chain(certs.client_cert, certs.client_key)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10, context=bare)
        refused.value.close()
        assert refused.value.code == 401
        with urllib.request.urlopen(url, timeout=10, context=with_cert) as reply:
            assert reply.status == 200
        request = urllib.request.Request(url + "api/overview", headers={"X-Raftq-Token": PRODUCER})
        with urllib.request.urlopen(request, timeout=10, context=with_cert) as reply:
            overview = json.loads(reply.read())
        # No peer is asked over HTTPS (the node holds no CA for them), and the page says why.
        assert overview["peers"] == {"polled": False, "nodes": {},
                                     "reason": "the HTTP ports speak HTTPS: peers are not polled"}
    finally:
        cluster.stop()
