"""Alerting end to end on a real 3-node cluster (docs/alerting.md).

Receivers are real: an HTTP server in a thread of this test and an aiosmtpd
SMTP server. One depth condition drives three rules (a webhook, an email, and
a webhook whose receiver refuses its first three POSTs). Each fires once; the
leader is SIGKILLed between firing and resolution; the queue is drained; the
new leader delivers each resolution once. Rules and `raftq alert` are also
driven through the real command line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from tests.alert_receivers import WebhookReceiver, smtp_server
from tests.integration.harness import REPO, TOKEN, LocalCluster, wait_until

WAIT_S = 60.0  # deadlines for what must happen (the box may be loaded); never a measurement
QUEUE = "mail"


def _alerting(smtp_port: int) -> str:
    return "\n".join(["[alerting]", f"smtp_port = {smtp_port}", 'from = "raftq@cluster.test"', "interval_s = 0.2",
                      "retry_base_s = 0.1", "retry_max_s = 1.0", "timeout_s = 5.0"])


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--cluster", ",".join(cluster.client_addrs)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RAFTQ_TOKEN": TOKEN})


def _all_delivered(cluster: LocalCluster, nodes: list[int]) -> Callable[[], bool]:
    def check() -> bool:
        with cluster.client(nodes) as c:
            return all(a["undelivered"] == 0 for a in c.alerts())
    return check


def test_firing_and_resolution_are_each_notified_once_across_a_leader_kill(make_cluster) -> None:
    with smtp_server() as (smtp_port, mailbox), WebhookReceiver().running() as hook, \
            WebhookReceiver(fail_first=3).running() as flaky:
        cluster: LocalCluster = make_cluster(extra_config=_alerting(smtp_port))
        add = _cli(cluster, "alert", "add", "deep-hook", "--when", f"depth({QUEUE}) > 2", "--webhook", hook.url)
        assert add.returncode == 0 and add.stdout.strip() == "alert deep-hook added", add.stderr
        with cluster.client() as c:
            c.alert_add("deep-mail", f"depth({QUEUE}) > 2", email="ops@example.com")
            c.alert_add("deep-flaky", f"depth({QUEUE}) > 2", webhook=flaky.url)
            # One entry, so every evaluation sees none or all five.
            c.submit_many([{"id": f"job-{i}", "type": "util.noop", "args": {}, "queue": QUEUE} for i in range(5)])

        # Fired once each, the flaky receiver after its refusals; recorded as delivered.
        wait_until(lambda: hook.bodies() and mailbox.received() and flaky.bodies(), WAIT_S, "the three firings")
        leader = cluster.leader_id()
        wait_until(_all_delivered(cluster, cluster.alive()), WAIT_S, "the firings recorded as delivered")
        assert flaky.tries() == 4
        listed = _cli(cluster, "alert", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {a["name"]: a["firing"] for a in json.loads(listed.stdout)} == {
            "deep-flaky": True, "deep-hook": True, "deep-mail": True}

        # Between firing and resolution: the leader dies, then the queue drains.
        cluster.kill(leader)
        survivors = cluster.alive()
        new_leader = cluster.leader_id(among=survivors)
        with cluster.client(survivors) as c:
            for i in range(5):
                assert c.cancel(f"job-{i}") == "cancelled"

        wait_until(lambda: len(hook.bodies()) == 2 and len(mailbox.received()) == 2 and len(flaky.bodies()) == 2,
                   WAIT_S, "the three resolutions")
        wait_until(_all_delivered(cluster, survivors), WAIT_S, "the resolutions recorded as delivered")
        # The killed node returns and catches up: every replica agrees, and no
        # leader found anything left to send.
        cluster.start(leader)
        cluster.wait_replicas_equal([1, 2, 3], timeout=WAIT_S)

        for receiver in (hook, flaky):
            firing, resolved = receiver.bodies()
            assert (firing["state"], resolved["state"]) == ("firing", "resolved")
            assert firing["id"] != resolved["id"] and resolved["seq"] > firing["seq"]
            assert firing["node"] == leader and resolved["node"] == new_leader
            assert firing["detail"] == f"depth({QUEUE}) = 5" and resolved["detail"] == f"depth({QUEUE}) = 0"
            assert resolved["at"] >= firing["at"]
        assert {b["id"] for b in flaky.attempts} == {b["id"] for b in flaky.bodies()}  # retries resent the same ids
        subjects = [m["Subject"] for m in mailbox.received()]
        assert subjects == [f"[raftq] deep-mail firing: depth({QUEUE}) > 2",
                            f"[raftq] deep-mail resolved: depth({QUEUE}) > 2"]
        assert len(hook.bodies()) == len(flaky.bodies()) == len(mailbox.received()) == 2


def test_the_command_line_refuses_a_bad_rule_in_one_line(make_cluster) -> None:
    cluster: LocalCluster = make_cluster()
    bad = _cli(cluster, "alert", "add", "x", "--when", "depth(q) >> 1", "--webhook", "http://127.0.0.1:1/")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: depth needs a comparison: depth(...) > N (one of > >= < <=); got '> > 1'"]
    gone = _cli(cluster, "alert", "remove", "nope")
    assert gone.returncode == 1 and gone.stderr.strip() == "error: no alert 'nope'"
    with cluster.client() as c:
        assert c.alerts() == []
