"""The arguments of the built-in job types, declared once.

Each built-in job type (worker/jobs/) has a `JobArgs` here: its parameters
with their kinds, bounds, choices and defaults, and the few rules that tie
parameters together. Two places read the same declaration:

- the worker's handlers parse their args with it (`worker.registry.parse_args`):
  a bad argument fails the job at once (BadArgument, never retried);
- the leader checks a submit's, a submit_many item's and a schedule's args of
  a built-in type with `refusal` before proposing, so a typo is BAD_REQUEST at
  submit time instead of a dead letter later.

It lives in `cluster` because both the node and the worker may import it
(docs/architecture.md); it imports nothing of either. Only what can be told
from the arguments alone is declared: whether a path exists under the data
root, a host is allowed or a CSV has a column is the worker's to find out.
Custom job types (`@job` in a user module) have no schema here, and the node
passes their args through unchecked. The check never runs in `apply`, so logs
written before a rule existed still replay.

`check_value` is also behind `worker.registry.require`, the check custom
handlers use: one wording for every argument error.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

# Bounds shared with the handlers (worker/jobs/ imports them from here).
MAX_SLEEP_S = 3600
MAX_TEXT_BYTES = 10 * 1024 * 1024
CONVERT_OPS = ("upper", "lower", "title", "swapcase", "markdown_to_html", "csv_to_json", "json_to_csv")
MAX_PRIMES_N = 50_000_000
MAX_PRIMES_LIST_N = 1_000_000
MAX_FACTORIAL_N = 100_000
COMPRESS_FORMATS = ("gzip", "bz2", "xz")
HASHES = ("md5", "sha1", "sha256", "sha512", "blake2b")
HTTP_DEFAULT_MAX_BYTES = 1 << 20
HTTP_MAX_BYTES_LIMIT = 64 << 20
IMAGE_FORMATS = ("png", "jpeg", "jpg", "webp", "gif", "bmp", "tiff")
IMAGE_MAX_SIDE = 20_000
IMAGE_FILTERS = ("grayscale", "blur", "sharpen", "thumbnail", "edges", "contour")
ARCHIVE_FORMATS = ("tar.gz", "zip")
EMAIL_MAX_BYTES = 10 << 20
EMAIL_MAX_ATTACHMENTS = 20
REPORT_FORMATS = ("html", "markdown")
REPORT_AGGS = ("sum", "mean", "count", "min", "max")
PIPELINE_MAX_STEPS = 20
SCRAPE_MAX_PAGES = 500
LATENCY_UNITS = ("s", "ms", "us")
MAX_PROBES = 50
BACKUP_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")  # fullmatch


class ArgError(ValueError):
    """A job's arguments are invalid; the message names the argument."""


