"""The built-in job types' argument schemas (cluster/jobargs.py).

For every built-in type: the docs/job-types.md examples pass, and typos made
from them (an unknown key, a required argument left out, a wrong type, a value
out of range or not among the choices) are refused naming the argument. The
worker's handler refuses each typo with the very message the node gives, since
both read the one declaration.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_args
from cluster.jobargs import BUILTIN_ARGS, ArgError, JobArgs, Param, refusal
from worker.context import JobContext, JobSettings
from worker.jobs import BUILTINS
from worker.registry import BadArgument

DOC = Path(__file__).resolve().parents[2] / "docs" / "job-types.md"
# Types the docs show no example of: their smallest valid args.
NO_EXAMPLE: dict[str, dict[str, Any]] = {"util.fail": {}, "util.noop": {}}


def doc_examples() -> list[tuple[str, dict[str, Any]]]:
    """(type, args) of every `raftq submit` line in docs/job-types.md, parsed as the CLI parses them."""
    found = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("raftq submit "):
            continue
        words = shlex.split(line)
        job_type, rest = words[2], words[3:]
        pairs: list[str] = []
        json_pairs: list[str] = []
        args_json = None
        while rest:
            word = rest.pop(0)
            if word == "--arg":
                pairs.append(rest.pop(0))
            elif word == "--arg-json":
                json_pairs.append(rest.pop(0))
            elif word == "--args-json":
                args_json = rest.pop(0)
            else:
                assert word == "--wait", f"an option this test does not know in: {line}"
        found.append((job_type, build_args(tuple(pairs), tuple(json_pairs), args_json)))
    return found


EXAMPLES = doc_examples()


def valid_args() -> dict[str, dict[str, Any]]:
    """One valid example per built-in type."""
    out = dict(NO_EXAMPLE)
    for job_type, args in EXAMPLES:
        out.setdefault(job_type, args)
    return out


VALID = valid_args()


def test_every_builtin_has_a_schema_and_an_example() -> None:
    assert sorted(BUILTIN_ARGS) == sorted(BUILTINS)
    assert sorted(VALID) == sorted(BUILTINS)
    assert len(EXAMPLES) > 25


@pytest.mark.parametrize(("job_type", "args"), EXAMPLES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(EXAMPLES)])
def test_the_documented_examples_pass(job_type: str, args: dict[str, Any]) -> None:
    assert refusal({"type": job_type, "args": args}) is None


def test_every_declared_argument_is_documented() -> None:
    """In its type's section of docs/job-types.md (or its util table row), or
    in its family's preface (the images share theirs)."""
    doc = DOC.read_text()
    for job_type, schema in BUILTIN_ARGS.items():
        heading = re.search(rf"^### `{re.escape(job_type)}`.*?(?=^##|\Z)", doc, re.S | re.M)
        if heading is None:
            text = re.search(rf"^\| `{re.escape(job_type)}` \|.*$", doc, re.M).group(0)  # type: ignore[union-attr]
        else:
            family = doc.rindex("\n## ", 0, heading.start())
            text = doc[family:doc.index("\n### ", family)] + heading.group(0)
        missing = [p.name for p in schema.params if f"`{p.name}`" not in text]
        assert missing == [], f"{job_type}: {missing} not in docs/job-types.md"


def _wrong_kind(p: Param) -> Any:
    """A value of the wrong kind for `p`: the classic mistakes (a number as a string, ...)."""
    if p.path or p.kind is str or isinstance(p.kind, tuple):
        return 5
    return {int: "5", float: "1.5", bool: "true", list: "a", dict: "a"}[p.kind]  # type: ignore[index]


def typos() -> list[tuple[str, dict[str, Any], str]]:
    """(type, bad args, what the refusal must say) made from each type's valid args."""
    out = []
    for job_type, schema in sorted(BUILTIN_ARGS.items()):
        if schema.open:
            continue
        good = VALID[job_type]
        out.append((job_type, {**good, "bogus_key": 1}, "unknown argument 'bogus_key'"))
        for p in schema.params:
            if p.required:
                out.append((job_type, {k: v for k, v in good.items() if k != p.name},
                            f"missing required argument {p.name!r}"))
            out.append((job_type, {**good, p.name: _wrong_kind(p)}, f"{p.name!r} must be"))
            if p.kind in (int, float) and p.max is not None:
                out.append((job_type, {**good, p.name: p.max + 1}, f"{p.name!r} must be"))
            if p.kind in (int, float) and p.min is not None:
                out.append((job_type, {**good, p.name: p.min - 1}, f"{p.name!r} must be"))
            if p.choices is not None:
                out.append((job_type, {**good, p.name: "nope"}, f"{p.name!r} must be one of"))
    return out


TYPOS = typos()


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    return JobContext("j1", 1, {}, tmp_path / "work", type="test", settings=JobSettings(data_root=tmp_path))


@pytest.mark.parametrize(("job_type", "args", "says"), TYPOS,
                         ids=[f"{t}-{s}" for t, _, s in TYPOS])
def test_typos_are_refused_by_the_node_and_the_handler_alike(job_type: str, args: dict[str, Any], says: str,
                                                              ctx: JobContext) -> None:
    why = refusal({"type": job_type, "args": args})
    assert why is not None and why.startswith(f"{job_type}: ") and says in why, why
    handler = BUILTINS[job_type][0]
    with pytest.raises(BadArgument) as info:
        handler(args, ctx)
    assert f"{job_type}: {info.value}" == why
    assert info.value.retryable is False


