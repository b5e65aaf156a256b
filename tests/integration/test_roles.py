"""Roles and queue scopes against a real node: every op from every role,
scoped credentials kept inside their queues, the legacy token, and failed
hellos paced per source address."""
from __future__ import annotations

import secrets
import socket
from collections import Counter
from typing import Any, Callable, Iterator

import pytest

from cluster import protocol
from cluster.client import Client
from cluster.errors import Forbidden, RaftqError
from tests.integration.conftest import clusters
from tests.integration.harness import TOKEN, LocalCluster

# name -> (roles, queues or None); each gets a fresh random token.
CREDENTIALS: dict[str, tuple[list[str], list[str] | None]] = {
    "producer": (["producer"], None),
    "worker": (["worker"], None),
    "admin": (["admin"], None),
    "producer-worker": (["producer", "worker"], None),
    "scoped-producer": (["producer"], ["mine"]),
    "scoped-worker": (["worker"], ["mine"]),
    "scoped-admin": (["admin"], ["mine", "also-mine"]),
}
TOKENS = {name: secrets.token_urlsafe(24) for name in CREDENTIALS}

# What each role may do, written out here rather than read from cluster/roles.py.
READS = {"get", "wait", "list", "stats", "queues", "workers", "schedule_list", "cluster_status", "digest"}
ALLOWED = {
    "producer": {"submit", "submit_many", "cancel"} | READS,
    "worker": {"lease", "heartbeat", "complete", "complete_many", "fail", "cluster_status", "workers"},
    "admin": {"retry", "requeue_failed", "queue_limit", "schedule_add", "schedule_remove", "schedule_pause",
              "schedule_resume", "alert_add", "alert_list", "alert_remove"} | READS,
}
ALLOWED["producer-worker"] = ALLOWED["producer"] | ALLOWED["worker"]
ALLOWED["legacy"] = set().union(*ALLOWED.values())


def _credentials_toml() -> str:
    lines = []
    for name, (roles, queues) in CREDENTIALS.items():
        lines += ["[[credentials]]", f'name = "{name}"', f'token = "{TOKENS[name]}"',
                  f"roles = [{', '.join(repr(r) for r in roles)}]".replace("'", '"')]
        if queues is not None:
            lines.append(f"queues = [{', '.join(repr(q) for q in queues)}]".replace("'", '"'))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def roles_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("roles")):
        yield make(nodes=1, extra_config=_credentials_toml())


def client(cluster: LocalCluster, name: str) -> Client:
    return Client(cluster.client_addrs, token=TOKEN if name == "legacy" else TOKENS[name], timeout_s=20.0)


def _args(op: str, who: str) -> dict[str, Any]:
    """Arguments that an allowed op runs with (answering ok, NOT_FOUND or
    BAD_REQUEST), without touching what another credential's run relies on."""
    job = {"id": f"matrix-{who}", "type": "util.noop", "queue": "matrix"}
    return {
        "submit": {"job": job},
        "submit_many": {"jobs": [{**job, "id": f"matrix-many-{who}"}]},
        "get": {"id": "no-such-job"},
        "wait": {"id": "no-such-job", "timeout_s": 0},
        "cancel": {"id": "no-such-job"},
        "retry": {"id": "no-such-job"},
        "list": {"queue": "matrix", "limit": 1},
        "stats": {}, "cluster_status": {}, "digest": {}, "queues": {}, "workers": {}, "schedule_list": {},
        "lease": {"worker": f"w-{who}", "queues": ["matrix-empty"], "max": 1, "wait_s": 0},
        "heartbeat": {"worker": f"w-{who}", "leases": []},
        "complete": {"id": "no-such-job", "attempt": 1, "result": None},
        "complete_many": {"items": [{"id": "no-such-job", "attempt": 1, "result": None}]},
        "fail": {"id": "no-such-job", "attempt": 1, "error": "x"},
        "requeue_failed": {"ids": ["no-such-job"]},
        "queue_limit": {"queue": "matrix-limits"},
        "schedule_add": {"schedule": {"name": f"matrix-{who}", "every_ms": 60_000, "paused": True,
                                      "job": {"type": "util.noop", "queue": "matrix"}}},
        "schedule_remove": {"name": "no-such-schedule"},
        "schedule_pause": {"name": "no-such-schedule"},
        "schedule_resume": {"name": "no-such-schedule"},
        "alert_add": {"name": f"matrix-{who}", "when": "depth(matrix) > 1000000", "webhook": "http://127.0.0.1:9/"},
        "alert_list": {},
        "alert_remove": {"name": "no-such-alert"},
    }[op]