_MISSING: Any = object()
_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean (true or false)",
    list: "a list",
    dict: "a map",
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def args_map(args: Any) -> dict:
    """The args as a map (absent: empty); anything else is an ArgError."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ArgError(f"arguments must be a map of name -> value, got {_show(args)}")
    return args


def check_keys(args: Any, allowed: Iterable[str]) -> dict:
    """Refuse unknown argument names (catches typos like 'lst' for 'list')."""
    amap = args_map(args)
    allowed_set = set(allowed)
    unknown = sorted(str(k) for k in amap if k not in allowed_set)
    if unknown:
        expected = ", ".join(sorted(allowed_set)) or "none"
        raise ArgError(
            f"unknown argument{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} (expected: {expected})"
        )
    return amap


def check_value(key: str, value: Any, kind: type, min: float | None = None,  # noqa: A002
                max: float | None = None) -> Any:  # noqa: A002
    """`value` checked to be of `kind` (int, float, str, bool, list, dict).

    For numbers `min`/`max` bound the value, for str and list its length.
    bool is never an int; an int is accepted as a float (and returned as one).
    """
    numeric = kind in (int, float)
    ok: bool
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if ok and numeric:
        ok = (min is None or value >= min) and (max is None or value <= max)
    elif ok and kind in (str, list):
        ok = (min is None or len(value) >= min) and (max is None or len(value) <= max)
    if ok:
        return float(value) if kind is float else value
    raise ArgError(f"{key!r} must be {expectation(kind, min, max)}, got "
                   + (f"length {len(value)}" if kind in (str, list) and isinstance(value, kind) else _show(value)))


def expectation(kind: type, min: float | None = None, max: float | None = None) -> str:  # noqa: A002
    """What a valid value of `kind` within the bounds is, in words."""
    text = _KIND_NAMES.get(kind, f"of type {kind.__name__}")
    if kind in (int, float):
        return text + _range_text(min, max)
    if kind in (str, list) and (min is not None or max is not None):
        return text + f" of length{_range_text(min, max)}"
    return text


Rule = Callable[[dict], "str | None"]  # the checked args -> a refusal, or None


@dataclass(frozen=True)
class Param:
    """One argument of a built-in job type.

    `kind`: int, float, str, bool, list, dict, or `(str, list)` for "one or
    many" (e-mail recipients). `path`: a path under the worker's data root (a
    non-empty string without NUL). `choices`: the allowed strings (`fold_case`:
    compared lowercased). `item`: the kind of every item of a list.
    `default`: filled in when absent (none: the handler decides, or the
    argument is simply not there).
    """

    name: str
    kind: type | tuple[type, ...] = str
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    fold_case: bool = False
    item: type | None = None
    path: bool = False
    default: Any = _MISSING

    def check(self, value: Any) -> Any:
        name = self.name
        if self.path:
            if not isinstance(value, str) or not value.strip():
                raise ArgError(f"{name!r} must be a path (a non-empty string), got {_show(value)}")
            if "\x00" in value:
                raise ArgError(f"{name!r} must not contain a NUL character")
            return value
        if isinstance(self.kind, tuple):
            if not isinstance(value, self.kind):
                raise ArgError(f"{name!r} must be {' or '.join(_KIND_NAMES[k] for k in self.kind)}, "
                               f"got {_show(value)}")
        else:
            value = check_value(name, value, self.kind, self.min, self.max)
        if self.choices is not None and (value.lower() if self.fold_case else value) not in self.choices:
            raise ArgError(f"{name!r} must be one of {', '.join(self.choices)}, got {_show(value)}")
        if self.item is not None and isinstance(value, list):
            for i, x in enumerate(value):
                if not isinstance(x, self.item):
                    raise ArgError(f"{name}[{i}] must be {_KIND_NAMES[self.item]}, got {_show(x)}")
        return value

    def describe(self) -> str:
        """What a valid value is, in words."""
        if self.path:
            return "a path"
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        if isinstance(self.kind, tuple):
            return " or ".join(_KIND_NAMES[k] for k in self.kind)
        return expectation(self.kind, self.min, self.max)


def path(name: str, required: bool = False, default: Any = _MISSING) -> Param:
    """A path argument (resolved under the worker's data root by the handler)."""
    return Param(name, required=required, path=True, default=default)


@dataclass(frozen=True)
class JobArgs:
    """The arguments of one built-in job type.

    `open`: any arguments at all (util.noop); `rules`: cross-argument checks
    on the checked args, each returning a refusal or None.
    """

    type: str
    params: tuple[Param, ...] = ()
    rules: tuple[Rule, ...] = ()
    open: bool = False
    names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(p.name for p in self.params))

    def parse(self, args: Any) -> dict:
        """The args checked, defaults filled in (ArgError naming the first bad one)."""
        amap = args_map(args)
        if self.open:
            return amap
        if not self.names.issuperset(amap):
            check_keys(amap, self.names)
        out: dict = {}
        for p in self.params:
            if p.name in amap:
                out[p.name] = p.check(amap[p.name])
            elif p.required:
                raise ArgError(f"missing required argument {p.name!r} ({p.describe()})")
            elif p.default is not _MISSING:
                out[p.name] = p.default
        for rule in self.rules:
            problem = rule(out)
            if problem is not None:
                raise ArgError(problem)
        return out


# ------------------------------------------------------------------ the rules


def _text_or_path(a: dict) -> str | None:
    if ("text" in a) == ("path" in a):
        return "give exactly one of 'text' (the text itself) or 'path' (a file)"
    return None


def _primes_list_bound(a: dict) -> str | None:
    if a["list"] and a["n"] > MAX_PRIMES_LIST_N:
        return (f"'list' is only allowed for n <= {MAX_PRIMES_LIST_N} (got n={a['n']}); "
                "omit it to get just the count")
    return None


def _a_size(a: dict) -> str | None:
    return "give 'width', 'height' or both" if "width" not in a and "height" not in a else None


def _a_target_format(a: dict) -> str | None:
    if "format" not in a and "output" not in a:
        return "give 'format' (png, jpeg, webp, gif, bmp, tiff) or an 'output' with that extension"
    return None


