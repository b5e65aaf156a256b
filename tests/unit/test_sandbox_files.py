"""The file sandbox holds: hostile archives (built here), a symlink-swap race,
bomb limits a job cannot raise, and data roots that hold cluster state."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from cluster.config import dev_config, render_config
from worker.config import ConfigError, WorkerConfig, check_data_root
from worker.context import JobContext, JobSettings
from worker.jobs import archives, files, fsroot
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def make_ctx(tmp_path: Path, root: Path, **limits: int | float) -> JobContext:
    return JobContext("job-1", 1, {}, tmp_path / "work", type="test",
                      settings=JobSettings(data_root=root, **limits))  # type: ignore[arg-type]


@pytest.fixture
def ctx(tmp_path: Path, root: Path) -> JobContext:
    return make_ctx(tmp_path, root)


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with the kernel's openat2 and with the fallback walk."""
    if request.param == "openat2" and not fsroot.have_openat2():
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(fsroot, "force_walk", request.param == "walk")
    yield request.param


def _tar(path: Path, entries: list[tuple[str, str, str | bytes]]) -> None:
    """entries: (kind, name, data-or-linkname), kind in file/dir/sym/hard."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode() if isinstance(value, str) else value
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(value)
            tar.addfile(info)


def _links_out(tree: Path) -> list[Path]:
    """Symlinks anywhere under `tree` whose resolution leaves it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(tree.resolve()):
                out.append(p)
    return out


# --- archive extraction -------------------------------------------------------------------------


def test_the_reported_tar_is_refused_and_leaves_nothing(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    # The archive: 'x' is inside when made (b/b/.. collapses lexically),
    # 'b -> .' then turns every 'b/' into nothing so x climbs 16 levels, to /,
    # and a hard link through x copies /etc/passwd.
    depth = 16
    climb = "/".join(["b"] * depth + [".."] * depth) + "/etc"
    _tar(root / "evil.tar.gz", [("sym", "x", climb), ("sym", "b", "."), ("hard", "loot", "x/passwd")])
    with pytest.raises(UnsafeInput, match="points outside the target") as info:
        archives.archive_extract({"path": "evil.tar.gz", "target": "out"}, ctx)
    assert info.value.retryable is False
    assert sorted(p.name for p in root.iterdir()) == ["evil.tar.gz"], "no target, no staging left"
    assert _links_out(tmp_path) == []


def test_a_hard_link_through_a_symlink_is_refused(ctx: JobContext, root: Path) -> None:
    # No '..' anywhere, but 'b/d/f' reaches d/f through the link b: only names
    # this archive wrote as regular files may be hard-link sources.
    _tar(root / "h.tar.gz", [("sym", "b", "."), ("dir", "d", ""), ("file", "d/f", "data"),
                             ("hard", "h", "b/d/f")])
    with pytest.raises(UnsafeInput, match="not a regular file extracted earlier"):
        archives.archive_extract({"path": "h.tar.gz", "target": "out"}, ctx)
    assert not (root / "out").exists()


@pytest.mark.parametrize("entries, message", [
    ([("hard", "h", "etc/passwd")], "not a regular file extracted earlier"),
    ([("dir", "d", ""), ("hard", "h", "d")], "not a regular file extracted earlier"),
    ([("file", "f", "x"), ("sym", "s", "f"), ("hard", "h", "s")], "not a regular file extracted earlier"),
    ([("hard", "h", "h")], "not a regular file extracted earlier"),
    # a file replaced by a link later in the archive is no hard-link source any more
    ([("file", "f", "x"), ("sym", "f", "elsewhere"), ("hard", "h", "f")], "not a regular file extracted earlier"),
])
def test_hard_links_only_to_regular_files_already_extracted(ctx: JobContext, root: Path, entries,
                                                              message: str) -> None:
    _tar(root / "h.tar.gz", entries)
    with pytest.raises(UnsafeInput, match=message):
        archives.archive_extract({"path": "h.tar.gz", "target": "out"}, ctx)
    assert not (root / "out").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "/", "..", "../x", "a/../b", "a/../../x", "..\\x", "C:/x", ""])