def test_every_type_has_typos_of_each_kind() -> None:
    kinds = {(t, s.split()[0]) for t, _, s in TYPOS}
    for job_type, schema in BUILTIN_ARGS.items():
        if not schema.open:
            assert (job_type, "unknown") in kinds and any(k == job_type for k, _ in kinds)


RULES = [
    ("math.primes", {"n": 2_000_000, "list": True}, "'list' is only allowed for n <= 1000000"),
    ("text.convert", {"op": "upper"}, "give exactly one of 'text' (the text itself) or 'path' (a file)"),
    ("text.convert", {"op": "upper", "text": "a", "path": "b"}, "give exactly one of"),
    ("text.convert", {"op": "upper", "text": "a", "delimiter": ";;"}, "'delimiter' must be a string of length"),
    ("image.resize", {"path": "a.png"}, "give 'width', 'height' or both"),
    ("image.convert", {"path": "a.png"}, "give 'format'"),
    ("image.convert", {"path": "a.png", "format": "bitmap"}, "'format' must be one of"),
    ("email.send", {"to": "a@b.c", "subject": "two\nlines", "body": "x"}, "'subject' must be one line"),
    ("email.send", {"to": "a@b.c", "subject": "s", "body": "x", "attachments": [1]}, "attachments[0] must be a string"),
    ("data.csv_stats", {"path": "a.csv", "columns": ["a", 2]}, "columns[1] must be a string"),
    ("data.csv_stats", {"path": "a.csv", "columns": []}, "'columns' must be a list of length >= 1"),
    ("batch.pipeline", {"steps": [{"type": "batch.pipeline"}]}, "step 1: pipelines cannot be nested"),
    ("batch.pipeline", {"steps": [{"type": "util.noop", "arg": {}}]}, "step 1: unknown key(s) 'arg'"),
    ("batch.pipeline", {"steps": [{"args": {}}]}, "step 1 must be a map with a 'type'"),
    ("batch.pipeline", {"steps": [{"type": "util.noop", "args": []}]}, "step 1: 'args' must be a map"),
    ("batch.pipeline", {"steps": []}, "'steps' must be a list of length between 1 and 20"),
    ("maintenance.backup", {"source": "s", "prefix": "../x"}, "'prefix' must be 1-100 letters"),
    ("maintenance.backup", {"source": "s", "prefix": "ok\n"}, "'prefix' must be 1-100 letters"),
    ("health.check", {"probes": [{"tcp": "h:1"}], "alert": {"pager": "x"}}, "unknown channel(s) 'pager'"),
    ("health.check", {"probes": [{"tcp": "h:1"}, {"urll": "http://x/"}]}, "probes[1]: unknown key(s) 'urll'"),
    ("health.check", {"probes": [{"tcp": "h:1", "url": "http://x/"}]}, "probes[0]: give exactly one of"),
    ("health.check", {"probes": ["http://x/"]}, "probes[0] must be a map"),
    ("file.compress", {"path": " "}, "'path' must be a path (a non-empty string)"),
    ("file.compress", {"path": "a\x00b"}, "'path' must not contain a NUL character"),
    ("util.sleep", {"seconds": float("nan")}, "'seconds' must be a number between 0 and 3600"),
    ("math.factorial", {"n": True}, "'n' must be an integer"),
    ("math.factorial", {"n": None}, "'n' must be an integer"),
    ("math.factorial", [5], "arguments must be a map"),
]


@pytest.mark.parametrize(("job_type", "args", "says"), RULES, ids=[s for _, _, s in RULES])
def test_rules_between_arguments_and_finer_checks(job_type: str, args: Any, says: str, ctx: JobContext) -> None:
    why = refusal({"type": job_type, "args": args})
    assert why is not None and says in why, why
    with pytest.raises(BadArgument, match=None) as info:
        BUILTINS[job_type][0](args, ctx)
    assert f"{job_type}: {info.value}" == why


def test_what_the_node_does_not_check() -> None:
    # Types of the user's own, util.noop's anything, and what is not a type name at all.
    assert refusal({"type": "images.thumbnail", "args": {"anything": [1]}}) is None
    assert refusal({"type": "util.noop", "args": {"n": 1, "pad": "x"}}) is None
    assert refusal({"type": ["math.primes"], "args": {}}) is None
    # A pipeline step's own args are checked when it runs (they may be "$prev").
    assert refusal({"type": "batch.pipeline",
                    "args": {"steps": [{"type": "math.primes", "args": {"n": "$prev.count"}}]}}) is None
    # No args at all is an empty map.
    assert refusal({"type": "util.fail"}) is None
    assert refusal({"type": "math.primes"}) == "math.primes: missing required argument 'n' (an integer between 0 and 50000000)"


def test_defaults_are_filled_in_and_the_args_are_not_changed() -> None:
    args = {"n": 10}
    assert BUILTIN_ARGS["math.primes"].parse(args) == {"n": 10, "list": False}
    assert args == {"n": 10}
    assert BUILTIN_ARGS["util.sleep"].parse({"seconds": 2}) == {"seconds": 2.0}
    assert BUILTIN_ARGS["image.convert"].parse({"path": "a", "format": "JPEG"})["format"] == "JPEG"


def test_a_schema_refuses_with_arg_error() -> None:
    schema = JobArgs("x.y", (Param("a", int, required=True, min=1),))
    with pytest.raises(ArgError, match="'a' must be an integer >= 1, got 0"):
        schema.parse({"a": 0})
    assert JobArgs("x.z", open=True).parse({"q": 1}) == {"q": 1}
