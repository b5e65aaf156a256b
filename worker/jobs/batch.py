"""batch.pipeline: several job steps run in order, each fed the previous result.

The steps run sequentially inside this one job, in this worker, so each step
can read the previous step's result (job dependencies, `depends_on`, order
separate jobs but do not hand results from one job to the next). A step is
`{"type": "file.compress", "args": {...}}`; its handler is looked up in the
worker's registry (built-ins and --import modules), and its arguments are
validated by that handler as usual. Nested pipelines are refused.

How a step receives the previous step's result `prev`:
- a string argument "$prev" is replaced by the whole previous result, and
  "$prev.a.b" by prev["a"]["b"] (a missing key is a clear error);
- when a step gives neither `path` nor `text`, it gets `path = prev["output"]`
  if the previous result names an output file, else `text = prev["text"]` if
  it returned text. So `text.convert` -> `file.compress` -> `file.checksum`
  chains with no placeholders at all.

The job's progress is the step index plus the step's own progress; it checks
cancellation between steps (and each step checks it inside). A failing step
fails the pipeline with "step N (type): ..." and that step's retry flag (the
whole pipeline is re-run on retry: steps are at-least-once, and the built-in
ones write their outputs atomically).
"""
from __future__ import annotations

import time
from typing import Any

from worker.context import JobContext
from worker.registry import BadArgument, JobError, default_registry, parse_args


class _StepContext(JobContext):
    """The pipeline's context as one step sees it: progress maps into the step's slice."""

    def __init__(self, parent: JobContext, index: int, total: int, step_type: str) -> None:
        super().__init__(parent.id, parent.attempt, None, parent.workdir, parent.logger, type=step_type,
                         cancel_event=parent._cancel, settings=parent.settings)
        self._parent = parent
        self._index = index
        self._total = total

    def progress(self, fraction: float, message: str = "") -> None:
        super().progress(fraction, message)
        value = self.last_progress
        if value is not None:
            self._parent.progress((self._index + value[0]) / self._total,
                                  f"step {self._index + 1}/{self._total} {self.type}: {value[1]}")

    @property
    def cancel_reason(self) -> str:
        return self._parent.cancel_reason


def _lookup(prev: Any, ref: str, step: int) -> Any:
    value = prev
    for key in [k for k in ref.split(".")[1:] if k]:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise BadArgument(f"step {step}: {ref!r} does not name a field of the previous step's result")
    return value


def _substitute(value: Any, prev: Any, step: int) -> Any:
    if isinstance(value, str) and (value == "$prev" or value.startswith("$prev.")):
        return _lookup(prev, value, step)
    if isinstance(value, dict):
        return {k: _substitute(v, prev, step) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, prev, step) for v in value]
    return value


def batch_pipeline(args: dict, ctx: JobContext) -> dict:
    """Run `steps` in order; each step may use the previous result (see module docstring)."""
    steps = parse_args("batch.pipeline", args)["steps"]  # each step's shape checked there
    registry = default_registry
    plan = []
    for i, step in enumerate(steps, start=1):
        stype, sargs = step["type"], step.get("args", {})
        jt = registry.get(stype)
        if jt is None:
            raise BadArgument(f"step {i}: unknown job type {stype!r}")
        plan.append((stype, jt, sargs))
    prev: Any = None
    done: list[dict[str, Any]] = []
    for i, (stype, jt, sargs) in enumerate(plan):
        ctx.check_cancelled()
        step_args = dict(sargs)
        if i > 0:
            step_args = _substitute(step_args, prev, i + 1)
            if "path" not in step_args and "text" not in step_args and isinstance(prev, dict):
                if isinstance(prev.get("output"), str):
                    step_args["path"] = prev["output"]
                elif isinstance(prev.get("text"), str):
                    step_args["text"] = prev["text"]
        sctx = _StepContext(ctx, i, len(plan), stype)
        t0 = time.monotonic()
        try:
            prev = jt.fn(step_args, sctx)
        except JobError as exc:
            err = type(exc)(f"step {i + 1} ({stype}): {exc}")
            err.retryable = exc.retryable
            raise err from None
        done.append({"type": stype, "seconds": round(time.monotonic() - t0, 3), "result": prev})
        ctx.progress((i + 1) / len(plan), f"step {i + 1}/{len(plan)} {stype} done")
    return {"steps": done, "result": prev}


JOBS: dict[str, tuple[Any, str]] = {
    "batch.pipeline": (batch_pipeline, "thread"),
}