OPS = sorted(protocol.OPS - {"hello"})


@pytest.mark.parametrize("who", ["producer", "worker", "admin", "producer-worker", "legacy"])
def test_every_op_from_every_role_is_run_or_forbidden(roles_cluster: LocalCluster, who: str) -> None:
    ran, forbidden = set(), set()
    with client(roles_cluster, who) as c:
        for op in OPS:
            try:
                c.request(op, _args(op, who))
            except Forbidden as exc:
                assert op in exc.message and "role" in exc.message, exc.message
                forbidden.add(op)
                continue
            except RaftqError:
                pass  # NOT_FOUND and the like: the handler ran
            ran.add(op)
    assert ran == ALLOWED[who]
    assert forbidden == set(OPS) - ALLOWED[who]


def test_a_refused_op_leaves_the_connection_serving(roles_cluster: LocalCluster) -> None:
    with client(roles_cluster, "worker") as c:
        with pytest.raises(Forbidden, match="submit: credential 'worker' \\(worker\\) may not run it; "
                                            "it needs the producer role"):
            c.submit("util.noop", id="worker-may-not")
        assert c.cluster_status()["leader"]  # same client, same connection
    with client(roles_cluster, "legacy") as c:
        with pytest.raises(RaftqError, match="no job"):
            c.get("worker-may-not")  # nothing was proposed


# ---- queue scope --------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs(roles_cluster: LocalCluster) -> dict[str, str]:
    """A job in the scoped credentials' queue and one outside it."""
    with client(roles_cluster, "legacy") as c:
        return {"mine": c.submit("util.noop", id="scope-mine", queue="mine"),
                "other": c.submit("util.noop", id="scope-other", queue="other")}


def _forbidden(call: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(Forbidden) as info:
        call()
    assert fragment in info.value.message, info.value.message


def test_a_scoped_producer_stays_inside_its_queues(roles_cluster: LocalCluster, jobs: dict[str, str]) -> None:
    with client(roles_cluster, "scoped-producer") as c:
        assert c.submit("util.noop", id="scoped-in", queue="mine") == "scoped-in"
        _forbidden(lambda: c.submit("util.noop", id="scoped-out", queue="other"), "not 'other'")
        _forbidden(lambda: c.submit("util.noop", id="scoped-default"), "not 'default'")
        _forbidden(lambda: c.submit_many([{"type": "util.noop", "id": "many-in", "queue": "mine"},
                                          {"type": "util.noop", "id": "many-out", "queue": "other"}]), "not 'other'")
        # An existing id is answered with that job's state, a dependency decides the outcome: both are reads.
        _forbidden(lambda: c.submit("util.noop", id=jobs["other"], queue="mine"), "is in queue 'other'")
        _forbidden(lambda: c.submit("util.noop", id="dep", queue="mine", depends_on=[jobs["other"]]),
                   "is in queue 'other'")
        assert c.get(jobs["mine"])["queue"] == "mine"
        _forbidden(lambda: c.get(jobs["other"]), "job 'scope-other' is in queue 'other'")
        _forbidden(lambda: c.result(jobs["other"], timeout=0), "is in queue 'other'")
        _forbidden(lambda: c.cancel(jobs["other"]), "is in queue 'other'")
        assert [j["id"] for j in c.list(queue="mine")["jobs"]] == ["scope-mine", "scoped-in"]
        _forbidden(lambda: c.list(queue="other"), "not 'other'")
        _forbidden(lambda: c.list(), "name one with 'queue'")
        with pytest.raises(RaftqError, match="no job"):
            c.get("never-submitted")  # an unknown id is NOT_FOUND, as for anyone
    with client(roles_cluster, "legacy") as c:
        for job_id in ("scoped-out", "scoped-default", "many-in", "many-out", "dep"):
            with pytest.raises(RaftqError, match="no job"):
                c.get(job_id)
        assert c.get(jobs["other"])["state"] == "queued"  # the refused cancel did nothing


FORGED = "0" * 32  # the scope check refuses before any token is compared


def test_a_scoped_worker_leases_and_reports_only_inside(roles_cluster: LocalCluster, jobs: dict[str, str]) -> None:
    with client(roles_cluster, "scoped-worker") as c:
        _forbidden(lambda: c.lease("scoped-w", ["mine", "other"], wait_s=0), "not 'other'")
        _forbidden(lambda: c.lease("scoped-w", ["default"], wait_s=0), "not 'default'")
        _forbidden(lambda: c.request("lease", {"worker": "scoped-w", "wait_s": 0}), "not 'default'")
        _forbidden(lambda: c.complete(jobs["other"], 1, "forged", lease_token=FORGED), "is in queue 'other'")
        _forbidden(lambda: c.fail(jobs["other"], 1, "forged", lease_token=FORGED), "is in queue 'other'")
        forged = {"id": jobs["other"], "attempt": 1, "lease_token": FORGED}
        _forbidden(lambda: c.complete_many([{**forged, "result": None}]), "is in queue 'other'")
        _forbidden(lambda: c.heartbeat("scoped-w", [forged]), "is in queue 'other'")
        leased = c.lease("scoped-w", ["mine"], max=10, wait_s=0)
        assert {j["id"] for j in leased} <= {"scope-mine", "scoped-in"} and leased


def test_a_scoped_admin_manages_only_its_queues(roles_cluster: LocalCluster, jobs: dict[str, str]) -> None:
    with client(roles_cluster, "legacy") as c:
        c.schedule_add("outside", "util.noop", every=60, queue="other", paused=True)
    with client(roles_cluster, "scoped-admin") as c:
        assert c.queue_limit("also-mine", max_running=3)["max_running"] == 3
        _forbidden(lambda: c.queue_limit("other", max_running=0), "not 'other'")
        _forbidden(lambda: c.requeue_failed(all=True), "instead of 'all'")
        _forbidden(lambda: c.requeue_failed(queue="other"), "not 'other'")
        _forbidden(lambda: c.requeue_failed(ids=[jobs["other"]]), "is in queue 'other'")
        _forbidden(lambda: c.retry(jobs["other"]), "is in queue 'other'")
        assert c.schedule_add("inside", "util.noop", every=60, queue="mine", paused=True)["created"]
        _forbidden(lambda: c.schedule_add("out", "util.noop", every=60, queue="other"), "not 'other'")
        _forbidden(lambda: c.schedule_resume("outside"), "not 'other'")
        _forbidden(lambda: c.schedule_remove("outside"), "not 'other'")
        _forbidden(lambda: c.schedules(), "shows every queue")
        assert c.schedule_pause("inside")["paused"]
        assert c.stats()["node_id"] == 1  # aggregate reads show no job: allowed


# ---- failed hellos --------------------------------------------------------------


def _connect(cluster: LocalCluster, source: str) -> socket.socket:
    host, port = cluster.client_addrs[0].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))


