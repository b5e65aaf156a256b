"""Run a raftq command with this process's wall clock skewed: `python -m tests.fault.skewed +40 node ...`.

The fault suite's clock-skew nemesis. It shifts `time.time()` / `time.time_ns()`
(every wall-clock read in raftq and pysyncobj) by a fixed number of seconds and
leaves the monotonic clock alone, like a host whose NTP is off. libfaketime
(LD_PRELOAD) would be the outside-the-process way, but libfaketime 0.9.10 makes
Python 3.11's timed waits hang (sem_clockwait) or fail with EINVAL
(clock_nanosleep with FAKETIME_DONT_FAKE_MONOTONIC), so the node could not run.
"""
from __future__ import annotations

import sys
import time


def main() -> None:
    offset_s = float(sys.argv[1])
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset_s  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + int(offset_s * 1e9)  # type: ignore[assignment]
    from cli.main import main as raftq_main
    sys.argv = ["raftq", *sys.argv[2:]]
    raftq_main()


if __name__ == "__main__":
    main()
