"""A fault-suite client process: concurrent submitters that record a history.

Run inside a client namespace:

    python -m tests.fault.client --nodes A,B,C --token T --name c1 --out FILE
        --threads 3 --count 200 --duration 15 --job-ms 50,300 --seed 1

Each thread submits jobs with unique ids `<name>-<thread>-<i>` (bounded by
`--count` per thread AND by `--duration` seconds) and appends to FILE, per
attempt, `{"ev": "invoke", "id"}` before the call and then exactly one of

- `ok`      the cluster acknowledged the submit (it must never be lost);
- `fail`    a definite rejection (BAD_REQUEST, OVERLOADED before proposing, ...);
- `unknown` timeouts, lost connections, leader changes: the job may or may
            not exist, and the checker accepts either.

A thread whose call ends `unknown` moves on to a new id (it does not retry),
so unknown outcomes stay visible to the checker.
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import Any

from cluster.client import Client
from cluster.errors import BadRequest, Conflict, Overloaded, TooLarge, Unauthorized

DEFINITE = (BadRequest, Conflict, Overloaded, TooLarge, Unauthorized)


class History:
    def __init__(self, path: str, client: str) -> None:
        self._f = open(path, "a")
        self._lock = threading.Lock()
        self._client = client

    def add(self, ev: str, job_id: str, **extra: Any) -> None:
        line = json.dumps({"ev": ev, "id": job_id, "client": self._client, "t": time.time(), **extra})
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


def submitter(args: argparse.Namespace, thread: int, history: History, stop_at: float) -> None:
    rng = random.Random(f"{args.seed}-{args.name}-{thread}")
    lo, hi = args.job_ms
    client = Client(args.nodes.split(","), token=args.token, timeout_s=args.op_timeout)
    try:
        for i in range(args.count):
            if time.monotonic() >= stop_at:
                break
            job_id = f"{args.name}-{thread}-{i}"
            history.add("invoke", job_id)
            try:
                client.submit("fault.record", {"ms": rng.randint(lo, hi)}, id=job_id, max_attempts=args.max_attempts)
            except DEFINITE as exc:
                history.add("fail", job_id, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - anything else: outcome unknown
                history.add("unknown", job_id, error=f"{type(exc).__name__}: {exc}")
                client.close()
                client = Client(args.nodes.split(","), token=args.token, timeout_s=args.op_timeout)
            else:
                history.add("ok", job_id)
            time.sleep(rng.uniform(0, args.pause_ms / 1000.0))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=3)
    p.add_argument("--count", type=int, default=500, help="max submits per thread")
    p.add_argument("--duration", type=float, default=15.0, help="max seconds of load")
    p.add_argument("--job-ms", type=lambda s: tuple(int(x) for x in s.split(",")), default=(50, 300))
    p.add_argument("--pause-ms", type=float, default=50.0, help="max think time between submits")
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--max-attempts", type=int, default=25)
    p.add_argument("--seed", default="0")
    args = p.parse_args(argv)
    history = History(args.out, args.name)
    stop_at = time.monotonic() + args.duration
    threads = [threading.Thread(target=submitter, args=(args, t, history, stop_at), daemon=True)
               for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.duration + args.op_timeout + 30)
    history.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
