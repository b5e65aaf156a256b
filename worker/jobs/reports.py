"""report.generate: an HTML or Markdown report from a CSV, with a bar chart.

The report holds: a summary (rows, columns), the statistics of every numeric
column (data.csv_stats' numbers), and a bar chart of `agg(value)` per distinct
`label` (largest first, at most `top` bars) with the same numbers as a table.
HTML reports embed the chart as inline SVG (one self-contained file); Markdown
reports reference a PNG drawn with Pillow, written beside the report. All text
from the CSV is escaped. CPU-light: thread pool.
"""
from __future__ import annotations

import html
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from worker.context import JobContext
from worker.jobs.data import column_stats, parse_number, read_rows
from worker.jobs.safety import atomic_output, in_root, rel
from worker.registry import BadArgument, parse_args

PALETTE = "#4e79a7"


def aggregate(path: Path, ctx: JobContext, label: str, value: str | None, agg: str,
              delimiter: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for header, row in read_rows(path, ctx, delimiter):
        for col in (label, value):
            if col is not None and col not in header:
                raise BadArgument(f"no column {col!r} in the CSV (columns: {', '.join(header)})")
        key = row[label].strip() or "(empty)"
        if agg == "count":
            groups[key].append(1.0)
            continue
        assert value is not None
        num = parse_number(row[value].strip())
        if num is not None:
            groups[key].append(num)
        else:
            groups.setdefault(key, [])
    out: dict[str, float] = {}
    for key, nums in groups.items():
        if agg in ("sum", "count"):
            out[key] = math.fsum(nums)
        elif nums:
            out[key] = {"mean": math.fsum(nums) / len(nums), "min": min(nums), "max": max(nums)}[agg]
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.4g}" if abs(x) >= 1e6 or abs(x) < 1e-3 else f"{x:,.2f}"


