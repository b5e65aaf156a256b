"""`raftq top`: a live terminal view of the cluster, its queues, workers and failures.

Three parts, one concept each:
- `Collector` polls the existing read ops (`cluster_status` of every node,
  `stats`, `queues`, `workers`, the failed-job list) into a `Snapshot`;
  rates are differences between successive polls, so the first frame has none.
- `render` turns a snapshot into lines fitted to a width and height: tables
  are cut at the right edge, and when rows do not fit, the tables give up
  rows in turn (largest first, the nodes last) and say how many they hide.
- `run_live` draws frames on the alternate screen (cli/terminal.py) while a
  daemon thread polls, so `q`, Ctrl-C and SIGTERM are answered at once even
  when a node does not reply; `print_once` prints one snapshot as plain text.

Each node is asked for its own `cluster_status` through a client pinned to
its address, so an unreachable node shows as such instead of being answered
for by another node; lag is the highest commit index seen minus the node's
last applied index.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import click

from cli import output
from cli.terminal import Event, FullScreen, fit_line, printable
from cluster.errors import RaftqError
from cluster.ops import MAX_LIST_LIMIT
from replication.model import FINAL_STATES

if TYPE_CHECKING:
    from cluster.client import Client

# A node that does not answer within this long is shown unreachable; the
# frame does not wait longer for it.
NODE_TIMEOUT_S = 1.5
# Dead letters come back oldest first; at most this many pages are read per
# poll to find the newest (a huge dead-letter set must not make every poll heavy).
MAX_FAILED_PAGES = 3
MAX_RECENT_FAILURES = 50

FINISHED_STATES = tuple(sorted(FINAL_STATES))


@dataclass
class NodeView:
    id: int
    client: str
    role: str | None = None
    term: int | None = None
    commit_index: int | None = None
    last_applied: int | None = None
    lag: int | None = None
    error: str | None = None  # why it did not answer; None when it did


@dataclass
class QueueView:
    name: str
    jobs: dict[str, int]
    max_running: int | None
    rate_per_s: float | None
    in_per_s: float | None = None  # jobs that entered the queue per second, since the previous poll
    done_per_s: float | None = None  # jobs that finished per second, since the previous poll


@dataclass
class Snapshot:
    taken_at: float  # epoch seconds
    leader: str | None = None
    term: int | None = None
    nodes: list[NodeView] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # by state, all queues
    queues: list[QueueView] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # newest first
    failures_scanned_all: bool = True
    error: str | None = None  # the last poll failed: the data shown is from the poll before

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- polling


class QueueRates:
    """Jobs/s per queue from the counts of two successive polls.

    In: growth of the queue's held jobs; done: growth of its finished ones.
    Purging finished jobs (after `retention_s`) shrinks both, so while purges
    run these are lower bounds (never negative).
    """

    def __init__(self) -> None:
        self._previous: tuple[float, dict[str, tuple[int, int]]] | None = None

    def update(self, now: float, queues: list[QueueView]) -> None:
        current = {q.name: (sum(q.jobs.values()), sum(q.jobs.get(s, 0) for s in FINISHED_STATES)) for q in queues}
        if self._previous is not None and now > self._previous[0]:
            before_at, before = self._previous
            elapsed = now - before_at
            for q in queues:
                held, finished = current[q.name]
                held0, finished0 = before.get(q.name, (0, 0))
                q.in_per_s = max(0, held - held0) / elapsed
                q.done_per_s = max(0, finished - finished0) / elapsed
        self._previous = (now, current)


def _describe(exc: RaftqError) -> str:
    return output.one_line(exc.message)


class Collector:
    """Polls the cluster into Snapshots. Used by one thread at a time (it
    starts its own threads to ask the nodes in parallel)."""

    def __init__(self, client: Client, connect_node: Callable[[str], Client]) -> None:
        self._client = client
        self._connect_node = connect_node  # a client for one node address, timing out in NODE_TIMEOUT_S
        self._node_clients: dict[str, Client] = {}
        self._rates = QueueRates()
        self._last = Snapshot(taken_at=0.0)

    def collect(self) -> Snapshot:
        """A snapshot of the cluster now; raises the RaftqError of a failed read."""
        status = self._client.cluster_status()
        stats = self._client.stats()
        queues = [QueueView(q.get("queue", "?"), dict(q.get("jobs") or {}), q.get("max_running"),
                            q.get("rate_per_s")) for q in self._client.queues()]
        workers = self._client.workers()
        failures, scanned_all = self._recent_failures() if (stats.get("jobs") or {}).get("failed") else ([], True)
        self._rates.update(time.monotonic(), queues)
        self._last = Snapshot(
            taken_at=time.time(), leader=status.get("leader"), term=status.get("term"), nodes=self._nodes(status),
            jobs=dict(stats.get("jobs") or {}), queues=queues, workers=workers, failures=failures,
            failures_scanned_all=scanned_all)
        return self._last

    def poll(self) -> Snapshot:
        """Like collect, but a failed read gives the previous snapshot with the error."""
        try:
            return self.collect()
        except RaftqError as exc:
            self._last = replace(self._last, taken_at=time.time(), error=_describe(exc))
            return self._last

    def _recent_failures(self) -> tuple[list[dict[str, Any]], bool]:
        found: list[dict[str, Any]] = []
        cursor = None
        for _ in range(MAX_FAILED_PAGES):
            page = self._client.list(state="failed", limit=MAX_LIST_LIMIT, cursor=cursor)
            found.extend(page.get("jobs") or [])
            cursor = page.get("cursor")
            if cursor is None:
                break
        found.sort(key=lambda j: j.get("finished_at") or 0.0, reverse=True)
        return found[:MAX_RECENT_FAILURES], cursor is None

    def _nodes(self, status: dict[str, Any]) -> list[NodeView]:
        """Every member's own view, asked in parallel: a silent node costs one
        node timeout per poll, not one per node."""
        views = [NodeView(id=n.get("id") if isinstance(n.get("id"), int) else 0, client=str(n.get("client")))
                 for n in status.get("nodes") or [] if isinstance(n, dict)]
        askers = [threading.Thread(target=self._ask, args=(v,), daemon=True) for v in views]
        for t in askers:
            t.start()
        for t in askers:
            t.join()  # bounded: every node client gives up after its timeout
        commits = [v.commit_index for v in views if isinstance(v.commit_index, int)]
        for v in views:
            if commits and isinstance(v.last_applied, int):
                v.lag = max(0, max(commits) - v.last_applied)
        return views

    def _ask(self, view: NodeView) -> None:
        """Fill `view` from its node's own cluster_status, or set its error."""
        addr = view.client
        try:
            client = self._node_clients.get(addr) or self._node_clients.setdefault(addr, self._connect_node(addr))
            own = client.cluster_status()
        except RaftqError as exc:
            self._forget(addr)  # a fresh client next time: pinned to this node again
            view.error = _describe(exc)
            return
        if own.get("self") != view.id:
            # The client failed over to another node: this one did not answer.
            self._forget(addr)
            view.error = f"not answering (node {own.get('self')} answered instead)"
            return
        view.role = next((n.get("role") for n in own.get("nodes") or [] if n.get("id") == view.id), None)
        view.term, view.commit_index = own.get("term"), own.get("commit_index")
        view.last_applied = own.get("last_applied")

    def _forget(self, addr: str) -> None:
        client = self._node_clients.pop(addr, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        self._client.close()
        for addr in list(self._node_clients):
            self._forget(addr)


# ---------------------------------------------------------------- rendering


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _limits(q: QueueView) -> str:
    parts = []
    if q.max_running is not None:
        parts.append("paused" if q.max_running == 0 else f"max {q.max_running} running")
    if q.rate_per_s is not None:
        parts.append(f"{q.rate_per_s:g}/s")
    return ", ".join(parts) or "-"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _amounts(values: Any) -> str:
    if not isinstance(values, dict) or not values:
        return "-"
    return ",".join(f"{k}={_number(v)}" for k, v in sorted(values.items()))


def _capacity(worker: dict[str, Any]) -> str:
    """free/total of each resource (job slots included) for a worker that
    registered them, else the capacity it last reported."""
    free, total = worker.get("free"), worker.get("capacity")
    if not isinstance(free, dict):
        return _amounts(total)
    totals = {**(total if isinstance(total, dict) else {}), "slots": worker.get("slots")}
    return ",".join(f"{k}={_number(free[k])}/{_number(totals[k])}" for k in sorted(free)
                    if totals.get(k) is not None) or "-"


def _ago(ts: Any, now: float) -> str:
    return output.format_duration(now - ts) + " ago" if isinstance(ts, (int, float)) else "-"


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if text else ""


@dataclass
class _Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    empty: str  # shown instead of the table when it has no rows

    def lines(self, max_rows: int | None = None) -> list[str]:
        if not self.rows:
            return [self.title, f"  {self.empty}"]
        shown = self.rows if max_rows is None or max_rows >= len(self.rows) else self.rows[:max_rows]
        lines = [self.title, *output.render_table(self.headers, shown).splitlines()]
        if len(shown) < len(self.rows):
            lines.append(f"  ... {len(self.rows) - len(shown)} more")
        return lines

    def height(self, max_rows: int | None = None) -> int:
        return len(self.lines(max_rows))


def _tables(snap: Snapshot) -> list[_Table]:
    now = snap.taken_at
    with_errors = any(n.error is not None for n in snap.nodes)
    node_headers = ["ID", "CLIENT", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", *(["WHY"] if with_errors else [])]
    nodes = _Table("NODES", node_headers, [
        [str(n.id), n.client, n.role or "-", n.term, n.commit_index, n.last_applied, n.lag,
         *([""] if with_errors else [])] if n.error is None
        else [str(n.id), n.client, "unreachable", "-", "-", "-", "-", n.error]
        for n in snap.nodes], "no nodes known")
    queues = _Table("QUEUES", ["QUEUE", "QUEUED", "RUNNING", "WAITING", "FAILED", "IN/S", "DONE/S", "LIMITS"], [
        [q.name, q.jobs.get("queued", 0), q.jobs.get("running", 0),
         q.jobs.get("pending", 0) + q.jobs.get("scheduled", 0), q.jobs.get("failed", 0),
         _rate(q.in_per_s), _rate(q.done_per_s), _limits(q)]
        for q in snap.queues], "no queues yet")
    with_types = any("types" in w for w in snap.workers)
    # Types last: a worker may run dozens, and the right edge cuts them, not the other columns.
    worker_headers = ["NAME", "QUEUES", "CAPACITY", "RUNNING", "LAST SEEN", *(["TYPES"] if with_types else [])]
    workers = _Table("WORKERS", worker_headers, [
        [w.get("name"), ",".join(w.get("queues") or []), _capacity(w), len(w.get("running") or []),
         _ago(w.get("last_seen_at"), now), *([",".join(w.get("types") or []) or "-"] if with_types else [])]
        for w in snap.workers], "no live workers")
    failed_total = snap.jobs.get("failed", 0)
    scope = "" if snap.failures_scanned_all else f", newest of the first {MAX_FAILED_PAGES * MAX_LIST_LIMIT} scanned"
    failures = _Table(f"RECENT FAILURES (dead letters: {failed_total}{scope})",
                      ["FAILED", "ID", "TYPE", "QUEUE", "ERROR"], [
        [_ago(j.get("finished_at"), now), j.get("id"), j.get("type"), j.get("queue"), _first_line(j.get("error"))]
        for j in snap.failures], "none")
    return [nodes, queues, workers, failures]


def _header(snap: Snapshot, interval: float | None) -> list[str]:
    leader = snap.leader or "none (election running?)"
    live = sum(n for s, n in snap.jobs.items() if s not in FINAL_STATES)
    clock = time.strftime("%H:%M:%S", time.localtime(snap.taken_at)) if snap.taken_at else "-"
    refresh = f"  (every {interval:g}s, q quits)" if interval is not None else ""
    lines = [f"raftq top  {clock}  leader {leader}  term {snap.term if snap.term is not None else '-'}  "
             f"{live} live jobs{refresh}"]
    if snap.error is not None:
        lines.append(f"poll failed (showing the previous data): {snap.error}")
    return lines


def _fit_rows(tables: list[_Table], room: int) -> list[int]:
    """Rows per table so that all tables fit in `room` lines: take rows away
    one at a time from the table showing the most (so small tables stay
    whole), from the first table (the nodes) only when the others are empty."""
    rows = [len(t.rows) for t in tables]
    while sum(t.height(r) for t, r in zip(tables, rows)) > room and any(rows):
        others = [i for i in range(1, len(rows)) if rows[i]]
        rows[max(others, key=lambda i: rows[i]) if others else 0] -= 1
    return rows


def render(snap: Snapshot, width: int | None = None, height: int | None = None,
           interval: float | None = None) -> list[str]:
    """The frame for `snap`: at most `height` lines, each cut to `width`
    (None: as long as needed, for plain output)."""
    lines = _header(snap, interval)
    tables = _tables(snap)
    if height is None:
        shown = [len(t.rows) for t in tables]
    else:
        shown = _fit_rows(tables, height - len(lines) - len(tables))  # a blank line before each table
    for table, rows in zip(tables, shown):
        lines += ["", *table.lines(rows)]
    if height is not None:
        lines = lines[:height]
    lines = [printable(line) for line in lines]
    return lines if width is None else [fit_line(line, width) for line in lines]


# ---------------------------------------------------------------- running it


def print_once(collector: Collector, as_json: bool) -> None:
    snap = collector.collect()
    if as_json:
        output.emit_json(snap.to_json())
    else:
        click.echo("\n".join(render(snap)))


class _Poller(threading.Thread):
    """Collects a snapshot every `interval` s and wakes the screen; a daemon,
    so a request hanging on a dead node never delays the exit."""

    def __init__(self, collector: Collector, interval: float, screen: FullScreen) -> None:
        super().__init__(name="top-poller", daemon=True)
        self._collector, self._interval, self._screen = collector, interval, screen
        self.latest: Snapshot | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.latest = self._collector.poll()
            self._screen.wake()
            self.stopping.wait(self._interval)


def run_live(collector: Collector, interval: float) -> None:
    """Redraw until `q`, Ctrl-C or SIGTERM; the terminal is restored on every path."""
    with FullScreen() as screen:
        poller = _Poller(collector, interval, screen)
        poller.start()
        try:
            while True:
                columns, lines = screen.size()
                if poller.latest is None:
                    screen.draw([fit_line("raftq top: connecting...", columns)])
                else:
                    screen.draw(render(poller.latest, columns, lines, interval))
                event = screen.next_event()
                if event is Event.STOP or "q" in screen.pending_keys.lower():
                    return
                screen.pending_keys = ""
        except KeyboardInterrupt:
            return  # Ctrl-C is the other way to quit
        finally:
            poller.stopping.set()