def _send_hello(s: socket.socket, token: str) -> None:
    s.sendall(protocol.encode_frame(protocol.request(1, "hello", protocol.hello_args(token))))


def _answer(s: socket.socket) -> str:
    """The code of the hello's answer ("OK" or an error code), or CLOSED."""
    decoder = protocol.FrameDecoder()
    while data := s.recv(65536):
        for reply in decoder.feed(data):
            return "OK" if "ok" in reply else reply["err"][0]
    return "CLOSED"


def _hello_from(cluster: LocalCluster, source: str, token: str) -> str:
    with _connect(cluster, source) as s:
        _send_hello(s, token)
        return _answer(s)


def test_failed_hellos_are_paced_per_source(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(nodes=1, extra_config="hello_timeout_s = 3.0")
    # Every connection is open before the first guess goes out, so all their
    # hello deadlines end within 3 s of it.
    socks = [_connect(cluster, "127.0.0.3") for _ in range(40)]
    try:
        for i, s in enumerate(socks):
            _send_hello(s, f"guess-{i}")
        answers = Counter(_answer(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    # One guess evaluated at once, then one per 0.5 s slot before the
    # deadlines (about 6); the rest refused unevaluated.
    assert answers["UNAUTHORIZED"] <= 10, answers
    assert answers["OVERLOADED"] >= 20, answers
    assert set(answers) <= {"UNAUTHORIZED", "OVERLOADED", "TIMEOUT"}, answers
    # An address that never failed is not slowed; the guessing address still
    # gets in with the right token, in its turn.
    assert _hello_from(cluster, "127.0.0.4", TOKEN) == "OK"
    assert _hello_from(cluster, "127.0.0.3", "one-more-guess") == "UNAUTHORIZED"  # books the next slot
    with _connect(cluster, "127.0.0.3") as s:
        # A request pipelined behind the paced hello is served once it passes.
        s.sendall(protocol.encode_frame(protocol.request(1, "hello", protocol.hello_args(TOKEN)))
                  + protocol.encode_frame(protocol.request(2, "stats", {})))
        decoder, replies = protocol.FrameDecoder(), []
        while len(replies) < 2 and (data := s.recv(65536)):
            replies += decoder.feed(data)
    assert [r["id"] for r in replies] == [1, 2] and all("ok" in r for r in replies), replies
