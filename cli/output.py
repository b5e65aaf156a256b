"""Printing for the command line: aligned tables for people, JSON for programs,
and one-line `error: ...` messages for failures.

`--json` output is one JSON document on stdout and nothing else, so a script
can pipe it to `jq`; tables may change shape between versions, JSON keys do not
(they are the wire names from contracts.md).
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

import click


def one_line(text: str) -> str:
    """Collapse whitespace so an error message is exactly one line."""
    return " ".join(str(text).split()) or "unknown error"


class CliError(click.ClickException):
    """A runtime failure (cluster, config, job outcome): `error: ...`, exit 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", file=file or sys.stderr)


class InputError(click.UsageError):
    """Bad command-line input found after click parsed it: one line, exit 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", file=file or sys.stderr)


def _json_default(value: Any) -> Any:
    # msgpack values can be bytes; JSON has no bytes, so show them as base64 text.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def to_json(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, default=_json_default, ensure_ascii=False)


def emit_json(value: Any) -> None:
    click.echo(to_json(value))


def format_value(value: Any) -> str:
    """A cell: strings as they are, None as '-', everything else as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return to_json(value, indent=None)


def format_time(ts: float | None) -> str:
    """Epoch seconds as local ISO time to the millisecond, '-' for None."""
    if ts is None:
        return "-"
    moment = _dt.datetime.fromtimestamp(ts).astimezone()
    return moment.isoformat(timespec="milliseconds")


def format_duration(seconds: float | None) -> str:
    """A short human duration: 850ms, 12.3s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _one_line(text: str) -> str:
    # A cell never breaks the table: newlines in job errors become spaces.
    return " ".join(text.split()) if ("\n" in text or "\r" in text or "\t" in text) else text


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[_one_line(format_value(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def emit_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    click.echo(render_table(headers, rows))


def render_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column 'name: value' block for one record."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {_one_line(format_value(v))}" for k, v in pairs)


def emit_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    click.echo(render_fields(pairs))
