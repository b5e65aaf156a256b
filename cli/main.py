"""The `raftq` command line: thin glue between click and the client library.

Every command parses its options, makes one or two calls on
`cluster.client.Client` (or starts a node / worker / dev cluster) and prints a
table for people or, with `--json`, one JSON document for programs.

Error contract (users and tests rely on it):
- a raftq error from the cluster (`RaftqError`), a bad config (`ConfigError`)
  or an OS error (file, socket) prints ONE line `error: <message>` to stderr
  and exits 1, never a traceback;
- bad command-line input prints ONE line `error: <message>` and exits 2
  (click's own usage errors keep click's usage text, also exit 2);
- `submit --wait` and `result` end with the job's outcome (cli/exit_codes.py):
  3 when it ended failed or cancelled, 4 when it is not finished (the wait
  timed out), each with one `error:` line.

Modules that are heavy or started in other processes (server, worker, client)
are imported inside the commands that need them, so `raftq --help` stays
fast and works even where a part is broken.
"""
from __future__ import annotations

import datetime
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from cli import exit_codes, output, ranges
from cli.alert import alert_commands
from cli.output import CliError, InputError
from cli.worker_options import config_kwargs, worker_click_options
from cluster.config import ConfigError, load_config, parse_address
from cluster.errors import BadRequest, RaftqError, Unauthorized, WaitTimeout
from replication.model import FINAL_STATES, MISFIRE_POLICIES
from replication.model import STATES as JOB_STATES

if TYPE_CHECKING:
    from cluster.client import Client
    from cluster.tls import ClientTls

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CLUSTER = "127.0.0.1:7700"
DEFAULT_WAIT_TIMEOUT_S = 3600.0  # `--wait-timeout` of submit and result

# The job-argument options of `submit` and `schedule add`.
ARG_HELP = ("A job argument as a string, whatever VALUE looks like (text=5 is \"5\"); "
            "for a number, boolean, list or map use --arg-json. Repeatable.")
ARG_JSON_HELP = "A job argument as a JSON value, e.g. n=5, list=true, tags='[\"a\",\"b\"]'. Repeatable."
ARGS_JSON_HELP = "All job arguments as one JSON value, usually an object (--arg and --arg-json set keys on top)."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, Unauthorized):
        return f"{exc.message} (check --token or RAFTQ_TOKEN)"
    if isinstance(exc, RaftqError):
        return exc.message
    return str(exc) or type(exc).__name__


_NO_ARGS_IS_HELP: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if c is not None
)


def _one_line_usage(exc: click.UsageError) -> click.UsageError:
    """Click's usage error as one `error: ...` line naming the --help to read."""
    if isinstance(exc, (InputError, *_NO_ARGS_IS_HELP)):
        return exc  # already one line, or `raftq` alone: show the help
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return InputError(exc.format_message() + hint, ctx=exc.ctx)


