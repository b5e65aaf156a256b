"""TLS and mutual TLS on the client and HTTP ports, with real handshakes
against real node processes (certificates made here, by cryptography).

Two TLS clusters are shared by the module: `tls_cluster` (one node, server
TLS, /health and /metrics behind a bearer token) and `mtls_cluster` (three
nodes, client certificates required on both ports). The plaintext cluster of
conftest's `module_cluster` is the "TLS client, plain port" case.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from cli.dev import dev_token
from cluster.client import AsyncClient, Client
from cluster.config import ConfigError, load_config
from cluster.errors import Unauthorized
from cluster.tls import ClientTls, DevCerts, TlsError, make_dev_certs
from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess, free_ports, wait_until

HTTP_TOKEN = "scrape-token-0123456789abcdef"


class TlsCluster(LocalCluster):
    """A LocalCluster whose nodes serve TLS; its own clients use `client_tls`."""

    def __init__(self, root: Path, certs: DevCerts, client_tls: ClientTls, extra: str = "", **kwargs: Any) -> None:
        tls_config = f'tls_cert = "{certs.node_cert}"\ntls_key = "{certs.node_key}"\n{extra}'
        super().__init__(root, extra_config=tls_config, **kwargs)
        self.client_tls = client_tls

    def client(self, node_ids: list[int] | None = None, timeout_s: float = 20.0) -> Client:
        addrs = [self.client_addrs[i - 1] for i in (node_ids or range(1, self.n + 1))]
        return Client(addrs, token=TOKEN, timeout_s=timeout_s, tls=self.client_tls)

    def node_client(self, node_id: int) -> Client:
        return Client([self.client_addrs[node_id - 1]], token=TOKEN, timeout_s=5.0, tls=self.client_tls)


def _started(cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster.start()
    try:
        cluster.leader_id(timeout=30)
    except AssertionError:
        for i in range(1, cluster.n + 1):
            print(f"--- node {i} log ---\n{cluster.log_tail(i)}")
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DevCerts]:
    root = tmp_path_factory.mktemp("pki")
    return {"good": make_dev_certs(root / "good", ["127.0.0.1"]),
            "other": make_dev_certs(root / "other", ["127.0.0.1"]),  # a CA the nodes do not know
            "localhost": make_dev_certs(root / "localhost", ["localhost"])}  # no IP in its SAN


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, DevCerts]) -> Iterator[LocalCluster]:
    good = pki["good"]
    yield from _started(TlsCluster(tmp_path_factory.mktemp("tls"), good, ClientTls(ca=good.ca), nodes=1,
                                   extra=f'http_token = "{HTTP_TOKEN}"'))


@pytest.fixture(scope="module")
def mtls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, DevCerts]) -> Iterator[LocalCluster]:
    good = pki["good"]
    yield from _started(TlsCluster(tmp_path_factory.mktemp("mtls"), good, _with_cert(good), nodes=3,
                                   extra=f'tls_client_ca = "{good.ca}"\nhttp_mtls = true'))


def _with_cert(certs: DevCerts, ca: Path | None = None) -> ClientTls:
    return ClientTls(ca=ca or certs.ca, cert=certs.client_cert, key=certs.client_key)


def _raftq(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAFTQ_TOKEN": TOKEN, **(env or {})})


def _tls_env(certs: DevCerts, client_cert: bool = False) -> dict[str, str]:
    env = {"RAFTQ_TLS_CA": str(certs.ca)}
    if client_cert:
        env |= {"RAFTQ_TLS_CERT": str(certs.client_cert), "RAFTQ_TLS_KEY": str(certs.client_key)}
    return env


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


# ---------------------------------------------------------------- client port


def test_tls_clients_submit_and_read(tls_cluster: LocalCluster) -> None:
    with tls_cluster.client() as c:
        job_id = c.submit("text.wordcount", {"text": "over tls"})
        assert c.get(job_id)["state"] == "queued"

    async def run() -> str:
        async with AsyncClient(tls_cluster.client_addrs, TOKEN, tls=ClientTls(ca=tls_cluster.client_tls.ca)) as ac:
            return (await ac.get(job_id))["state"]

    assert asyncio.run(run()) == "queued"


def test_plaintext_client_is_told_the_node_speaks_tls(tls_cluster: LocalCluster) -> None:
    addr = tls_cluster.client_addrs[0]
    # A TlsError, not the Unavailable that ends a retry budget: raised at the first attempt.
    with pytest.raises(TlsError, match=f"the node at {addr} speaks TLS: pass --tls-ca"):
        with Client([addr], TOKEN, timeout_s=30) as c:
            c.stats()

    async def run() -> None:
        async with AsyncClient([addr], TOKEN, timeout_s=30) as ac:
            await ac.stats()

    with pytest.raises(TlsError, match="speaks TLS"):
        asyncio.run(run())
    line = _one_error_line(_raftq("stats", "--cluster", addr))
    assert f"the node at {addr} speaks TLS: pass --tls-ca" in line


def test_tls_client_against_a_plain_port_is_told_so(module_cluster: LocalCluster, pki: dict[str, DevCerts]) -> None:
    addr = module_cluster.client_addrs[0]
    with pytest.raises(TlsError, match=f"the node at {addr} does not speak TLS"):
        with Client([addr], TOKEN, timeout_s=30, tls=ClientTls(ca=pki["good"].ca)) as c:
            c.stats()
    line = _one_error_line(_raftq("stats", "--cluster", addr, env=_tls_env(pki["good"])))
    assert "does not speak TLS" in line


def test_a_node_certificate_from_an_unknown_ca_is_refused(tls_cluster: LocalCluster,
                                                          pki: dict[str, DevCerts]) -> None:
    addr = tls_cluster.client_addrs[0]
    with pytest.raises(TlsError, match=f"the certificate of the node at {addr} is not trusted"):
        with Client([addr], TOKEN, timeout_s=30, tls=ClientTls(ca=pki["other"].ca)) as c:
            c.stats()
    line = _one_error_line(_raftq("stats", "--cluster", addr, env=_tls_env(pki["other"])))
    assert "is not trusted" in line and "--tls-ca" in line


def test_a_certificate_must_name_the_address_dialled(tmp_path: Path, pki: dict[str, DevCerts]) -> None:
    only_localhost = pki["localhost"]
    cluster = TlsCluster(tmp_path, only_localhost, ClientTls(ca=only_localhost.ca), nodes=1)
    cluster.start()
    try:
        addr = cluster.client_addrs[0]
        wait_until(lambda: _accepts(addr), 30, "the node to listen")
        with pytest.raises(TlsError, match=f"the certificate of the node at {addr} is not valid for that address"):
            with cluster.client() as c:
                c.stats()
    finally:
        cluster.stop()


def _accepts(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_mutual_tls_requires_a_client_certificate_from_the_ca(mtls_cluster: LocalCluster,
                                                             pki: dict[str, DevCerts]) -> None:
    good, addrs = pki["good"], mtls_cluster.client_addrs
    with Client(addrs[:1], TOKEN, timeout_s=20, tls=_with_cert(good)) as c:  # learns the rest, follows the leader
        job_id = c.submit("text.wordcount", {"text": "mutual"})
        assert c.get(job_id)["id"] == job_id

    with pytest.raises(Unauthorized, match="requires a client certificate"):
        with Client(addrs, TOKEN, timeout_s=30, tls=ClientTls(ca=good.ca)) as c:
            c.stats()
    with pytest.raises(TlsError, match="did not accept our client certificate"):
        with Client(addrs, TOKEN, timeout_s=30, tls=_with_cert(pki["other"], ca=good.ca)) as c:
            c.stats()

    async def run(tls: ClientTls) -> None:
        async with AsyncClient(addrs, TOKEN, timeout_s=30, tls=tls) as ac:
            await ac.stats()

    with pytest.raises(TlsError, match="did not accept our client certificate"):
        asyncio.run(run(_with_cert(pki["other"], ca=good.ca)))
    with pytest.raises(Unauthorized, match="requires a client certificate"):
        asyncio.run(run(ClientTls(ca=good.ca)))

    line = _one_error_line(_raftq("stats", "--cluster", addrs[0], env=_tls_env(good)))
    assert "requires a client certificate (mutual TLS): pass --tls-cert and --tls-key" in line
    out = _raftq("stats", "--json", "--cluster", addrs[0], env=_tls_env(good, client_cert=True))
    assert out.returncode == 0, out.stderr
    assert "queues" in json.loads(out.stdout)


def test_a_worker_over_mutual_tls_runs_a_job(mtls_cluster: LocalCluster, pki: dict[str, DevCerts],
                                            tmp_path: Path) -> None:
    good = pki["good"]
    worker = WorkerProcess(mtls_cluster, "tls-worker", ["--data-root", str(tmp_path), "--tls-ca", str(good.ca),
                                                        "--tls-cert", str(good.client_cert),
                                                        "--tls-key", str(good.client_key)])
    try:
        with mtls_cluster.client() as c:
            job_id = c.submit("text.wordcount", {"text": "one two three"}, queue="default")
            view = c.result(job_id, timeout=60)
        assert view["state"] == "succeeded", view
        assert view["result"]["words"] == 3
    finally:
        worker.stop()


# ---------------------------------------------------------------- HTTP port


def _https(addr: str, path: str, ca: Path, token: str | None = None,
           cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    request = urllib.request.Request(f"https://{addr}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_and_metrics_over_tls_need_the_token(tls_cluster: LocalCluster, pki: dict[str, DevCerts]) -> None:
    addr, ca = tls_cluster.http_addrs[0], pki["good"].ca
    code, body = _https(addr, "/health", ca, HTTP_TOKEN)
    assert code == 200 and json.loads(body)["role"] == "leader"
    code, body = _https(addr, "/metrics", ca, HTTP_TOKEN)
    assert code == 200 and "raftq_is_leader 1.0" in body
    assert _https(addr, "/health", ca)[0] == 401
    assert _https(addr, "/metrics", ca, "wrong-token-0123456789abcdef")[0] == 401
    with pytest.raises(OSError):  # plain HTTP is not served (the node closes the connection)
        urllib.request.urlopen(f"http://{addr}/health", timeout=10)


def test_health_with_mutual_tls_needs_a_client_certificate(mtls_cluster: LocalCluster,
                                                           pki: dict[str, DevCerts]) -> None:
    good = pki["good"]
    addr = mtls_cluster.http_addrs[0]
    code, body = _https(addr, "/health", good.ca, cert=(good.client_cert, good.client_key))
    assert code == 200 and json.loads(body)["node_id"] == 1
    code, body = _https(addr, "/health", good.ca)
    assert code == 401 and "client certificate" in body


# ---------------------------------------------------------------- configuration


def test_unusable_tls_files_are_one_line_config_errors(tls_cluster: LocalCluster, pki: dict[str, DevCerts]) -> None:
    cfg = load_config(tls_cluster.config_path)
    good, other = pki["good"], pki["other"]
    cases = [
        ({"tls_key": other.node_key}, f"tls_key: the key in '{other.node_key}' does not match the certificate"),
        ({"tls_cert": good.node_cert.with_name("missing.pem")}, "tls_cert: file '.*missing.pem' does not exist"),
        ({"tls_client_ca": good.node_key}, "tls_client_ca: '.*' holds no PEM CA certificate"),
        ({"tls_key": None}, "tls_cert and tls_key go together"),
        ({"http_token": "short"}, "http_token: must be 16"),
        ({"http_mtls": True}, "http_mtls: client certificates on the HTTP port need tls_client_ca"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            dataclasses.replace(cfg, **change)
    broken = tls_cluster.root / "broken.toml"
    broken.write_text(tls_cluster.config_path.read_text().replace(str(good.node_key), str(other.node_key)))
    line = _one_error_line(_raftq("node", "--config", str(broken), "--id", "1"))
    assert "tls_key: the key in" in line and "does not match" in line


# ---------------------------------------------------------------- raftq dev --tls


def _free_dev_base() -> int:
    """A base port whose one-node `raftq dev` layout (BASE, +100, +200) is free now."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + 200 > 65535:
            continue
        try:
            for port in (base, base + 100, base + 200):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range for raftq dev")


