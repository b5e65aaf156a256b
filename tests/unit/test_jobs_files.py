"""File-touching built-in job types on real files: text.convert, file.*, archive.*
(including hostile archives), maintenance.*, batch.pipeline and the data-root guard.

Handlers are called directly as the worker calls them, with a context whose
data root is a fresh temporary directory.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from worker.context import JobContext, JobSettings
from worker.jobs import archives, batch, files, maintenance, text
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument, JobError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def ctx(tmp_path: Path, root: Path) -> JobContext:
    return JobContext("job-1", 1, {}, tmp_path / "work", type="test", settings=JobSettings(data_root=root))


# --- the data root --------------------------------------------------------------------


def test_paths_outside_the_data_root_are_refused(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    for bad in ["../secret.txt", str(secret), "link", "dirlink/secret.txt", "a/../../secret.txt"]:
        with pytest.raises(BadArgument, match="outside the worker's data root") as info:
            files.file_checksum({"path": bad}, ctx)
        assert info.value.retryable is False
    (root / "x").write_text("x")
    with pytest.raises(BadArgument, match="outside the worker's data root"):
        files.file_compress({"path": "x", "output": "../out.gz"}, ctx)


def test_missing_and_wrong_kind_paths_are_clear(ctx: JobContext, root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(BadArgument, match="'path': 'nope.txt' does not exist under the data root"):
        files.file_checksum({"path": "nope.txt"}, ctx)
    with pytest.raises(BadArgument, match="'path': 'd' is not a regular file"):
        files.file_checksum({"path": "d"}, ctx)
    with pytest.raises(BadArgument, match=r"'path' must be a path \(a non-empty string\), got 5"):
        files.file_checksum({"path": 5}, ctx)


# --- text.convert -------------------------------------------------------------------------


def test_text_convert_case_and_markdown(ctx: JobContext, root: Path) -> None:
    assert text.text_convert({"op": "upper", "text": "Hello, wörld"}, ctx)["text"] == "HELLO, WÖRLD"
    assert text.text_convert({"op": "title", "text": "the cat sat"}, ctx)["text"] == "The Cat Sat"
    (root / "doc.md").write_text("# Title\n\nSome *emphasis* and a [link](http://x.test).\n\n"
                                 "| a | b |\n|---|---|\n| 1 | 2 |\n")
    out = text.text_convert({"op": "markdown_to_html", "path": "doc.md", "output": "out/doc.html",
                             "title": "Doc <1>"}, ctx)
    html = (root / "out/doc.html").read_text()
    assert out["output"] == "out/doc.html" and "text" not in out
    assert "<h1>Title</h1>" in html and "<em>emphasis</em>" in html and '<a href="http://x.test">link</a>' in html
    assert "<table>" in html and "<td>1</td>" in html and "<title>Doc &lt;1&gt;</title>" in html


def test_text_convert_csv_json_round_trip(ctx: JobContext, root: Path) -> None:
    (root / "t.csv").write_text('name,qty,price\napple,3,1.25\n"pear, green",10,0.5\n')
    out = text.text_convert({"op": "csv_to_json", "path": "t.csv"}, ctx)
    records = json.loads(out["text"])
    assert out["rows"] == 2
    assert records == [{"name": "apple", "qty": 3, "price": 1.25}, {"name": "pear, green", "qty": 10, "price": 0.5}]
    back = text.text_convert({"op": "json_to_csv", "text": out["text"]}, ctx)
    assert back["text"] == 'name,qty,price\napple,3,1.25\n"pear, green",10,0.5\n'
    raw = text.text_convert({"op": "csv_to_json", "path": "t.csv", "types": False}, ctx)
    assert json.loads(raw["text"])[0]["qty"] == "3"


@pytest.mark.parametrize("args, message", [
    ({"op": "reverse", "text": "x"}, "'op' must be one of upper, lower"),
    ({"op": "upper"}, "give exactly one of 'text' (the text itself) or 'path' (a file)"),
    ({"op": "upper", "text": "a", "path": "b"}, "give exactly one of"),
    ({"op": "json_to_csv", "text": "{not json"}, "json_to_csv: the input is not valid JSON"),
    ({"op": "json_to_csv", "text": "[1, 2]"}, "json_to_csv expects a JSON array of objects"),
    ({"op": "csv_to_json", "text": "a,a\n1,2\n"}, "the CSV header repeats column(s) 'a'"),
    ({"op": "csv_to_json", "text": "a,b\n1,2,3\n"}, "CSV line 2 has more cells than the header"),
])
def test_text_convert_bad_input(ctx: JobContext, args: dict, message: str) -> None:
    with pytest.raises(BadArgument) as info:
        text.text_convert(args, ctx)
    assert message in str(info.value)


# --- file.compress / decompress / checksum ----------------------------------------------------


@pytest.mark.parametrize("fmt, opener", [("gzip", gzip.open), ("bz2", bz2.open), ("xz", lzma.open)])
def test_compress_decompress_round_trip(ctx: JobContext, root: Path, fmt: str, opener) -> None:
    data = b"".join(f"line {i} of a compressible file\n".encode() for i in range(20000))
    (root / "data.txt").write_bytes(data)
    out = files.file_compress({"path": "data.txt", "format": fmt}, ctx)
    suffix = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz"}[fmt]
    assert out["output"] == "data.txt" + suffix and out["bytes_in"] == len(data)
    assert out["bytes_out"] < len(data) / 5
    with opener(root / out["output"], "rb") as fh:  # readable by the standard tool
        assert fh.read() == data
    back = files.file_decompress({"path": out["output"], "output": "copy.txt"}, ctx)
    assert back["format"] == fmt and (root / "copy.txt").read_bytes() == data
    assert ctx.last_progress == (1.0, "done")
    assert not [p for p in root.iterdir() if p.name.endswith(".part")], "no temp files left"


def test_decompress_caps_output_and_rejects_garbage(ctx: JobContext, root: Path) -> None:
    (root / "bomb.gz").write_bytes(gzip.compress(b"\0" * (5 << 20)))
    with pytest.raises(UnsafeInput, match="exceeds max_bytes=1000000"):
        files.file_decompress({"path": "bomb.gz", "max_bytes": 1_000_000}, ctx)
    assert not (root / "bomb").exists(), "nothing half-written under the output name"
    (root / "fake.gz").write_bytes(b"this is not gzip")
    with pytest.raises(BadArgument, match="is not valid gzip data"):
        files.file_decompress({"path": "fake.gz"}, ctx)
    (root / "plain.txt").write_text("x")
    with pytest.raises(BadArgument, match="cannot tell the format"):
        files.file_decompress({"path": "plain.txt"}, ctx)


def test_checksum_matches_hashlib(ctx: JobContext, root: Path) -> None:
    data = os.urandom(300_000)
    (root / "blob.bin").write_bytes(data)
    for algo in files.HASHES:
        out = files.file_checksum({"path": "blob.bin", "algorithm": algo}, ctx)
        assert out["digest"] == hashlib.new(algo, data).hexdigest() and out["bytes"] == len(data)
    good = hashlib.sha256(data).hexdigest()
    assert files.file_checksum({"path": "blob.bin", "expect": good.upper()}, ctx)["match"] is True
    with pytest.raises(BadArgument, match="checksum mismatch"):
        files.file_checksum({"path": "blob.bin", "expect": "00" * 32}, ctx)


# --- archives -------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "site/sub").mkdir(parents=True)
    (root / "site/index.html").write_text("<h1>hi</h1>")
    (root / "site/sub/data.bin").write_bytes(os.urandom(5000))
    (root / "site/sub/empty").mkdir()


def _snapshot(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("name", ["site.tar.gz", "site.zip"])
def test_archive_round_trip(ctx: JobContext, root: Path, name: str) -> None:
    _tree(root)
    out = archives.archive_create({"source": "site", "output": f"out/{name}"}, ctx)
    assert out["files"] == 2 and out["dirs"] == 3 and out["skipped"] == []
    back = archives.archive_extract({"path": f"out/{name}", "target": "restored"}, ctx)
    assert back["files"] == 2
    assert _snapshot(root / "restored/site") == _snapshot(root / "site")


def test_archive_create_skips_symlinks(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    _tree(root)
    (tmp_path / "outside.txt").write_text("secret")
    (root / "site/leak").symlink_to(tmp_path / "outside.txt")
    out = archives.archive_create({"source": "site", "output": "s.zip"}, ctx)
    assert out["skipped"] == ["site/leak"]
    with zipfile.ZipFile(root / "s.zip") as zf:
        assert "site/leak" not in zf.namelist()
        assert all(b"secret" not in zf.read(n) for n in zf.namelist() if not n.endswith("/"))


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _sym(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize("members, message", [
    ([(tarfile.TarInfo("../evil.txt"), b"x")], "would be written outside the target"),
    ([(tarfile.TarInfo("a/../../evil.txt"), b"x")], "would be written outside the target"),
    ([(tarfile.TarInfo("/etc/evil.txt"), b"x")], "has an absolute path"),
    ([(_sym("link", "/etc/passwd"), None)], "points outside the target"),
    ([(_sym("link", "../../outside"), None)], "points outside the target"),
    # A chain: 'up' is harmless, but 'up/t/esc' climbs through it.
    ([(_sym("up", "."), None), (tarfile.TarInfo("t"), None), (_sym("up/t/esc", "../../x"), None)],
     "outside the target"),
])
def test_tar_extract_refuses_escapes(ctx: JobContext, root: Path, tmp_path: Path, members, message: str) -> None:
    for info, _ in members:
        if info.name == "t":
            info.type = tarfile.DIRTYPE
    _tar_with(root / "bad.tar.gz", members)
    with pytest.raises(UnsafeInput, match=message) as info:
        archives.archive_extract({"path": "bad.tar.gz", "target": "out"}, ctx)
    assert info.value.retryable is False
    assert not (tmp_path / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert not (root / "out").exists(), "nothing is extracted from a refused archive"
    assert [p.name for p in root.iterdir()] == ["bad.tar.gz"], "the staging directory is removed"


def test_zip_slip_and_zip_symlinks_are_refused(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(root / "slip.zip", "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../../evil.txt", "pwned")
    with pytest.raises(UnsafeInput, match="'../../evil.txt' would be written outside"):
        archives.archive_extract({"path": "slip.zip", "target": "out"}, ctx)
    assert not (tmp_path / "evil.txt").exists() and not (root / "out").exists()
    with zipfile.ZipFile(root / "link.zip", "w") as zf:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeInput, match="is a symlink"):
        archives.archive_extract({"path": "link.zip", "target": "out"}, ctx)


def test_archive_bombs_are_refused(ctx: JobContext, root: Path) -> None:
    with zipfile.ZipFile(root / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (20 << 20))  # 20 MiB of zeros: ~20 KiB compressed
    assert (root / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(UnsafeInput, match="max_ratio"):
        archives.archive_extract({"path": "bomb.zip", "target": "out"}, ctx)
    with pytest.raises(UnsafeInput, match="max_bytes=1048576"):
        archives.archive_extract({"path": "bomb.zip", "target": "out", "max_bytes": 1 << 20, "max_ratio": 1e6}, ctx)
    with zipfile.ZipFile(root / "many.zip", "w") as zf:
        for i in range(50):
            zf.writestr(f"f{i}.txt", "x")
    with pytest.raises(UnsafeInput, match="more than max_entries=20"):
        archives.archive_extract({"path": "many.zip", "target": "out", "max_entries": 20}, ctx)
    assert not (root / "out").exists()


def test_zip_entry_lying_about_its_size_is_caught(ctx: JobContext, root: Path) -> None:
    with zipfile.ZipFile(root / "liar.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"A" * 1000)
    raw = bytearray((root / "liar.zip").read_bytes())
    # Patch the central directory's uncompressed size of a.txt from 1000 to 10.
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    (root / "liar.zip").write_bytes(bytes(raw))
    with pytest.raises((UnsafeInput, BadArgument)):
        archives.archive_extract({"path": "liar.zip", "target": "out"}, ctx)
    assert not (root / "out/a.txt").exists()


def test_extract_into_existing_target_does_not_follow_its_symlinks(ctx: JobContext, root: Path,
                                                                   tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "out").mkdir()
    (root / "out/docs").symlink_to(outside)
    with zipfile.ZipFile(root / "a.zip", "w") as zf:
        zf.writestr("docs/readme.txt", "hello")
    with pytest.raises(UnsafeInput):
        archives.archive_extract({"path": "a.zip", "target": "out"}, ctx)
    assert list(outside.iterdir()) == []


def test_not_an_archive(ctx: JobContext, root: Path) -> None:
    (root / "x.zip").write_text("nope")
    with pytest.raises(BadArgument, match="is not a valid zip archive"):
        archives.archive_extract({"path": "x.zip"}, ctx)
    with pytest.raises(BadArgument, match="cannot tell the archive format"):
        archives.archive_create({"source": "x.zip", "output": "x.rar"}, ctx)


# --- maintenance ------------------------------------------------------------------------------


def test_backup_with_rotation(ctx: JobContext, root: Path) -> None:
    _tree(root)
    made = []
    for _ in range(4):
        out = maintenance.maintenance_backup({"source": "site", "dest": "backups", "keep": 2}, ctx)
        made.append(out["archive"])
        time.sleep(0.002)  # distinct microsecond timestamps
    names = sorted(p.name for p in (root / "backups").iterdir())
    assert names == sorted(Path(m).name for m in made[-2:])
    assert out["removed"] == [made[1]] and out["files"] == 2
    with tarfile.open(root / made[-1]) as tar:
        assert sorted(tar.getnames()) == ["site", "site/index.html", "site/sub", "site/sub/data.bin",
                                          "site/sub/empty"]
    with pytest.raises(BadArgument, match="must not be inside 'source'"):
        maintenance.maintenance_backup({"source": "site", "dest": "site/b"}, ctx)


def test_sync_by_checksum_with_delete(ctx: JobContext, root: Path) -> None:
    _tree(root)
    first = maintenance.maintenance_sync({"source": "site", "dest": "mirror"}, ctx)
    assert first["copied"] == ["index.html", "sub/data.bin"] and first["unchanged"] == 0
    assert _snapshot(root / "mirror") == {k: v for k, v in _snapshot(root / "site").items() if k != "sub/empty"}
    # Same size, different content: found by checksum, not by size or mtime.
    (root / "site/index.html").write_text("<h1>ho</h1>")
    os.utime(root / "site/index.html", (1, 1))
    os.utime(root / "mirror/index.html", (1, 1))
    (root / "mirror/stale.txt").write_text("old")
    dry = maintenance.maintenance_sync({"source": "site", "dest": "mirror", "delete": True, "dry_run": True}, ctx)
    assert dry["updated"] == ["index.html"] and dry["deleted"] == ["stale.txt"]
    assert (root / "mirror/stale.txt").exists() and (root / "mirror/index.html").read_text() == "<h1>hi</h1>"
    real = maintenance.maintenance_sync({"source": "site", "dest": "mirror", "delete": True}, ctx)
    assert real["updated"] == ["index.html"] and real["deleted"] == ["stale.txt"] and real["unchanged"] == 1
    assert (root / "mirror/index.html").read_text() == "<h1>ho</h1>" and not (root / "mirror/stale.txt").exists()
    with pytest.raises(BadArgument, match="must not contain one another"):
        maintenance.maintenance_sync({"source": "site", "dest": "site/m"}, ctx)


# --- batch.pipeline ---------------------------------------------------------------------------------


def test_pipeline_chains_outputs(ctx: JobContext, root: Path) -> None:
    (root / "notes.md").write_text("# Notes\n\nhello *world*\n")
    out = batch.batch_pipeline({"steps": [
        {"type": "text.convert", "args": {"op": "markdown_to_html", "path": "notes.md", "output": "notes.html"}},
        {"type": "file.compress", "args": {"format": "gzip"}},  # path <- previous output
        {"type": "file.checksum"},                                  # path <- previous output
        {"type": "text.wordcount", "args": {"text": "$prev.digest"}},
    ]}, ctx)
    steps = out["steps"]
    assert [s["type"] for s in steps] == ["text.convert", "file.compress", "file.checksum", "text.wordcount"]
    assert steps[1]["result"]["output"] == "notes.html.gz"
    digest = hashlib.sha256((root / "notes.html.gz").read_bytes()).hexdigest()
    assert steps[2]["result"]["digest"] == digest
    assert out["result"]["words"] == 1 and out["result"]["chars"] == 64
    assert gzip.decompress((root / "notes.html.gz").read_bytes()).startswith(b"<h1>Notes</h1>")
    assert ctx.last_progress is not None and ctx.last_progress[0] == 1.0


def test_pipeline_errors_name_the_step(ctx: JobContext) -> None:
    with pytest.raises(BadArgument, match=r"^step 2 \(math.primes\): 'n' must be an integer"):
        batch.batch_pipeline({"steps": [{"type": "util.noop"}, {"type": "math.primes", "args": {"n": "x"}}]}, ctx)
    with pytest.raises(BadArgument, match="step 1: unknown job type 'no.such'"):
        batch.batch_pipeline({"steps": [{"type": "no.such"}]}, ctx)
    with pytest.raises(BadArgument, match="pipelines cannot be nested"):
        batch.batch_pipeline({"steps": [{"type": "batch.pipeline", "args": {"steps": []}}]}, ctx)
    with pytest.raises(BadArgument, match=r"step 2: '\$prev.nope' does not name a field"):
        batch.batch_pipeline({"steps": [{"type": "math.primes", "args": {"n": 10}},
                                        {"type": "text.wordcount", "args": {"text": "$prev.nope"}}]}, ctx)
    with pytest.raises(JobError, match=r"step 1 \(util.fail\): boom") as info:
        batch.batch_pipeline({"steps": [{"type": "util.fail", "args": {"message": "boom", "retryable": False}}]}, ctx)
    assert info.value.retryable is False


def test_pipeline_stops_when_cancelled(ctx: JobContext) -> None:
    from worker.context import JobCancelled

    ctx.cancel("cancelled")
    with pytest.raises(JobCancelled):
        batch.batch_pipeline({"steps": [{"type": "util.noop"}, {"type": "util.noop"}]}, ctx)
