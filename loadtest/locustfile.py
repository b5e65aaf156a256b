"""Locust load test for raftq: many concurrent submitters on the blocking client.

    locust -f loadtest/locustfile.py --headless -u 1000 -r 200 -t 60s \\
        --raftq-nodes 127.0.0.1:7700,127.0.0.1:7701,127.0.0.1:7702 --raftq-token "$RAFTQ_TOKEN"

(`make loadtest` starts a cluster and runs this through loadtest/run_locust.py.)

Each simulated user owns one `cluster.client.Client`: plain sockets, which
Locust's gevent monkey patching makes cooperative, so 1000 users are 1000 TCP
connections in one process (an asyncio client would not run inside Locust).
The client follows NOT_LEADER and retries through a failover with the same job
id, so a leader kill mid-run shows up as latency, not as failures.

Task mix (weights): submit 6, submit_many of 10 jobs 1, status (get) of one of
the user's jobs 2, result (wait for a final state, 5 s) 1.

SLO gate (an `events.quitting` listener sets the exit code to 1 when any is
missed, and prints which): failure ratio <= --slo-fail-ratio (default 0.01),
p95 of every request but the `result` long poll <= --slo-p95-ms (default 1000), aggregate rate >= --slo-min-rps
(default 100 requests/s).
"""
from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections import deque
from typing import Any, Callable

from locust import User, between, events, task
from locust.env import Environment
from locust.stats import StatsEntry

from cluster.client import Client
from cluster.errors import RaftqError, Timeout

log = logging.getLogger("raftq.locust")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--raftq-nodes", default="127.0.0.1:7700,127.0.0.1:7701,127.0.0.1:7702",
                        help="comma-separated client addresses of the raftq nodes")
    parser.add_argument("--raftq-token", default=os.environ.get("RAFTQ_TOKEN"),
                        help="a producer credential's token [default: env RAFTQ_TOKEN]")
    parser.add_argument("--slo-fail-ratio", type=float, default=0.01, help="max failed/total requests")
    parser.add_argument("--slo-p95-ms", type=float, default=1000.0, help="max p95 response time (ms)")
    parser.add_argument("--slo-min-rps", type=float, default=100.0, help="min aggregate requests/s")


class RaftqUser(User):
    """One connected client submitting jobs and checking on them."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        nodes = [a for a in opts.raftq_nodes.split(",") if a]
        # Each user starts at a random node: connections spread as real clients'
        # would, and followers' NOT_LEADER redirects are exercised.
        random.shuffle(nodes)
        self.client = Client(nodes, token=opts.raftq_token, timeout_s=15.0)
        self.ids: deque[str] = deque(maxlen=50)
        self.prefix = uuid.uuid4().hex[:16]
        self.n = 0

    def on_stop(self) -> None:
        self.client.close()

    def _call(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        result = None
        try:
            result = fn()
        except RaftqError as e:
            exc = e
        self.environment.events.request.fire(
            request_type="raftq", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=exc, context={})
        return result

    def _new_id(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n}"

    @task(6)
    def submit(self) -> None:
        job_id = self._call("submit", lambda: self.client.submit("util.noop", {"n": self.n}, id=self._new_id()))
        if job_id:
            self.ids.append(job_id)

    @task(1)
    def submit_many(self) -> None:
        jobs = [{"type": "util.noop", "args": {}, "id": self._new_id()} for _ in range(10)]
        ids = self._call("submit_many[10]", lambda: self.client.submit_many(jobs))
        if ids:
            self.ids.extend(ids[-2:])

    @task(2)
    def status(self) -> None:
        if self.ids:
            job_id = random.choice(self.ids)
            self._call("status", lambda: self.client.get(job_id))

    @task(1)
    def result(self) -> None:
        if not self.ids:
            return
        job_id = self.ids[0]

        def wait() -> Any:
            try:
                return self.client.result(job_id, timeout=5.0)
            except Timeout:
                # Not final in 5 s is an answer (no worker free yet), not a failure.
                return self.client.get(job_id)
        self._call("result", wait)


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    total = environment.stats.total
    if opts is None or total.num_requests == 0:
        if total.num_requests == 0:
            print("SLO FAIL: no requests were made")
            environment.process_exit_code = 1
        return
    # `result` is a long poll (up to 5 s while workers are behind): its time
    # measures the backlog, not the cluster's responsiveness, so the p95 gate
    # covers every other request.
    gated = StatsEntry(environment.stats, "gated", "", use_response_times_cache=False)
    for (name, _method), entry in environment.stats.entries.items():
        if name != "result":
            gated.extend(entry)
    p95 = gated.get_response_time_percentile(0.95) or 0.0
    rps = total.num_requests / max(1e-9, (total.last_request_timestamp or 0) - total.start_time)
    checks = [
        ("failure ratio", total.fail_ratio, "<=", opts.slo_fail_ratio),
        ("p95 ms (all but result)", p95, "<=", opts.slo_p95_ms),
        ("requests/s", rps, ">=", opts.slo_min_rps),
    ]
    failed = False
    for name, value, op, limit in checks:
        ok = value <= limit if op == "<=" else value >= limit
        failed |= not ok
        print(f"SLO {'ok  ' if ok else 'FAIL'} {name}: {value:.4g} (limit {op} {limit:g})")
    print(f"SLO summary: {total.num_requests} requests, {total.num_failures} failures, "
          f"p50 {total.get_response_time_percentile(0.5):.0f} ms, p95 {p95:.0f} ms (all but result), "
          f"{rps:.0f} req/s")
    environment.process_exit_code = 1 if failed else 0