def test_dev_tls_starts_a_mutual_tls_cluster_and_prints_its_environment(tmp_path: Path) -> None:
    base, data = _free_dev_base(), tmp_path / "dev"
    dev = subprocess.Popen([sys.executable, "-m", "cli.main", "dev", "--tls", "--nodes", "1", "--workers", "1",
                            "--data-dir", str(data), "--port", str(base)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {"RAFTQ_CLUSTER": f"127.0.0.1:{base}", "RAFTQ_TLS_CA": str(data / "tls" / "ca.pem"),
           "RAFTQ_TLS_CERT": str(data / "tls" / "client.pem"), "RAFTQ_TLS_KEY": str(data / "tls" / "client.key")}
    try:
        # raftq dev makes its own credentials: use the producer's.
        wait_until(lambda: (data / "cluster.toml").exists(), 60, "raftq dev to write its config")
        env["RAFTQ_TOKEN"] = dev_token(load_config(data / "cluster.toml"), "producer")
        wait_until(lambda: _raftq("cluster", "status", env=env).returncode == 0, 60, "raftq dev --tls to answer")
        out = _raftq("submit", "text.wordcount", "--arg", "text=dev over tls", "--wait", env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["words"] == 3
        plain = _raftq("stats", env={"RAFTQ_CLUSTER": env["RAFTQ_CLUSTER"], "RAFTQ_TOKEN": env["RAFTQ_TOKEN"]})
        assert "speaks TLS" in _one_error_line(plain)
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
        output = dev.communicate(timeout=60)[0] or ""
    assert dev.returncode == 0, output
    assert (f"export RAFTQ_TLS_CA={data / 'tls' / 'ca.pem'} RAFTQ_TLS_CERT={data / 'tls' / 'client.pem'} "
            f"RAFTQ_TLS_KEY={data / 'tls' / 'client.key'}") in output
    assert "tls_client_ca" in (data / "cluster.toml").read_text()
