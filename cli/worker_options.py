"""The worker's options, derived from their one declaration in WorkerConfig.

Each WorkerConfig field declares how users set it (worker/config.py `Option`:
flag, help, default as shown, bounds). From that this module builds:
- the `raftq worker` click options (`worker_click_options`) and the
  WorkerConfig keyword arguments from what was given (`config_kwargs`);
- `raftq dev`'s pass-through: the same options on `raftq dev` (without env
  vars: the workers inherit the environment and read those themselves), and
  the worker argv for what was given (`worker_argv`);
- the options table of docs/worker-options.md (`markdown_table`; regenerate with
  `python -m cli.worker_options > docs/worker-options.md`, a test checks it).

Only types are parsed here; WorkerConfig checks the bounds, so a value out of
range gets the same one-line error from the flag, the env var and the API.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from worker.config import Option, WorkerConfig

F = TypeVar("F", bound=Callable[..., Any])

def _declared() -> list[tuple[str, Option, Any, Any]]:
    """(field, option, default, type) of every field offered on the command line."""
    hints = typing.get_type_hints(WorkerConfig)
    out = []
    for f in fields(WorkerConfig):
        opt: Option = f.metadata["option"]
        if opt.cli:
            out.append((f.name, opt, None if f.default is MISSING else f.default, hints[f.name]))
    return out


def flag_of(name: str, opt: Option) -> str:
    return opt.flag or "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    return f"RAFTQ_{name.upper()}"


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return str
    return args[0] if args and typing.get_origin(hint) is not None else hint


def shown_default(opt: Option, default: Any) -> str:
    """The default as users read it ("" for none)."""
    if opt.shown is not None:
        return opt.shown
    if default is None or default == ():
        return ""
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def help_text(name: str, opt: Option, default: Any, *, with_env: bool = True) -> str:
    shown = shown_default(opt, default)
    parts = [opt.help]
    if shown:
        parts.append(f"[default: {shown}]")
    if with_env:
        parts.append(f"[env {env_of(name)}, space-separated]" if opt.multiple else f"[env {env_of(name)}]")
    return " ".join(parts) + "."


def _click_option(name: str, opt: Option, default: Any, hint: Any, *, with_env: bool) -> Callable[[F], F]:
    base = _base_type(hint)
    flag = flag_of(name, opt)
    kw: dict[str, Any] = {"default": None, "help": help_text(name, opt, default, with_env=with_env)}
    if with_env:
        kw["envvar"] = env_of(name)
    if opt.metavar:
        kw["metavar"] = opt.metavar
    if opt.multiple:
        kw["multiple"] = True
        kw["default"] = ()
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, **kw)
    if base is Path:
        kw["type"] = click.Path(file_okay=opt.path != "dir", dir_okay=opt.path != "file", path_type=Path)
    elif base in (int, float):
        kw["type"] = base
    return click.option(flag, name, **kw)


def _options(with_env: bool, dev_only: bool) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for name, opt, default, hint in reversed(_declared()):
            if dev_only and not opt.dev:
                continue
            func = _click_option(name, opt, default, hint, with_env=with_env)(func)
        return func
    return decorate


def worker_click_options(func: F) -> F:
    """Every declared worker option as a `raftq worker` flag with its env var."""
    return _options(with_env=True, dev_only=False)(func)


def dev_click_options(func: F) -> F:
    """The worker options `raftq dev` passes through to its workers (no env vars: they inherit them)."""
    return _options(with_env=False, dev_only=True)(func)


def config_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """WorkerConfig keyword arguments for the options that were given; the
    others fall back to WorkerConfig's own defaults (one place for them)."""
    out: dict[str, Any] = {}
    for name, opt, _default, _hint in _declared():
        value = values.get(name)
        if value is None or (opt.multiple and not value):
            continue
        out[name] = tuple(value) if opt.multiple else value
    return out


def worker_argv(values: dict[str, Any]) -> list[str]:
    """`raftq worker` arguments for the given option values (None / empty: not given)."""
    argv: list[str] = []
    for name, opt, _default, hint in _declared():
        value = values.get(name)
        if value is None or (opt.multiple and not value):
            continue
        flag = flag_of(name, opt)
        if _base_type(hint) is bool:
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif opt.multiple:
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def markdown_table() -> str:
    rows = ["| flag | env | default | bounds | what |", "| --- | --- | --- | --- | --- |"]
    for name, opt, default, hint in _declared():
        flag = flag_of(name, opt)
        if _base_type(hint) is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        elif opt.metavar:
            flag = f"{flag} {opt.metavar}"
        bounds = "" if opt.lo is None or opt.hi is None else (
            f"{'> ' if opt.lo_open else ''}{_number(opt.lo)} .. {_number(opt.hi)}")
        what = opt.help.replace("|", "\\|") + ("" if opt.dev else " (not a `raftq dev` option)")
        rows.append(f"| `{flag}` | `{env_of(name)}` | {shown_default(opt, default) or '-'} | {bounds or '-'} | {what} |")
    return "\n".join(rows) + "\n"


DOC_HEADER = """# Worker options

`raftq worker` takes these options; each also reads the env var shown
(repeatable options: space-separated). `raftq dev` passes the ones it does not
set itself through to every worker it starts. A value out of bounds is refused
with a one-line error naming the setting. `--cluster` and `--token` are the
shared client options of every command.

This table is generated from `WorkerConfig` (worker/config.py): after changing
an option there, run `python -m cli.worker_options > docs/worker-options.md`.

"""


def render_doc() -> str:
    return DOC_HEADER + markdown_table()


if __name__ == "__main__":
    print(render_doc(), end="")