def _one_line_subject(a: dict) -> str | None:
    return "'subject' must be one line" if "\n" in a["subject"] or "\r" in a["subject"] else None


def _backup_prefix(a: dict) -> str | None:
    prefix = a.get("prefix")
    if prefix is None or BACKUP_PREFIX_RE.fullmatch(prefix):
        return None
    return f"'prefix' must be 1-100 letters, digits, '.', '_' or '-', got {_show(prefix)}"


def _pipeline_steps(a: dict) -> str | None:
    """Each step's shape; which types exist is the worker's registry's to say."""
    for i, step in enumerate(a["steps"], start=1):
        if not isinstance(step, dict) or "type" not in step:
            return f"step {i} must be a map with a 'type' and optional 'args', got {_show(step)}"
        unknown = sorted(map(str, set(step) - {"type", "args"}))
        if unknown:
            return f"step {i}: unknown key(s) {', '.join(map(repr, unknown))} (expected: type, args)"
        if not isinstance(step["type"], str):
            return f"step {i}: 'type' must be a job type name, got {_show(step['type'])}"
        if step["type"] == "batch.pipeline":
            return f"step {i}: pipelines cannot be nested"
        if not isinstance(step.get("args", {}), dict):
            return f"step {i}: 'args' must be a map, got {_show(step['args'])}"
    return None


def _probe_shapes(a: dict) -> str | None:
    """Each probe's keys; its URL, address and host are the worker's to judge."""
    allowed = ("contains", "expect_status", "name", "tcp", "timeout", "url")
    for i, probe in enumerate(a["probes"]):
        where = f"probes[{i}]"
        if not isinstance(probe, dict):
            return f"{where} must be a map like {{\"url\": \"http://...\"}} or {{\"tcp\": \"host:port\"}}"
        unknown = sorted(map(str, set(probe) - set(allowed)))
        if unknown:
            return f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected: {', '.join(allowed)})"
        if ("url" in probe) == ("tcp" in probe):
            return f"{where}: give exactly one of 'url' or 'tcp'"
    return None


def _alert_channels(a: dict) -> str | None:
    unknown = sorted(map(str, set(a.get("alert", ())) - {"webhook", "email"}))
    if unknown:
        return f"'alert': unknown channel(s) {', '.join(map(repr, unknown))} (expected: webhook, email)"
    return None


# ------------------------------------------------------------------ the table

_OUTPUT = path("output")
_DELIMITER = Param("delimiter", str, min=1, max=1, default=",")
_IMAGE_COMMON = (path("path", required=True), _OUTPUT,
                 Param("format", str, choices=IMAGE_FORMATS, fold_case=True),
                 Param("quality", int, min=1, max=100, default=85))
_RECIPIENTS = (str, list)

