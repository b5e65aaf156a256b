"""The leader's alert duty: evaluate the rules, record transitions, deliver them.

Every `[alerting] interval_s` the leader reads the replicated state (rules,
queue counts, the ready heaps, recent finishes, the worker registry,
schedules; replication/state/alerts.py) and, for rules that need it, its own
view of the other nodes (a TCP connect to each one's client port). It decides
each rule with cluster/alert_rules.py and, when a rule's verdict differs from
its recorded state (after `--for` for a firing), *proposes* an
`alert_transition`. Nothing is sent for a transition that is not in the log,
and the machine records a repeated transition once, so a condition that stays
true fires once and a failover cannot double a firing.

Delivery follows the log, not the evaluation: every transition the state
holds as pending is sent by the current leader (per rule, in seq order, so a
resolution never overtakes its firing), retried with backoff
(cluster/alert_delivery.py), then marked with an `alert_delivered` proposal.
A new leader finds the unmarked ones and sends them again: at-least-once,
with the `NAME/SEQ` id for the receiver to deduplicate.

What lives only in this leader's memory, and is rebuilt by the next one: when
a condition started holding (`--for` restarts after a failover: a firing may
come later, never twice) and the schedule counters `schedule_missed` follows.

Nothing here blocks the loop: state reads are bounded (state/alerts.py
SCAN_LIMIT), probes and sends are awaited with timeouts, sends run in
threads, at most MAX_CONCURRENT_SENDS at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cluster import alert_delivery
from cluster.alert_rules import Condition, Signals, parse
from cluster.errors import RaftqError

if TYPE_CHECKING:
    from cluster.server import Node

log = logging.getLogger("raftq.alerts")

MAX_CONCURRENT_SENDS = 8
PROBE_TIMEOUT_S = 1.0


class AlertEvaluator:
    """The alert duty of one node; runs while the node leads."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg.alerting
        self._conditions: dict[str, Condition | None] = {}  # condition text -> parsed (None: unparseable)
        self._held_since: dict[str, int] = {}  # rule -> wall ms its condition started holding
        self._proposing: set[str] = set()      # rules with a transition proposal in flight
        self._deliveries: dict[str, asyncio.Task[None]] = {}  # rule -> its delivery task
        self._sends = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        self._schedule_counts: dict[str, tuple[int, int]] = {}
        self._missed_latest: set[str] = set()
        self._leading = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                if self.node.raft.is_leader():
                    if not self._leading:
                        self._take_over()
                    await self.evaluate()
                elif self._leading:
                    self.stop()
            except RaftqError as exc:
                log.debug("alert round not completed: %s", exc)
            except Exception:
                log.exception("alert evaluation failed; continuing")

    def stop(self) -> None:
        """Leadership is gone (or the node stops): forget this term's memory,
        cancel sends (the next leader resends what was not marked delivered)."""
        self._leading = False
        for task in self._deliveries.values():
            task.cancel()
        self._deliveries.clear()
        self._held_since.clear()
        self._proposing.clear()
        self._schedule_counts.clear()
        self._missed_latest.clear()

    def _take_over(self) -> None:
        """A new term of leading: a schedule_missed rule recorded as firing stays
        so until this leader sees that schedule fire."""
        self._leading = True
        with self.node.raft.reading() as machine:
            rules = machine.alerts.view()
        for rule in rules:
            cond = self._condition(rule["when"])
            if rule["firing"] and cond is not None and cond.func == "schedule_missed" and cond.name:
                self._missed_latest.add(cond.name)

    def _condition(self, text: str) -> Condition | None:
        if text not in self._conditions:
            try:
                self._conditions[text] = parse(text)
            except RaftqError as exc:  # only a log written by another version could hold one
                log.error("alert condition %r cannot be evaluated: %s", text, exc.message)
                self._conditions[text] = None
        return self._conditions[text]

    # ---------------------------------------------------------------- a round

    async def evaluate(self) -> None:
        """One round: read, decide, propose transitions, start deliveries."""
        now_ms = int(time.time() * 1000)
        with self.node.raft.reading() as machine:
            rules = machine.alerts.view()
        conditions = [(r, self._condition(r["when"])) for r in rules]
        self._forget_all_but(rules)
        signals = await self._read_signals([c for _, c in conditions if c is not None], now_ms)
        proposals = []
        for rule, cond in conditions:
            if cond is None or rule["name"] in self._proposing:
                continue
            outcome = cond.evaluate(signals)
            state = self._decide(rule, outcome.true, now_ms)
            if state is not None:
                proposals.append(self._propose(rule["name"], state, outcome.detail))
        await asyncio.gather(*proposals)
        with self.node.raft.reading() as machine:  # what was just recorded goes out now, not a round later
            pending = {t["name"] for t in machine.alerts.pending_view()}
        for name in pending:
            task = self._deliveries.get(name)
            if task is None or task.done():
                self._deliveries[name] = asyncio.create_task(self._deliver_rule(name))

    def _forget_all_but(self, rules: list[dict[str, Any]]) -> None:
        """Keep memory only for the rules that exist (they come and go)."""
        names = {r["name"] for r in rules}
        texts = {r["when"] for r in rules}
        self._held_since = {n: t for n, t in self._held_since.items() if n in names}
        self._conditions = {t: c for t, c in self._conditions.items() if t in texts}
        self._deliveries = {n: t for n, t in self._deliveries.items() if not t.done()}

    def _decide(self, rule: dict[str, Any], true: bool, now_ms: int) -> str | None:
        """The transition to propose for `rule`, if any (`--for` held in memory)."""
        name = rule["name"]
        if not true:
            self._held_since.pop(name, None)
            return "resolved" if rule["firing"] else None
        if rule["firing"]:
            return None
        since = self._held_since.setdefault(name, now_ms)
        return "firing" if now_ms - since >= rule["for_ms"] else None

    async def _propose(self, name: str, state: str, detail: str) -> None:
        self._proposing.add(name)
        try:
            result = await self.node.committer.commit(
                {"op": "alert_transition", "name": name, "state": state, "detail": detail[:1000]})
            if result.get("recorded"):
                log.info("alert %s %s (seq %d): %s", name, state, result["seq"], detail)
        except RaftqError as exc:  # not recorded: the next round decides again
            log.debug("alert %s %s not recorded: %s", name, state, exc)
        finally:
            self._proposing.discard(name)

    async def _read_signals(self, conditions: list[Condition], now_ms: int) -> Signals:
        """What this round's rules need. Each read takes the apply lock alone and
        is bounded (state/alerts.py SCAN_LIMIT), and the loop runs other work
        between reads, so many rules never add up to one long stall; the
        figures may therefore come from consecutive states, which a verdict
        taken every second can afford."""
        reading = self.node.raft.reading
        signals = Signals(now_ms=now_ms, nodes=len(self.node.cfg.nodes))
        funcs = {c.func for c in conditions}
        if funcs & {"depth", "no_worker"}:
            with reading() as machine:
                signals.queues = {q["queue"]: q["jobs"] for q in machine.queues()}
        for c in conditions:
            if c.func == "oldest_ready_age" and c.queue is not None and c.queue not in signals.oldest_ready_ms:
                await asyncio.sleep(0)
                with reading() as machine:
                    oldest = machine.alerts.oldest_ready_ms(c.queue)
                if oldest is not None:
                    signals.oldest_ready_ms[c.queue] = oldest
            if c.window_ms is not None and c.window_ms not in signals.finishes:
                await asyncio.sleep(0)
                with reading() as machine:
                    signals.finishes[c.window_ms] = machine.alerts.finish_counts(now_ms - c.window_ms)
        if "no_worker" in funcs:
            with reading() as machine:
                signals.worker_queues = frozenset(q for w in machine.workers() for q in w["queues"])
        if "schedule_missed" in funcs:
            with reading() as machine:
                signals.schedules = {s["name"]: (s["fired"], s["missed"], s["next_fire_ms"], s["paused"])
                                     for s in machine.schedules()}
            self._follow_schedules(signals.schedules)
            signals.missed_latest = frozenset(self._missed_latest)
        if any(c.needs_peers for c in conditions):
            signals.down_nodes = await self._unreachable_nodes()
        return signals

    def _follow_schedules(self, schedules: dict[str, tuple[int, int, int, bool]]) -> None:
        """Whether each schedule's latest firing was missed: a missed count that
        grew says yes, a fired count that grew (alone) says no."""
        for name, (fired, missed, _, _) in schedules.items():
            before = self._schedule_counts.get(name)
            self._schedule_counts[name] = (fired, missed)
            if before is None:
                continue
            if missed > before[1]:
                self._missed_latest.add(name)
            elif fired > before[0]:
                self._missed_latest.discard(name)

    async def _unreachable_nodes(self) -> list[int]:
        """Ids of the other nodes whose client port does not accept a TCP
        connection from here within PROBE_TIMEOUT_S."""
        others = [n for n in self.node.cfg.nodes if n.id != self.node.node_id]
        reached = await asyncio.gather(*(_reachable(n.client) for n in others))
        return [n.id for n, ok in zip(others, reached) if not ok]

    # --------------------------------------------------------------- delivery

    async def _deliver_rule(self, name: str) -> None:
        """Send `name`'s pending transitions in seq order, each until it is sent,
        and record each delivery; ends when none is pending or leadership is lost."""
        try:
            await self._deliver_pending(name)
        except Exception:  # a bug: say so; the next round starts a new task
            log.exception("alert %s: delivery failed", name)

    async def _deliver_pending(self, name: str) -> None:
        while self.node.raft.is_leader():
            with self.node.raft.reading() as machine:
                mine = [t for t in machine.alerts.pending_view() if t["name"] == name]
            if not mine:
                return
            transition = mine[0]
            what = f"{name}/{transition['seq']} ({transition['state']})"
            send = alert_delivery.sender(self.cfg, transition, self.node.node_id)

            async def send_bounded() -> None:
                async with self._sends:
                    await send()

            def owed(seq: int = transition["seq"]) -> bool:
                if not self.node.raft.is_leader():
                    return False
                with self.node.raft.reading() as machine:
                    return machine.alerts.is_pending(seq)

            attempts = await alert_delivery.deliver(send_bounded, self.cfg, what, owed)
            if attempts is None:
                continue  # removed meanwhile (or no longer ours: the loop ends)
            log.info("alert %s delivered (attempt %d)", what, attempts)
            if not await self._mark_delivered(transition["seq"], what):
                return

    async def _mark_delivered(self, seq: int, what: str) -> bool:
        """Record the delivery, retrying while this node leads (sending again
        would be the only other way out). False: leadership is gone, and the
        next leader will send it again (the receiver deduplicates by id)."""
        while self.node.raft.is_leader():
            try:
                await self.node.committer.commit({"op": "alert_delivered", "seq": seq})
                return True
            except RaftqError as exc:
                log.warning("alert %s sent but not yet marked delivered: %s", what, exc)
            await asyncio.sleep(self.cfg.retry_base_s)
        return False


async def _reachable(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # it was reachable; how it closed does not matter
    return True
