"""The systems `make bench` compares, behind one small interface.

Each `System` can make a producer (an object with `enqueue()` -> job handle
and `enqueue_batch(n)`, the system's own way to enqueue n jobs at once, used
from ONE thread), run a round trip (enqueue one no-op job and wait for
its completion), count completed jobs, and start/stop its workers. Peers get
the same treatment as raftq: two worker processes, a no-op job, results kept.

- raftq: `Client.submit("util.noop")` (batch: `submit_many`); workers are real `raftq worker`
  processes; completion = the leader's `succeeded` count.
- Celery 5 + Redis (broker db 0, result backend db 1): `noop.delay()`
  (batch: a `group` of n signatures, applied at once);
  `celery worker --pool prefork -c 2`; completion = result keys in db 1.
- RQ + Redis (db 2): `Queue.enqueue(noop)` (batch: `enqueue_many`, one Redis
  pipeline); two `rq worker -w SimpleWorker`;
  completion = the finished-job registry.

The Celery app lives in this module (`loadtest.peers:celery_app`) so its
worker imports exactly the task the producers send.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399")


def noop(*_args: Any, **_kwargs: Any) -> None:
    """The RQ job (and what the Celery task wraps): does nothing."""
    return None


def _make_celery() -> Any:
    try:
        from celery import Celery
    except ImportError:  # the bench extra is not installed; bench.py reports it
        return None
    app = Celery("raftq_bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
    app.conf.update(task_ignore_result=False, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, result_expires=3600)
    app.task(name="bench.noop")(noop)
    return app


celery_app = _make_celery()


# Enqueue-only workloads use their own queue, which no worker serves, so they
# leave no backlog in front of the end-to-end and round-trip jobs.
ENQ_QUEUE = "bench_enqueue"
RUN_QUEUE = "bench_run"


class System:
    name = "?"

    def purge_enqueued(self) -> None:
        """Drop the jobs the enqueue-only workloads left (where the system can)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workers: list[subprocess.Popen[bytes]] = []

    def producer(self) -> Any:
        raise NotImplementedError

    def completed(self) -> int:
        raise NotImplementedError

    def start_workers(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.workdir / f"{self.name}-{name}.log", "ab")
        self.workers.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                             start_new_session=True))
        log.close()

    def stop_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # the worker's own process group (its pool)
        for p in self.workers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.workers.clear()


class RaftqSystem(System):
    name = "raftq"

    def __init__(self, workdir: Path, addrs: list[str], token: str) -> None:
        super().__init__(workdir)
        self.addrs = addrs
        self.token = token

    def producer(self, queue: str = RUN_QUEUE) -> Any:
        from cluster.client import Client
        client = Client(self.addrs, token=self.token, timeout_s=30.0)

        class P:
            def enqueue(self) -> str:
                return client.submit("util.noop", {}, queue=queue)

            def enqueue_batch(self, n: int) -> None:
                client.submit_many([{"type": "util.noop", "args": {}, "queue": queue} for _ in range(n)])

            def round_trip(self) -> None:
                job_id = client.submit("util.noop", {}, queue=RUN_QUEUE)
                view = client.result(job_id, timeout=30)
                if view["state"] != "succeeded":
                    raise RuntimeError(f"job {job_id} ended {view['state']}")

            def close(self) -> None:
                client.close()
        return P()

    def completed(self) -> int:
        from cluster.client import Client
        with Client(self.addrs, token=self.token, timeout_s=30.0) as c:
            return int(c.stats()["jobs"].get("succeeded", 0))

    def start_workers(self, queue: str = RUN_QUEUE) -> None:
        for i in range(2):
            self._spawn([sys.executable, "-m", "cli.main", "worker", "--cluster", ",".join(self.addrs),
                         "--token", self.token, "--threads", "16", "--name", f"bench-{i}", "--queues", queue,
                         "--workdir", str(self.workdir / f"raftq-work-{i}")], f"worker{i}")


class CelerySystem(System):
    name = "celery"

    def producer(self, queue: str = RUN_QUEUE) -> Any:
        app = celery_app

        class P:
            def enqueue(self) -> str:
                return app.send_task("bench.noop", queue=queue).id

            def enqueue_batch(self, n: int) -> None:
                from celery import group
                group(app.signature("bench.noop", queue=queue) for _ in range(n)).apply_async()

            def round_trip(self) -> None:
                app.send_task("bench.noop", queue=RUN_QUEUE).get(timeout=30)

            def close(self) -> None:
                pass
        return P()

    def completed(self) -> int:
        import redis
        return int(redis.Redis.from_url(f"{REDIS_URL}/1").dbsize())

    def purge_enqueued(self) -> None:
        import redis
        redis.Redis.from_url(f"{REDIS_URL}/0").delete(ENQ_QUEUE)

    def start_workers(self) -> None:
        self._spawn([sys.executable, "-m", "celery", "-A", "loadtest.peers:celery_app", "worker",
                     "--pool", "prefork", "-c", "2", "--loglevel", "WARNING", "-Q", RUN_QUEUE,
                     "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"], "worker")


class RqSystem(System):
    name = "rq"

    def producer(self, queue: str = RUN_QUEUE) -> Any:
        import redis
        from rq import Queue
        conn = redis.Redis.from_url(f"{REDIS_URL}/2")
        q = Queue(queue, connection=conn)
        run_q = Queue(RUN_QUEUE, connection=conn)

        class P:
            def enqueue(self) -> str:
                return q.enqueue(noop).id

            def enqueue_batch(self, n: int) -> None:
                q.enqueue_many([Queue.prepare_data(noop) for _ in range(n)])

            def round_trip(self) -> None:
                job = run_q.enqueue(noop)
                deadline = time.monotonic() + 30
                while job.get_status(refresh=True) != "finished":  # RQ has no blocking wait
                    if time.monotonic() > deadline:
                        raise RuntimeError("rq job did not finish")
                    time.sleep(0.0005)

            def close(self) -> None:
                pass
        return P()

    def completed(self) -> int:
        import redis
        from rq import Queue
        q = Queue(RUN_QUEUE, connection=redis.Redis.from_url(f"{REDIS_URL}/2"))
        return int(q.finished_job_registry.count)

    def purge_enqueued(self) -> None:
        import redis
        from rq import Queue
        Queue(ENQ_QUEUE, connection=redis.Redis.from_url(f"{REDIS_URL}/2")).empty()

    def start_workers(self) -> None:
        for i in range(2):
            self._spawn([str(Path(sys.executable).with_name("rq")), "worker", "-w", "rq.worker.SimpleWorker",
                         "--url", f"{REDIS_URL}/2", "--logging_level", "WARNING", RUN_QUEUE], f"worker{i}")