BUILTIN_ARGS: dict[str, JobArgs] = {spec.type: spec for spec in (
    JobArgs("util.noop", open=True),
    JobArgs("util.sleep", (Param("seconds", float, required=True, min=0, max=MAX_SLEEP_S),)),
    JobArgs("util.fail", (Param("message", str, default="util.fail: failing as asked"),
                          Param("retryable", bool, default=True))),
    JobArgs("text.wordcount", (Param("text", str, required=True),)),
    JobArgs("text.convert", (
        Param("op", str, required=True, choices=CONVERT_OPS),
        Param("text", str, max=MAX_TEXT_BYTES), path("path"), _OUTPUT, _DELIMITER,
        Param("types", bool, default=True), Param("title", str),
    ), rules=(_text_or_path,)),
    JobArgs("math.primes", (Param("n", int, required=True, min=0, max=MAX_PRIMES_N),
                            Param("list", bool, default=False)), rules=(_primes_list_bound,)),
    JobArgs("math.factorial", (Param("n", int, required=True, min=0, max=MAX_FACTORIAL_N),)),
    JobArgs("file.compress", (path("path", required=True), Param("format", str, choices=COMPRESS_FORMATS,
                                                                  default="gzip"),
                              _OUTPUT, Param("level", int, min=1, max=9))),
    JobArgs("file.decompress", (path("path", required=True), Param("format", str, choices=COMPRESS_FORMATS),
                                _OUTPUT, Param("max_bytes", int, min=1))),
    JobArgs("file.checksum", (path("path", required=True),
                              Param("algorithm", str, choices=HASHES, default="sha256"), Param("expect", str))),
    JobArgs("http.fetch", (
        Param("url", str, required=True), Param("timeout", float, min=0.1, max=120, default=10.0),
        Param("max_bytes", int, min=1, max=HTTP_MAX_BYTES_LIMIT, default=HTTP_DEFAULT_MAX_BYTES),
        _OUTPUT, Param("fail_on_status", bool, default=True),
    )),
    JobArgs("image.resize", (*_IMAGE_COMMON, Param("width", int, min=1, max=IMAGE_MAX_SIDE),
                             Param("height", int, min=1, max=IMAGE_MAX_SIDE),
                             Param("keep_aspect", bool, default=True)), rules=(_a_size,)),
    JobArgs("image.convert", _IMAGE_COMMON, rules=(_a_target_format,)),
    JobArgs("image.filter", (*_IMAGE_COMMON, Param("filter", str, required=True, choices=IMAGE_FILTERS),
                             Param("radius", float, min=0.1, max=100, default=2.0),
                             Param("size", int, min=1, max=4096, default=128))),
    JobArgs("data.csv_stats", (path("path", required=True), Param("columns", list, min=1, item=str),
                               Param("group_by", str), _DELIMITER)),
    JobArgs("archive.create", (path("source", required=True), path("output", required=True),
                               Param("format", str, choices=ARCHIVE_FORMATS))),
    JobArgs("archive.extract", (path("path", required=True), path("target"),
                                Param("format", str, choices=ARCHIVE_FORMATS), Param("max_bytes", int, min=1),
                                Param("max_entries", int, min=1), Param("max_ratio", float, min=1))),
    JobArgs("email.send", (
        Param("to", _RECIPIENTS, required=True), Param("cc", _RECIPIENTS), Param("bcc", _RECIPIENTS),
        Param("subject", str, required=True, max=998), Param("body", str, required=True, max=EMAIL_MAX_BYTES),
        Param("html", str, max=EMAIL_MAX_BYTES), Param("reply_to", _RECIPIENTS),
        Param("attachments", list, max=EMAIL_MAX_ATTACHMENTS, item=str, default=()),
    ), rules=(_one_line_subject,)),
    JobArgs("report.generate", (
        path("path", required=True), path("output", required=True), Param("format", str, choices=REPORT_FORMATS),
        Param("title", str, max=200), Param("label", str), Param("value", str),
        Param("agg", str, choices=REPORT_AGGS, default="sum"), Param("top", int, min=1, max=100, default=20),
        _DELIMITER,
    )),
    JobArgs("batch.pipeline", (Param("steps", list, required=True, min=1, max=PIPELINE_MAX_STEPS),),
            rules=(_pipeline_steps,)),
    JobArgs("web.scrape", (
        Param("url", str, required=True), Param("max_pages", int, min=1, max=SCRAPE_MAX_PAGES, default=20),
        Param("timeout", float, min=0.1, max=60, default=10.0), Param("delay", float, min=0, max=10, default=0.0),
        Param("prefix", bool, default=False),
    )),
    JobArgs("logs.analyze", (path("path", required=True), Param("top", int, min=1, max=1000, default=10),
                             Param("latency_unit", str, choices=LATENCY_UNITS, default="s"))),
    JobArgs("maintenance.backup", (path("source", required=True), path("dest", default="backups"),
                                   Param("keep", int, min=1, max=10_000, default=7), Param("prefix", str)),
            rules=(_backup_prefix,)),
    JobArgs("maintenance.sync", (path("source", required=True), path("dest", required=True),
                                 Param("delete", bool, default=False), Param("dry_run", bool, default=False))),
    JobArgs("health.check", (Param("probes", list, required=True, min=1, max=MAX_PROBES),
                             Param("alert", dict), Param("fail_on_alert", bool, default=False)),
            rules=(_probe_shapes, _alert_channels)),
)}

# The node's view: a type whose args can be refused -> its parser. util.noop
# (any args) is left out: its submits (the benchmarks') pay one dict miss, as
# a custom type's do.
_CHECKED: dict[str, Callable[[Any], dict]] = {t: s.parse for t, s in BUILTIN_ARGS.items() if not s.open}


def refusal(spec: dict) -> str | None:
    """Why the args of job spec `spec` (a submit's JobSpec or a schedule's
    job template) cannot run, when its type is a built-in; None when they can,
    or when the type is not a built-in (its worker checks them)."""
    job_type = spec.get("type")
    parse = _CHECKED.get(job_type) if job_type.__class__ is str else None
    if parse is None:
        return None
    try:
        parse(spec.get("args"))
    except ArgError as exc:
        return f"{job_type}: {exc}"
    return None
