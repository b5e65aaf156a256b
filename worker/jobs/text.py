"""text.* job types (thread pool: light CPU, mostly string work in C).

text.wordcount  words (lowercased runs of letters/digits), lines, characters, top words
text.convert    case changes, Markdown -> HTML (python-markdown), CSV <-> JSON;
                input from `text` or a file `path` under the data root, output
                returned and/or written to `output` under the data root
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import Counter
from typing import Any

from worker.context import JobContext
from worker.jobs.safety import atomic_output, in_root, open_in, rel
from cluster.jobargs import MAX_TEXT_BYTES
from worker.registry import BadArgument, parse_args, require

_WORD_RE = re.compile(r"[^\W_]+")  # runs of letters/digits (Unicode-aware), "_" is a separator
MAX_RETURNED_CHARS = 256 * 1024  # longer outputs must go to a file


def text_wordcount(args: dict, ctx: JobContext) -> dict:
    """Count words (lowercased runs of letters/digits), lines and characters of `text`."""
    text = parse_args("text.wordcount", args)["text"]
    counts = Counter(w.lower() for w in _WORD_RE.findall(text))
    # Ties broken alphabetically so the answer is the same on every run.
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "words": sum(counts.values()),
        "lines": len(text.splitlines()),
        "chars": len(text),
        "top": [[w, c] for w, c in top],
    }


def read_text_input(args: dict, ctx: JobContext, *, text_key: str = "text", path_key: str = "path") -> str:
    """The job's input text: exactly one of `text` or a UTF-8 file `path` under the data root."""
    has_text, has_path = text_key in args, path_key in args
    if has_text == has_path:
        raise BadArgument(f"give exactly one of {text_key!r} (the text itself) or {path_key!r} (a file)")
    if has_text:
        return require(args, text_key, str, max=MAX_TEXT_BYTES)
    path = in_root(ctx, args[path_key], path_key, want="file")
    with open_in(ctx, path, arg=path_key) as fh:
        # Read one byte past the cap: a file grown since any stat is still caught.
        data = fh.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise BadArgument(f"{path_key!r}: {args[path_key]!r} is larger than {MAX_TEXT_BYTES} bytes")
    try:
        # Universal newlines, as reading the file in text mode did.
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise BadArgument(f"{path_key!r}: {args[path_key]!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _number(value: str) -> Any:
    """'12' -> 12, '1.5' -> 1.5, anything else unchanged (CSV cells are text)."""
    text = value.strip()
    if re.fullmatch(r"[+-]?\d{1,18}", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return value


def csv_to_records(text: str, delimiter: str = ",", types: bool = True) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise BadArgument("the CSV input is empty (it needs a header row)")
    dups = sorted({f for f in reader.fieldnames if reader.fieldnames.count(f) > 1})
    if dups:
        raise BadArgument(f"the CSV header repeats column(s) {', '.join(map(repr, dups))}")
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if None in row:
            raise BadArgument(f"CSV line {line_no} has more cells than the header")
        rows.append({k: (_number(v) if types and v is not None else v) for k, v in row.items()})
    return rows


def records_to_csv(data: Any, delimiter: str = ",") -> tuple[str, int]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BadArgument("json_to_csv expects a JSON array of objects, e.g. [{\"a\": 1}, {\"a\": 2}]")
    columns: dict[str, None] = {}
    for row in data:
        for key in row:
            columns.setdefault(str(key), None)
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(columns), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    for row in data:
        writer.writerow({str(k): (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})
    return out.getvalue(), len(data)


def markdown_to_html(text: str, title: str | None = None) -> str:
    import markdown  # imported on use: only this op needs it

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    if title is None:
        return body
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def text_convert(args: dict, ctx: JobContext) -> dict:
    """Convert text: case, Markdown -> HTML, CSV <-> JSON (see module docstring)."""
    a = parse_args("text.convert", args)
    op, delimiter, types, title = a["op"], a["delimiter"], a["types"], a.get("title")
    out_path = in_root(ctx, a["output"], "output", want="file", must_exist=False) if "output" in a else None
    text = read_text_input(a, ctx)
    extra: dict[str, Any] = {}
    if op in ("upper", "lower", "title", "swapcase"):
        result = getattr(text, op)()
    elif op == "markdown_to_html":
        result = markdown_to_html(text, title)
    elif op == "csv_to_json":
        records = csv_to_records(text, delimiter, types)
        result = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
        extra["rows"] = len(records)
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadArgument(f"json_to_csv: the input is not valid JSON ({exc})") from None
        result, extra["rows"] = records_to_csv(data, delimiter)
    out: dict[str, Any] = {"op": op, "chars_in": len(text), "chars_out": len(result), **extra}
    if out_path is not None:
        with atomic_output(out_path, "w", ctx=ctx) as fh:
            fh.write(result)
        out["output"] = rel(ctx, out_path)
    elif len(result) > MAX_RETURNED_CHARS:
        raise BadArgument(f"the result has {len(result)} characters; give 'output' to write it to a file "
                          f"(at most {MAX_RETURNED_CHARS} are returned inline)")
    else:
        out["text"] = result
    return out


JOBS: dict[str, tuple[Any, str]] = {
    "text.wordcount": (text_wordcount, "thread"),
    "text.convert": (text_convert, "thread"),
}