def svg_bar_chart(bars: list[tuple[str, float]], title: str) -> str:
    """A horizontal bar chart as inline SVG (negative values are drawn as 0-width)."""
    row_h, label_w, bar_w, pad = 24, 180, 420, 10
    height = pad * 2 + 28 + row_h * max(1, len(bars))
    width = label_w + bar_w + 110
    top = max((v for _, v in bars), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" '
             'font-family="sans-serif" font-size="13">',
             f'<text x="{pad}" y="{pad + 14}" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, v) in enumerate(bars):
        y = pad + 28 + i * row_h
        w = max(0.0, v / top * bar_w)
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{html.escape(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{PALETTE}">'
                     f'<title>{html.escape(label)}: {_fmt(v)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{html.escape(_fmt(v))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def png_bar_chart(ctx: JobContext, bars: list[tuple[str, float]], title: str, out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    row_h, label_w, bar_w, pad = 24, 180, 420, 10
    height = pad * 2 + 28 + row_h * max(1, len(bars))
    width = label_w + bar_w + 110
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((pad, pad), title, fill="black", font=font)
    top = max((v for _, v in bars), default=0) or 1
    for i, (label, v) in enumerate(bars):
        y = pad + 28 + i * row_h
        w = max(0.0, v / top * bar_w)
        short = label if len(label) <= 26 else label[:25] + "..."
        tw = draw.textlength(short, font=font)
        draw.text((label_w - 6 - tw, y + 6), short, fill="black", font=font)
        if w >= 1:
            draw.rectangle([label_w, y + 3, label_w + w, y + row_h - 3], fill=PALETTE)
        draw.text((label_w + w + 6, y + 6), _fmt(v), fill="black", font=font)
    with atomic_output(out, ctx=ctx) as fh:
        img.save(fh, format="PNG")


def _md_cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", " ")


def report_generate(args: dict, ctx: JobContext) -> dict:
    """Write an HTML or Markdown report of the CSV `path` to `output`, with a bar chart."""
    a = parse_args("report.generate", args)
    src = in_root(ctx, a["path"], "path", want="file")
    output = a["output"]
    fmt = a.get("format") or ("markdown" if output.lower().endswith((".md", ".markdown")) else "html")
    out = in_root(ctx, output, "output", want="file", must_exist=False)
    title = a.get("title", f"Report: {src.name}")
    agg, top, delimiter = a["agg"], a["top"], a["delimiter"]
    stats = column_stats(src, ctx, delimiter=delimiter)
    numeric = list(stats["columns"])
    header = numeric + stats["non_numeric"]
    label = a.get("label", stats["non_numeric"][0] if stats["non_numeric"] else None)
    if label is None:
        raise BadArgument("the CSV has no text column to label bars with; give 'label'")
    value = a.get("value")
    if value is None and agg != "count":
        candidates = [c for c in numeric if c != label]
        if not candidates:
            raise BadArgument("the CSV has no numeric column to chart; give 'value' or use agg=count")
        value = candidates[0]
    if value is not None and value in stats["non_numeric"]:
        raise BadArgument(f"'value': column {value!r} is not numeric")
    for col, arg in ((label, "label"), (value, "value")):
        if col is not None and stats["rows"] and col not in header:
            raise BadArgument(f"{arg!r}: no column {col!r} in the CSV (columns: {', '.join(header)})")
    ctx.progress(0.5, "aggregating")
    totals = aggregate(src, ctx, label, value, agg, delimiter)
    bars = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    what = f"{agg}({value})" if agg != "count" else "count"
    chart_title = f"{what} by {label}"
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result: dict[str, Any] = {"path": rel(ctx, src), "output": rel(ctx, out), "format": fmt, "rows": stats["rows"],
                              "chart": chart_title, "bars": [[k, v] for k, v in bars]}
    if fmt == "html":
        rows_html = "".join(
            f"<tr><th>{html.escape(c)}</th>" + "".join(
                f"<td>{_fmt(s[k])}</td>" for k in ("count", "mean", "median", "stdev", "min", "max")) + "</tr>\n"
            for c, s in stats["columns"].items())
        bars_html = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>\n" for k, v in bars)
        doc = (
            f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Source: {html.escape(src.name)} · {stats['rows']} rows · "
            f"{len(header)} columns · generated {html.escape(generated)}</p>\n"
            f"<h2>{html.escape(chart_title)}</h2>\n{svg_bar_chart(bars, chart_title)}\n"
            f"<table><tr><th>{html.escape(label)}</th><th>{html.escape(what)}</th></tr>\n{bars_html}</table>\n"
            "<h2>Numeric columns</h2>\n<table><tr><th>column</th><th>count</th><th>mean</th><th>median</th>"
            f"<th>stdev</th><th>min</th><th>max</th></tr>\n{rows_html}</table>\n</body></html>\n"
        )
        result["chart_file"] = None
    else:
        png = out.with_suffix(".png")
        png_bar_chart(ctx, bars, chart_title, png)
        lines = [f"# {title}", "", f"Source: `{src.name}` · {stats['rows']} rows · {len(header)} columns · "
                 f"generated {generated}", "", f"## {chart_title}", "", f"![{chart_title}]({png.name})", "",
                 f"| {_md_cell(label)} | {_md_cell(what)} |", "|---|---:|"]
        lines += [f"| {_md_cell(k)} | {_fmt(v)} |" for k, v in bars]
        lines += ["", "## Numeric columns", "", "| column | count | mean | median | stdev | min | max |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join([_md_cell(c)] + [_fmt(s[k]) for k in ("count", "mean", "median", "stdev",
                                                                              "min", "max")]) + " |"
                  for c, s in stats["columns"].items()]
        doc = "\n".join(lines) + "\n"
        result["chart_file"] = rel(ctx, png)
    with atomic_output(out, "w", ctx=ctx) as fh:
        fh.write(doc)
    ctx.progress(1.0, "done")
    return result


JOBS: dict[str, tuple[Any, str]] = {
    "report.generate": (report_generate, "thread"),
}
