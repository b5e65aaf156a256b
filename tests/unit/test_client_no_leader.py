"""What a call that found no leader says, from what each node did in it
(the real nodes' side: tests/integration/test_cli_mistakes.py)."""
from __future__ import annotations

from cluster.client import _Attempts, _ConnectionLost, _Nodes
from cluster.errors import NoLeader, NotLeader, Unavailable

A, B, C = "127.0.0.1:7700", "127.0.0.1:7701", "127.0.0.1:7702"


def _final(*outcomes: tuple[str, Exception]) -> Exception:
    attempts = _Attempts(_Nodes([A, B, C]), deadline=10.0, clock=lambda: 0.0, budget_s=3.0)
    for addr, exc in outcomes:
        attempts.on_error(exc, addr)
    return attempts.final()


def _no_leader(node: int, term: int) -> NoLeader:
    return NoLeader("no leader (election in progress); retry", {"node": node, "term": term})


def _refused(addr: str) -> _ConnectionLost:
    return _ConnectionLost(addr, "[Errno 111] Connection refused")


def test_one_leaderless_node_of_three_is_no_quorum_naming_its_view_and_the_unreachable() -> None:
    err = _final((A, _no_leader(1, 7)), (B, _refused(B)), (C, _refused(C)))
    assert isinstance(err, NoLeader)
    assert err.message.startswith(f"no quorum: 1 of 3 nodes reachable (node 1: no leader, term 7); "
                                  f"unreachable: {B}, {C}")
    assert "refused" not in err.message


def test_a_majority_answering_without_a_leader_is_an_election_not_lost_quorum() -> None:
    err = _final((A, _no_leader(1, 7)), (B, _no_leader(2, 7)), (C, _refused(C)))
    assert isinstance(err, NoLeader) and "no quorum" not in err.message
    assert err.message.startswith("no leader (election running?): 2 of 3 nodes reachable (node 1: no leader, "
                                  f"term 7; node 2: no leader, term 7); unreachable: {C}")


def test_each_node_counts_as_it_did_last() -> None:
    err = _final((B, _refused(B)), (C, _refused(C)), (B, _no_leader(2, 3)), (A, _refused(A)))
    assert err.message.startswith(f"no quorum: 1 of 3 nodes reachable (node 2: no leader, term 3); "
                                  f"unreachable: {A}, {C}")
    err = _final((A, _no_leader(1, 3)), (B, _no_leader(2, 3)), (C, _refused(C)), (A, _refused(A)))
    assert err.message.startswith("no quorum: 1 of 3")


def test_no_verdict_on_a_node_not_tried() -> None:
    err = _final((A, _no_leader(1, 7)), (B, _refused(B)))
    assert "no quorum" not in err.message and "nodes reachable" not in err.message


def test_a_node_naming_a_leader_is_no_quorum_loss() -> None:
    err = _final((A, NotLeader("not the leader", {"leader": B})), (B, _refused(B)), (C, _refused(C)))
    assert "no quorum" not in err.message


def test_nothing_reachable_stays_unavailable() -> None:
    err = _final((A, _refused(A)), (B, _refused(B)), (C, _refused(C)))
    assert isinstance(err, Unavailable) and "no raftq node reachable" in err.message
