"""Submit jobs for a while and prove that every acknowledged one survived.

Runs inside a host of the local environment (with the deployment's venv), next
to the Locust load, while a node is replaced:

    ack_checker.py --nodes A,B,C --seconds 45 [--threads 8]     (token in $RAFTQ_TOKEN)

Each thread submits `util.noop` jobs with ids of its own, in sequence, and
records an id only once `submit` returned (the cluster acknowledged it: it is
committed on a majority). Errors are counted, not recorded: an unacknowledged
job may or may not exist. At the end every recorded id is read back through
the cluster. Prints one JSON line: {"acked", "errors", "missing"}; exit 1 if
any acknowledged job is missing or none was acknowledged.

    ack_checker.py --nodes A,B,C --replicas-equal 120

waits until every node reports the same state digest (the replaced node
caught up with the others), at most that many seconds; exit 1 if not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

from cluster.client import Client
from cluster.errors import NotFound, RaftqError


def submitter(nodes: list[str], token: str, deadline: float, acked: list[str], errors: list[str]) -> None:
    prefix = uuid.uuid4().hex[:12]
    client = Client(nodes, token=token, timeout_s=15.0)
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            job_id = f"ack-{prefix}-{n}"
            try:
                client.submit("util.noop", {"n": n}, id=job_id)
            except RaftqError as exc:
                errors.append(f"{job_id}: {type(exc).__name__}: {exc}")
                time.sleep(0.1)
                continue
            acked.append(job_id)
    finally:
        client.close()


def missing_ids(nodes: list[str], token: str, ids: list[str]) -> list[str]:
    missing = []
    with Client(nodes, token=token, timeout_s=15.0) as client:
        for job_id in ids:
            for attempt in range(5):  # a read may meet an election; NotFound is the answer that counts
                try:
                    client.get(job_id)
                    break
                except NotFound:
                    missing.append(job_id)
                    break
                except RaftqError:
                    if attempt == 4:
                        raise
                    time.sleep(1)
    return missing


def replicas_equal(nodes: list[str], token: str, timeout_s: float) -> bool:
    """Every node answers `digest` for itself (no redirect), all at once from
    one thread each. Equal when one round shows every node at the same applied
    index with the same digest. Ticks move the state every few seconds and a
    digest of a large state takes a while, so rounds at different indexes are
    expected and only retried; two nodes that report different digests at the
    SAME applied index have diverged, and that fails at once."""
    deadline = time.monotonic() + timeout_s
    seen: dict[int, dict[str, str]] = {}  # applied index -> node -> digest
    last: dict[str, object] = {}
    clients = {addr: Client([addr], token=token, timeout_s=30.0) for addr in nodes}
    try:
        while time.monotonic() < deadline:
            current: dict[str, tuple[str, int]] = {}
            failures: dict[str, str] = {}

            def ask(addr: str) -> None:
                try:
                    d = clients[addr].digest()
                    current[addr] = (d["digest"], d["last_applied"])
                except RaftqError as exc:
                    failures[addr] = str(exc)

            threads = [threading.Thread(target=ask, args=(addr,)) for addr in nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if failures:
                last = {"errors": failures}
                time.sleep(1)
                continue
            for addr, (digest, index) in current.items():
                at_index = seen.setdefault(index, {})
                at_index[addr] = digest
                if len(set(at_index.values())) > 1:
                    print(json.dumps({"replicas_equal": False, "diverged_at_index": index, "digests": at_index}),
                          flush=True)
                    return False
            last = {addr: {"digest": d[:16], "last_applied": i} for addr, (d, i) in current.items()}
            if len(set(current.values())) == 1:
                digest, index = next(iter(current.values()))
                print(json.dumps({"replicas_equal": True, "digest": digest, "last_applied": index}), flush=True)
                return True
            time.sleep(0.2)
    finally:
        for c in clients.values():
            c.close()
    print(json.dumps({"replicas_equal": False, "last_seen": last}), flush=True)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", required=True)
    p.add_argument("--seconds", type=float)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--replicas-equal", type=float, metavar="TIMEOUT_S")
    args = p.parse_args()
    nodes = [a for a in args.nodes.split(",") if a]
    token = os.environ["RAFTQ_TOKEN"]
    if args.replicas_equal is not None:
        return 0 if replicas_equal(nodes, token, args.replicas_equal) else 1
    if args.seconds is None:
        p.error("--seconds or --replicas-equal is required")
    acked: list[str] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=submitter, args=(nodes, token, deadline, acked, errors))
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = missing_ids(nodes, token, acked)
    print(json.dumps({"acked": len(acked), "errors": len(errors), "missing": missing[:20],
                      "first_errors": errors[:5]}), flush=True)
    return 1 if missing or not acked else 0


if __name__ == "__main__":
    sys.exit(main())
