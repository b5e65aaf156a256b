"""`raftq top`'s frame and rates, and `--wait`'s progress lines, from plain data
(the live terminal and the cluster are in tests/integration/test_top.py and
test_progress.py)."""
from __future__ import annotations

import io

from cli.progress import PlainLines, describe
from cli.top import NodeView, QueueRates, QueueView, Snapshot, render

STATES = ("pending", "scheduled", "queued", "running", "succeeded", "failed", "cancelled")


def _counts(**given: int) -> dict[str, int]:
    return {s: given.get(s, 0) for s in STATES}


def _big_snapshot() -> Snapshot:
    return Snapshot(
        taken_at=1_000.0, leader="10.0.0.1:7700", term=4,
        nodes=[NodeView(1, "10.0.0.1:7700", "leader", 4, 90, 90, 0),
               NodeView(2, "10.0.0.2:7700", "follower", 4, 90, 88, 2),
               NodeView(3, "10.0.0.3:7700", error="no raftq node reachable at 10.0.0.3:7700")],
        jobs=_counts(queued=300, failed=20),
        queues=[QueueView(f"queue-{i:02d}", _counts(queued=10), None, None) for i in range(30)],
        workers=[{"name": f"worker-{i}", "queues": ["default"], "capacity": {"cpu": 4.0}, "running": ["a"],
                  "last_seen_at": 999.0} for i in range(10)],
        failures=[{"id": f"job-{i}", "type": "util.fail", "queue": "default", "finished_at": 990.0 - i,
                   "error": f"JobError: boom {i}\nTraceback line"} for i in range(20)],
    )


def test_frame_fits_the_terminal_and_says_what_it_hides() -> None:
    lines = render(_big_snapshot(), width=70, height=24, interval=2.0)
    assert len(lines) == 24
    assert all(len(line) <= 69 for line in lines)  # one column short of the edge
    assert lines[0].startswith("raftq top  ") and "leader 10.0.0.1:7700  term 4  300 live jobs" in lines[0]
    text = "\n".join(lines)
    # The small nodes table stays whole; the big ones give up rows and say so.
    assert "10.0.0.3:7700  unreachable" in text and "follower" in text
    assert "more" in text and "queue-00" in text and "worker-0" in text and "job-0" in text
    assert "Traceback line" not in text  # an error shows its first line only


def test_plain_frame_has_every_row() -> None:
    text = "\n".join(render(_big_snapshot()))
    assert "queue-29" in text and "worker-9" in text and "job-19" in text and "more" not in text
    assert "RECENT FAILURES (dead letters: 20)" in text
    assert text.index("job-0 ") < text.index("job-19 ")  # newest first, as the snapshot holds them


def test_tiny_terminal_gets_a_frame_that_fits() -> None:
    lines = render(_big_snapshot(), width=10, height=3)
    assert len(lines) == 3 and all(len(line) <= 9 for line in lines)


def test_queue_rates_come_from_successive_polls_and_are_never_negative() -> None:
    rates = QueueRates()
    first = [QueueView("q", _counts(queued=10, succeeded=5), None, None)]
    rates.update(100.0, first)
    assert first[0].in_per_s is None and first[0].done_per_s is None  # one poll: no rate yet
    second = [QueueView("q", _counts(queued=14, running=2, succeeded=9), None, None)]
    rates.update(102.0, second)
    assert second[0].in_per_s == 5.0 and second[0].done_per_s == 2.0  # 10 more held, 4 more finished, in 2 s
    purged = [QueueView("q", _counts(queued=14, running=2), None, None)]  # finished jobs purged
    rates.update(103.0, purged)
    assert purged[0].in_per_s == 0.0 and purged[0].done_per_s == 0.0


def test_worker_types_and_free_capacity_are_shown_when_reported() -> None:
    snap = Snapshot(taken_at=1_000.0, workers=[
        {"name": "w", "queues": ["a", "b"], "types": ["math.primes", "util.sleep"],
         "capacity": {"cpu": 4.0, "mem_mb": 512}, "slots": 4, "free": {"cpu": 1.5, "mem_mb": 256, "slots": 2},
         "running": ["x", "y"],
         "last_seen_at": 998.0}])
    text = "\n".join(render(snap))
    assert "TYPES" in text and "math.primes,util.sleep" in text
    assert "cpu=1.5/4,mem_mb=256/512,slots=2/4" in text
    assert "TYPES" not in "\n".join(render(Snapshot(taken_at=1.0, workers=[{"name": "old", "capacity": {}}])))


def test_piped_progress_prints_a_line_only_when_state_or_progress_changes() -> None:
    out = io.StringIO()
    lines = PlainLines(out, "j1")
    for view in ({"state": "queued"}, {"state": "queued"},
                 {"state": "running", "progress": None},
                 {"state": "running", "progress": [0.25, "step 1"]},
                 {"state": "running", "progress": [0.25, "step 1"]},
                 {"state": "running", "progress": [0.5, "step 2"]}):
        lines.show(view)
    assert out.getvalue().splitlines() == ["j1 queued", "j1 running", "j1 running 25% step 1", "j1 running 50% step 2"]
    assert describe({"state": "queued", "progress": [0.5, "stale"]}) == "queued"  # progress of a running job only


def test_job_data_cannot_drive_the_terminal() -> None:
    hostile = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
    snap = Snapshot(taken_at=1_000.0, jobs={"failed": 1}, failures=[
        {"id": "j" + hostile, "type": "t", "queue": "q", "finished_at": 999.0, "error": "boom" + hostile}])
    for lines in (render(snap), render(snap, width=200, height=40)):
        text = "\n".join(lines)
        assert not any(c in text for c in "\x1b\x07\x9b"), text
        assert "boom?]0;pwned??[2J?31m" in text
    assert describe({"state": "running", "progress": [0.5, "step" + hostile]}) == "running 50% step?]0;pwned??[2J?31m"
