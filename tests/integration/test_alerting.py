"""Alerting end to end on a real 3-node cluster (docs/alerting.md).

Receivers are real: an HTTP server in a thread of this test and an aiosmtpd
SMTP server. One depth condition drives four rules: a webhook, an email, a
webhook whose receiver refuses its first three POSTs, and one whose receiver
refuses everything until the leader is dead. Each fires once; the leader is
SIGKILLed between firing and resolution; the queue is drained; the new leader
delivers each resolution once, and the firing the old leader could not. A
`node_down` rule fires for the dead leader and resolves once it is back. Rules and `raftq alert` are also
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


def _delivered(cluster: LocalCluster, nodes: list[int], names: set[str]) -> Callable[[], bool]:
    """Have the rules `names` nothing left to deliver (as the leader's state says)?"""
    def check() -> bool:
        with cluster.client(nodes) as c:
            return all(a["undelivered"] == 0 for a in c.alerts() if a["name"] in names)
    return check


def test_firing_and_resolution_are_each_notified_once_across_a_leader_kill(make_cluster) -> None:
    with smtp_server() as (smtp_port, mailbox), WebhookReceiver().running() as hook, \
            WebhookReceiver(fail_first=3).running() as flaky, WebhookReceiver(fail_first=10**9).running() as late, \
            WebhookReceiver().running() as downs:
        cluster: LocalCluster = make_cluster(extra_config=_alerting(smtp_port))
        add = _cli(cluster, "alert", "add", "deep-hook", "--when", f"depth({QUEUE}) > 2", "--webhook", hook.url)
        assert add.returncode == 0 and add.stdout.strip() == "alert deep-hook added", add.stderr
        with cluster.client() as c:
            c.alert_add("deep-mail", f"depth({QUEUE}) > 2", email="ops@example.com")
            c.alert_add("deep-flaky", f"depth({QUEUE}) > 2", webhook=flaky.url)
            c.alert_add("deep-late", f"depth({QUEUE}) > 2", webhook=late.url)
            # One entry, so every evaluation sees none or all five.
            c.submit_many([{"id": f"job-{i}", "type": "util.noop", "args": {}, "queue": QUEUE} for i in range(5)])

        # Fired once each, the flaky receiver after its refusals; recorded as delivered.
        wait_until(lambda: hook.bodies() and mailbox.received() and flaky.bodies(), WAIT_S, "the three firings")
        leader = cluster.leader_id()
        wait_until(_delivered(cluster, cluster.alive(), {"deep-hook", "deep-mail", "deep-flaky"}), WAIT_S,
                   "the firings recorded as delivered")
        wait_until(lambda: late.tries() >= 2, WAIT_S, "the late receiver refusing retries")
        assert flaky.tries() == 4
        with cluster.client() as c:  # every node has long been up: nothing to tell yet
            c.alert_add("node-down", "node_down", webhook=downs.url)
        listed = _cli(cluster, "alert", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {a["name"]: (a["firing"], a["undelivered"]) for a in json.loads(listed.stdout)} == {
            "deep-flaky": (True, 0), "deep-hook": (True, 0), "deep-mail": (True, 0), "deep-late": (True, 1),
            "node-down": (False, 0)}

        # Between firing and resolution: the leader dies, then the queue drains.
        cluster.kill(leader)
        survivors = cluster.alive()
        new_leader = cluster.leader_id(among=survivors)
        late.fail_first = 0  # from now on it accepts: only the new leader can have sent it
        with cluster.client(survivors) as c:
            for i in range(5):
                assert c.cancel(f"job-{i}") == "cancelled"

        wait_until(lambda: all(len(r) == 2 for r in (hook.bodies(), mailbox.received(), flaky.bodies(),
                                                      late.bodies())), WAIT_S, "the resolutions")
        wait_until(_delivered(cluster, survivors, {"deep-hook", "deep-mail", "deep-flaky", "deep-late"}), WAIT_S,
                   "the resolutions recorded as delivered")
        # The killed node returns and catches up: every replica agrees, and no
        # leader found anything left to send.
        [down] = wait_until(downs.bodies, WAIT_S, "node_down firing")
        assert (down["state"], down["node"], down["detail"]) == (
            "firing", new_leader, f"unreachable from the leader: node {leader}")
        cluster.start(leader)
        wait_until(lambda: len(downs.bodies()) == 2, WAIT_S, "node_down resolved")
        assert downs.bodies()[1]["state"] == "resolved"
        cluster.wait_replicas_equal([1, 2, 3], timeout=WAIT_S)

        for receiver in (hook, flaky):
            firing, resolved = receiver.bodies()
            assert (firing["state"], resolved["state"]) == ("firing", "resolved")
            assert firing["id"] != resolved["id"] and resolved["seq"] > firing["seq"]
            assert firing["node"] == leader and resolved["node"] == new_leader
            # The rule resolves at the first round that sees depth <= 2: while
            # the five cancels land, that can be 2, 1 or 0.
            assert firing["detail"] == f"depth({QUEUE}) = 5" and resolved["detail"] in {
                f"depth({QUEUE}) = {n}" for n in (0, 1, 2)}
            assert resolved["at"] >= firing["at"]
        assert {b["id"] for b in flaky.attempts} == {b["id"] for b in flaky.bodies()}  # retries resent the same ids
        # The firing the old leader never got through, resumed by the new one, before its resolution.
        late_firing, late_resolved = late.bodies()
        assert (late_firing["state"], late_firing["node"]) == ("firing", new_leader)
        assert (late_resolved["state"], late_resolved["node"]) == ("resolved", new_leader)
        assert {b["id"] for b in late.attempts} == {late_firing["id"], late_resolved["id"]}
        subjects = [m["Subject"] for m in mailbox.received()]
        assert subjects == [f"[raftq] deep-mail firing: depth({QUEUE}) > 2",
                            f"[raftq] deep-mail resolved: depth({QUEUE}) > 2"]
        assert len(hook.bodies()) == len(flaky.bodies()) == len(late.bodies()) == len(mailbox.received()) == 2


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
