"""Run the abuse suite and print one table row per attack.

    python -m tests.abuse.runner [--short|--long] [--only NAME,...] [--json PATH] [--keep DIR]

Each attack (tests/abuse/attacks.py) gets a fresh 3-node cluster in its own
directory, which is removed afterwards unless --keep names a directory to keep
them in (kept only for attacks with a violation). Rows are printed as each
attack finishes, then the whole table (markdown) and the violations.

Exit status: 0 if no attack found a violation, 1 otherwise, 2 for bad usage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from tests.abuse.attacks import ATTACKS, LONG, SHORT
from tests.abuse.scenario import Outcome

HEADER = ("| attack | acked (lost) | replicas | leader RSS MB before/peak/after | legit p50/p99 ms base -> attack "
          "(p99 x) | term | outcome | verdict |\n|---|---|---|---|---|---|---|---|")


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def row(o: Outcome) -> str:
    lost = "-" if o.acked_lost is None else str(o.acked_lost)
    rss = f"{_num(o.rss_before_mb)}/{_num(o.rss_peak_mb)}/{_num(o.rss_after_mb)}"
    factor = o.p99_factor
    lat = (f"{_num(o.base_p50_ms, '{:.1f}')}/{_num(o.base_p99_ms, '{:.1f}')} -> "
           f"{_num(o.during_p50_ms, '{:.1f}')}/{_num(o.during_p99_ms, '{:.1f}')}"
           + (f" ({factor:.1f}x)" if factor is not None else "")
           + (f", {o.during_ok}/{o.during_calls} ok" if o.during_calls else ""))
    term = f"{_num(o.term_before)} -> {_num(o.term_after)}" if o.term_after is not None else "-"
    verdict = "PASS" if o.ok else f"FAIL ({len(o.violations)})"
    cells = [o.attack, f"{o.acked} ({lost})", o.replicas, rss, lat, term, o.observed.replace("|", "/"), verdict]
    return "| " + " | ".join(cells) + " |"


def run(names: list[str], scale_name: str, keep: Path | None) -> list[Outcome]:
    scale = LONG if scale_name == "long" else SHORT
    outcomes: list[Outcome] = []
    base = Path(tempfile.mkdtemp(prefix="raftq-abuse-"))
    print(HEADER, flush=True)
    try:
        for name in names:
            root = base / name
            started = time.monotonic()
            try:
                out = ATTACKS[name](root, scale)
            except Exception as exc:  # an attack that cannot finish is a finding, not a crash of the suite
                out = Outcome(name, "(attack did not finish)")
                out.violate(f"attack raised {type(exc).__name__}: {exc}")
                out.notes.append(traceback.format_exc())
                out.seconds = time.monotonic() - started
            outcomes.append(out)
            print(row(out), flush=True)
            if keep is not None and not out.ok:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.move(str(root), str(keep / name))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short", dest="scale", action="store_const", const="short", help="CI size (default)")
    size.add_argument("--long", dest="scale", action="store_const", const="long", help="counts and durations x3-10")
    p.add_argument("--only", default="", help=f"comma-separated attacks (default all): {','.join(ATTACKS)}")
    p.add_argument("--json", type=Path, help="write every outcome as JSON here")
    p.add_argument("--keep", type=Path, help="keep the cluster directories of failing attacks here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        print(f"unknown attack(s): {', '.join(unknown)} (known: {', '.join(ATTACKS)})", file=sys.stderr)
        return 2
    scale = args.scale or "short"
    started = time.monotonic()
    outcomes = run(names, scale, args.keep)
    print(f"\n{scale} suite, {len(outcomes)} attacks in {time.monotonic() - started:.0f} s\n")
    print(HEADER)
    for out in outcomes:
        print(row(out))
    failed = [o for o in outcomes if not o.ok]
    for out in failed:
        print(f"\n{out.attack}: {out.expected}")
        for v in out.violations:
            print(f"  VIOLATION {v}")
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(o), "ok": o.ok, "p99_factor": o.p99_factor} for o in outcomes],
                                        indent=1))
    print(f"\n{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
