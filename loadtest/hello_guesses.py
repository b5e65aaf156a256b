"""How fast can one source address guess tokens? Wrong hellos against a real node.

    python -m loadtest.hello_guesses [--seconds 10] [--connections 1,64]

Starts a one-node cluster on loopback, then for each connection count opens
that many connections in parallel from 127.0.0.1, each sending a hello with a
wrong token, reading the answer, closing and starting over. Prints, per
count, the guesses the node evaluated per second (answered UNAUTHORIZED) and
the hellos it refused unevaluated (OVERLOADED: the source is being paced).
"""
from __future__ import annotations

import argparse
import json
import secrets
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from cluster import protocol
from loadtest.localcluster import BenchCluster


def _guess(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(protocol.encode_frame(protocol.request(1, "hello", protocol.hello_args(secrets.token_hex(8)))))
        decoder = protocol.FrameDecoder()
        while data := s.recv(65536):
            for reply in decoder.feed(data):
                return "OK" if "ok" in reply else reply["err"][0]
    return "CLOSED"


def measure(addr: str, connections: int, seconds: float) -> dict[str, float]:
    host, port = addr.rsplit(":", 1)
    answers: Counter[str] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def guesser() -> None:
        while time.monotonic() < end:
            try:
                answer = _guess(host, int(port))
            except OSError as exc:
                answer = type(exc).__name__
            with lock:
                answers[answer] += 1

    threads = [threading.Thread(target=guesser) for _ in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"connections": connections, "seconds": round(elapsed, 1),
            "evaluated_per_s": round(answers["UNAUTHORIZED"] / elapsed, 1),
            "refused_per_s": round(answers["OVERLOADED"] / elapsed, 1),
            "answers": dict(answers)}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", default="1,64", help="comma-separated parallel connection counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="raftq-guess-") as root:
        cluster = BenchCluster(Path(root), nodes=1, durability="none")
        cluster.start()
        try:
            for i, n in enumerate(int(x) for x in args.connections.split(",")):
                if i:
                    time.sleep(61)  # the node forgets the source (hello_throttle.FORGET_S): each run starts clean
                print(json.dumps(measure(cluster.addrs[0], n, args.seconds)), flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