def test_absolute_and_dotdot_link_targets_are_refused(ctx: JobContext, root: Path, target: str) -> None:
    _tar(root / "l.tar.gz", [("dir", "a", ""), ("sym", "a/l", target)])
    with pytest.raises(UnsafeInput, match="points outside the target"):
        archives.archive_extract({"path": "l.tar.gz", "target": "out"}, ctx)
    assert not (root / "out").exists()


def test_links_that_only_descend_extract_and_stay_inside(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    # Loops and chains of downward links are harmless: every one resolves inside.
    _tar(root / "ok.tar.gz", [("sym", "b", "."), ("sym", "c", "b/b/b/d"), ("dir", "d", ""),
                              ("file", "d/f", "hello"), ("hard", "d/g", "d/f"), ("sym", "loop", "loop")])
    out = archives.archive_extract({"path": "ok.tar.gz", "target": "out"}, ctx)
    assert out["files"] == 1 and out["links"] == 4
    assert (root / "out/c/f").read_text() == "hello" and (root / "out/d/g").read_text() == "hello"
    assert _links_out(root / "out") == []


def test_an_entry_is_never_written_through_a_link(ctx: JobContext, root: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    _tar(root / "w.tar.gz", [("sym", "d", "sub"), ("dir", "sub", ""), ("file", "d/f", "x")])
    with pytest.raises(UnsafeInput, match="written through a link"):
        archives.archive_extract({"path": "w.tar.gz", "target": "out"}, ctx)
    assert list((tmp_path / "outside").iterdir()) == [] and not (root / "out").exists()


def test_tar_data_filter_is_a_floor(ctx: JobContext, root: Path) -> None:
    buf = tarfile.TarInfo("dev")
    buf.type = tarfile.CHRTYPE
    with tarfile.open(root / "dev.tar.gz", "w:gz") as tar:
        tar.addfile(buf)
    with pytest.raises(UnsafeInput, match="device, FIFO"):
        archives.archive_extract({"path": "dev.tar.gz", "target": "out"}, ctx)


def _zeros_zip(path: Path, members: int, size: int) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"z{i}.bin", b"\0" * size)


def _bytes_under(tree: Path, skip: str) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and p.name != skip)


def test_zip_bomb_stops_at_the_worker_cap_and_a_job_cannot_raise_it(tmp_path: Path, root: Path) -> None:
    cap = 1 << 20
    ctx = make_ctx(tmp_path, root, max_extract_bytes=cap, max_extract_ratio=1e6)
    _zeros_zip(root / "bomb.zip", members=3, size=600_000)  # 1.8 MB declared, a few KB on disk
    for job_args in ({}, {"max_bytes": 1 << 40}, {"max_bytes": 1 << 40, "max_ratio": 1e9}):
        with pytest.raises(UnsafeInput, match=f"max_bytes={cap}"):
            archives.archive_extract({"path": "bomb.zip", "target": "out", **job_args}, ctx)
        assert _bytes_under(root, "bomb.zip") <= cap
    assert not (root / "out").exists()
    # A job may lower the cap ...
    with pytest.raises(UnsafeInput, match="max_bytes=1000"):
        archives.archive_extract({"path": "bomb.zip", "target": "out", "max_bytes": 1000}, ctx)
    # ... and the ratio cap is the worker's too (200 by default).
    strict = make_ctx(tmp_path, root, max_extract_bytes=1 << 30)
    with pytest.raises(UnsafeInput, match="max_ratio=200"):
        archives.archive_extract({"path": "bomb.zip", "target": "out", "max_ratio": 1e6}, strict)
    # Entries: the worker's setting, lowered but never raised by the job.
    few = make_ctx(tmp_path, root, max_extract_entries=2, max_extract_ratio=1e6)
    with pytest.raises(UnsafeInput, match="more than max_entries=2"):
        archives.archive_extract({"path": "bomb.zip", "target": "out", "max_entries": 1000}, few)


def test_a_tar_member_over_the_cap_is_refused_before_it_is_read(tmp_path: Path, root: Path) -> None:
    cap = 1 << 20
    ctx = make_ctx(tmp_path, root, max_extract_bytes=cap, max_extract_ratio=1e6)
    _tar(root / "big.tar.gz", [("file", "small", b"x" * 1000), ("file", "big", b"\0" * (cap + 1))])
    with pytest.raises(UnsafeInput, match=f"max_bytes={cap}"):
        archives.archive_extract({"path": "big.tar.gz", "target": "out", "max_bytes": 1 << 40}, ctx)
    assert _bytes_under(root, "big.tar.gz") == 0, "the staging directory is gone"


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