class RaftqGroup(click.Group):
    """A group that prints every failure as one `error: ...` line.

    User-facing exceptions (cluster errors, config errors, OS errors) become
    CliError (exit 1); click's usage errors become one-line InputErrors (exit
    2). Doing it here rather than only in `main` means CliRunner tests of the
    group see exactly what a user sees.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None
        except BrokenPipeError:
            raise  # `raftq list | head`: click silences it
        except (RaftqError, ConfigError, OSError) as exc:
            raise CliError(_describe(exc)) from exc


# ---------------------------------------------------------------- shared options


def _split_addresses(value: str) -> list[str]:
    addrs = [a.strip() for a in value.split(",") if a.strip()]
    if not addrs:
        raise InputError("--cluster: give at least one node address host:port[,host:port...]")
    for addr in addrs:
        try:
            parse_address(addr, "--cluster")
        except ConfigError as exc:
            raise InputError(str(exc)) from None
    return addrs


def cluster_options(func: F) -> F:
    """--cluster, --token and the TLS options, each with a RAFTQ_ env var (rq's shared_options)."""
    pem = click.Path(dir_okay=False, path_type=Path)
    func = click.option(
        "--tls-key", type=pem, envvar="RAFTQ_TLS_KEY", default=None,
        help="Key of --tls-cert [default: in the --tls-cert file] [env RAFTQ_TLS_KEY].",
    )(func)
    func = click.option(
        "--tls-cert", type=pem, envvar="RAFTQ_TLS_CERT", default=None,
        help="Client certificate (PEM) for nodes that require mutual TLS [env RAFTQ_TLS_CERT].",
    )(func)
    func = click.option(
        "--tls-ca", type=pem, envvar="RAFTQ_TLS_CA", default=None,
        help="Connect with TLS, trusting node certificates signed by this CA (PEM) [env RAFTQ_TLS_CA].",
    )(func)
    func = click.option(
        "--token", envvar="RAFTQ_TOKEN", default=None,
        help="Credential token: its roles decide what this command may do; `raftq dev` prints one per role "
             "[env RAFTQ_TOKEN; prefer the env var: a command line is visible to other users].",
    )(func)
    func = click.option(
        "--cluster", "cluster", envvar="RAFTQ_CLUSTER", default=DEFAULT_CLUSTER, show_default=True,
        help="Node address(es) host:port[,host:port...]; any one is enough [env RAFTQ_CLUSTER].",
    )(func)
    return func


def client_options(func: F) -> F:
    """cluster_options plus --request-timeout and --json, for commands that query."""
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")(func)
    func = click.option(
        "--request-timeout", type=click.FloatRange(min=0.1), envvar="RAFTQ_REQUEST_TIMEOUT",
        default=10.0, show_default=True,
        help="Give up a call after this many seconds of no reachable leader [env RAFTQ_REQUEST_TIMEOUT].",
    )(func)
    return cluster_options(func)


def client_tls(tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> ClientTls | None:
    """The TLS settings of the --tls-* options; None (plain TCP) when none is given."""
    if tls_ca is None and tls_cert is None and tls_key is None:
        return None
    if tls_key is not None and tls_cert is None:
        raise InputError("--tls-key needs --tls-cert (the certificate of that key)")
    from cluster.tls import ClientTls

    tls = ClientTls(ca=tls_ca, cert=tls_cert, key=tls_key)
    tls.context()  # an unusable file is one error line now, not a failure at the first connection
    return tls


def require_token(token: str | None) -> str:
    """The credential given by --token or RAFTQ_TOKEN; a usage error without one."""
    if not token:
        raise InputError("--token: no credential given; set RAFTQ_TOKEN or pass --token "
                         "(`raftq dev` prints one per role)")
    return token


def make_client(cluster: str, token: str | None, request_timeout: float, tls: ClientTls | None = None) -> Client:
    from cluster.client import Client

    return Client(_split_addresses(cluster), require_token(token), timeout_s=request_timeout, tls=tls)


class _ClientOnFirstUse:
    """The command's Client, made when the command first uses it: a command
    reports its bad input before a missing credential."""

    def __init__(self, cluster: str, token: str | None, request_timeout: float, tls: ClientTls | None) -> None:
        self._args = (cluster, token, request_timeout, tls)
        self._client: Client | None = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = make_client(*self._args)
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def with_client(func: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the cluster/token/TLS/request_timeout options by a `client`."""

    @functools.wraps(func)
    def wrapper(*, cluster: str, token: str | None, tls_ca: Path | None, tls_cert: Path | None,
                tls_key: Path | None, request_timeout: float, **kwargs: Any) -> Any:
        _split_addresses(cluster)  # a bad --cluster is bad input too
        client = _ClientOnFirstUse(cluster, token, request_timeout, client_tls(tls_ca, tls_cert, tls_key))
        try:
            return func(client=client, **kwargs)
        finally:
            client.close()

    return wrapper


# ---------------------------------------------------------------- helpers


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def parse_json_value(text: str) -> Any:
    """Strict JSON (no NaN/Infinity: msgpack and other languages choke on them)."""
    return json.loads(text, parse_constant=_reject_constant)


def _split_pair(option: str, pair: str) -> tuple[str, str]:
    key, sep, raw = pair.partition("=")
    if not sep or not key:
        raise InputError(f"{option} {pair!r}: expected KEY=VALUE")
    return key, raw


def build_args(pairs: tuple[str, ...], json_pairs: tuple[str, ...], args_json: str | None) -> Any:
    """Job args: --args-json (the base), then --arg KEY=VALUE (VALUE always a
    string, whatever it looks like: `text=5` is "5") and --arg-json KEY=JSON
    (a typed value: `n=5` is 5) set on top."""
    args: Any = {}
    if args_json is not None:
        try:
            args = parse_json_value(args_json)
        except ValueError as exc:
            raise InputError(f"--args-json: not valid JSON: {exc}") from None
    if (pairs or json_pairs) and not isinstance(args, dict):
        option = "--arg" if pairs else "--arg-json"
        raise InputError(f"{option} cannot be combined with --args-json that is not a JSON object")
    as_strings: set[str] = set()
    for pair in pairs:
        key, raw = _split_pair("--arg", pair)
        args[key] = raw
        as_strings.add(key)
    for pair in json_pairs:
        key, raw = _split_pair("--arg-json", pair)
        if key in as_strings:
            raise InputError(f"argument {key!r} is given by both --arg and --arg-json; give it once")
        try:
            args[key] = parse_json_value(raw)
        except ValueError as exc:
            raise InputError(f"--arg-json {pair!r}: {raw!r} is not valid JSON ({exc}); "
                             f"for a string use --arg {key}=...") from None
    return args


def arg_hint(exc: BadRequest, pairs: tuple[str, ...]) -> BadRequest:
    """`exc` (a refusal of the job's args) with a hint when it names an --arg
    whose string looks like a typed value: `--arg n=5` gives "5", not 5."""
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            typed = not isinstance(parse_json_value(raw), str)
        except ValueError:
            typed = False
        if typed and f"{key!r} must be" in exc.message:
            return BadRequest(f"{exc.message} (--arg always gives a string: use --arg-json {key}={raw})")
    return exc


def parse_iso_time(text: str) -> datetime.datetime:
    """--run-at: an ISO 8601 time; without an offset it is local time."""
    try:
        return datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--run-at {text!r}: expected an ISO 8601 time such as 2030-01-02T03:04:05+00:00") from None


def parse_resources(text: str) -> dict[str, Any]:
    """--resources cpu=N,mem_mb=M (either may be left out)."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, raw = part.partition("=")
        key = key.strip()
        try:
            if not sep or key not in ("cpu", "mem_mb") or key in out:
                raise ValueError
            value: float | int = int(raw) if key == "mem_mb" else float(raw)
            if value < 0 or value != value or value == float("inf"):
                raise ValueError
        except ValueError:
            raise InputError(f"--resources {text!r}: expected cpu=N,mem_mb=M with non-negative numbers "
                             f"(mem_mb an integer)") from None
        out[key] = value
    return out


def _job_line(view: dict[str, Any]) -> str:
    error = view.get("error")
    tail = f": {error}" if error else ""
    return f"job {view.get('id')} {view.get('state')}{tail}"


def _exit_with(message: str, code: int) -> NoReturn:
    """One `error: ...` line and exit `code` (cli/exit_codes.py)."""
    error = CliError(message)
    error.exit_code = code
    raise error


def _finish_with_result(view: dict[str, Any], as_json: bool) -> None:
    """Print a final job's result; exit JOB_NOT_SUCCEEDED if it did not succeed."""
    if as_json:
        output.emit_json(view)
    elif view.get("state") == "succeeded":
        click.echo(output.to_json(view.get("result"), indent=None))
    if view.get("state") != "succeeded":
        _exit_with(_job_line(view), exit_codes.JOB_NOT_SUCCEEDED)


def wait_for_job(client: Client, job_id: str, wait_timeout: float, as_json: bool) -> dict[str, Any]:
    """The job's final view, waiting at most `wait_timeout` s; else exit
    NOT_FINISHED. The one wait of `submit --wait` and `result --wait`."""
    from cli.progress import wait_for_final  # the progress display (stderr) while waiting

    try:
        return wait_for_final(client, job_id, wait_timeout)
    except WaitTimeout as exc:
        if as_json and exc.view is not None:
            output.emit_json(exc.view)
        state = exc.view.get("state") if exc.view is not None else "not finished"
        _exit_with(f"job {job_id} is still {state} after --wait-timeout {wait_timeout:g}s; it goes on "
                   f"(raftq result {job_id} --wait)", exit_codes.NOT_FINISHED)


def _deprecated_timeout(command: str, old: float | None, new: float | None, new_flag: str) -> float | None:
    """`--timeout` where it is kept for old scripts: its value, with one note on stderr."""
    if old is None:
        return new
    if new is not None:
        raise InputError(f"give {new_flag} only; --timeout is its deprecated spelling")
    click.echo(f"warning: `raftq {command} --timeout` is deprecated; use {new_flag}", err=True)
    return old


def _emit_state(job_id: str, state: str, as_json: bool) -> None:
    if as_json:
        output.emit_json({"id": job_id, "state": state})
    else:
        click.echo(f"{job_id} {state}")


def _age(ts: float | None) -> str:
    return "-" if ts is None else output.format_duration(time.time() - ts)


# ---------------------------------------------------------------- commands


@click.group(cls=RaftqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftq", prog_name="raftq")
def raftq() -> None:
    """raftq: a distributed job queue replicated by Raft.

    Start a local 3-node cluster with `raftq dev`, then submit jobs with
    `raftq submit TYPE --arg key=value --wait`.
    """


@raftq.command()
@click.option("--config", "config_path", required=True, envvar="RAFTQ_CONFIG",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster TOML file [env RAFTQ_CONFIG].")
@click.option("--id", "node_id", required=True, type=click.IntRange(min=1), envvar="RAFTQ_NODE_ID",
              help="This node's id in the config [env RAFTQ_NODE_ID].")
# No env var: a one-off start mode must not linger in a service's environment.
@click.option("--rejoin", is_flag=True,
              help="First start after this node's data dir was wiped: it casts no vote until it has "
                   "heard from the leader (see docs/storage.md). Ignored if the node has state.")
def node(config_path: Path, node_id: int, rejoin: bool) -> None:
    """Run one queue node of the cluster (in the foreground)."""
    cfg = load_config(config_path)
    cfg.node(node_id)  # an unknown id is a user error, before the server starts
    from cli.node_preflight import CannotStart, preflight
    from cluster.server import run_node
    from replication.raft import DumpError, JournalError, RaftStartError

    try:
        # The lock is held until the process ends: the same node started twice is refused.
        with preflight(cfg, node_id):
            code = run_node(cfg, node_id, rejoin=rejoin)
    except (CannotStart, JournalError, DumpError, RaftStartError) as exc:  # running, unbindable, damaged storage
        raise CliError(f"node {node_id} refuses to start: {exc}") from None
    sys.exit(code)


@raftq.command()
@cluster_options
@worker_click_options
def worker(cluster: str, token: str | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
           **options: Any) -> None:
    """Run a worker: lease jobs from the cluster, run them, report results."""
    kwargs: dict[str, Any] = {"cluster": tuple(_split_addresses(cluster)), "token": require_token(token),
                              "tls": client_tls(tls_ca, tls_cert, tls_key), **config_kwargs(options)}
    from worker.config import WorkerConfig

    try:
        cfg = WorkerConfig(**kwargs)
    except ValueError as exc:  # worker.config.ConfigError: names the field
        raise CliError(str(exc)) from None
    require_token(token)  # after the other settings, which are reported first
    from worker.runner import run_worker

    sys.exit(run_worker(cfg))


@raftq.command(epilog=exit_codes.help_epilog())
@click.argument("job_type", metavar="TYPE")
@click.option("--arg", "arg_pairs", multiple=True, metavar="KEY=VALUE", help=ARG_HELP)
@click.option("--arg-json", "arg_json_pairs", multiple=True, metavar="KEY=JSON", help=ARG_JSON_HELP)
@click.option("--args-json", metavar="JSON", help=ARGS_JSON_HELP)
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", type=ranges.PRIORITY, default=0, show_default=True, help="Higher runs first.")
@click.option("--max-attempts", type=ranges.MAX_ATTEMPTS_RANGE, default=3, show_default=True)
@click.option("--id", "job_id", default=None,
              help="Job id [default: random]. Submitting an existing id again returns that job if the spec is "
                   "the same, else fails (CONFLICT).")
@click.option("--delay", type=ranges.DELAY_S, default=None, help="Run no earlier than this many seconds from now.")
@click.option("--run-timeout", type=ranges.RUN_TIMEOUT_S, default=None, metavar="SECONDS",
              help="Per-attempt run time limit of the job (a worker stops an attempt that runs longer).")
@click.option("--timeout", "old_timeout", type=ranges.RUN_TIMEOUT_S, default=None, hidden=True,
              help="Deprecated spelling of --run-timeout.")
@click.option("--unique-key", default=None, help="While a live job holds this key, return it instead of a new one.")
@click.option("--run-at", default=None, metavar="ISO8601",
              help="Run no earlier than this time, e.g. 2030-01-02T03:04:05+00:00 (no offset: local time).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="ID",
              help="Run only after job ID succeeded (cancelled if it fails). Repeatable.")
@click.option("--resources", default=None, metavar="cpu=N,mem_mb=M",
              help="What the job needs free on a worker, e.g. cpu=2,mem_mb=512.")
@click.option("--wait", is_flag=True, help="Wait for the job to finish and print its result.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=DEFAULT_WAIT_TIMEOUT_S, show_default=True,
              metavar="SECONDS",
              help="With --wait: stop waiting after this many seconds (the job goes on; exit 4).")
@client_options
@with_client
def submit(client: Client, job_type: str, arg_pairs: tuple[str, ...], arg_json_pairs: tuple[str, ...],
           args_json: str | None, queue: str, priority: int, max_attempts: int, job_id: str | None,
           delay: float | None, run_timeout: float | None, old_timeout: float | None, unique_key: str | None,
           run_at: str | None, depends_on: tuple[str, ...], resources: str | None, wait: bool,
           wait_timeout: float, as_json: bool) -> None:
    """Submit a job of TYPE; print its id (with --wait, its result).

    A built-in TYPE's arguments are checked before the job is queued: a
    missing, unknown or mistyped one is refused, naming it."""
    timeout = _deprecated_timeout("submit", old_timeout, run_timeout, "--run-timeout")
    args = build_args(arg_pairs, arg_json_pairs, args_json)
    if delay is not None and run_at is not None:
        raise InputError("give either --delay or --run-at, not both")
    try:
        new_id = client.submit(
            job_type, args, id=job_id, queue=queue, priority=priority, max_attempts=max_attempts,
            timeout=timeout, delay=delay, unique_key=unique_key,
            run_at=parse_iso_time(run_at) if run_at is not None else None,
            depends_on=list(depends_on) or None,
            resources=parse_resources(resources) if resources is not None else None,
        )
    except BadRequest as exc:
        raise arg_hint(exc, arg_pairs) from None
    if not wait:
        if as_json:
            output.emit_json({"id": new_id})
        else:
            click.echo(new_id)
        return
    click.echo(f"submitted {new_id}, waiting...", err=True)
    _finish_with_result(wait_for_job(client, new_id, wait_timeout, as_json), as_json)


def _job_fields(view: dict[str, Any]) -> list[tuple[str, Any]]:
    progress = view.get("progress")
    if isinstance(progress, (list, tuple)) and len(progress) == 2 and isinstance(progress[0], (int, float)):
        progress = f"{progress[0] * 100:.0f}% {progress[1] or ''}".rstrip()
    created = view.get("created_at")
    return [
        ("id", view.get("id")),
        ("type", view.get("type")),
        ("state", view.get("state")),
        ("queue", view.get("queue")),
        ("priority", view.get("priority")),
        ("attempts", f"{view.get('attempts')}/{view.get('max_attempts')}"),
        ("created", f"{output.format_time(created)} ({_age(created)} ago)" if created else None),
        ("run at", output.format_time(view.get("run_at")) if view.get("run_at") else None),
        ("started", output.format_time(view.get("started_at")) if view.get("started_at") else None),
        ("finished", output.format_time(view.get("finished_at")) if view.get("finished_at") else None),
        ("timeout", f"{view['timeout_s']:g}s" if isinstance(view.get("timeout_s"), (int, float)) else None),
        ("unique key", view.get("unique_key")),
        ("worker", view.get("worker")),
        ("progress", progress),
        ("args", view.get("args")),
        ("result", view.get("result")),
        ("error", view.get("error")),
    ]


@raftq.command()
@click.argument("job_id", metavar="ID")
@client_options
@with_client
def status(client: Client, job_id: str, as_json: bool) -> None:
    """Show a job's state and fields."""
    view = client.get(job_id)
    if as_json:
        output.emit_json(view)
    else:
        output.emit_fields(_job_fields(view))


@raftq.command(epilog=exit_codes.help_epilog())
@click.argument("job_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait until the job is finished.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help=f"With --wait: stop waiting after this many seconds (the job goes on; exit 4) "
                   f"[default: {DEFAULT_WAIT_TIMEOUT_S:g}].")
@click.option("--timeout", "old_timeout", type=click.FloatRange(min=0), default=None, hidden=True,
              help="Deprecated spelling of --wait-timeout.")
@client_options
@with_client
def result(client: Client, job_id: str, wait: bool, wait_timeout: float | None, old_timeout: float | None,
           as_json: bool) -> None:
    """Print a finished job's result (exit 3 if it failed or was cancelled, 4 if not finished)."""
    wait_timeout = _deprecated_timeout("result", old_timeout, wait_timeout, "--wait-timeout")
    if wait:
        view = wait_for_job(client, job_id, DEFAULT_WAIT_TIMEOUT_S if wait_timeout is None else wait_timeout, as_json)
    else:
        view = client.get(job_id)
    if view.get("state") not in FINAL_STATES:
        if as_json:
            output.emit_json(view)
        _exit_with(f"job {job_id} is {view.get('state')}, not finished (use --wait)", exit_codes.NOT_FINISHED)
    _finish_with_result(view, as_json)


@raftq.command(name="list")
@click.option("--state", type=click.Choice(JOB_STATES), default=None, help="Only jobs in this state.")
@click.option("--queue", default=None, help="Only jobs of this queue.")
@click.option("--schedule", default=None, metavar="NAME", help="Only jobs fired by this schedule.")
@click.option("--limit", type=ranges.op_range("list", "limit"), default=100, show_default=True)
@click.option("--cursor", type=ranges.op_range("list", "cursor"), default=None,
              help="Continue a previous listing from the cursor it printed.")
@client_options
@with_client
def list_cmd(client: Client, state: str | None, queue: str | None, schedule: str | None, limit: int,
             cursor: int | None, as_json: bool) -> None:
    """List jobs, oldest first."""
    page = client.list(state=state, queue=queue, limit=limit, cursor=cursor, schedule=schedule)
    if as_json:
        output.emit_json(page)
        return
    jobs = page.get("jobs") or []
    output.emit_table(
        ["ID", "TYPE", "QUEUE", "PRIORITY", "STATE", "ATTEMPTS", "AGE"],
        [[j.get("id"), j.get("type"), j.get("queue"), str(j.get("priority")), j.get("state"),
          f"{j.get('attempts')}/{j.get('max_attempts')}", _age(j.get("created_at"))] for j in jobs],
    )
    if page.get("cursor") is not None:
        click.echo(f"more: --cursor {page['cursor']}", err=True)


@raftq.command()
@click.argument("job_id", metavar="ID")
@client_options
@with_client
def cancel(client: Client, job_id: str, as_json: bool) -> None:
    """Cancel a job (a running one is told to stop)."""
    state = client.cancel(job_id)
    _emit_state(job_id, state, as_json)


@raftq.command()
@click.argument("job_id", metavar="ID")
@client_options
@with_client
def retry(client: Client, job_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled job again (attempts start over)."""
    state = client.retry(job_id)
    _emit_state(job_id, state, as_json)


@raftq.command()
@client_options
@with_client
def stats(client: Client, as_json: bool) -> None:
    """Job counts by state and by queue."""
    data = client.stats()
    if as_json:
        output.emit_json(data)
        return
    by_state = data.get("jobs") or {}
    click.echo(f"node {data.get('node_id')} ({data.get('role')}), leader {data.get('leader') or '-'}, "
               f"{data.get('live', '-')} live jobs")
    click.echo()
    output.emit_table(["STATE", "JOBS"], [[s, str(by_state.get(s, 0))] for s in JOB_STATES])
    queues = data.get("queues") or {}
    if queues:
        click.echo()
        output.emit_table(
            ["QUEUE", *(s.upper() for s in JOB_STATES)],
            [[q, *(str(counts.get(s, 0)) for s in JOB_STATES)] for q, counts in sorted(queues.items())],
        )


@raftq.group(name="cluster", cls=RaftqGroup)
def cluster_group() -> None:
    """Inspect the cluster's nodes."""


@cluster_group.command(name="status")
@client_options
@with_client
def cluster_status(client: Client, as_json: bool) -> None:
    """The leader and each node's role, as the node that answers sees them (unreachable: no Raft link to it)."""
    data = client.cluster_status()
    if as_json:
        output.emit_json(data)
        return
    nodes = data.get("nodes") or []
    linked = sum(1 for n in nodes if n.get("role") != "unreachable")
    if data.get("leader"):
        leader = data["leader"]
    elif nodes and 2 * linked <= len(nodes):
        leader = f"none (no quorum: {linked} of {len(nodes)} nodes reachable from node {data.get('self', '-')})"
    else:
        leader = "none (election running?)"
    click.echo(f"leader: {leader}")
    click.echo(f"term {data.get('term', '-')}, commit index {data.get('commit_index', '-')}, "
               f"last applied {data.get('last_applied', '-')} (as seen by node {data.get('self', '-')})")
    click.echo()
    output.emit_table(
        ["ID", "CLIENT", "RAFT", "ROLE"],
        [[str(n.get("id")), n.get("client"), n.get("raft"), n.get("role")] for n in nodes],
    )


# ------------------------------------------------- dead letters, queues, schedules, workers


@raftq.group(name="dlq", cls=RaftqGroup)
def dlq_group() -> None:
    """Dead letters: jobs that ended `failed`."""


@dlq_group.command(name="list")
@click.option("--queue", default=None, help="Only dead letters of this queue.")
@click.option("--limit", type=ranges.op_range("list", "limit"), default=100, show_default=True)
@click.option("--cursor", type=ranges.op_range("list", "cursor"), default=None,
              help="Continue from the cursor a previous listing printed.")
@client_options
@with_client
def dlq_list(client: Client, queue: str | None, limit: int, cursor: int | None, as_json: bool) -> None:
    """List failed jobs with their last error."""
    page = client.list(state="failed", queue=queue, limit=limit, cursor=cursor)
    if as_json:
        output.emit_json(page)
        return
    output.emit_table(
        ["ID", "TYPE", "QUEUE", "ATTEMPTS", "FAILED", "ERROR"],
        [[j.get("id"), j.get("type"), j.get("queue"), f"{j.get('attempts')}/{j.get('max_attempts')}",
          _age(j.get("finished_at")) + " ago", (j.get("error") or "").splitlines()[0][:80] if j.get("error") else ""]
         for j in page.get("jobs") or []],
    )
    if page.get("cursor") is not None:
        click.echo(f"more: --cursor {page['cursor']}", err=True)


@dlq_group.command(name="requeue")
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@click.option("--queue", default=None, help="Requeue every failed job of this queue.")
@click.option("--all", "all_", is_flag=True, help="Requeue every failed job.")
@client_options
@with_client
def dlq_requeue(client: Client, job_ids: tuple[str, ...], queue: str | None, all_: bool, as_json: bool) -> None:
    """Queue failed jobs again (attempts start over): IDs, --queue Q or --all."""
    if sum((bool(job_ids), queue is not None, all_)) != 1:
        raise InputError("give job IDs, or --queue Q, or --all (one of them)")
    result = client.requeue_failed(list(job_ids) if job_ids else None, queue=queue, all=all_)
    if as_json:
        output.emit_json(result)
        return
    requeued, skipped = result.get("requeued"), result.get("skipped")
    n_req = len(requeued) if isinstance(requeued, list) else requeued
    n_skip = len(skipped) if isinstance(skipped, list) else skipped
    click.echo(f"requeued {n_req}, skipped {n_skip}")
    if isinstance(skipped, list) and skipped:
        click.echo(f"not failed (skipped): {', '.join(skipped)}", err=True)


@raftq.group(name="queue", cls=RaftqGroup)
def queue_group() -> None:
    """Queues and their cluster-wide limits."""


@queue_group.command(name="limit")
@click.argument("queue")
@click.option("--max-running", type=ranges.op_range("queue_limit", "max_running"), default=None,
              help="At most this many jobs of the queue running at once, across all workers (0 pauses it).")
@click.option("--rate", type=ranges.op_range("queue_limit", "rate_per_s"), default=None, metavar="PER_SECOND",
              help="Start at most this many jobs of the queue per second, across all workers.")
@client_options
@with_client
def queue_limit(client: Client, queue: str, max_running: int | None, rate: float | None, as_json: bool) -> None:
    """Set QUEUE's limits (neither option removes them)."""
    result = client.queue_limit(queue, max_running=max_running, rate_per_s=rate)
    if as_json:
        output.emit_json(result)
        return
    click.echo(f"queue {queue}: max running {_or_unlimited(result.get('max_running'))}, "
               f"rate {_or_unlimited(result.get('rate_per_s'))}/s")


def _or_unlimited(value: Any) -> str:
    return "unlimited" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@queue_group.command(name="list")
@client_options
@with_client
def queue_list(client: Client, as_json: bool) -> None:
    """Every queue: job counts and limits."""
    queues = client.queues()
    if as_json:
        output.emit_json(queues)
        return
    states = ("pending", "scheduled", "queued", "running", "failed")
    output.emit_table(
        ["QUEUE", *(s.upper() for s in states), "MAX RUNNING", "RATE/S"],
        [[q.get("queue"), *(str((q.get("jobs") or {}).get(s, 0)) for s in states),
          _or_unlimited(q.get("max_running")), _or_unlimited(q.get("rate_per_s"))] for q in queues],
    )


@raftq.group(name="schedule", cls=RaftqGroup)
def schedule_group() -> None:
    """Cron and interval schedules that submit jobs."""


@schedule_group.command(name="add")
@click.argument("name")
@click.argument("job_type", metavar="TYPE")
@click.option("--cron", "cron_expr", default=None, metavar="EXPR", help="Cron expression, e.g. '*/5 * * * *'.")
@click.option("--every", type=ranges.EVERY_S, default=None, metavar="SECONDS",
              help="Fire every SECONDS instead of by cron (at least the cluster's min_schedule_interval_s, "
                   "default 1).")
@click.option("--arg", "arg_pairs", multiple=True, metavar="KEY=VALUE", help=ARG_HELP)
@click.option("--arg-json", "arg_json_pairs", multiple=True, metavar="KEY=JSON", help=ARG_JSON_HELP)
@click.option("--args-json", metavar="JSON", help=ARGS_JSON_HELP)
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", type=ranges.PRIORITY, default=0, show_default=True)
@click.option("--max-attempts", type=ranges.MAX_ATTEMPTS_RANGE, default=3, show_default=True)
@click.option("--run-timeout", type=ranges.RUN_TIMEOUT_S, default=None, metavar="SECONDS",
              help="Per-attempt run time limit of each job it fires.")
@click.option("--timeout", "old_timeout", type=ranges.RUN_TIMEOUT_S, default=None, hidden=True,
              help="Deprecated spelling of --run-timeout.")
@click.option("--tz", default="UTC", show_default=True, help="Time zone of the cron expression (IANA name).")
@click.option("--misfire", type=click.Choice(MISFIRE_POLICIES), default="skip", show_default=True,
              help="Missed fire times: run only the latest, or catch up (at most --max-catch-up).")
@click.option("--max-catch-up", type=ranges.MAX_CATCH_UP_RANGE, default=1, show_default=True)
@click.option("--paused", is_flag=True, help="Add it paused.")
@client_options
@with_client
def schedule_add(client: Client, name: str, job_type: str, cron_expr: str | None, every: float | None,
                 arg_pairs: tuple[str, ...], arg_json_pairs: tuple[str, ...], args_json: str | None, queue: str,
                 priority: int, max_attempts: int, run_timeout: float | None, old_timeout: float | None, tz: str,
                 misfire: str, max_catch_up: int, paused: bool, as_json: bool) -> None:
    """Add schedule NAME firing a TYPE job (--cron EXPR or --every SECONDS).

    A built-in TYPE's arguments are checked when the schedule is added."""
    timeout = _deprecated_timeout("schedule add", old_timeout, run_timeout, "--run-timeout")
    if (cron_expr is None) == (every is None):
        raise InputError("give exactly one of --cron EXPR and --every SECONDS")
    args = build_args(arg_pairs, arg_json_pairs, args_json)
    try:
        result = client.schedule_add(name, job_type, args, cron=cron_expr, every=every, tz=tz, queue=queue,
                                     priority=priority, max_attempts=max_attempts, timeout=timeout,
                                     misfire=misfire, max_catch_up=max_catch_up, paused=paused)
    except BadRequest as exc:
        raise arg_hint(exc, arg_pairs) from None
    if as_json:
        output.emit_json(result)
        return
    verb = "added" if result.get("created") else "unchanged (exists)"
    click.echo(f"schedule {name} {verb}; next fire {output.format_time(result.get('next_fire_ms', 0) / 1000)}")


@schedule_group.command(name="list")
@client_options
@with_client
def schedule_list(client: Client, as_json: bool) -> None:
    """Every schedule with its next fire time."""
    schedules = client.schedules()
    if as_json:
        output.emit_json(schedules)
        return
    output.emit_table(
        ["NAME", "WHEN", "TZ", "TYPE", "QUEUE", "STATE", "NEXT FIRE", "FIRED"],
        [[s.get("name"), s.get("cron") or f"every {s.get('every_ms', 0) / 1000:g}s", s.get("tz"),
          (s.get("job") or {}).get("type"), (s.get("job") or {}).get("queue", "default"),
          "paused" if s.get("paused") else "active",
          "-" if s.get("paused") else output.format_time(s.get("next_fire_ms", 0) / 1000), str(s.get("fired"))]
         for s in schedules],
    )


def _schedule_action(action: str, doc: str) -> None:
    @schedule_group.command(name=action, help=doc)
    @click.argument("name")
    @client_options
    @with_client
    def command(client: Client, name: str, as_json: bool) -> None:
        result = getattr(client, f"schedule_{action}")(name)
        if as_json:
            output.emit_json(result)
        else:
            click.echo(f"schedule {name} {action}d")


_schedule_action("remove", "Delete schedule NAME (jobs it fired stay).")
_schedule_action("pause", "Stop schedule NAME from firing until resumed.")
_schedule_action("resume", "Let schedule NAME fire again, from its next fire time after now.")


@raftq.command()
@client_options
@with_client
def workers(client: Client, as_json: bool) -> None:
    """Workers the cluster has heard from: queues, capacity, running jobs, last heartbeat."""
    data = client.workers()
    if as_json:
        output.emit_json(data)
        return

    def cap(c: Any) -> str:
        if not isinstance(c, dict):
            return "-"
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(c.items())) or "-"

    output.emit_table(
        ["NAME", "QUEUES", "CAPACITY", "RUNNING", "LAST SEEN"],
        [[w.get("name"), ",".join(w.get("queues") or []), cap(w.get("capacity")),
          " ".join(w.get("running") or []) or "-", _age(w.get("last_seen_at")) + " ago"] for w in data],
    )


@raftq.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True,
              help="Print one snapshot as plain text and exit (what it does when stdout is not a terminal "
                   "and with --json).")
@client_options
def top(cluster: str, token: str | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
        request_timeout: float, as_json: bool, interval: float, once: bool) -> None:
    """Live view of nodes, queues, workers and recent failures (q or Ctrl-C quits)."""
    from cli.top import NODE_TIMEOUT_S, Collector, print_once, run_live

    _split_addresses(cluster)
    tls = client_tls(tls_ca, tls_cert, tls_key)
    # Each node is also asked on its own, with a short timeout, to show which are unreachable.
    collector = Collector(make_client(cluster, token, request_timeout, tls),
                          lambda addr: make_client(addr, token, NODE_TIMEOUT_S, tls))
    if once or as_json or not sys.stdout.isatty():
        try:
            print_once(collector, as_json)
        finally:
            collector.close()
    else:
        run_live(collector, interval)  # its polling thread uses the clients until the process exits


def _register_dev() -> None:
    from cli.dev import dev

    raftq.add_command(dev)


_register_dev()
raftq.add_command(alert_commands())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`raftq`)."""
    raftq.main(args=argv, prog_name="raftq")


if __name__ == "__main__":
    main()
