"""file.* job types: compress, decompress and checksum files under the data root.

file.compress    gzip | bz2 | xz; CPU-bound: process pool
file.decompress  format from the argument or the file extension; the output is
                 capped by the worker's max_output_bytes (a job's `max_bytes`
                 may only lower it): a decompression bomb stops there
file.checksum    md5 | sha1 | sha256 | sha512 | blake2b (hashlib releases the
                 GIL on large buffers: thread pool)

Files are streamed in 1 MiB chunks (memory stays flat), progress is reported
by bytes read, inputs are opened beneath the data root fd and outputs are
written atomically beside their name (worker/jobs/safety.py).
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
from typing import IO, Any, Callable

from worker.context import JobContext
from worker.jobs.safety import UnsafeInput, atomic_output, capped, in_root, open_in, rel, stat_in
from cluster.jobargs import HASHES  # noqa: F401 - re-exported
from worker.registry import BadArgument, parse_args

CHUNK = 1 << 20

FORMATS: dict[str, tuple[str, Callable[..., IO[bytes]]]] = {
    "gzip": (".gz", gzip.open),
    "bz2": (".bz2", bz2.open),
    "xz": (".xz", lzma.open),
}

def _copy(src: IO[bytes], dst: IO[bytes], ctx: JobContext, total: int, what: str,
          limit: int | None = None, counter: Callable[[], int] | None = None) -> int:
    """Stream src to dst; progress by `counter()` (bytes consumed) over `total`."""
    written = 0
    while True:
        ctx.check_cancelled()
        chunk = src.read(CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if limit is not None and written > limit:
            raise UnsafeInput(f"the decompressed output exceeds max_bytes={limit}; refusing to write more")
        dst.write(chunk)
        done = counter() if counter is not None else written
        if total:
            ctx.progress(min(1.0, done / total), f"{what} {done} of {total} bytes")


def file_compress(args: dict, ctx: JobContext) -> dict:
    """Compress `path` into `output` (default: path + .gz/.bz2/.xz)."""
    a = parse_args("file.compress", args)
    fmt = a["format"]
    level = a.get("level")  # None: the library's default
    src = in_root(ctx, a["path"], "path", want="file")
    suffix, opener = FORMATS[fmt]
    out = in_root(ctx, a.get("output", str(src) + suffix), "output", want="file", must_exist=False)
    if out == src:
        raise BadArgument("'output' must differ from 'path'")
    kwargs: dict[str, Any] = {}
    if level is not None:
        kwargs["preset" if fmt == "xz" else "compresslevel"] = level
    with open_in(ctx, src) as fin, atomic_output(out, ctx=ctx) as raw:
        size = os.fstat(fin.fileno()).st_size
        with opener(raw, "wb", **kwargs) as fout:
            _copy(fin, fout, ctx, size, "compressed", counter=fin.tell)
    out_size = stat_in(ctx, out).st_size
    ctx.progress(1.0, "done")
    return {"path": rel(ctx, src), "output": rel(ctx, out), "format": fmt, "bytes_in": size,
            "bytes_out": out_size, "ratio": round(out_size / size, 4) if size else None}


def file_decompress(args: dict, ctx: JobContext) -> dict:
    """Decompress `path` into `output` (default: path without its extension)."""
    a = parse_args("file.decompress", args)
    src = in_root(ctx, a["path"], "path", want="file")
    fmt = a.get("format")
    if fmt is None:
        fmt = next((f for f, (suffix, _) in FORMATS.items() if src.name.endswith(suffix)), None)
        if fmt is None:
            raise BadArgument(f"cannot tell the format of {src.name!r} from its extension; "
                              f"give 'format' ({', '.join(FORMATS)})")
    suffix, opener = FORMATS[fmt]
    default_out = str(src)[: -len(suffix)] if src.name.endswith(suffix) else str(src) + ".out"
    out = in_root(ctx, a.get("output", default_out), "output", want="file", must_exist=False)
    if out == src:
        raise BadArgument("'output' must differ from 'path'")
    limit = capped(a, "max_bytes", ctx.settings.max_output_bytes)
    try:
        with open_in(ctx, src) as raw_in, opener(raw_in, "rb") as fin, atomic_output(out, ctx=ctx) as fout:
            size = os.fstat(raw_in.fileno()).st_size
            written = _copy(fin, fout, ctx, size, "read", limit=limit, counter=raw_in.tell)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise BadArgument(f"'path': {args['path']!r} is not valid {fmt} data ({exc})") from None
    ctx.progress(1.0, "done")
    return {"path": rel(ctx, src), "output": rel(ctx, out), "format": fmt, "bytes_in": size,
            "bytes_out": written}


def file_checksum(args: dict, ctx: JobContext) -> dict:
    """Hash the file at `path` (default sha256); `expect` makes a mismatch fail the job."""
    a = parse_args("file.checksum", args)
    algorithm, expect = a["algorithm"], a.get("expect")
    src = in_root(ctx, a["path"], "path", want="file")
    h = hashlib.new(algorithm)
    done = 0
    with open_in(ctx, src) as fh:
        size = os.fstat(fh.fileno()).st_size
        while chunk := fh.read(CHUNK):
            ctx.check_cancelled()
            h.update(chunk)
            done += len(chunk)
            ctx.progress(done / size if size else 1.0, f"hashed {done} of {size} bytes")
    digest = h.hexdigest()
    out: dict[str, Any] = {"path": rel(ctx, src), "algorithm": algorithm, "digest": digest, "bytes": done}
    if expect is not None:
        out["match"] = digest == expect.strip().lower()
        if not out["match"]:
            raise BadArgument(f"checksum mismatch for {rel(ctx, src)!r}: {algorithm} is {digest}, expected {expect}")
    return out


JOBS: dict[str, tuple[Any, str]] = {
    "file.compress": (file_compress, "process"),
    "file.decompress": (file_decompress, "process"),
    "file.checksum": (file_checksum, "thread"),
}