@pytest.mark.parametrize("header_type", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_huge_long_name_header_is_refused_with_memory_bounded(ctx: JobContext, root: Path,
                                                                header_type: bytes) -> None:
    size = 100 << 20
    info = tarfile.TarInfo("././@LongLink")
    info.type = header_type
    info.size = size
    with gzip.open(root / "longname.tar.gz", "wb", compresslevel=1) as gz:  # streamed: 100 MB never in memory
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        chunk = b"a" * (1 << 20)
        for _ in range(size // len(chunk)):
            gz.write(chunk)
    assert (root / "longname.tar.gz").stat().st_size < 1 << 20
    # The peak, not the end state: "5" resets VmHWM (the process's peak RSS) to
    # the current RSS, so VmHWM afterwards is the peak during the extraction.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    with pytest.raises(UnsafeInput, match="larger than max_header_bytes=65536"):
        archives.archive_extract({"path": "longname.tar.gz", "target": "out"}, ctx)
    assert _status("VmHWM") - before < 50 << 20  # reading the header whole: ~200 MB


# --- fd-relative opens ----------------------------------------------------------------------------


def test_symlinks_inside_work_and_symlinks_out_are_refused(ctx: JobContext, root: Path, tmp_path: Path,
                                                            resolver: str) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (root / "real").mkdir()
    (root / "real/f.txt").write_text("inside")
    (root / "rel").symlink_to("real")
    (root / "real/up").symlink_to("../real")
    (root / "abs").symlink_to(root / "real")  # absolute, even though it points inside: refused
    (root / "out").symlink_to("../secret.txt")
    ok = files.file_checksum({"path": "rel/up/up/f.txt"}, ctx)
    assert ok["digest"] == hashlib.sha256(b"inside").hexdigest()
    for bad in ["abs/f.txt", "out", "real/up/../../../secret.txt"]:
        with pytest.raises(BadArgument, match="outside the worker's data root"):
            files.file_checksum({"path": bad}, ctx)


# Flips <root>/d between a directory and a symlink to <outside>, as fast as a
# process without our GIL can; bounded in flips and seconds.
FLIPPER = """
import os, sys, time
root, outside = sys.argv[1], sys.argv[2]
d, park = os.path.join(root, "d"), os.path.join(root, "d.real")
deadline = time.monotonic() + 30
for i in range(2_000_000):
    if i % 256 == 0 and time.monotonic() > deadline:
        break
    os.rename(d, park)
    os.symlink(outside, d)
    os.unlink(d)
    os.rename(park, d)
"""


def test_symlink_swap_race_never_reads_outside(ctx: JobContext, root: Path, tmp_path: Path, resolver: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET")
    (root / "d").mkdir()
    (root / "d/f.txt").write_text("inside")
    secret = hashlib.sha256(b"SECRET").hexdigest()
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(root), str(outside)])
    outcomes = {"inside": 0, "refused": 0, "outside": 0}
    try:
        for _ in range(200):
            try:
                out = files.file_checksum({"path": "d/f.txt"}, ctx)
            except BadArgument:
                outcomes["refused"] += 1
                continue
            outcomes["outside" if out["digest"] == secret else "inside"] += 1
    finally:
        flipper.terminate()  # our own child, by its PID
        flipper.wait(timeout=10)
    assert outcomes["outside"] == 0, outcomes
    assert outcomes["inside"] + outcomes["refused"] == 200


def test_outputs_are_written_beneath_the_root_with_normal_permissions(ctx: JobContext, root: Path,
                                                                     tmp_path: Path, resolver: str) -> None:
    (tmp_path / "outside").mkdir()
    (root / "in.txt").write_text("hello " * 100)
    (root / "esc").symlink_to(tmp_path / "outside")
    with pytest.raises(BadArgument, match="outside the worker's data root"):
        files.file_compress({"path": "in.txt", "output": "esc/x.gz"}, ctx)
    assert list((tmp_path / "outside").iterdir()) == []
    old = os.umask(0o022)
    try:
        files.file_compress({"path": "in.txt", "output": "new/dir/in.txt.gz"}, ctx)
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "new/dir/in.txt.gz").stat().st_mode) == 0o644
    assert [p.name for p in (root / "new/dir").iterdir()] == ["in.txt.gz"], "no temp file left"


