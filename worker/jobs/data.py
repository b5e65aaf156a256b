"""data.csv_stats: per numeric column count, mean, median, stdev, min, max.

A column is numeric when every non-empty cell parses as a number (empty cells
are counted as `missing`, not as zero). `group_by` repeats the statistics per
distinct value of that column (at most MAX_GROUPS groups). stdev is the sample
standard deviation (None for fewer than two values). The file is streamed
once; values are kept per column to compute the exact median. Process pool:
parsing is CPU-bound.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterator

from worker.context import JobContext
from worker.jobs.safety import in_root, open_in, rel
from worker.registry import BadArgument, parse_args

MAX_GROUPS = 1000
MAX_ROWS = 5_000_000


def parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def summarize(values: list[float], missing: int | None = 0) -> dict[str, Any]:
    """Statistics of one column; `missing` None leaves the key out (per-group stats do not count it)."""
    out = _summary(values)
    if missing is not None:
        out["missing"] = missing
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "stdev": None, "min": None, "max": None, "sum": 0}
    return {
        "count": len(values),
        "mean": _round(statistics.fmean(values)),
        "median": _round(statistics.median(values)),
        "stdev": _round(statistics.stdev(values)) if len(values) > 1 else None,
        "min": _num(min(values)),
        "max": _num(max(values)),
        "sum": _num(math.fsum(values)),
    }


def _round(x: float) -> float:
    return round(x, 6)


def _num(x: float) -> float | int:
    return int(x) if x.is_integer() and abs(x) < 2**53 else _round(x)


def read_rows(path: Path, ctx: JobContext, delimiter: str = ",") -> Iterator[tuple[list[str], dict[str, str]]]:
    """Yield (header, row) for each data row; checks the header and reports progress."""
    with open_in(ctx, path, "r", newline="", encoding="utf-8-sig") as fh:
        size = os.fstat(fh.fileno()).st_size or 1
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise BadArgument(f"'path': {path.name!r} is empty (a CSV needs a header row)") from None
        except UnicodeDecodeError as exc:
            raise BadArgument(f"'path': {path.name!r} is not UTF-8 text ({exc.reason})") from None
        header = [h.strip() for h in header]
        dups = sorted({h for h in header if header.count(h) > 1})
        if dups or not all(header):
            raise BadArgument(f"'path': the CSV header must name every column once (got {header!r})")
        try:
            for n, cells in enumerate(reader, start=1):
                if n > MAX_ROWS:
                    raise BadArgument(f"'path': more than {MAX_ROWS} rows")
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise BadArgument(f"CSV line {reader.line_num} has {len(cells)} cells, the header has {len(header)}")
                if n % 5000 == 0:
                    ctx.check_cancelled()
                    ctx.progress(min(0.99, fh.tell() / size), f"read {n} rows")
                yield header, dict(zip(header, cells))
        except UnicodeDecodeError as exc:
            raise BadArgument(f"'path': {path.name!r} is not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise BadArgument(f"'path': malformed CSV at line {reader.line_num}: {exc}") from None


def column_stats(path: Path, ctx: JobContext, *, columns: list[str] | None = None,
                 group_by: str | None = None, delimiter: str = ",") -> dict[str, Any]:
    """The statistics dict data.csv_stats returns (also used by report.generate)."""
    values: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    non_numeric: set[str] = set()
    groups: dict[str, dict[str, list[float]]] = {}
    group_rows: dict[str, int] = {}
    header: list[str] = []
    rows = 0
    for header, row in read_rows(path, ctx, delimiter):
        if rows == 0:
            wanted = columns or [h for h in header if h != group_by]
            for name in [*(columns or []), *([group_by] if group_by else [])]:
                if name not in header:
                    raise BadArgument(f"no column {name!r} in the CSV (columns: {', '.join(header)})")
            values = {c: [] for c in wanted}
            missing = {c: 0 for c in wanted}
        rows += 1
        key = row[group_by].strip() if group_by else ""
        if group_by and key not in groups:
            if len(groups) >= MAX_GROUPS:
                raise BadArgument(f"'group_by': column {group_by!r} has more than {MAX_GROUPS} distinct values")
            groups[key] = {c: [] for c in values}
            group_rows[key] = 0
        if group_by:
            group_rows[key] += 1
        for col in values:
            if col in non_numeric:
                continue
            cell = row[col].strip()
            if not cell:
                missing[col] += 1
                continue
            num = parse_number(cell)
            if num is None:
                non_numeric.add(col)
                continue
            values[col].append(num)
            if group_by:
                groups[key][col].append(num)
    if rows == 0 and header:
        for name in [*(columns or []), *([group_by] if group_by else [])]:
            if name not in header:
                raise BadArgument(f"no column {name!r} in the CSV (columns: {', '.join(header)})")
    if columns:
        bad = [c for c in columns if c in non_numeric]
        if bad:
            raise BadArgument(f"column(s) {', '.join(map(repr, bad))} are not numeric")
    numeric = [c for c in values if c not in non_numeric]
    out: dict[str, Any] = {
        "path": rel(ctx, path),
        "rows": rows,
        "columns": {c: summarize(values[c], missing[c]) for c in numeric},
        "non_numeric": [c for c in header if c in non_numeric],
    }
    if group_by:
        out["group_by"] = group_by
        out["groups"] = {g: {"rows": group_rows[g], "columns": {c: summarize(groups[g][c], None) for c in numeric}}
                         for g in sorted(groups)}
    return out


def data_csv_stats(args: dict, ctx: JobContext) -> dict:
    """Statistics of every numeric column of the CSV at `path` (optionally per `group_by` value)."""
    a = parse_args("data.csv_stats", args)
    src = in_root(ctx, a["path"], "path", want="file")
    out = column_stats(src, ctx, columns=a.get("columns"), group_by=a.get("group_by"), delimiter=a["delimiter"])
    ctx.progress(1.0, f"{out['rows']} rows")
    return out


JOBS: dict[str, tuple[Any, str]] = {
    "data.csv_stats": (data_csv_stats, "process"),
}