def test_decompress_output_cap_is_the_workers(tmp_path: Path, root: Path) -> None:
    ctx = make_ctx(tmp_path, root, max_output_bytes=1000)
    (root / "z.gz").write_bytes(gzip.compress(b"\0" * 5000))
    with pytest.raises(UnsafeInput, match="max_bytes=1000"):
        files.file_decompress({"path": "z.gz", "max_bytes": 1 << 40}, ctx)
    assert not (root / "z").exists()
    with pytest.raises(UnsafeInput, match="max_bytes=10;"):
        files.file_decompress({"path": "z.gz", "max_bytes": 10}, ctx)


# --- data roots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["cluster.toml", "raft.journal", "raft.meta", "raft.dump", "a/b/cluster.toml",
                                   "node-2/raft.journal", "x/node-1/raft.meta"])
def test_a_data_root_holding_cluster_state_is_refused(tmp_path: Path, state: str) -> None:
    root = tmp_path / "files"
    (root / state).parent.mkdir(parents=True, exist_ok=True)
    (root / state).write_text("")
    with pytest.raises(ConfigError, match="holds cluster state"):
        WorkerConfig(cluster=["127.0.0.1:1"], data_root=root)


def test_a_data_root_inside_a_cluster_data_dir_is_refused(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "cluster"
    (cluster_dir / "node-1").mkdir(parents=True)
    (cluster_dir / "cluster.toml").write_text("")
    (cluster_dir / "node-1/raft.journal").write_text("")
    for inside in (cluster_dir / "files", cluster_dir / "node-1/files", cluster_dir / "node-1/files/deeper"):
        inside.mkdir(parents=True)
        with pytest.raises(ConfigError, match="is inside a cluster data dir"):
            check_data_root(inside)
    # A user directory merely named node-1 is not cluster state.
    plain = tmp_path / "plain"
    (plain / "node-1").mkdir(parents=True)
    (plain / "node-1/notes.txt").write_text("")
    check_data_root(plain)


def test_raftq_worker_refuses_it_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text("secret = 'x'")
    out = subprocess.run([sys.executable, "-m", "cli.main", "worker", "--cluster", "127.0.0.1:1", "--token", "t",
                          "--data-root", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds cluster state" in lines[0] and "Traceback" not in out.stderr


def test_dev_workers_get_a_data_root_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.dev import prepare_files_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples/text").mkdir(parents=True)
    (tmp_path / "examples/text/notes.md").write_text("# hi")
    cfg = dev_config(Path(".raftq/dev"))
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "cluster.toml").write_text(render_config(cfg))
    (cfg.data_dir / "node-1").mkdir()
    (cfg.data_dir / "node-1/raft.journal").write_text("")
    files_dir = prepare_files_dir(cfg.data_dir)
    assert not files_dir.resolve().is_relative_to(cfg.data_dir.resolve())
    assert (files_dir / "examples/text/notes.md").read_text() == "# hi", "README examples run as written"
    WorkerConfig(cluster=["127.0.0.1:1"], data_root=files_dir)  # accepted
    with pytest.raises(ConfigError):
        WorkerConfig(cluster=["127.0.0.1:1"], data_root=tmp_path)  # the working directory is not


def test_limits_are_validated_worker_settings(tmp_path: Path) -> None:
    cfg = WorkerConfig(cluster=["127.0.0.1:1"], data_root=tmp_path, max_extract_bytes=5, max_header_bytes=7,
                       max_output_bytes=9, max_extract_entries=3, max_extract_ratio=2)
    s = cfg.job_settings
    assert (s.max_extract_bytes, s.max_header_bytes, s.max_output_bytes, s.max_extract_entries,
            s.max_extract_ratio) == (5, 7, 9, 3, 2.0)
    for bad in ({"max_extract_bytes": 0}, {"max_header_bytes": "big"}, {"max_extract_ratio": 0.5}):
        with pytest.raises(ConfigError):
            WorkerConfig(cluster=["127.0.0.1:1"], data_root=tmp_path, **bad)
